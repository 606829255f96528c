"""`accllm serve` over real HTTP (httpx -> uvicorn on 127.0.0.1): streaming, cancellation, limits."""
import contextlib
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from accllm.host.serve import ServeLimits, create_app
from accllm.host.tokenizer import Tokenizer
from accllm.quant.model import BUNDLED_MODEL


class SlowChain:
    """Lowest-layer stand-in: a fixed successor chain, 5 ms per device call (so a stream can be cut)."""

    name = "chain"

    def __init__(self, vocab):
        self.vocab_size, self.calls = vocab, 0

    def reset(self):
        pass

    def forward(self, ids):
        self.calls += 1
        time.sleep(0.005)
        x = np.zeros(self.vocab_size, np.float32)
        x[(ids[-1] * 31 + 7) % 4000 + 10] = 5.0
        return x


@contextlib.contextmanager
def running(app):
    """uvicorn on 127.0.0.1 (a free port) in a thread; stopped and joined on exit."""
    import uvicorn

    sock = socket.socket()
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


@pytest.fixture(scope="module")
def server():
    tok = Tokenizer(BUNDLED_MODEL)
    backend = SlowChain(tok.vocab_size)
    app = create_app(backend, tok, "test-model", ServeLimits(max_prompt_tokens=64, max_tokens=2000, queue_size=4))
    with running(app) as url:
        yield url, app, backend, tok


def _sse(lines):
    for line in lines:
        if line.startswith("data: "):
            yield line[6:]


def test_streaming_completion_matches_the_non_streaming_one(server):
    url, app, backend, tok = server
    body = {"model": "test-model", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
    with httpx.Client(timeout=30) as c:
        full = c.post(f"{url}/v1/completions", json=body).json()
        chunks = []
        with c.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for data in _sse(r.iter_lines()):
                chunks.append(data)
    assert chunks[-1] == "[DONE]"
    events = [json.loads(d) for d in chunks[:-1]]
    assert len(events) > 2  # tokens arrive one by one, not as one block
    text = "".join(e["choices"][0]["text"] for e in events)
    assert text == full["choices"][0]["text"] != ""
    assert events[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"] == "length"
    assert full["usage"]["completion_tokens"] == 12
    ids = tok.encode("Once upon a time")
    want = [(ids[-1] * 31 + 7) % 4000 + 10]
    for _ in range(11):
        want.append((want[-1] * 31 + 7) % 4000 + 10)
    assert text == tok.decode(want)


def test_client_disconnect_cancels_the_request(server):
    url, app, backend, tok = server
    worker = app.state.worker
    before = dict(worker.counts)
    calls0 = backend.calls
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", f"{url}/v1/completions",
                      json={"prompt": "Hello", "max_tokens": 2000, "stream": True, "ignore_eos": True}) as r:
            got = 0
            for data in _sse(r.iter_lines()):
                got += 1
                if got == 3:
                    break  # leaving the block closes the connection mid-stream
    for _ in range(100):  # the worker notices between two device calls
        if worker.counts["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.05)
    assert worker.counts["cancelled"] == before["cancelled"] + 1
    assert backend.calls - calls0 < 1000  # stopped well before max_tokens
    with httpx.Client(timeout=30) as c:  # and the device serves the next request
        r = c.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body,param", [
    ({"prompt": "word " * 200, "max_tokens": 4}, "prompt"),
    ({"prompt": "hi", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 4, "temperature": -1}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": [1, 999999]}, "prompt"),
    ({"max_tokens": 4}, "prompt"),
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
])
def test_bad_requests_get_a_400_naming_the_field(server, body, param):
    url, *_ = server
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_models_endpoint(server):
    url, *_ = server
    assert httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"] == "test-model"


def test_serve_on_the_csim_backend_streams_the_engine_tokens(tmp_path_factory):
    """The app `accllm serve` runs, on the real csim backend: streamed text == the engine's greedy tokens."""
    from flow_fixtures import demo_layout

    from accllm.host.backends import open_backend
    from accllm.host.generate import Generation
    from accllm.host.sampling import SamplingParams

    d = demo_layout(tmp_path_factory, "serve_build")
    tok = Tokenizer(d / "checkpoint")
    with open_backend("csim", d) as be:
        gen = Generation(be, tok, "def main(args):", SamplingParams(max_tokens=8, temperature=0, stop_tokens=(tok.eos_id,)))
        list(gen)
        app = create_app(be, tok, "accllm", ServeLimits(max_prompt_tokens=32, max_tokens=16))
        with running(app) as url, httpx.Client(timeout=60) as c:
            with c.stream("POST", f"{url}/v1/completions",
                          json={"prompt": "def main(args):", "max_tokens": 8, "temperature": 0, "stream": True}) as r:
                data = list(_sse(r.iter_lines()))
            over = c.post(f"{url}/v1/completions", json={"prompt": "def main(args):", "max_tokens": 17})
    assert data[-1] == "[DONE]"
    assert "".join(json.loads(x)["choices"][0]["text"] for x in data[:-1]) == gen.text
    assert over.status_code == 400 and "exceeds the limit of 16" in over.json()["error"]["message"]
