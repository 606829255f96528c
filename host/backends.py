"""The backends of the device interface (:class:`accllm.host.backend.Backend`) and how to open one by name.

- ``pynq``: a Zynq board (KV260, ZCU104) through :class:`accllm.host.engine.EngineDriver` on
  :class:`~accllm.host.mmio.PynqIO` (PYNQ overlay, register-level control).
- ``xrt``: an Alveo card (U280) through the same driver on :class:`~accllm.host.xrt.XrtKernel` (XRT's pyxrt).
- ``csim``: the same driver on :class:`~accllm.host.mmio.SimIO`, whose ``ap_start`` runs the compiled
  C-simulation library of the HLS kernel (the integer core as its C model).
- ``rtl``: the same, with the kernel's integer core calls running the Verilated RTL core behind its HLS
  blackbox wrapper (C/RTL co-simulation).
- ``golden``: the torch golden model of the engine (``accllm.sim.golden``).
- ``fakequant``: the Brevitas fake-quant model of the compressed checkpoint (the compression side of
  the verification chain), with the same Λ cache policy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import build as builds
from .backend import Backend

BACKENDS = ("csim", "rtl", "golden", "pynq", "xrt", "fakequant")


class FakeQuantBackend(Backend):
    """The compressed checkpoint's Brevitas fake-quant model with the Λ cache of ``accllm.quant.attention``."""

    name = "fakequant"

    def __init__(self, checkpoint: Path):
        from accllm.quant.checkpoint import load_compressed

        self.model, _, self.settings = load_compressed(checkpoint)
        self.policy = self.settings.policy()
        self.vocab_size = self.model.config.vocab_size
        self.context = None if self.policy else self.model.config.max_position_embeddings
        self.reset()

    def reset(self) -> None:
        from accllm.quant.attention import KVCache

        self.cache = KVCache(self.model.config.num_hidden_layers, self.policy)
        self.pos = 0

    def forward(self, ids) -> np.ndarray:
        import torch

        from accllm.quant.attention import attached

        x = torch.tensor([list(ids)], dtype=torch.long)
        pos = torch.arange(self.pos, self.pos + x.shape[1])[None]
        if self.context is not None and self.pos + x.shape[1] > self.context:
            raise ValueError(f"stream of {self.pos + x.shape[1]} tokens exceeds the context {self.context} (no Λ policy)")
        with attached(self.model, self.cache), torch.no_grad():
            logits = self.model(input_ids=x, position_ids=pos, use_cache=False).logits[0, -1]
        self.pos += x.shape[1]
        return logits.float().numpy()

    def resident_bytes(self) -> int:
        return self.cache.nbytes()


def open_backend(name: str, build: str | Path, **options) -> Backend:
    """Open backend ``name`` on a build directory (``accllm compile`` output; ``fakequant`` also takes
    a compressed checkpoint directory)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    b = builds.BuildDir(build)
    if name == "fakequant":
        return FakeQuantBackend(b.checkpoint())
    if name == "golden":
        from .golden_backend import GoldenBackend

        return GoldenBackend(b)
    from .engine import EngineBackend

    return EngineBackend.open(name, b, **options)
