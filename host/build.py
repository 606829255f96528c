"""Where the runtime finds things in a build directory: the compressed checkpoint (tokenizer, golden weights)
and the compiled files (read by :mod:`accllm.host.image`).

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
                                f"{', '.join(CHECKPOINT_PLACES)}); it carries the tokenizer and the golden model's "
                                f"weights: pass a flow build (`accllm build`/`demo`), or compile an export made by "
                                f"`accllm export` (it carries the checkpoint into the build)")

    def tokenizer_dir(self) -> Path:
        """The folder that holds the build's tokenizer.json (and the chat template beside it)."""
        for p in (self.root, self.path, self.checkpoint()):
            if (p / "tokenizer.json").is_file():
                return p
        raise FileNotFoundError(f"{self.root} has no tokenizer.json")

    def tokenizer(self):
        from accllm.quant.integrity import verify

        from .tokenizer import Tokenizer

        p = self.tokenizer_dir()
        if (p / CHECKPOINT_MARKER).is_file():  # a checkpoint: its files.sha256 covers the tokenizer
            verify(p, [n for n in ("tokenizer.json", "config.json") if (p / n).exists()])
        return Tokenizer(p)
