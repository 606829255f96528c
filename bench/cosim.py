"""C/RTL co-simulation of the bundled compressed model on the engine: the HLS kernel with every linear running on
the Verilated multi-channel ``accllm_engine`` (reading the build's ``weights.engine`` from a memory model with read
latency and random ARREADY / RVALID / TREADY stalls) and QK/PV on the Verilated single core
(accllm.hw.engine_native). Each prompt runs in prefill mode (the engine's block mode: T prompt tokens per weight
pass, T the build's prefill block), then decodes token by token. Tokens against the C-simulation and the golden
model (both token by token), the integer trace of every layer against the golden model (decode, and the first
prompt in prefill against the golden model's prefill), protocol errors, engine weight words of the prompts in
blocks against token by token, engine cycles per token, and the engine perf model's prediction of the same
linears (accllm.sim.perf_engine, fitted on bench/results/engine_small.json) on a stall-free run.

    python bench/cosim.py [--prompts 5] [--new 12] [--latency 120] [--stall 10] [--out bench/results/cosim.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from flow_fixtures import BUNDLED_COMPRESSED, PROMPTS  # noqa: E402


def predicted_cycles(log: list[dict], blob_map: dict, calibration: Path) -> dict:
    """The engine perf model's cycles for the logged linear calls, against the measured ones."""
    from accllm.sim import perf_engine as pe
    from accllm.sim import weight_stream as ws

    calib = json.loads(calibration.read_text())
    t = pe.fit_timing(calib["simulated"]["operations"], calib["memory_model"]["beats_per_cycle_peak"],
                      f"{calibration.name} ({calib['model']} on {calib['board']})")
    from dataclasses import replace

    fmt = ws.StreamFormat(**blob_map["format"])
    pred = sum(pe.op_cycles(*pe.channel_work(r["mode"], replace(fmt, wbits=r["wbits"]), r["rows"], r["k"],
                                             blob_map["channels"]), 1.0, t, r["nt"]) for r in log)
    meas = sum(r["cycles"] for r in log)
    return {"timing": t.to_json(), "measured_cycles": meas, "predicted_cycles": pred, "rel_error": (pred - meas) / meas}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--new", type=int, default=12)
    ap.add_argument("--latency", type=int, default=120, help="memory read latency in engine cycles")
    ap.add_argument("--stall", type=int, default=10, help="percent of cycles ARREADY, RVALID and TREADY drop")
    ap.add_argument("--calibration", type=Path, default=HERE / "results" / "engine_small.json")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cosim.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from accllm.hls.csim import CSim, compare_with_golden
    from accllm.hls.flow import export_and_compile
    from accllm.hw import engine_native, rtl_native
    from accllm.sim.golden import GoldenModel

    _, build = export_and_compile(BUNDLED_COMPRESSED, Path(tempfile.gettempdir()) / "accllm_bench_cosim")
    tok = AutoTokenizer.from_pretrained(BUNDLED_COMPRESSED)
    memory = {"latency": a.latency, "ar_stall": a.stall, "r_stall": a.stall, "out_stall": a.stall, "seed": 1}
    t = time.perf_counter()
    eng = engine_native.engine_csim(build, memory, verbose=True)
    t_build = time.perf_counter() - t
    csim, golden = CSim(build), GoldenModel.load(BUNDLED_COMPRESSED)
    rows, t_eng, t_c, fed, phases, core_log = [], 0.0, 0.0, 0, [], []
    for p in tqdm(PROMPTS[: a.prompts], desc="prompts"):
        ids = tok.encode(p)
        rtl_native.start_log(eng.lib)
        t = time.perf_counter(); r, ph = engine_native.prefill_generate(eng, ids, a.new); t_eng += time.perf_counter() - t
        core_log += rtl_native.read_log(eng.lib)
        phases.append(ph)
        t = time.perf_counter(); c = csim.generate(ids, a.new); t_c += time.perf_counter() - t
        g = golden.generate(ids, a.new)
        fed += len(ids) + len(r) - 1
        rows.append({"prompt": p, "engine_ids": r, "same_as_csim": r == c, "same_as_golden": r == g, **ph})
    first = tok.encode(PROMPTS[0]) + rows[0]["engine_ids"]
    exact = compare_with_golden(golden, eng, first)
    exact_prefill = engine_native.prefill_trace_check(eng, golden, tok.encode(PROMPTS[0]))
    words = engine_native.prefill_words_summary(phases)
    st, core_st = engine_native.stats(eng.lib), rtl_native.load_stats(eng.lib)
    # timing against the perf model: the same linears once more with an ideal memory (no stalls)
    engine_native.load_image(eng.lib, build, {"latency": a.latency, "ar_stall": 0, "r_stall": 0, "out_stall": 0})
    engine_native.start_log(eng.lib)
    eng.generate(tok.encode(PROMPTS[0]), 2)
    ideal = predicted_cycles(engine_native.read_log(eng.lib), eng.engine_map, a.calibration)
    cycles = sum(p["prefill_cycles"] + p["decode_cycles_per_token"] * p["decode_tokens"] for p in phases)
    res = {"model": str(BUNDLED_COMPRESSED.name), "prompts": a.prompts, "new_tokens": a.new, "tokens_fed": fed,
           "engine": engine_native.engine_params(eng.engine_map, eng.prefill_block), "memory": memory,
           "library_build_s": t_build,
           "engine_cosim_tokens_per_s": fed / t_eng, "csim_tokens_per_s": fed / t_c,
           "same_tokens_as_csim": sum(r["same_as_csim"] for r in rows),
           "same_tokens_as_golden": sum(r["same_as_golden"] for r in rows), "trace_vs_golden_first_prompt": exact,
           "prefill_trace_vs_golden_first_prompt": exact_prefill, "prefill_block": eng.prefill_block,
           "prefill_words": words,
           "protocol_errors": {"engine": st["protocol_errors"], "core_qk_pv": core_st["protocol_errors"]},
           "engine_linear_calls_with_checks": st["calls"], "engine_cycles_per_token": cycles / fed,
           "engine_words_per_token": sum(p["prefill_words"] + p["decode_words_per_token"] * p["decode_tokens"]
                                         for p in phases) / fed,
           "core_qk_pv_cycles_per_token": sum(r["cycles"] for r in core_log) / fed,
           "core_qk_pv_by_mode": rtl_native.log_by_mode(core_log),
           "perf_engine_vs_measured_no_stalls": ideal, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"engine co-sim: {res['engine_cosim_tokens_per_s']:.1f} token/s (C model {res['csim_tokens_per_s']:.1f}); "
          f"tokens = C-sim on {res['same_tokens_as_csim']}/{a.prompts}, = golden on {res['same_tokens_as_golden']}/"
          f"{a.prompts}; trace vs golden: {exact['integer_mismatches']} mismatches of {exact['integers_compared']}; "
          f"protocol errors {res['protocol_errors']}")
    print(f"prefill in blocks of T = {eng.prefill_block}: {words['words_per_block']:.0f} weight words per block, "
          f"{words['words_per_token_decode']:.0f} per token in decode; prompts {words['prefill_words']} words in "
          f"{words['blocks']} blocks vs {words['token_by_token_words']:.0f} token by token "
          f"({words['prefill_over_token_by_token']:.3f}x); prefill trace vs golden: "
          f"{exact_prefill['integer_mismatches']} mismatches of {exact_prefill['integers_compared']}")
    print(f"engine {res['engine']}: {res['engine_cycles_per_token']:.0f} cycles per token (latency {a.latency}, "
          f"{a.stall}% stalls); perf model vs measured without stalls {ideal['rel_error']:+.2%}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
