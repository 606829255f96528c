"""Protocol-enforcing fakes of the boards' lowest layers, for the real driver above them.

- :class:`FakeDevice`: a kernel behind an s_axilite control register (ap_start / ap_done clear-on-read / ap_idle /
  ap_continue, ``ap_ctrl_hs`` or ``ap_ctrl_chain``) with device memory apart from host memory: a buffer's host
  array reaches the kernel only through ``sync_to_device`` and the kernel's results reach the host only through
  ``sync_from_device``. Every breach is recorded in ``errors`` (the tests assert it stays empty):
  ap_start while not idle (under ap_ctrl_chain: no ap_continue after the last ap_done), an argument register
  written while the kernel runs, host data not synced before ap_start (the token ids of a run included), a result
  not synced back after ap_done, and a kernel with a ``tokens`` port started with ``n_tokens`` of 0 or more ids
  than its buffer holds.
- :class:`FakeEngine`: the engine RTL beside the kernel (a bitstream with ``engine_rtl``), as a host sees it: INFO
  and T (read-only, from its Verilog parameters), the REGION registers; a host write to any other engine register
  is an error (the HLS kernel drives operations). Attached to a FakeDevice, it makes the device refuse ap_start
  until every channel's REGION holds the address of a buffer synced to the device (with ``banks``: in that
  channel's memory bank). A reload (bitstream download) clears its registers.
- :func:`fake_pyxrt`: XRT's ``pyxrt`` surface (device, xclbin, kernel, bo, run, and ``ip`` for the user-managed
  engine kernel) on a FakeDevice. XRT drives the control register itself, so here the fake's scheduler writes the
  registers (ap_continue included) the way XRT does; it records a ``bo`` in another memory bank than its argument
  is connected to (``link.cfg``), a missing sync, an unset argument, or a start while a run is outstanding.

A kernel model is a callable ``kernel(arrays, scalars)`` (device arrays and scalar registers by argument name)
that computes the run's outputs in device memory; it may return ``"hang"`` to never finish.
"""
from __future__ import annotations

import re
import types

import numpy as np

CTRL, AP_START, AP_DONE, AP_IDLE, AP_CONTINUE = 0x00, 0x1, 0x2, 0x4, 0x10


class FakeBuffer(np.ndarray):
    """Host view of a device buffer (``pynq.allocate``'s ``PynqBuffer`` surface)."""

    def sync_to_device(self):
        self.fake.to_device(self.device_address)

    def sync_from_device(self):
        self.fake.from_device(self.device_address)

    def freebuffer(self):
        pass


class FakeDevice:
    ALIGN = 4096

    def __init__(self, kernel, args, protocol="ap_ctrl_hs", outputs=("logits",), base=0x2000_0000):
        self.kernel, self.protocol = kernel, protocol
        self.args = {a.name: a for a in args}
        self.outputs = set(outputs)
        self.regs: dict[int, int] = {}
        self.state = "idle"           # idle | running | hung | done (ap_ctrl_chain: waiting for ap_continue)
        self.done_bit = False
        self.host: dict[int, np.ndarray] = {}
        self.device: dict[int, np.ndarray] = {}
        self.synced: dict[int, bytes] = {}   # host bytes at the last sync, to see unsynced host writes
        self.unread: set[int] = set()        # results written by the kernel, not yet synced to the host
        self.errors: list[str] = []
        self.runs = self.reloads = 0
        self.engine: FakeEngine | None = None  # the engine RTL beside the kernel, if the bitstream has one
        self._next = base

    # -- memory
    def allocate(self, shape, dtype="u4", **_):
        host = np.zeros(shape, dtype=dtype).view(FakeBuffer)
        addr = self._next
        self._next += -(-max(host.nbytes, 1) // self.ALIGN) * self.ALIGN
        host.fake, host.device_address = self, addr
        self.host[addr], self.device[addr] = host, np.zeros(host.nbytes, np.uint8)
        self.synced[addr] = None  # never synced
        return host

    def to_device(self, addr):
        self.device[addr][:] = self.host[addr].view(np.uint8).reshape(-1)
        self.synced[addr] = self.host[addr].tobytes()

    def from_device(self, addr):
        self.host[addr].view(np.uint8).reshape(-1)[:] = self.device[addr]
        self.synced[addr] = self.host[addr].tobytes()
        self.unread.discard(addr)

    # -- registers
    def write(self, offset, value):
        value = int(value) & 0xFFFF_FFFF
        if offset != CTRL:
            if self.state in ("running", "hung"):
                self.errors.append(f"register {offset:#x} written while the kernel runs")
            self.regs[offset] = value
            return
        if value & AP_CONTINUE:
            if self.protocol == "ap_ctrl_chain" and self.state == "done":
                self.state = "idle"
        if value & AP_START:
            self._start()

    def read(self, offset):
        if offset != CTRL:
            return self.regs.get(offset, 0)
        v = (AP_IDLE if self.state == "idle" else 0) | (AP_DONE if self.done_bit else 0)
        self.done_bit = False  # clear-on-read
        return v

    def reload(self):
        """A bitstream reload: registers cleared, the kernel idle; device memory kept."""
        self.regs, self.state, self.done_bit = {}, "idle", False
        self.reloads += 1
        if self.engine is not None:
            self.engine.regs.clear()  # the whole PL is reprogrammed

    def close(self):
        pass

    def _start(self):
        if self.state != "idle":
            why = " (ap_ctrl_chain: ap_continue was not written after ap_done)" if self.state == "done" else ""
            self.errors.append(f"ap_start while the kernel is not idle: {self.state}{why}")
            return
        if self.engine is not None:
            refused = self.engine.not_ready(self.runs)
            if refused:  # the engine would read weights from wherever REGION points: the kernel must not start
                self.errors += refused
                return
        arrays, scalars = {}, {}
        for name, a in self.args.items():
            if a.pointer:
                addr = self.regs.get(a.offset, 0) | (self.regs.get(a.offset + 4, 0) << 32)
                if addr not in self.device:
                    self.errors.append(f"run {self.runs}: argument {name} points at {addr:#x}, no buffer there")
                    return
                arrays[name] = self.device[addr]
                self._check_synced(name, addr)
            else:
                scalars[name] = self.regs.get(a.offset, 0)
        if "tokens" in arrays and not 1 <= scalars.get("n_tokens", 0) <= arrays["tokens"].nbytes // 4:
            self.errors.append(f"run {self.runs}: n_tokens {scalars.get('n_tokens', 0)} does not fit the tokens buffer "
                               f"({arrays['tokens'].nbytes // 4} ids)")
        self.state = "running"
        if self.kernel(arrays, scalars) == "hang":
            self.state = "hung"
            return
        self.runs += 1
        for name in self.outputs:
            if not scalars.get(f"{name}_en", 1):  # an output behind an enable flag (logits_en) is not written
                continue
            self.unread.add(self.regs.get(self.args[name].offset, 0) | (self.regs.get(self.args[name].offset + 4, 0) << 32))
        self.done_bit = True
        self.state = "done" if self.protocol == "ap_ctrl_chain" else "idle"

    def _check_synced(self, name, addr):
        if addr in self.unread:
            self.errors.append(f"run {self.runs}: the result in {name} of the previous run was never synced from the device")
            self.unread.discard(addr)
        if self.synced[addr] is None:
            self.errors.append(f"run {self.runs}: buffer {name} was never synced to the device")
        elif self.host[addr].tobytes() != self.synced[addr]:
            self.errors.append(f"run {self.runs}: buffer {name} was written by the host but not synced to the device")

    def finish_hung(self):
        """Let a hung run complete late (as a slow kernel would)."""
        if self.state == "hung":
            self.runs += 1
            self.done_bit = True
            self.state = "done" if self.protocol == "ap_ctrl_chain" else "idle"


class FakeEngine:
    """The engine RTL of a bitstream, beside the FakeDevice ``dev`` (see the module docstring). ``params``: its
    Verilog parameters (:func:`accllm.sim.engine_regs.engine_params`); ``banks``: each channel's memory bank, checked
    against ``bank_of`` (device address -> bank, kept by :func:`fake_pyxrt`) when given."""

    def __init__(self, dev: FakeDevice, params: dict, banks: list[int] | None = None, bank_of: dict | None = None):
        self.dev, self.params, self.banks, self.bank_of = dev, dict(params), banks, bank_of
        self.channels = int(params["CHANNELS"])
        self.regs: dict[int, int] = {}
        self.log: list[tuple] = []   # ("r" | "w", offset, value, buffers allocated on the device so far)
        dev.engine = self

    def read(self, offset):
        from accllm.sim import engine_regs as er

        v = {er.INFO: er.info_value(self.params), er.T: int(self.params["T"])}.get(offset, self.regs.get(offset, 0))
        self.log.append(("r", offset, v, len(self.dev.host)))
        return v

    def write(self, offset, value):
        from accllm.sim import engine_regs as er

        value = int(value) & 0xFFFF_FFFF
        self.log.append(("w", offset, value, len(self.dev.host)))
        if not er.region_reg(0) <= offset < er.region_reg(self.channels):
            self.dev.errors.append(f"the host wrote engine register {offset:#x}: only REGION is the host's "
                                   "(the HLS kernel drives operations)")
            return
        if self.dev.state in ("running", "hung"):
            self.dev.errors.append(f"engine REGION register {offset:#x} written while the kernel runs")
        self.regs[offset] = value

    def region(self, ch: int) -> int:
        from accllm.sim.engine_regs import REGION_HI, region_reg

        return self.regs.get(region_reg(ch), 0) | self.regs.get(region_reg(ch, REGION_HI), 0) << 32

    def not_ready(self, run: int) -> list[str]:
        """Why the engine cannot serve a kernel run now (empty: ready)."""
        out = []
        for ch in range(self.channels):
            addr = self.region(ch)
            if addr not in self.dev.device:
                out.append(f"run {run}: engine channel {ch}: REGION is {addr:#x}, no buffer there (REGION not set)")
            elif self.dev.synced[addr] is None:
                out.append(f"run {run}: engine channel {ch}: its buffer was never synced to the device")
            elif self.dev.host[addr].tobytes() != self.dev.synced[addr]:
                out.append(f"run {run}: engine channel {ch}: its buffer was written by the host but not synced")
            elif self.banks is not None and self.bank_of.get(addr) != self.banks[ch]:
                out.append(f"run {run}: engine channel {ch}: buffer in memory bank {self.bank_of.get(addr)}, its "
                           f"master is connected to HBM[{self.banks[ch]}]")
        return out

    def device_bytes(self, ch: int) -> bytes:
        """What channel ``ch`` reads: the device memory at its REGION."""
        return self.dev.device[self.region(ch)].tobytes()


# ---------------------------------------------------------------- XRT

def parse_link_banks(link_cfg: str) -> dict[str, int]:
    """``sp=<cu>.<arg>:HBM[i]`` lines of a v++ link config -> {arg: i}."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^sp=\w+\.(\w+):HBM\[(\d+)\]\s*$", link_cfg, re.M)}


def fake_pyxrt(dev: FakeDevice, arg_names: list[str], banks: dict[str, int], kernel_name: str,
               engine_name: str | None = None):
    """A module object with pyxrt's surface, driving ``dev`` (an ap_ctrl_chain FakeDevice) as XRT would;
    ``engine_name``: the user-managed engine kernel (``dev.engine``), reached as ``ip``."""
    m = types.SimpleNamespace(loaded=[], bank_of={})
    errors = dev.errors

    class ert_cmd_state:  # noqa: N801  (pyxrt's name)
        ERT_CMD_STATE_COMPLETED, ERT_CMD_STATE_TIMEOUT, ERT_CMD_STATE_RUNNING = "completed", "timeout", "running"
        ERT_CMD_STATE_ERROR, ERT_CMD_STATE_ABORT, ERT_CMD_STATE_SKERROR, ERT_CMD_STATE_SKCRASHED = "e", "a", "se", "sc"

    class xclBOSyncDirection:  # noqa: N801
        XCL_BO_SYNC_BO_TO_DEVICE, XCL_BO_SYNC_BO_FROM_DEVICE = "to", "from"

    class xclbin:  # noqa: N801
        def __init__(self, path):
            self.path = path
            with open(path, "rb"):
                pass

    class device:  # noqa: N801
        def __init__(self, index=0):
            self.index, self.uuid = index, None

        def load_xclbin(self, xb):
            m.loaded.append(xb.path)
            self.uuid = f"uuid:{xb.path}"
            return self.uuid

    class kernel:  # noqa: N801
        shared, exclusive = "shared", "exclusive"

        def __init__(self, d, uuid, name, mode="shared"):
            if uuid is None or uuid != d.uuid:
                raise RuntimeError("kernel: that xclbin is not loaded")
            if name != kernel_name:
                raise RuntimeError(f"kernel: no kernel {name!r} in the xclbin")
            self.device = d

        def group_id(self, i):
            return banks[arg_names[i]]

    class bo:  # noqa: N801
        normal = "normal"

        def __init__(self, d, size, flags, group):
            self.size_, self.group = size, group
            self.host = dev.allocate((size,), np.uint8)
            m.bank_of[self.host.device_address] = group

        def map(self):
            return memoryview(self.host)

        def sync(self, direction, size=None, offset=0):
            if size is not None and (offset != 0 or size != self.size_):
                errors.append(f"partial sync of a bo ({offset}+{size} of {self.size_} bytes)")
            (dev.to_device if direction == "to" else dev.from_device)(self.host.device_address)

        def address(self):
            return self.host.device_address

    class run:  # noqa: N801
        def __init__(self, k):
            self.k, self.values, self.outstanding = k, {}, False

        def set_arg(self, i, value):
            self.values[i] = value

        def start(self):
            if self.outstanding:
                errors.append("run.start() while the previous start was not waited for")
            for i, name in enumerate(arg_names):
                v = self.values.get(i)
                if v is None:
                    errors.append(f"run.start(): argument {i} ({name}) was never set")
                    continue
                if dev.args[name].pointer:
                    if not isinstance(v, bo):
                        errors.append(f"argument {name} is a buffer, got {type(v).__name__}")
                        continue
                    if v.group != banks[name]:
                        errors.append(f"argument {name}: bo in memory group {v.group}, the argument is connected "
                                      f"to HBM[{banks[name]}] (group {banks[name]})")
                    addr = v.address()
                    dev.write(dev.args[name].offset, addr & 0xFFFF_FFFF)  # XRT writes the registers
                    dev.write(dev.args[name].offset + 4, addr >> 32)
                else:
                    dev.write(dev.args[name].offset, int(v))
            dev.write(CTRL, AP_START)
            self.outstanding = True

        def wait(self, timeout_ms=0):
            if dev.state == "hung":
                return ert_cmd_state.ERT_CMD_STATE_TIMEOUT
            if dev.read(CTRL) & AP_DONE or dev.state in ("done", "idle"):
                if dev.protocol == "ap_ctrl_chain":
                    dev.write(CTRL, AP_CONTINUE)  # XRT's scheduler answers ap_done of a chain kernel
                self.outstanding = False
                return ert_cmd_state.ERT_CMD_STATE_COMPLETED
            return ert_cmd_state.ERT_CMD_STATE_RUNNING

        def state(self):
            return ert_cmd_state.ERT_CMD_STATE_RUNNING if self.outstanding else ert_cmd_state.ERT_CMD_STATE_COMPLETED

    class ip:  # noqa: N801  (xrt::ip: register access to a user-managed kernel)
        def __init__(self, d, uuid, name):
            if uuid is None or uuid != d.uuid:
                raise RuntimeError("ip: that xclbin is not loaded")
            if name != engine_name or dev.engine is None:
                raise RuntimeError(f"ip: no IP {name!r} in the xclbin")

        def read_register(self, offset):
            return dev.engine.read(offset)

        def write_register(self, offset, data):
            dev.engine.write(offset, data)

    m.ip = ip
    m.ert_cmd_state, m.xclBOSyncDirection = ert_cmd_state, xclBOSyncDirection
    m.xclbin, m.device, m.kernel, m.bo, m.run = xclbin, device, kernel, bo, run
    return m
