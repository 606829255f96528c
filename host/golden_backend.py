"""The ``golden`` backend: the torch golden model of the engine (``accllm.sim.golden``), one token per step."""
from __future__ import annotations

import numpy as np

from .backend import Backend


class GoldenBackend(Backend):
    name = "golden"

    def __init__(self, build):
        from accllm.sim.golden import GoldenModel

        self.model = GoldenModel.load(build.checkpoint())
        self.vocab_size = self.model.d.vocab
        self.layout = self.model.d.kv_layout()

    def reset(self) -> None:
        self.model.reset()

    def forward(self, ids) -> np.ndarray:
        import torch

        # Thousands of tiny torch ops per token: intra-op threads only slow them down.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            # a prompt in the engine's prefill blocks (bit for bit token by token); decode: one token
            logits = self.model.prefill([int(t) for t in ids])
        finally:
            torch.set_num_threads(threads)
        return logits.numpy()

    def resident_bytes(self) -> int:
        return self.layout.nbytes
