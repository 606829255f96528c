"""The RTL core behind its HLS blackbox wrapper, Verilated to native code: alone on random operations (also
under FIFO stalls), and linked into the engine kernel in place of the C model (C/RTL co-simulation)."""
import numpy as np
import pytest

from flow_fixtures import PROMPTS, demo_layout, flow_paths, one_thread

from accllm.sim import golden_core as gc
from accllm.sim.perf import op_shape
from accllm.sim.perf_fit import core_stream_of, make_op

_one_thread = pytest.fixture(autouse=True)(one_thread)

SHAPES = [("dense", dict(n=5, k=96)), ("sparse", dict(n=6, k=128)), ("qk", dict(t=9, d=40)), ("qk", dict(t=1, d=32)),
          ("pv", dict(t=37, d=5)), ("pv", dict(t=1, d=32)), ("dense", dict(n=1, k=32))]


@pytest.fixture(scope="module")
def core():
    from accllm.hw.rtl_native import RtlCore

    c = RtlCore(16, 32)
    yield c
    c.stalls(0, 0)


@pytest.mark.parametrize("stall_in,stall_out", [(0, 0), (30, 0), (0, 60), (40, 40)])
def test_wrapper_is_bit_exact_and_keeps_the_protocol(core, stall_in, stall_out):
    """Every mode through ap_ctrl_chain + FIFO ports: golden accumulators, every beat consumed, no write to a
    full FIFO (the harness counts any protocol violation and run() raises on it)."""
    core.stalls(stall_in, stall_out, seed=7)
    rng = np.random.default_rng(1)
    cycles = ideal = 0
    for kind, dims in SHAPES:
        op = make_op(kind, dims, 32, rng)
        st, gold = core_stream_of(op, 16)
        out, rec = core.run(st)
        gold = gold.numpy().reshape(-1)
        assert (out != gold).sum() == 0, f"{kind} {dims}: {(out != gold).sum()} of {gold.size} outputs differ"
        beats, packets = op_shape(kind, 16, **dims)
        assert (rec["beats"], rec["packets"], rec["outputs"]) == (beats, packets, gold.size)
        if stall_in == stall_out == 0:
            assert rec["cycles"] == beats + 6, rec  # II=1 streaming plus the call's fixed latency
        cycles, ideal = cycles + rec["cycles"], ideal + beats + 6
    assert (cycles > ideal) == bool(stall_in or stall_out)


def test_wrapper_reports_a_short_stream(core):
    """A call that promises more outputs than its beats can make is caught as a protocol error, not a hang."""
    from accllm.hw import rtl_native

    core.stalls(0, 0)
    rng = np.random.default_rng(2)
    st, _ = core_stream_of(make_op("qk", dict(t=4, d=32), 32, rng), 16)
    before = rtl_native.load_stats(core.lib)["protocol_errors"]
    st.packets += 1  # one output more than the stream holds
    with pytest.raises(RuntimeError, match="broke the blackbox protocol"):
        core.run(st)
    assert rtl_native.load_stats(core.lib)["protocol_errors"] > before


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    return flow_paths(tmp_path_factory)


def test_engine_with_rtl_core_is_bit_exact_with_golden(flow):
    """The whole engine kernel with its integer core calls running the Verilated RTL: every layer's integers
    equal the golden model's, and every core operation of the model went through the RTL wrapper."""
    from transformers import AutoTokenizer

    from accllm.hls.csim import compare_with_golden
    from accllm.hw import rtl_native
    from accllm.hw.rtl_native import rtl_csim
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = flow
    golden = GoldenModel.load(ckpt)
    sim = rtl_csim(build)
    ids = AutoTokenizer.from_pretrained(ckpt).encode(PROMPTS[2])[:6]
    errors = rtl_native.load_stats(sim.lib)["protocol_errors"]
    rtl_native.start_log(sim.lib)
    r = compare_with_golden(golden, sim, ids)
    log = rtl_native.read_log(sim.lib)
    assert r["integers_compared"] > 0 and r["integer_mismatches"] == 0
    assert rtl_native.load_stats(sim.lib)["protocol_errors"] == errors
    d = golden.d
    lin_mode = gc.MODE_SPARSE if d.sparse else gc.MODE_DENSE
    # the W4 LM head runs on the core as QK-mode packets (one W4 group = one QK packet), once per token
    per_token = {lin_mode: 7 * d.layers, gc.MODE_QK: d.heads * d.layers + 1, gc.MODE_PV: d.heads * d.layers}
    for mode, n in per_token.items():
        assert sum(rec["mode"] == mode for rec in log) == n * len(ids), gc.MODE_NAMES[mode]
    # the beats of each call are what the performance model counts for that shape
    L = 16
    for rec in log:
        if rec["mode"] == gc.MODE_QK:
            t = rec["packets"]
            assert rec["beats"] == op_shape("qk", L, t=t, d=d.head_dim)[0]
        elif rec["mode"] == gc.MODE_PV:
            assert rec["packets"] == d.head_dim
            t_pad = rec["beats"] // d.head_dim * L
            assert rec["beats"] == op_shape("pv", L, t=t_pad, d=d.head_dim)[0]


def test_rtl_backend_streams_the_csim_tokens(tmp_path_factory):
    from accllm.host.backends import open_backend
    from accllm.host.build import BuildDir
    from accllm.host.generate import Generation
    from accllm.host.sampling import SamplingParams

    build = demo_layout(tmp_path_factory, "rtl_backend")
    tok = BuildDir(build).tokenizer()
    outs = {}
    for name in ("csim", "rtl"):
        with open_backend(name, build) as be:
            gen = Generation(be, tok, PROMPTS[0], SamplingParams(max_tokens=5))
            outs[name] = [ev.token_id for ev in gen]
    assert outs["rtl"] == outs["csim"] and len(outs["rtl"]) > 0
