"""RTL core benchmark: simulated cycles per operation, MAC utilisation per mode, Verilator speed, build time.

    python bench/rtl.py [--lanes 16] [--group 32] [--size 256] [--out bench/results/rtl.json]

Builds the core from scratch in a temporary directory (timed), then runs in Verilator via cocotb:
  steady    one large random operation per mode, no gaps, no back-pressure (steady-state utilisation)
  backpressure  the same operations with 30% output back-pressure and 10% input gaps
  real      operations from layer 1 of the bundled model (Brevitas W2 group codes, int8/KV4 activations)
Every output is checked bit-exactly against accllm.sim.golden_core (the run fails otherwise).
MAC utilisation = useful MACs / (LANES x cycles); useful MACs are N*K (dense), N*K/2 kept weights (2:4),
T*D (QK, PV) without padding. Cycles run from the first beat offered to the last output accepted.
Writes the JSON and a PNG next to it.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from accllm.hw import rtl_runner
from accllm.hw.rtl_ops import real_ops, steady_ops

HERE = Path(__file__).resolve().parent


def op_rows(report: dict) -> list[dict]:
    keys = ("name", "kind", "outputs", "beats", "cycles", "useful_macs", "utilization", "mismatches", "tlast_mismatches")
    return [{k: r[k] for k in keys} for r in report["ops"]]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [r["kind"] for r in result["steady"]["ops"]]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.27
    for i, (run, label) in enumerate([("steady", "steady state"), ("backpressure", "30% back-pressure, 10% gaps"),
                                      ("real", "bundled model layer")]):
        util = {r["kind"]: r["utilization"] for r in result[run]["ops"]}
        ax.bar([j + (i - 1) * width for j in range(len(kinds))], [util.get(k, 0) for k in kinds], width, label=label)
    ax.axhline(0.9, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("MAC utilisation")
    ax.set_title(f"accllm_core, LANES={result['lanes']}, GROUP={result['group']} (Verilator cycles)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lanes", type=int, default=rtl_runner.DEFAULT_LANES)
    p.add_argument("--group", type=int, default=rtl_runner.DEFAULT_GROUP)
    p.add_argument("--size", type=int, default=256, help="steady-state operation size (N = K for linears)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "rtl.json")
    a = p.parse_args(argv)

    result = {"lanes": a.lanes, "group": a.group, "verilator": rtl_runner.verilator_root().name,
              "host": platform.processor() or platform.machine()}
    steps = tqdm(total=4, desc="rtl bench", unit="step")
    with tempfile.TemporaryDirectory(prefix="accllm_rtl_bench_") as tmp:
        tmp = Path(tmp)
        steps.set_postfix_str("clean Verilator build")
        core = rtl_runner.build_core(a.lanes, a.group, build_dir=tmp / "build", clean=True)
        result["build_seconds"] = round(core.build_seconds, 2)
        steps.update()

        ops = steady_ops(a.lanes, a.group, size=a.size)
        runs = [("steady", ops, {}), ("backpressure", ops, {"backpressure": 0.3, "gaps": 0.1}),
                ("real", None, {"backpressure": 0.0, "gaps": 0.0})]
        for name, run_ops, settings in runs:
            steps.set_postfix_str(name)
            if run_ops is None:
                run_ops = real_ops(None, layer=1, group=a.group, linears=("self_attn.q_proj", "mlp.down_proj"))
            t0 = time.perf_counter()
            rep = rtl_runner.run_job(core, run_ops, work_dir=tmp / name, seed=1, **settings)
            result[name] = {"settings": settings, "ops": op_rows(rep), "mismatches": rep["mismatches"],
                            "cycles": rep["cycles"], "sim_cycles_per_s": round(rep["sim_cycles_per_s"]),
                            "wall_seconds_incl_startup": round(time.perf_counter() - t0, 2)}
            steps.update()
    steps.close()
    total_cycles = sum(result[r]["cycles"] for r in ("steady", "backpressure", "real"))
    result["sim_cycles_per_s"] = round(total_cycles / sum(
        result[r]["cycles"] / max(result[r]["sim_cycles_per_s"], 1) for r in ("steady", "backpressure", "real")))
    result["note"] = ("sim speed counts cycles while the cocotb testbench drives and checks streams (Python-bound); "
                      "wall_seconds_incl_startup adds simulator launch and golden-model imports")

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    png = a.out.with_suffix(".png")
    plot(result, png)
    for run in ("steady", "backpressure", "real"):
        for r in result[run]["ops"]:
            print(f"{run:12s} {r['name']:24s} {r['kind']:6s} {r['cycles']:7d} cycles  util {r['utilization']:.3f}  "
                  f"mismatches {r['mismatches']}")
    print(f"build {result['build_seconds']} s, simulation {result['sim_cycles_per_s']} cycles/s")
    print(f"wrote {a.out} and {png}")
    return 0 if all(result[r]["mismatches"] == 0 for r in ("steady", "backpressure", "real")) else 1


if __name__ == "__main__":
    sys.exit(main())
