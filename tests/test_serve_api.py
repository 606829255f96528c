"""`accllm serve` over real HTTP (httpx -> uvicorn on 127.0.0.1): streaming, cancellation, limits, raw bad bodies.

The same server through the official `openai` client: tests/test_serve_openai.py."""
import json
import time

import httpx
import pytest

from accllm.host.serve import ServeLimits, create_app
from accllm.host.tokenizer import Tokenizer
from accllm.quant.model import BUNDLED_MODEL
from serve_fixtures import SlowChain, running


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


def test_a_chunked_body_over_the_limit_gets_a_413(server):
    url, app, *_ = server
    limit = app.state.worker.limits.max_body_bytes

    def body():  # no content-length: the server counts as it reads
        yield b'{"prompt": "'
        for _ in range(2 * limit // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    r = httpx.post(f"{url}/v1/completions", content=body(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=30).status_code == 200


def test_chat_templates_are_found_where_transformers_saves_them(tmp_path):
    from accllm.host.chat import PLAIN_STOPS, ChatTemplate
    from accllm.quant.model import BUNDLED_MODEL

    plain = ChatTemplate.from_dir(BUNDLED_MODEL)  # the bundled base model has none
    assert plain.origin == "plain" and plain.stops == PLAIN_STOPS
    assert plain.render([{"role": "user", "content": "Hi"}]) == "user: Hi\nassistant:"
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>"}, "chat_template": [
        {"name": "tool_use", "template": "T"},
        {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.role[0] }}={{ m.content }};{% endfor %}"
                                        "{% if add_generation_prompt %}a={% endif %}"}]}))
    t = ChatTemplate.from_dir(tmp_path)
    assert t.render(msgs) == "<s>s=S;u=U;a=" and t.writes_bos("<s>x") and t.stops == ()
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{% for m in messages %}[{{ m.content }}]{% endfor %}")
    t = ChatTemplate.from_dir(tmp_path)  # the .jinja file wins over tokenizer_config.json
    assert t.render(msgs[1:]) == "[U]" and not t.writes_bos("[U]")
    with pytest.raises(ValueError, match="no system role"):
        t.render(msgs)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate.from_dir(tmp_path)


def test_a_template_refusing_the_messages_is_a_400(tmp_path):
    from accllm.host.chat import ChatTemplate

    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('roles must alternate') }}")
    tok = Tokenizer(BUNDLED_MODEL)
    app = create_app(SlowChain(tok.vocab_size, delay=0), tok, "m", chat_template=ChatTemplate.from_dir(tmp_path))
    with running(app) as url:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=10,
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "roles must alternate" in r.json()["error"]["message"]


def test_a_request_past_its_deadline_is_cut_and_frees_the_device():
    from serve_fixtures import wait_for

    tok = Tokenizer(BUNDLED_MODEL)
    backend = SlowChain(tok.vocab_size, delay=0.01)
    app = create_app(backend, tok, "m", ServeLimits(max_tokens=2000, request_timeout_s=0.5))
    worker = app.state.worker
    body = {"model": "m", "prompt": "Hi", "max_tokens": 2000, "ignore_eos": True}
    with running(app) as url, httpx.Client(timeout=30) as c:
        r = c.post(f"{url}/v1/completions", json=body)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        with c.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as s:
            data = list(_sse(s.iter_lines()))
        assert wait_for(lambda: worker.counts["cancelled"] == 2)
        assert c.post(f"{url}/v1/completions", json={**body, "max_tokens": 2}).status_code == 200
    assert data[-1] != "[DONE]" and json.loads(data[-1])["error"]["code"] == 504
    assert backend.calls < 600  # 2 x 0.5 s at 10 ms a call, with room for a slow machine; not 2 x 2000


def test_serve_refuses_a_non_loopback_host():
    import argparse

    from accllm.host.serve import serve_command

    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0"):
        serve_command(argparse.Namespace(host="0.0.0.0", allow_remote=False))


ODD = [None, True, 0, -1, 1.5, 1e308, -1e308, 2**70, 1e-310, "", "x", "\ud800", [], [1], ["a"], [[1]], {}, {"1": 1},
       {"a": "b"}]
COMPLETION_FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "best_of", "seed", "stop", "stream",
                     "stream_options", "echo", "logprobs", "suffix", "logit_bias", "presence_penalty",
                     "frequency_penalty", "user", "ignore_eos", "model", "unknown_field"]
CHAT_FIELDS = ["messages", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "n",
               "stop", "seed", "temperature", "stream"]


@pytest.fixture(scope="module")
def fast_server():
    tok = Tokenizer(BUNDLED_MODEL)
    app = create_app(SlowChain(tok.vocab_size, delay=0), tok, "m", ServeLimits(max_prompt_tokens=64, max_tokens=4))
    with running(app) as url:
        yield url


@pytest.mark.parametrize("path,field", [("completions", f) for f in COMPLETION_FIELDS] +
                         [("chat/completions", f) for f in CHAT_FIELDS])
def test_no_odd_value_of_any_field_gives_a_5xx(fast_server, path, field):
    """Every field x odd JSON values: an answer below 500 (a 400 names the field)."""
    url = fast_server
    base = {"model": "m", "prompt": "Hi", "max_tokens": 2} if path == "completions" else \
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with httpx.Client(timeout=30) as c:
        for v in ODD:
            raw = json.dumps({**base, field: v}).encode()  # ensure_ascii: "\ud800" travels as an escape
            r = c.post(f"{url}/v1/{path}", content=raw, headers={"content-type": "application/json"})
            assert r.status_code < 500, (field, v, r.text)
            if r.status_code == 400:
                assert (r.json()["error"]["param"] or "").split("[")[0].split(".")[0] == field, (field, v, r.text)
