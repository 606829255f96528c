"""The Λ KV cache of the engine: ONE definition of its slot layout and of the KV4 packing.

Per layer and KV head the cache has ``slots = sinks + window`` slots: sink slots ``0..S-1`` hold stream
positions ``0..S-1``; position ``p >= S`` lives in ring slot ``S + (p - S) % W``. Memory is constant however
long the stream. A token is written to its slot *before* its query attends, so after writing position
``i`` the occupied slots are exactly the keys Λ lets ``i`` see (``j <= i`` and (``j < S`` or ``i - j < W``)):
attention runs over the occupied slots in slot order (sinks, then ring slots 0..W-1), which is also the
order of every reduction over them (softmax sum, PV).

Each slot of K (and of V) holds one token of one KV head: ``head_dim`` 4-bit codes, a float32 scale and a
4-bit zero point (``accllm.quant.checkpoint.fake_quant_kv``: per token and head, asymmetric). K is stored
after RoPE, rotated at the token's stream position.

Packed form (the engine's memory image, little-endian), per layer, tensor (K then V), KV head, slot:

    codes   head_dim/2 bytes   code 2i in the low nibble of byte i, code 2i+1 in the high nibble
    scale   float32
    zero    uint8 (0..15)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KV_BITS = 4


def pack_kv4(codes) -> np.ndarray:
    """uint4 codes [..., D] (D even) -> bytes [..., D/2], even index in the low nibble."""
    c = np.asarray(codes, dtype=np.uint8)
    if c.shape[-1] % 2:
        raise ValueError(f"KV4 packing needs an even head_dim, got {c.shape[-1]}")
    if c.size and int(c.max()) > 15:
        raise ValueError(f"KV4 codes must lie in [0, 15], got max {int(c.max())}")
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def unpack_kv4(packed) -> np.ndarray:
    """bytes [..., D/2] -> uint4 codes [..., D]."""
    p = np.asarray(packed, dtype=np.uint8)
    return np.stack([p & 0xF, p >> 4], axis=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])


@dataclass(frozen=True)
class KVLayout:
    layers: int
    kv_heads: int
    head_dim: int
    sinks: int
    window: int

    def __post_init__(self):
        if self.sinks < 0 or self.window <= 0:
            raise ValueError(f"Λ layout needs sinks >= 0 and window > 0, got sinks={self.sinks}, window={self.window}")
        if self.head_dim % 2:
            raise ValueError(f"KV4 packing needs an even head_dim, got {self.head_dim}")

    @property
    def slots(self) -> int:
        return self.sinks + self.window

    def slot_of(self, pos: int) -> int:
        if pos < 0:
            raise ValueError(f"stream position must be >= 0, got {pos}")
        return pos if pos < self.sinks else self.sinks + (pos - self.sinks) % self.window

    def occupied(self, pos: int) -> int:
        """Number of occupied slots (a prefix 0..n-1 of the slot order) once position ``pos`` is written."""
        return min(pos + 1, self.slots)

    def slot_positions(self, pos: int) -> np.ndarray:
        """Stream position held by each occupied slot after writing ``pos`` (for checks and debugging)."""
        n = self.occupied(pos)
        out = np.arange(n)
        if pos >= self.slots:
            ring = np.arange(self.window)
            # Ring slot r holds the latest position p <= pos with (p - S) % W == r.
            out[self.sinks:] = pos - ((pos - self.sinks - ring) % self.window)
        return out

    @property
    def slot_bytes(self) -> int:
        return self.head_dim // 2 + 4 + 1

    @property
    def nbytes(self) -> int:
        """Bytes of the whole packed cache (K and V, all layers)."""
        return self.layers * 2 * self.kv_heads * self.slots * self.slot_bytes


def pack_slots(layout: KVLayout, codes, scales, zeros) -> bytes:
    """The engine's memory image of a cache (see the module docstring) from its unpacked form: integer codes
    [layers, 2, kv_heads, slots, head_dim], float32 scales and integer zero points [layers, 2, kv_heads, slots]."""
    codes = pack_kv4(codes)  # [L, 2, H, S, D/2]
    lead = codes.shape[:-1]
    rec = np.zeros((*lead, layout.slot_bytes), np.uint8)
    rec[..., : layout.head_dim // 2] = codes
    rec[..., layout.head_dim // 2: layout.head_dim // 2 + 4] = \
        np.ascontiguousarray(scales, dtype="<f4")[..., None].view(np.uint8).reshape(*lead, 4)
    rec[..., -1] = np.asarray(zeros).astype(np.uint8)
    return rec.tobytes()
