"""Flow steps owned by hw/: the compiled model on the RTL engine (C/RTL co-simulation), and synthesis of the
RTL with Yosys for the flow's board. Steps: see accllm.quant.steps."""
from __future__ import annotations

import json


def rtlsim(ctx):
    """C/RTL co-simulation on the engine: the HLS kernel's linears run on the Verilated ``accllm_engine`` reading
    the build's ``weights.engine`` from a memory model (latency >= 100 cycles, random stalls), QK/PV on the
    Verilated single core (accllm.hw.engine_native): greedy tokens on the flow's prompts, each prompt in prefill
    mode (the engine's block mode: T tokens per weight pass) then decoded token by token; engine cycles per
    token, weight words of the prompts in blocks against token by token."""
    import time

    from accllm.hls.steps import _prompt_ids
    from accllm.hw import engine_native, rtl_native

    build = ctx.artifacts["compile"]
    sim = engine_native.engine_csim(build)
    rtl_native.start_log(sim.lib)
    runs, phases, n, t0 = [], [], 0, time.perf_counter()
    for ids in _prompt_ids(ctx):
        out, ph = engine_native.prefill_generate(sim, ids, ctx.flow.evaluation.max_new_tokens)
        runs.append({"prompt_ids": ids, "output_ids": out})
        phases.append(ph)
        n += len(ids) + len(out) - 1
    seconds = time.perf_counter() - t0
    core_log = rtl_native.read_log(sim.lib)
    from accllm.sim.golden import GoldenModel

    exact = engine_native.prefill_trace_check(sim, GoldenModel.load(ctx.artifacts["compress"]), runs[0]["prompt_ids"])
    st, core_st = engine_native.stats(sim.lib), rtl_native.load_stats(sim.lib)
    errors = st["protocol_errors"] + core_st["protocol_errors"]
    cycles = sum(p["prefill_cycles"] + p["decode_cycles_per_token"] * p["decode_tokens"] for p in phases)
    words = engine_native.prefill_words_summary(phases)
    summary = {"runs": runs, "seconds": seconds, "tokens_fed": n, "memory": engine_native.DEFAULT_MEMORY,
               "engine": engine_native.engine_params(sim.engine_map, engine_native.build_block(build)),
               "engine_calls": st["calls"], "engine_cycles": cycles, "engine_words_read": st["words_read"],
               "engine_cycles_per_token": cycles / n, "prefill": phases, "prefill_words": words,
               "prefill_trace_vs_golden_first_prompt": exact,
               "core_qk_pv": {"calls": len(core_log), "cycles_per_token": sum(r["cycles"] for r in core_log) / n,
                              "by_mode": rtl_native.log_by_mode(core_log)},
               "protocol_errors": errors}
    path = ctx.step_dir("rtlsim") / "rtlsim.json"
    path.write_text(json.dumps(summary, indent=1))
    return path, {"tokens_per_s": round(n / seconds, 2), "engine_cycles_per_token": round(cycles / n),
                  "prefill_words_over_token_by_token": words["prefill_over_token_by_token"],
                  "protocol_errors": errors}


def verify_rtlsim(ctx) -> dict:
    """No protocol error (engine AXI / stream rules, core blackbox), and the same tokens and integers as the
    golden model (as for csim)."""
    from accllm.hls.steps import check_with_golden
    from accllm.hw.engine_native import engine_csim

    r = json.loads(ctx.artifacts["rtlsim"].read_text())
    if r["protocol_errors"]:
        raise AssertionError(f"the RTL engine or core broke its protocol {r['protocol_errors']} times")
    pre = r["prefill_trace_vs_golden_first_prompt"]
    if pre["integer_mismatches"]:
        raise AssertionError(f"prefill on the RTL engine: {pre['integer_mismatches']} of {pre['integers_compared']} "
                             "integers differ from the golden model's prefill")
    return {"protocol_errors": 0, "prefill_integer_mismatches": 0,
            **check_with_golden(ctx, r["runs"], engine_csim, "engine")}


def synth(ctx):
    """Yosys ``synth_xilinx -family xcup`` of the core at the flow's LANES/GROUP (and one-channel slices of the
    engine once its RTL exists), scaled to the board's configuration (one channel per memory port, cores sized
    to its bandwidth by the perf model) and checked against the board's capacity: a configuration that does not
    fit stops the flow with accllm.sim.resources.ResourceError. Yosys figures, not Vivado's."""
    from accllm.hw import synth as hw_synth
    from accllm.sim.boards import get_board, load_model_shape
    from accllm.sim.perf import size_engine
    from accllm.sim.resources import board_config, fits, k_max_for

    e, board = ctx.flow.engine, get_board(ctx.flow.board)
    shape = load_model_shape(ctx.flow.model)
    cores = size_engine(board, lanes=e.lanes, group=e.group_size,
                        sparse=ctx.flow.compression.sparsity == "2:4", model=shape).cores
    k_max = k_max_for(shape, e.sinks + e.window)
    config = board_config(board, cores, e.lanes, e.group_size, k_max)
    out = ctx.step_dir("synth")
    designs = [hw_synth.core_design(e.lanes, e.group_size), *hw_synth.slice_designs(config)]
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
