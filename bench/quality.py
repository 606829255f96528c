"""Compression quality of the bundled model (or any local Llama): ablation, long context, KV-cache bytes.

    python bench/quality.py [--model bundled] [--tokens 8192] [--long 4096] [--qat-checkpoint DIR]

Writes bench/results/quality.json and bench/results/quality.png:
  1. ablation on the held-out "test" split (sliding windows at the trained context, stride half of it):
     FP, then cumulatively +2:4, +W2 (RTN), +W2 (GPTQ), +A8, +KV4, +Λ; Λ alone on the float model; and
     the committed QAT-distilled checkpoint (all together) when present;
  2. long context: per-position loss over streams of ``--long`` tokens (>= 16x the trained context),
     full attention (one forward) against Λ (streamed through the constant-size cache) with both
     position modes;
  3. KV-cache bytes against sequence length for fp16 / 4-bit, full / Λ, with the Λ cache's slot count
     measured from the streaming cache.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from accllm.quant import attention as attn
from accllm.quant.corpus import load_documents, token_stream
from accllm.quant.evaluate import perplexity
from accllm.quant.model import load_model, trained_context
from accllm.quant.pipeline import kv_cache_bytes, weight_bytes_per_token
from accllm.quant.quantize import CompressionSettings
from accllm.quant.compress import compress

RESULTS = Path(__file__).parent / "results"
DEFAULT_QAT = Path(__file__).resolve().parents[1] / "quant" / "bundled" / "tiny-llama-w2a8kv4"

# name, settings overrides (cumulative ablation of AccLLM's methods)
ABLATION = [
    ("+2:4", dict(sparsity="2:4", weight_bits=None, act_bits=None, kv_bits=None, lambda_attention=False)),
    ("+W2 (RTN)", dict(sparsity="2:4", weight_method="rtn", act_bits=None, kv_bits=None, lambda_attention=False)),
    ("+W2 (GPTQ)", dict(sparsity="2:4", weight_method="gptq", act_bits=None, kv_bits=None, lambda_attention=False)),
    ("+A8", dict(sparsity="2:4", weight_method="gptq", kv_bits=None, lambda_attention=False)),
    ("+KV4", dict(sparsity="2:4", weight_method="gptq", lambda_attention=False)),
    ("+Λ (all together)", dict(sparsity="2:4", weight_method="gptq")),
]
# GPTQ runs on float activations (use_quant_activations=False), so its weights do not depend on A8,
# KV4 or Λ: later rows reuse the "+W2 (GPTQ)" weights and quantiser parameters instead of re-running it.


def _weight_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(".weight") or k.endswith("_impl.value")}


def ablation(model_dir, test_ids, ctx, calib_samples, qat_dir):
    rows = []
    model, tok = load_model(model_dir)
    fp = perplexity(model, test_ids, ctx, ctx // 2, progress=False)["perplexity"]
    rows.append({"config": "FP", "perplexity": fp})
    print(f"FP perplexity {fp:.3f}", flush=True)
    attn.install(model, CompressionSettings().policy())
    lam = perplexity(model, test_ids, ctx, ctx // 2, progress=False)["perplexity"]
    rows.append({"config": "Λ only (float)", "perplexity": lam})
    gptq_state = None
    for name, over in tqdm(ABLATION, desc="ablation"):
        t0 = time.time()
        model, tok = load_model(model_dir)
        s = CompressionSettings(calib_samples=calib_samples, **over)
        reuse = gptq_state is not None and s.weight_method == "gptq"
        run = CompressionSettings(**{**s.to_json(), "weight_method": "rtn"}) if reuse else s
        model, _ = compress(model, tok, run, device="cpu", progress=False)
        if reuse:
            model.load_state_dict(gptq_state, strict=False)
        elif s.weight_bits and s.weight_method == "gptq":
            gptq_state = _weight_state(model)
        ppl = perplexity(model, test_ids, ctx, ctx // 2, progress=False)["perplexity"]
        rows.append({"config": name, "perplexity": ppl, "settings": s.to_json(),
                     "weight_bytes_per_token": weight_bytes_per_token(model, s)["total"], "seconds": time.time() - t0})
        print(f"{name}: perplexity {ppl:.3f} ({ppl / fp:.2f}x FP)", flush=True)
    if qat_dir is not None and Path(qat_dir).is_dir():
        from accllm.quant.checkpoint import load_compressed

        model, _, s = load_compressed(qat_dir)
        ppl = perplexity(model, test_ids, ctx, ctx // 2, progress=False)["perplexity"]
        rows.append({"config": "all together + QAT distill (checkpoint)", "perplexity": ppl,
                     "settings": s.to_json(), "checkpoint": str(qat_dir)})
        print(f"all together + QAT: perplexity {ppl:.3f} ({ppl / fp:.2f}x FP)", flush=True)
    for r in rows:
        r["ratio_to_fp"] = r["perplexity"] / fp
    return rows


@torch.no_grad()
def position_losses(model_dir, streams, policy_list, chunk, compressed_dir=None):
    """Mean per-position NLL [len] over ``streams`` for full attention (None) and each Λ policy, and
    for the compressed checkpoint under its own Λ policy when ``compressed_dir`` is given."""
    float_model, _ = load_model(model_dir)
    attn.install(float_model, None)
    runs = [(label, policy, float_model) for label, policy in policy_list]
    if compressed_dir is not None and Path(compressed_dir).is_dir():
        from accllm.quant.checkpoint import load_compressed

        cmodel, _, cs = load_compressed(compressed_dir)
        runs.append(("compressed 2:4+W2A8KV4+Λ (QAT checkpoint)", cs.policy(), cmodel))
    out = {}
    total = len(streams) * len(streams[0]) * len(runs)
    bar = tqdm(total=total, desc="long context")
    for label, policy, model in runs:
        acc = torch.zeros(len(streams[0]) - 1)
        for ids in streams:
            if policy is None:
                logits = model(input_ids=ids[None]).logits[0]
                bar.update(len(ids))
            else:
                attn.set_policy(model, policy)
                logits = torch.cat([lg for _, lg, _ in attn.stream_logits(model, ids, policy, chunk, bar)])
                attn.set_policy(model, None)
            acc += F.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")
        out[label] = (acc / len(streams)).tolist()
    bar.close()
    return out


def bucketed(losses, bucket):
    n = len(losses) // bucket
    return [math.exp(sum(losses[i * bucket:(i + 1) * bucket]) / bucket) for i in range(n)]


def kv_curves(config, policy, lengths):
    curves = {}
    for kv_bits, kv_name in ((None, "fp16"), (4, "4-bit")):
        for pol, pol_name in ((None, "full"), (policy, "Λ")):
            curves[f"{kv_name} {pol_name}"] = [kv_cache_bytes(config, n, kv_bits, pol) for n in lengths]
    return curves


@torch.no_grad()
def measured_lambda_slots(model_dir, policy, n_tokens):
    model, tok = load_model(model_dir)
    attn.install(model, policy)
    ids = torch.randint(3, len(tok), (n_tokens,))
    slots = []
    for start, _, cache in attn.stream_logits(model, ids, policy, chunk=policy.window):
        slots.append((start + policy.window, cache.layers[0].keys.shape[2]))
    return slots


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ab = result["ablation"]
    ax = axes[0]
    names = [r["config"] for r in ab]
    ax.barh(range(len(ab)), [r["perplexity"] for r in ab], color="tab:blue")
    ax.axvline(ab[0]["perplexity"] * 1.5, color="tab:red", ls="--", label="1.5x FP")
    ax.set_yticks(range(len(ab)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test perplexity")
    ax.set_title("ablation (cumulative)")
    ax.legend(fontsize=8)

    lc = result["long_context"]
    ax = axes[1]
    b = lc["bucket"]
    for label, curve in lc["bucketed_perplexity"].items():
        xs = [(i + 0.5) * b for i in range(len(curve))]
        ax.plot(xs, curve, marker=".", label=label)
    ax.axvline(lc["trained_context"], color="gray", ls=":", label="trained context")
    ax.set_xlabel("token position")
    ax.set_ylabel(f"perplexity (buckets of {b})")
    ax.set_yscale("log")
    ax.set_title("long context")
    ax.legend(fontsize=8)

    kv = result["kv_cache"]
    ax = axes[2]
    for label, ys in kv["bytes"].items():
        ax.plot(kv["lengths"], [y / 1024 for y in ys], label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("KV cache (KiB)")
    ax.set_title("KV-cache bytes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="bundled")
    if pre.parse_known_args(argv)[0].model != "bundled":
        from quality_real import main as real_model_main  # a real pretrained model: bench/quality_real.py

        return real_model_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--tokens", type=int, default=8192, help="test tokens for the ablation")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--long", type=int, default=4096, help="stream length for the long-context curve")
    ap.add_argument("--streams", type=int, default=2, help="long streams averaged")
    ap.add_argument("--qat-checkpoint", type=Path, default=DEFAULT_QAT)
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t_start = time.time()

    model, tok = load_model(args.model)
    ctx = trained_context(model.config)
    config = model.config
    test_ids = token_stream(tok, load_documents("test"))
    result = {"model": args.model, "trained_context": ctx, "test_tokens": min(args.tokens, len(test_ids))}
    defaults = CompressionSettings()
    policy = defaults.policy()

    if not args.skip_ablation:
        result["ablation"] = ablation(args.model, test_ids[: args.tokens], ctx, args.calib_samples, args.qat_checkpoint)

    if args.long < 16 * ctx:
        print(f"note: --long {args.long} is under 16x the trained context ({16 * ctx})")
    n = args.long
    streams = [test_ids[i * n:(i + 1) * n] for i in range(args.streams) if (i + 1) * n <= len(test_ids)]
    policies = [("full attention", None),
                (f"Λ S={policy.sinks} W={policy.window}, cache positions", policy),
                (f"Λ S={policy.sinks} W={policy.window}, absolute positions",
                 attn.LambdaPolicy(policy.sinks, policy.window, "absolute"))]
    losses = position_losses(args.model, streams, policies, chunk=ctx, compressed_dir=args.qat_checkpoint)
    bucket = ctx
    result["long_context"] = {
        "stream_tokens": n, "streams": len(streams), "trained_context": ctx, "bucket": bucket,
        "bucketed_perplexity": {k: bucketed(v, bucket) for k, v in losses.items()},
        "perplexity_beyond_trained_context": {k: math.exp(sum(v[ctx:]) / len(v[ctx:])) for k, v in losses.items()},
    }
    for k, v in result["long_context"]["perplexity_beyond_trained_context"].items():
        print(f"long context, positions >= {ctx}: {k}: perplexity {v:.3f}")

    lengths = [2 ** i for i in range(4, 17)]
    slots = measured_lambda_slots(args.model, policy, 8 * policy.slots)
    result["kv_cache"] = {"lengths": lengths, "bytes": kv_curves(config, policy, lengths),
                          "lambda_slots_measured": slots, "policy": vars(policy)}
    assert all(s == policy.slots for _, s in slots), "Λ cache grew"

    result["wall_seconds"] = time.time() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    jpath, ppath = args.out / "quality.json", args.out / "quality.png"
    jpath.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    if "ablation" in result:
        plot(result, ppath)
        print(f"wrote {ppath}")
    print(f"wrote {jpath}")


if __name__ == "__main__":
    main()
