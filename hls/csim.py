"""Bit-accurate C-simulation of the engine kernel: the generated HLS project compiled with g++ against
hls4ml's bundled ``ap_types`` (from the installed package) into a shared library, driven through ctypes.

The kernel runs every integer reduction through the RTL core's blackbox function ``accllm_core_hls_bb()``.
By default its C model (``hls/templates/accllm_core_hls_bb.cpp``) is linked; a caller may pass ``core``, compiled
objects that implement the same function (``accllm.hw.rtl_native`` passes the Verilated RTL core: a C/RTL
co-simulation of the whole engine that also counts the core's clock cycles).

Builds are cached by the sha256 of the sources and flags (``$ACCLLM_CACHE`` or ``~/.cache/accllm/csim``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np

from accllm.hls import blob as blobfmt
from accllm.hls import program as prog
from accllm.hls.project import BLACKBOX_C, BLACKBOX_H, SOURCES

CXXFLAGS = ["-O2", "-std=c++14", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-w"]


def ap_types_dir() -> Path:
    import hls4ml

    d = Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
    if not (d / "ap_int.h").is_file():
        raise FileNotFoundError(f"hls4ml's ap_types headers are not at {d}; is hls4ml installed?")
    return d


def cache_dir() -> Path:
    return Path(os.environ.get("ACCLLM_CACHE", Path.home() / ".cache" / "accllm")) / "csim"


def read_core_params(hls_dir) -> tuple[int, int]:
    """(LANES, GROUP) the project's parameters.h builds the core with."""
    import re

    text = (Path(hls_dir) / "parameters.h").read_text()
    vals = dict(re.findall(r"#define\s+ACCLLM_(LANES|GROUP)\s+(\d+)", text))
    if set(vals) != {"LANES", "GROUP"}:
        raise ValueError(f"{hls_dir}/parameters.h does not define ACCLLM_LANES and ACCLLM_GROUP; recompile")
    return int(vals["LANES"]), int(vals["GROUP"])


def build_library(hls_dir, core=None, verbose: bool = False) -> Path:
    """Compile ``hls_dir`` (a project written by the compiler) to a shared library with the integer core as its C
    model (``core=None``) or as ``core``: an object with ``name``, ``key`` (content hash) and ``objects`` (object
    files and archives defining ``accllm_core_hls_bb``); cached by content hash."""
    hls_dir = Path(hls_dir)
    files = [hls_dir / n for n in SOURCES + (BLACKBOX_H, BLACKBOX_C) if n.endswith((".h", ".cpp"))]
    files.append(hls_dir / "parameters.h")
    name = "c" if core is None else core.name
    h = hashlib.sha256(" ".join(CXXFLAGS + [name]).encode())
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"HLS project file {f} is missing; run `accllm compile` again")
        h.update(f.name.encode() + f.read_bytes())
    core_files = [str(hls_dir / BLACKBOX_C)]
    if core is not None:
        h.update(core.key.encode())
        core_files = list(map(str, core.objects))
    lib = cache_dir() / f"accllm_csim_{name}_{h.hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = ["g++", *CXXFLAGS, "-I", str(hls_dir), "-I", str(ap_types_dir()),
           str(hls_dir / "accllm_top.cpp"), str(hls_dir / "csim_api.cpp"), *core_files, "-pthread",
           "-o", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"C-simulation build failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    os.replace(tmp, lib)
    if verbose:
        print(f"built {lib}")
    return lib


class CSim:
    """The engine in C-simulation: ``step(token)`` runs the program once (one token) and returns logits."""

    def __init__(self, build_dir, core=None):
        build_dir = Path(build_dir)
        self.meta, self.instrs, program = prog.read_program(build_dir / "program.bin")
        bmeta, payload = blobfmt.read_blob(build_dir / "weights.blob")
        from accllm.hls import container

        prog.check_pair(self.meta, container.sha256(payload), build_dir / "program.bin", build_dir / "weights.blob")
        self.lib = ctypes.CDLL(str(build_library(build_dir / "hls", core)))
        self.lib.accllm_csim_step.restype = ctypes.c_int
        self.lib.accllm_csim_trace_size.restype = ctypes.c_uint
        d = self.meta["dims"]
        self.vocab, self.layers = d["vocab"], d["layers"]
        self.trace_size = int(self.lib.accllm_csim_trace_size())
        if self.trace_size != self.meta["trace"]["_size"]:
            raise ValueError("C-simulation library and program disagree on the trace layout; recompile")
        self._program = np.frombuffer(program, np.uint8).copy()
        self._blob = np.frombuffer(payload, np.uint8).copy()
        self.kv = np.zeros(self.meta["kv_bytes"], np.uint8)
        self.logits = np.zeros(self.vocab, np.float32)
        self.trace = np.zeros(self.layers * self.trace_size, np.int32)
        self.pos = 0

    def reset(self) -> None:
        self.kv[:] = 0
        self.pos = 0

    def step(self, token: int, trace: bool = False) -> np.ndarray:
        if not 0 <= token < self.vocab:
            raise ValueError(f"token id {token} outside the vocabulary [0, {self.vocab})")
        if trace:
            self.trace[:] = 0
        p = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        self.lib.accllm_csim_step(p(self._program), ctypes.c_uint(len(self.instrs)), p(self._blob), p(self.kv),
                                  ctypes.c_uint(token), ctypes.c_uint(self.pos), p(self.logits), p(self.trace),
                                  ctypes.c_uint(int(trace)))
        self.pos += 1
        return self.logits.copy()

    def layer_trace(self, layer: int) -> np.ndarray:
        return self.trace[layer * self.trace_size:(layer + 1) * self.trace_size].astype(np.int64)

    def generate(self, prompt: list[int], max_new: int, eos: int | None = None, on_token=None) -> list[int]:
        from accllm.sim.golden import greedy

        return greedy(self, prompt, max_new, eos, on_token)


def compare_with_golden(golden, csim: CSim, tokens: list[int]) -> dict:
    """Feed ``tokens`` to both from a reset: integer trace mismatches over every layer and token, and the
    largest logit difference (the float post-processing)."""
    from accllm.sim.golden import flatten_trace

    golden.reset()
    csim.reset()
    mism, total, dlogit = 0, 0, 0.0
    for t in tokens:
        tr = []
        lg = golden.step(t, tr)
        lc = csim.step(t, trace=True)
        for layer, tl in enumerate(tr):
            a, b = flatten_trace(golden.d, tl).numpy(), csim.layer_trace(layer)
            mism += int((a != b).sum())
            total += a.size
        dlogit = max(dlogit, float(np.abs(lg.numpy() - lc).max()))
    return {"integer_mismatches": mism, "integers_compared": total, "max_logit_diff": dlogit}
