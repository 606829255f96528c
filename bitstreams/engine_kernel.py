"""The engine RTL (``hw/rtl/accllm_engine.sv``) as a kernel beside the HLS control kernel, and how the two link.

The HLS kernel built with ``ACCLLM_ENGINE_STREAM`` reaches the engine only through AXI4-Stream ports (command
beats of :mod:`accllm.sim.engine_regs`, activations, one result stream per channel). This module writes, for one
compiled build (its ``blob_map.json`` fixes channels, cores, lanes, word width; its prefill block fixes T):

- ``accllm_engine_kernel.v``  a wrapper with one named interface per channel (``m_axis_res<ch>``, ``m_axi_gmem<ch>``)
  over the engine's flat port vectors, ``ap_clk`` / ``ap_rst_n`` and ``s_axi_control`` (the engine's AXI4-Lite), so
  the Vivado IP packager infers every interface from the names (UG1118 "Inferring AXI Signals"). Generated from the
  engine's parsed port list: a port it does not know is an error, not a silent gap. Result ``tdata`` is padded to a
  power-of-two number of bytes (:func:`accllm.hls.engine_image.result_bits`, as the kernel reads it).
- ``package_engine.tcl``  (U280) Vivado batch script: package the wrapper as IP, then ``package_xo`` it as an RTL
  kernel (UG1393 "Packaging the RTL Code as a Vitis XO": S_AXI_CONTROL, 64-bit AXI4 masters, a clock associated with
  every interface; UG1702 ``package_xo``). Its kernel arguments are the channels' REGION registers, one per master,
  so ``sp=`` maps each master to a memory bank; XRT does not write a user-managed kernel's arguments, so the host
  writes each channel's buffer address there itself (``xrt::ip``, :mod:`accllm.host.xrt`).
- link lines (:func:`link_lines`): ``stream_connect=`` for every stream (UG1393 "Specifying Streaming Connections":
  ``<cu>.<out port>:<cu>.<in port>``) and ``sp=`` for every engine master (banks: :func:`engine_banks`).
- the manifest's ``engine_rtl`` (:func:`manifest_record`): what the host checks and where it loads each channel.
- block-design names (:func:`bd_lines`) for ``bitstreams/zynq/build_bd.tcl``: the wrapper as a module reference
  cell, AXIS interface nets between the cells, each master to an HP port.

Vitis HLS names element ``k`` of a stream-array argument ``<arg>_<k>`` (``eng_res_0`` ...).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

KERNEL = "accllm_engine_kernel"
CELL = f"{KERNEL}_0"
CONTROL = "s_axi_control"
# HLS kernel argument -> engine interface (kernel to engine); results come back per channel
TO_ENGINE = (("eng_cmd", "s_axis_cmd"), ("eng_act", "s_axis_act"))
RESULTS_ARG, RESULTS_IF = "eng_res", "m_axis_res"
WRAPPER_FILE = f"{KERNEL}.v"


def master(ch: int) -> str:
    return f"m_axi_gmem{ch}"


def result_port(ch: int) -> str:
    return f"{RESULTS_IF}{ch}"


def hls_result_port(ch: int) -> str:
    return f"{RESULTS_ARG}_{ch}"


@dataclass(frozen=True)
class EngineKernel:
    params: dict  # Verilog parameters of accllm_engine (accllm.sim.engine_regs.engine_params)

    @property
    def channels(self) -> int:
        return int(self.params["CHANNELS"])

    @property
    def res_bits(self) -> int:
        from accllm.hls.engine_image import result_bits

        return result_bits(int(self.params["CORES"]))


def engine_of(build_dir) -> EngineKernel | None:
    """The engine a compiled build runs on (None when it has no engine image)."""
    from accllm.hls.engine_image import MAP_FILE
    from accllm.hw.engine_native import build_block
    from accllm.sim.engine_regs import engine_params

    path = Path(build_dir) / MAP_FILE
    if not path.is_file():
        return None
    return EngineKernel(engine_params(json.loads(path.read_text()), build_block(build_dir)))


def rtl_files() -> list[Path]:
    from accllm.hw.engine_runner import engine_sources

    return engine_sources()


def engine_ports(eng: EngineKernel):
    from accllm.hw.engine_runner import TOPLEVEL

    from .verilog import module_ports

    return module_ports(rtl_files()[-1], TOPLEVEL, eng.params)[1]


def wrapper_v(eng: EngineKernel) -> str:
    """The wrapper's Verilog (see the module docstring)."""
    from accllm.hw.engine_runner import TOPLEVEL

    n = eng.channels
    decl, conn, body = [], [], []

    def vec(w: int) -> str:
        return f"[{w - 1}:0] " if w > 1 else ""

    for p in engine_ports(eng):
        d = "input " if p.direction == "input" else "output"
        if p.name in ("clk", "rst_n"):
            conn.append(f".{p.name}({'ap_clk' if p.name == 'clk' else 'ap_rst_n'})")
        elif p.name.startswith(("s_axil_", "s_axis_cmd_", "s_axis_act_")):
            name = p.name.replace("s_axil_", CONTROL + "_", 1)
            decl.append(f"    {d} wire {vec(p.width)}{name}")
            conn.append(f".{p.name}({name})")
        elif p.name.startswith(("m_axis_", "m_axi_")):
            if p.width % n:
                raise ValueError(f"{TOPLEVEL}.{p.name}: width {p.width} is not a multiple of {n} channels")
            w, field = p.width // n, p.name.split("_", 2)[2]
            name_of = (lambda ch: f"{result_port(ch)}_{field}") if p.name.startswith("m_axis_") else \
                (lambda ch: f"{master(ch)}_{field}")
            pad = eng.res_bits - w if field == "tdata" and p.name.startswith("m_axis_") else 0
            for ch in range(n):
                decl.append(f"    {d} wire {vec(w + pad)}{name_of(ch)}")
            if p.direction == "output":
                body.append(f"    wire [{p.width - 1}:0] e_{p.name};")
                for ch in range(n):
                    src = f"e_{p.name}[{ch * w} +: {w}]"
                    body.append(f"    assign {name_of(ch)} = {{{pad}'d0, {src}}};" if pad else
                                f"    assign {name_of(ch)} = {src};")
                conn.append(f".{p.name}(e_{p.name})")
            else:
                conn.append(f".{p.name}({{{', '.join(name_of(ch) for ch in reversed(range(n)))}}})")
        else:
            raise ValueError(f"{TOPLEVEL}: port {p.name} has no place in the kernel wrapper; extend {__name__}")
    busifs = ":".join([CONTROL, *(e for _, e in TO_ENGINE), *map(result_port, range(n)), *map(master, range(n))])
    params = ", ".join(f".{k}({v})" for k, v in eng.params.items())
    return "\n".join([
        f"// Generated by accllm.bitstreams.build from hw/rtl/{TOPLEVEL}.sv (its parsed port list): the engine as a",
        "// Vitis RTL kernel / Vivado module reference, one named interface per channel. Do not edit.",
        f"module {KERNEL} (",
        f"    (* X_INTERFACE_PARAMETER = \"ASSOCIATED_BUSIF {busifs}, ASSOCIATED_RESET ap_rst_n\" *)",
        "    input  wire ap_clk,",
        "    (* X_INTERFACE_PARAMETER = \"POLARITY ACTIVE_LOW\" *)",
        "    input  wire ap_rst_n,",
        ",\n".join(decl),
        ");",
        *body,
        f"    {TOPLEVEL} #({params}) u_engine (",
        "        " + ",\n        ".join(conn),
        "    );",
        "endmodule",
        "",
    ])


def engine_banks(channels: int, used: int, banks: int) -> list[int]:
    """The memory bank of each engine channel's master: after the ``used`` banks of the HLS kernel's bundles when
    the board has enough, else channel ch on bank ch. On U280 (32 HBM pseudo channels) an engine of 32 channels
    needs every bank, so channels 0 .. used-1 share their bank with one HLS bundle each: that bank's bandwidth is
    split between the engine's weight reads and the kernel's (KV, activations) traffic."""
    if channels > banks:
        raise ValueError(f"the engine has {channels} channels, the board {banks} memory banks")
    first = used if used + channels <= banks else 0
    return [first + ch for ch in range(channels)]


def link_lines(top_name: str, top_axis: list[str], eng: EngineKernel, banks: list[int]) -> list[str]:
    """[connectivity] lines: the engine's compute unit, a stream_connect per stream, an sp per master (channel ch
    on HBM[banks[ch]], :func:`engine_banks`)."""
    missing = [a for a in (*(k for k, _ in TO_ENGINE), RESULTS_ARG) if a not in top_axis]
    if missing:
        raise ValueError(f"{top_name} has no axis port {', '.join(missing)}: build its kernel with ACCLLM_ENGINE_STREAM")
    top_cu, eng_cu = f"{top_name}_1", f"{KERNEL}_1"
    lines = [f"nk={KERNEL}:1:{eng_cu}"]
    lines += [f"stream_connect={top_cu}.{k}:{eng_cu}.{e}" for k, e in TO_ENGINE]
    lines += [f"stream_connect={eng_cu}.{result_port(ch)}:{top_cu}.{hls_result_port(ch)}" for ch in range(eng.channels)]
    lines += [f"sp={eng_cu}.{master(ch)}:HBM[{banks[ch]}]" for ch in range(eng.channels)]
    return lines


def manifest_record(eng: EngineKernel, flow: str, banks: list[int] = ()) -> dict:
    """The manifest's ``engine_rtl`` (:class:`accllm.bitstreams.manifest.EngineRtl`) of a bitstream with this
    engine: the name the host opens it by (Vitis: the kernel, xrt::ip; Vivado: the block design's cell), what its
    INFO / T report, and (Vitis) each channel's memory bank."""
    from accllm.sim.engine_regs import identity

    return {"kernel": KERNEL if flow == "vitis" else CELL, **identity(eng.params), "banks": list(banks)}


def package_tcl(eng: EngineKernel, part: str, sources: list[Path]) -> str:
    """Vivado batch script packaging the wrapper into ``accllm_engine_kernel.xo`` (``sources``: the wrapper and the
    engine's RTL, as paths the script's folder reaches)."""
    from accllm.sim.engine_regs import region_reg

    args = " ".join(f"{{region{ch}:1:{ch}:{master(ch)}:0x8:0x{region_reg(ch):X}:void*}}" for ch in range(eng.channels))
    busifs = [CONTROL, *(e for _, e in TO_ENGINE), *map(result_port, range(eng.channels)),
              *map(master, range(eng.channels))]
    return "\n".join([
        "# Generated by accllm.bitstreams.build: vivado -mode batch -source package_engine.tcl",
        "# The engine RTL as a Vitis RTL kernel (UG1393 \"Packaging the RTL Code as a Vitis XO\", UG1702 package_xo).",
        f"create_project -force engine_pkg ./engine_pkg -part {part}",
        *[f"add_files {s}" for s in sources],
        f"set_property top {KERNEL} [current_fileset]",
        "update_compile_order -fileset sources_1",
        "ipx::package_project -root_dir ./engine_ip -vendor accllm.org -library kernel -taxonomy /KernelIP "
        "-import_files -set_current true",
        "set core [ipx::current_core]",
        *[f"ipx::associate_bus_interfaces -busif {b} -clock ap_clk $core" for b in busifs],
        "set_property sdx_kernel true $core",
        "set_property sdx_kernel_type rtl $core",
        "ipx::update_checksums $core",
        "ipx::save_core $core",
        "close_project",
        # the REGION registers are the arguments: the host's buffer address of each channel's bank lands there
        f"package_xo -force -xo_path {KERNEL}.xo -kernel_name {KERNEL} -ip_directory ./engine_ip "
        f"-ctrl_protocol user_managed -kernel_xml_args {{{args}}}",
        "exit",
        "",
    ])


def bd_lines(eng: EngineKernel, sources: list[Path]) -> list[str]:
    """``set`` lines of bd_params.tcl for the engine cell of bitstreams/zynq/build_bd.tcl."""
    links = [(k, e) for k, e in TO_ENGINE] + [(hls_result_port(ch), result_port(ch)) for ch in range(eng.channels)]
    return [
        f"set engine_module {KERNEL}",
        f"set engine_cell {CELL}",
        f"set engine_sources {{{' '.join(str(s) for s in sources)}}}",
        f"set engine_control {CONTROL}",
        f"set engine_m_axi {{{' '.join(master(ch) for ch in range(eng.channels))}}}",
        "set engine_axis {" + " ".join(f"{{{k} {e}}}" for k, e in links) + "}",
    ]


def interfaces(ports) -> set[str]:
    """Interface names the packager infers from a port list (``<if>_<signal>`` for AXI signal names)."""
    out = set()
    for p in ports:
        m = re.match(r"(.+?)_(t(?:data|valid|ready|last)|aw\w+|w(?:data|strb|valid|ready)|b(?:resp|valid|ready)|"
                     r"ar\w+|r(?:data|resp|last|id|valid|ready))$", p.name)
        if m:
            out.add(m.group(1))
    return out
