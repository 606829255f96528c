"""``accllm serve``: OpenAI-compatible ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models`` on localhost,
streaming or not (server-sent events).

One device serves one stream at a time, so requests wait in a bounded queue in front of a single worker
thread that owns the backend; a request with several prompts or ``n > 1`` runs its sequences one after
another. Every wait is bounded: a request ends by ``request_timeout_s`` at the latest, and a client that
disconnects (streaming or not) cancels its request: the worker stops between two device calls and takes
the next one.

Input is checked before it costs anything: bodies over ``max_body_bytes`` get a 413 (a declared length is
refused before reading; the rest of a moderately large body is read and dropped so the client sees the
answer), the body is parsed, validated and tokenized in a thread (a prompt whose UTF-8 length proves it
over the token limit is refused without tokenizing), and any bad field gets a 400 naming it
(:mod:`accllm.host.openai_api` lists what is supported and what is refused). A full queue gets a 503 with
``Retry-After``.

After a device timeout the backend is not reused as it is: the worker calls the backend's ``recover()``
(a device-level reset, where the backend has one) or else closes it and opens it again (``reopen``);
until that succeeds every request gets a 503.

Chat prompts come from the model's chat template, or the plain template of :mod:`accllm.host.chat`.
The device worker is :mod:`accllm.host.serve_worker`; body -> job is :mod:`accllm.host.serve_requests`.
"""
# No "from __future__ import annotations": FastAPI must see the real Request class of the endpoints.
import asyncio
import contextlib
import json
import time
import uuid

from .chat import ChatTemplate
from .generate import Generation, TokenLogprob
from .openai_api import RequestError, TokenText, chat_logprobs, completion_logprobs, error_body, finish, model_card, usage
from .serve_requests import NoModel, Prepared, RequestParser
from .serve_worker import DeviceWorker, Job, ServeLimits
from .tokenizer import IncrementalDecoder

__all__ = ["ServeLimits", "create_app", "serve_command", "register"]

DRAIN_BYTES = 64 << 20   # an over-limit body up to this size is read and dropped; a larger one just closes
KEEPALIVE_S = 5.0        # an SSE comment this often while a stream waits in the queue


class _TooLarge(Exception):
    pass


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    declared = int(declared) if declared.isdigit() else None
    if declared is not None and declared > limit + DRAIN_BYTES:
        raise _TooLarge(declared)  # not read at all: the connection is closed after the answer
    buf, total = bytearray(), 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit + DRAIN_BYTES:
            break
        if total <= limit:
            buf += chunk
    if total > limit or (declared is not None and declared > limit):
        raise _TooLarge(max(total, declared or 0))
    return bytes(buf)


async def _disconnected(request) -> None:
    """Returns once the client has gone (the body is fully read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _Gone(Exception):
    pass


async def _job_events(job: Job, request, deadline_loop: float):
    """The worker's events for ``job``; ``("idle",)`` every KEEPALIVE_S while nothing happens.
    Raises :class:`_Gone` when the client disconnects; ends with ``("late",)`` past the deadline."""
    loop = asyncio.get_running_loop()
    watcher = asyncio.ensure_future(_disconnected(request))
    getter = None
    try:
        while True:
            left = deadline_loop - loop.time()
            if left <= 0:
                yield ("late",)
                return
            getter = getter or asyncio.ensure_future(job.events.get())
            done, _ = await asyncio.wait({getter, watcher}, timeout=min(left, KEEPALIVE_S),
                                         return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                raise _Gone
            if getter in done:
                item, getter = getter.result(), None
                yield item
                if item[0] in ("done", "error", "unavailable", "late"):
                    return
            else:
                yield ("idle",)
    finally:
        job.cancel.set()  # a no-op after "done"; stops the device on a disconnect or past the deadline
        for t in (getter, watcher):
            if t is not None:
                t.cancel()


class _Choice:
    """What one sequence produced, gathered from the worker's events."""

    def __init__(self, index: int, prompt_tokens: int):
        self.index, self.prompt_tokens = index, prompt_tokens
        self.text: list[str] = []
        self.logprobs: list[tuple[TokenLogprob, str]] = []   # (entry, the token's share of the text)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.gen: Generation | None = None


def create_app(backend, tokenizer, model_name: str = "accllm", limits: ServeLimits | None = None,
               chat_template: ChatTemplate | None = None, reopen=None):
    """The FastAPI app. ``reopen()``: opens a fresh backend after a device timeout when ``backend`` has no
    ``recover()``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    limits = (limits or ServeLimits()).check()
    chat = chat_template or ChatTemplate.plain()
    worker = DeviceWorker(backend, tokenizer, limits, reopen=reopen)
    requests = RequestParser(tokenizer, limits, model_name, chat, getattr(backend, "context", None))
    names = TokenText(tokenizer)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.stop()

    app = FastAPI(title="accllm", description="OpenAI-compatible completions and chat from the accllm engine",
                  lifespan=lifespan)
    app.state.worker = worker

    def error(status: int, message: str, param=None, kind="invalid_request_error", code=None, headers=None):
        return JSONResponse(status_code=status, content=error_body(message, kind, param, code), headers=headers)

    def busy(message: str):
        return error(503, message, kind="server_busy", headers={"Retry-After": str(limits.retry_after_s)})

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail), kind="invalid_request_error" if exc.status_code < 500 else
                     "server_error", headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(400, str(exc))

    def card():
        return model_card(model_name, created, getattr(worker.backend, "name", "?"))

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model_id:path}")
    def model(model_id: str):
        if model_id != model_name:
            return error(404, f"the model {model_id!r} does not exist; this server has {model_name!r}", "model",
                         code="model_not_found")
        return card()

    @app.get("/health")
    def health():
        return {"status": "ok" if worker.broken is None else "recovering", "problem": worker.broken,
                "queued": worker.jobs.qsize(), **worker.counts}

    async def accept(request: Request, prepare):
        """A queued job, or the error response that refuses the request."""
        try:
            raw = await _read_body(request, limits.max_body_bytes)
            prepared = await asyncio.to_thread(prepare, raw)
        except ClientDisconnect:
            return error(499, "the client closed the request", kind="cancelled")
        except _TooLarge as e:
            return error(413, f"the request body has {e.args[0]} bytes; the limit is {limits.max_body_bytes}",
                         code="request_too_large")
        except RequestError as e:
            return error(400, str(e), e.param)
        except NoModel as e:
            return error(404, f"the model {e.args[0]!r} does not exist; this server has {model_name!r}", "model",
                         code="model_not_found")
        if worker.broken is not None:
            return busy(f"the device is being reset after a failure: {worker.broken}")
        job = prepared.job
        job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            worker.submit(job)
        except OverflowError as e:
            return busy(str(e))
        return prepared

    def deadline_of(job: Job) -> float:
        return asyncio.get_running_loop().time() + (job.deadline - time.monotonic())

    def failure(kind, item):
        """(status, message, type) for a job's failing terminal event."""
        if kind == "unavailable":
            return 503, item, "server_busy"
        if kind == "late":
            return 504, f"the request did not finish within {limits.request_timeout_s:g} s", "timeout"
        return 500, f"the device failed: {type(item).__name__}: {item}", "device_error"

    def usage_of(choices: dict) -> dict:
        u = usage(sum(c.prompt_tokens for c in choices.values()), sum(c.completion_tokens for c in choices.values()))
        if len(choices) == 1 and (c := next(iter(choices.values()))).gen is not None:
            u["time_to_first_token_s"] = c.gen.stats.time_to_first_token_s
            u["decode_tokens_per_s"] = c.gen.stats.decode_tokens_per_s
        return u

    def take(choices, kind, item):
        """Fold a start / token / end event into its choice; returns that choice and the TokenEvent (or None)."""
        c = choices[item[0]]
        if kind == "start":
            c.gen = item[1]
            return c, None
        if kind == "token":
            ev = item[1]
            c.text.append(ev.text)
            if ev.token_id is not None:
                c.completion_tokens += 1
                if ev.logprob is not None:
                    c.logprobs.append((ev.logprob, ev.piece))
            return c, ev
        c.gen = item[1]
        c.finish_reason = finish(c.gen.stats.finish_reason)
        return c, None

    def echo_part(prepared: Prepared, c: _Choice):
        """Echoed prompt text and its log-probability entries (completions with ``echo``)."""
        dec = IncrementalDecoder(tokenizer)
        ids = prepared.job.sequences[c.index].prompt_ids
        pieces = [dec.push(t) for t in ids]
        entries = list(zip(c.gen.prompt_logprobs, pieces)) if c.gen is not None and c.gen.prompt_logprobs else []
        return "".join(pieces), entries

    async def collect(request, prepared: Prepared):
        """Non-streaming: all events, then (choices, None) or (None, error response)."""
        job = prepared.job
        choices = {s.index: _Choice(s.index, len(s.prompt_ids)) for s in job.sequences}
        try:
            async with contextlib.aclosing(_job_events(job, request, deadline_of(job))) as evs:
                async for kind, *item in evs:
                    if kind in ("start", "token", "end"):
                        take(choices, kind, item)
                    elif kind == "done":
                        return choices, None
                    elif kind != "idle":
                        status, message, typ = failure(kind, item[0] if item else None)
                        return None, (busy(message) if status == 503 else error(status, message, kind=typ))
        except _Gone:
            return None, error(499, "the client closed the request", kind="cancelled")
        return None, error(500, "the request ended without an answer", kind="server_error")

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    def stream(request, prepared: Prepared, chunk_of, usage_chunk):
        """SSE: ``chunk_of(choice, event_or_None, first)`` per event; usage chunk if asked; ``[DONE]``."""
        job = prepared.job

        async def events():
            choices = {s.index: _Choice(s.index, len(s.prompt_ids)) for s in job.sequences}
            started = set()
            try:
                async with contextlib.aclosing(_job_events(job, request, deadline_of(job))) as evs:
                    async for kind, *item in evs:
                        if kind == "idle":
                            yield ": waiting for the device\n\n"
                        elif kind == "start":
                            take(choices, kind, item)
                        elif kind in ("token", "end"):
                            c, ev = take(choices, kind, item)
                            for obj in chunk_of(c, ev, c.index not in started):
                                yield sse(obj)
                            started.add(c.index)
                        elif kind == "done":
                            opts = prepared.req.stream_options
                            if opts is not None and opts.include_usage:
                                yield sse(usage_chunk(usage_of(choices)))
                            yield "data: [DONE]\n\n"
                            return
                        else:
                            status, message, typ = failure(kind, item[0] if item else None)
                            yield sse(error_body(message, typ, code=status))
                            return
            except _Gone:
                return

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        prepared = await accept(request, requests.completion)
        if not isinstance(prepared, Prepared):
            return prepared
        req, rid = prepared.req, f"cmpl-{uuid.uuid4().hex[:24]}"
        want_lp = req.logprobs is not None

        def body(choices_list, usage_=None):
            d = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                 "choices": choices_list}
            if usage_ is not None:
                d["usage"] = usage_
            return d

        if req.stream:
            offsets: dict[int, int] = {}

            def chunk_of(c: _Choice, ev, first):
                out = []
                if first and prepared.echo:
                    text, entries = echo_part(prepared, c)
                    lp = completion_logprobs(names, entries) if want_lp else None
                    offsets[c.index] = len(text)
                    out.append(body([{"text": text, "index": c.index, "logprobs": lp, "finish_reason": None}]))
                if ev is None:
                    out.append(body([{"text": "", "index": c.index, "logprobs": None, "finish_reason": c.finish_reason}]))
                elif ev.text or (want_lp and ev.logprob is not None):
                    off = offsets.get(c.index, 0)
                    lp = completion_logprobs(names, [(ev.logprob, ev.piece)], off) \
                        if want_lp and ev.logprob is not None else None
                    offsets[c.index] = off + len(ev.piece)
                    out.append(body([{"text": ev.text, "index": c.index, "logprobs": lp, "finish_reason": None}]))
                return out

            return stream(request, prepared, chunk_of, lambda u: body([], u))

        choices, failed = await collect(request, prepared)
        if failed is not None:
            return failed
        out = []
        for c in choices.values():
            text, entries = echo_part(prepared, c) if prepared.echo else ("", [])
            lp = completion_logprobs(names, entries + c.logprobs) if want_lp else None
            out.append({"text": text + "".join(c.text), "index": c.index, "logprobs": lp,
                        "finish_reason": c.finish_reason})
        return JSONResponse(body(out, usage_of(choices)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        prepared = await accept(request, requests.chat_request)
        if not isinstance(prepared, Prepared):
            return prepared
        req, rid = prepared.req, f"chatcmpl-{uuid.uuid4().hex[:24]}"

        def body(choices_list, obj, usage_=None):
            d = {"id": rid, "object": obj, "created": int(time.time()), "model": model_name, "choices": choices_list}
            if usage_ is not None:
                d["usage"] = usage_
            return d

        if req.stream:
            def chunk_of(c: _Choice, ev, first):
                out = []
                if first:
                    out.append(body([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}], "chat.completion.chunk"))
                if ev is None:
                    out.append(body([{"index": c.index, "delta": {}, "logprobs": None,
                                      "finish_reason": c.finish_reason}], "chat.completion.chunk"))
                elif ev.text or (req.logprobs and ev.logprob is not None):
                    lp = chat_logprobs(names, [(ev.logprob, ev.piece)]) \
                        if req.logprobs and ev.logprob is not None else None
                    out.append(body([{"index": c.index, "delta": {"content": ev.text}, "logprobs": lp,
                                      "finish_reason": None}], "chat.completion.chunk"))
                return out

            return stream(request, prepared, chunk_of, lambda u: body([], "chat.completion.chunk", u))

        choices, failed = await collect(request, prepared)
        if failed is not None:
            return failed
        out = [{"index": c.index, "message": {"role": "assistant", "content": "".join(c.text)},
                "logprobs": chat_logprobs(names, c.logprobs) if req.logprobs else None,
                "finish_reason": c.finish_reason} for c in choices.values()]
        return JSONResponse(body(out, "chat.completion", usage_of(choices)))

    return app


def serve_command(a) -> int:
    import uvicorn

    from .backends import open_backend
    from .build import BuildDir
    from .run import backend_options

    if a.host not in ("127.0.0.1", "localhost", "::1") and not a.allow_remote:
        raise ValueError(f"refusing to listen on {a.host}: the server has no authentication; pass --allow-remote to do it anyway")
    limits = ServeLimits(a.max_prompt_tokens, a.max_tokens, a.queue_size, a.max_body_bytes,
                         request_timeout_s=a.request_timeout).check()
    build = BuildDir(a.build)
    tok = build.tokenizer()
    chat = ChatTemplate.from_dir(build.tokenizer_dir())

    def reopen():
        return open_backend(a.backend, a.build, **backend_options(a))

    backend = reopen()
    print(f"accllm serve: {a.backend} backend on {a.build}; http://{a.host}:{a.port}/v1/completions and "
          f"/v1/chat/completions (chat template: {chat.origin}; prompt <= {limits.max_prompt_tokens} tokens, "
          f"max_tokens <= {limits.max_tokens}, body <= {limits.max_body_bytes} bytes)")
    app = create_app(backend, tok, a.model_name, limits, chat_template=chat, reopen=reopen)
    try:
        uvicorn.run(app, host=a.host, port=a.port, log_level="info")
    finally:
        if app.state.worker.backend is not None:
            app.state.worker.backend.close()
    return 0


def register(sub) -> None:
    from .run import add_backend_arguments

    p = sub.add_parser("serve", help="OpenAI-compatible completions, chat and models server (SSE streaming) on localhost")
    p.add_argument("build", help="build directory (accllm compile / accllm demo output)")
    add_backend_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--model-name", default="accllm")
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--queue-size", type=int, default=8)
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get a 413")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may take, queue included")
    p.set_defaults(func=serve_command)
