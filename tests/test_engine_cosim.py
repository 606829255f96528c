"""C/RTL co-simulation on the engine: the compiled bundled model with every linear on the Verilated multi-channel
engine (reading weights.engine from a memory model with latency and random stalls), QK/PV on the Verilated core."""
import pytest

from flow_fixtures import PROMPTS, flow_paths, one_thread

from accllm.sim import golden_core as gc

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    return flow_paths(tmp_path_factory)


def test_engine_cosim_is_bit_exact_with_golden(flow):
    """Every layer's integers equal the golden model's with a 150-cycle memory and 20 % stalls on AR, R and the
    output streams; every linear of every token ran on the engine, reading exactly its sections' words, with no
    AXI / stream rule broken; QK/PV ran on the RTL core."""
    from transformers import AutoTokenizer

    from accllm.hls.csim import compare_with_golden
    from accllm.hw import engine_native, rtl_native
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = flow
    golden = GoldenModel.load(ckpt)
    sim = engine_native.engine_csim(build, {"latency": 150, "ar_stall": 20, "r_stall": 20, "out_stall": 20, "seed": 3})
    ids = AutoTokenizer.from_pretrained(ckpt).encode(PROMPTS[1])[:4]
    before = engine_native.stats(sim.lib)["protocol_errors"]
    engine_native.start_log(sim.lib)
    rtl_native.start_log(sim.lib)
    r = compare_with_golden(golden, sim, ids)
    log, core_log = engine_native.read_log(sim.lib), rtl_native.read_log(sim.lib)
    assert r["integers_compared"] > 0 and r["integer_mismatches"] == 0, r
    assert engine_native.stats(sim.lib)["protocol_errors"] == before
    d, m = golden.d, sim.engine_map
    assert len(log) == 7 * d.layers * len(ids)
    assert {rec["mode"] for rec in log} == {gc.MODE_SPARSE if d.sparse else gc.MODE_DENSE}
    words = {}
    for s in m["sections"]:
        words[s["name"]] = words.get(s["name"], 0) + s["nbytes"] * 8 // m["format"]["channel_bits"]
    from accllm.sim.golden import LINEARS

    for rec in log:
        layer, j = divmod(rec["linear"], len(LINEARS))
        assert rec["words"] == words[f"layers.{layer}.{LINEARS[j]}"]
        assert rec["cycles"] > 150  # at least one memory latency
    assert {rec["mode"] for rec in core_log} == {gc.MODE_QK, gc.MODE_PV}  # and no linear on the single core


def test_engine_cosim_counts_reads_outside_the_image(flow):
    """The memory model checks every burst: with each channel's region cut short by one 4 KiB page, the reads of
    its last sections fall outside it and are counted as protocol errors (the step then fails)."""
    import ctypes

    import numpy as np

    from accllm.hls.engine_image import IMAGE_FILE
    from accllm.hw import engine_native

    ckpt, _, build = flow
    sim = engine_native.engine_csim(build, {"latency": 100, "ar_stall": 0, "r_stall": 0, "out_stall": 0, "seed": 1})
    m = sim.engine_map
    image = np.frombuffer((build / IMAGE_FILE).read_bytes(), np.uint8).copy()
    offs = np.asarray(m["channel_offsets"], np.uint64)
    used = np.asarray(m["channel_bytes"], np.uint64)
    short = np.maximum(used, 4096).astype(np.uint64) - np.uint64(4096)
    n, table = engine_native.section_table(m)
    p = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    sim.lib.accllm_engine_image(p(image), p(offs), p(short), ctypes.c_uint(n), p(np.ascontiguousarray(table)))
    before = engine_native.stats(sim.lib)["protocol_errors"]
    try:
        sim.reset()
        sim.step(5)
        assert engine_native.stats(sim.lib)["protocol_errors"] > before
    finally:
        engine_native.load_image(sim.lib, build)
