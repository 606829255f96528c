"""The middle of the flow on one compressed model, as plain functions with on-disk caching:
checkpoint -> QONNX export -> compiled build. Used by the tests, the benchmarks and (later) ``accllm demo``."""
from __future__ import annotations

from pathlib import Path


def quick_checkpoint(out_dir, calib_samples: int = 16, method: str = "rtn") -> Path:
    """Compress the bundled model (2:4, Λ, W2A8KV4; RTN by default: fast on CPU) unless ``out_dir`` holds one."""
    from accllm.quant.checkpoint import SETTINGS_FILE, save_compressed
    from accllm.quant.model import load_model
    from accllm.quant.quantize import CompressionSettings
    from accllm.quant.compress import compress

    out_dir = Path(out_dir)
    if (out_dir / SETTINGS_FILE).is_file():
        return out_dir
    model, tok = load_model(None)
    s = CompressionSettings(weight_method=method, calib_samples=calib_samples, calib_seqlen=128)
    model, masks = compress(model, tok, s, device="cpu", progress=False)
    save_compressed(model, tok, s, masks, out_dir)
    return out_dir


def export_and_compile(checkpoint, work_dir, target: str = "kv260", lanes: int = 16):
    """Export ``checkpoint`` to ``work_dir/onnx`` and compile it to ``work_dir/build``; returns both paths. An
    earlier result in ``work_dir`` is reused only if it was made from the same checkpoint files, settings and
    source (``work_dir/made_from.json``); otherwise it is made again."""
    import json
    import shutil

    from accllm.hls.compiler import compile_export
    from accllm.hls.export import MANIFEST, export_model
    from accllm.quant.checkpoint import load_compressed
    from accllm.quant.integrity import atomic_write, hash_files, source_hash

    work_dir = Path(work_dir)
    onnx_dir, build = work_dir / "onnx", work_dir / "build"
    stamp = work_dir / "made_from.json"
    made_from = json.dumps({"checkpoint": hash_files(checkpoint), "target": target, "lanes": lanes,
                            "source": source_hash(("quant", "sim", "hls"))}, sort_keys=True)
    if not stamp.is_file() or stamp.read_text() != made_from:
        shutil.rmtree(onnx_dir, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)
        stamp.unlink(missing_ok=True)
    if not (onnx_dir / MANIFEST).is_file():
        model, _, _ = load_compressed(checkpoint)
        export_model(model, onnx_dir, progress=False)
    if not (build / "program.bin").is_file():
        compile_export(onnx_dir, build, target, lanes, progress=False)
    atomic_write(stamp, made_from)
    return onnx_dir, build
