"""The device interface every backend implements (the backends themselves: :mod:`accllm.host.backends`).

A backend runs the model one stream at a time: ``reset()`` starts a new stream (empty KV cache),
``forward(ids)`` feeds the next tokens at the next stream positions and returns the logits after the
last one (float32 numpy [vocab]). Prefill is ``forward(prompt)``, decode is ``forward([token])``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    name: str = "?"
    vocab_size: int
    context: int | None = None  # longest stream it accepts (None: unbounded, Λ)

    @abstractmethod
    def reset(self) -> None:
        ...

    @abstractmethod
    def forward(self, ids: list[int]) -> np.ndarray:
        ...

    def resident_bytes(self) -> int | None:
        """Bytes held for the KV cache (constant under Λ), when the backend can say."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
