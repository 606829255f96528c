"""The host side of the Λ KV cache in device memory.

The cache's slot layout and packing are :mod:`accllm.sim.kv_layout` (the one definition). This manager
owns the device buffer — one region of ``layout.nbytes``, allocated once, so memory is constant however
long the stream — and the bookkeeping for each engine run: the stream position of the token, the slot
it is written to, and how many slots (a prefix of the slot order) its query attends over.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accllm.sim.kv_layout import KVLayout


@dataclass(frozen=True)
class KVStep:
    pos: int        # stream position of the token being run
    slot: int       # slot its K and V are written to
    occupied: int   # slots 0..occupied-1 hold the keys its query sees (Λ)


class LambdaKVManager:
    def __init__(self, layout: KVLayout, allocate):
        self.layout = layout
        self.buffer = allocate((layout.nbytes,), np.uint8)
        self.pos = 0

    def reset(self) -> None:
        # No clearing needed: a run only reads the occupied prefix, which it has written itself.
        self.pos = 0

    def next_step(self) -> KVStep:
        p = self.pos
        return KVStep(p, self.layout.slot_of(p), self.layout.occupied(p))

    def advance(self) -> None:
        self.pos += 1

    def slot_positions(self) -> np.ndarray:
        """Stream position held by each occupied slot now (empty before the first token)."""
        return self.layout.slot_positions(self.pos - 1) if self.pos else np.zeros(0, dtype=np.int64)

    def image(self) -> bytes:
        """The cache's bytes as the device holds them (read back for checks against the golden model)."""
        self.buffer.sync_from_device()
        return bytes(self.buffer)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)
