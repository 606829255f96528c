"""Bit-accurate C-simulation of the engine kernel: the generated HLS project compiled with g++ against
hls4ml's bundled ``ap_types`` (from the installed package) into a shared library, driven through ctypes.

The kernel runs every integer reduction through the RTL core's blackbox function ``accllm_core_hls_bb()``.
By default its C model (``hls/templates/accllm_core_hls_bb.cpp``) is linked; a caller may pass ``core``, compiled
objects that implement the same function (``accllm.hw.rtl_native`` passes the Verilated RTL core: a C/RTL
co-simulation of the whole engine that also counts the core's clock cycles).

Builds are cached by the sha256 of the sources and flags (``$ACCLLM_CACHE`` or ``~/.cache/accllm/csim``), each
library with its own sha256 beside it, checked before it is loaded.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np

from accllm.hls import program as prog
from accllm.hls.project import BLACKBOX_C, BLACKBOX_H, SOURCES, TABLES_H
from accllm.quant.integrity import atomic_write, file_sha256, verify

# -fno-gnu-unique: the static buffers of inline kernel functions stay private to each library, so two builds of
# different dimensions (or prefill blocks) can be loaded in one process. -O3 (inlining, loop vectorisation) runs the
# C-simulation 1.3-1.6x faster than -O2 with the same bits: no -ffast-math, no FMA, so every float operation is
# still the IEEE one written.
CXXFLAGS = ["-O3", "-std=c++14", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-fno-gnu-unique", "-w"]


def ap_types_dir() -> Path:
    import hls4ml

    d = Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"
    if not (d / "ap_int.h").is_file():
        raise FileNotFoundError(f"hls4ml's ap_types headers are not at {d}; is hls4ml installed?")
    return d


def cache_dir() -> Path:
    return Path(os.environ.get("ACCLLM_CACHE", Path.home() / ".cache" / "accllm")) / "csim"


def project_files(hls_dir) -> list[Path]:
    """The HLS project's files the C-simulation compiles."""
    hls_dir = Path(hls_dir)
    return [hls_dir / n for n in SOURCES + (BLACKBOX_H, BLACKBOX_C, "parameters.h", TABLES_H)]


def verify_project(hls_dir) -> None:
    """The project's files against the build's files.sha256 (one edited character changes the kernel)."""
    verify(hls_dir, [f.name for f in project_files(hls_dir)])


def read_core_params(hls_dir) -> tuple[int, int]:
    """(LANES, GROUP) the project's parameters.h builds the core with."""
    import re

    verify(hls_dir, ["parameters.h"])
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
    verify_project(hls_dir)
    name = "c" if core is None else core.name
    defines = list(getattr(core, "defines", ()))  # e.g. the engine co-simulation's streams (ACCLLM_ENGINE_STREAM)
    h = hashlib.sha256(" ".join(CXXFLAGS + [name] + defines).encode())
    for f in project_files(hls_dir):
        h.update(f.name.encode() + f.read_bytes())
    core_files = [str(hls_dir / BLACKBOX_C)]
    if core is not None:
        h.update(core.key.encode())
        core_files = list(map(str, core.objects))
    lib = cache_dir() / f"accllm_csim_{name}_{h.hexdigest()[:16]}.so"
    if cached_library_ok(lib):
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = ["g++", *CXXFLAGS, *defines, "-I", str(hls_dir), "-I", str(ap_types_dir()),
           str(hls_dir / "accllm_top.cpp"), str(hls_dir / "csim_api.cpp"), *core_files, "-pthread",
           "-o", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"C-simulation build failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
    record_library(tmp, lib)
    if verbose:
        print(f"built {lib}")
    return lib


def cached_library_ok(lib: Path) -> bool:
    """A cached library is used only whole: its sha256 must match the one recorded beside it when it was built
    (a truncated .so would crash the process with a bus error when loaded)."""
    rec = lib.with_name(lib.name + ".sha256")
    try:
        return lib.is_file() and rec.read_text().strip() == file_sha256(lib)
    except (OSError, UnicodeDecodeError):
        return False


def record_library(tmp: Path, lib: Path) -> None:
    """Move a freshly linked library into the cache with its sha256 beside it (the record first: a library
    without a matching record is rebuilt)."""
    atomic_write(lib.with_name(lib.name + ".sha256"), file_sha256(tmp) + "\n")
    os.replace(tmp, lib)


class CSim:
    """The engine in C-simulation: every run is one call of the kernel top ``accllm_top`` over a run of tokens
    (``step``: one token, decode; ``prefill``: a prompt in blocks of :attr:`prefill_block`)."""

    def __init__(self, build_dir, core=None):
        build_dir = Path(build_dir)
        self.meta, self.instrs, program, _, payload = prog.read_compiled(build_dir)
        self.lib = ctypes.CDLL(str(build_library(build_dir / "hls", core)))
        self.lib.accllm_csim_trace_size.restype = ctypes.c_uint
        self.lib.accllm_csim_prefill.restype = ctypes.c_int
        self.lib.accllm_csim_prefill_block.restype = ctypes.c_uint
        self.lib.accllm_csim_max_tokens.restype = ctypes.c_uint
        self.lib.accllm_csim_topk.restype = ctypes.c_uint
        self.lib.accllm_csim_weight_bytes.restype = ctypes.c_ulonglong
        d = self.meta["dims"]
        self.vocab, self.layers = d["vocab"], d["layers"]
        self.trace_size = int(self.lib.accllm_csim_trace_size())
        if self.trace_size != self.meta["trace"]["_size"]:
            raise ValueError("C-simulation library and program disagree on the trace layout; recompile")
        self.max_tokens = int(self.lib.accllm_csim_max_tokens())  # tokens one kernel run takes at most
        self._program = np.frombuffer(program, np.uint8).copy()
        self._blob = np.frombuffer(payload, np.uint8).copy()
        self.kv = np.zeros(self.meta["kv_bytes"], np.uint8)
        self.logits = np.zeros(self.vocab, np.float32)
        self.topk = int(self.lib.accllm_csim_topk())
        self._top = np.zeros(2 * self.topk, np.uint32)  # the kernel's top-K output: K ids, then K float32 logits
        self.lib.accllm_csim_head_trace_size.restype = ctypes.c_uint
        self.head_trace_size = int(self.lib.accllm_csim_head_trace_size())  # the LM head's region, after the layers
        self.trace = np.zeros(self.layers * self.trace_size + self.head_trace_size, np.int32)
        self.pos = 0

    def reset(self) -> None:
        self.kv[:] = 0
        self.pos = 0

    @property
    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """The last run's on-chip top-K: (ids int64 [K], logits float32 [K]), logit descending, ties lower id first."""
        return self._top[:self.topk].astype(np.int64), self._top[self.topk:].view(np.float32).copy()

    def _ids(self, tokens) -> np.ndarray:
        ids = np.asarray(list(tokens), dtype=np.int64)
        if ids.size == 0:
            raise ValueError("empty prompt: give at least one token")
        bad = ids[(ids < 0) | (ids >= self.vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} outside the vocabulary [0, {self.vocab})")
        return ids.astype(np.uint32)

    def run(self, ids: np.ndarray, trace: np.ndarray, trace_en: bool, logits: bool) -> None:
        """One kernel run over ``ids`` (uint32, 1..:attr:`max_tokens`) at the next stream positions; ``trace``:
        int32 room for their traces and the LM head's region (written when ``trace_en``)."""
        if not 1 <= len(ids) <= self.max_tokens:
            raise ValueError(f"a kernel run takes 1..{self.max_tokens} tokens, got {len(ids)}")
        need = len(ids) * self.layers * self.trace_size + self.head_trace_size
        if trace_en and (trace.dtype != np.int32 or not trace.flags.c_contiguous or trace.size < need):
            raise ValueError(f"a traced run of {len(ids)} tokens needs a contiguous int32 trace of {need} values")
        p = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        ids = np.ascontiguousarray(ids, dtype=np.uint32)
        rc = self.lib.accllm_csim_prefill(p(self._program), ctypes.c_uint(len(self.instrs)), p(self._blob),
                                          ctypes.c_ulonglong(self._blob.nbytes), p(self.kv), p(ids),
                                          ctypes.c_uint(len(ids)), ctypes.c_uint(self.pos), p(self._top),
                                          p(self.logits), ctypes.c_uint(int(logits)), p(trace),
                                          ctypes.c_uint(int(trace_en)))
        if rc:
            raise RuntimeError(f"the kernel refused a run of {len(ids)} tokens (it takes 1..{self.max_tokens})")
        self.pos += len(ids)

    def step(self, token: int, trace: bool = False, logits: bool = True) -> np.ndarray | None:
        """One token (decode); returns its logits (``logits``; else None: only :attr:`top` is written)."""
        ids = self._ids([token])
        if trace:
            self.trace[:] = 0
        self.run(ids, self.trace, trace, logits)
        return self.logits.copy() if logits else None

    def prefill(self, tokens, trace: bool = False, logits: bool = True) -> np.ndarray | None:
        """Run ``tokens`` at the next stream positions in the engine's prefill mode (blocks of
        :attr:`prefill_block` tokens, one weight pass each; a prompt longer than :attr:`max_tokens` in several
        kernel runs); returns the last token's logits. With ``trace``, :meth:`prefill_trace` gives each token's
        integer trace."""
        ids = self._ids(tokens)
        stride = self.layers * self.trace_size
        self.block_trace = np.zeros(len(ids) * stride + self.head_trace_size if trace else 1, np.int32)
        for t0 in range(0, len(ids), self.max_tokens):
            last = t0 + self.max_tokens >= len(ids)
            self.run(ids[t0:t0 + self.max_tokens], self.block_trace[t0 * stride:] if trace else self.block_trace,
                     trace, logits and last)
            if trace and not last:  # its LM head region lies where the next run's token traces go: cleared for them
                end = (t0 + self.max_tokens) * stride  # (a token's trace leaves the slots it does not attend at 0)
                self.block_trace[end:end + self.head_trace_size] = 0
        return self.logits.copy() if logits else None

    def prefill_trace(self, token: int, layer: int) -> np.ndarray:
        """Token ``token`` (index in the last traced prefill) of ``layer``: its integer trace."""
        off = (token * self.layers + layer) * self.trace_size
        return self.block_trace[off:off + self.trace_size].astype(np.int64)

    @property
    def prefill_block(self) -> int:
        return int(self.lib.accllm_csim_prefill_block())

    @property
    def weight_bytes(self) -> int:
        """Weight bytes the kernel has read from the blob since :meth:`clear_weight_bytes` (its own counter)."""
        return int(self.lib.accllm_csim_weight_bytes())

    def clear_weight_bytes(self) -> None:
        self.lib.accllm_csim_clear_weight_bytes()

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
    per_layer, total, dlogit = [0] * golden.d.layers, 0, 0.0
    for t in tokens:
        tr = []
        lg = golden.step(t, tr)
        lc = csim.step(t, trace=True)
        for layer, tl in enumerate(tr):
            a, b = flatten_trace(golden.d, tl).numpy(), csim.layer_trace(layer)
            per_layer[layer] += int((a != b).sum())
            total += a.size
        dlogit = max(dlogit, float(np.abs(lg.numpy() - lc).max()))
    return {"integer_mismatches": sum(per_layer), "integers_compared": total, "max_logit_diff": dlogit,
            "mismatches_per_layer": per_layer}


def prefill_mismatches(golden, csim: CSim, ids: list[int]):
    """After ``csim.prefill(ids, trace=True)``: the golden model's prefill of ``ids`` from a reset, in blocks of the
    same T, and every layer's integer trace mismatches against the C-simulation's: ``(golden logits, counts)``."""
    from accllm.sim.golden import flatten_trace

    golden.reset()
    traces = []
    logits = golden.prefill(ids, block=csim.prefill_block, traces=traces)
    mism = total = 0
    for t in range(len(ids)):
        for layer in range(golden.d.layers):
            a = flatten_trace(golden.d, traces[t][layer]).numpy()
            mism += int((a != csim.prefill_trace(t, layer)).sum())
            total += a.size
    return logits, {"integer_mismatches": mism, "integers_compared": total}
