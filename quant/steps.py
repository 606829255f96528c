"""Flow step owned by quant/: compress the flow's model. A step takes the build context (``ctx.flow``,
``ctx.artifacts``, ``ctx.step_dir``; see accllm.host.flow) and returns ``(artifact path, metrics)``."""
from __future__ import annotations


def compress(ctx):
    from accllm.quant.pipeline import compress_to_checkpoint

    out = ctx.step_dir("compress")
    report = compress_to_checkpoint(ctx.flow.model, ctx.flow.compression.settings(), out,
                                    eval_tokens=ctx.flow.evaluation.perplexity_tokens, progress=False)
    keys = ("perplexity_fp", "perplexity_compressed", "weight_bytes_per_token", "kv_bytes_per_token")
    return out, {k: report[k] for k in keys if k in report}
