"""Stop strings never show their beginning (one implementation for `accllm run` and `accllm serve`); the
sampling extras the server exposes (logit bias, penalties, extreme temperatures, seeds)."""
import io

import numpy as np
import pytest

from accllm.host.generate import Generation, StopText
from accllm.host.run import stream
from accllm.host.sampling import Sampler, SamplingParams, log_softmax, top_logprobs
from accllm.host.tokenizer import Tokenizer
from accllm.quant.model import BUNDLED_MODEL
from serve_fixtures import ScriptBackend


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(BUNDLED_MODEL)


@pytest.mark.parametrize("pieces,stops,shown,stopped", [
    (["s", "\n", "\n", "The", " end"], ["\n\nThe"], ["s", "", "", ""], True),
    (["s", "\n", "\n", "Thx"], ["\n\nThe"], ["s", "", "", "\n\nThx"], False),
    (["ab", "cd"], ["bc"], ["a", ""], True),
    (["xy", "z"], ["yz", "xyz"], ["", ""], True),          # the earliest stop wins
    (["a\n", "\nb", "c"], ["\n\n"], ["a", ""], True),
    (["abc"], [], ["abc"], False),
])
def test_stop_text_holds_back_possible_stop_prefixes(pieces, stops, shown, stopped):
    st = StopText(stops)
    out, done = [], False
    for p in pieces:
        text, done = st.push(p)
        out.append(text)
        if done:
            break
    assert out == shown and done == stopped
    full = "".join(pieces)
    if not stopped:
        assert "".join(out) + st.flush() == full
    else:
        assert "".join(out) == full[:min(full.find(s) for s in stops if s in full)]


def _gen(tok, text, stop, max_tokens=20, eos=True):
    script = tok.encode(text, add_bos=False) + ([tok.eos_id] if eos else [])
    return Generation(ScriptBackend(tok.vocab_size, script), tok, "x",
                      SamplingParams(max_tokens=max_tokens, stop=tuple(stop), stop_tokens=(tok.eos_id,)))


def test_generation_never_emits_the_start_of_a_stop(tok):
    gen = _gen(tok, "s\n\nThe end", ["\n\nThe"])
    events = list(gen)
    assert [e.text for e in events] == ["s", "", "", ""] and gen.text == "s" and gen.stats.finish_reason == "stop"


def test_held_text_is_released_at_eos_and_at_max_tokens(tok):
    gen = _gen(tok, "a\n\nb\n", ["\n\nThe", "\nX"])      # ends by EOS while "\n" is held
    events = list(gen)
    assert gen.text == "a\n\nb\n" and "".join(e.text for e in events) == gen.text
    assert events[-1].token_id is None and events[-1].text == "\n" and gen.stats.finish_reason == "stop"
    n = len(tok.encode("a\n\nb", add_bos=False)) - 1  # every token but "b"
    gen = _gen(tok, "a\n\nb", ["\n\nThe"], max_tokens=n)  # ends by length while "\n\n" is held
    events = list(gen)
    assert gen.text == "a\n\n" and events[-1].text.endswith("\n\n") and gen.stats.finish_reason == "length"


def test_accllm_run_shows_no_stop_prefix(tok):
    out = io.StringIO()
    script = tok.encode("s\n\nThe end", add_bos=False)
    stream(ScriptBackend(tok.vocab_size, script), tok, "x", SamplingParams(max_tokens=20, stop=("\n\nThe",)), out=out)
    assert out.getvalue() == "xs\n"


def test_logit_bias_and_penalties():
    logits = np.array([3.0, 2.0, 0.0, 0.0])
    assert Sampler(SamplingParams(logit_bias={2: 5.0}))(logits) == 2
    s = Sampler(SamplingParams(frequency_penalty=0.6))  # greedy; each repeat of token 0 costs 0.6
    assert [s(logits) for _ in range(4)] == [0, 0, 1, 0]
    s = Sampler(SamplingParams(presence_penalty=1.5))   # once chosen, each token costs 1.5 for good
    assert [s(logits) for _ in range(3)] == [0, 1, 0]


@pytest.mark.parametrize("t", [1e-6, 1e-3, 2.0, 50.0])
def test_tiny_and_large_temperatures_sample_without_overflow(t):
    logits = np.array([400.0, 399.0, -300.0, 0.0])
    s = Sampler(SamplingParams(temperature=t, seed=1))
    got = {s(logits) for _ in range(200)}
    assert got <= {0, 1, 2, 3} and (got == {0} if t <= 1e-3 else 0 in got)


@pytest.mark.parametrize("bad", [dict(temperature=1e-310), dict(temperature=float("nan")), dict(seed=-1),
                                 dict(seed=2**64), dict(seed=True), dict(logit_bias={3: 101.0}),
                                 dict(logit_bias={-1: 1.0}), dict(presence_penalty=2.5),
                                 dict(frequency_penalty=float("inf"))])
def test_bad_sampling_extras_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad).validate()


def test_log_softmax_and_top_logprobs():
    x = np.array([1.0, 3.0, -np.inf, 3.0])
    lp = log_softmax(x)
    assert abs(np.exp(lp).sum() - 1) < 1e-12 and lp[2] == -np.inf
    assert top_logprobs(lp, 2) == [(1, float(lp[1])), (3, float(lp[3]))]
    assert top_logprobs(lp, 0) == []
