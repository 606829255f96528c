"""A fake Zynq board for a separate Python process (the slim-install test and bench/board_install.py).

Put this folder and ``tests/`` on ``PYTHONPATH`` and set ``ACCLLM_FAKE_KERNEL_LIB`` to a built C-simulation
library: ``pynq.Overlay`` and ``pynq.allocate`` then open the protocol-enforcing device of ``board_fakes``
(ap_ctrl_hs, device memory apart from host memory) whose kernel is that library. The real ``pynq`` package is
used where it is installed (so its import cost is measured), else a bare module stands in. At exit the
device's protocol errors, run count and the top-level modules the process imported are written to
``ACCLLM_FAKE_BOARD_REPORT`` (JSON).
"""
import atexit
import json
import os
import sys
import types

if os.environ.get("ACCLLM_FAKE_KERNEL_LIB"):
    try:
        import pynq
    except ImportError:
        pynq = types.ModuleType("pynq")
        sys.modules["pynq"] = pynq
    state = {}

    def _device():
        if "dev" not in state:
            from board_fakes import FakeDevice

            from accllm.host.csim import library_step
            from accllm.host.image import kernel_args, vitis_arg_offsets

            state["dev"] = FakeDevice(library_step(os.environ["ACCLLM_FAKE_KERNEL_LIB"]),
                                      vitis_arg_offsets(kernel_args()), protocol="ap_ctrl_hs")
        return state["dev"]

    class _IP:
        def read(self, offset=0):
            return _device().read(offset)

        def write(self, offset, value):
            _device().write(offset, value)

    class Overlay:
        def __init__(self, bitfile_name, dtbo=None, download=True, ignore_version=False, device=None, gen_cache=False):
            self.bitfile_name = bitfile_name
            self.ip_dict = {"accllm_top_0": {"type": "xilinx.com:hls:accllm_top:1.0"}}
            self.accllm_top_0 = _IP()

        def download(self, dtbo=None):
            _device().reload()

    def allocate(shape, dtype="u4", target=None, **kwargs):
        return _device().allocate(shape, dtype)

    pynq.Overlay, pynq.allocate = Overlay, allocate

    @atexit.register
    def _report():
        out = os.environ.get("ACCLLM_FAKE_BOARD_REPORT")
        if out:
            dev = state.get("dev")
            with open(out, "w") as f:
                json.dump({"errors": dev.errors if dev else ["no device was opened"], "runs": dev.runs if dev else 0,
                           "modules": sorted({m.split(".")[0] for m in sys.modules})}, f)
