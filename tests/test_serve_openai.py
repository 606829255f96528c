"""`accllm serve` through the official `openai` Python client, unmodified: completions, chat, models, streaming
and not, cancellation, limits, bad input, echo/logprobs, device-timeout recovery.

Inputs the client itself refuses to send (lone surrogates, NaN, non-UTF-8 bytes) go as raw HTTP."""
import json
import threading
import time

import httpx
import openai
import pytest

from accllm.host.chat import ChatTemplate
from accllm.host.serve import ServeLimits, create_app
from accllm.host.tokenizer import IncrementalDecoder, Tokenizer
from accllm.quant.model import BUNDLED_MODEL
from serve_fixtures import ScriptBackend, SlowChain, chain_logprob, running, successor, wait_for

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(BUNDLED_MODEL)


@pytest.fixture(scope="module")
def server(tok):
    backend = SlowChain(tok.vocab_size)
    limits = ServeLimits(max_prompt_tokens=64, max_tokens=2000, queue_size=4, max_body_bytes=64 << 10)
    app = create_app(backend, tok, "test-model", limits)
    with running(app) as url:
        yield url, app, backend


def client(url, **kw):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, **kw)


def chain_text(tok, prompt: str, n: int) -> str:
    """The chain's n tokens after ``prompt``, as streamed text (an incomplete last character is not shown)."""
    ids = tok.encode(prompt)
    out = [successor(ids[-1])]
    while len(out) < n:
        out.append(successor(out[-1]))
    dec = IncrementalDecoder(tok, ids)
    return "".join(dec.push(t) for t in out)


def test_completions_streaming_and_not(server, tok):
    url, app, backend = server
    c = client(url)
    full = c.completions.create(model="test-model", prompt="Once upon a time", max_tokens=12, temperature=0)
    assert full.object == "text_completion" and full.model == "test-model"
    assert full.choices[0].text == chain_text(tok, "Once upon a time", 12)
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 12 and full.usage.prompt_tokens == len(tok.encode("Once upon a time"))
    chunks = list(c.completions.create(model="test-model", prompt="Once upon a time", max_tokens=12, temperature=0,
                                       stream=True, stream_options={"include_usage": True}))
    assert len(chunks) > 3
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == full.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_completions_batch_and_n(server, tok):
    url, *_ = server
    r = client(url).completions.create(model="test-model", prompt=["Hello there", "One two"], max_tokens=3,
                                       temperature=0, n=2)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    texts = [ch.text for ch in r.choices]
    assert texts[0] == texts[1] == chain_text(tok, "Hello there", 3)
    assert texts[2] == texts[3] == chain_text(tok, "One two", 3)
    assert r.usage.completion_tokens == 12


def test_chat_with_the_plain_template(server, tok):
    url, app, backend = server
    c = client(url)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    r = c.chat.completions.create(model="test-model", messages=msgs, max_tokens=6, temperature=0)
    prompt = "system: Be brief.\nuser: Say hi\nassistant:"
    assert backend.log[-6] == tok.encode(prompt)  # the prefill: the documented plain template, BOS added once
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == chain_text(tok, prompt, 6)
    assert r.choices[0].finish_reason == "length" and r.usage.prompt_tokens == len(tok.encode(prompt))
    parts = list(c.chat.completions.create(model="test-model", messages=msgs, max_tokens=6, temperature=0, stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == r.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == "length"


def test_chat_uses_the_models_template(tmp_path, tok):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                                "chat_template": TEMPLATE}))
    chat = ChatTemplate.from_dir(tmp_path)
    backend = SlowChain(tok.vocab_size, delay=0)
    app = create_app(backend, tok, "m", ServeLimits(max_prompt_tokens=64), chat_template=chat)
    with running(app) as url:
        r = client(url).chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=2, temperature=0, logprobs=True, top_logprobs=2)
    text = "<s><|user|>Hi\n<|assistant|>"
    ids = tok.encode(text, add_bos=False)
    assert backend.log[0] == ids and ids.count(tok.bos_id) == 1  # the template wrote BOS; none added
    lp = r.choices[0].logprobs.content
    assert len(lp) == 2 and abs(lp[0].logprob - chain_logprob(tok.vocab_size, True)) < 1e-6
    assert [t.token for t in lp] == [tok.decode([successor(ids[-1])]), tok.decode([successor(successor(ids[-1]))])]
    assert len(lp[0].top_logprobs) == 2 and lp[0].top_logprobs[0].token == lp[0].token


def test_models(server):
    url, *_ = server
    c = client(url)
    models = c.models.list().data
    assert [m.id for m in models] == ["test-model"] and isinstance(models[0].created, int) and models[0].created > 0
    assert c.models.retrieve("test-model").id == "test-model"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("other")
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-4", prompt="hi", max_tokens=1)


def test_echo_and_logprobs(server, tok):
    url, *_ = server
    prompt = "Once upon"
    ids = tok.encode(prompt)
    r = client(url).completions.create(model="test-model", prompt=prompt, max_tokens=3, temperature=0, echo=True,
                                       logprobs=2)
    ch = r.choices[0]
    gen = chain_text(tok, prompt, 3)
    assert ch.text == tok.decode(ids) + gen
    lp = ch.logprobs
    assert len(lp.tokens) == len(ids) + 3 and lp.token_logprobs[0] is None
    for i in range(1, len(ids)):  # the chain predicts successor(previous): a prompt token scores high only if it is that
        want = chain_logprob(tok.vocab_size, ids[i] == successor(ids[i - 1]))
        assert abs(lp.token_logprobs[i] - want) < 1e-6
    assert all(abs(x - chain_logprob(tok.vocab_size, True)) < 1e-6 for x in lp.token_logprobs[len(ids):])
    assert all(len(t) == 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[-1] < len(ch.text)
    assert ch.text[lp.text_offset[len(ids)]:] == gen
    parts = [p.choices[0] for p in client(url).completions.create(
        model="test-model", prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=2, stream=True)]
    assert "".join(p.text for p in parts) == ch.text
    streamed = [x for p in parts if p.logprobs for x in zip(p.logprobs.tokens, p.logprobs.token_logprobs,
                                                           p.logprobs.text_offset)]
    assert streamed == list(zip(lp.tokens, lp.token_logprobs, lp.text_offset))
    # scoring a text: echo with max_tokens=0 runs no generation
    s = client(url).completions.create(model="test-model", prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    assert s.choices[0].text == tok.decode(ids) and s.usage.completion_tokens == 0
    assert s.choices[0].logprobs.token_logprobs == lp.token_logprobs[:len(ids)]


def test_logit_bias_and_penalties_change_the_tokens(server, tok):
    url, *_ = server
    c = client(url)
    r = c.completions.create(model="test-model", prompt="Hi", max_tokens=3, temperature=0, logit_bias={"77": 100})
    assert r.choices[0].text == tok.decode([77, 77, 77])
    # the chain's peak is 5 above the rest: a frequency penalty of 2 per repeat pushes a repeated token below the others
    r = c.completions.create(model="test-model", prompt="Hi", max_tokens=4, temperature=0, logit_bias={"77": 6},
                             frequency_penalty=2.0)
    ids = tok.encode(r.choices[0].text, add_bos=False)
    assert ids[0] == 77 and ids.count(77) == 1


def test_stop_string_never_leaks_its_beginning(tok):
    text = "s\n\nThe end"
    script = tok.encode(text, add_bos=False) + [tok.eos_id]
    assert len(script) >= 4  # "\n\nThe" spans several tokens: the leak the stop must not show
    app = create_app(ScriptBackend(tok.vocab_size, script), tok, "m", ServeLimits(max_prompt_tokens=16))
    with running(app) as url:
        c = client(url)
        parts = [p.choices[0].text for p in c.completions.create(model="m", prompt="x", max_tokens=20, temperature=0,
                                                                 stop="\n\nThe", stream=True) if p.choices]
        full = c.completions.create(model="m", prompt="x", max_tokens=20, temperature=0, stop=["\n\nThe"])
        # a prefix that is not followed through is held, then released
        near = c.completions.create(model="m", prompt="x", max_tokens=20, temperature=0, stop="\n\nThX")
    assert "".join(parts) == "s" and not any("\n" in p for p in parts)
    assert full.choices[0].text == "s" and full.choices[0].finish_reason == "stop"
    assert near.choices[0].text == text and near.choices[0].finish_reason == "stop"  # ended by EOS


def test_stream_cancel_frees_the_device(server):
    url, app, backend = server
    worker = app.state.worker
    before = worker.counts["cancelled"]
    stream = client(url).completions.create(model="test-model", prompt="Hello", max_tokens=2000, stream=True,
                                            extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert wait_for(lambda: worker.counts["cancelled"] == before + 1)
    calls = backend.calls
    time.sleep(0.1)
    assert backend.calls == calls  # nothing runs for the gone client


def test_non_streaming_cancel_frees_the_device(server):
    url, app, backend = server
    worker = app.state.worker
    before, calls0 = worker.counts["cancelled"], backend.calls
    with pytest.raises(openai.APITimeoutError):
        client(url, timeout=1.0).completions.create(model="test-model", prompt="Hello", max_tokens=2000,
                                                    extra_body={"ignore_eos": True})
    assert wait_for(lambda: worker.counts["cancelled"] == before + 1)
    assert backend.calls - calls0 < 1000  # 2000 tokens take >= 10 s; it stopped soon after the client left
    assert client(url).completions.create(model="test-model", prompt="Hi", max_tokens=2).usage.completion_tokens == 2


def test_over_the_limits(server):
    url, *_ = server
    c = client(url)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.completions.create(model="test-model", prompt="hi", max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="limit of 64"):
        c.completions.create(model="test-model", prompt="word " * 200, max_tokens=1)
    with pytest.raises(openai.APIStatusError) as e:  # a body over max_body_bytes (64 KiB here)
        c.completions.create(model="test-model", prompt="x" * 100_000, max_tokens=1)
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="n:"):
        c.completions.create(model="test-model", prompt=["a"] * 9, n=2, max_tokens=1)


BAD = [  # (field, value) -> a 400 naming the field
    ("n", "two"), ("seed", -1), ("temperature", 1e-310), ("temperature", 3.0), ("top_p", 0), ("logprobs", 99),
    ("suffix", "end"), ("best_of", 3), ("max_tokens", "many"), ("stop", [1]), ("logit_bias", {"-3": 1}),
    ("logit_bias", {"5": 500}), ("presence_penalty", 9), ("frequency_penalty", "x"), ("echo", "yes"),
    ("stream", 1), ("tools", []), ("prompt", 3.5), ("prompt", []), ("prompt", [1, 999999]),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_completion_fields_get_a_400_naming_them(server, name, value):
    url, *_ = server
    c = client(url)
    with pytest.raises(openai.BadRequestError) as e:
        if name == "prompt":
            c.completions.create(model="test-model", prompt=value, max_tokens=2)
        else:
            c.completions.create(model="test-model", prompt="hi", extra_body={"max_tokens": 2, name: value})
    err = e.value.body
    assert err["param"] == name and err["message"].startswith(name) and err["type"] == "invalid_request_error"


CHAT_BAD = [("messages", []), ("messages", [{"role": "robot", "content": "x"}]),
            ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            ("top_logprobs", 3), ("response_format", {"type": "json_object"}), ("tools", [{"type": "function"}]),
            ("max_completion_tokens", 0), ("n", 2.5)]


@pytest.mark.parametrize("name,value", CHAT_BAD, ids=[f"{n}={v!r}" for n, v in CHAT_BAD])
def test_bad_chat_fields_get_a_400_naming_them(server, name, value):
    url, *_ = server
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, name: value}
    with pytest.raises(openai.BadRequestError) as e:
        client(url).chat.completions.create(model="test-model", messages=body.pop("messages"), extra_body=body)
    assert e.value.body["param"].split("[")[0].split(".")[0] == name


@pytest.mark.parametrize("raw,param", [
    (b'{"prompt": "caf\xe9", "max_tokens": 2}', "prompt"),                  # latin-1 bytes
    (b'{"prompt": "a\\ud800b", "max_tokens": 2}', "prompt"),                # a lone surrogate escape
    (b'{"prompt": "hi", "stop": ["\\udfff"], "max_tokens": 2}', "stop[0]"),
    (b'{"prompt": "hi", "temperature": NaN}', None),
    (b'{"prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b"}", None),       # past Python's int digit limit
    (b"[" * 100_00 + b"]" * 100_00, None),                                  # nested deeper than the parser
    (b"\xff\xfe{}", None), (b"", None), (b"[1]", None),
])
def test_bad_bodies_get_a_400(server, raw, param):
    url, *_ = server
    r = httpx.post(f"{url}/v1/completions", content=raw, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_20mb_body_is_refused_without_stalling_a_stream(server, tok):
    url, app, backend = server
    gaps, texts = [], []

    def reader():
        last = time.monotonic()
        with httpx.stream("POST", f"{url}/v1/completions", timeout=30,
                          json={"model": "test-model", "prompt": "Hello", "max_tokens": 150, "temperature": 0,
                                "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                    texts.append(json.loads(line[6:])["choices"][0]["text"])

    th = threading.Thread(target=reader)
    th.start()
    time.sleep(0.2)
    big = json.dumps({"model": "test-model", "prompt": "x" * (20 << 20)}).encode()
    r = httpx.post(f"{url}/v1/completions", content=big, headers={"content-type": "application/json"}, timeout=30)
    th.join(timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert "".join(texts) == chain_text(tok, "Hello", 150)  # the stream finished, every token intact


def test_queue_full_is_a_503_with_retry_after(tok):
    backend = SlowChain(tok.vocab_size, delay=0)
    backend.gate.clear()  # the first request holds the device
    app = create_app(backend, tok, "m", ServeLimits(queue_size=1, retry_after_s=3))
    with running(app) as url:
        body = {"model": "m", "prompt": "hi", "max_tokens": 2}
        pending = [threading.Thread(target=httpx.post, args=(f"{url}/v1/completions",), kwargs={"json": body,
                                                                                              "timeout": 30})
                   for _ in range(2)]
        try:
            # One at a time: two posts racing the worker's first dequeue could find the queue full themselves.
            pending[0].start()
            assert wait_for(lambda: app.state.worker.current is not None)
            pending[1].start()
            assert wait_for(lambda: app.state.worker.jobs.qsize() == 1 and app.state.worker.current is not None)
            with pytest.raises(openai.InternalServerError) as e:
                client(url).completions.create(**body)
        finally:
            backend.gate.set()
            for t in pending:
                if t.ident is not None:
                    t.join(timeout=30)
    assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "3"


class Flaky(SlowChain):
    """Times out (as the board driver does) on the call number ``fail_at``."""

    def __init__(self, vocab, fail_at, recoverable=True):
        super().__init__(vocab, delay=0)
        self.fail_at, self.recovered = fail_at, 0
        if recoverable:
            self.recover = self._recover

    def forward(self, ids):
        if self.calls + 1 == self.fail_at:
            self.calls += 1
            from accllm.host.engine import DeviceTimeout

            raise DeviceTimeout("the kernel did not signal ap_done within 0.1 s")
        return super().forward(ids)

    def _recover(self):
        self.recovered += 1


def test_device_timeout_recovers_the_backend_before_the_next_request(tok):
    be = Flaky(tok.vocab_size, fail_at=2)
    app = create_app(be, tok, "m")
    with running(app) as url:
        with pytest.raises(openai.InternalServerError, match="ap_done"):
            client(url).completions.create(model="m", prompt="hi", max_tokens=3)
        assert wait_for(lambda: be.recovered == 1) and app.state.worker.broken is None
        assert client(url).completions.create(model="m", prompt="hi", max_tokens=3).usage.completion_tokens == 3


def test_device_timeout_reopens_a_backend_without_recover(tok):
    first = Flaky(tok.vocab_size, fail_at=1, recoverable=False)
    second = SlowChain(tok.vocab_size, delay=0)
    opened = []

    def reopen():
        opened.append(second)
        return second

    app = create_app(first, tok, "m", reopen=reopen)
    with running(app) as url:
        with pytest.raises(openai.InternalServerError):
            client(url).completions.create(model="m", prompt="hi", max_tokens=3)
        r = client(url).completions.create(model="m", prompt="hi", max_tokens=3)
    assert opened == [second] and app.state.worker.backend is second and second.calls == 3
    assert r.usage.completion_tokens == 3


def test_device_timeout_without_a_way_to_reset_refuses_with_503(tok):
    app = create_app(Flaky(tok.vocab_size, fail_at=1, recoverable=False), tok, "m")
    with running(app) as url:
        with pytest.raises(openai.InternalServerError):
            client(url).completions.create(model="m", prompt="hi", max_tokens=3)
        with pytest.raises(openai.InternalServerError) as e:
            client(url).completions.create(model="m", prompt="hi", max_tokens=3)
        health = httpx.get(f"{url}/health", timeout=10).json()
    assert e.value.status_code == 503 and "retry-after" in e.value.response.headers
    assert health["status"] == "recovering" and "timed out" in health["problem"]


def test_sampling_extremes_do_not_crash(server):
    url, *_ = server
    c = client(url)
    for t in (1e-6, 2.0):
        r = c.completions.create(model="test-model", prompt="hi", max_tokens=3, temperature=t, top_p=1e-300, seed=2**64 - 1)
        assert r.usage.completion_tokens == 3
