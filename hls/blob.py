"""The packed weight blob: ONE definition, used by the compiler, the C-simulation and the runtime.

Container: :mod:`accllm.hls.container` (magic ``ACLBLOB``, versioned, sha256). The payload is a sequence
of 64-byte-aligned sections listed in the metadata (``sections: {name: {offset, nbytes, dtype, shape}}``):

    embed                          float16 [V, H]          token embedding (EMBED reads a row; not the head)
    final_norm                     float32 [H]
    rope_table                     float32 [6, 64, 2, D/2] RoPE cos / sin rows per base-64 digit of a position
                                                           (accllm.sim.nonlinear.rope_table)
    layers.{i}.input_norm          float32 [H]
    layers.{i}.post_norm           float32 [H]
    lm_head.stream                 uint8 [bytes]           the LM head in the weight stream: DENSE records of 4-bit
                                                           codes (the LINEAR sections' format, wbits 4)
    layers.{i}.{linear}.stream     uint8 [bytes]           the linear in the weight stream (accllm.sim.weight_stream,
                                                           KERNEL_STREAM: one core, so one record per row and
                                                           group in row order): DENSE or 2:4 SPARSE records of
                                                           2-bit codes, zero point, fp16 scale (the only copy
                                                           of the scales: the kernel dequantises with these)
"""
from __future__ import annotations

import hashlib
import tempfile

import numpy as np

from accllm.hls import container

MAGIC = b"ACLBLOB\0"
VERSION = 1
ALIGN = 64


def kernel_stream_format(group: int, lanes: int, wbits: int = 2):
    """The weight-stream parameters of the blob's linears: the C-simulated kernel feeds one core."""
    from accllm.sim.weight_stream import StreamFormat

    return StreamFormat(wbits=wbits, group=group, lanes=lanes, cores=1, channel_bits=128)


def pack_linear_stream(lin, group: int, lanes: int, sparse: bool) -> np.ndarray:
    """One linear (``accllm.sim.golden.LinearInts``, whose scales are fp16 values, codes ``lin.wbits`` wide) in the
    weight stream."""
    from accllm.sim.weight_stream import pack_linear

    fmt = kernel_stream_format(group, lanes, getattr(lin, "wbits", 2))
    return np.frombuffer(pack_linear(lin, fmt, sparse), np.uint8)


class BlobWriter:
    """Sections go to a temporary spool file as they are added, so memory holds one section at a time however
    large the model; ``write`` puts the container header in front of them."""

    def __init__(self):
        self._spool = tempfile.TemporaryFile()
        self._sha = hashlib.sha256()
        self.size = 0
        self.sections: dict[str, dict] = {}

    def _put(self, data) -> None:
        self._spool.write(data)
        self._sha.update(data)

    def add(self, name: str, array) -> int:
        a = np.ascontiguousarray(array)
        if name in self.sections:
            raise ValueError(f"duplicate blob section {name}")
        pad = -self.size % ALIGN
        self._put(b"\0" * pad)
        self.size += pad
        self.sections[name] = {"offset": self.size, "nbytes": a.nbytes, "dtype": str(a.dtype), "shape": list(a.shape)}
        self._put(a.reshape(-1).view(np.uint8))
        self.size += a.nbytes
        return self.sections[name]["offset"]

    def payload(self) -> bytes:
        self._spool.seek(0)
        data = self._spool.read()
        self._spool.seek(0, 2)
        return data

    def write(self, path, meta: dict) -> str:
        """Write the blob file; returns the payload's sha256 (hex)."""
        self._spool.flush()
        container.write_from_file(path, MAGIC, VERSION, dict(meta, sections=self.sections), self.size,
                                  self._sha.digest(), self._spool)
        self._spool.seek(0, 2)
        return self._sha.hexdigest()


def read_blob(path) -> tuple[dict, bytes]:
    return container.read(path, MAGIC, VERSION, "weight blob")


def section(meta: dict, payload: bytes, name: str) -> np.ndarray:
    if name not in meta["sections"]:
        raise ValueError(f"weight blob has no section {name!r}")
    s = meta["sections"][name]
    return np.frombuffer(payload, dtype=s["dtype"], count=int(np.prod(s["shape"])), offset=s["offset"]).reshape(s["shape"])
