"""C/RTL co-simulation of the whole engine: the HLS kernel with its integer-core calls running the Verilated RTL
core behind the blackbox wrapper, on the bundled compressed model. Tokens against the C-simulation (C model of
the core) and the golden model, integer trace on every layer, core cycles per token by mode, and the
performance model's prediction of the same calls.

    python bench/cosim.py [--prompts 5] [--new 12] [--out bench/results/cosim.json]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--new", type=int, default=12)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cosim.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from accllm.hls.csim import CSim, compare_with_golden
    from accllm.hls.flow import export_and_compile
    from accllm.hw import rtl_native
    from accllm.hw.rtl_native import rtl_csim
    from accllm.sim import perf_fit
    from accllm.sim.golden import GoldenModel

    _, build = export_and_compile(BUNDLED_COMPRESSED, Path(tempfile.gettempdir()) / "accllm_bench_cosim")
    tok = AutoTokenizer.from_pretrained(BUNDLED_COMPRESSED)
    t = time.perf_counter()
    rtl = rtl_csim(build)
    t_build = time.perf_counter() - t
    csim, golden = CSim(build), GoldenModel.load(BUNDLED_COMPRESSED)
    timing, _ = perf_fit.load_calibration()
    rows, t_rtl, t_c, fed = [], 0.0, 0.0, 0
    log = []
    for p in tqdm(PROMPTS[: a.prompts], desc="prompts"):
        ids = tok.encode(p)
        rtl_native.start_log(rtl.lib)
        t = time.perf_counter(); r = rtl.generate(ids, a.new); t_rtl += time.perf_counter() - t
        log += rtl_native.read_log(rtl.lib)
        t = time.perf_counter(); c = csim.generate(ids, a.new); t_c += time.perf_counter() - t
        g = golden.generate(ids, a.new)
        fed += len(ids) + len(r) - 1  # greedy() feeds the prompt, then every generated token but the last
        rows.append({"prompt": p, "rtl_ids": r, "same_as_csim": r == c, "same_as_golden": r == g})
    first = tok.encode(PROMPTS[0]) + rows[0]["rtl_ids"]
    exact = compare_with_golden(golden, rtl, first)
    stats = rtl_native.load_stats(rtl.lib)
    by_mode = rtl_native.log_by_mode(log)
    for m in by_mode.values():  # the fit is linear, so a mode's sums predict its total
        m["predicted"] = timing.per_beat * m["beats"] + timing.per_packet * m["packets"] + timing.per_op * m["calls"]
    cycles = sum(m["cycles"] for m in by_mode.values())
    res = {"model": str(BUNDLED_COMPRESSED.name), "prompts": a.prompts, "new_tokens": a.new, "tokens_fed": fed,
           "library_build_s": t_build, "rtl_tokens_per_s": fed / t_rtl, "csim_tokens_per_s": fed / t_c,
           "same_tokens_as_csim": sum(r["same_as_csim"] for r in rows), "same_tokens_as_golden":
           sum(r["same_as_golden"] for r in rows), "trace_vs_golden_first_prompt": exact,
           "protocol_errors": stats["protocol_errors"], "core_cycles_per_token": cycles / fed,
           "by_mode": {k: {**v, "cycles_per_token": v["cycles"] / fed,
                           "model_rel_error": (v["predicted"] - v["cycles"]) / v["cycles"]} for k, v in by_mode.items()},
           "rows": rows, "date": time.strftime("%Y-%m-%d")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"RTL core in the engine: {res['rtl_tokens_per_s']:.1f} token/s (C model {res['csim_tokens_per_s']:.1f}); "
          f"tokens = C-sim on {res['same_tokens_as_csim']}/{a.prompts}, = golden on {res['same_tokens_as_golden']}/{a.prompts}; "
          f"trace vs golden: {exact['integer_mismatches']} mismatches of {exact['integers_compared']}; "
          f"protocol errors {stats['protocol_errors']}")
    print(f"core cycles per token {res['core_cycles_per_token']:.0f}: " + ", ".join(
        f"{k} {v['cycles_per_token']:.0f} (model {v['model_rel_error']:+.2%})" for k, v in res["by_mode"].items()))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
