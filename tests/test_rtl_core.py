"""The SystemVerilog core (hw/rtl) in Verilator via cocotb, checked bit-exactly against accllm.sim.golden_core.

The core is built once per module (and reused across sessions from a temp build dir). Each run's cocotb
testbench logs and reports mismatch counts per operation; the tests assert they are all zero.
"""
import json
import shutil

import pytest

from accllm.hw import rtl_runner
from accllm.hw.rtl_ops import KINDS, random_ops, real_ops, steady_ops

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                                reason="building the Verilator model needs g++ and make")


@pytest.fixture(scope="module")
def core():
    return rtl_runner.build_core()


def summarize(report: dict) -> str:
    return "; ".join(f"{k}: {v['outputs']} outputs, {v['mismatches']} mismatches, {v['tlast_mismatches']} tlast mismatches"
                     for k, v in report["by_kind"].items())


def assert_exact(report: dict, kinds=KINDS):
    print(f"[{report['test']}] {summarize(report)}")
    assert set(report["by_kind"]) == set(kinds)
    for kind, k in report["by_kind"].items():
        assert k["outputs"] > 0
        assert k["mismatches"] == 0 and k["tlast_mismatches"] == 0, f"{kind}: {k}"
    assert report["mismatches"] == 0


@pytest.mark.parametrize("lanes", [4, 16, 32])
def test_lint_wall_clean(lanes):
    proc = rtl_runner.lint(lanes=lanes, group=2 * lanes * 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "%Warning" not in proc.stdout + proc.stderr


def test_random_all_modes_under_backpressure(core, tmp_path):
    ops = [op for kind in KINDS for op in random_ops(kind, 400, seed=11, lanes=core.lanes, group=core.group)]
    report = rtl_runner.run_job(core, ops, work_dir=tmp_path, seed=5, backpressure=0.3, gaps=0.25)
    assert_exact(report)
    assert report["outputs"] >= 4 * 400


def test_real_layer_tensors(core, tmp_path):
    ops = real_ops(None, layer=1, group=core.group)  # the bundled model
    report = rtl_runner.run_job(core, ops, work_dir=tmp_path, seed=6, backpressure=0.2, gaps=0.1)
    assert_exact(report)
    dense = next(r for r in report["ops"] if r["kind"] == "dense")
    assert dense["outputs"] == ops[0]["codes"].shape[0] * ops[0]["codes"].shape[1] // core.group


def test_reset_mid_stream_all_modes(core, tmp_path):
    ops = [random_ops(kind, 48, seed=12, lanes=core.lanes, group=core.group)[0] for kind in KINDS]
    report = rtl_runner.run_job(core, ops, testcase="reset_mid_stream", work_dir=tmp_path, seed=7,
                                backpressure=0.2, gaps=0.2)
    assert_exact(report)


def test_full_throughput_without_backpressure(core, tmp_path):
    """One beat per cycle: cycles = beats + pipeline latency, so utilization is near 1 once the op is long."""
    report = rtl_runner.run_job(core, steady_ops(core.lanes, core.group, size=128), work_dir=tmp_path)
    assert_exact(report)
    for r in report["ops"]:
        assert r["cycles"] <= r["beats"] + 8, r
        assert r["utilization"] >= 0.9, r


@pytest.mark.slow
def test_random_10k_vectors_per_mode(core, tmp_path):
    ops = [op for kind in KINDS for op in random_ops(kind, 10_000, seed=21, lanes=core.lanes, group=core.group)]
    report = rtl_runner.run_job(core, ops, work_dir=tmp_path, seed=8, backpressure=0.25, gaps=0.15)
    assert_exact(report)
    assert all(k["outputs"] >= 10_000 for k in report["by_kind"].values())


@pytest.mark.slow
def test_real_tensors_all_layer_linears(core, tmp_path):
    linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ops = real_ops(None, layer=0, head=3, tokens=128, group=core.group, linears=linears)
    report = rtl_runner.run_job(core, ops, work_dir=tmp_path, seed=9, backpressure=0.1, gaps=0.1)
    assert_exact(report)


@pytest.mark.slow
def test_a_wrong_core_is_caught(tmp_path):
    """Mutant: drop the DSP packing's borrow correction. The testbench must report mismatches and fail."""
    src = rtl_runner.RTL_DIR / "accllm_dot2.sv"
    text = src.read_text()
    assert "+ 13'(p[K-1])" in text
    for name in rtl_runner.RTL_SOURCES:
        shutil.copy(rtl_runner.RTL_DIR / name, tmp_path / name)
    (tmp_path / "accllm_dot2.sv").write_text(text.replace("+ 13'(p[K-1])", ""))
    mutant = rtl_runner.build_core(build_dir=tmp_path / "build", rtl_dir=tmp_path)
    ops = [op for kind in KINDS for op in random_ops(kind, 64, seed=13)]
    with pytest.raises(RuntimeError, match="failed"):
        rtl_runner.run_job(mutant, ops, work_dir=tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    print(f"[mutant] {summarize(report)}")
    assert all(k["mismatches"] > 0 for k in report["by_kind"].values())
