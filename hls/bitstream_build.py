"""Per-build files of the bitstream recipes in ``bitstreams/``, generated from the real sources.

The recipes (Makefiles and static Tcl in ``bitstreams/``) need names and ports that live in the sources: the
HLS kernel top (``hls/templates``: its function name, m_axi and s_axilite interfaces) and the RTL core
(``hw/rtl/accllm_core.sv``: module name, parameters, ports). This module reads both and writes, into a build
folder:

- ``blackbox.json``  Vitis HLS RTL blackbox description of ``bitstreams/common/accllm_core_hls_bb.v`` (the core
  behind the FIFO/ap_ctrl_chain interface HLS expects), ``add_files -blackbox``.
- ``hls.tcl``        Vitis HLS project: sources, top, blackbox, part/platform, clock, export (.xo for Vitis,
  IP catalog for Vivado).
- ``link.cfg``       (U280) ``v++ --link`` config: one compute unit, every m_axi port on its own HBM pseudo
  channel via ``[connectivity] sp=``, kernel clock.
- ``bd_params.tcl``  (Zynq boards) the names the static ``bitstreams/zynq/build_bd.tcl`` needs.
- ``manifest_entry.json``  the manifest entry of this bitstream, unbuilt (no checksums until a real build).

    python -m accllm.hls.bitstream_build --board u280 --out build/u280
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from accllm.hls.project import TEMPLATES
from accllm.sim.perf import Board, get_board, load_boards

ROOT = Path(__file__).resolve().parent.parent
RTL_DIR = ROOT / "hw" / "rtl"
BITSTREAMS = ROOT / "bitstreams"
WRAPPER = BITSTREAMS / "common" / "accllm_core_hls_bb.v"
WRAPPER_MODULE = "accllm_core_hls_bb"
CORE_MODULE = "accllm_core"


# ---------------------------------------------------------------- Verilog port lists

@dataclass(frozen=True)
class Port:
    direction: str  # input / output
    name: str
    width: int


def _eval_width(expr: str | None, params: dict[str, int]) -> int:
    if not expr:
        return 1
    hi, lo = expr.split(":")
    env = dict(params)
    if not re.fullmatch(r"[\w\s+\-*/()]+", hi + lo):
        raise ValueError(f"cannot evaluate the port range [{expr}]")
    return int(eval(hi, {"__builtins__": {}}, env)) - int(eval(lo, {"__builtins__": {}}, env)) + 1  # noqa: S307


def module_ports(path: Path, module: str, params: dict[str, int] | None = None) -> tuple[dict[str, int], list[Port]]:
    """(parameter defaults, ports) of ``module`` in a Verilog/SystemVerilog file (ANSI-style header)."""
    text = re.sub(r"//[^\n]*", "", Path(path).read_text())
    m = re.search(rf"\bmodule\s+{module}\s*(#\s*\((?P<params>.*?)\))?\s*\((?P<ports>.*?)\)\s*;", text, re.S)
    if not m:
        raise ValueError(f"module {module} not found in {path}")
    defaults = {k: int(v) for k, v in re.findall(r"parameter\s+(?:int\s+)?(\w+)\s*=\s*(\d+)", m.group("params") or "")}
    env = {**defaults, **(params or {})}
    ports = []
    for decl in m.group("ports").split(","):
        pm = re.match(r"\s*(input|output|inout)\s+(?:wire|logic|reg)?\s*(?:signed\s*)?(?:\[([^\]]+)\])?\s*(\w+)\s*$", decl)
        if not pm:
            raise ValueError(f"{path}: cannot parse the port declaration {decl.strip()!r} of {module}")
        ports.append(Port(pm.group(1), pm.group(3), _eval_width(pm.group(2), env)))
    return env, ports


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
            args = [re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*$", a.strip())[0] for a in fm.group(2).split(",") if a.strip()]
            m_axi = {f["port"]: f.get("bundle", f"m_axi_{f['port']}") for f in fields if f.get("mode") == "m_axi"}
            lite = [f["port"] for f in fields if f.get("mode") == "s_axilite"]
            bundle = next((f.get("bundle", "control") for f in fields
                           if f.get("mode") == "s_axilite" and f.get("port") == "return"), "control")
            found.append(HlsTop(fm.group(1), src, args, m_axi, lite, bundle))
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
    rtl = [str(WRAPPER)] + [str(RTL_DIR / f) for f in ("accllm_dot2.sv", "accllm_operand_decode.sv",
                                                        "accllm_out_fifo.sv", "accllm_core.sv")]
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
        "c_files": [{"c_file": c_file, "cflag": f"-DACCLLM_LANES={lanes} -DACCLLM_GROUP={group}"}],
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


def hls_tcl(top: HlsTop, board: Board, sources: list[Path], blackbox: Path, project: str = "accllm_hls") -> str:
    vitis = board.flow == "vitis"
    target = f"set_part {{{board.part}}}"
    lines = [f"# Generated by accllm.hls.bitstream_build for board {board.name}: run with vitis_hls -f hls.tcl",
             f"open_project -reset {project}",
             f"set_top {top.name}"]
    lines += [f"add_files {s} -cflags \"-std=c++14 -I{TEMPLATES}\"" for s in sources]
    lines += [f"add_files -blackbox {blackbox}",
              f"open_solution -reset sol -flow_target {'vitis' if vitis else 'vivado'}",
              target,
              f"create_clock -period {board.clock_mhz}MHz -name default",
              "csynth_design",
              f"export_design -format {'xo -output ' + top.name + '.xo' if vitis else 'ip_catalog'} -rtl verilog",
              "exit"]
    return "\n".join(lines) + "\n"


def link_cfg(top: HlsTop, board: Board) -> str:
    """v++ --link config (UG1702 [connectivity] nk/sp): each m_axi argument on its own HBM pseudo channel."""
    if board.flow != "vitis":
        raise ValueError(f"{board.name} is built with Vivado, not v++ --link")
    if len(top.m_axi) > board.mem_ports:
        raise ValueError(f"{top.name} has {len(top.m_axi)} m_axi ports, {board.name} has {board.mem_ports} memory channels")
    cu = f"{top.name}_1"
    lines = ["# Generated by accllm.hls.bitstream_build: v++ --link --config link.cfg",
             f"platform={board.extra['platform']}", "", "[connectivity]", f"nk={top.name}:1:{cu}"]
    lines += [f"sp={cu}.{arg}:HBM[{i}]" for i, arg in enumerate(top.m_axi)]
    lines += ["", "[clock]", f"freqHz={int(board.clock_mhz * 1e6)}:{cu}", ""]
    return "\n".join(lines)


def bd_params_tcl(top: HlsTop, board: Board) -> str:
    """Names for bitstreams/zynq/build_bd.tcl (Vivado block design: Zynq UltraScale+ PS + the HLS IP)."""
    if board.flow != "vivado":
        raise ValueError(f"{board.name} is built with Vitis, not the Vivado block design")
    hp = [f"S_AXI_HP{i}_FPD" for i in range(min(len(top.m_axi), board.mem_ports))]
    return "\n".join([
        "# Generated by accllm.hls.bitstream_build: sourced by bitstreams/zynq/build_bd.tcl",
        f"set board_name {board.name}",
        f"set part {board.part}",
        f"set board_part_pattern {board.extra['board_part_pattern']}",
        f"set kernel {top.name}",
        f"set ip_vlnv xilinx.com:hls:{top.name}:1.0",
        f"set m_axi_ports {{{' '.join('m_axi_' + b for b in _unique(top.m_axi.values()))}}}",
        f"set hp_ports {{{' '.join(hp)}}}",
        f"set control_port s_axi_{top.control_bundle}",
        f"set clock_mhz {board.clock_mhz:g}",
        "",
    ])


def _unique(xs):
    seen = []
    for x in xs:
        if x not in seen:
            seen.append(x)
    return seen


def manifest_entry(top: HlsTop, board: Board, lanes: int, group: int, cores: int, program_format: int,
                   blob_format: int) -> dict:
    name = f"{board.name}_L{lanes}_G{group}"
    if board.flow == "vitis":
        arts = {"xclbin": {"path": f"{board.name}/{name}.xclbin"}}
    else:
        arts = {"bit": {"path": f"{board.name}/{name}.bit"}, "hwh": {"path": f"{board.name}/{name}.hwh"}}
    return {"name": name, "board": board.name, "flow": board.flow, "kernel": top.name,
            "engine": {"lanes": lanes, "group": group, "cores": cores, "out_depth": 8},
            "program_format": program_format, "blob_format": blob_format, "clock_mhz": board.clock_mhz,
            "built": False, "artifacts": arts, "tool": None, "recipe": "u280" if board.flow == "vitis" else "zynq"}


def format_versions() -> tuple[int, int]:
    """(program format, blob format) version numbers as the compiler defines them."""
    from accllm.hls import blob, program  # the compiler's one definition of the formats

    return int(program.VERSION), int(blob.VERSION)


def generate(board_name: str, out: Path, lanes: int = 16, group: int = 32, cores: int = 1) -> dict[str, Path]:
    board = get_board(board_name)
    top = find_hls_top()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    bb_c = BITSTREAMS / "common" / "accllm_core_hls_bb.cpp"
    written["blackbox.json"] = out / "blackbox.json"
    written["blackbox.json"].write_text(json.dumps(blackbox_json(lanes, group, str(bb_c)), indent=1) + "\n")
    sources = [top.source] if top.source.suffix == ".cpp" else sorted(TEMPLATES.glob("*.cpp"))
    written["hls.tcl"] = out / "hls.tcl"
    written["hls.tcl"].write_text(hls_tcl(top, board, sources, written["blackbox.json"]))
    if board.flow == "vitis":
        written["link.cfg"] = out / "link.cfg"
        written["link.cfg"].write_text(link_cfg(top, board))
    else:
        written["bd_params.tcl"] = out / "bd_params.tcl"
        written["bd_params.tcl"].write_text(bd_params_tcl(top, board))
    pf, bf = format_versions()
    written["manifest_entry.json"] = out / "manifest_entry.json"
    written["manifest_entry.json"].write_text(
        json.dumps(manifest_entry(top, board, lanes, group, cores, pf, bf), indent=1) + "\n")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Generate the per-build files of a bitstream recipe")
    p.add_argument("--board", required=True, help=f"one of {', '.join(sorted(load_boards()))}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lanes", type=int, default=16)
    p.add_argument("--group", type=int, default=32)
    a = p.parse_args(argv)
    for name, path in generate(a.board, a.out, a.lanes, a.group).items():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
