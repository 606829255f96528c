"""Flow steps owned by hw/: the compiled engine with the RTL core (C/RTL co-simulation), and synthesis of the
RTL with Yosys for the flow's board. Steps: see accllm.quant.steps."""
from __future__ import annotations

import json


def rtlsim(ctx):
    """The compiled engine with the RTL core (the HLS kernel's blackbox calls run the Verilated
    ``accllm_core_hls_bb`` wrapper): greedy tokens on the flow's prompts and the core's measured cycles."""
    from accllm.hls.steps import run_prompts
    from accllm.hw import rtl_native

    sim = rtl_native.rtl_csim(ctx.artifacts["compile"])
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
    return path, {"tokens_per_s": round(n / seconds, 2), "core_cycles_per_token":
                  round(summary["core_cycles_per_token"]), "protocol_errors": stats["protocol_errors"]}


def verify_rtlsim(ctx) -> dict:
    """No blackbox protocol error, and the same tokens and integers as the golden model (as for csim)."""
    from accllm.hls.steps import check_with_golden
    from accllm.hw.rtl_native import rtl_csim

    r = json.loads(ctx.artifacts["rtlsim"].read_text())
    if r["protocol_errors"]:
        raise AssertionError(f"the RTL core broke the blackbox protocol {r['protocol_errors']} times")
    return {"protocol_errors": 0, **check_with_golden(ctx, r["runs"], rtl_csim, "rtl")}


def synth(ctx):
    """Yosys ``synth_xilinx -family xcup`` of the core at the flow's LANES/GROUP (and one-channel slices of the
    engine once its RTL exists), scaled to the board's configuration (one channel per memory port, cores sized
    to its bandwidth by the perf model) and checked against the board's capacity: a configuration that does not
    fit stops the flow with accllm.sim.resources.ResourceError. Yosys figures, not Vivado's."""
    from accllm.hw import synth as hw_synth
    from accllm.sim.boards import get_board
    from accllm.sim.perf import size_engine
    from accllm.sim.resources import board_config, fits

    e, board = ctx.flow.engine, get_board(ctx.flow.board)
    cores = size_engine(board, lanes=e.lanes, group=e.group_size,
                        sparse=ctx.flow.compression.sparsity == "2:4").cores
    config = board_config(board, cores, e.lanes, e.group_size)
    out = ctx.step_dir("synth")
    designs = [hw_synth.core_design(e.lanes, e.group_size),
               *hw_synth.engine_designs(e.lanes, e.group_size, (1, config.cores))]
    report = hw_synth.synth_report(designs, out / "work", progress=False)
    if report["errors"]:
        err = report["errors"][0]
        raise RuntimeError(f"synthesis of {err['design']} failed: {err['error']}")
    report["fit"] = fits(board, config, report)
    path = out / "synth.json"
    path.write_text(json.dumps(report, indent=1))
    used = report["fit"]["used"]
    return path, {"config": config.label, **{k: round(v) for k, v in used.items()},
                  "max_fraction": round(max(report["fit"]["fraction"].values()), 4), "basis": report["fit"]["basis"]}
