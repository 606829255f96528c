"""The engine driver: the same code for the boards (``pynq``: Zynq through PYNQ, ``xrt``: Alveo through XRT),
the C-simulation (``csim``) and the C/RTL co-simulation (``rtl``).

Above a *kernel port* (:mod:`accllm.host.control`: register-level on PYNQ and in simulation,
:mod:`accllm.host.xrt` on XRT) everything is shared:

1. ``load``: the compiled program and weight blob are verified (format version and checksum, by the
   compiler's own readers) before anything is allocated or started; then the device buffers are allocated
   (each in the memory bank of its kernel argument), filled, synced to the device and bound to the kernel's
   pointer arguments; the kernel must be idle before the first start. A bitstream with the engine RTL (the
   port's ``engine``): its INFO / T registers are checked against the build's engine image first, then each
   channel's region of ``weights.engine`` goes into a buffer in that channel's memory and its address into the
   channel's REGION register; the HLS kernel then drives the engine by itself.
2. ``run(ids)``: per kernel run (a prompt's tokens, or one token in decode) the token ids are written to the
   kernel's tokens buffer and synced to the device, the scalar arguments (token count, first stream position —
   from :class:`~accllm.host.kv.LambdaKVManager`) are set, the kernel is started and waited for with a timeout
   (ap_done, and ap_continue where the protocol needs it), and the logits (or the top-K) are synced back.
   ``prefill`` splits a prompt into runs of at most ``image.max_tokens``; ``step`` is a run of one token.
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


class EngineMismatch(ValueError):
    """The bitstream's engine RTL is not the engine this build's image was laid out for."""


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
        if image.tokens_arg is None and image.max_tokens != 1:
            raise ValueError(f"a kernel without a tokens buffer takes one token per run, not {image.max_tokens}")
        if image.tokens_arg is not None and int(image.buffers.get(image.tokens_arg, 0)) < 4 * image.max_tokens:
            raise ValueError(f"the tokens buffer {image.tokens_arg!r} must hold {image.max_tokens} uint32 ids")
        self.buffers: dict[str, object] = {}
        self.engine_buffers: list = []  # channel ch's region of weights.engine, for a bitstream with the engine RTL
        self.kv: LambdaKVManager | None = None
        self.runs = 0
        self.fault: str | None = None  # why the kernel cannot be started until recover()

    @property
    def engine(self):
        """The kernel port's engine RTL port (``allocate(ch, nbytes)``, ``read`` / ``write`` of its registers), or
        None: a bitstream whose HLS kernel computes every linear itself (and the simulations)."""
        return getattr(self.kernel, "engine", None)

    def load(self) -> None:
        img = self.image
        if self.engine is not None:
            self._check_engine()  # a wrong bitstream is refused before anything is allocated
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
        if self.engine is not None:
            self._load_engine()
        self._upload()
        if not self.kernel.idle():
            self.fault = "the kernel was not idle before the first start"
            raise DeviceNotIdle(f"{self.fault} (another process may be driving it, or it hung); reset the device")

    def _check_engine(self) -> None:
        """The engine's INFO / T registers against the build's engine image (``accllm.sim.engine_regs.IDENTITY``)."""
        from accllm.sim.engine_regs import INFO, T, identity, read_identity

        if self.image.engine is None:
            raise EngineMismatch("wrong bitstream for this build: it carries the engine RTL, the build has no engine "
                                 "image (weights.engine, blob_map.json); recompile or load a bitstream of this build")
        have = read_identity(self.engine.read(INFO), self.engine.read(T))
        need = identity(self.image.engine.params)
        diff = [k for k in need if have[k] != need[k]]
        if diff:
            raise EngineMismatch("wrong bitstream for this build: its engine reports " + ", ".join(
                f"{k} {have[k]}" for k in diff) + "; the build's weights.engine needs " + ", ".join(
                f"{k} {need[k]}" for k in diff))

    def _load_engine(self) -> None:
        """Each channel's region of weights.engine (verified) into a buffer in that channel's memory, synced."""
        regions = self.image.engine
        regions.verify()
        for ch in range(regions.channels):
            buf = self.engine.allocate(ch, regions.sizes[ch])
            buf[:] = regions.region(ch)
            buf.sync_to_device()
            self.engine_buffers.append(buf)

    def _place_engine(self) -> None:
        """Every channel's REGION register: its buffer's device address (read back: a register that does not hold
        it is a wrong bitstream or a broken link)."""
        from accllm.sim.engine_regs import region_reg, region_writes

        addrs = [int(b.device_address) for b in self.engine_buffers]
        for off, value in region_writes(addrs):
            self.engine.write(off, value)
        for ch, a in enumerate(addrs):
            got = self.engine.read(region_reg(ch)) | self.engine.read(region_reg(ch) + 4) << 32
            if got != a:
                raise EngineMismatch(f"engine channel {ch}: REGION reads {got:#x} after writing {a:#x}; the engine's "
                                     "registers are not where this build expects them (wrong bitstream?)")

    def _upload(self) -> None:
        """The engine's regions placed (REGION registers), buffers to the device and bound to their arguments,
        constant scalars set."""
        if self.engine_buffers:
            self._place_engine()  # again after a reload: a reprogrammed engine starts with REGION 0
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

    def run(self, ids: list[int], logits: bool = True) -> np.ndarray | None:
        """One kernel run: ``ids`` (1 .. ``image.max_tokens`` tokens) at the next stream positions, in the kernel's
        blocks (one weight pass per block; decode: one token, matrix-vector). Returns the last token's float32
        logits [vocab] (``logits``; else None: the kernel writes only its top-K, :meth:`top`)."""
        img = self.image
        if not 1 <= len(ids) <= img.max_tokens:
            raise ValueError(f"a kernel run takes 1..{img.max_tokens} tokens (its tokens buffer), got {len(ids)}")
        self._check_ready(ids)
        s = self.kv.next_step()
        values = {"n_tokens": len(ids), "pos": s.pos, "token": ids[0], "slot": s.slot, "occupied": s.occupied}
        if img.tokens_arg is not None:
            buf = self.buffers[img.tokens_arg]
            buf[: 4 * len(ids)] = np.asarray(ids, dtype="<u4").view(np.uint8)
            buf.sync_to_device()
        for name, what in img.scalars.items():
            self.kernel.set_scalar(name, values[what])
        self._set_logits_en(logits)
        self.kernel.start()
        timeout = self.timeout_s * -(-len(ids) // img.block)  # timeout_s per weight pass
        if not self.kernel.wait(timeout):
            self.fault = f"run {self.runs} timed out"
            raise DeviceTimeout(f"the kernel did not signal ap_done within {timeout:g} s (run {self.runs} of "
                                f"{len(ids)} token(s), stream position {self.kv.pos}); the device may be hung")
        self._check_accepted(len(ids))
        for _ in ids:
            self.kv.advance()
        self.runs += 1
        out = self._logits_out(logits)
        return out if logits else None

    def _check_accepted(self, n: int) -> None:
        """A kernel with a tokens port marks a run it refused (n_tokens 0 or over its capacity) by top-K ids of
        0xFFFFFFFF; the driver never sends one, so this is a kernel built with another capacity."""
        if self.image.tokens_arg is None or not self.topk:
            return
        buf = self.buffers["topk"]
        buf.sync_from_device()
        if bytes(buf[:4]) == b"\xff\xff\xff\xff":
            self.fault = f"the kernel refused run {self.runs}"
            raise RuntimeError(f"the kernel refused a run of {n} tokens: it takes fewer per run than this program's "
                               f"{self.image.max_tokens} (a bitstream of another build?); rebuild it from this one")

    def step(self, token: int, logits: bool = True) -> np.ndarray | None:
        """One token at the next stream position (decode): a run of one token."""
        return self.run([int(token)], logits)

    def prefill(self, tokens, logits: bool = True) -> np.ndarray | None:
        """A prompt in as few kernel runs as the kernel takes (``image.max_tokens`` tokens each, in blocks of one
        weight pass); returns the last token's float32 logits [vocab] (``logits``; else None, and :meth:`top` has
        its top-K)."""
        ids = [int(t) for t in tokens]
        if not ids:
            raise ValueError("empty prompt: give at least one token")
        self._check_ready(ids)
        cap = self.image.max_tokens
        for t0 in range(0, len(ids), cap):
            out = self.run(ids[t0:t0 + cap], logits and t0 + cap >= len(ids))
        return out

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
