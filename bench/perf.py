"""Performance projection of the accllm engine: calibration on RTL cycles, Llama-2-7B on the U280, roofline.

    python bench/perf.py --calibrate      # simulate the RTL core, fit the cycle model, write sim/data/perf_calibration.json
    python bench/perf.py                  # projections -> bench/results/perf.json, roofline.png, perf_table.md

--calibrate Verilates the core behind its HLS blackbox wrapper (accllm.hw.rtl_native) for LANES/GROUP = 16/32,
8/32 and 32/64, runs random operations of fixed shapes through the wrapper's ap_ctrl_chain/FIFO ports (every
output checked against the golden core), fits ``cycles = a*beats + b*packets + c`` per call on the 16/32 fit
shapes only and reports the error on held-out shapes, on the two builds the fit never saw, and on every core call
of the bundled model's engine run with the RTL core linked into the HLS kernel (C/RTL co-simulation).

The projection uses that fit for the core and the stated assumptions of accllm.sim.perf.Engine for the rest.
The published figures it is compared with are quoted from DESIGN.md (AccLLM, arXiv 2505.03745, Table VII).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from accllm.sim import perf
from accllm.sim import boards
from accllm.hw import calibrate
from accllm.sim import perf_fit
from accllm.sim.perf_report import resources_or_error

HERE = Path(__file__).resolve().parent
README_SNIPPET = HERE / "results" / "perf_table.md"  # the table and calibration lines the README quotes

# Published reference points (decode, Llama-2-7B, Alveo U280), as quoted in DESIGN.md.
REFERENCES = [
    {"design": "AccLLM (W2A8KV4, 2:4, Λ)", "tokens_per_s": 164.0, "power_w": 33.0, "tokens_per_j": 4.96,
     "clock_mhz": 225, "source": "AccLLM, arXiv 2505.03745, Table VII (as quoted in DESIGN.md); cycle-accurate "
                                 "simulator validated against RTL"},
    {"design": "FlightLLM", "tokens_per_s": 55.0, "power_w": None, "tokens_per_j": None, "clock_mhz": None,
     "source": "FlightLLM (Zeng et al., FPGA 2024) on the U280, as quoted by AccLLM Table VII / DESIGN.md"},
]


def engine_samples(prompt: str = "def main(args):") -> list[dict]:
    """Every core call of the bundled compressed model's engine (C/RTL co-simulation) on ``prompt``."""
    from transformers import AutoTokenizer

    from accllm.hls.flow import export_and_compile

    ckpt = HERE.parent / "quant" / "bundled" / "tiny-llama-w2a8kv4"
    _, build = export_and_compile(ckpt, Path(tempfile.gettempdir()) / "accllm_perf_engine")
    return calibrate.measure_engine(build, AutoTokenizer.from_pretrained(ckpt).encode(prompt))


def _by_kind(errors: dict) -> dict:
    out = {}
    for s in errors["samples"]:
        k = out.setdefault(s["kind"], {"calls": 0, "max_abs_rel_error": 0.0, "cycles": 0, "predicted": 0.0})
        k["calls"] += 1
        k["cycles"] += s["cycles"]
        k["predicted"] += s["predicted"]
        k["max_abs_rel_error"] = max(k["max_abs_rel_error"], abs(s["rel_error"]))
    for k in out.values():
        k["total_rel_error"] = (k["predicted"] - k["cycles"]) / k["cycles"]
    return out


def run_calibration(out: Path) -> dict:
    steps = [("fit", perf_fit.FIT_CONFIG, perf_fit.FIT_SHAPES)] + [("held_out", cfg, shapes) for cfg, shapes in perf_fit.HELD_OUT.items()]
    measured = {"fit": [], "held_out": []}
    for i, (role, (lanes, group), shapes) in enumerate(tqdm(steps, desc="RTL calibration", unit="build")):
        measured[role] += calibrate.measure_rtl(lanes, group, shapes, seed=i)
    timing = perf_fit.fit_timing(measured["fit"])
    fit_err = perf_fit.timing_errors(timing, measured["fit"])
    held = perf_fit.timing_errors(timing, measured["held_out"])
    eng = perf_fit.timing_errors(timing, engine_samples())
    keys = ("max_abs_rel_error", "mean_abs_rel_error")
    rec = {"format": "accllm-perf-calibration-v2",
           "what": "cycles of one integer-core call (ap_start to ap_done of the HLS blackbox wrapper around the RTL "
                   "core) = per_beat*beats + per_packet*packets + per_op, least squares on Verilator cycle counts "
                   "with the FIFOs never empty or full",
           "fit": {"per_beat": timing.per_beat, "per_packet": timing.per_packet, "per_op": timing.per_op,
                   "fit_config": {"lanes": perf_fit.FIT_CONFIG[0], "group": perf_fit.FIT_CONFIG[1]}},
           "fit_error": {k: fit_err[k] for k in keys},
           "held_out_error": {k: held[k] for k in keys},
           "engine_error": {**{k: eng[k] for k in keys}, "calls": len(eng["samples"]), "by_kind": _by_kind(eng)},
           "fit_samples": measured["fit"], "held_out_samples": held["samples"],
           "engine_samples": eng["samples"],
           "date": time.strftime("%Y-%m-%d")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"fit: cycles = {timing.per_beat:.4f}*beats + {timing.per_packet:.4f}*packets + {timing.per_op:.3f}")
    print(f"fit shapes ({len(measured['fit'])}): max |error| {fit_err['max_abs_rel_error']:.2%}")
    print(f"held-out shapes ({len(held['samples'])}, incl. LANES/GROUP 8/32 and 32/64): "
          f"max |error| {held['max_abs_rel_error']:.2%}, mean {held['mean_abs_rel_error']:.2%}")
    for s in held["samples"]:
        print(f"  L{s['lanes']:<3d} G{s['group']:<3d} {s['kind']:6s} {str(s['dims']):22s} {s['cycles']:6d} cycles, "
              f"predicted {s['predicted']:8.1f} ({s['rel_error']:+.2%})")
    print(f"engine calls ({len(eng['samples'])}, the bundled model in C/RTL co-simulation): "
          f"max |error| {eng['max_abs_rel_error']:.2%}, mean {eng['mean_abs_rel_error']:.2%}")
    for kind, k in rec["engine_error"]["by_kind"].items():
        print(f"  {kind:6s} {k['calls']:5d} calls, {k['cycles']:9d} cycles, predicted {k['predicted']:11.1f} "
              f"({k['total_rel_error']:+.3%}; worst call {k['max_abs_rel_error']:.2%})")
    print(f"wrote {out}")
    return rec


def scenario(model: str, board: str, group: int, context: int, prompt: int, sinks: int, window: int,
             timing: perf_fit.CoreTiming, lanes: int = 16) -> dict:
    b = boards.get_board(board)
    shape = boards.load_model_shape(model)
    e = perf.size_engine(b, lanes=lanes, group=group, sinks=sinks, window=window, model=shape)
    pm = perf.PerfModel(shape, b, e, timing)
    dec, pre = pm.decode(context), pm.prefill(prompt)
    return {"model": model, "board": board, "clock_mhz": b.clock_mhz, "engine": asdict(e),
            "resources": resources_or_error(pm), "peak_ops_per_s": pm.peak_ops_per_s(),
            "bytes_per_cycle": pm.bytes_per_cycle, "decode": dec, "prefill": pre}


def roofline(scenarios: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x = np.logspace(-1, 4, 200)
    colors = {"u280": "C0", "zcu104": "C1", "kv260": "C2"}
    drawn = set()
    for s in scenarios:
        b = s["board"]
        bw = boards.get_board(b).mem_bandwidth_gbs * 1e9
        if b not in drawn:
            ax.loglog(x, np.minimum(s["peak_ops_per_s"], bw * x), color=colors[b], lw=1.2,
                      label=f"{b}: {bw / 1e9:.0f} GB/s, {s['peak_ops_per_s'] / 1e12:.2f} Top/s "
                            f"({s['engine']['cores']}x{s['engine']['lanes']} lanes)")
            port_bw = s["bytes_per_cycle"] / s["engine"]["mem_efficiency"] * s["clock_mhz"] * 1e6
            if port_bw < bw * 0.999:  # the kernel's memory ports are narrower than the memory
                ax.loglog(x, np.minimum(s["peak_ops_per_s"], port_bw * x), color=colors[b], lw=0.8, ls="--",
                          label=f"{b}: kernel ports {port_bw / 1e9:.1f} GB/s")
            drawn.add(b)
        for phase, marker in (("decode", "o"), ("prefill", "s")):
            p = s[phase]
            ax.loglog(p["ops_per_byte"], p["ops_per_s"], marker, color=colors[b], ms=6, mfc="none" if s["engine"]["group"] != 32 else colors[b])
            ax.annotate(f"{s['model']} G{s['engine']['group']} {phase}", (p["ops_per_byte"], p["ops_per_s"]),
                        fontsize=6.5, xytext=(4, -8), textcoords="offset points")
    ax.set_xlabel("operational intensity (ops per byte of external memory)")
    ax.set_ylabel("ops/s (2 per dense-equivalent multiply-accumulate)")
    ax.set_title("accllm engine roofline (projected; core cycles calibrated on RTL)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    lines = ["| design (Llama-2-7B, Alveo U280) | decode token/s | power W | token/J | bandwidth limit token/s | achieved / limit | source |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
        lines.append(f"| {r['design']} | {f(r['tokens_per_s'], '.0f')} | {f(r['power_w'], '.0f')} | "
                     f"{f(r['tokens_per_j'], '.2f')} | {f(r.get('limit'), '.0f')} | {f(r.get('ratio'), '.2f')} | {r['source']} |")
    return "\n".join(lines)


def project(out: Path, context: int, prompt: int) -> dict:
    timing, cal = perf_fit.load_calibration()
    runs = [("llama-2-7b", "u280", 32), ("llama-2-7b", "u280", 128), ("llama-2-7b", "zcu104", 32),
            ("llama-2-7b", "kv260", 32), ("bundled", "kv260", 32)]
    scen = []
    for model, board, group in tqdm(runs, desc="projections", unit="case"):
        sinks, window = (4, 1020) if model == "llama-2-7b" else (4, 124)
        ctx = context if model == "llama-2-7b" else 255
        scen.append(scenario(model, board, group, ctx, prompt if model == "llama-2-7b" else 64, sinks, window, timing))
    rows = []
    for s in scen[:2]:
        d = s["decode"]
        rows.append({"design": f"this design, projected (G={s['engine']['group']}, {s['engine']['cores']} cores x "
                               f"{s['engine']['lanes']} lanes, {s['clock_mhz']:.0f} MHz)",
                     "tokens_per_s": d["tokens_per_s"], "power_w": boards.get_board("u280").power_w,
                     "tokens_per_j": d.get("tokens_per_j"), "limit": d["bandwidth_limit_tokens_per_s"],
                     "ratio": d["achieved_over_limit"],
                     "source": f"bench/perf.py: {d['bytes_per_token'] / 1e9:.3f} GB/token, power assumed (see boards.json)"})
    for r in REFERENCES:
        limit = scen[1]["decode"]["bandwidth_limit_tokens_per_s"] if r["design"].startswith("AccLLM") else None
        rows.append({**r, "limit": limit, "ratio": r["tokens_per_s"] / limit if limit else None})
    result = {"calibration": {k: cal[k] for k in ("fit", "fit_error", "held_out_error")},
              "assumptions": "accllm.sim.perf.Engine defaults; cores sized by size_engine to the board's bandwidth",
              "context": context, "prompt": prompt, "scenarios": scen, "comparison": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    png = out.parent / "roofline.png"
    roofline(scen, png)
    md = [f"Projected decode of Llama-2-7B (2:4 + W2A8KV4, Λ attention with {scen[0]['engine']['sinks']} sinks + "
          f"{scen[0]['engine']['window']} window, context {context}) on an Alveo U280. Produced by `python bench/perf.py` "
          f"(core cycles fitted on RTL simulation, held-out error {cal['held_out_error']['max_abs_rel_error']:.1%}; "
          "linear bytes from the weight-stream layout, linear cycles fitted on Verilated engine runs; KV memory "
          "efficiency, non-linear unit and hand-off gaps are assumptions; power is assumed, not measured; "
          "the AccLLM 'bandwidth limit' column uses this model's G=128 bytes/token). No board has run this design.",
          "", table(rows), "", "![roofline](bench/results/roofline.png)", ""]
    README_SNIPPET.parent.mkdir(parents=True, exist_ok=True)
    README_SNIPPET.write_text("\n".join(md))
    print(table(rows))
    for s in scen:
        d = s["decode"]
        print(f"{s['model']:11s} {s['board']:7s} G{s['engine']['group']:<4d} cores {s['engine']['cores']:4d}: decode "
              f"{d['tokens_per_s']:8.1f} token/s, {d['bytes_per_token'] / 1e6:9.1f} MB/token, limit "
              f"{d['bandwidth_limit_tokens_per_s']:8.1f} token/s (ratio {d['achieved_over_limit']:.2f}); prefill "
              f"{s['prefill']['tokens_per_s']:8.1f} token/s"
              + ("" if d["fits_in_memory"] else f"  [does not fit: {d['footprint_bytes'] / 2**30:.2f} GiB > board memory]"))
    print(f"wrote {out}, {png} and {README_SNIPPET}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibrate", action="store_true", help="simulate the RTL core and refit the cycle model first")
    p.add_argument("--context", type=int, default=2048, help="tokens already in the stream at the decode step")
    p.add_argument("--prompt", type=int, default=512, help="prompt length for the prefill projection")
    p.add_argument("--out", type=Path, default=HERE / "results" / "perf.json")
    a = p.parse_args(argv)
    if a.calibrate:
        run_calibration(perf_fit.CALIBRATION_FILE)
    project(a.out, a.context, a.prompt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
