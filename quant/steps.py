"""Flow step owned by quant/: compress the flow's model (see accllm.host.flow)."""
from __future__ import annotations

from accllm.host.flow import StepContext, StepResult


def compress(ctx: StepContext) -> StepResult:
    from accllm.quant.quantize import compress_to_checkpoint

    out = ctx.step_dir("compress")
    report = compress_to_checkpoint(ctx.flow.model, ctx.flow.compression.settings(), out,
                                    eval_tokens=ctx.flow.evaluation.perplexity_tokens, progress=False)
    keys = ("perplexity_fp", "perplexity_compressed", "weight_bytes_per_token", "kv_bytes_per_token")
    return StepResult(out, {k: report[k] for k in keys if k in report})


def verify_compress(ctx: StepContext) -> dict:
    """The golden model (the engine's integer arithmetic) against the Brevitas fake-quant model it was
    made from: greedy tokens on the flow's prompts and the largest logit difference before they part."""
    import torch

    from accllm.quant.checkpoint import load_compressed
    from accllm.sim.golden import GoldenModel, brevitas_generate

    model, tok, _ = load_compressed(ctx.artifacts["compress"])
    golden = GoldenModel.load(ctx.artifacts["compress"])
    n, same, err = ctx.flow.evaluation.max_new_tokens, 0, 0.0
    for prompt in ctx.flow.evaluation.prompts:
        ids = tok.encode(prompt)
        ref, ref_logits = brevitas_generate(model, ids, n)
        golden.reset()
        logits = [golden.step(t) for t in ids][-1]
        out = []
        for i, r in enumerate(ref):
            err = max(err, float((logits.float() - ref_logits[i]).abs().max()))
            t = int(torch.argmax(logits))
            out.append(t)
            if t != r:
                break
            logits = golden.step(t)
        same += out == ref
    return {"prompts_same_tokens": f"{same}/{len(ctx.flow.evaluation.prompts)}", "max_logit_diff": err}
