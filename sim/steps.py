"""Flow steps owned by sim/: the golden model against the compressed checkpoint, and the performance
projection (steps: see accllm.quant.steps)."""
from __future__ import annotations

import json
from dataclasses import asdict



# Bounds of the Brevitas fake-quant model against the golden model, teacher-forced (measured on the bundled
# checkpoints: agreement >= 0.99, max relative logit error <= 0.03; tests/test_golden_model.py). A deep model's
# float32 Brevitas result moves with the summation order alone (a 1-ulp change flips a dynamic A8 / KV4 rounding,
# and 30 layers grow it: SmolLM2 W4, 0.18 between one prefill chunk and token-by-token decoding), so the logit
# error may reach FLOOR_FACTOR x that self-disagreement of the same run where it exceeds the fixed bound.
MIN_AGREEMENT = 0.9
MAX_REL_LOGIT_ERROR = 0.05
FLOOR_FACTOR = 2.0


def rel_logit_bound(floor_rel: float) -> float:
    return max(MAX_REL_LOGIT_ERROR, FLOOR_FACTOR * floor_rel)


def verify_compress(ctx) -> dict:
    """The golden model (the engine's integer arithmetic) against the Brevitas fake-quant model it was made
    from, teacher-forced on the flow's prompts (both fed Brevitas's greedy continuation): token agreement rate
    and logit error within the bounds above (the logit bound widened to twice Brevitas's own self-disagreement
    where that is larger); a disagreement must be a near-tie (Brevitas top-2 gap within twice the logit error).
    Greedy tokens of two float paths may part at a near-tie on one CPU and not another."""
    from tqdm import tqdm

    from accllm.quant.checkpoint import load_compressed
    from accllm.sim.golden import GoldenModel, teacher_forced_vs_brevitas

    model, tok, _ = load_compressed(ctx.artifacts["compress"])
    golden = GoldenModel.load(ctx.artifacts["compress"])
    prompts = [tok.encode(p) for p in ctx.flow.evaluation.prompts]
    with tqdm(total=len(prompts), desc="[compress] golden vs Brevitas, teacher-forced", unit="prompt",
              leave=False) as bar:
        r = teacher_forced_vs_brevitas(model, golden, prompts, ctx.flow.evaluation.max_new_tokens, bar)
    bound = rel_logit_bound(r["floor_rel"])
    result = {"tokens_agree": f"{r['agree']}/{r['steps']}", "agreement": round(r["agreement"], 4),
              "min_agreement": MIN_AGREEMENT, "max_rel_logit_error": r["max_rel"],
              "brevitas_self_rel_error": r["floor_rel"], "bound_rel_logit_error": bound,
              "max_logit_diff": r["max_abs"]}
    if (r["agreement"] < MIN_AGREEMENT or r["max_rel"] >= bound
            or r["max_disagree_margin"] > 2 * r["max_abs"]):
        raise AssertionError(f"the golden model differs from the Brevitas model beyond the bounds: {result}, "
                             f"largest Brevitas top-2 gap where they disagree {r['max_disagree_margin']:.3g}")
    return result


def perf(ctx):
    """Projected decode/prefill figures of this model on the flow's board: linear bytes from the weight-stream
    layout, linear cycles from the engine fit, QK/PV from the core calibration; the engine's device use from the
    Yosys results (accllm.sim.resources), refusing a configuration that does not fit the board."""
    from accllm.sim.boards import get_board, load_model_shape
    from accllm.sim.perf import PerfModel, size_engine
    from accllm.sim.perf_fit import load_calibration

    e, board = ctx.flow.engine, get_board(ctx.flow.board)
    shape = load_model_shape(str(ctx.artifacts["compress"]))
    engine = size_engine(board, lanes=e.lanes, group=e.group_size, sparse=ctx.flow.compression.sparsity == "2:4",
                         sinks=e.sinks, window=e.window, model=shape, weight_bits=ctx.flow.compression.weight_bits)
    pm = PerfModel(shape, board, engine, load_calibration()[0])
    context = 4 * (e.sinks + e.window)
    result = {"board": board.name, "engine": asdict(engine), "decode": pm.decode(context), "prefill": pm.prefill(128),
              "layout": {"bits_per_weight": pm.weight_bits_per_weight(), "channels": pm.channels,
                         "format": pm.fmt.to_json()}, "engine_timing": pm.engine_timing.to_json(),
              "resources": pm.resources()}
    path = ctx.step_dir("perf") / "perf.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    return path, {"decode_tokens_per_s": result["decode"].get("tokens_per_s")}
