"""Compression quality of a real pretrained model (``python bench/quality.py --model smollm2 ...`` runs this).

    python bench/quality.py --model smollm2 --device cuda --stages ptq,distill,long --work W --out DIR
    python bench/quality.py --model smollm2 --stages report --runs DIR1,DIR2 --out bench/results  # merge + plot

A GPU run of every stage at the defaults takes longer than one 10-minute device call (GPTQ's calibration passes
through Brevitas' proxies and the distillation dominate), so the committed table merges several runs (``--runs``;
each row keeps its run index and is compared with that run's own FP row). ``--components`` picks component rows.

Texts (nothing of a "test" split is used for calibration or distillation):
  - held-out English: ``accllm.quant.corpus.ENGLISH_SPLITS["test"]`` (GPL-3, LGPL-3, Apache-2.0, MPL-2.0 from
    /usr/share/common-licenses); calibration / distillation English is the "train" list (GPL-2 and MPL-1.1,
    earlier versions of test texts, are used for nothing);
  - in-domain Python docs: the first ``--python-tokens`` of the corpus "test" split (``accllm.quant.corpus``);
  - data-free distillation text: sequences the float model samples itself from BOS (LLM-QAT).
Perplexity: sliding windows of ``--context`` tokens (stride half of it). SmolLM2's "FP" weights are the GGUF's
Q4_1 (Q8_0 embedding) values dequantised to float32: they were 4-bit before we see them.

Stages (each writes ``quality_<model>.<stage>.json`` into ``--out``; ``report`` merges them):
  ptq      FP; each component alone (Λ, 2:4 Wanda / SparseGPT, W2 RTN / GPTQ, W4 GPTQ, A8, KV4); then together,
           post-training: 2:4 + W2A8KV4 + Λ (AccLLM) and the fallback 2:4 + W4A8KV4 + Λ, saved under ``--work``
  speed    distillation steps/s and tokens/s: Brevitas in the loop (float32, batch 16, the earlier method)
           against the twin of ``accllm.quant.qat`` (bf16) at batch 16 and ``--batch``; kernel launches per step
  distill  the saved together-checkpoints (``--init ptq``) or the distilled ones (``--init distilled``, to go on)
           fine-tuned by distillation from the float model (KL on logits; half of each batch teacher generations,
           half "train" text), ``--distill-seconds`` each; saved to ``--work``/distilled_<key> (``--pack DIR``: the
           transport pack of ``bench/quality_artifact.py`` too), then scored; ``--monitor-every`` logs a
           perplexity curve of the twin (bf16) on the test texts, for the report only, never to choose anything
  evalckpt score ``--work``/distilled_<key> (e.g. rebuilt here from a pack) as ``distill`` does
  ablate   where a checkpoint's loss comes from (held-out English): the same weights with Λ, K/V 4-bit and A8
           switched off one at a time, then together (``--distill``, ``--init`` pick the checkpoints in ``--work``)
  long     Λ against full attention at 1x, 2x, 4x the Λ slots (window + sinks) and over the whole English
           test stream, past the trained context when the stream is longer

The W4 checkpoint of the committed table (device: one H200, the two distillations sharing it; the GGUF carried in
three pieces, brevitas/gguf as wheels)::

    Q="python bench/quality.py --model SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2 --device cuda --work W"
    $Q --stages ptq --components none --together w4 --out R1
    $Q --stages distill --distill w4 --lr 1e-4 --distill-seconds 900 --monitor-every 200 --pack OUT --out R2 &
    $Q --stages distill --distill w4 --learn-masks --tag _lm --lr 1e-4 --distill-seconds 900 --monitor-every 200 \
       --out R3 &
    python bench/quality_artifact.py unpack OUT/smollm2_w4 runs/smollm2_w4_distilled   # here
    python bench/quality.py --model smollm2 --device cpu --stages evalckpt --distill w4 --work runs/qwork --out R4
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from accllm.quant import attention as attn
from accllm.quant.corpus import ENGLISH_DIR, ENGLISH_SPLITS, english_documents, english_fingerprint, load_documents, \
    token_stream
from accllm.quant.evaluate import perplexity
from accllm.quant.model import load_model
from accllm.quant.pipeline import kv_bytes_per_token, weight_bytes_per_token
from accllm.quant.quantize import CompressionSettings, round_dense_to_fp16, train_stream
from accllm.quant.compress import compress

RESULTS = Path(__file__).parent / "results"
BASE = dict(group_size=32, prune_method="sparsegpt", calib_text="python+english", calib_samples=128, calib_seqlen=256,
            sinks=4, window=124)
OFF = dict(sparsity="none", weight_bits=None, act_bits=None, kv_bits=None, lambda_attention=False)
COMPONENTS = [
    ("Λ (S=4, W=124)", dict(lambda_attention=True)),
    ("2:4 Wanda", dict(sparsity="2:4", prune_method="wanda")),
    ("2:4 SparseGPT", dict(sparsity="2:4", prune_method="sparsegpt")),
    ("W2 g32 RTN", dict(weight_bits=2, weight_method="rtn")),
    ("W2 g32 GPTQ", dict(weight_bits=2, weight_method="gptq")),
    ("W4 g32 GPTQ", dict(weight_bits=4, weight_method="gptq")),
    ("A8", dict(act_bits=8)),
    ("KV4", dict(kv_bits=4)),
]
TOGETHER = {  # key -> (label, overrides); 2:4 ones on the SparseGPT 2:4 weights, all GPTQ
    "w2": ("2:4 + W2A8KV4 + Λ (AccLLM)", dict(sparsity="2:4", weight_bits=2, act_bits=8, kv_bits=4,
                                             lambda_attention=True)),
    "w4": ("2:4 + W4A8KV4 + Λ (fallback)", dict(sparsity="2:4", weight_bits=4, act_bits=8, kv_bits=4,
                                               lambda_attention=True)),
    # diagnostics: what distillation makes of 2:4 alone (the floor under every 2:4 row), and of the same
    # formats without 2:4 (the engine's dense mode)
    "s24": ("2:4 alone (float)", dict(sparsity="2:4")),
    "w4dense": ("dense W4A8KV4 + Λ", dict(weight_bits=4, act_bits=8, kv_bits=4, lambda_attention=True)),
}


def texts(tok, english_root, python_tokens, english_tokens=None):
    return {"english": token_stream(tok, english_documents("test", english_root))[:english_tokens],
            "python": token_stream(tok, load_documents("test"))[:python_tokens]}


def evaluate(model, txt, ctx):
    return {k: perplexity(model, ids, ctx, ctx // 2, progress=False)["perplexity"] for k, ids in txt.items()}


def checkpoint_rows(a, stage, rows):
    """Partial results after each row, so a run cut short by its time limit keeps what it measured."""
    (a.out / f"quality_{a.name}.{stage}.partial.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def settings(over):
    return CompressionSettings(**{**BASE, **OFF, **over})


def stage_ptq(a, fp, tok, txt, dev):
    rows = [{"config": "FP (Q4_1 GGUF dequantised)" if a.name.lower().startswith("smollm2") else "FP",
             **evaluate(copy.deepcopy(fp).to(dev), txt, a.context)}]
    print(rows[-1], flush=True)
    pruned = None
    for name, over in COMPONENTS:
        if a.components != "all" and name not in a.components.split(","):
            continue
        t0 = time.time()
        s = settings(over)
        model, masks = compress(copy.deepcopy(fp), tok, s, device=dev, progress=False)
        if name == "2:4 SparseGPT":
            pruned = (copy.deepcopy(model).cpu(), masks)
        rows.append({"config": name, **evaluate(model, txt, a.context), "settings": s.to_json(),
                     "seconds": time.time() - t0})
        print(rows[-1]["config"], {k: rows[-1][k] for k in txt}, f"{rows[-1]['seconds']:.0f} s", flush=True)
        checkpoint_rows(a, "ptq", rows)
        del model
    together = {k: v for k, v in TOGETHER.items() if k in a.together}
    if pruned is None and together:
        model, masks = compress(copy.deepcopy(fp), tok, settings(dict(sparsity="2:4")), device=dev, progress=False)
        pruned = (model.cpu(), masks)
    for key, (name, over) in together.items():
        t0 = time.time()
        s = settings(over)
        start, given = pruned if s.sparsity == "2:4" else (fp, None)
        model, masks = compress(copy.deepcopy(start), tok, s, device=dev, progress=False, masks=given)
        wb = weight_bytes_per_token(model, s)
        rows.append({"config": name + ", post-training", "key": key, **evaluate(model, txt, a.context),
                     "settings": s.to_json(), "weight_bytes_per_token": wb["total"], "weight_bytes": wb,
                     "kv_bytes_per_token": kv_bytes_per_token(model.config, s.kv_bits), "seconds": time.time() - t0})
        print(rows[-1]["config"], {k: rows[-1][k] for k in txt}, f"{rows[-1]['seconds']:.0f} s", flush=True)
        checkpoint_rows(a, "ptq", rows)
        from accllm.quant.checkpoint import save_compressed

        save_compressed(model.cpu(), tok, s, masks, a.work / f"ptq_{key}")
        del model
    return {"rows": rows}


def _lambda_contexts(model, ids, policy, factors=(1, 2, 4)):
    """Perplexity with windows of f x the Λ slots, under Λ and under full attention (at 1x they coincide)."""
    out = {}
    for f in factors:
        c = f * policy.slots
        for label, pol in (("Λ", policy), ("full", None)):
            attn.set_policy(model, pol)
            out[f"{label} @ {f}x ({c})"] = perplexity(model, ids, c, c // 2, progress=False)["perplexity"]
    attn.set_policy(model, policy)
    return out


def _masks(model):
    from accllm.quant.prune import decoder_linears

    return {n: m.sparse_mask.cpu() for n, m in decoder_linears(model).items() if hasattr(m, "sparse_mask")}


def _generations(a, teacher, tok):
    """The teacher's own samples from BOS (data-free distillation text), made once per work folder."""
    from accllm.quant.qat import teacher_generations

    path = a.work / f"generations_{a.generated}x{a.seqlen}{f'_seed{a.gen_seed}' if a.gen_seed else ''}.pt"
    if path.is_file():
        return torch.load(path)
    t0 = time.time()
    gen = teacher_generations(teacher, tok, a.generated, a.seqlen, seed=a.gen_seed, progress=False,
                              batch=a.gen_batch)
    torch.save(gen, path)
    print(f"{len(gen)} teacher generations of {a.seqlen} tokens in {time.time() - t0:.0f} s; sample: "
          f"{tok.decode(gen[0, :60])!r}", flush=True)
    return gen


def _distill_settings(s, a, steps, seconds, batch):
    s.qat_steps, s.qat_seconds, s.qat_lr, s.qat_batch, s.qat_generated, s.calib_seqlen = (
        steps, seconds, a.lr, batch, a.generated, a.seqlen)
    s.qat_learn_masks = a.learn_masks
    return s


def _distilled_dir(a, key):
    return a.work / f"distilled_{key}{a.tag}"


def _distilled_label(key, s):
    return TOGETHER[key][0] + " + distillation" + (" (learned 2:4 masks)" if s.qat_learn_masks else "")


def stage_speed(a, fp, tok, txt, dev):
    """Distillation steps/s: Brevitas in the loop (float32, batch 16: the earlier method) against the twin (bf16)
    at batch 16 and at ``--batch``; kernel launches per step from the profiler for both."""
    from accllm.quant.checkpoint import load_compressed
    from accllm.quant.qat import distill

    teacher = fp.to(dev).eval()
    gen = _generations(a, teacher, tok)
    stream = train_stream(tok, BASE["calib_text"])
    src = a.work / f"ptq_{a.distill[0]}"
    out = {"checkpoint": src.name, "runs": {}, "launches_per_step": {}}

    def run(twin, batch, steps, profile=False):
        student, _, s = load_compressed(src, device=dev)
        _distill_settings(s, a, steps, 0, batch)
        if not profile:
            distill(student, teacher, stream, s, _masks(student), dev, progress=False, generated=gen, twin=twin)
            return student.accllm_distill_stats
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda"
                                                        else [])
        with torch.profiler.profile(activities=acts) as prof:
            distill(student, teacher, stream, s, _masks(student), dev, progress=False, generated=gen, twin=twin)
        ka = prof.key_averages()
        launches = sum(e.count for e in ka if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        aten = sum(e.count for e in ka if e.key.startswith("aten::"))
        return {"kernel_launches": launches / steps, "aten_calls": aten / steps}, ka.table(
            sort_by="self_cpu_time_total", row_limit=14)

    for label, twin, batch, steps in (("brevitas fp32, batch 16 (before)", False, 16, a.speed_steps_old),
                                      ("twin bf16, batch 16", True, 16, a.speed_steps),
                                      (f"twin bf16, batch {a.batch}", True, a.batch, a.speed_steps)):
        out["runs"][label] = run(twin, batch, steps)
        print(label, out["runs"][label], flush=True)
    for label, twin in (("brevitas", False), ("twin", True)):
        n, table = run(twin, 16, 2, profile=True)
        out["launches_per_step"][label] = n
        out[f"profile_{label}"] = table
        print(f"{label}: per step (batch 16) {n}\n{table}", flush=True)
    return out


def stage_distill(a, fp, tok, txt, dev):
    from accllm.quant.checkpoint import load_compressed, save_compressed
    from accllm.quant.qat import distill
    from accllm.quant.quantize import round_scales_to_fp16

    teacher = fp.to(dev).eval()
    gen = _generations(a, teacher, tok)
    rows = []
    for key in a.distill:
        name, over = TOGETHER[key]
        src = _distilled_dir(a, key) if a.init == "distilled" else a.work / f"ptq_{key}"
        prior = json.loads((src / "report.json").read_text()) if (src / "report.json").is_file() else {}
        student, _, s = load_compressed(src, device=dev)
        masks = _masks(student)
        before = evaluate(student, txt, a.context) if a.eval_before else None
        _distill_settings(s, a, 1_000_000, a.distill_seconds, a.batch)
        trend, done = list(prior.get("trend", [])), prior.get("steps_total", 0)

        def monitor(step, model):  # the twin in bf16 on the test texts: a curve to report, never used to choose
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                r = evaluate(model, txt, a.context)
            trend.append({"step": done + step, "call_seconds": time.time() - t0, **r})
            print(f"  {key} step {done + step}: twin bf16 english {r['english']:.2f} python {r['python']:.2f}",
                  flush=True)

        t0 = time.time()
        losses = distill(student, teacher, train_stream(tok, s.calib_text), s, masks, dev, progress=False,
                         generated=gen, twin=not a.no_twin, monitor=monitor, monitor_every=a.monitor_every,
                         train_scales=not a.freeze_scales)
        round_dense_to_fp16(student)
        round_scales_to_fp16(student, s.weight_bits)
        stats = student.accllm_distill_stats
        out = _distilled_dir(a, key)  # saved (and packed) before the evaluation, which a time limit may cut
        save_compressed(student.cpu(), tok, s, masks, out, report={
            "steps_total": done + len(losses), "trend": trend, "distill_stats": stats,
            "distill_seconds_total": prior.get("distill_seconds_total", 0) + stats["seconds"]})
        if a.pack:
            from quality_artifact import pack

            pack(out, a.pack / f"{a.name}_{key}{a.tag}", a.name)
        student.to(dev)
        row = {"config": _distilled_label(key, s), "key": key, **evaluate(student, txt, a.context),
               "before_distillation": before, "settings": s.to_json(), "steps": len(losses),
               "steps_total": done + len(losses), "tokens_total": (done + len(losses)) * a.batch * a.seqlen,
               "distill_seconds": stats["seconds"], "distill_stats": stats, "lr": a.lr, "gen_seed": a.gen_seed,
               "scales_trained": not a.freeze_scales,
               "distill_seconds_total": prior.get("distill_seconds_total", 0) + stats["seconds"],
               "kl_first": losses[0], "kl_last_50": sum(losses[-50:]) / len(losses[-50:]), "trend": trend,
               "weight_bytes_per_token": weight_bytes_per_token(student, s)["total"],
               "kv_bytes_per_token": kv_bytes_per_token(student.config, s.kv_bits),
               "lambda_contexts_english": _lambda_contexts(student, txt["english"], s.policy())
               if a.lambda_contexts else None}
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("settings", "trend")}, flush=True)
        checkpoint_rows(a, "distill", rows)
        del student
    return {"rows": rows}


@torch.no_grad()
def stage_evalckpt(a, fp, tok, txt, dev):
    """Score the distilled checkpoints in ``--work`` (e.g. one carried back from the device and rebuilt with
    ``bench/quality_artifact.py unpack``) through Brevitas, as the distill stage does after training."""
    from accllm.quant.checkpoint import load_compressed

    rows = []
    for key in a.distill:
        src = _distilled_dir(a, key)
        rep = json.loads((src / "report.json").read_text())
        student, _, s = load_compressed(src, device=dev)
        rows.append({"config": _distilled_label(key, s), "key": key, **evaluate(student, txt, a.context),
                     "settings": s.to_json(), "steps_total": rep["steps_total"],
                     "tokens_total": rep["steps_total"] * s.qat_batch * s.calib_seqlen,
                     "distill_seconds_total": rep["distill_seconds_total"], "trend": rep["trend"],
                     "evaluated_on": str(dev), "weight_bytes_per_token": weight_bytes_per_token(student, s)["total"],
                     "kv_bytes_per_token": kv_bytes_per_token(student.config, s.kv_bits),
                     "lambda_contexts_english": _lambda_contexts(student, txt["english"], s.policy())
                     if a.lambda_contexts else None})
        print({k: v for k, v in rows[-1].items() if k not in ("settings", "trend")}, flush=True)
        checkpoint_rows(a, "distill", rows)
    return {"rows": rows}


def _ablations(policy):
    """(label, Λ policy or None, K 4-bit, V 4-bit, A8) of the breakdown: one component switched off at a time,
    then attention and activations off together, down to the compressed weights alone. A8 covers the linear
    layers' inputs and the attention's Q and P operands (int8, as the engine computes them)."""
    wide = attn.LambdaPolicy(policy.sinks, 2 * policy.slots - policy.sinks, policy.positions)
    return [("as compressed (Λ, KV4, A8)", policy, True, True, True),
            ("float K and V", policy, False, False, True),
            ("K 4-bit only", policy, True, False, True),
            ("V 4-bit only", policy, False, True, True),
            ("float activations (no A8)", policy, True, True, False),
            (f"Λ {wide.sinks} + {wide.window} (2x the slots)", wide, True, True, True),
            ("full attention", None, True, True, True),
            ("full attention, float K and V", None, False, False, True),
            ("full attention, float K, V and activations (the weights alone)", None, False, False, False)]


@torch.no_grad()
def stage_ablate(a, fp, tok, txt, dev):
    """Where a compressed checkpoint's loss comes from: the same weights scored with Λ, the K/V quantisers and the
    activation quantisers switched off one at a time (held-out English only; ``--distill`` picks the checkpoints
    in ``--work``, distilled or, with ``--init ptq``, post-training)."""
    from accllm.quant.checkpoint import load_compressed

    eng = {"english": txt["english"]}
    fp_ppl = evaluate(copy.deepcopy(fp).to(dev), eng, a.context)["english"]
    print(f"FP english {fp_ppl:.2f}", flush=True)
    out = {"fp_english": fp_ppl, "checkpoints": {}}
    for key in a.distill:
        src = _distilled_dir(a, key) if a.init == "distilled" else a.work / f"ptq_{key}"
        model, _, s = load_compressed(src, device=dev)
        sdpas = [m.sdpa for m in attn.attention_modules(model)]
        kept = [(d.k_quant, d.v_quant, d.q_quant, d.p_quant) for d in sdpas]
        linears = [m for m in model.modules() if getattr(m, "input_quant", None) is not None]
        rows = []
        for label, pol, k4, v4, a8 in tqdm(_ablations(s.policy()), desc=f"ablate {key}", disable=None):
            attn.set_policy(model, pol)
            for d, (k, v, q, p) in zip(sdpas, kept):
                d.k_quant, d.v_quant = (k if k4 else None), (v if v4 else None)
                d.q_quant, d.p_quant = (q if a8 else None), (p if a8 else None)
            for m in linears:
                m.input_quant.disable_quant = not a8
            t0 = time.time()
            ppl = evaluate(model, eng, a.context)["english"]
            rows.append({"variant": label, "lambda": None if pol is None else vars(pol), "k4": k4, "v4": v4,
                         "a8": a8, "english": ppl, "ratio_to_fp": ppl / fp_ppl, "seconds": time.time() - t0})
            print(f"  {key} {label}: {ppl:.2f} ({ppl / fp_ppl:.2f}x)", flush=True)
            checkpoint_rows(a, "ablate", rows)
        out["checkpoints"][key] = {"path": str(src), "settings": s.to_json(), "rows": rows}
        del model
    return out


@torch.no_grad()
def stage_long(a, fp, tok, txt, dev):
    policy = CompressionSettings(**BASE).policy()
    model = copy.deepcopy(fp).to(dev)
    attn.install(model, policy)
    out = {"policy": vars(policy), "context_factors_english": _lambda_contexts(model, txt["english"], policy),
           "context_factors_python": _lambda_contexts(model, txt["python"], policy)}
    ids = txt["english"]
    losses = {}
    for label, pol in (("full attention", None), (f"Λ S={policy.sinks} W={policy.window}", policy)):
        attn.set_policy(model, pol)
        lg = torch.cat([x.float() for _, x, _ in attn.stream_logits(model, ids, pol, chunk=512)])
        losses[label] = F.cross_entropy(lg[:-1], ids[1:].to(lg.device), reduction="none").cpu()
    trained = int(fp.config.max_position_embeddings)
    bucket = 1024
    out.update(stream_tokens=len(ids), trained_context=trained, bucket=bucket,
               bucketed_perplexity={k: [math.exp(float(v[i:i + bucket].mean()))
                                        for i in range(0, len(v) - bucket + 1, bucket)] for k, v in losses.items()},
               perplexity_beyond_trained_context={k: math.exp(float(v[trained:].mean())) if len(v) > trained else None
                                                  for k, v in losses.items()})
    print({k: out[k] for k in ("context_factors_english", "perplexity_beyond_trained_context")}, flush=True)
    return out


def _load_run(run: Path, name: str) -> dict:
    def first(*stems):
        for stem in stems:
            p = run / f"quality_{name}.{stem}.json"
            if p.is_file():
                return json.loads(p.read_text())
        return None

    ptq, distill = first("ptq", "ptq.partial"), first("distill", "distill.partial")
    speed = first("speed")
    ptq_rows = ptq["rows"] if isinstance(ptq, dict) else (ptq or [])
    distill_rows = distill["rows"] if isinstance(distill, dict) else (distill or [])
    return {"rows": ptq_rows + distill_rows, "long": first("long"), "speed": speed, "ablate": first("ablate"),
            "meta": ptq.get("meta") if isinstance(ptq, dict)
            else None, "texts": ptq.get("texts") if isinstance(ptq, dict) else None}


def _correct_weight_bytes(model, rows):
    """Runs before the fix in ``weight_bytes_per_token`` also counted Brevitas' scale / zero-point parameters as
    fp16 "other" weights (they are in the linears' bytes already): recompute "other" from the config (embedding,
    an untied head, norms in fp16) and keep the raw figure beside it."""
    from transformers import AutoConfig

    from accllm.quant.model import resolve_model

    src = resolve_model(model)
    cfg = AutoConfig.from_pretrained(src.folder, **src.hf_kwargs())
    other = 2 * (cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
                 + cfg.hidden_size * (2 * cfg.num_hidden_layers + 1))
    fixed = {}
    for r in rows:
        wb = r.get("weight_bytes")
        if wb and wb["other_fp16"] != other:
            r["weight_bytes_raw"] = dict(wb)
            extra = wb["other_fp16"] - other
            wb.update(other_fp16=other, total=wb["decoder_linears"] + other, fp16_total=wb["fp16_total"] - extra)
            fixed[r["weight_bytes_raw"]["total"]] = r["weight_bytes_per_token"] = wb["total"]
    for r in rows:  # rows that carry only the total (distilled rows)
        if "weight_bytes" not in r and r.get("weight_bytes_per_token") in fixed:
            r["weight_bytes_per_token_raw"] = r["weight_bytes_per_token"]
            r["weight_bytes_per_token"] = fixed[r["weight_bytes_per_token"]]


def engine_bytes_per_token(model) -> dict:
    """Bytes the engine reads per decoded token, from the weight-stream layout (``accllm.sim.weight_stream``):
    2:4 decoder linears with 2- or 4-bit codes (group 32, fp16 scales, 3-bit patterns), or dense 4-bit ones, plus
    the DENSE W4 LM head, the embedding row (fp16) and the KV4 bytes each token writes."""
    from transformers import AutoConfig

    from accllm.quant.model import resolve_model
    from accllm.sim import weight_stream as ws
    from accllm.sim.boards import ModelShape

    src = resolve_model(model)
    cfg = AutoConfig.from_pretrained(src.folder, **src.hf_kwargs())
    shape = ModelShape.from_config(cfg.to_dict(), str(model))
    out = {}
    for label, wb, sparse in (("2:4 W2A8KV4", 2, True), ("2:4 W4A8KV4", 4, True), ("dense W4A8KV4", 4, False)):
        fmt = ws.StreamFormat(wbits=wb, group=BASE["group_size"], lanes=16)
        dec = ws.layout(shape, fmt, 1, sparse=sparse)
        full = ws.layout(shape, fmt, 1, sparse=sparse, lm_head=True)
        out[label] = row = {"decoder_linears": dec.nbytes(), "lm_head_w4": full.nbytes() - dec.nbytes(),
                            "embedding_row_fp16": 2 * shape.hidden, "kv4_written": kv_bytes_per_token(cfg, 4),
                            "bits_per_decoder_weight": dec.bits_per_weight()}
        row["total"] = sum(v for k, v in row.items() if k != "bits_per_decoder_weight")
    out["w4_over_w2"] = out["2:4 W4A8KV4"]["total"] / out["2:4 W2A8KV4"]["total"]
    out["dense_w4_over_w2"] = out["dense W4A8KV4"]["total"] / out["2:4 W2A8KV4"]["total"]
    return out


def report(a):
    """Merge the stage files of one or more runs (``--runs``, in order; each run's rows are compared with that
    run's own FP row, since runs may score different numbers of Python tokens)."""
    runs = [Path(r) for r in (a.runs.split(",") if a.runs else [str(a.out)])]
    rows, long_ctx, texts, speed, ablation = [], None, None, None, None
    for i, run in enumerate(runs):
        d = _load_run(run, a.name)
        fp = next((r for r in d["rows"] if r["config"].startswith("FP")), None)
        for r in d["rows"]:
            if r is fp and any(x["config"] == r["config"] and (x["english"], x["python"]) == (r["english"], r["python"])
                                for x in rows):
                continue
            if fp is None:  # a distill-only run: compare with the FP of the run before it (same machine)
                fp = next(x for x in reversed(rows) if x["config"].startswith("FP"))
            rows.append({**r, "run": i, "ratio_to_fp": {k: r[k] / fp[k] for k in ("english", "python")}})
        long_ctx = d["long"] or long_ctx
        speed = d["speed"] or speed
        ablation = d["ablate"] or ablation
        texts = d["texts"] or texts
    _correct_weight_bytes(a.model, rows)
    result = {"model": a.name, "texts": texts, "context": a.context, "rows": rows, "long_context": long_ctx,
              "runs": [str(r) for r in runs], "distillation_speed": speed, "ablation": ablation,
              "engine_bytes_per_token": engine_bytes_per_token(a.model),
              "fp_note": "FP = the GGUF's Q4_1 weights (Q8_0 embedding) dequantised to float32" if
              a.name.lower().startswith("smollm2") else None}
    jpath = a.out / f"quality_{a.name}.json"
    jpath.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"wrote {jpath}")
    plot(result, a.out / f"quality_{a.name}.png")
    print(f"wrote {a.out / f'quality_{a.name}.png'}")
    for r in rows:
        print(f"run {r['run']} {r['config']:50s} english {r['english']:9.2f} ({r['ratio_to_fp']['english']:7.2f}x)  "
              f"python {r['python']:9.2f} ({r['ratio_to_fp']['python']:7.2f}x)")


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(21, 5.5))
    rows = result["rows"]
    ax = axes[0]
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["ratio_to_fp"]["english"] for r in rows], 0.4, label="held-out English")
    ax.barh([i + 0.2 for i in y], [r["ratio_to_fp"]["python"] for r in rows], 0.4, label="Python docs (test)")
    for x, c in ((1.5, "tab:green"), (3.0, "tab:red")):
        ax.axvline(x, color=c, ls="--", lw=1, label=f"{x}x target")
    ax.set_xscale("log")
    ax.set_xlim(0.8, 1e5)  # a diverged run would squash the rest (its numbers are in the JSON)
    ax.set_yticks(list(y), [f"{r['config']} [run {r.get('run', 0)}]" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("perplexity / FP perplexity (FP = Q4_1 GGUF dequantised)")
    ax.legend(fontsize=7)
    ax.set_title(f"{result['model']}: each component alone, then together")
    lc = result.get("long_context")
    ax = axes[1]
    if lc:
        b = lc["bucket"]
        for label, curve in lc["bucketed_perplexity"].items():
            ax.plot([(i + 0.5) * b for i in range(len(curve))], curve, marker=".", label=label)
        ax.axvline(lc["trained_context"], color="gray", ls=":", label="trained context")
        ax.set_xlabel("token position in the held-out English stream")
        ax.set_ylabel(f"perplexity (buckets of {b})")
        ax.set_title("float model: full attention vs Λ")
        ax.legend(fontsize=8)
    ax = axes[2]
    fp = next(r for r in reversed(rows) if r["config"].startswith("FP"))
    for r in rows:
        if r.get("trend"):
            steps = [t["step"] for t in r["trend"]]
            ax.plot(steps, [t["english"] / fp["english"] for t in r["trend"]], marker=".",
                    label=f"{r['key']} lr {str(r.get('lr', r['settings']['qat_lr']))[:16]} run {r['run']}"
                          f"{', learned masks' if r.get('settings', {}).get('qat_learn_masks') else ''} (English)")
    for x, c in ((1.5, "tab:green"), (3.0, "tab:red")):
        ax.axhline(x, color=c, ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_ylim(1, 1e3)
    ax.set_xlabel("distillation steps (64 x 256 tokens)")
    ax.set_ylabel("perplexity / FP (twin, bf16, monitoring only)")
    ax.set_title("distillation curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stages", default="ptq,distill,long")
    ap.add_argument("--context", type=int, default=512, help="perplexity window (stride half)")
    ap.add_argument("--python-tokens", type=int, default=16384)
    ap.add_argument("--english-tokens", type=int, default=None, help="cut the English test stream (smoke runs)")
    ap.add_argument("--english-dir", type=Path, default=ENGLISH_DIR)
    ap.add_argument("--calib-samples", type=int, default=BASE["calib_samples"])
    ap.add_argument("--components", default="all", help="'all' or a comma list of component rows to run")
    ap.add_argument("--distill", default="w4,w2", help="which together-configurations to distil")
    ap.add_argument("--together", default="w2,w4", help="ptq: which together-configurations to make")
    ap.add_argument("--distill-seconds", type=float, default=120)
    ap.add_argument("--generated", type=int, default=4096, help="teacher generations for distillation")
    ap.add_argument("--gen-seed", type=int, default=0, help="teacher generations: sampling seed (fresh text)")
    ap.add_argument("--gen-batch", type=int, default=1024, help="sequences sampled at once")
    ap.add_argument("--seqlen", type=int, default=256, help="distillation sequence length")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=64, help="distillation sequences per step")
    ap.add_argument("--no-twin", action="store_true", help="distil through Brevitas itself (slow reference)")
    ap.add_argument("--freeze-scales", action="store_true", help="distill: keep the weight group scales fixed")
    ap.add_argument("--learn-masks", action="store_true", help="distill: learn the 2:4 masks (SR-STE) too")
    ap.add_argument("--tag", default="", help="distill/evalckpt: suffix of the distilled folder and pack name")
    ap.add_argument("--init", choices=("ptq", "distilled"), default="ptq",
                    help="distill: start from the post-training checkpoint or continue the distilled one")
    ap.add_argument("--monitor-every", type=int, default=0, help="distill: twin perplexity curve every N steps")
    ap.add_argument("--speed-steps", type=int, default=20)
    ap.add_argument("--speed-steps-old", type=int, default=6)
    ap.add_argument("--pack", type=Path, default=None, help="distill: write the transport pack here")
    ap.add_argument("--eval-before", action="store_true", help="distill: measure the loaded checkpoint first")
    ap.add_argument("--lambda-contexts", action="store_true", help="distilled models: Λ vs full at 1x/2x/4x too")
    ap.add_argument("--work", type=Path, default=Path("runs/quality_work"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--runs", default=None, help="report: comma list of run folders to merge (default: --out)")
    ap.add_argument("--name", default=None, help="result file name part (default: the model's name or file stem)")
    a = ap.parse_args(argv)
    a.name = a.name or (a.model if "/" not in a.model and "." not in a.model else Path(a.model).stem.split(".")[0])
    a.distill = [k for k in a.distill.split(",") if k]
    a.together = [k for k in a.together.split(",") if k]
    BASE["calib_samples"] = a.calib_samples
    stages = a.stages.split(",")
    a.out.mkdir(parents=True, exist_ok=True)
    if stages == ["report"]:
        return report(a)
    a.work.mkdir(parents=True, exist_ok=True)
    from accllm.quant.quantize import pick_device

    dev = pick_device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    fp, tok = load_model(a.model)
    txt = texts(tok, a.english_dir, a.python_tokens, a.english_tokens)
    fns = {"ptq": stage_ptq, "speed": stage_speed, "distill": stage_distill, "evalckpt": stage_evalckpt,
           "long": stage_long, "ablate": stage_ablate}
    for stage in stages:
        t0 = time.time()
        res = fns[stage](a, fp, tok, txt, dev)
        res["meta"] = {"seconds": time.time() - t0, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                       else "cpu", "torch": torch.__version__, "argv": argv}
        res.update(context=a.context, texts={
            "english_test": list(ENGLISH_SPLITS["test"]), "english_train": list(ENGLISH_SPLITS["train"]),
            "english_sha256_16": english_fingerprint(a.english_dir), "english_test_tokens": len(txt["english"]),
            "python_test_tokens": len(txt["python"])})
        path = a.out / f"quality_{a.name}.{'distill' if stage == 'evalckpt' else stage}.json"
        path.write_text(json.dumps(res, indent=1, ensure_ascii=False))
        print(f"wrote {path} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
