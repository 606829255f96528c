"""Shared pieces of the server tests: uvicorn on 127.0.0.1 in a thread, and tiny scripted backends."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np


def successor(t: int) -> int:
    return (t * 31 + 7) % 4000 + 10


class SlowChain:
    """Lowest-layer stand-in: logits peaked (5.0, the rest 0) at a fixed successor of the last token,
    ``delay`` seconds per device call (so a stream can be cut). Records every call."""

    name = "chain"
    context = None

    def __init__(self, vocab, delay: float = 0.005):
        self.vocab_size, self.delay = vocab, delay
        self.calls, self.log = 0, []
        self.gate = threading.Event()
        self.gate.set()

    def reset(self):
        pass

    def forward(self, ids):
        self.gate.wait(timeout=30)
        self.calls += 1
        self.log.append(list(ids))
        time.sleep(self.delay)
        x = np.zeros(self.vocab_size, np.float32)
        x[successor(ids[-1])] = 5.0
        return x


class ScriptBackend:
    """Generates a fixed token script, whatever the prompt (for exact stop-string tests)."""

    name = "script"
    context = None

    def __init__(self, vocab, script, delay: float = 0.0):
        self.vocab_size, self.script, self.delay = vocab, list(script), delay
        self.step = 0

    def reset(self):
        self.step = -1

    def forward(self, ids):
        self.step += 1
        time.sleep(self.delay)
        x = np.zeros(self.vocab_size, np.float32)
        x[self.script[min(self.step, len(self.script) - 1)]] = 9.0
        return x


def chain_logprob(vocab: int, peak: bool) -> float:
    """log-softmax of the chain's logits at the peak token or at any other token."""
    lse = np.log(np.exp(5.0) + (vocab - 1))
    return float((5.0 if peak else 0.0) - lse)


@contextlib.contextmanager
def running(app):
    """uvicorn on 127.0.0.1 (a free port) in a thread; stopped and joined on exit."""
    import uvicorn

    sock = socket.socket()
    # Accepted sockets inherit this; without it each small response waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    try:
        for _ in range(200):
            if srv.started:
                break
            time.sleep(0.05)
        assert srv.started, "server did not start within 10 s"
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(timeout=10)
        sock.close()
    assert not th.is_alive()


def wait_for(cond, seconds: float = 30.0) -> bool:
    """Polls ``cond`` until true; generous because the test machine may be loaded."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()
