"""Flow steps owned by sim/: the compiled engine with the RTL core (C/RTL co-simulation), and the
performance projection (see accllm.host.flow)."""
from __future__ import annotations

import json
from dataclasses import asdict

from accllm.host.flow import StepContext, StepResult


def rtlsim(ctx: StepContext) -> StepResult:
    """The compiled engine with the RTL core (the HLS kernel's blackbox calls run the Verilated
    ``accllm_core_hls_bb`` wrapper): greedy tokens on the flow's prompts and the core's measured cycles."""
    from accllm.hls.csim import CSim
    from accllm.hls.steps import run_prompts
    from accllm.sim import rtl_native

    sim = CSim(ctx.artifacts["compile"], core="rtl")
    rtl_native.start_log(sim.lib)
    runs, seconds, n = run_prompts(ctx, sim)
    log = rtl_native.read_log(sim.lib)
    stats = rtl_native.load_stats(sim.lib)
    summary = {"runs": runs, "seconds": seconds, "tokens_fed": n, "core_calls": len(log),
               "core_cycles": sum(r["cycles"] for r in log), "core_beats": sum(r["beats"] for r in log),
               "core_cycles_per_token": sum(r["cycles"] for r in log) / n, "by_mode": rtl_native.log_by_mode(log),
               "protocol_errors": stats["protocol_errors"]}
    path = ctx.step_dir("rtlsim") / "rtlsim.json"
    path.write_text(json.dumps(summary, indent=1))
    return StepResult(path, {"tokens_per_s": round(n / seconds, 2), "core_cycles_per_token":
                             round(summary["core_cycles_per_token"]), "protocol_errors": stats["protocol_errors"]})


def verify_rtlsim(ctx: StepContext) -> dict:
    """No blackbox protocol error, and the same tokens and integers as the golden model (as for csim)."""
    from accllm.hls.steps import check_with_golden

    r = json.loads(ctx.artifacts["rtlsim"].read_text())
    if r["protocol_errors"]:
        raise AssertionError(f"the RTL core broke the blackbox protocol {r['protocol_errors']} times")
    return {"protocol_errors": 0, **check_with_golden(ctx, r["runs"], core="rtl")}


def perf(ctx: StepContext) -> StepResult:
    """Projected decode/prefill figures of this model on the flow's board (core cycles calibrated on RTL)."""
    from accllm.sim.perf import PerfModel, get_board, load_calibration, load_model_shape, size_engine

    e, board = ctx.flow.engine, get_board(ctx.flow.board)
    shape = load_model_shape(str(ctx.artifacts["compress"]))
    engine = size_engine(board, lanes=e.lanes, group=e.group_size, sparse=ctx.flow.compression.sparsity == "2:4",
                         sinks=e.sinks, window=e.window)
    pm = PerfModel(shape, board, engine, load_calibration()[0])
    context = 4 * (e.sinks + e.window)
    result = {"board": board.name, "engine": asdict(engine), "decode": pm.decode(context), "prefill": pm.prefill(128),
              "resources_estimate": pm.resources()}
    path = ctx.step_dir("perf") / "perf.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    return StepResult(path, {"decode_tokens_per_s": result["decode"].get("tokens_per_s")})
