"""The lowest layer of the device: 32-bit register access to the kernel and device-visible buffers.

Everything above this layer (the engine driver: buffer layout, weight and program upload, register
sequence, completion polling) is the same for the board and for the simulations. Two implementations:

- :class:`PynqIO`: a real board. ``pynq.Overlay`` loads the bitstream, the kernel is the overlay's IP
  (``DefaultIP.read`` / ``DefaultIP.write`` on its s_axilite map) and buffers come from
  ``pynq.allocate`` (physically contiguous, ``device_address``, ``sync_to_device`` / ``sync_from_device``).
- :class:`SimIO`: an in-process register file and memory. Buffers get fake device addresses; writing
  ``ap_start`` to the control register calls ``on_start(io)``, which runs a simulation of the kernel on
  the memory behind the addresses written to the argument registers.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

# Vitis HLS control register (offset 0 of every s_axilite kernel map; bits: accllm.host.control).
CTRL = 0x00
AP_START, AP_DONE, AP_IDLE, AP_READY, AP_CONTINUE = 0x1, 0x2, 0x4, 0x8, 0x10


class SimBuffer(np.ndarray):
    """A numpy array standing in for a ``pynq.PynqBuffer``: same attribute and method names."""

    device_address: int

    def sync_to_device(self):  # host and "device" share memory in simulation
        pass

    def sync_from_device(self):
        pass

    def freebuffer(self):
        pass


class SimIO:
    """In-process register file + memory whose ``ap_start`` runs ``on_start(io)`` synchronously."""

    ALIGN = 4096

    def __init__(self, on_start: Callable[["SimIO"], None] | None = None):
        self.regs: dict[int, int] = {CTRL: AP_IDLE}  # out of reset the kernel is idle
        self.buffers: dict[int, SimBuffer] = {}
        self.on_start = on_start
        # The latest register writes, in order (for tests and traces); bounded so endless streams stay flat.
        self.writes: deque[tuple[int, int]] = deque(maxlen=4096)
        self._next = 0x1000_0000

    def allocate(self, shape, dtype) -> SimBuffer:
        buf = np.zeros(shape, dtype=dtype).view(SimBuffer)
        buf.device_address = self._next
        self.buffers[self._next] = buf
        self._next += -(-max(buf.nbytes, 1) // self.ALIGN) * self.ALIGN
        return buf

    def buffer_at(self, address: int) -> SimBuffer:
        try:
            return self.buffers[address]
        except KeyError:
            raise ValueError(f"no buffer was allocated at device address {address:#x}") from None

    def write(self, offset: int, value: int) -> None:
        if offset % 4:
            raise ValueError(f"unaligned register write at {offset:#x}")
        value = int(value) & 0xFFFF_FFFF
        self.writes.append((offset, value))
        if offset == CTRL:
            if value & AP_START:
                self.regs[CTRL] = AP_START
                if self.on_start is not None:
                    self.on_start(self)
            return
        self.regs[offset] = value

    def read(self, offset: int) -> int:
        value = self.regs.get(offset, 0)
        if offset == CTRL and value & AP_DONE:
            self.regs[CTRL] = value & ~AP_DONE  # ap_done is clear-on-read, as in Vitis HLS
        return value

    def finish(self) -> None:
        """Called by the kernel simulation when it is done: ap_done and ap_idle set, ap_start cleared."""
        self.regs[CTRL] = AP_DONE | AP_IDLE

    def reload(self) -> None:
        """What a bitstream reload does to the kernel: registers cleared, the kernel idle; memory kept."""
        self.regs = {CTRL: AP_IDLE}

    def reg64(self, offset: int) -> int:
        return self.regs.get(offset, 0) | (self.regs.get(offset + 4, 0) << 32)

    def close(self) -> None:
        self.buffers.clear()


class PynqIO:
    """A PYNQ board: the bitstream's overlay, its kernel IP and ``pynq.allocate`` buffers."""

    def __init__(self, bitfile: str | Path, kernel: str, download: bool = True):
        import pynq  # only on a board (or where pynq's device layer can open one)

        self._pynq, self.kernel, self.bitfile = pynq, kernel, str(bitfile)
        self.overlay = pynq.Overlay(str(bitfile), download=download)
        self.ip = self.find_ip(kernel)
        self._buffers = []

    def find_ip(self, kernel: str):
        """The overlay's IP named ``kernel`` (a cell name, or its start), hierarchies included."""
        names = list(self.overlay.ip_dict)
        match = [n for n in names if n == kernel or n.split("/")[-1] == kernel or n.startswith(kernel)]
        if not match:
            raise ValueError(f"the overlay {self.bitfile} has no IP named {kernel!r}; "
                             f"it has {', '.join(names) or 'none'}")
        ip = self.overlay
        for part in match[0].split("/"):  # hierarchies are attributes of attributes
            ip = getattr(ip, part)
        return ip

    def reload(self) -> None:
        """Program the bitstream again: the PL (and the kernel) is reset; buffers in DDR stay allocated."""
        self.overlay.download()
        self.ip = self.find_ip(self.kernel)

    def allocate(self, shape, dtype):
        buf = self._pynq.allocate(shape=shape, dtype=dtype)
        self._buffers.append(buf)
        return buf

    def write(self, offset: int, value: int) -> None:
        self.ip.write(offset, int(value) & 0xFFFF_FFFF)

    def read(self, offset: int) -> int:
        return int(self.ip.read(offset))

    def close(self) -> None:
        for b in self._buffers:
            b.freebuffer()
        self._buffers.clear()


class PynqEngine:
    """The engine RTL of a Zynq overlay (the block design's cell beside the HLS kernel): its AXI4-Lite registers
    through the overlay's IP (``DefaultIP.read`` / ``write``), and channel buffers from ``pynq.allocate`` — on Zynq
    every channel's master reaches DDR through an HP port, so any contiguous buffer is in its memory."""

    def __init__(self, io: PynqIO, cell: str):
        self.io, self.cell = io, cell
        io.find_ip(cell)  # a one-line error now when the overlay has no such cell

    def allocate(self, ch: int, nbytes: int):
        return self.io.allocate((nbytes,), np.uint8)

    def read(self, offset: int) -> int:
        return int(self.io.find_ip(self.cell).read(offset))  # found again each time: a reload makes new IP objects

    def write(self, offset: int, value: int) -> None:
        self.io.find_ip(self.cell).write(offset, int(value) & 0xFFFF_FFFF)
