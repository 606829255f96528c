"""Alveo (U280) through XRT's own Python API, ``pyxrt`` (shipped with XRT, not on PyPI: ``source
/opt/xilinx/xrt/setup.sh`` puts it on ``PYTHONPATH``): the kernel port :class:`XrtKernel` of the engine driver.

- ``pyxrt.device(index)`` opens the card, ``load_xclbin(pyxrt.xclbin(path))`` programs it and gives its uuid,
  ``pyxrt.kernel(device, uuid, name, pyxrt.kernel.shared)`` the compute unit.
- Each buffer is a ``pyxrt.bo`` in the memory bank its kernel argument is connected to
  (``kernel.group_id(arg_index)``: the HBM pseudo channel ``link.cfg`` assigned with ``[connectivity] sp=``);
  the host side is ``bo.map()``, moved with ``bo.sync(XCL_BO_SYNC_BO_TO_DEVICE | _FROM_DEVICE, size, 0)``.
- One ``pyxrt.run`` holds the arguments (they persist between starts); per kernel run (a prompt's tokens in the
  ``tokens`` bo, or one token in decode) the scalars (``n_tokens``, ``pos``) are set, then ``run.start()`` and
  ``run.wait(timeout_ms)``. XRT drives the control register itself, ap_continue
  included for the ``ap_ctrl_chain`` kernel the Vitis flow builds.
- A bitstream with the engine RTL (``engine_rtl`` in the manifest): the engine is a user-managed RTL kernel
  (``package_xo -ctrl_protocol user_managed``), which XRT reaches only as ``xrt::ip`` (UG1393 "Working with
  User-Managed Kernels": ``xrt::ip(device, uuid, name)``, ``write_register`` / ``read_register``); each
  channel's bo goes in the bank the manifest records for it (the link.cfg ``sp=`` of its master: XRT gives no
  ``group_id`` for a user-managed kernel). pyxrt as shipped with XRT binds ``xrt::kernel`` but not ``xrt::ip``;
  without a ``pyxrt.ip`` the engine cannot be placed and the backend says so before loading anything.
"""
from __future__ import annotations

import numpy as np


class XrtBuffer(np.ndarray):
    """A ``pyxrt.bo``'s host mapping as a uint8 array with the buffer methods the driver uses."""

    bo: object
    device_address: int

    def sync_to_device(self):
        self._sync("XCL_BO_SYNC_BO_TO_DEVICE")

    def sync_from_device(self):
        self._sync("XCL_BO_SYNC_BO_FROM_DEVICE")

    def _sync(self, direction: str):
        self.bo.sync(getattr(self.pyxrt_module.xclBOSyncDirection, direction), self.nbytes, 0)


class XrtKernel:
    """The kernel port (see :mod:`accllm.host.control`) on one compute unit of an xclbin."""

    def __init__(self, xclbin: str, kernel: str, arg_names: list[str], device_index: int = 0, engine=None):
        """``engine``: the manifest's ``engine_rtl`` (:class:`accllm.bitstreams.manifest.EngineRtl`) of an xclbin
        with the engine RTL kernel beside this one."""
        try:
            import pyxrt
        except ImportError:
            raise ImportError("the xrt backend needs XRT's Python API (pyxrt): install XRT and "
                               "`source /opt/xilinx/xrt/setup.sh` before running") from None
        if engine is not None and not hasattr(pyxrt, "ip"):
            raise ImportError(f"this xclbin carries the engine RTL kernel {engine.kernel!r} (user-managed): "
                              "setting its REGION registers needs xrt::ip, which this pyxrt does not bind (no pyxrt.ip)")
        self.pyxrt, self.index = pyxrt, {n: i for i, n in enumerate(arg_names)}
        self.device = pyxrt.device(device_index)
        self.uuid = self.device.load_xclbin(pyxrt.xclbin(str(xclbin)))
        self.kernel = pyxrt.kernel(self.device, self.uuid, kernel, pyxrt.kernel.shared)
        self.run = pyxrt.run(self.kernel)
        self.pending = False  # a started run not yet seen completed
        self.bos = []
        self.engine = None if engine is None else XrtEngine(self, engine.kernel, engine.banks)

    def _i(self, arg: str) -> int:
        if arg not in self.index:
            raise ValueError(f"the kernel has no argument {arg!r}; it has {sorted(self.index)}")
        return self.index[arg]

    def allocate(self, arg: str, nbytes: int) -> XrtBuffer:
        return self.bo(nbytes, self.kernel.group_id(self._i(arg)))

    def bo(self, nbytes: int, bank: int) -> XrtBuffer:
        """A bo of ``nbytes`` in memory bank ``bank``, as a host-mapped buffer."""
        x = self.pyxrt
        bo = x.bo(self.device, int(nbytes), x.bo.normal, int(bank))
        buf = np.frombuffer(bo.map(), dtype=np.uint8, count=int(nbytes)).view(XrtBuffer)
        buf.bo, buf.device_address, buf.pyxrt_module = bo, int(bo.address()), x
        self.bos.append(bo)
        return buf

    def set_buffer(self, arg: str, buf) -> None:
        self.run.set_arg(self._i(arg), buf.bo)

    def set_scalar(self, arg: str, value: int) -> None:
        self.run.set_arg(self._i(arg), int(value))

    def start(self) -> None:
        self.run.start()
        self.pending = True

    def wait(self, timeout_s: float) -> bool:
        st = self.pyxrt.ert_cmd_state
        state = self.run.wait(max(1, int(timeout_s * 1000)))
        if state == st.ERT_CMD_STATE_COMPLETED:
            self.pending = False
            return True
        if state in (st.ERT_CMD_STATE_ERROR, st.ERT_CMD_STATE_ABORT, st.ERT_CMD_STATE_SKERROR,
                     st.ERT_CMD_STATE_SKCRASHED):
            self.pending = False
            raise RuntimeError(f"XRT reports the kernel run as {state}")
        return False  # timed out (XRT returns ERT_CMD_STATE_TIMEOUT, older versions the running state)

    def idle(self) -> bool:
        """XRT drives the control register: the compute unit is idle once its last run completed."""
        return not self.pending

    def reload(self) -> None:
        """After a timeout: give the outstanding run one more wait; a compute unit that is still busy needs the
        card reset (``xbutil reset``), which a process cannot do while it holds the device."""
        if self.pending and not self.wait(1.0):
            raise RuntimeError("the compute unit is still running after the timeout; reset the card "
                               "(`xbutil reset --device BDF`) and restart")
        self.run = self.pyxrt.run(self.kernel)  # a fresh run; the driver sets its arguments again

    def close(self) -> None:
        self.bos.clear()


class XrtEngine:
    """The engine RTL kernel of an xclbin (user-managed): registers through ``pyxrt.ip``, channel ch's buffer in
    ``banks[ch]``."""

    def __init__(self, xk: XrtKernel, name: str, banks: list[int]):
        self.xk, self.banks = xk, list(banks)
        self.ip = xk.pyxrt.ip(xk.device, xk.uuid, name)

    def allocate(self, ch: int, nbytes: int) -> XrtBuffer:
        if ch >= len(self.banks):
            raise ValueError(f"the manifest records {len(self.banks)} engine banks, the image has channel {ch}")
        return self.xk.bo(nbytes, self.banks[ch])

    def read(self, offset: int) -> int:
        return int(self.ip.read_register(offset))

    def write(self, offset: int, value: int) -> None:
        self.ip.write_register(offset, int(value) & 0xFFFF_FFFF)
