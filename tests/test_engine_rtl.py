"""The multi-channel engine (hw/rtl/accllm_engine.sv) in Verilator via cocotb: every output beat compared as
integers with the golden core fed from the same memory words (accllm.sim.weight_stream), under a memory of
>= 100 cycles read latency with random AR/R stalls and output back-pressure, AXI4 read rules checked. Linears run
with W2 or W4 codes (the MODE register's width field, per operation) and in block mode (1..T activation vectors
per weight pass)."""
import shutil

import numpy as np
import pytest

from accllm.hw import engine_runner as er

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                                reason="building the Verilator model needs g++ and make")
KINDS = ("dense", "sparse", "qk", "pv")
MEMORY = dict(latency=120, ar_stall=0.2, r_stall=0.25, backpressure=0.25)


@pytest.fixture(scope="module")
def engine():
    return er.build_engine(er.EngineConfig())  # 2 channels x 3 cores, 16 lanes, group 32, W2+W4, T = 4, 256-bit words


def assert_exact(report, kinds=KINDS):
    print(f"[{report['test']}] {report['by_kind']} bursts {report['bursts']} max in flight {report['max_outstanding_bursts']}")
    assert not report["axi_errors"]
    assert set(report["by_kind"]) == set(kinds)
    for kind, k in report["by_kind"].items():
        assert k["outputs"] > 0 and k["mismatches"] == 0 and k["tlast_mismatches"] == 0, (kind, k)
    assert all(op["done"] for op in report["ops"])


@pytest.mark.parametrize("cfg", [er.EngineConfig(), er.EngineConfig(channels=1, cores=8, wbits=4, channel_bits=512,
                                                                      group=128, lanes=8, burst=32, block=1),
                                 er.EngineConfig(wbits=2, block=16)])
def test_lint_wall_clean(cfg):
    proc = er.lint(cfg)
    assert proc.returncode == 0 and "%Warning" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_random_shapes_all_modes(engine, tmp_path):
    """Random shapes of every mode; linears with W2 or W4 codes and 1..T vectors, activations loaded with gaps."""
    ops = [op for i, kind in enumerate(KINDS) for op in er.random_engine_ops(kind, 6, engine.cfg, seed=100 + i)]
    report = er.run_job(engine, ops, work_dir=tmp_path, seed=3, act_gap=0.2, **MEMORY)
    assert_exact(report)
    assert max(report["max_outstanding_bursts"]) >= 2  # reads overlap the latency
    for op in report["ops"]:
        assert op["words_read"] == op["section_words"]  # every word of the section, once (whatever nt)
    lin = [op for op in report["ops"] if op["kind"] in ("dense", "sparse")]
    assert {op["wbits"] for op in lin} == {2, 4} and max(op["nt"] for op in lin) > 1


def test_block_reads_the_weights_once(engine, tmp_path):
    """One section run with 1 and with T vectors: the same words read once, T times the outputs, each vector's
    accumulators those of running it alone; compute-bound, the block takes about T times the core beats."""

    cfg, t = engine.cfg, engine.cfg.block
    rng = np.random.default_rng(5)
    rows, k = 6 * cfg.cores * cfg.channels, 256
    a = rng.integers(-128, 128, (t, k))
    codes, zeros = rng.integers(0, 16, (rows, k)), rng.integers(0, 16, (rows, k // cfg.group))
    ops = [er.make_op({"kind": "dense", "name": f"nt{len(x)}", "a": x, "codes": codes, "zeros": zeros, "wbits": 4},
                      cfg, seed=1) for x in (a[:1], a)]
    report = er.run_job(engine, ops, work_dir=tmp_path, seed=2, latency=120)
    assert_exact(report, kinds=("dense",))
    one, block = report["ops"]
    assert one["words_read"] == block["words_read"] == one["section_words"]
    assert block["outputs"] == t * one["outputs"]
    beats = (rows // cfg.channels // cfg.cores) * (k // cfg.group) * (cfg.group // cfg.lanes)  # channel 0
    assert t * beats <= block["cycles"] < t * beats + 200


def test_w4_on_a_w2_build_is_refused():
    cfg = er.EngineConfig(wbits=2)
    op = {"kind": "dense", "a": [1] * 32, "codes": [[0] * 32], "zeros": [[0]], "wbits": 4}
    with pytest.raises(ValueError, match="WBITS >= 4"):
        er.make_op(op, cfg)


def test_memory_corruption_is_caught(engine, tmp_path):
    op = er.random_engine_ops("dense", 1, engine.cfg, seed=7)[0]
    sec = op["sections"][0].copy()
    sec[5] ^= 0x40  # a code bit of the first record
    op["sections"][0] = sec
    with pytest.raises(RuntimeError, match="mismatch"):
        er.run_job(engine, [op], work_dir=tmp_path, seed=1, latency=100)


def test_reset_mid_stream(engine, tmp_path):
    ops = [max(er.random_engine_ops(kind, 4, engine.cfg, seed=200 + i), key=lambda o: o["nt"])
           for i, kind in enumerate(KINDS)]
    report = er.run_job(engine, ops, testcase="reset_mid_stream", work_dir=tmp_path, seed=4, **MEMORY)
    assert_exact(report)
    assert len(report["resets"]) == len(ops)
    assert max(op["nt"] for op in report["ops"]) > 1  # a block operation was cut by the reset too


def test_real_layer_tensors(engine, tmp_path):
    """Layer 1 of the bundled model: Brevitas W2 codes (dense and 2:4), the compressed checkpoint's own codes,
    and one head's QK / PV over 64 tokens."""
    from accllm.hw.rtl_ops import real_ops

    ops = [er.make_op(op, engine.cfg, seed=i) for i, op in enumerate(real_ops(None, layer=1, group=engine.cfg.group))]
    report = er.run_job(engine, ops, work_dir=tmp_path, seed=6, **MEMORY)
    assert_exact(report)
    assert any(op["name"].endswith("accllm.2:4") for op in report["ops"])


def test_w4_512bit_wide_group(tmp_path):
    """W2 and W4 codes, 512-bit words, group 128, 8 lanes, one channel of 5 cores, T = 2: another build."""
    cfg = er.EngineConfig(channels=1, cores=5, lanes=8, group=128, wbits=4, channel_bits=512, burst=32, block=2)
    eng = er.build_engine(cfg)
    ops = [op for i, kind in enumerate(KINDS) for op in er.random_engine_ops(kind, 3, cfg, seed=300 + i)]
    report = er.run_job(eng, ops, work_dir=tmp_path, seed=8, **MEMORY)
    assert_exact(report)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_thousand_random_shapes(engine, kind):
    ops = er.random_engine_ops(kind, 1000, engine.cfg, seed=1000 + KINDS.index(kind), max_k=256)
    # a work folder of its own: pytest prunes old basetemp folders, which other sessions may do mid-run
    report = er.run_job(engine, ops, seed=9, **MEMORY)
    assert_exact(report, kinds=(kind,))
    assert report["by_kind"][kind]["ops"] == 1000
    shapes = {(tuple(op["rows"]), op["k"]) for op in report["ops"]}
    assert len(shapes) >= 90  # of the 104 (rows, K) pairs a W2 mode can draw here
    if kind in ("dense", "sparse"):  # every code width and block size
        assert {(op["wbits"], op["nt"]) for op in report["ops"]} == {(w, n) for w in (2, 4)
                                                                     for n in range(1, engine.cfg.block + 1)}
