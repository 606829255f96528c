"""Carry a distilled compressed checkpoint of a named model off the device machine in ≤ 15 MiB pieces, and rebuild
it here byte for byte.

    python bench/quality_artifact.py unpack PREFIX OUT_DIR [--model smollm2]

``pack`` (called by ``bench/quality_real.py --pack``) leaves out what the source model already holds (the fp16
embedding) and, under a 2:4 mask, the pruned codes (each equals its group's zero point): kept codes packed at
their bit width, the mask, scales, zero points, norms.
``unpack`` restores the codes, takes the embedding from the model (dequantised GGUF, rounded to fp16 as the
checkpoint stores it), checks every tensor's sha256 against the device's and writes ``compressed.safetensors`` and
the device's ``config.json`` (which says whether the LM head is untied from the embedding).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from accllm.quant.checkpoint import SETTINGS_FILE, WEIGHTS_FILE, pack_codes, unpack_codes, unpack_mask

CHUNK = 15 << 20
EMBED = "model.embed_tokens.weight"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _codes_shape(packed: torch.Tensor, bits: int) -> tuple[int, int]:
    return packed.shape[0], packed.shape[1] * (8 // bits)


def pack(ckpt: Path, prefix: Path, model: str) -> list[Path]:
    from safetensors.torch import load_file, save_file

    settings = json.loads((ckpt / SETTINGS_FILE).read_text())["settings"]
    bits = settings["weight_bits"]
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    out = {}
    for name, t in tensors.items():
        if name == EMBED:
            continue
        lin = name[: -len(".codes")]
        if name.endswith(".codes") and bits and f"{lin}.mask" in tensors:  # a dense (e.g. LM head) section stays
            shape = _codes_shape(t, bits)
            codes = unpack_codes(t, bits, shape[1])
            mask = unpack_mask(tensors[f"{lin}.mask"], shape[1])
            zp = tensors[f"{lin}.zero_points"]
            if shape[1] % zp.shape[1]:
                raise ValueError(f"{lin}: ragged last group; pack stores only whole groups")
            zeros = zp.repeat_interleave(shape[1] // zp.shape[1], 1)
            if torch.equal(codes[~mask], zeros[~mask]):
                kept = codes[mask].view(1, -1)
                out[f"{lin}.kept_codes"] = pack_codes(kept, bits)
                continue
        out[name] = t
    prefix.parent.mkdir(parents=True, exist_ok=True)
    body = prefix.with_name(prefix.name + ".safetensors")
    save_file(out, str(body))
    meta = {"model": model, "weights_sha256": _sha256(ckpt / WEIGHTS_FILE), "settings_file":
            (ckpt / SETTINGS_FILE).read_text(), "config_file": (ckpt / "config.json").read_text(),
            "report": json.loads((ckpt / "report.json").read_text())
            if (ckpt / "report.json").is_file() else None,
            "shapes": {n: list(t.shape) for n, t in tensors.items()},
            "tensor_sha256": {n: _tensor_sha256(t) for n, t in tensors.items()},
            "dtypes": {n: str(t.dtype) for n, t in tensors.items()}}
    parts = [prefix.with_name(prefix.name + ".meta.json")]
    parts[0].write_text(json.dumps(meta))
    data = body.read_bytes()
    for i in range(0, len(data), CHUNK):
        p = prefix.with_name(f"{prefix.name}.part{i // CHUNK:02d}")
        p.write_bytes(data[i:i + CHUNK])
        parts.append(p)
    body.unlink()
    print(f"packed {ckpt} ({len(data) / 2**20:.1f} MiB without the embedding) into {len(parts)} files at {prefix}")
    return parts


def unpack(prefix: Path, out_dir: Path, model: str | None = None) -> Path:
    from safetensors.torch import load, save_file

    from accllm.quant.integrity import write_manifest
    from accllm.quant.model import load_model

    meta = json.loads(prefix.with_name(prefix.name + ".meta.json").read_text())
    parts = sorted(prefix.parent.glob(prefix.name + ".part*"))
    packed = load(b"".join(p.read_bytes() for p in parts))
    bits = json.loads(meta["settings_file"])["settings"]["weight_bits"]
    fp, tok = load_model(model or meta["model"])
    tensors = {EMBED: fp.model.embed_tokens.weight.detach().half().contiguous()}
    for name, t in packed.items():
        if name.endswith(".kept_codes"):
            lin = name[: -len(".kept_codes")]
            in_f = meta["shapes"][f"{lin}.codes"][1] * (8 // bits)
            mask = unpack_mask(packed[f"{lin}.mask"], in_f)
            zp = packed[f"{lin}.zero_points"]
            codes = zp.repeat_interleave(in_f // zp.shape[1], 1).clone()
            codes[mask] = unpack_codes(t, bits, int(mask.sum()))[0]
            tensors[f"{lin}.codes"] = pack_codes(codes, bits)
        else:
            tensors[name] = t
    missing = set(meta["shapes"]) ^ set(tensors)
    if missing:
        raise ValueError(f"{prefix}: pack does not rebuild the checkpoint's tensors: {sorted(missing)[:5]}")
    for name, want in meta.get("tensor_sha256", {}).items():
        if _tensor_sha256(tensors[name]) != want:
            raise ValueError(f"rebuilt tensor {name} has another sha256 than the device's")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE))
    got = _sha256(out_dir / WEIGHTS_FILE)
    if "tensor_sha256" not in meta and got != meta["weights_sha256"]:  # packs made before per-tensor hashes
        raise ValueError(f"rebuilt {out_dir / WEIGHTS_FILE} has sha256 {got}, the device's was "
                         f"{meta['weights_sha256']}")
    (out_dir / SETTINGS_FILE).write_text(meta["settings_file"])
    if "config_file" in meta:
        (out_dir / "config.json").write_text(meta["config_file"])
    else:  # a pack made before it carried config.json: the source's, untied when the checkpoint quantised its head
        if json.loads(meta["settings_file"])["settings"].get("head_bits"):
            fp.config.tie_word_embeddings = False
        fp.config.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    if meta["report"] is not None:
        (out_dir / "report.json").write_text(json.dumps(meta["report"], indent=1))
    write_manifest(out_dir)
    print(f"rebuilt {out_dir}: every tensor identical to the device's ({WEIGHTS_FILE} sha256 {got[:16]}…, the "
          f"device's file {'the same' if got == meta['weights_sha256'] else 'written by another writer'})")
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("unpack",))
    ap.add_argument("prefix", type=Path, help="the pack's path without .meta.json / .partNN")
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default=None, help="source model (default: the one the pack names)")
    a = ap.parse_args(argv)
    if a.out.exists() and any(a.out.iterdir()):
        raise SystemExit(f"quality_artifact: {a.out} exists and is not empty; give a new folder")
    unpack(a.prefix, a.out, a.model)


if __name__ == "__main__":
    main()
