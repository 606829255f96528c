"""Streaming generation: prefill the prompt, then decode one token at a time through a backend.

::

    gen = Generation(backend, tokenizer, "Once upon a time", SamplingParams(max_tokens=32))
    for event in gen:            # tokens as they arrive
        print(event.text, end="", flush=True)
    gen.stats                    # time to first token, tokens/s, finish reason

The backend owns the KV cache (Λ: constant memory however long the stream); this loop only feeds
tokens and samples. Closing the generator early (``gen.close()``, or a client disconnect in the
server) stops it between two device calls.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .sampling import Sampler, SamplingParams
from .tokenizer import IncrementalDecoder, Tokenizer


@dataclass
class TokenEvent:
    index: int        # 0 for the first generated token
    token_id: int
    text: str         # the new text this token completes ("" while a character is incomplete)
    seconds: float    # since the generation started


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


class Generation:
    """An iterator of :class:`TokenEvent`; ``stats`` is complete once it is exhausted or closed."""

    def __init__(self, backend, tokenizer: Tokenizer, prompt, params: SamplingParams, max_prompt_tokens: int | None = None,
                 record: bool = True):
        self.backend, self.tok = backend, tokenizer
        self.params = params.validate()
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else tokenizer.check_ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise ValueError(f"the prompt has {len(ids)} tokens; the limit is {max_prompt_tokens}")
        self.prompt_ids = ids
        self.record = record  # False: keep no growing output (endless streams); output_ids/text stay empty
        self.output_ids: list[int] = []
        self.text = ""
        self._tail = ""  # the last characters, for stop strings
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

    def _run(self):
        p, st = self.params, self.stats
        sampler = Sampler(p)
        stop_ids = set(p.stop_tokens)
        keep = max((len(x) for x in p.stop), default=0)
        decoder = IncrementalDecoder(self.tok, self.prompt_ids)
        t0 = time.perf_counter()
        t_first = None
        try:
            self.backend.reset()
            logits = self.backend.forward(self.prompt_ids)
            for i in range(p.max_tokens):
                tok = sampler(logits)
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                    st.time_to_first_token_s = now - t0
                if tok in stop_ids:
                    st.finish_reason = "stop"
                    return
                st.generated_tokens += 1
                st.decode_seconds = now - t_first
                piece = decoder.push(tok)
                stop_at = _first_stop(self._tail, piece, p.stop)
                if stop_at is not None:
                    piece = piece[:stop_at]
                if self.record:
                    self.output_ids.append(tok)
                    self.text += piece
                self._tail = (self._tail + piece)[-keep:] if keep else ""
                yield TokenEvent(i, tok, piece, now - t0)
                if stop_at is not None:
                    st.finish_reason = "stop"
                    return
                if i + 1 < p.max_tokens:
                    logits = self.backend.forward([tok])
            st.finish_reason = "length"
        finally:
            st.total_seconds = time.perf_counter() - t0


def _first_stop(text: str, piece: str, stops) -> int | None:
    """Index in ``piece`` where the earliest stop string completed by it begins (clipped to 0), or None."""
    best = None
    for s in stops:
        tail = text[-(len(s) - 1):] if len(s) > 1 else ""
        j = (tail + piece).find(s)
        if j >= 0:
            cut = max(j - len(tail), 0)
            best = cut if best is None else min(best, cut)
    return best
