"""Resources and clock of the engine against its block size T (prefill: activation vectors per weight pass).

    python bench/engine_block.py [--blocks 1 4 8 16] [--cores 2] [--no-ecp5] [--out bench/results/engine_block.json]

One-channel slices of ``accllm_engine`` (hw/rtl) at Llama-2-7B's longest reduction (K_MAX 11008), 16 lanes,
group 32, 128-bit words, decoding W2 and W4 codes (WBITS 4): Yosys ``synth_xilinx -family xcup`` for LUT / FF /
block RAM / DSP, and nextpnr-ecp5 place and route (LFE5U-85F, another family) for a post-route Fmax, per T. One
more point at T = 1 with WBITS 2 shows what per-operation W4 decoding costs. ``--before REV`` also places and
routes the engine RTL of git revision REV (default HEAD; read with ``git show``, the work tree is not touched) at
T = 1 for the Fmax before this RTL. Yosys / nextpnr figures, not Vivado's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from accllm.hw import synth
from accllm.hw.rtl_runner import RTL_DIR
from accllm.sim.resources import ENGINE_TOP

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "engine_block.json"
KEYS = ("lut", "ff", "bram36", "uram", "dsp")


def slice_params(t: int, cores: int, wbits: int = 4) -> dict:
    return {"CHANNELS": 1, "CORES": cores, "LANES": 16, "GROUP": 32, "W": 128, "K_MAX": 11008, "WBITS": wbits, "T": t}


def rtl_of_revision(rev: str, dest: Path) -> tuple[Path, ...]:
    """The engine's SystemVerilog files as they are in git revision ``rev``, copied to ``dest``."""
    root = RTL_DIR.parents[1]
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "hw/rtl/"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        if n.endswith(".sv"):
            text = subprocess.run(["git", "show", f"{rev}:{n}"], cwd=root, check=True, capture_output=True).stdout
            (dest / Path(n).name).write_bytes(text)
            out.append(dest / Path(n).name)
    return tuple(sorted(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--no-ecp5", action="store_true")
    ap.add_argument("--before", default="HEAD", help="git revision whose engine RTL gives the 'before' Fmax ('' skips)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--ecp5-blocks", type=int, nargs="*", default=None,
                    help="T values that also get the ECP5 place and route (default: every one of --blocks)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="accllm_engine_block_"))
    srcs = synth.sources_of(ENGINE_TOP)
    pnr = set(a.blocks if a.ecp5_blocks is None else a.ecp5_blocks)
    jobs = [(f"T={t}", synth.Design(ENGINE_TOP, slice_params(t, a.cores), srcs), t in pnr) for t in a.blocks]
    jobs.append(("T=1 WBITS=2", synth.Design(ENGINE_TOP, slice_params(1, a.cores, 2), srcs), False))
    if a.before and not a.no_ecp5:
        old = rtl_of_revision(a.before, work / "before_rtl")
        p = {k: v for k, v in slice_params(1, a.cores, 2).items() if k != "T"}
        jobs.append((f"before ({a.before}, W2 only, no block mode)", synth.Design(ENGINE_TOP, p, old), True))
    rows = []
    t0 = time.perf_counter()
    head = {"note": synth.NOTE, "versions": synth.versions(work / "versions"),
            "slice": {k: v for k, v in slice_params(0, a.cores).items() if k != "T"}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for label, d, ecp5 in tqdm(jobs, desc="synthesis", unit="design"):
        sub = work / label.replace(" ", "_").replace("=", "").replace("(", "").replace(")", "").replace(",", "")
        row = {"label": label, "design": d.label}
        try:
            if not label.startswith("before"):
                row["xcup"] = synth.synth_xilinx(d, sub / "xcup")["resources"]
            if ecp5 and not a.no_ecp5:
                r = synth.place_route_ecp5(d, sub / "ecp5", 100.0, tuple(a.seeds))
                row["ecp5"] = {k: r[k] for k in ("fmax_mhz_median", "fmax_mhz_best", "critical_path", "utilization")}
        except (RuntimeError, TimeoutError, ValueError) as e:
            row["error"] = str(e)
        rows.append(row)
        a.out.write_text(json.dumps(dict(head, rows=rows, complete=False), indent=1) + "\n")  # progress so far
        print(json.dumps({k: (v if k != "ecp5" else {x: v[x] for x in ("fmax_mhz_median", "critical_path")})
                          for k, v in row.items()}), flush=True)
    by_t = [r for r in rows if r["label"].startswith("T=") and "WBITS" not in r["label"] and "xcup" in r]
    growth = {}
    if len(by_t) >= 2:
        first, last = by_t[0], by_t[-1]
        dt = int(last["label"][2:]) - int(first["label"][2:])
        growth = {k: (last["xcup"][k] - first["xcup"][k]) / dt for k in KEYS}
    res = dict(head, rows=rows, complete=True, per_extra_vector=growth,
               wall_seconds=round(time.perf_counter() - t0, 1), date=time.strftime("%Y-%m-%d"))
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{'design':44s} " + " ".join(f"{k:>7s}" for k in KEYS) + "  fmax MHz (ECP5)")
    for r in rows:
        x = r.get("xcup", {})
        print(f"{r['label']:44s} " + " ".join(f"{x.get(k, float('nan')):7.1f}" for k in KEYS)
              + f"  {r.get('ecp5', {}).get('fmax_mhz_median', '-')}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
