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
    from accllm.sim.golden import LINEARS

    d, m = golden.d, sim.engine_map
    n_lin = len(LINEARS) * d.layers  # the LM head, when the image has its section, is linear n_lin
    lin = [rec for rec in log if rec["linear"] < n_lin]
    head = [rec for rec in log if rec["linear"] == n_lin]
    has_head = any(s["name"] == engine_native.HEAD_NAME for s in m["sections"])
    assert len(lin) == n_lin * len(ids) and len(head) == (len(ids) if has_head else 0)
    assert len(lin) + len(head) == len(log)
    assert {(rec["mode"], rec["wbits"]) for rec in lin} == {(gc.MODE_SPARSE if d.sparse else gc.MODE_DENSE, 2)}
    assert all((rec["mode"], rec["wbits"]) == (gc.MODE_DENSE, 4) for rec in head)  # the head: DENSE W4
    words = {}
    for s in m["sections"]:
        words[s["name"]] = words.get(s["name"], 0) + s["nbytes"] * 8 // m["format"]["channel_bits"]
    for rec in log:
        layer, j = divmod(rec["linear"], len(LINEARS))
        name = engine_native.HEAD_NAME if rec["linear"] == n_lin else f"layers.{layer}.{LINEARS[j]}"
        assert rec["words"] == words[name]
        assert rec["cycles"] > 150  # at least one memory latency
    assert {rec["mode"] for rec in core_log} == {gc.MODE_QK, gc.MODE_PV}  # and no linear on the single core


def test_engine_cosim_prefill_in_blocks(flow):
    """Prefill on the engine's block mode: each linear runs once per block of T tokens (nt = T, then the rest),
    reading its sections' words once per block, not per token; KV cache, logits and every layer's integers equal
    token-by-token decode on the same engine and the golden model's prefill; no protocol error."""
    import numpy as np

    from accllm.hls.csim import prefill_mismatches
    from accllm.hw import engine_native
    from accllm.sim.golden import LINEARS, GoldenModel

    ckpt, _, build = flow
    sim = engine_native.engine_csim(build, {"latency": 120, "ar_stall": 10, "r_stall": 10, "out_stall": 10, "seed": 5})
    T, d = sim.prefill_block, None
    ids = [int(x) for x in np.random.default_rng(1).integers(0, sim.vocab, T + 3)]
    before = engine_native.stats(sim.lib)["protocol_errors"]
    sim.reset()
    for t in ids:
        lt = sim.step(t)
    kv_t = sim.kv.copy()
    sim.reset()
    engine_native.start_log(sim.lib)
    lb = sim.prefill(ids, trace=True)
    log = engine_native.read_log(sim.lib)
    assert np.array_equal(sim.kv, kv_t) and np.array_equal(lb, lt)
    assert engine_native.stats(sim.lib)["protocol_errors"] == before
    golden = GoldenModel.load(ckpt)
    d = golden.d
    assert prefill_mismatches(golden, sim, ids)[1]["integer_mismatches"] == 0
    lin = [r for r in log if r["linear"] < d.layers * len(LINEARS)]
    assert len(lin) == 2 * d.layers * len(LINEARS)  # two blocks
    assert sorted({r["nt"] for r in lin}) == [3, T]
    words = {}
    for r in lin:
        words.setdefault(r["linear"], set()).add(r["words"])
    assert all(len(w) == 1 for w in words.values())  # a block of T reads what a block of 3 reads: one pass


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


def test_engine_harness_checks_the_kernel_streams(flow):
    """The harness takes the kernel's beats as they are: commands that name no section of the image, an operation
    without CTRL.start and tlast, or activation beats that are not NT vectors each count as protocol errors; the
    exact beats of a linear (accllm.sim.engine_regs.op_commands) run it."""
    import ctypes

    import numpy as np

    from accllm.hls.engine_image import section_table
    from accllm.hw import engine_native
    from accllm.sim import engine_regs as regs

    _, _, build = flow
    sim = engine_native.engine_csim(build, {"latency": 60, "ar_stall": 0, "r_stall": 0, "out_stall": 0, "seed": 2})
    m = sim.engine_map
    _, table = section_table(m)
    lanes, k = m["format"]["lanes"], int(m["sections"][0]["k"])
    mode = 1 if m["sections"][0]["mode"] == "sparse" else 0
    p = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731

    def run(beats, n_vectors=1):
        cmd = np.array([b for b, _ in beats], np.uint64)
        last = np.array([t for _, t in beats], np.uint8)
        act = np.ones(n_vectors * k, np.uint8)
        act_last = np.tile(np.eye(1, k // lanes, k // lanes - 1, np.uint8)[0], n_vectors)
        before = engine_native.stats(sim.lib)["protocol_errors"]
        lib = sim.lib
        lib.accllm_engine_streams.restype = ctypes.c_uint
        kept = lib.accllm_engine_streams(p(cmd), p(last), ctypes.c_uint(len(cmd)), p(act), p(act_last),
                                         ctypes.c_uint(len(act_last)))
        return int(kept), engine_native.stats(sim.lib)["protocol_errors"] - before

    offsets, rows = [int(x) for x in table[0, :, 0]], [int(r1 - r0) for _, r0, r1 in table[0]]
    good = regs.op_commands(mode, 2, 1, k, offsets, rows)
    try:
        kept, errors = run(good)
        assert errors == 0 and kept > 0
        shifted = regs.op_commands(mode, 2, 1, k, [offsets[0] + m["format"]["channel_bits"] // 8, *offsets[1:]],
                                   rows)
        assert run(shifted)[1] > 0  # names no linear of the image
        assert run([(b, False) for b, _ in good])[1] > 0  # no tlast on the start beat
        assert run(good, n_vectors=2)[1] > 0  # two vectors for an NT = 1 operation
    finally:
        engine_native.load_image(sim.lib, build)  # the bad beats above leave the engine mid-operation: reset it
