"""Per-build files of the bitstream recipes in ``bitstreams/``, generated from the real sources.
(Over 300 lines on purpose: every recipe file is written from the same parsed kernel top and RTL ports.)

A bitstream is built from one compiled model (``accllm compile --target BOARD``: its ``hls/`` project holds
the kernel templates, the blackbox's C face and the generated ``parameters.h`` with the model's dimensions,
LANES and GROUP baked in). The recipes (Makefiles and static Tcl in ``bitstreams/``) need names and ports that
live in the sources: the HLS kernel top (its function name, m_axi and s_axilite interfaces) and the RTL core
(``hw/rtl``: module name, parameters, ports). This module reads them and writes, into a build folder:

- ``blackbox.json``  Vitis HLS RTL blackbox description of ``hw/rtl/accllm_core_hls_bb.v`` (the core behind the
  FIFO/ap_ctrl_chain interface HLS expects; the kernel calls it for every integer reduction),
  ``add_files -blackbox``.
- ``hls.tcl``        Vitis HLS project: the compiled project's top source, blackbox, part/platform, clock,
  export (.xo for Vitis, IP catalog for Vivado).
- ``link.cfg``       (U280) ``v++ --link`` config: one compute unit, every m_axi port on its own HBM pseudo
  channel via ``[connectivity] sp=``, kernel clock.
- ``bd_params.tcl``  (Zynq boards) the names the static ``bitstreams/zynq/build_bd.tcl`` needs.
- ``manifest_entry.json``  the manifest entry of this bitstream, unbuilt (no checksums until a real build).

    accllm compile EXPORT --target u280 -o builds/u280
    python -m accllm.bitstreams.build --compiled builds/u280 --out build/u280
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from accllm.hls.project import BLACKBOX_C, TEMPLATES
from accllm.sim.boards import Board, get_board
from accllm.hw.rtl_native import WRAPPER, WRAPPER_MODULE
from accllm.hw.rtl_runner import RTL_DIR, RTL_SOURCES

from .verilog import Port, module_ports  # noqa: F401  (Port: part of this module's interface)

BITSTREAMS = Path(__file__).resolve().parent
CORE_MODULE = "accllm_core"


# ---------------------------------------------------------------- Verilog port lists

def core_ports(lanes: int, group: int) -> list[Port]:
    return module_ports(RTL_DIR / "accllm_core.sv", CORE_MODULE, {"LANES": lanes, "GROUP": group})[1]


def wrapper_ports(lanes: int, group: int) -> list[Port]:
    return module_ports(WRAPPER, WRAPPER_MODULE, {"LANES": lanes, "GROUP": group})[1]


# ---------------------------------------------------------------- the HLS kernel top

@dataclass
class HlsTop:
    name: str
    source: Path
    args: list[str]
    m_axi: dict[str, str]        # argument -> bundle
    s_axilite: list[str]         # arguments on the control interface (and "return")
    control_bundle: str = "control"
    axis: list[str] = field(default_factory=list)  # AXI4-Stream arguments (the engine's streams)


def _pragma_fields(line: str) -> dict[str, str]:
    fields = dict(re.findall(r"(\w+)\s*=\s*([\w\[\]]+)", line))
    words = line.split()
    if "mode" not in fields:  # older positional form: "#pragma HLS INTERFACE m_axi port=..."
        fields["mode"] = words[3] if len(words) > 3 else ""
    return fields


def find_hls_top(templates: Path = TEMPLATES) -> HlsTop:
    """The kernel top: the function whose body declares ``#pragma HLS INTERFACE ... s_axilite port=return``."""
    found = []
    for src in sorted(list(templates.glob("*.cpp")) + list(templates.glob("*.h")) + list(templates.glob("*.hpp"))):
        text = src.read_text()
        for fm in re.finditer(r"(?:extern\s+\"C\"\s*\{?\s*)?void\s+(\w+)\s*\(([^)]*)\)\s*\{", text):
            body_start = fm.end()
            depth, i = 1, body_start
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            body = text[body_start:i]
            pragmas = [ln.strip() for ln in body.splitlines() if re.match(r"\s*#pragma\s+HLS\s+INTERFACE", ln, re.I)]
            fields = [_pragma_fields(p) for p in pragmas]
            if not any(f.get("mode") == "s_axilite" and f.get("port") == "return" for f in fields):
                continue
            # an upper-case word after the last argument is a macro adding ports under a build flag (the engine's
            # streams under ACCLLM_ENGINE_STREAM): its ports are not in the control register map
            decls = re.sub(r"\s+[A-Z][A-Z0-9_]*\s*$", "", fm.group(2).strip())
            args = [re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*$", a.strip())[0] for a in decls.split(",") if a.strip()]
            m_axi = {f["port"]: f.get("bundle", f"m_axi_{f['port']}") for f in fields if f.get("mode") == "m_axi"}
            lite = [f["port"] for f in fields if f.get("mode") == "s_axilite"]
            axis = [f["port"] for f in fields if f.get("mode") == "axis"]
            bundle = next((f.get("bundle", "control") for f in fields
                           if f.get("mode") == "s_axilite" and f.get("port") == "return"), "control")
            found.append(HlsTop(fm.group(1), src, args, m_axi, lite, bundle, axis))
    if not found:
        raise FileNotFoundError(f"no HLS kernel top (a function with '#pragma HLS INTERFACE s_axilite port=return') "
                                f"in {templates}")
    if len(found) > 1:
        raise ValueError(f"several HLS kernel tops in {templates}: {', '.join(t.name for t in found)}")
    return found[0]


# ---------------------------------------------------------------- generated files

def blackbox_json(lanes: int, group: int, c_file: str, out_depth: int = 8) -> dict:
    """Vitis HLS RTL blackbox description of the wrapped core (UG1399, "JSON File for RTL Blackbox")."""
    ports = {p.name: p for p in wrapper_ports(lanes, group)}
    rtl = [str(WRAPPER)] + [str(RTL_DIR / f) for f in RTL_SOURCES]
    params = [
        {"c_name": "a", "c_port_direction": "in",
         "rtl_ports": {"FIFO_data_read_in": "a_dout", "FIFO_empty_flag": "a_empty_n", "FIFO_read_enable": "a_read"}},
        {"c_name": "b", "c_port_direction": "in",
         "rtl_ports": {"FIFO_data_read_in": "b_dout", "FIFO_empty_flag": "b_empty_n", "FIFO_read_enable": "b_read"}},
        {"c_name": "acc", "c_port_direction": "out",
         "rtl_ports": {"FIFO_data_write_out": "acc_din", "FIFO_full_flag": "acc_full_n", "FIFO_write_enable": "acc_write"}},
        {"c_name": "mode", "c_port_direction": "in", "rtl_ports": {"data_read_in": "mode"}},
        {"c_name": "n_out", "c_port_direction": "in", "rtl_ports": {"data_read_in": "n_out"}},
    ]
    for p in params:  # every RTL port named here must exist on the wrapper
        for sig in p["rtl_ports"].values():
            if sig not in ports:
                raise ValueError(f"blackbox port {sig} is not a port of {WRAPPER_MODULE}")
    return {
        "c_function_name": WRAPPER_MODULE,
        "rtl_top_module_name": WRAPPER_MODULE,
        "c_files": [{"c_file": str(c_file), "cflag": f"-DACCLLM_LANES={lanes} -DACCLLM_GROUP={group} "
                                                  f"-I{Path(c_file).parent}"}],
        "rtl_files": rtl,
        "c_parameters": params,
        "c_return": {"c_port_direction": "out", "rtl_ports": {}},
        "rtl_common_signal": {
            "module_clock": "ap_clk", "module_reset": "ap_rst", "module_clock_enable": "ap_ce",
            "ap_ctrl_chain_protocol_idle": "ap_idle", "ap_ctrl_chain_protocol_start": "ap_start",
            "ap_ctrl_chain_protocol_ready": "ap_ready", "ap_ctrl_chain_protocol_done": "ap_done",
            "ap_ctrl_chain_protocol_continue": "ap_continue"},
        "rtl_performance": {"latency": "6", "II": "1"},
        "rtl_resource_usage": {"FF": "0", "LUT": "0", "BRAM": "0", "URAM": "0", "DSP": str(lanes // 2)},
        "rtl_parameters": {"LANES": lanes, "GROUP": group, "OUT_DEPTH": out_depth},
    }


def hls_tcl(top: HlsTop, board: Board, sources: list[Path], blackbox: Path, project: str = "accllm_hls",
            engine: bool = False) -> str:
    """``sources``: the kernel's C++ files (the top's file first); the folder of each is on the include path.
    ``engine``: the kernel drives the engine RTL kernel through its streams (ACCLLM_ENGINE_STREAM)."""
    vitis = board.flow == "vitis"
    target = f"set_part {{{board.part}}}"
    lines = [f"# Generated by accllm.bitstreams.build for board {board.name}: run with vitis_hls -f hls.tcl",
             f"open_project -reset {project}",
             f"set_top {top.name}"]
    flags = " -DACCLLM_ENGINE_STREAM" if engine else ""
    lines += [f"add_files {s} -cflags \"-std=c++14{flags} -I{Path(s).parent}\"" for s in sources]
    lines += [f"add_files -blackbox {blackbox}",
              f"open_solution -reset sol -flow_target {'vitis' if vitis else 'vivado'}",
              target,
              f"create_clock -period {board.clock_mhz}MHz -name default",
              "csynth_design",
              f"export_design -format {'xo -output ' + top.name + '.xo' if vitis else 'ip_catalog'} -rtl verilog",
              "exit"]
    return "\n".join(lines) + "\n"


def link_cfg(top: HlsTop, board: Board, engine=None) -> str:
    """v++ --link config (UG1702 [connectivity] nk/sp): each m_axi port (bundle) on its own HBM pseudo channel;
    arguments that share a bundle share its channel (v++ refuses one port on two memories). ``engine``
    (:class:`accllm.bitstreams.engine_kernel.EngineKernel`): the engine RTL kernel beside it, its streams linked with
    stream_connect and each channel's master on its own bank after the kernel's where the board has enough, else
    shared (:func:`accllm.bitstreams.engine_kernel.engine_banks`; the U280's 32-channel engine shares HBM[0..6])."""
    if board.flow != "vitis":
        raise ValueError(f"{board.name} is built with Vivado, not v++ --link")
    bundles = _unique(top.m_axi.values())
    if len(bundles) > board.mem_ports:
        raise ValueError(f"{top.name} has {len(bundles)} m_axi ports, {board.name} has {board.mem_ports} memory channels")
    cu = f"{top.name}_1"
    lines = ["# Generated by accllm.bitstreams.build: v++ --link --config link.cfg",
             f"platform={board.extra['platform']}", "", "[connectivity]", f"nk={top.name}:1:{cu}"]
    lines += [f"sp={cu}.{arg}:HBM[{bundles.index(bundle)}]" for arg, bundle in top.m_axi.items()]
    clocks = [f"freqHz={int(board.clock_mhz * 1e6)}:{cu}"]
    if engine is not None:
        from .engine_kernel import KERNEL, link_lines

        lines += link_lines(top.name, top.axis, engine, hbm_banks(top, board, engine))
        clocks.append(f"freqHz={int(board.clock_mhz * 1e6)}:{KERNEL}_1")
    lines += ["", "[clock]", *clocks, ""]
    return "\n".join(lines)


def hbm_banks(top: HlsTop, board: Board, engine) -> list[int]:
    """The HBM bank of each engine channel beside this kernel top's bundles (the link.cfg's sp= lines)."""
    from .engine_kernel import engine_banks

    return engine_banks(engine.channels, len(_unique(top.m_axi.values())), board.mem_ports)


def bd_params_tcl(top: HlsTop, board: Board, engine=None, engine_sources: list[Path] = ()) -> str:
    """Names for bitstreams/zynq/build_bd.tcl (Vivado block design: Zynq UltraScale+ PS + the HLS IP, and with
    ``engine`` the engine RTL as a module reference cell linked to the kernel's streams; empty names without)."""
    if board.flow != "vivado":
        raise ValueError(f"{board.name} is built with Vitis, not the Vivado block design")
    hp = [f"S_AXI_HP{i}_FPD" for i in range(min(len(top.m_axi), board.mem_ports))]
    return "\n".join([
        "# Generated by accllm.bitstreams.build: sourced by bitstreams/zynq/build_bd.tcl",
        f"set board_name {board.name}",
        f"set part {board.part}",
        f"set board_part_pattern {board.extra['board_part_pattern']}",
        f"set kernel {top.name}",
        f"set ip_vlnv xilinx.com:hls:{top.name}:1.0",
        f"set m_axi_ports {{{' '.join('m_axi_' + b for b in _unique(top.m_axi.values()))}}}",
        f"set hp_ports {{{' '.join(hp)}}}",
        f"set control_port s_axi_{top.control_bundle}",
        f"set clock_mhz {board.clock_mhz:g}",
        *(engine_bd_lines(engine, engine_sources) if engine is not None else
          ["set engine_module {}", "set engine_cell {}", "set engine_sources {}", "set engine_control {}",
           "set engine_m_axi {}", "set engine_axis {}"]),
        "",
    ])


def engine_bd_lines(engine, sources):
    from .engine_kernel import bd_lines

    return bd_lines(engine, sources)


def _unique(xs):
    seen = []
    for x in xs:
        if x not in seen:
            seen.append(x)
    return seen


def model_tag(dims: dict) -> str:
    """Short stable name of the model dimensions a bitstream bakes in (its parameters.h)."""
    import hashlib

    return hashlib.sha256(json.dumps(dims, sort_keys=True).encode()).hexdigest()[:8]


def manifest_entry(top: HlsTop, board: Board, lanes: int, group: int, dims: dict, cores: int, program_format: int,
                   blob_format: int, engine=None, *, block: int) -> dict:
    """``engine`` (:class:`accllm.bitstreams.engine_kernel.EngineKernel`): the bitstream carries the engine RTL
    beside the kernel, recorded as its ``engine_rtl``; ``block``: the prefill block the program was compiled for
    (with the dimensions, the size of the kernel's tokens port)."""
    name = f"{board.name}_{model_tag(dims)}_L{lanes}_G{group}"
    if board.flow == "vitis":
        arts = {"xclbin": {"path": f"{board.name}/{name}.xclbin"}}
    else:
        arts = {"bit": {"path": f"{board.name}/{name}.bit"}, "hwh": {"path": f"{board.name}/{name}.hwh"}}
    return {"name": name, "board": board.name, "flow": board.flow, "kernel": top.name,
            "engine": {"lanes": lanes, "group": group, "cores": cores, "out_depth": 8, "block": block}, "dims": dims,
            "program_format": program_format, "blob_format": blob_format, "clock_mhz": board.clock_mhz,
            "built": False, "artifacts": arts, "tool": None, "recipe": "u280" if board.flow == "vitis" else "zynq",
            "engine_rtl": None if engine is None else _engine_record(top, board, engine)}


def _engine_record(top: HlsTop, board: Board, engine) -> dict:
    from .engine_kernel import manifest_record

    return manifest_record(engine, board.flow, hbm_banks(top, board, engine) if board.flow == "vitis" else ())


def format_versions() -> tuple[int, int]:
    """(program format, blob format) version numbers as the compiler defines them."""
    from accllm.hls import blob, program  # the compiler's one definition of the formats

    return int(program.VERSION), int(blob.VERSION)


@dataclass
class CompiledBuild:
    """What a bitstream takes from ``accllm compile``: its HLS project and the engine it was compiled for."""

    path: Path
    hls: Path
    board: str
    lanes: int
    group: int
    dims: dict
    block: int  # the prefill block T the program was compiled for


def read_compiled(path) -> CompiledBuild:
    from accllm.hls import program as prog
    from accllm.hls.csim import read_core_params

    path = Path(path)
    if not (path / "program.bin").is_file() or not (path / "hls" / "parameters.h").is_file():
        raise FileNotFoundError(f"{path} is not a compiled build (program.bin and hls/parameters.h from "
                                "`accllm compile`)")
    meta, _, _ = prog.read_program(path / "program.bin")
    lanes, group = read_core_params(path / "hls")
    if (lanes, group) != (meta["engine"]["lanes"], meta["dims"]["group"]):
        raise ValueError(f"{path}: hls/parameters.h (LANES {lanes}, GROUP {group}) disagrees with program.bin "
                         f"(lanes {meta['engine']['lanes']}, group {meta['dims']['group']}); recompile")
    return CompiledBuild(path, path / "hls", meta["engine"]["target"], lanes, group, meta["dims"],
                         prog.prefill_block(meta))


def bitstream_name(compiled) -> str:
    c = compiled if isinstance(compiled, CompiledBuild) else read_compiled(compiled)
    return f"{c.board}_{model_tag(c.dims)}_L{c.lanes}_G{c.group}"


def generate(compiled, out: Path, board_name: str | None = None, cores: int = 1) -> dict[str, Path]:
    """The recipe files for the compiled build ``compiled`` (its board unless ``board_name`` says, and then they
    must agree: the part and clock were fixed at compile time)."""
    c = read_compiled(compiled)
    if board_name is not None and board_name.lower() != c.board.lower():
        get_board(board_name)  # an unknown name is reported as such
        raise ValueError(f"{c.path} was compiled for {c.board!r}, not {board_name!r}: recompile with "
                         f"`accllm compile ... --target {board_name}`")
    board = get_board(c.board)
    top = find_hls_top(c.hls)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}

    def here(p: Path) -> Path:
        # The recipe's Makefile runs vitis_hls in this folder: paths relative to it keep a copied build working.
        return Path(os.path.relpath(Path(p).resolve(), out.resolve()))

    written["blackbox.json"] = out / "blackbox.json"
    written["blackbox.json"].write_text(
        json.dumps(blackbox_json(c.lanes, c.group, str(here(c.hls / BLACKBOX_C))), indent=1) + "\n")
    from . import engine_kernel as ek

    engine = ek.engine_of(c.path)  # the engine RTL kernel the HLS kernel drives through its streams
    engine_src = []
    if engine is not None:
        written[ek.WRAPPER_FILE] = out / ek.WRAPPER_FILE
        written[ek.WRAPPER_FILE].write_text(ek.wrapper_v(engine))
        engine_src = [Path(ek.WRAPPER_FILE)] + [here(f) for f in ek.rtl_files()]
    written["hls.tcl"] = out / "hls.tcl"
    written["hls.tcl"].write_text(hls_tcl(top, board, [here(top.source)], Path(written["blackbox.json"].name),
                                          engine=engine is not None))
    if board.flow == "vitis":
        written["link.cfg"] = out / "link.cfg"
        written["link.cfg"].write_text(link_cfg(top, board, engine))
        if engine is not None:
            written["package_engine.tcl"] = out / "package_engine.tcl"
            written["package_engine.tcl"].write_text(ek.package_tcl(engine, board.part, engine_src))
    else:
        written["bd_params.tcl"] = out / "bd_params.tcl"
        written["bd_params.tcl"].write_text(bd_params_tcl(top, board, engine, engine_src))
    pf, bf = format_versions()
    written["manifest_entry.json"] = out / "manifest_entry.json"
    written["manifest_entry.json"].write_text(
        json.dumps(manifest_entry(top, board, c.lanes, c.group, c.dims, cores, pf, bf, engine, block=c.block), indent=1)
                   + "\n")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Generate the per-build files of a bitstream recipe from a compiled build")
    p.add_argument("--compiled", type=Path, required=True, help="build directory written by `accllm compile`")
    p.add_argument("--board", default=None, help="must match the board the build was compiled for")
    p.add_argument("--out", type=Path, help="folder for the generated files")
    p.add_argument("--print", choices=("name", "board"), dest="show", help="print the bitstream's name or board and exit")
    a = p.parse_args(argv)
    if a.show:
        c = read_compiled(a.compiled)
        print(bitstream_name(c) if a.show == "name" else c.board)
        return 0
    if a.out is None:
        p.error("--out is required")
    for name, path in generate(a.compiled, a.out, a.board).items():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
