"""The engine image: what the driver uploads (program, weight blob, KV and logits buffers) and the kernel
register map it drives, read and verified from a build directory (:class:`accllm.host.build.BuildDir`) by the
compiler's own readers. The file formats and the kernel's argument list belong to the compiler (``accllm.hls``);
this is the one adapter that reads them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class KernelArg:
    name: str
    offset: int          # byte offset in the s_axilite map
    pointer: bool        # 64-bit device address (two words) or a 32-bit scalar


@dataclass(frozen=True)
class EngineRegions:
    """The build's engine image (``weights.engine``: one region per memory channel) for a bitstream that carries
    the engine RTL: the host loads region ``ch`` into a buffer in channel ch's memory and writes its address to the
    engine's REGION registers (the HLS kernel adds each section's offset, its BASE)."""

    build: Path
    params: dict                 # Verilog parameters the image needs (accllm.sim.engine_regs.engine_params)
    offsets: list[int]           # byte offset of each channel's region in weights.engine
    sizes: list[int]             # bytes of each region (4 KiB-aligned, as laid out in the file)

    @property
    def channels(self) -> int:
        return len(self.offsets)

    def verify(self) -> None:
        """``weights.engine`` and its map against the build's files.sha256 (a one-line error naming the file)."""
        from accllm.hls.engine_image import IMAGE_FILE, MAP_FILE
        from accllm.quant.integrity import verify

        verify(self.build, (IMAGE_FILE, MAP_FILE))

    def region(self, ch: int) -> np.ndarray:
        """Channel ``ch``'s bytes (uint8), read from the file."""
        from accllm.hls.engine_image import IMAGE_FILE

        return np.fromfile(self.build / IMAGE_FILE, np.uint8, count=self.sizes[ch], offset=self.offsets[ch])


def read_engine_regions(path, block: int) -> EngineRegions | None:
    """The engine image of the build at ``path`` (None when it has none), T = ``block``."""
    import json

    from accllm.hls.engine_image import IMAGE_FILE, MAP_FILE
    from accllm.sim.engine_regs import engine_params

    mpath = Path(path) / MAP_FILE
    if not mpath.is_file():
        return None
    m = json.loads(mpath.read_text())
    offsets = [int(o) for o in m["channel_offsets"]]
    ends = offsets[1:] + [int(m["file_bytes"])]
    if len(offsets) != m["channels"]:
        raise ValueError(f"{mpath}: {len(offsets)} channel offsets for {m['channels']} channels; recompile")
    if not (Path(path) / IMAGE_FILE).is_file():
        raise FileNotFoundError(f"{Path(path) / IMAGE_FILE} is missing beside {MAP_FILE}; recompile")
    return EngineRegions(Path(path), engine_params(m, block), offsets, [e - o for o, e in zip(offsets, ends)])


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
    # scalar arg -> what the driver writes there per run: "n_tokens" | "pos" (first token's stream position), or
    # for a kernel of one token per run without a tokens buffer, "token" | "slot" | "occupied"
    scalars: dict[str, str] = field(default_factory=dict)
    constants: dict[str, int] = field(default_factory=dict)  # scalar args written once at load
    tokens_arg: str | None = None        # the pointer arg that holds a run's token ids (uint32), if the kernel has one
    max_tokens: int = 1                  # tokens one kernel run takes at most (the tokens buffer's capacity)
    block: int = 1                       # tokens per weight pass (prefill block T): a run's time grows per block
    engine: EngineRegions | None = None  # the build's engine image (loaded only for a bitstream with the engine RTL)


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
    from accllm.hls.project import max_tokens, trace_words
    from accllm.sim.dims import Dims

    ppath = build.path / prog.PROGRAM_FILE
    meta, instrs, program, _, payload = prog.read_compiled(build.path)
    dims = Dims(**meta["dims"])
    layout = dims.kv_layout()
    if layout.nbytes != meta["kv_bytes"]:
        raise ValueError(f"{ppath}: the program expects a {meta['kv_bytes']}-byte KV cache, the Λ layout of its "
                         f"dimensions is {layout.nbytes} bytes; recompile")
    block = prog.prefill_block(meta)
    header = {"program_format": prog.VERSION, "blob_format": blobfmt.VERSION,
              "lanes": meta["engine"]["lanes"], "group": dims.group, "block": block, "dims": meta["dims"]}
    regions = read_engine_regions(build.path, block)
    if regions is not None:  # what a bitstream with the engine RTL must be (accllm.bitstreams.manifest.EngineRtl)
        from accllm.sim.engine_regs import identity

        header["engine_rtl"] = identity(regions.params)
    cap = max_tokens(dims, block)
    return EngineImage(
        header=header, args=vitis_arg_offsets(kernel_args()),
        buffers={"program": program, "blob": payload, "kv": layout.nbytes, "tokens": 4 * cap,
                 "logits": 4 * dims.vocab,
                 "topk": 8 * int(meta["engine"].get("topk", 16)),  # K uint32 ids, then K float32 logits
                 "trace": 4 * trace_words(dims, meta["trace"], 1)},  # trace_en stays 0: room for one token's
        kv_arg="kv", logits_arg="logits", vocab=dims.vocab, layout=layout,
        scalars={"n_tokens": "n_tokens", "pos": "pos"},
        constants={"n_instr": len(instrs), "logits_en": 1, "trace_en": 0},
        tokens_arg="tokens", max_tokens=cap, block=block, engine=regions)
