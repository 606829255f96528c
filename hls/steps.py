"""Flow steps owned by hls/: export, compile, csim (steps: see accllm.quant.steps)."""
from __future__ import annotations

import json
import time


def export(ctx):
    from accllm.hls.export import export_checkpoint

    out, layers = export_checkpoint(ctx.artifacts["compress"], ctx.step_dir("export"), progress=False)
    return out, {"layers": layers}


def verify_export(ctx) -> dict:
    """Every exported layer run by the qonnx executor against the torch layer on fresh inputs."""
    import onnx

    from accllm.hls.export import onnx_vs_torch
    from accllm.quant.checkpoint import load_compressed

    from tqdm import tqdm

    model, _, _ = load_compressed(ctx.artifacts["compress"])
    worst = 0.0
    for layer in tqdm(range(model.config.num_hidden_layers), desc="[export] qonnx executor vs torch", unit="layer",
                      leave=False):
        onnx.checker.check_model(str(ctx.artifacts["export"] / f"layer{layer:02d}.onnx"))
        err, scale = onnx_vs_torch(ctx.artifacts["export"], model, layer)
        worst = max(worst, err / max(scale, 1.0))
    # One quantiser rounding flipped by float differences is ~1e-2 of the output scale; more is a bug.
    if worst >= 2e-2:
        raise AssertionError(f"ONNX execution differs from torch by {worst:.3g} of the output scale")
    return {"onnx_checker": "passed", "max_rel_error_vs_torch": worst}


def compile(ctx):  # noqa: A001 - the step's name
    from accllm.hls.compiler import compile_export

    r = compile_export(ctx.artifacts["export"], ctx.step_dir("compile"), ctx.flow.board, ctx.flow.engine.lanes,
                       progress=False)
    return r.out_dir, {"instructions": r.instructions, "blob_bytes": r.blob_bytes, "seconds": round(r.seconds, 2)}


def verify_compile(ctx) -> dict:
    """The program and blob read back with their checksums and belong together; the HLS project's files match
    the build's files.sha256."""
    from accllm.hls import program as prog
    from accllm.hls.csim import verify_project

    d = ctx.artifacts["compile"]
    _, instrs, _, _, _ = prog.read_compiled(d)
    verify_project(d / "hls")
    return {"program_instructions": len(instrs), "checksums": "ok"}


def _prompt_ids(ctx) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ctx.artifacts["compress"])
    return [tok.encode(p) for p in ctx.flow.evaluation.prompts]


def run_prompts(ctx, sim=None):
    """Greedy tokens of the compiled engine (``sim``, default a C-simulation) on the flow's prompts:
    (its runs, seconds, tokens fed)."""
    from accllm.hls.csim import CSim

    sim = sim or CSim(ctx.artifacts["compile"])
    runs, t0, n = [], time.perf_counter(), 0
    for ids in _prompt_ids(ctx):
        out = sim.generate(ids, ctx.flow.evaluation.max_new_tokens)
        runs.append({"prompt_ids": ids, "output_ids": out})
        n += len(ids) + len(out)
    return runs, time.perf_counter() - t0, n


def csim(ctx):
    """Greedy tokens of the C-simulation on the flow's prompts."""
    runs, seconds, n = run_prompts(ctx)
    path = ctx.step_dir("csim") / "csim.json"
    path.write_text(json.dumps({"runs": runs, "seconds": seconds}, indent=1))
    return path, {"tokens_per_s": round(n / seconds, 2)}


def check_with_golden(ctx, runs: list[dict], make_sim=None, core: str = "c") -> dict:
    """Same greedy tokens as the golden model on every prompt, and the integer trace of the first prompt
    bit-exact on every layer; raises naming the difference. ``make_sim(build)`` opens the engine (default the
    C-simulation with the core's C model)."""
    from accllm.hls.csim import CSim, compare_with_golden
    from accllm.sim.golden import GoldenModel

    from tqdm import tqdm

    golden = GoldenModel.load(ctx.artifacts["compress"])
    same = sum(golden.generate(r["prompt_ids"], len(r["output_ids"])) == r["output_ids"]
               for r in tqdm(runs, desc=f"golden model on the prompts (core: {core})", unit="prompt", leave=False))
    first = runs[0]
    exact = compare_with_golden(golden, (make_sim or CSim)(ctx.artifacts["compile"]),
                                first["prompt_ids"] + first["output_ids"])
    result = {"prompts_same_tokens": f"{same}/{len(runs)}", **exact}
    if same != len(runs) or exact["integer_mismatches"]:
        raise AssertionError(f"the engine (integer core: {core}) differs from the golden model: {result}")
    return result


def verify_csim(ctx) -> dict:
    return check_with_golden(ctx, json.loads(ctx.artifacts["csim"].read_text())["runs"])
