"""What the runtime reads from a build directory: the compressed checkpoint (tokenizer, golden weights) and
the compiled engine image (program, weight blob, kernel register map).

A build directory is the output of ``accllm compile`` or of a flow run (``accllm build``/``demo``). A
compressed checkpoint directory (``accllm quantize -o``) is accepted too, for the ``golden`` and
``fakequant`` backends.
"""
from __future__ import annotations

from pathlib import Path

CHECKPOINT_MARKER = "compression.json"  # accllm.quant.checkpoint.SETTINGS_FILE
# Where a build keeps its parts: a flow run has one folder per step (compress/, compile/), `accllm demo`
# puts the checkpoint in checkpoint/ beside the compiled files.
CHECKPOINT_PLACES = (".", "checkpoint", "compress", "../checkpoint", "../compress")
PROGRAM_PLACES = (".", "compile", "build")


class BuildDir:
    def __init__(self, path):
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"build directory {path} does not exist (run `accllm compile` or `accllm demo` first)")
        self.root = path
        self.path = next((path / p for p in PROGRAM_PLACES if (path / p / "program.bin").is_file()), path)

    def checkpoint(self) -> Path:
        for base in dict.fromkeys((self.root, self.path)):
            for rel in CHECKPOINT_PLACES:
                p = (base / rel).resolve()
                if (p / CHECKPOINT_MARKER).is_file():
                    return p
        raise FileNotFoundError(f"{self.root} holds no compressed checkpoint (looked for {CHECKPOINT_MARKER} in "
                                f"{', '.join(CHECKPOINT_PLACES)}); it carries the tokenizer and the golden model's weights")

    def tokenizer(self):
        from .tokenizer import Tokenizer

        for p in (self.root, self.path, self.checkpoint()):
            if (p / "tokenizer.json").is_file():
                return Tokenizer(p)
        raise FileNotFoundError(f"{self.root} has no tokenizer.json")


def kernel_args() -> list[tuple[str, bool]]:
    """The HLS kernel top's arguments in declaration order as ``(name, is_pointer)``, read from the template
    the compiler writes (its m_axi ports are the pointers), so the driver's register map has one source."""
    from accllm.hls.bitstream_build import find_hls_top

    top = find_hls_top()
    return [(a, a in top.m_axi) for a in top.args]


def read_engine_image(build: BuildDir):
    """The build's program and weight blob, verified by the compiler's readers (magic, format version,
    sha256, program/blob pairing), and the kernel's register map -> :class:`~accllm.host.engine.EngineImage`."""
    from accllm.hls import blob as blobfmt
    from accllm.hls import container
    from accllm.hls import program as prog
    from accllm.sim.golden import Dims

    from .engine import EngineImage, vitis_arg_offsets

    ppath, bpath = build.path / "program.bin", build.path / "weights.blob"
    meta, instrs, program = prog.read_program(ppath)
    _, payload = blobfmt.read_blob(bpath)
    prog.check_pair(meta, container.sha256(payload), ppath, bpath)
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
                 "trace": 4 * dims.layers * meta["trace"]["_size"]},
        kv_arg="kv", logits_arg="logits", vocab=dims.vocab, layout=layout,
        scalars={"token": "token", "pos": "pos"}, constants={"n_instr": len(instrs), "trace_en": 0})
