"""The engine's command stream (s_axis_cmd, accllm.sim.engine_regs): operations issued as register-write beats, as
the HLS kernel issues them, give the golden core's integers and exactly the beats of the same operations over
AXI4-Lite; W2/W4, block mode (nt > 1), output back-pressure, gaps in the command stream, the commands sent before
their activations, and an operation queued while another runs."""
import shutil

import pytest

from accllm.hw import engine_runner as er
from accllm.sim import engine_regs as regs

KINDS = ("dense", "sparse", "qk", "pv")


def test_encoding_roundtrip_and_refusals():
    beats = regs.op_commands(1, 4, 3, 256, [0x1_0000_2000, 0x40], [7, 5])
    assert [t for _, t in beats] == [False] * (len(beats) - 1) + [True]
    writes = [regs.decode_cmd(b) for b, _ in beats]
    assert writes[0] == (regs.MODE, 1 | 4 << 4) and writes[-1] == (regs.CTRL, regs.CTRL_START)
    assert (regs.ch_reg(0, regs.BASE_HI), 1) in writes and (regs.ch_reg(1, regs.ROWS), 5) in writes
    assert len(beats) == 4 + 3 * 2  # eng_op_beats of the C header
    with pytest.raises(ValueError, match="not a 32-bit register"):
        regs.encode_cmd(0x1002, 0)
    h = regs.c_header()
    assert "ENG_REG_NT = 0x01C" in h and "eng_op_beats(unsigned channels) { return 4 + 3 * channels; }" in h


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                    reason="building the Verilator model needs g++ and make")
def test_command_stream_equals_axilite_and_golden(tmp_path):
    eng = er.build_engine(er.EngineConfig())  # the engine tests' build: 2 channels x 3 cores, W2+W4, T = 4
    ops = [op for i, kind in enumerate(KINDS) for op in er.random_engine_ops(kind, 4, eng.cfg, seed=500 + i)]
    report = er.run_job(eng, ops, testcase="cmd_stream", work_dir=tmp_path, seed=9, latency=120, ar_stall=0.2,
                        r_stall=0.2, backpressure=0.3, act_gap=0.2, cmd_gap=0.3)
    print({k: report[k] for k in ("by_kind", "lite_equals_stream", "mismatches")})
    assert not report["axi_errors"] and report["mismatches"] == 0
    assert report["lite_equals_stream"] == f"{len(ops)}/{len(ops)}"
    paths = {}
    for op in report["ops"]:
        paths.setdefault(op.get("path", "axilite"), []).append(op)
    assert {len(v) for v in paths.values()} >= {len(ops)} and len(paths["queued"]) == 2 * (len(ops) // 2)
    lin = [op for op in paths["stream"] if op["kind"] in ("dense", "sparse")]
    assert {op["wbits"] for op in lin} == {2, 4} and max(op["nt"] for op in lin) > 1
    for op in paths["stream"]:
        assert op["done"] and op["words_read"] == op["section_words"] and op["outputs"] > 0
