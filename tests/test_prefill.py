"""Prefill mode: a block of prompt tokens per weight pass gives bit for bit the results of token by token (golden
model and C-simulation), reads the weights once per block (the kernel's own counter), and the perf model counts
ceil(n / T) weight passes."""
import math

import numpy as np
import pytest
import torch

from flow_fixtures import csim_both_ways, flow_paths, one_thread
from onnx_edits import copy_export, set_lambda

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="session")
def flow(tmp_path_factory):
    return flow_paths(tmp_path_factory)


def _ints(tr, d):
    from accllm.sim.golden import flatten_trace

    return [flatten_trace(d, layer).numpy() for layer in tr]


def _golden_both_ways(g, ids, block):
    g.reset()
    steps = []
    for t in ids:
        tr = []
        lt = g.step(t, tr)
        steps.append(tr)
    kv_steps = g.cache.packed()
    g.reset()
    blocks = []
    lb = g.prefill(ids, block=block, traces=blocks)
    return lt, kv_steps, steps, lb, g.cache.packed(), blocks


def _assert_same(d, lt, kv_t, steps, lb, kv_b, blocks):
    assert kv_b == kv_t
    assert torch.equal(lb, lt)
    assert len(blocks) == len(steps)
    mism = sum(int((a != b).sum()) for s, bl in zip(steps, blocks) for a, b in zip(_ints(s, d), _ints(bl, d)))
    assert mism == 0


def test_golden_prefill_equals_token_by_token(flow):
    from accllm.sim.golden import GoldenModel

    g = GoldenModel.load(flow[0])
    ids = [5, 300, 17, 4000, 2, 99, 1234, 7, 8, 9, 10, 11]
    _assert_same(g.d, *_golden_both_ways(g, ids, block=5))  # blocks of 5, 5, 2


def test_csim_prefill_bit_exact_with_token_by_token_and_golden(flow):
    from accllm.hls.csim import CSim, prefill_mismatches
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = flow
    c = CSim(build)
    T = c.prefill_block
    ids = [int(x) for x in np.random.default_rng(0).integers(0, c.vocab, T + 9)]  # a full block and a partial one
    c.reset()
    c.clear_weight_bytes()
    c.step(ids[0])
    one_pass = c.weight_bytes
    c.reset()
    c.clear_weight_bytes()
    for t in ids:
        lt = c.step(t)
    kv_t, bytes_t = c.kv.copy(), c.weight_bytes
    c.reset()
    c.clear_weight_bytes()
    lb = c.prefill(ids, trace=True)
    assert np.array_equal(c.kv, kv_t) and np.array_equal(lb, lt)
    assert c.weight_bytes <= math.ceil(len(ids) / T) * one_pass < bytes_t
    assert bytes_t == len(ids) * one_pass
    lg, counts = prefill_mismatches(GoldenModel.load(ckpt), c, ids)
    assert counts["integer_mismatches"] == 0
    assert int(np.argmax(lb)) == int(lg.argmax())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        c.prefill([1, c.vocab])
    with pytest.raises(ValueError, match="empty prompt"):
        c.prefill([])


def test_prefill_block_longer_than_the_window(flow, tmp_path):
    """Λ of 2 sinks + 6 window slots, blocks of 16 over 20 tokens: the ring wraps inside a block, so a token's KV
    write must not reach the keys an earlier token of the block attends (causal under the Λ mask)."""
    from accllm.hls.compiler import compile_export, weights_from_export
    from accllm.hls.csim import CSim
    from accllm.sim.golden import GoldenModel

    small = copy_export(flow[1], tmp_path / "onnx")
    set_lambda(small, 2, 6)
    compile_export(small, tmp_path / "build", progress=False, prefill_block=16)
    g = GoldenModel(weights_from_export(small, progress=False))
    ids = list(range(3, 23))
    lt, kv_t, steps, lb, kv_b, blocks = _golden_both_ways(g, ids, block=16)
    _assert_same(g.d, lt, kv_t, steps, lb, kv_b, blocks)
    c = CSim(tmp_path / "build")
    assert c.prefill_block == 16
    csim_both_ways(c, ids)
    mism = sum(int((a != c.prefill_trace(t, layer)).sum()) for t in range(len(ids))
               for layer, a in enumerate(_ints(blocks[t], g.d)))
    assert mism == 0


def test_compile_refuses_bad_prefill_block(flow, tmp_path):
    from accllm.hls.compiler import compile_export

    with pytest.raises(ValueError, match="prefill block"):
        compile_export(flow[1], tmp_path / "b", progress=False, prefill_block=0)


def test_perf_prefill_counts_a_weight_pass_per_block():
    from dataclasses import replace

    from accllm.sim.boards import get_board, load_model_shape
    from accllm.sim.perf import PerfModel, size_engine
    from accllm.sim.perf_fit import load_calibration

    board, shape = get_board("u280"), load_model_shape("llama-2-7b")
    timing, _ = load_calibration()
    base = size_engine(board)

    def pre(T, n):
        return PerfModel(shape, board, replace(base, prefill_block=T), timing).prefill(n)

    # one weight pass (decoder weights, norm weights): what a second block costs in bytes beyond its tokens' own
    one_pass = pre(1, 2)["bytes"] - pre(2, 2)["bytes"]
    assert one_pass > shape.linear_params() * 2 / 8 / 2  # at least the 2:4 W2 codes of the decoder linears
    for T in (1, 16, 32, 64):
        p = pre(T, 128)
        assert p["weight_passes"] == math.ceil(128 / T) and p["time_to_first_token_s"] == p["seconds"]
    # Going from T = 1 to T = 128 saves 127 passes over the decoder weights, nothing else.
    assert pre(1, 128)["bytes"] - pre(128, 128)["bytes"] == pytest.approx(127 * one_pass, rel=1e-6)
    assert pre(16, 1024)["bytes"] > pre(32, 1024)["bytes"] > pre(64, 1024)["bytes"]
    assert pre(64, 128)["block_buffer_bytes"] == 2 * pre(32, 128)["block_buffer_bytes"]
    with pytest.raises(ValueError, match="prefill block"):
        replace(base, prefill_block=0).validate()


def _top_and_kv(c, ids, by_token):
    c.reset()
    c.clear_weight_bytes()
    if by_token:
        for t in ids:
            c.step(t, logits=False)
    else:
        c.prefill(ids, logits=False)
    ids_k, vals = c.top
    return ids_k, vals, c.kv.copy(), c.weight_bytes


def test_kernel_top_prefill_equals_token_by_token_for_any_length(flow):
    """Every run goes through the kernel top accllm_top (n_tokens = 1 in decode): prompts of 1, T - 1, T, T + 1
    and 300 tokens (past the Λ window) give the KV cache bytes and on-chip top-K of token by token, reading the
    weights once per block; so does a prompt the host splits into runs of at most 2T tokens."""
    from accllm.hls.csim import CSim

    c = CSim(flow[2])
    T, cap = c.prefill_block, c.max_tokens
    assert cap % T == 0 and cap >= max(T, 300)
    rng = np.random.default_rng(3)
    _, _, _, one_pass = _top_and_kv(c, [5], by_token=True)
    per_token = _top_and_kv(c, [5, 6], by_token=False)[3] - one_pass  # its embedding row and RoPE table rows
    for n in (1, T - 1, T, T + 1, 300, 3 * T + 3):
        if n == 3 * T + 3:
            c.max_tokens = 2 * T  # runs of 2T tokens, then T + 3
        ids = [int(x) for x in rng.integers(0, c.vocab, n)]
        want_ids, want_vals, want_kv, _ = _top_and_kv(c, ids, by_token=True)
        got_ids, got_vals, got_kv, got_bytes = _top_and_kv(c, ids, by_token=False)
        assert got_kv.tobytes() == want_kv.tobytes(), f"n={n}: KV cache differs"
        assert np.array_equal(got_ids, want_ids) and got_vals.tobytes() == want_vals.tobytes(), f"n={n}: top-K differs"
        assert c.pos == n and got_bytes <= math.ceil(n / T) * one_pass + n * per_token
    # the traces of the prompt in two runs: the tokens either side of the runs' boundary and the last one
    c.reset()
    c.prefill(ids, trace=True, logits=False)
    c.reset()
    for t, x in enumerate(ids):
        check = t in (2 * T - 1, 2 * T, 2 * T + 1, n - 1)
        c.step(x, trace=check, logits=False)
        if check:
            assert all(np.array_equal(c.layer_trace(layer), c.prefill_trace(t, layer)) for layer in range(c.layers))
    head = slice(n * c.layers * c.trace_size, None)
    assert np.array_equal(c.block_trace[head], c.trace[c.layers * c.trace_size:])  # the last token's LM head


def test_kernel_top_refuses_an_empty_or_oversized_run(flow):
    """n_tokens = 0 or over the tokens port's size: the kernel computes nothing (KV cache as it was) and marks
    the top-K ids 0xFFFFFFFF; CSim and the C entry refuse it with a clear error."""
    import ctypes

    from accllm.hls.csim import CSim

    c = CSim(flow[2])
    c.reset()
    c.prefill([1, 2, 3])
    kv = c.kv.copy()
    p = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    for n in (0, c.max_tokens + 1):
        ids = np.arange(max(n, 1), dtype=np.uint32)
        c._top[:] = 0
        rc = c.lib.accllm_csim_prefill(p(c._program), ctypes.c_uint(len(c.instrs)), p(c._blob),
                                       ctypes.c_ulonglong(c._blob.nbytes), p(c.kv), p(ids), ctypes.c_uint(n),
                                       ctypes.c_uint(c.pos), p(c._top), p(c.logits), ctypes.c_uint(1), p(c.trace),
                                       ctypes.c_uint(0))
        assert rc == -1 and np.array_equal(c.kv, kv)
        assert (c._top[:c.topk] == 0xFFFFFFFF).all()
        with pytest.raises(ValueError, match=rf"a kernel run takes 1\.\.{c.max_tokens} tokens, got {n}"):
            c.run(ids[:n], c.trace, False, True)
    assert c.pos == 3


def test_csim_backend_prefills_a_prompt_in_blocks(tmp_path_factory):
    """The runtime's forward(ids) is one kernel run per max_tokens tokens (the tokens buffer): same KV cache image
    and logits as token by token; a run the kernel cannot take is refused on the host."""
    from flow_fixtures import demo_layout

    from accllm.host.backends import open_backend

    build = demo_layout(tmp_path_factory, "prefill_host")
    with open_backend("csim", build) as a, open_backend("csim", build) as b:
        T = a.driver.image.block
        assert a.driver.image.max_tokens >= 45
        ids = [int(x) for x in np.random.default_rng(1).integers(0, 4096, 45)]
        la = a.forward(ids)
        assert a.driver.runs == 1  # the prompt in one kernel run
        for t in ids:
            lb = b.driver.step(t)
        assert np.array_equal(la, lb) and a.driver.kv.image() == b.driver.kv.image()
        cap = a.driver.image.max_tokens = 2 * T  # the host may split a prompt into shorter runs: same results
        more = [int(x) for x in np.random.default_rng(2).integers(0, 4096, cap + 5)]
        la = a.forward(more)
        assert a.driver.runs == 3
        for t in more:
            lb = b.driver.step(t)
        ids += more
        assert b.driver.runs == len(ids)
        assert np.array_equal(la, lb)
        assert a.driver.kv.image() == b.driver.kv.image() and a.driver.kv.pos == b.driver.kv.pos == len(ids)
        assert np.array_equal(a.forward([7]), b.forward([7]))  # decode continues from the same state
        with pytest.raises(ValueError, match="outside the vocabulary"):
            a.forward([1, 5000])
        for n in (0, cap + 1):
            with pytest.raises(ValueError, match=rf"a kernel run takes 1\.\.{cap} tokens .*, got {n}"):
                a.driver.run([1] * n)
        assert a.driver.kv.pos == len(ids) + 1 and a.driver.fault is None


def test_prefill_on_the_engine_cosim_is_bit_exact(flow):
    """The C/RTL co-simulation with every linear on the Verilated engine in block mode (one weight pass per linear
    per block of T tokens) and QK/PV on the RTL core: the block entry's integers equal the golden prefill's."""
    from accllm.hls.csim import prefill_mismatches
    from accllm.hw import engine_native
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = flow
    sim = engine_native.engine_csim(build, {"latency": 60, "ar_stall": 10, "r_stall": 10, "out_stall": 10, "seed": 5})
    g = GoldenModel.load(ckpt)
    ids = [13, 250, 3000, 42]
    before = engine_native.stats(sim.lib)["protocol_errors"]
    engine_native.start_log(sim.lib)
    sim.reset()
    lc = sim.prefill(ids, trace=True)
    log = engine_native.read_log(sim.lib)
    lg, counts = prefill_mismatches(g, sim, ids)
    assert counts["integer_mismatches"] == 0 and int(np.argmax(lc)) == int(lg.argmax())
    assert engine_native.stats(sim.lib)["protocol_errors"] == before
    blocks = -(-len(ids) // sim.prefill_block)
    assert len(log) == 7 * g.d.layers * blocks + 1  # + the LM head (W4, on the engine) for the last token only
    kv_block = sim.kv.copy()
    sim.reset()
    for t, x in enumerate(ids):  # and the same integers and KV cache as running the tokens one at a time
        sim.step(x, trace=True)
        assert all(np.array_equal(sim.layer_trace(layer), sim.prefill_trace(t, layer)) for layer in range(g.d.layers))
    assert np.array_equal(sim.kv, kv_block)
