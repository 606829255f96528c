"""The packed weight blob: ONE definition, used by the compiler, the C-simulation and the runtime.

Container: :mod:`accllm.hls.container` (magic ``ACLBLOB``, versioned, sha256). The payload is a sequence
of 64-byte-aligned sections listed in the metadata (``sections: {name: {offset, nbytes, dtype, shape}}``):

    embed                          float16 [V, H]          token embedding = lm_head (tied)
    final_norm                     float32 [H]
    inv_freq                       float32 [D/2]           RoPE inverse frequencies
    layers.{i}.input_norm          float32 [H]
    layers.{i}.post_norm           float32 [H]
    layers.{i}.{linear}.beats      uint8 [B, LANES]        the core's B-stream beats (accllm.sim.core_stream):
                                                           row by row, DENSE (K/L beats per row: 2-bit codes
                                                           + group zero point) or SPARSE (K/2L beats: kept
                                                           2-bit codes, 2-bit positions, zero point)
    layers.{i}.{linear}.scales     float32 [N, K/G]        group scales (dequantisation unit)
"""
from __future__ import annotations

import numpy as np

from accllm.hls import container
from accllm.sim.core_stream import beats_to_bytes, group_beats, pack_b
from accllm.sim.golden_core import MODE_DENSE, MODE_SPARSE

MAGIC = b"ACLBLOB\0"
VERSION = 1
ALIGN = 64


def pack_linear_beats(lin, group: int, lanes: int, sparse: bool) -> np.ndarray:
    """B beats [beats, lanes] of one linear (``accllm.sim.golden.LinearInts``), in the core's stream format."""
    if sparse:
        gb = group_beats(MODE_SPARSE, group, lanes)
        n = lin.vals.shape[0]
        z = np.repeat(lin.zeros.numpy(), gb, axis=1).reshape(-1)
        words = pack_b(MODE_SPARSE, lanes, lin.vals.numpy().reshape(-1, lanes), z, lin.pos.numpy().reshape(-1, lanes))
    else:
        gb = group_beats(MODE_DENSE, group, lanes)
        n = lin.codes.shape[0]
        z = np.repeat(lin.zeros.numpy(), gb, axis=1).reshape(-1)
        words = pack_b(MODE_DENSE, lanes, lin.codes.numpy().reshape(-1, lanes), z)
    out = np.frombuffer(beats_to_bytes(words, 8 * lanes), np.uint8).reshape(-1, lanes)
    assert out.shape[0] % n == 0
    return out


class BlobWriter:
    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0
        self.sections: dict[str, dict] = {}

    def add(self, name: str, array) -> int:
        a = np.ascontiguousarray(array)
        if name in self.sections:
            raise ValueError(f"duplicate blob section {name}")
        pad = -self.size % ALIGN
        self.parts.append(b"\0" * pad)
        self.size += pad
        self.sections[name] = {"offset": self.size, "nbytes": a.nbytes, "dtype": str(a.dtype), "shape": list(a.shape)}
        self.parts.append(a.tobytes())
        self.size += a.nbytes
        return self.sections[name]["offset"]

    def payload(self) -> bytes:
        return b"".join(self.parts)

    def write(self, path, meta: dict):
        payload = self.payload()
        meta = dict(meta, sections=self.sections)
        container.write(path, MAGIC, VERSION, meta, payload)
        return container.sha256(payload)


def read_blob(path) -> tuple[dict, bytes]:
    return container.read(path, MAGIC, VERSION, "weight blob")


def section(meta: dict, payload: bytes, name: str) -> np.ndarray:
    if name not in meta["sections"]:
        raise ValueError(f"weight blob has no section {name!r}")
    s = meta["sections"][name]
    return np.frombuffer(payload, dtype=s["dtype"], count=int(np.prod(s["shape"])), offset=s["offset"]).reshape(s["shape"])
