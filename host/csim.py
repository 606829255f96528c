"""The lowest layer of the ``csim`` and ``rtl`` backends: :class:`~accllm.host.mmio.SimIO` whose ``ap_start``
calls the C-simulation library of the HLS kernel (``accllm.hls.csim``; ``core="rtl"`` links the Verilated RTL
core of ``accllm.hw.rtl_native``) on the buffers behind the argument registers."""
from __future__ import annotations

import ctypes

from .mmio import SimIO


def library_step(library):
    """One kernel run of a built C-simulation library as ``step(arrays, scalars)``: device arrays (numpy) and
    scalar argument values by kernel argument name. Needs only ctypes (a board-side fake device uses it too)."""
    lib = ctypes.CDLL(str(library))
    lib.accllm_csim_step.restype = ctypes.c_int

    def step(arrays, scalars) -> None:
        def ptr(name):
            return arrays[name].ctypes.data_as(ctypes.c_void_p)

        def u32(name):
            return ctypes.c_uint(int(scalars.get(name, 0)))

        lib.accllm_csim_step(ptr("program"), u32("n_instr"), ptr("blob"), ctypes.c_ulonglong(arrays["blob"].nbytes),
                             ptr("kv"), u32("token"), u32("pos"), ptr("topk"), ptr("logits"), u32("logits_en"),
                             ptr("trace"), u32("trace_en"))

    return step


def library_prefill(library):
    """The prefill entry of a built C-simulation library as ``prefill(arrays, scalars, tokens, pos)``: the prompt
    in the kernel's block mode (one weight pass per block of tokens), logits of the last token."""
    import numpy as np

    lib = ctypes.CDLL(str(library))
    lib.accllm_csim_prefill.restype = ctypes.c_int

    def prefill(arrays, scalars, tokens, pos) -> None:
        ids = np.ascontiguousarray(tokens, dtype=np.uint32)
        ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        lib.accllm_csim_prefill(ptr(arrays["program"]), ctypes.c_uint(int(scalars.get("n_instr", 0))),
                                ptr(arrays["blob"]), ctypes.c_ulonglong(arrays["blob"].nbytes), ptr(arrays["kv"]),
                                ptr(ids), ctypes.c_uint(len(ids)), ctypes.c_uint(int(pos)), ptr(arrays["topk"]),
                                ptr(arrays["logits"]), ctypes.c_uint(int(scalars.get("logits_en", 1))),
                                ptr(arrays["trace"]), ctypes.c_uint(0))

    return prefill


def csim_io(build, image, core: str = "c") -> SimIO:
    from accllm.hls.csim import build_library, read_core_params

    if core not in ("c", "rtl"):
        raise ValueError(f"core must be 'c' or 'rtl', got {core!r}")
    linked = None
    if core == "rtl":
        from accllm.hw.rtl_native import build_wrapper

        linked = build_wrapper(*read_core_params(build.path / "hls"))
    lib = build_library(build.path / "hls", linked)
    step, prefill = library_step(lib), library_prefill(lib)

    def run_kernel(io: SimIO) -> None:
        arrays = {a.name: io.buffer_at(io.reg64(a.offset)) for a in image.args if a.pointer}
        scalars = {a.name: io.regs.get(a.offset, 0) for a in image.args if not a.pointer}
        step(arrays, scalars)
        io.finish()

    def run_block(tokens, pos) -> None:
        arrays = {a.name: io.buffer_at(io.reg64(a.offset)) for a in image.args if a.pointer}
        scalars = {a.name: io.regs.get(a.offset, 0) for a in image.args if not a.pointer}
        prefill(arrays, scalars, tokens, pos)

    io = SimIO(run_kernel)
    io.run_block = run_block
    return io
