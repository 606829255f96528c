"""The engine driver: the same code for the board (``pynq``), the C-simulation (``csim``) and the C/RTL
co-simulation (``rtl``).

Above :mod:`accllm.host.mmio` (register access + buffers) everything is shared:

1. ``load``: the compiled program and weight blob are verified (format version and checksum, by the
   compiler's own readers) before anything is allocated or started; then the device buffers are allocated
   (program, weights, Λ KV cache, scratch, logits), filled, synced to the device, and their device
   addresses written to the kernel's pointer arguments (64-bit, low word first).
2. ``step(token)``: per engine run (one token), the scalar arguments (token id, stream position, KV slot,
   occupied slots — from :class:`~accllm.host.kv.LambdaKVManager`) are written, ``ap_start`` is set, the
   control register is polled for ``ap_done`` with a timeout, and the logits buffer is synced back.

The kernel's register map (argument order and offsets) and the file formats belong to the compiler
(``accllm.hls``); :mod:`accllm.host.image` is the one adapter that reads them.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .backend import Backend
from .image import EngineImage, read_engine_image
from .kv import LambdaKVManager
from .mmio import AP_DONE, AP_START, CTRL


class DeviceTimeout(TimeoutError):
    """The kernel never signalled ap_done."""


class EngineDriver:
    def __init__(self, io, image: EngineImage, timeout_s: float = 10.0, poll_s: float = 0.0):
        if timeout_s <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout_s}")
        self.io, self.image, self.timeout_s, self.poll_s = io, image, timeout_s, poll_s
        self.args = {a.name: a for a in image.args}
        missing = [n for n in (*image.buffers, *image.scalars, *image.constants) if n not in self.args]
        if missing:
            raise ValueError(f"the kernel has no argument(s) {missing}; it has {sorted(self.args)}")
        self.buffers: dict[str, object] = {}
        self.kv: LambdaKVManager | None = None
        self.runs = 0

    def load(self) -> None:
        img = self.image
        for name, init in img.buffers.items():
            if name == img.kv_arg:
                self.kv = LambdaKVManager(img.layout, self.io.allocate)
                buf = self.kv.buffer
            else:
                data = np.frombuffer(init, dtype=np.uint8) if isinstance(init, (bytes, bytearray)) else None
                buf = self.io.allocate((len(data) if data is not None else int(init),), np.uint8)
                if data is not None:
                    buf[:] = data
            buf.sync_to_device()
            self.buffers[name] = buf
            self._write_pointer(name, int(buf.device_address))
        if self.kv is None:
            raise ValueError(f"the image names {img.kv_arg!r} as the KV cache but lists no such buffer")
        for name, value in img.constants.items():
            self.io.write(self.args[name].offset, value)

    def _write_pointer(self, name: str, address: int) -> None:
        a = self.args[name]
        if not a.pointer:
            raise ValueError(f"kernel argument {name!r} is a scalar, not a buffer pointer")
        self.io.write(a.offset, address & 0xFFFF_FFFF)
        self.io.write(a.offset + 4, address >> 32)

    def reset(self) -> None:
        self.kv.reset()

    def step(self, token: int) -> np.ndarray:
        """One engine run: the token at the next stream position; returns float32 logits [vocab]."""
        if not 0 <= token < self.image.vocab:
            raise ValueError(f"token id {token} outside the vocabulary [0, {self.image.vocab})")
        s = self.kv.next_step()
        values = {"token": token, "pos": s.pos, "slot": s.slot, "occupied": s.occupied}
        for name, what in self.image.scalars.items():
            self.io.write(self.args[name].offset, values[what])
        self.io.write(CTRL, AP_START)
        self._wait_done()
        self.kv.advance()
        self.runs += 1
        out = self.buffers[self.image.logits_arg]
        out.sync_from_device()
        return np.frombuffer(bytes(out[: 4 * self.image.vocab]), dtype="<f4").copy()

    def _wait_done(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.io.read(CTRL) & AP_DONE:
                return
            if time.monotonic() > deadline:
                raise DeviceTimeout(f"the kernel did not signal ap_done within {self.timeout_s:g} s "
                                    f"(run {self.runs}, stream position {self.kv.pos}); the device may be hung")
            if self.poll_s:
                time.sleep(self.poll_s)

    def close(self) -> None:
        self.io.close()


class EngineBackend(Backend):
    """A backend over :class:`EngineDriver`: ``pynq`` (board), ``csim`` (C-simulation) or ``rtl`` (the kernel
    with the Verilated RTL core)."""

    def __init__(self, name: str, driver: EngineDriver):
        self.name, self.driver = name, driver
        self.vocab_size = driver.image.vocab
        driver.load()

    @classmethod
    def open(cls, name: str, build, timeout_s: float = 10.0, bitstream: str | None = None,
             manifest: str | Path | None = None, board: str | None = None, **_) -> "EngineBackend":
        image = read_engine_image(build)  # verified before anything is allocated or started
        if name in ("csim", "rtl"):
            from .csim import csim_io

            io = csim_io(build, image, core="c" if name == "csim" else "rtl")
        elif name == "pynq":
            from .board import pynq_io

            io = pynq_io(image, bitstream=bitstream, manifest=manifest, board=board)
        else:
            raise ValueError(f"backend {name!r} is not an engine backend")
        return cls(name, EngineDriver(io, image, timeout_s=timeout_s, poll_s=0.0 if name != "pynq" else 1e-4))

    def reset(self) -> None:
        self.driver.reset()

    def forward(self, ids) -> np.ndarray:
        for t in ids:  # the program runs one token per start: prefill is token by token
            logits = self.driver.step(int(t))
        return logits

    def resident_bytes(self) -> int:
        return self.driver.kv.nbytes

    def close(self) -> None:
        self.driver.close()
