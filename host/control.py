"""The kernel's block-level control protocol driven through its s_axilite registers (PYNQ boards and the
simulations): :class:`RegisterKernel`.

The engine driver (:mod:`accllm.host.engine`) talks to a *kernel port*: ``allocate(arg, nbytes)``,
``set_buffer(arg, buf)``, ``set_scalar(arg, value)``, ``start()``, ``wait(timeout_s) -> bool``, ``idle()``,
``reload()``, ``close()``. Two implementations: this one on a register-level IO (:mod:`accllm.host.mmio`) and
:class:`accllm.host.xrt.XrtKernel` on XRT's run objects (Alveo), where XRT itself drives the control register.

Control register (offset 0), as Vitis HLS generates it:

    bit 0 ap_start     written 1 to start; cleared by the kernel when it accepts the inputs
    bit 1 ap_done      set when a run finishes; clear-on-read
    bit 2 ap_idle      set while the kernel is not running
    bit 4 ap_continue  ap_ctrl_chain only: written 1 after ap_done to let the kernel finish the handshake and
                       go idle; without it the kernel never accepts the next ap_start

``ap_ctrl_hs`` is Vitis HLS's default under ``-flow_target vivado`` (the Zynq recipe), ``ap_ctrl_chain`` under
``-flow_target vitis`` (the U280 recipe).
"""
from __future__ import annotations

import time

import numpy as np

from .mmio import AP_CONTINUE, AP_DONE, AP_IDLE, AP_START, CTRL

PROTOCOLS = ("ap_ctrl_hs", "ap_ctrl_chain")
FLOW_PROTOCOL = {"vivado": "ap_ctrl_hs", "vitis": "ap_ctrl_chain"}  # Vitis HLS defaults per -flow_target


class RegisterKernel:
    """The kernel port on a register-level IO (``read``/``write``/``allocate``, optionally ``reload``)."""

    engine = None  # the engine RTL's port beside the kernel (accllm.host.mmio.PynqEngine), set by open_kernel

    def __init__(self, io, args, protocol: str = "ap_ctrl_hs", poll_s: float = 0.0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown control protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        self.io, self.protocol, self.poll_s = io, protocol, poll_s
        self.args = {a.name: a for a in args}
        self.done = False  # ap_done seen since the last start

    def allocate(self, arg: str, nbytes: int):
        return self.io.allocate((nbytes,), np.uint8)

    def _arg(self, name: str, pointer: bool):
        a = self.args.get(name)
        if a is None:
            raise ValueError(f"the kernel has no argument {name!r}; it has {sorted(self.args)}")
        if a.pointer != pointer:
            raise ValueError(f"kernel argument {name!r} is {'a buffer pointer' if a.pointer else 'a scalar'}")
        return a

    def _write(self, offset: int, value: int) -> None:
        self.io.write(offset, int(value) & 0xFFFF_FFFF)

    def set_buffer(self, arg: str, buf) -> None:
        a, address = self._arg(arg, True), int(buf.device_address)
        self._write(a.offset, address & 0xFFFF_FFFF)  # 64-bit address: low word, then high word
        self._write(a.offset + 4, address >> 32)

    def set_scalar(self, arg: str, value: int) -> None:
        self._write(self._arg(arg, False).offset, value)

    def _poll(self) -> int:
        """Read the control register once. ap_done is clear-on-read, so it is remembered here (and answered
        with ap_continue under ap_ctrl_chain) whichever caller's read sees it."""
        v = self.io.read(CTRL)
        if v & AP_DONE:
            self.done = True
            if self.protocol == "ap_ctrl_chain":
                self.io.write(CTRL, AP_CONTINUE)
                v = self.io.read(CTRL) | AP_DONE
        return v

    def start(self) -> None:
        self.done = False
        self.io.write(CTRL, AP_START)

    def wait(self, timeout_s: float) -> bool:
        """Poll for ap_done; False if it did not come within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not (self.done or self._poll() & AP_DONE):
            if time.monotonic() > deadline:
                return False
            if self.poll_s:
                time.sleep(self.poll_s)
        return True

    def idle(self) -> bool:
        return bool(self._poll() & AP_IDLE)

    def reload(self) -> None:
        """Reset the kernel by reloading its bitstream (argument registers are cleared: the driver sets them
        again)."""
        reload = getattr(self.io, "reload", None)
        if reload is None:
            raise RuntimeError(f"{type(self.io).__name__} cannot reload the kernel")
        reload()

    def close(self) -> None:
        self.io.close()
