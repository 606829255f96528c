"""Choosing the next token from logits: greedy, or seeded sampling with temperature, top-k and top-p.

Sampling runs on the host in float64 numpy, so a seed gives the same tokens on every backend that
returns the same logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 0.0          # 0: greedy (argmax)
    top_k: int = 0                    # 0: no top-k cut
    top_p: float = 1.0                # 1: no nucleus cut
    seed: int | None = None           # None: a fresh random seed
    stop_tokens: tuple[int, ...] = ()  # token ids that end generation (not emitted)
    stop: tuple[str, ...] = field(default=())  # strings that end generation (text up to them is emitted)

    def validate(self, max_tokens_limit: int | None = None) -> "SamplingParams":
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if max_tokens_limit is not None and self.max_tokens > max_tokens_limit:
            raise ValueError(f"max_tokens {self.max_tokens} exceeds the limit of {max_tokens_limit}")
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if any(not isinstance(t, (int, np.integer)) or t < 0 for t in self.stop_tokens):
            raise ValueError(f"stop_tokens must be non-negative token ids, got {list(self.stop_tokens)!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)!r}")
        return self


class Sampler:
    """Stateful (seeded) next-token choice for one generation."""

    def __init__(self, params: SamplingParams):
        self.p = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits) -> int:
        x = np.asarray(logits, dtype=np.float64).reshape(-1)
        if not np.isfinite(x).any():
            raise ValueError("the device returned logits with no finite value")
        if self.p.temperature == 0:
            return int(np.argmax(x))
        x = x / self.p.temperature
        if self.p.top_k and self.p.top_k < x.size:
            kth = np.partition(x, -self.p.top_k)[-self.p.top_k]
            x = np.where(x >= kth, x, -np.inf)
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        if self.p.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            keep = order[: int(np.searchsorted(cum, self.p.top_p)) + 1]
            mask = np.zeros_like(probs, dtype=bool)
            mask[keep] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))
