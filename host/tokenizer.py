"""Text <-> token ids for the runtime: the checkpoint's ``tokenizer.json`` through the ``tokenizers`` library.

Prompts are encoded as ``<s> text`` — the layout the model was trained on (``accllm.quant.corpus``).
:class:`IncrementalDecoder` turns a growing id list into text pieces at constant cost per token and
holds back a piece while it ends in an incomplete UTF-8 sequence (byte-level BPE splits characters).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class Tokenizer:
    def __init__(self, directory: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        d = Path(directory)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{d} has no tokenizer.json")
        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
            raise ValueError(f"{path}: not a valid tokenizer file ({str(e).splitlines()[0][:160]})") from None
        try:
            cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{d / 'config.json'}: not valid JSON ({e})") from None
        self.bos_id = cfg.get("bos_token_id", self.tok.token_to_id("<s>"))
        self.eos_id = cfg.get("eos_token_id", self.tok.token_to_id("</s>"))
        self.vocab_size = self.tok.get_vocab_size()

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def check_ids(self, ids) -> list[int]:
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise ValueError(f"a prompt must be a string or a list of token ids, got {type(ids).__name__}")
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in ids):
            raise ValueError("token ids must be integers")
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return ids


class IncrementalDecoder:
    """Text of each new token, decoded with a short left context so spaces and merges come out right."""

    def __init__(self, tokenizer: Tokenizer, context: list[int] | None = None):
        self.tok = tokenizer
        self.ids: list[int] = list(context or [])[-4:]
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tok.decode(self.ids[self.prefix:self.read])
        after = self.tok.decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self.prefix, self.read = self.read, len(self.ids)
        if self.prefix > 64:  # keep the id list short for endless streams
            drop = self.prefix - 4
            self.ids = self.ids[drop:]
            self.prefix -= drop
            self.read -= drop
        return after[len(before):]
