"""Choosing the next token from logits: greedy, or seeded sampling with temperature, top-k and top-p;
optional logit bias and presence/frequency penalties (OpenAI semantics), and the model's log-probabilities.

Sampling runs on the host in float64 numpy, so a seed gives the same tokens on every backend that
returns the same logits. When the choice depends only on the largest logits (:meth:`Sampler.top_k_suffices`),
the backend may return just those (the engine's on-chip top-K): the sampler sees them as the full logits with
-inf elsewhere, which gives the same token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Below this a temperature is numerically greedy and only invites overflow: ask for 0 instead.
MIN_TEMPERATURE = 1e-6
LOGIT_BIAS_RANGE = 100.0   # OpenAI's bounds
PENALTY_RANGE = 2.0


@dataclass
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 0.0          # 0: greedy (argmax)
    top_k: int = 0                    # 0: no top-k cut
    top_p: float = 1.0                # 1: no nucleus cut
    seed: int | None = None           # None: a fresh random seed
    stop_tokens: tuple[int, ...] = ()  # token ids that end generation (not emitted)
    stop: tuple[str, ...] = field(default=())  # strings that end generation (text up to them is emitted)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    presence_penalty: float = 0.0     # subtracted once from the logit of every token generated so far
    frequency_penalty: float = 0.0    # subtracted per occurrence so far

    def validate(self, max_tokens_limit: int | None = None, min_tokens: int = 1) -> "SamplingParams":
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < min_tokens:
            raise ValueError(f"max_tokens must be an integer >= {min_tokens}, got {self.max_tokens!r}")
        if max_tokens_limit is not None and self.max_tokens > max_tokens_limit:
            raise ValueError(f"max_tokens {self.max_tokens} exceeds the limit of {max_tokens_limit}")
        if not (np.isfinite(self.temperature) and (self.temperature == 0 or self.temperature >= MIN_TEMPERATURE)):
            raise ValueError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, "
                             f"got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if any(not isinstance(t, (int, np.integer)) or t < 0 for t in self.stop_tokens):
            raise ValueError(f"stop_tokens must be non-negative token ids, got {list(self.stop_tokens)!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {list(self.stop)!r}")
        for t, b in self.logit_bias.items():
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
                raise ValueError(f"logit_bias keys must be token ids >= 0, got {t!r}")
            if not (np.isfinite(b) and abs(b) <= LOGIT_BIAS_RANGE):
                raise ValueError(f"logit_bias values must lie in [-{LOGIT_BIAS_RANGE:g}, {LOGIT_BIAS_RANGE:g}], "
                                 f"got {b!r} for token {t}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (np.isfinite(v) and abs(v) <= PENALTY_RANGE):
                raise ValueError(f"{name} must lie in [-{PENALTY_RANGE:g}, {PENALTY_RANGE:g}], got {v!r}")
        return self


def log_softmax(logits) -> np.ndarray:
    """The model's log-probabilities (float64) from raw logits; -inf where a logit is -inf."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = np.max(x[np.isfinite(x)]) if np.isfinite(x).any() else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return x - m - np.log(np.sum(np.exp(x - m)))


def top_logprobs(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely token ids with their log-probabilities, most likely first (ties: lower id)."""
    if k <= 0:
        return []
    k = min(k, logprobs.size)
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.lexsort((idx, -logprobs[idx]))]
    return [(int(i), float(logprobs[i])) for i in idx]


class Sampler:
    """Stateful (seeded) next-token choice for one generation; remembers what it chose for the penalties."""

    def __init__(self, params: SamplingParams):
        self.p = params.validate(min_tokens=0)
        self.rng = np.random.default_rng(params.seed)
        self.counts: dict[int, int] = {}

    def top_k_suffices(self) -> int | None:
        """How many of the largest logits decide the next token, or None when the full logits are needed: greedy
        needs 1, a top-k cut k; logit bias and penalties can lift any token, an uncut sample draws from all."""
        p = self.p
        if p.logit_bias or p.presence_penalty or p.frequency_penalty:
            return None
        if p.temperature == 0:
            return 1
        return p.top_k or None

    def adjust(self, logits) -> np.ndarray:
        """Logits after logit bias and penalties (float64), before temperature and the cuts."""
        x = np.array(logits, dtype=np.float64).reshape(-1)
        if not np.isfinite(x).any():
            raise ValueError("the device returned logits with no finite value")
        for t, b in self.p.logit_bias.items():
            if t < x.size:
                x[t] += b
        if self.counts and (self.p.presence_penalty or self.p.frequency_penalty):
            ids = np.fromiter(self.counts, dtype=np.int64)
            n = np.fromiter(self.counts.values(), dtype=np.float64)
            x[ids] -= self.p.presence_penalty + self.p.frequency_penalty * n
        return x

    def __call__(self, logits) -> int:
        tok = self._choose(self.adjust(logits))
        self.counts[tok] = self.counts.get(tok, 0) + 1
        return tok

    def _choose(self, x: np.ndarray) -> int:
        x = np.where(np.isnan(x), -np.inf, x)
        if self.p.temperature == 0:
            return int(np.argmax(x))
        # Shift before dividing: logits / a small temperature would overflow, (logits - max) / T cannot.
        x = (x - x.max()) / self.p.temperature
        if self.p.top_k and self.p.top_k < x.size:
            kth = np.partition(x, -self.p.top_k)[-self.p.top_k]
            x = np.where(x >= kth, x, -np.inf)
        probs = np.exp(x)
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
