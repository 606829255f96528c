"""The device interface every backend implements (the backends themselves: :mod:`accllm.host.backends`).

A backend runs the model one stream at a time: ``reset()`` starts a new stream (empty KV cache),
``forward(ids)`` feeds the next tokens at the next stream positions and returns the logits after the
last one (float32 numpy [vocab]). Prefill is ``forward(prompt)``, decode is ``forward([token])``.
``forward_top(ids, k)`` is the same run returning only the ``k`` largest logits (``accllm.sim.topk``: ids by logit
descending, ties by lower id): what the engine sends back when the host needs no more (``topk``: the largest ``k``
it gives without the full logits; None: any ``k``, computed here from :meth:`forward`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    name: str = "?"
    vocab_size: int
    context: int | None = None  # longest stream it accepts (None: unbounded, Λ)
    topk: int | None = None  # K of an on-chip top-K (None: forward_top takes its top-K from the full logits)

    @abstractmethod
    def reset(self) -> None:
        ...

    @abstractmethod
    def forward(self, ids: list[int]) -> np.ndarray:
        ...

    def forward_top(self, ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``forward(ids)``'s ``k`` largest logits: ``(ids int64 [k], logits float32 [k])``."""
        from accllm.sim.topk import top_k

        return top_k(self.forward(ids), k)

    def resident_bytes(self) -> int | None:
        """Bytes held for the KV cache (constant under Λ), when the backend can say."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
