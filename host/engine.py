"""The engine driver: the same code for the boards (``pynq``: Zynq through PYNQ, ``xrt``: Alveo through XRT),
the C-simulation (``csim``) and the C/RTL co-simulation (``rtl``).

Above a *kernel port* (:mod:`accllm.host.control`: register-level on PYNQ and in simulation,
:mod:`accllm.host.xrt` on XRT) everything is shared:

1. ``load``: the compiled program and weight blob are verified (format version and checksum, by the
   compiler's own readers) before anything is allocated or started; then the device buffers are allocated
   (each in the memory bank of its kernel argument), filled, synced to the device and bound to the kernel's
   pointer arguments; the kernel must be idle before the first start.
2. ``step(token)``: per engine run (one token), the scalar arguments (token id, stream position, KV slot,
   occupied slots — from :class:`~accllm.host.kv.LambdaKVManager`) are set, the kernel is started and waited
   for with a timeout (ap_done, and ap_continue where the protocol needs it), and the logits are synced back.
3. ``recover``: after a timeout the driver refuses to start again until the kernel is idle: a late ap_done is
   waited for, else the kernel is reloaded (bitstream), its arguments bound again and ap_idle checked.

The kernel's register map (argument order and offsets) and the file formats belong to the compiler
(``accllm.hls``); :mod:`accllm.host.image` is the one adapter that reads them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import Backend
from .image import EngineImage, read_engine_image
from .kv import LambdaKVManager

ENGINE_BACKENDS = ("csim", "rtl", "pynq", "xrt")


class DeviceTimeout(TimeoutError):
    """The kernel never signalled ap_done."""


class DeviceNotIdle(RuntimeError):
    """The kernel is not idle where a start needs it to be (a hung run; reset the backend)."""


class EngineDriver:
    def __init__(self, kernel, image: EngineImage, timeout_s: float = 10.0, grace_s: float = 1.0):
        if timeout_s <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout_s}")
        self.kernel, self.image, self.timeout_s, self.grace_s = kernel, image, timeout_s, grace_s
        names = {a.name for a in image.args}
        missing = [n for n in (*image.buffers, *image.scalars, *image.constants) if n not in names]
        if missing:
            raise ValueError(f"the kernel has no argument(s) {missing}; it has {sorted(names)}")
        if image.kv_arg not in image.buffers:
            raise ValueError(f"the image names {image.kv_arg!r} as the KV cache but lists no such buffer")
        self.buffers: dict[str, object] = {}
        self.kv: LambdaKVManager | None = None
        self.runs = 0
        self.fault: str | None = None  # why the kernel cannot be started until recover()

    def load(self) -> None:
        img = self.image
        for name, init in img.buffers.items():
            if name == img.kv_arg:
                self.kv = LambdaKVManager(img.layout, lambda shape, dtype: self.kernel.allocate(name, shape[0]))
                buf = self.kv.buffer
            else:
                data = np.frombuffer(init, dtype=np.uint8) if isinstance(init, (bytes, bytearray)) else None
                buf = self.kernel.allocate(name, len(data) if data is not None else int(init))
                if data is not None:
                    buf[:] = data
            self.buffers[name] = buf
        self._upload()
        if not self.kernel.idle():
            self.fault = "the kernel was not idle before the first start"
            raise DeviceNotIdle(f"{self.fault} (another process may be driving it, or it hung); reset the device")

    def _upload(self) -> None:
        """Buffers to the device and bound to their arguments, constant scalars set."""
        for name, buf in self.buffers.items():
            buf.sync_to_device()
            self.kernel.set_buffer(name, buf)
        for name, value in self.image.constants.items():
            self.kernel.set_scalar(name, value)

    def reset(self) -> None:
        self.kv.reset()

    @property
    def topk(self) -> int:
        """K of the kernel's on-chip top-K (its ``topk`` buffer: K uint32 ids, then K float32 logits); 0: none."""
        return int(self.image.buffers.get("topk", 0)) // 8

    @property
    def _has_logits_en(self) -> bool:
        """A kernel with an on-chip top-K, which writes the full logits only when its ``logits_en`` is set."""
        return any(a.name == "logits_en" for a in self.image.args)

    def _set_logits_en(self, logits: bool) -> None:
        if self._has_logits_en:
            self.kernel.set_scalar("logits_en", int(logits))

    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """The last run's on-chip top-K: (ids int64 [K], logits float32 [K]), logit descending, ties lower id."""
        k = self.topk
        buf = self.buffers["topk"]
        buf.sync_from_device()
        raw = bytes(buf[: 8 * k])
        return np.frombuffer(raw[: 4 * k], "<u4").astype(np.int64), np.frombuffer(raw[4 * k:], "<f4").copy()

    def _logits_out(self, logits: bool) -> np.ndarray | None:
        """The run's logits when it wrote them (asked for, or a kernel without ``logits_en``: every run), synced
        back; None when it did not."""
        if not (logits or not self._has_logits_en):
            return None
        out = self.buffers[self.image.logits_arg]
        out.sync_from_device()
        return np.frombuffer(bytes(out[: 4 * self.image.vocab]), dtype="<f4").copy()

    def _check_ready(self, ids: list[int]) -> None:
        """Refuse a run with a token outside the vocabulary, after a fault, or while the kernel is busy."""
        bad = [t for t in ids if not 0 <= t < self.image.vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} outside the vocabulary [0, {self.image.vocab})")
        if self.fault:
            raise DeviceNotIdle(f"{self.fault}; reset the backend before the next run")
        if not self.kernel.idle():
            self.fault = f"the kernel was busy before run {self.runs}"
            raise DeviceNotIdle(f"{self.fault}; reset the backend before the next run")

    def step(self, token: int, logits: bool = True) -> np.ndarray | None:
        """One engine run: the token at the next stream position; returns float32 logits [vocab] (``logits``; else
        the kernel writes only its top-K, :meth:`top`, and this returns None)."""
        self._check_ready([token])
        s = self.kv.next_step()
        values = {"token": token, "pos": s.pos, "slot": s.slot, "occupied": s.occupied}
        for name, what in self.image.scalars.items():
            self.kernel.set_scalar(name, values[what])
        self._set_logits_en(logits)
        self.kernel.start()
        if not self.kernel.wait(self.timeout_s):
            self.fault = f"run {self.runs} timed out"
            raise DeviceTimeout(f"the kernel did not signal ap_done within {self.timeout_s:g} s "
                                f"(run {self.runs}, stream position {self.kv.pos}); the device may be hung")
        self.kv.advance()
        self.runs += 1
        out = self._logits_out(logits)
        return out if logits else None

    def prefill(self, tokens, logits: bool = True) -> np.ndarray | None:
        """A prompt in the kernel's prefill mode (blocks of tokens, one weight pass each) where the kernel port has
        one (``run_block``), else token by token; returns the last token's float32 logits [vocab] (``logits``; else
        None, and :meth:`top` has its top-K)."""
        ids = [int(t) for t in tokens]
        run_block = getattr(self.kernel, "run_block", None)
        if run_block is None or len(ids) == 1:
            for t in ids:
                out = self.step(t, logits)
            return out
        self._check_ready(ids)
        self._set_logits_en(logits)
        run_block(ids, self.kv.next_step().pos)
        for _ in ids:
            self.kv.advance()
        self.runs += 1
        out = self._logits_out(logits)
        return out if logits else None

    def recover(self) -> None:
        """Make the kernel usable after a timeout: wait for a late ap_done, else reload it; then bind the
        buffers again, check ap_idle and start a new stream (the timed-out run may have half-written the KV
        cache). Raises :class:`DeviceNotIdle` if the kernel is still busy."""
        if self.fault and not self.kernel.idle():
            late = self.kernel.wait(self.grace_s)
            if not (late and self.kernel.idle()):
                try:
                    self.kernel.reload()
                except RuntimeError as e:
                    raise DeviceNotIdle(str(e)) from e
        self._upload()  # a reload may clear the argument registers (and on XRT gives a fresh run)
        if not self.kernel.idle():
            self.fault = "the kernel is still busy after a reload"
            raise DeviceNotIdle(f"{self.fault}; power-cycle or reset the board")
        self.fault = None
        self.kv.reset()

    def close(self) -> None:
        self.kernel.close()


class EngineBackend(Backend):
    """A backend over :class:`EngineDriver`: ``pynq`` or ``xrt`` (boards), ``csim`` (C-simulation) or ``rtl``
    (the kernel with the Verilated RTL core)."""

    def __init__(self, name: str, driver: EngineDriver):
        self.name, self.driver = name, driver
        self.vocab_size = driver.image.vocab
        self.topk = driver.topk
        driver.load()

    @classmethod
    def open(cls, name: str, build, timeout_s: float = 10.0, bitstream: str | None = None,
             manifest: str | Path | None = None, board: str | None = None, **_) -> "EngineBackend":
        image = read_engine_image(build)  # verified before anything is allocated or started
        if name in ("csim", "rtl"):
            from .control import RegisterKernel
            from .csim import csim_io

            kernel = RegisterKernel(csim_io(build, image, core="c" if name == "csim" else "rtl"), image.args)
        elif name in ("pynq", "xrt"):
            from .board import open_kernel

            kernel = open_kernel(name, image, bitstream=bitstream, manifest=manifest, board=board)
        else:
            raise ValueError(f"backend {name!r} is not an engine backend; choose one of {', '.join(ENGINE_BACKENDS)}")
        return cls(name, EngineDriver(kernel, image, timeout_s=timeout_s))

    def reset(self) -> None:
        """A new stream; after a device timeout this is :meth:`recover` (kernel idle again, or an error)."""
        if self.driver.fault:
            self.driver.recover()
        else:
            self.driver.reset()

    def recover(self) -> None:
        self.driver.recover()

    def forward(self, ids) -> np.ndarray:
        if len(ids) == 0:
            raise ValueError("empty prompt: give at least one token")
        return self.driver.prefill(ids)  # a prompt in blocks (decode: one token, matrix-vector)

    def forward_top(self, ids, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's own top-K (no full logits leave the device); ``k`` beyond it: from the full logits."""
        if len(ids) == 0:
            raise ValueError("empty prompt: give at least one token")
        if k > self.topk:
            return super().forward_top(ids, k)
        self.driver.prefill(ids, logits=False)
        top_ids, top_vals = self.driver.top()
        return top_ids[:k], top_vals[:k]

    def resident_bytes(self) -> int:
        return self.driver.kv.nbytes

    def close(self) -> None:
        self.driver.close()
