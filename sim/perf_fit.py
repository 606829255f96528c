"""The core's timing as a fit to measured cycle counts: ``cycles = per_beat * beats + per_packet * packets +
per_op`` per core call. The measurements come from the RTL (``accllm.hw.calibrate`` writes
``data/perf_calibration.json``); this module only fits and checks them, and defines the random operations
and shapes the measurements are made on."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from accllm.sim.boards import DATA

CALIBRATION_FILE = DATA / "perf_calibration.json"


@dataclass(frozen=True)
class CoreTiming:
    """cycles = per_beat * beats + per_packet * packets + per_op, fitted on RTL cycle counts."""

    per_beat: float
    per_packet: float
    per_op: float
    source: str = "uncalibrated"
    fit: dict = field(default_factory=dict)

    def cycles(self, beats: float, packets: float) -> float:
        return self.per_beat * beats + self.per_packet * packets + self.per_op


def fit_timing(samples: list[dict]) -> CoreTiming:
    """Least-squares fit of :class:`CoreTiming` to samples ``{"beats", "packets", "cycles"}``."""
    import numpy as np

    if len(samples) < 3:
        raise ValueError(f"a fit of three terms needs at least 3 samples, got {len(samples)}")
    x = np.array([[s["beats"], s["packets"], 1.0] for s in samples], dtype=float)
    y = np.array([s["cycles"] for s in samples], dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return CoreTiming(*map(float, coef))


def timing_errors(timing: CoreTiming, samples: list[dict]) -> dict:
    """Relative error of the predicted cycles on ``samples``: per sample and the maximum / mean of |error|."""
    rows = []
    for s in samples:
        pred = timing.cycles(s["beats"], s["packets"])
        rows.append({**s, "predicted": pred, "rel_error": (pred - s["cycles"]) / s["cycles"]})
    errs = [abs(r["rel_error"]) for r in rows]
    return {"samples": rows, "max_abs_rel_error": max(errs), "mean_abs_rel_error": sum(errs) / len(errs)}


def load_calibration(path: Path = CALIBRATION_FILE) -> tuple[CoreTiming, dict]:
    """The fitted core timing and the whole calibration record written by ``bench/perf.py --calibrate``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no core calibration at {path}: run 'python bench/perf.py --calibrate' "
                                "(simulates the RTL core in Verilator) first")
    rec = json.loads(path.read_text())
    c = rec["fit"]
    return CoreTiming(c["per_beat"], c["per_packet"], c["per_op"], source=str(path), fit=c), rec


# Shapes the fit is made on (LANES=16, GROUP=32) and shapes it is checked on: other sizes, QK/PV lengths that
# are not a multiple of LANES, and other LANES/GROUP builds of the core that the fit never saw.
FIT_CONFIG = (16, 32)
FIT_SHAPES = [("dense", dict(n=8, k=32)), ("dense", dict(n=16, k=64)), ("dense", dict(n=4, k=128)),
              ("sparse", dict(n=8, k=64)), ("sparse", dict(n=16, k=32)), ("sparse", dict(n=6, k=128)),
              ("qk", dict(t=16, d=16)), ("qk", dict(t=24, d=32)), ("qk", dict(t=10, d=64)),
              ("pv", dict(t=16, d=8)), ("pv", dict(t=48, d=4)), ("pv", dict(t=32, d=16))]
HELD_OUT = {
    (16, 32): [("dense", dict(n=40, k=256)), ("dense", dict(n=3, k=96)), ("sparse", dict(n=50, k=128)),
               ("sparse", dict(n=7, k=224)), ("qk", dict(t=70, d=40)), ("qk", dict(t=5, d=128)),
               ("pv", dict(t=77, d=12)), ("pv", dict(t=200, d=3))],
    (8, 32): [("dense", dict(n=24, k=96)), ("sparse", dict(n=20, k=128)), ("qk", dict(t=30, d=20)),
              ("pv", dict(t=45, d=10))],
    (32, 64): [("dense", dict(n=12, k=256)), ("sparse", dict(n=30, k=192)), ("qk", dict(t=40, d=96)),
               ("pv", dict(t=100, d=16))],
}


def make_op(kind: str, dims: dict, group: int, rng) -> dict:
    """A random operation of the given shape for the RTL testbench (``accllm.hw.rtl_runner`` job format)."""
    import numpy as np

    name = f"{kind}_" + "_".join(f"{k}{v}" for k, v in dims.items())
    if kind in ("dense", "sparse"):
        n, k = dims["n"], dims["k"]
        zeros = rng.integers(0, 4, size=(n, k // group))
        a = rng.integers(-128, 128, size=k)
        if kind == "dense":
            return {"kind": kind, "name": name, "group": group, "a": a, "codes": rng.integers(0, 4, size=(n, k)),
                    "zeros": zeros}
        pos = np.sort(np.argsort(rng.random((n, k // 4, 4)), axis=-1)[..., :2], axis=-1).reshape(n, k // 2)
        return {"kind": kind, "name": name, "group": group, "a": a, "vals": rng.integers(0, 4, size=(n, k // 2)),
                "pos": pos, "zeros": zeros}
    t, d = dims["t"], dims["d"]
    if kind == "qk":
        return {"kind": kind, "name": name, "q": rng.integers(-128, 128, size=d), "k": rng.integers(0, 16, size=(t, d)),
                "kz": rng.integers(0, 16, size=t)}
    return {"kind": kind, "name": name, "p": rng.integers(-128, 128, size=t), "v": rng.integers(0, 16, size=(t, d)),
            "vz": rng.integers(0, 16, size=t)}


def core_stream_of(op: dict, lanes: int):
    """The :class:`~accllm.sim.core_stream.CoreStream` and golden accumulators of a :func:`make_op` operation."""
    from accllm.sim import core_stream as cs
    from accllm.sim import golden_core as gc

    kind, g = op["kind"], op.get("group")
    if kind == "dense":
        return cs.dense_stream(op["a"], op["codes"], op["zeros"], g, lanes), gc.dense_w2a8(op["a"], op["codes"], op["zeros"], g)
    if kind == "sparse":
        return (cs.sparse_stream(op["a"], op["vals"], op["pos"], op["zeros"], g, lanes),
                gc.sparse_w2a8(op["a"], op["vals"], op["pos"], op["zeros"], g))
    if kind == "qk":
        return cs.qk_stream(op["q"], op["k"], op["kz"], lanes), gc.qk_a8kv4(op["q"], op["k"], op["kz"])
    return cs.pv_stream(op["p"], op["v"], op["vz"], lanes), gc.pv_a8kv4(op["p"], op["v"], op["vz"])
