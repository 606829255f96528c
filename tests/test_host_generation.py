"""Sampling, incremental detokenisation and the streaming generation loop (with the real tokenizer)."""
import numpy as np
import pytest

from accllm.host.generate import Generation
from accllm.host.sampling import Sampler, SamplingParams
from accllm.host.tokenizer import IncrementalDecoder, Tokenizer
from accllm.quant.model import BUNDLED_MODEL


class ChainBackend:
    """Lowest layer stand-in: logits peaked at a fixed successor of the last token (for loop tests)."""

    name = "chain"

    def __init__(self, vocab, successor):
        self.vocab_size, self.succ = vocab, successor
        self.calls, self.pos = [], 0

    def reset(self):
        self.pos = 0

    def forward(self, ids):
        self.calls.append(list(ids))
        self.pos += len(ids)
        x = np.zeros(self.vocab_size, np.float32)
        x[self.succ(ids[-1])] = 5.0
        return x


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(BUNDLED_MODEL)


def test_greedy_is_argmax_and_seeded_sampling_repeats():
    logits = np.array([0.1, 3.0, 2.9, -1.0])
    assert Sampler(SamplingParams(temperature=0))(logits) == 1
    p = SamplingParams(temperature=1.0, seed=7)
    s1, s2, s3 = Sampler(p), Sampler(p), Sampler(SamplingParams(temperature=1.0, seed=8))
    a = [s1(logits) for _ in range(50)]
    assert a == [s2(logits) for _ in range(50)] and len(set(a)) > 1
    assert a != [s3(logits) for _ in range(50)]


def test_top_k_and_top_p_restrict_the_support():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0))
    assert {s(logits) for _ in range(300)} == {0, 1}
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=0))  # 0.5 < 0.7 <= 0.8: keep two tokens
    assert {s(logits) for _ in range(300)} == {0, 1}
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.4, seed=0))
    assert {s(logits) for _ in range(50)} == {0}


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                 dict(top_k=-2), dict(stop=("",)), dict(stop_tokens=(-1,))])
def test_bad_sampling_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad).validate()


def test_incremental_decoder_reassembles_the_text(tok):
    text = "The café’s naïve owner said: “ok” — 3×4 = 12 🙂 and left."
    ids = tok.encode(text, add_bos=False)
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


def test_generation_streams_prefill_then_one_token_per_call(tok):
    be = ChainBackend(tok.vocab_size, lambda t: (t * 31 + 7) % 4000 + 10)
    gen = Generation(be, tok, "Once upon a time", SamplingParams(max_tokens=5, stop_tokens=(tok.eos_id,)))
    events = list(gen)
    assert be.calls[0] == tok.encode("Once upon a time")
    assert [len(c) for c in be.calls[1:]] == [1, 1, 1, 1]  # no forward after the last token
    assert [e.token_id for e in events] == gen.output_ids
    assert gen.output_ids[0] == be.succ(be.calls[0][-1])
    assert all(gen.output_ids[i + 1] == be.succ(gen.output_ids[i]) for i in range(4))
    assert gen.stats.finish_reason == "length" and gen.stats.generated_tokens == 5
    assert gen.stats.time_to_first_token_s is not None and gen.text == "".join(e.text for e in events)


def test_stop_token_and_stop_string(tok):
    eos = tok.eos_id
    be = ChainBackend(tok.vocab_size, lambda t: eos)
    gen = Generation(be, tok, "a b", SamplingParams(max_tokens=5, stop_tokens=(eos,)))
    assert list(gen) == [] and gen.stats.finish_reason == "stop"
    words = tok.encode(" one two three four", add_bos=False)
    succ = {a: b for a, b in zip(words, words[1:])}
    be = ChainBackend(tok.vocab_size, lambda t: succ.get(t, words[0]))
    gen = Generation(be, tok, [tok.bos_id], SamplingParams(max_tokens=20, stop=(" thr",)))
    list(gen)
    assert gen.text == " one two" and gen.stats.finish_reason == "stop"


def test_bad_prompts_are_refused(tok):
    be = ChainBackend(tok.vocab_size, lambda t: 5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Generation(be, tok, [1, tok.vocab_size + 3], SamplingParams())
    with pytest.raises(ValueError, match="limit"):
        Generation(be, tok, "word " * 50, SamplingParams(), max_prompt_tokens=10)
    with pytest.raises(ValueError, match="string"):
        Generation(be, tok, 3.5, SamplingParams())



class DistinctBackend(ChainBackend):
    """Distinct logits (no ties at a top-k boundary), a deterministic function of the last token."""

    def forward(self, ids):
        self.calls.append(list(ids))
        return np.random.default_rng(int(ids[-1])).normal(0, 2, self.vocab_size).astype(np.float32)


class TopBackend(DistinctBackend):
    """A backend with an on-chip top-K of ``topk`` (the device interface's forward_top), recording which it ran."""

    def __init__(self, vocab, topk=4):
        super().__init__(vocab, None)
        self.topk, self.used = topk, []

    def forward(self, ids):
        self.used.append("forward")
        return super().forward(ids)

    def forward_top(self, ids, k):
        from accllm.sim.topk import top_k

        self.used.append("forward_top")
        assert k <= self.topk
        return top_k(DistinctBackend.forward(self, ids), k)


@pytest.mark.parametrize("params, logprobs, top", [
    (dict(temperature=0), None, True),                              # greedy: the top-1 decides
    (dict(temperature=1.0, top_k=3, seed=1), None, True),           # a top-k cut within K
    (dict(temperature=1.0, top_k=5, seed=1), None, False),          # beyond the device's K = 4
    (dict(temperature=1.0, seed=1), None, False),                   # an uncut sample draws from every logit
    (dict(temperature=0, logit_bias={7: 50.0}), None, False),       # a bias can lift any token
    (dict(temperature=0, presence_penalty=1.0), None, False),
    (dict(temperature=0), 2, False),                                # log-probabilities need the whole softmax
])
def test_generation_uses_forward_top_when_the_top_k_decides(tok, params, logprobs, top):
    b = TopBackend(50)
    gen = Generation(b, tok, [11, 12], SamplingParams(max_tokens=6, **params), logprobs=logprobs)
    out = [e.token_id for e in gen]
    assert set(b.used) == ({"forward_top"} if top else {"forward"}), b.used
    assert len(b.used) == 6  # prefill + 5 decode steps, all through the one path
    full = Generation(DistinctBackend(50, None), tok, [11, 12], SamplingParams(max_tokens=6, **params))
    assert out == [e.token_id for e in full]  # the same tokens as from the full logits
