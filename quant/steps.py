"""Flow step owned by quant/: compress the flow's model. A step takes the build context (``ctx.flow``,
``ctx.artifacts``, ``ctx.step_dir``; see accllm.host.flow) and returns ``(artifact path, metrics)``."""
from __future__ import annotations


def compress(ctx):
    from accllm.quant.pipeline import compress_to_checkpoint

    out = ctx.step_dir("compress")
    if ctx.flow.checkpoint is not None:
        return out, take_checkpoint(ctx.flow.checkpoint, out)
    report = compress_to_checkpoint(ctx.flow.model, ctx.flow.compression.settings(), out,
                                    eval_tokens=ctx.flow.evaluation.perplexity_tokens, progress=False)
    keys = ("perplexity_fp", "perplexity_compressed", "weight_bytes_per_token", "kv_bytes_per_token")
    return out, {k: report[k] for k in keys if k in report}


def take_checkpoint(src, out) -> dict:
    """The flow's ``checkpoint:`` as the compress step's artifact: a verified copy in ``out`` (the source is never
    changed); a checkpoint without a quantised LM head (written before heads were quantised) gets the engine's 4-bit
    RTN head in the copy, as ``accllm quantize-head`` would give it."""
    import json
    import shutil
    from pathlib import Path

    from accllm.quant.checkpoint import SETTINGS_FILE, verify_checkpoint
    from accllm.quant.head import quantize_checkpoint_head
    from accllm.quant.quantize import CompressionSettings

    src = Path(src)
    verify_checkpoint(src)
    shutil.copytree(src, out, dirs_exist_ok=True)
    made = CompressionSettings.from_json(json.loads((out / SETTINGS_FILE).read_text())["settings"])
    metrics = {"checkpoint": str(src.resolve()), "made_with": {k: v for k, v in made.to_json().items() if v is not None}}
    if not made.head_bits:
        rec = quantize_checkpoint_head(out, 4, "rtn", command=f"accllm build (checkpoint {src}): quantize-head "
                                                               "--bits 4 --method rtn", progress=False)
        metrics["head_quantised"] = f"{rec['bits']}-bit {rec['method']} from {rec['source']}"
    return metrics
