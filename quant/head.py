"""``accllm quantize-head CKPT``: quantise only the LM head of an existing compressed checkpoint, in place.

For a checkpoint written before the head was quantised (``compression.json`` without ``head_bits``): the head (the
embedding when tied, else ``lm_head.weight``) goes through the compress flow's own head step
(:func:`accllm.quant.quantize.quantize_head`: Brevitas group-wise asymmetric codes, fp16 scales, int8 per-token
input), optionally Brevitas GPTQ on the checkpoint's own calibration windows (:func:`~accllm.quant.quantize.gptq_head`),
and is stored as the other linears are (:mod:`accllm.quant.checkpoint`). Nothing else in the checkpoint changes:
the other tensors are copied as stored. ``compression.json`` gets ``settings.head_bits`` and a ``head`` record
(bits, method, source tensor, the command); ``config.json`` records the untied head; ``files.sha256`` is rewritten.
Deterministic on the CPU: the same checkpoint gives the same bytes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from accllm.quant.checkpoint import (HEAD, SETTINGS_FILE, WEIGHTS_FILE, SafetensorsStream, head_tensors,
                                     load_compressed, verify_checkpoint)
from accllm.quant.integrity import write_manifest
from accllm.quant.quantize import (HEAD_BITS, CompressionSettings, calibration_batches, gptq_head, quantize_head,
                                   round_scales_to_fp16)

HEAD_METHODS = ("rtn", "gptq")


def quantize_checkpoint_head(path, bits: int = 4, method: str = "rtn", calib_samples: int | None = None,
                             command: str | None = None, progress: bool = True) -> dict:
    """Quantise the head of checkpoint ``path`` in place; returns the ``head`` record written to compression.json."""
    from safetensors import safe_open

    path = Path(path)
    if bits not in HEAD_BITS:
        raise ValueError(f"unsupported LM head bit width {bits}; choose one of {HEAD_BITS}")
    if method not in HEAD_METHODS:
        raise ValueError(f"head method must be one of {HEAD_METHODS}, got {method!r}")
    verify_checkpoint(path)
    meta = json.loads((path / SETTINGS_FILE).read_text())
    s = CompressionSettings.from_json(meta["settings"])
    if s.head_bits:
        raise ValueError(f"{path}: the LM head is already quantised ({s.head_bits}-bit codes)")
    torch.manual_seed(s.seed)
    model, tok, _ = load_compressed(path, verify_files=False)
    source = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    hs = CompressionSettings(**{**s.to_json(), "head_bits": bits})
    quantize_head(model, hs)
    record = {"bits": bits, "method": method, "group_size": s.group_size, "source": source,
              "command": command or f"accllm quantize-head {path} --bits {bits} --method {method}"}
    if method == "gptq":
        n = calib_samples or s.calib_samples
        gptq_head(model, calibration_batches(tok, n, s.calib_seqlen, s.seed, text=s.calib_text), progress)
        record["calib_samples"] = n
    round_scales_to_fp16(model)
    new = head_tensors(model.lm_head)
    out = SafetensorsStream(path / WEIGHTS_FILE)  # spools beside the file, replaces it on close
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        names = sorted((set(f.keys()) - {f"{HEAD}.weight"}) | set(new))
        for name in names:
            out.add(name, new[name] if name in new else f.get_tensor(name))
    out.close()
    meta["settings"]["head_bits"] = bits
    meta["head"] = record
    (path / SETTINGS_FILE).write_text(json.dumps(meta, indent=1))
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_manifest(path)
    return record


def quantize_head_command(a) -> int:
    cmd = "accllm quantize-head " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None
    rec = quantize_checkpoint_head(a.checkpoint, a.bits, a.method, a.calib_samples, cmd)
    print(f"quantised the LM head of {a.checkpoint} ({rec['bits']}-bit {rec['method'].upper()} from {rec['source']}); "
          f"rewrote {WEIGHTS_FILE}, {SETTINGS_FILE}, config.json, files.sha256")
    return 0


def register(sub):
    p = sub.add_parser("quantize-head", help="quantise only the LM head of an existing compressed checkpoint (in place)")
    p.add_argument("checkpoint", type=Path, help="directory written by `accllm quantize`")
    p.add_argument("--bits", type=int, default=4, help="head code width (4: the engine's)")
    p.add_argument("--method", default="rtn", choices=HEAD_METHODS)
    p.add_argument("--calib-samples", type=int, default=None, help="GPTQ windows (default: the checkpoint's own)")
    p.set_defaults(func=quantize_head_command)
