"""The device side of ``accllm serve``: the limits, the jobs and the one worker thread that owns the backend.

One device serves one stream at a time: jobs wait in a bounded queue and run in order, each sequence of a
job one after another, stopping between two device calls once the request is gone (client disconnect,
deadline, shutdown). After a device timeout the backend is not reused as it is: :meth:`DeviceWorker.recover`
calls the backend's ``recover()`` (a device-level reset, where the backend has one) or else closes it and
opens it again (``reopen``); until that succeeds, jobs are answered "unavailable".
"""
from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field

from .generate import Generation
from .sampling import SamplingParams


@dataclass
class ServeLimits:
    max_prompt_tokens: int = 1024
    max_tokens: int = 512
    queue_size: int = 8
    max_body_bytes: int = 1 << 20
    max_sequences: int = 16          # prompts x n in one request
    request_timeout_s: float = 600.0
    retry_after_s: int = 1

    def check(self) -> "ServeLimits":
        for name in ("max_prompt_tokens", "max_tokens", "queue_size", "max_body_bytes", "max_sequences",
                     "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request-timeout must be > 0 seconds, got {self.request_timeout_s}")
        return self


@dataclass
class Sequence:
    index: int                # the choice index
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class Job:
    sequences: list[Sequence]
    logprobs: int | None      # top alternatives per generated token (None: no log-probabilities)
    prompt_logprobs: bool
    deadline: float           # time.monotonic()
    loop: asyncio.AbstractEventLoop = None
    events: asyncio.Queue = None
    cancel: threading.Event = field(default_factory=threading.Event)


class DeviceWorker:
    """The one thread that talks to the device; jobs run to completion (or cancellation) in order.

    Events to the request, in order: ``("start", index, Generation)``, ``("token", index, TokenEvent)``...,
    ``("end", index, Generation)`` per sequence (the Generation is the worker's: read it only after an event
    that follows its prefill), then one of ``("done",)``, ``("error", exception)``, ``("unavailable", message)``.
    """

    def __init__(self, backend, tokenizer, limits: ServeLimits, reopen=None):
        self.backend, self.tok, self.limits, self.reopen = backend, tokenizer, limits, reopen
        self.jobs: queue.Queue = queue.Queue(maxsize=limits.queue_size)
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0, "recoveries": 0}
        self.broken: str | None = None   # why the backend may not be used until it is recovered
        self.current: Job | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="accllm-device", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise OverflowError(f"the device queue is full ({self.limits.queue_size} requests waiting)") from None

    def stop(self) -> None:
        self._stop.set()
        if self.current is not None:
            self.current.cancel.set()
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel.set()
        with contextlib.suppress(queue.Full):
            self.jobs.put_nowait(None)
        self._thread.join(timeout=30)

    def _emit(self, job: Job, *item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            job.loop.call_soon_threadsafe(job.events.put_nowait, item)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.jobs.get()
            if job is None:
                return
            self.current = job
            try:
                self._run(job)
            finally:
                self.current = None

    def _gone(self, job: Job) -> bool:
        return job.cancel.is_set() or self._stop.is_set() or time.monotonic() > job.deadline

    def _run(self, job: Job) -> None:
        if self._gone(job):
            self.counts["cancelled"] += 1
            return
        if self.broken is not None and not self.recover():
            self.counts["failed"] += 1
            self._emit(job, "unavailable", self.broken)
            return
        try:
            for seq in job.sequences:
                gen = Generation(self.backend, self.tok, seq.prompt_ids, seq.params,
                                 max_prompt_tokens=self.limits.max_prompt_tokens,
                                 logprobs=job.logprobs, prompt_logprobs=job.prompt_logprobs)
                self._emit(job, "start", seq.index, gen)
                for ev in gen:
                    if self._gone(job):
                        gen.close()
                        break
                    self.counts["tokens"] += ev.token_id is not None
                    self._emit(job, "token", seq.index, ev)
                if gen.stats.finish_reason == "cancelled":
                    self.counts["cancelled"] += 1
                    self._emit(job, "late")
                    return
                self._emit(job, "end", seq.index, gen)
            self.counts["completed"] += 1
            self._emit(job, "done")
        except TimeoutError as e:  # DeviceTimeout: the device may be hung; never reuse it as it is
            self.counts["failed"] += 1
            self.broken = f"the device timed out ({e})"
            self._emit(job, "error", e)
            self.recover()
        except Exception as e:  # reported to that request; the worker keeps serving
            self.counts["failed"] += 1
            self._emit(job, "error", e)

    def recover(self) -> bool:
        """Make the backend usable after a failure: its device-level ``recover()``, else close and reopen it."""
        try:
            hook = getattr(self.backend, "recover", None)
            if callable(hook):
                hook()
            elif self.reopen is not None:
                with contextlib.suppress(Exception):
                    self.backend.close()
                self.backend = None
                self.backend = self.reopen()
            else:
                raise RuntimeError("the backend has no recover() and the server cannot reopen it")
        except Exception as e:
            self.broken = f"the device timed out and could not be reset ({type(e).__name__}: {e}); " \
                          f"it is tried again with the next request"
            return False
        self.broken = None
        self.counts["recoveries"] += 1
        return True
