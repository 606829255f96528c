"""Streaming generation: prefill the prompt, then decode one token at a time through a backend.

::

    gen = Generation(backend, tokenizer, "Once upon a time", SamplingParams(max_tokens=32))
    for event in gen:            # tokens as they arrive
        print(event.text, end="", flush=True)
    gen.stats                    # time to first token, tokens/s, finish reason

The backend owns the KV cache (Λ: constant memory however long the stream); this loop only feeds
tokens and samples. Closing the generator early (``gen.close()``, or a client disconnect in the
server) stops it between two device calls.

Stop strings: text that could still turn into a stop string is held back (:class:`StopText`) and
released once it cannot, so the start of a stop string is never emitted. When generation ends for
another reason the held text is released, in a last event with ``token_id`` None if no token carries it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .sampling import Sampler, SamplingParams, log_softmax, top_logprobs
from .tokenizer import IncrementalDecoder, Tokenizer


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float | None                 # None for the first prompt token (nothing predicts it)
    top: list[tuple[int, float]]          # the most likely ids at this position, with their log-probabilities


@dataclass
class TokenEvent:
    index: int        # 0 for the first generated token
    token_id: int | None  # None: no new token, only held-back text released at the end
    text: str         # the new text to show ("" while a character is incomplete or text may start a stop string)
    seconds: float    # since the generation started
    piece: str = ""   # this token's own text in the output (before stop-string handling)
    logprob: TokenLogprob | None = None  # when the generation was asked for log-probabilities


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token_s: float | None = None
    decode_seconds: float = 0.0       # from the first token to the last
    total_seconds: float = 0.0
    finish_reason: str | None = None  # "stop" (stop token or string), "length" (max_tokens) or "cancelled"

    @property
    def decode_tokens_per_s(self) -> float | None:
        n = self.generated_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else None

    def to_json(self) -> dict:
        return {**asdict(self), "decode_tokens_per_s": self.decode_tokens_per_s}


class StopText:
    """Emits streamed text, holding back any tail that is the beginning of a stop string."""

    def __init__(self, stops):
        self.stops = tuple(stops)
        self.held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """(text safe to show, whether a stop string was completed); after a stop the text ends before it."""
        s = self.held + piece
        hits = [j for j in (s.find(x) for x in self.stops) if j >= 0]
        if hits:
            self.held = ""
            return s[:min(hits)], True
        keep = max((k for x in self.stops for k in range(min(len(s), len(x) - 1), 0, -1) if s.endswith(x[:k])),
                   default=0)
        self.held = s[len(s) - keep:] if keep else ""
        return s[:len(s) - keep], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class Generation:
    """An iterator of :class:`TokenEvent`; ``stats`` is complete once it is exhausted or closed.

    ``logprobs``: also report the model's log-probability of each generated token and its ``logprobs``
    most likely alternatives (raw model logits: before logit bias, penalties and temperature).
    ``prompt_logprobs``: the same for every prompt token (the prompt is then fed one token per device
    call), in ``self.prompt_logprobs``; then ``max_tokens`` may be 0 (score the prompt only).
    """

    def __init__(self, backend, tokenizer: Tokenizer, prompt, params: SamplingParams, max_prompt_tokens: int | None = None,
                 record: bool = True, logprobs: int | None = None, prompt_logprobs: bool = False):
        self.backend, self.tok = backend, tokenizer
        self.params = params.validate(min_tokens=0 if prompt_logprobs else 1)
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else tokenizer.check_ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise ValueError(f"the prompt has {len(ids)} tokens; the limit is {max_prompt_tokens}")
        self.prompt_ids = ids
        self.record = record  # False: keep no growing output (endless streams); output_ids/text stay empty
        self.logprobs = logprobs
        self.want_prompt_logprobs = prompt_logprobs
        self.prompt_logprobs: list[TokenLogprob] = []
        self.output_ids: list[int] = []
        self.text = ""
        self.stats = GenerationStats(prompt_tokens=len(ids))
        self._it = self._run()

    def __iter__(self):
        return self

    def __next__(self) -> TokenEvent:
        return next(self._it)

    def close(self) -> None:
        if self.stats.finish_reason is None:
            self.stats.finish_reason = "cancelled"
        self._it.close()

    def _logprob(self, logits, token: int) -> TokenLogprob:
        lp = log_softmax(logits)
        return TokenLogprob(token, float(lp[token]), top_logprobs(lp, self.logprobs or 0))

    def _device(self, ids, top: int | None):
        """The backend's logits for ``ids``: the full vector, or (``top``) only the ``top`` largest, as a vector with
        -inf elsewhere (``accllm.sim.topk.dense_logits``): the engine then sends back its top-K, not the logits."""
        if top is None:
            return self.backend.forward(ids)
        from accllm.sim.topk import dense_logits

        return dense_logits(*self.backend.forward_top(ids, top), self.backend.vocab_size)

    def _top(self, sampler: Sampler) -> int | None:
        """How many of the largest logits the generation needs (None: all): log-probabilities need the softmax over
        every logit; a backend with an on-chip top-K serves up to its K."""
        k = sampler.top_k_suffices()
        if k is None or self.logprobs is not None or not hasattr(self.backend, "forward_top"):
            return None
        limit = getattr(self.backend, "topk", None)
        return k if limit is None or k <= limit else None

    def _prefill(self, top: int | None = None):
        if not self.want_prompt_logprobs:
            return self._device(self.prompt_ids, top)
        # One call per token: each position's logits score the next prompt token.
        self.prompt_logprobs = [TokenLogprob(self.prompt_ids[0], None, [])]
        logits = None
        for i, t in enumerate(self.prompt_ids):
            logits = self.backend.forward([t])
            if i + 1 < len(self.prompt_ids):
                self.prompt_logprobs.append(self._logprob(logits, self.prompt_ids[i + 1]))
        return logits

    def _run(self):
        p, st = self.params, self.stats
        sampler = Sampler(p)
        stop_ids = set(p.stop_tokens)
        stops = StopText(p.stop)
        decoder = IncrementalDecoder(self.tok, self.prompt_ids)
        t0 = time.perf_counter()
        t_first = None
        try:
            self.backend.reset()
            top = self._top(sampler)
            logits = self._prefill(top)
            for i in range(p.max_tokens):
                tok = sampler(logits)
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                    st.time_to_first_token_s = now - t0
                if tok in stop_ids:
                    st.finish_reason = "stop"
                    rest = stops.flush()
                    if rest:
                        if self.record:
                            self.text += rest
                        yield TokenEvent(i, None, rest, now - t0)
                    return
                st.generated_tokens += 1
                st.decode_seconds = now - t_first
                piece = decoder.push(tok)
                text, stopped = stops.push(piece)
                last = stopped or i + 1 == p.max_tokens
                if last and not stopped:
                    text += stops.flush()
                if self.record:
                    self.output_ids.append(tok)
                    self.text += text
                lp = self._logprob(logits, tok) if self.logprobs is not None else None
                yield TokenEvent(i, tok, text, now - t0, piece, lp)
                if stopped:
                    st.finish_reason = "stop"
                    return
                if not last:
                    logits = self._device([tok], top)
            st.finish_reason = "length"
        finally:
            st.total_seconds = time.perf_counter() - t0
