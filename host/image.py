"""The engine image: what the driver uploads (program, weight blob, KV and logits buffers) and the kernel
register map it drives, read and verified from a build directory (:class:`accllm.host.build.BuildDir`) by the
compiler's own readers. The file formats and the kernel's argument list belong to the compiler (``accllm.hls``);
this is the one adapter that reads them."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelArg:
    name: str
    offset: int          # byte offset in the s_axilite map
    pointer: bool        # 64-bit device address (two words) or a 32-bit scalar


@dataclass
class EngineImage:
    """Everything the driver uploads and the register map it drives, read and verified from a build."""

    header: object                       # the program header (formats, engine parameters), for verify_bitstream
    args: list[KernelArg]
    buffers: dict[str, bytes | int]      # pointer arg -> initial bytes, or a size in bytes (zero-filled)
    kv_arg: str                          # the pointer arg that holds the Λ KV cache
    logits_arg: str
    vocab: int
    layout: object                       # accllm.sim.kv_layout.KVLayout
    scalars: dict[str, str] = field(default_factory=dict)  # scalar arg -> "token" | "pos" | "slot" | "occupied"
    constants: dict[str, int] = field(default_factory=dict)  # scalar args written once at load


def vitis_arg_offsets(args: list[tuple[str, bool]], first: int = 0x10) -> list[KernelArg]:
    """Offsets Vitis HLS gives s_axilite arguments in declaration order: after the four control words,
    a 64-bit pointer takes 0x0c (low, high, reserved) and a 32-bit scalar 0x08 (value, reserved)."""
    out, off = [], first
    for name, pointer in args:
        out.append(KernelArg(name, off, pointer))
        off += 0x0C if pointer else 0x08
    return out


def kernel_args() -> list[tuple[str, bool]]:
    """The HLS kernel top's arguments in declaration order as ``(name, is_pointer)``, read from the template
    the compiler writes (its m_axi ports are the pointers), so the driver's register map has one source."""
    from accllm.bitstreams.build import find_hls_top

    top = find_hls_top()
    return [(a, a in top.m_axi) for a in top.args]


def read_engine_image(build) -> EngineImage:
    """The build's program and weight blob, verified by the compiler's readers (magic, format version,
    sha256, program/blob pairing, the build's files.sha256), and the kernel's register map -> :class:`EngineImage`."""
    from accllm.hls import blob as blobfmt
    from accllm.hls import program as prog
    from accllm.sim.dims import Dims

    ppath = build.path / prog.PROGRAM_FILE
    meta, instrs, program, _, payload = prog.read_compiled(build.path)
    dims = Dims(**meta["dims"])
    layout = dims.kv_layout()
    if layout.nbytes != meta["kv_bytes"]:
        raise ValueError(f"{ppath}: the program expects a {meta['kv_bytes']}-byte KV cache, the Λ layout of its "
                         f"dimensions is {layout.nbytes} bytes; recompile")
    header = {"program_format": prog.VERSION, "blob_format": blobfmt.VERSION,
              "lanes": meta["engine"]["lanes"], "group": dims.group, "dims": meta["dims"]}
    return EngineImage(
        header=header, args=vitis_arg_offsets(kernel_args()),
        buffers={"program": program, "blob": payload, "kv": layout.nbytes, "logits": 4 * dims.vocab,
                 "topk": 8 * int(meta["engine"].get("topk", 16)),  # K uint32 ids, then K float32 logits
                 "trace": 4 * (dims.layers * meta["trace"]["_size"] + dims.hidden  # + the LM head's region
                               + dims.vocab * (dims.hidden // dims.group))},
        kv_arg="kv", logits_arg="logits", vocab=dims.vocab, layout=layout,
        scalars={"token": "token", "pos": "pos"}, constants={"n_instr": len(instrs), "logits_en": 1, "trace_en": 0})
