"""The engine's output (contract 3): the top-K of the last token's logits, ONE definition (numpy only, so the board
runtime reads it without torch): ids sorted by logit descending, equal logits by lower id first."""
from __future__ import annotations

import numpy as np


def top_k(logits, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [k], logits float32 [k])``: the ``k`` largest logits, a stable sort of (-logit, id)."""
    x = np.asarray(logits, dtype=np.float32).reshape(-1)
    if isinstance(k, bool) or not 1 <= k <= x.size:
        raise ValueError(f"top-k needs 1 <= k <= {x.size} (the vocabulary), got {k}")
    ids = np.argsort(-x, kind="stable")[:k]  # stable: among equal logits the lower id comes first
    return ids.astype(np.int64), x[ids]


def dense_logits(ids, values, vocab: int) -> np.ndarray:
    """Top-K ``(ids, values)`` as a float32 [vocab] vector, -inf where the engine returned nothing: what a sampler
    that only looks at the top-K (greedy, a top-k cut within K) sees exactly as it would see the full logits."""
    out = np.full(vocab, -np.inf, np.float32)
    out[np.asarray(ids, np.int64)] = np.asarray(values, np.float32)
    return out
