"""The lowest layer of the ``csim`` and ``rtl`` backends: :class:`~accllm.host.mmio.SimIO` whose ``ap_start``
calls the C-simulation library of the HLS kernel (``accllm.hls.csim``; ``core="rtl"`` links the Verilated RTL
core of ``accllm.hw.rtl_native``) on the buffers behind the argument registers."""
from __future__ import annotations

import ctypes

from .mmio import SimIO


def csim_io(build, image, core: str = "c") -> SimIO:
    from accllm.hls.csim import build_library, read_core_params

    if core not in ("c", "rtl"):
        raise ValueError(f"core must be 'c' or 'rtl', got {core!r}")
    linked = None
    if core == "rtl":
        from accllm.hw.rtl_native import build_wrapper

        linked = build_wrapper(*read_core_params(build.path / "hls"))
    lib = ctypes.CDLL(str(build_library(build.path / "hls", linked)))
    lib.accllm_csim_step.restype = ctypes.c_int
    off = {a.name: a for a in image.args}

    def run_kernel(io: SimIO) -> None:
        def ptr(name):
            return io.buffer_at(io.reg64(off[name].offset)).ctypes.data_as(ctypes.c_void_p)

        def u32(name):
            return ctypes.c_uint(io.regs.get(off[name].offset, 0))

        lib.accllm_csim_step(ptr("program"), u32("n_instr"), ptr("blob"), ptr("kv"), u32("token"), u32("pos"),
                             ptr("logits"), ptr("trace"), u32("trace_en"))
        io.finish()

    return SimIO(run_kernel)
