"""The lowest layer of the ``csim`` and ``rtl`` backends: :class:`~accllm.host.mmio.SimIO` whose ``ap_start``
calls the C-simulation library of the HLS kernel (``accllm.hls.csim``; ``core="rtl"`` links the Verilated RTL
core of ``accllm.hw.rtl_native``) on the buffers behind the argument registers."""
from __future__ import annotations

import ctypes

from .mmio import SimIO


def library_step(library):
    """One run of the kernel top of a built C-simulation library as ``step(arrays, scalars)``: device arrays
    (numpy) and scalar argument values by the top's argument names (``tokens`` holds ``n_tokens`` uint32 ids).
    Needs only ctypes (a board-side fake device uses it too)."""
    lib = ctypes.CDLL(str(library))
    lib.accllm_csim_prefill.restype = ctypes.c_int

    def step(arrays, scalars) -> int:
        """0, or -1 when the kernel refused the run (n_tokens 0 or over its capacity)."""
        def ptr(name):
            return arrays[name].ctypes.data_as(ctypes.c_void_p)

        def u32(name):
            return ctypes.c_uint(int(scalars.get(name, 0)))

        return lib.accllm_csim_prefill(ptr("program"), u32("n_instr"), ptr("blob"),
                                       ctypes.c_ulonglong(arrays["blob"].nbytes), ptr("kv"), ptr("tokens"),
                                       u32("n_tokens"), u32("pos"), ptr("topk"), ptr("logits"), u32("logits_en"),
                                       ptr("trace"), u32("trace_en"))

    return step


def csim_io(build, image, core: str = "c") -> SimIO:
    from accllm.hls.csim import build_library, read_core_params

    if core not in ("c", "rtl"):
        raise ValueError(f"core must be 'c' or 'rtl', got {core!r}")
    linked = None
    if core == "rtl":
        from accllm.hw.rtl_native import build_wrapper

        linked = build_wrapper(*read_core_params(build.path / "hls"))
    step = library_step(build_library(build.path / "hls", linked))

    def run_kernel(io: SimIO) -> None:
        arrays = {a.name: io.buffer_at(io.reg64(a.offset)) for a in image.args if a.pointer}
        scalars = {a.name: io.regs.get(a.offset, 0) for a in image.args if not a.pointer}
        step(arrays, scalars)
        io.finish()

    return SimIO(run_kernel)
