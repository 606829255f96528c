"""The performance model: beat counts as the core streams them, the RTL calibration, bytes per token, limits."""
import json

import numpy as np
import pytest

from accllm.host.cli import main as cli
from accllm.sim import core_stream as cs
from accllm.sim import perf
from accllm.sim import boards
from accllm.hw import calibrate
from accllm.sim import perf_fit


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_op_shape_matches_core_stream(lanes):
    rng = np.random.default_rng(lanes)
    group = 2 * lanes * 2
    for kind, dims in [("dense", dict(n=7, k=3 * group)), ("sparse", dict(n=5, k=2 * group)),
                       ("qk", dict(t=11, d=lanes + 3)), ("qk", dict(t=3, d=2 * lanes)),
                       ("pv", dict(t=3 * lanes + 5, d=6)), ("pv", dict(t=lanes, d=1))]:
        op = perf_fit.make_op(kind, dims, group, rng)
        st = {"dense": lambda: cs.dense_stream(op["a"], op["codes"], op["zeros"], group, lanes),
              "sparse": lambda: cs.sparse_stream(op["a"], op["vals"], op["pos"], op["zeros"], group, lanes),
              "qk": lambda: cs.qk_stream(op["q"], op["k"], op["kz"], lanes),
              "pv": lambda: cs.pv_stream(op["p"], op["v"], op["vz"], lanes)}[kind]()
        assert perf.op_shape(kind, lanes, **dims) == (st.beats, st.packets), (kind, dims)


def test_calibration_fit_and_held_out_error():
    """Refit the committed RTL measurements with the current beat model; held-out error must stay within 10%."""
    _, rec = perf_fit.load_calibration()
    fit = [{**s, "beats": perf.op_shape(s["kind"], s["lanes"], **s["dims"])[0],
            "packets": perf.op_shape(s["kind"], s["lanes"], **s["dims"])[1]} for s in rec["fit_samples"]]
    held = [{k: s[k] for k in ("lanes", "group", "kind", "dims", "cycles")} for s in rec["held_out_samples"]]
    held = [{**s, "beats": perf.op_shape(s["kind"], s["lanes"], **s["dims"])[0],
             "packets": perf.op_shape(s["kind"], s["lanes"], **s["dims"])[1]} for s in held]
    timing = perf_fit.fit_timing(fit)
    assert timing.per_beat == pytest.approx(rec["fit"]["per_beat"]) and timing.per_op == pytest.approx(rec["fit"]["per_op"])
    assert {(s["lanes"], s["group"]) for s in held} > {perf_fit.FIT_CONFIG}, "held-out set must include other core builds"
    assert perf_fit.timing_errors(timing, held)["max_abs_rel_error"] <= 0.10
    engine = rec["engine_samples"]  # measured shapes of the engine's calls (not recomputable from dims)
    assert len(engine) > 100 and {s["kind"] for s in engine} >= {"qk", "pv"}
    assert perf_fit.timing_errors(timing, engine)["max_abs_rel_error"] <= 0.10


def test_fit_recovers_known_coefficients():
    samples = [{"beats": b, "packets": p, "cycles": 1.25 * b + 2 * p + 7} for b, p in [(10, 1), (40, 4), (33, 11), (100, 3)]]
    t = perf_fit.fit_timing(samples)
    assert (t.per_beat, t.per_packet, t.per_op) == pytest.approx((1.25, 2.0, 7.0))


def _u280_7b(group):
    timing, _ = perf_fit.load_calibration()
    board = boards.get_board("u280")
    return perf.PerfModel(boards.load_model_shape("llama-2-7b"), board, perf.size_engine(
        board, group=group, model=boards.load_model_shape("llama-2-7b")), timing)


def test_llama7b_bytes_per_token_come_from_the_layout():
    """Decode reads each linear's weight-stream sections (accllm.sim.weight_stream.layout, the function the
    compiler's blob map uses), the LM head as DENSE W4 records (ws.HEAD_WBITS) and the Λ KV cache; no second byte
    formula.
    Llama-2-7B, 2:4 W2 at group 128: 1.89 bits per weight, 1.71 GB per token with a full cache (DESIGN.md's
    1.75-1.95 GB came from a 2.14-bit estimate; the full-payload format is smaller)."""
    from dataclasses import replace

    from accllm.sim import weight_stream as ws

    for group, max_bits in ((128, 2.3), (32, 2.6)):
        pm = _u280_7b(group)
        d, m = pm.decode(2048), pm.model
        lay = ws.layout(m, pm.fmt, pm.channels, sparse=True)
        head = ws.layout_linears([("lm_head", m.vocab, m.hidden)], replace(pm.fmt, wbits=ws.HEAD_WBITS), pm.channels,
                                 sparse=False)
        assert ws.layout(m, pm.fmt, pm.channels, sparse=True, lm_head=True).nbytes() == lay.nbytes() + head.nbytes()
        rows = {r["op"]: r for r in d["per_layer"]}
        per_layer = sum(r["bytes"] for r in d["per_layer"] if r["kind"] == "sparse")
        assert per_layer * m.layers == pytest.approx(lay.nbytes(), rel=1e-12)
        assert rows["lm_head"]["bytes"] == head.nbytes()
        assert pm.weight_bits_per_weight() == lay.bits_per_weight() <= max_bits
        kv = m.layers * 1024 * 2 * m.kv_heads * (m.head_dim * 4 + 20) / 8
        assert d["bytes_per_token"] == pytest.approx(lay.nbytes() + head.nbytes() + kv, rel=0.001)
    assert 1.6e9 <= _u280_7b(128).decode(2048)["bytes_per_token"] <= 1.95e9


@pytest.mark.parametrize("board", ["u280", "zcu104", "kv260"])
@pytest.mark.parametrize("model", ["llama-2-7b", "bundled"])
def test_decode_never_beats_the_bandwidth_limit(board, model):
    timing, _ = perf_fit.load_calibration()
    b = boards.get_board(board)
    shape = boards.load_model_shape(model)
    pm = perf.PerfModel(shape, b, perf.size_engine(b, window=124, model=shape), timing)
    d = pm.decode(4096)
    assert 0 < d["achieved_over_limit"] <= 1.0
    assert d["tokens_per_s"] <= b.mem_bandwidth_gbs * 1e9 / d["bytes_per_token"]
    # Λ: the per-token cost stops growing once the window is full
    assert pm.decode(10_000)["cycles"] == pytest.approx(d["cycles"])


def test_prefill_is_compute_bound_and_decode_memory_bound():
    pm = _u280_7b(128)
    pre, dec = pm.prefill(256), pm.decode(256)
    # blocks of T = 32 read the weights 8 times for 256 tokens (and every token reads its KV keys)
    assert pre["weight_passes"] == 8 and pre["ops_per_byte"] > 10 * dec["ops_per_byte"]
    lin = [r for r in dec["per_layer"] if r["kind"] == "sparse"]
    # decode linears move their weights in about the time the cores take: within the row-split imbalance
    assert all(r["memory_cycles"] / r["compute_cycles"] > 0.85 for r in lin)


def test_engine_validation_and_model_specs(tmp_path):
    with pytest.raises(ValueError, match="multiple of 2\\*lanes"):
        perf.Engine(lanes=16, group=16).validate()
    with pytest.raises(FileNotFoundError, match="not 'bundled' or a preset"):
        boards.load_model_shape(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match="missing intermediate_size"):
        boards.load_model_shape(str(tmp_path))
    cfg = json.loads((boards.MODELS_DIR / "llama-2-7b.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert boards.load_model_shape(str(tmp_path)).linear_params() == boards.load_model_shape("llama-2-7b").linear_params()
    b = boards.load_model_shape("bundled")
    assert b.layers >= 1 and b.hidden % b.heads == 0


def test_cli_perf(capsys, tmp_path):
    out = tmp_path / "p.json"
    assert cli(["perf", "--model", "llama-2-7b", "--board", "u280", "--group", "128", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "achieved/limit" in text and "q_proj" in text and "weight-stream layout" in text
    assert "resources: no engine slice synthesised" in text  # group 128 has no Yosys results: said, not guessed
    assert cli(["perf", "--model", "llama-2-7b", "--board", "u280"]) == 0
    assert "resources (Yosys synth_xilinx" in capsys.readouterr().out
    assert json.loads(out.read_text())["decode"]["bytes_per_token"] > 1e9
    assert cli(["perf", "--board", "nosuch"]) == 2
    assert "unknown board 'nosuch'; known boards: kv260, u280, zcu104" in capsys.readouterr().err


def test_calibration_against_fresh_rtl_runs(tmp_path_factory):
    """Measure now, on the Verilated core wrapper, held-out shapes and the real calls of the bundled model's
    engine (C/RTL co-simulation); the committed fit must predict every call within 10%."""
    from flow_fixtures import flow_paths

    timing, _ = perf_fit.load_calibration()
    samples = calibrate.measure_rtl(16, 32, perf_fit.HELD_OUT[(16, 32)], seed=7)
    assert perf_fit.timing_errors(timing, samples)["max_abs_rel_error"] <= 0.10
    _, _, build = flow_paths(tmp_path_factory)
    calls = calibrate.measure_engine(build, [5, 100, 7])
    assert {s["kind"] for s in calls} >= {"qk", "pv"} and len(calls) > 100
    assert perf_fit.timing_errors(timing, calls)["max_abs_rel_error"] <= 0.10
