"""``accllm serve``: an OpenAI-compatible ``/v1/completions`` endpoint (server-sent-event streaming) on localhost.

One device serves one stream at a time, so requests wait in a bounded queue in front of a single worker
thread that owns the backend. A client that disconnects (streaming or not) cancels its request: the worker stops
between two device calls and takes the next one. Prompt length and ``max_tokens`` are limited; a request
outside the limits, or with bad sampling arguments, gets a 400 with an OpenAI-style error body; a full
queue gets a 503.

Chat completions are not offered: the bundled model is a base model with no chat template, and inventing
one would make the endpoint look more capable than the model is.
"""
# No "from __future__ import annotations": FastAPI must see the real Request class of the endpoint.
import asyncio
import contextlib
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

from .generate import Generation
from .sampling import SamplingParams


@dataclass
class ServeLimits:
    max_prompt_tokens: int = 1024
    max_tokens: int = 512
    queue_size: int = 8


@dataclass
class _Job:
    prompt: object
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancel: threading.Event = field(default_factory=threading.Event)


class DeviceWorker:
    """The one thread that talks to the device; jobs run to completion (or cancellation) in order."""

    def __init__(self, backend, tokenizer, limits: ServeLimits):
        self.backend, self.tok, self.limits = backend, tokenizer, limits
        self.jobs: queue.Queue = queue.Queue(maxsize=limits.queue_size)
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0}
        self._thread = threading.Thread(target=self._loop, name="accllm-device", daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def submit(self, job: _Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise OverflowError(f"the device queue is full ({self.limits.queue_size} requests waiting)") from None

    def stop(self) -> None:
        self._stop.set()
        self.jobs.put(None)
        self._thread.join(timeout=10)

    def _emit(self, job: _Job, item) -> None:
        job.loop.call_soon_threadsafe(job.events.put_nowait, item)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.jobs.get()
            if job is None:
                return
            if job.cancel.is_set():
                self.counts["cancelled"] += 1
                continue
            try:
                gen = Generation(self.backend, self.tok, job.prompt, job.params,
                                 max_prompt_tokens=self.limits.max_prompt_tokens)
                for ev in gen:
                    if job.cancel.is_set():
                        gen.close()
                        break
                    self.counts["tokens"] += 1
                    self._emit(job, ("token", ev))
                if gen.stats.finish_reason == "cancelled" or job.cancel.is_set():
                    self.counts["cancelled"] += 1
                else:
                    self.counts["completed"] += 1
                self._emit(job, ("done", gen))
            except Exception as e:  # reported to that request; the worker keeps serving
                self.counts["failed"] += 1
                self._emit(job, ("error", e))


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": None}})


class RequestError(ValueError):
    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


def _params_from(body: dict, tok, limits: ServeLimits) -> tuple[list[int], SamplingParams]:
    """Validate an OpenAI completions body; raises :class:`RequestError` naming the bad field."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    try:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty")
            prompt_ids = tok.encode(prompt)
        elif isinstance(prompt, list) and prompt:
            prompt_ids = tok.check_ids(prompt)
        else:
            raise ValueError("required: a string, or a non-empty list of token ids (batches are not supported)")
    except ValueError as e:
        raise RequestError("prompt", f"prompt: {e}") from None
    if len(prompt_ids) > limits.max_prompt_tokens:
        raise RequestError("prompt", f"prompt: {len(prompt_ids)} tokens exceed the limit of {limits.max_prompt_tokens}")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)):
        raise RequestError("stop", "stop: a string or a list of strings")

    def num(name, default, kind):
        v = body.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int,) if kind is int else (int, float)):
            raise RequestError(name, f"{name}: must be {'an integer' if kind is int else 'a number'}, got {v!r}")
        return kind(v)

    params = SamplingParams(
        max_tokens=num("max_tokens", 16, int), temperature=num("temperature", 1.0, float),
        top_k=num("top_k", 0, int), top_p=num("top_p", 1.0, float), seed=num("seed", None, int),
        stop_tokens=() if body.get("ignore_eos") else (tok.eos_id,), stop=tuple(stop))
    try:
        params.validate(max_tokens_limit=limits.max_tokens)
    except ValueError as e:
        name = str(e).split(" ")[0]
        raise RequestError({"stop_tokens": "ignore_eos"}.get(name, name), str(e)) from None
    return prompt_ids, params


def create_app(backend, tokenizer, model_name: str = "accllm", limits: ServeLimits | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    limits = limits or ServeLimits()
    worker = DeviceWorker(backend, tokenizer, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.stop()

    app = FastAPI(title="accllm", description="OpenAI-compatible completions from the accllm engine", lifespan=lifespan)
    app.state.worker = worker

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "accllm",
                                            "backend": getattr(backend, "name", "?")}]}

    @app.get("/health")
    def health():
        return {"status": "ok", "queued": worker.jobs.qsize(), **worker.counts}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        if int(body.get("n", 1) or 1) != 1 or body.get("best_of") not in (None, 1):
            return _error(400, "n and best_of must be 1: one device serves one sequence at a time", "n")
        try:
            prompt_ids, params = _params_from(body, tokenizer, limits)
        except RequestError as e:
            return _error(400, str(e), e.param)
        loop = asyncio.get_running_loop()
        job = _Job(prompt_ids, params, loop, asyncio.Queue())
        try:
            worker.submit(job)
        except OverflowError as e:
            return _error(503, str(e), kind="server_busy")
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text, finish=None, usage=None):
            d = {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                 "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
            if usage is not None:
                d["usage"] = usage
            return d

        def usage(gen):
            s = gen.stats
            return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
                    "total_tokens": s.prompt_tokens + s.generated_tokens,
                    "time_to_first_token_s": s.time_to_first_token_s, "decode_tokens_per_s": s.decode_tokens_per_s}

        if body.get("stream"):
            async def events():
                try:
                    while True:
                        kind, item = await job.events.get()
                        if kind == "token":
                            if item.text:
                                yield f"data: {json.dumps(chunk(item.text))}\n\n"
                        elif kind == "done":
                            yield f"data: {json.dumps(chunk('', item.stats.finish_reason, usage(item)))}\n\n"
                            yield "data: [DONE]\n\n"
                            return
                        else:
                            yield f"data: {json.dumps({'error': {'message': str(item), 'type': 'device_error'}})}\n\n"
                            return
                finally:
                    job.cancel.set()  # a no-op after "done"; stops the device on a client disconnect

            return StreamingResponse(events(), media_type="text/event-stream")

        try:
            text = []
            while True:
                try:
                    kind, item = await asyncio.wait_for(job.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return _error(499, "client closed the request", kind="cancelled")
                    continue
                if kind == "token":
                    text.append(item.text)
                elif kind == "done":
                    return JSONResponse(chunk("".join(text), item.stats.finish_reason, usage(item)))
                else:
                    return _error(500, f"the device failed: {item}", kind="device_error")
        finally:
            job.cancel.set()

    return app


def serve_command(a) -> int:
    import uvicorn

    from .backends import open_backend
    from .build import BuildDir
    from .run import backend_options

    if a.host not in ("127.0.0.1", "localhost", "::1") and not a.allow_remote:
        raise ValueError(f"refusing to listen on {a.host}: the server has no authentication; pass --allow-remote to do it anyway")
    for name in ("max_prompt_tokens", "max_tokens", "queue_size"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    limits = ServeLimits(a.max_prompt_tokens, a.max_tokens, a.queue_size)
    tok = BuildDir(a.build).tokenizer()
    backend = open_backend(a.backend, a.build, **backend_options(a))
    print(f"accllm serve: {a.backend} backend on {a.build}; http://{a.host}:{a.port}/v1/completions "
          f"(prompt <= {limits.max_prompt_tokens} tokens, max_tokens <= {limits.max_tokens})")
    uvicorn.run(create_app(backend, tok, a.model_name, limits), host=a.host, port=a.port, log_level="info")
    backend.close()
    return 0


def register(sub) -> None:
    from .run import add_backend_arguments

    p = sub.add_parser("serve", help="OpenAI-compatible /v1/completions server (SSE streaming) on localhost")
    p.add_argument("build", help="build directory (accllm compile / accllm demo output)")
    add_backend_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--model-name", default="accllm")
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--queue-size", type=int, default=8)
    p.set_defaults(func=serve_command)
