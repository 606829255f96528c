"""Benchmark of the middle of the flow: export and compile time, and C-simulation tokens/s beside the golden
model's (and the Brevitas fake-quant model's) on the same prompts, with the agreement checks.

    python bench/compile.py [--checkpoint DIR] [--prompts 20] [--new 20] [--out bench/results/compile.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from flow_fixtures import PROMPTS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="compressed checkpoint (default: compress the bundled model, RTN)")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compile.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from accllm.hls.compiler import compile_export
    from accllm.hls.csim import CSim, build_library
    from accllm.hls.export import export_model
    from accllm.hls.flow import quick_checkpoint
    from accllm.quant.checkpoint import load_compressed
    from accllm.sim.golden import GoldenModel, brevitas_generate, teacher_forced_vs_brevitas

    work = Path(tempfile.mkdtemp(prefix="accllm_bench_"))
    ckpt = a.checkpoint or quick_checkpoint(work / "ckpt")
    model, tok, settings = load_compressed(ckpt)
    t = time.perf_counter(); export_model(model, work / "onnx"); t_export = time.perf_counter() - t
    r = compile_export(work / "onnx", work / "build")
    t = time.perf_counter()
    lib = build_library(r.hls_dir)
    lib.unlink()  # time a cold g++ build
    lib = build_library(r.hls_dir)
    t_gxx = time.perf_counter() - t
    golden, csim = GoldenModel.load(ckpt), CSim(r.out_dir)
    rows, tg, tc, tb, ntok = [], 0.0, 0.0, 0.0, 0
    for p in tqdm(PROMPTS[: a.prompts], desc="prompts"):
        ids = tok.encode(p)
        t = time.perf_counter(); ref, ref_logits = brevitas_generate(model, ids, a.new); tb += time.perf_counter() - t
        t = time.perf_counter(); g = golden.generate(ids, a.new); tg += time.perf_counter() - t
        t = time.perf_counter(); c = csim.generate(ids, a.new); tc += time.perf_counter() - t
        # Logit error per step while the two token streams still agree (after a divergence the contexts differ).
        golden.reset()
        for x in ids:
            lg = golden.step(x)
        err = rel = 0.0
        for i, x in enumerate(ref):
            e = float((lg - ref_logits[i]).abs().max())
            err, rel = max(err, e), max(rel, e / float(ref_logits[i].abs().max()))
            if g[i] != x or i + 1 == len(ref):
                break
            lg = golden.step(x)
        ntok += len(ids) + a.new
        rows.append({"prompt": p, "golden_eq_brevitas": g == ref, "csim_eq_golden": c == g,
                     "logit_max_abs_err_vs_brevitas": err, "logit_max_rel_err_vs_brevitas": rel})
    # The comparison the tests bound: both float paths fed the same context at every step (teacher forcing).
    tf = teacher_forced_vs_brevitas(model, golden, [tok.encode(p) for p in PROMPTS[: a.prompts]], a.new)
    res = {
        "machine": platform.processor() or platform.machine(), "torch_threads": 1,
        "golden_vs_brevitas_teacher_forced": tf,
        "checkpoint": str(ckpt), "settings": settings.to_json(),
        "export_seconds": t_export, "compile_seconds": r.seconds, "gxx_build_seconds": t_gxx,
        "instructions": r.instructions, "blob_payload_bytes": r.blob_bytes,
        "tokens_per_prompt": a.new, "prompts": len(rows), "tokens_processed": ntok,
        "csim_tokens_per_s": ntok / tc, "golden_tokens_per_s": ntok / tg, "brevitas_tokens_per_s": ntok / tb,
        "golden_eq_brevitas_prompts": sum(r_["golden_eq_brevitas"] for r_ in rows),
        "csim_eq_golden_prompts": sum(r_["csim_eq_golden"] for r_ in rows),
        "logit_max_abs_err_vs_brevitas": max(r_["logit_max_abs_err_vs_brevitas"] for r_ in rows),
        "logit_max_rel_err_vs_brevitas": max(r_["logit_max_rel_err_vs_brevitas"] for r_ in rows),
        "per_prompt": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "per_prompt"}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
