"""W4 decoder linears end to end (issue 15.3): a W4A8KV4 checkpoint (2:4 and dense) exported, compiled to LINEAR
instructions with 4-bit codes and W4 weight-stream sections, run by the golden model and the C-simulation bit for bit
(token by token and in prefill blocks) and by the C/RTL co-simulation on the engine; other widths refused."""
import numpy as np
import pytest
import torch

from flow_fixtures import PROMPTS, csim_both_ways, one_thread
from onnx_edits import copy_export
from quant_fixtures import tiny_model, tokenizer

_one_thread = pytest.fixture(autouse=True)(one_thread)

SMALL = dict(weight_bits=4, weight_method="rtn", calib_samples=4, calib_seqlen=32, group_size=32, sinks=2, window=14)
STREAMS = [[11, 250, 3000, 42, 7], [5, 17, 300, 42, 7, 99, 1000, 2048, 4095, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]


def w4_checkpoint(out, sparsity: str, seed: int = 7):
    """A tiny random Llama compressed at W4A8KV4 (+ Λ 2 + 14), its untied head far from uniform so that greedy
    tokens depend on the hidden state."""
    from accllm.quant.checkpoint import save_compressed
    from accllm.quant.compress import compress
    from accllm.quant.quantize import CompressionSettings

    model = tiny_model(seed=seed, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    s = CompressionSettings(sparsity=sparsity, **SMALL)
    model, masks = compress(model, tokenizer(), s, device="cpu", progress=False)
    save_compressed(model, tokenizer(), s, masks, out)
    return out


@pytest.fixture(scope="module", params=["2:4", "none"], ids=["sparse", "dense"])
def w4(request, tmp_path_factory):
    from accllm.hls.flow import export_and_compile

    root = tmp_path_factory.mktemp(f"w4_{request.param.replace(':', '')}")
    ckpt = w4_checkpoint(root / "ckpt", request.param)
    onnx_dir, build = export_and_compile(ckpt, root)
    return ckpt, onnx_dir, build


def test_w4_compiles_to_w4_instructions_and_sections(w4):
    from accllm.hls import program as prog
    from accllm.hls.engine_image import MAP_FILE
    from accllm.sim import golden_core as gc
    from accllm.sim import weight_stream as ws
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = w4
    d = GoldenModel.load(ckpt).d
    assert d.wbits == 4
    _, instrs, _, _, _ = prog.read_compiled(build)
    lin = [prog.split_mode(i.mode) for i in instrs if i.op == prog.OP_LINEAR]
    mode = gc.MODE_SPARSE if d.sparse else gc.MODE_DENSE
    assert len(lin) == 7 * d.layers and set(lin) == {(mode, 4)}
    import json

    m = json.loads((build / MAP_FILE).read_text())
    assert m["format"]["wbits"] == 4
    assert {s["wbits"] for s in m["sections"] if s["name"] != "lm_head"} == {4}
    # records of 4-bit codes: fp16 scale + zero point + G codes (+ G/4 3-bit patterns 2:4): 3.375 / 4.625 bits a weight
    rec = 16 + 4 + (32 * 4 // 2 + 3 * 32 // 4 if d.sparse else 32 * 4)
    assert m["record_bits"][ws.MODE_NAMES[mode]] == rec
    for name, row in m["by_linear"].items():
        if name != "lm_head":
            assert row["bits_per_weight"] >= rec / 32, (name, row)  # plus padding to whole memory words


def test_perf_model_reads_the_bytes_of_the_compiled_w4_image(w4):
    """The perf model's weight bytes at W4 (accllm.sim.perf: layout of the board's format) are the compiled
    image's decoder sections, byte for byte."""
    import json

    from accllm.hls.engine_image import MAP_FILE
    from accllm.sim.boards import get_board, load_model_shape
    from accllm.sim.perf import PerfModel, size_engine
    from accllm.sim.perf_fit import load_calibration

    ckpt, _, build = w4
    m = json.loads((build / MAP_FILE).read_text())
    board, shape = get_board("kv260"), load_model_shape(str(ckpt))
    e = size_engine(board, lanes=16, group=32, sparse=m["sections"][0]["mode"] == "sparse", sinks=2, window=14,
                    model=shape, weight_bits=4)
    pm = PerfModel(shape, board, e, load_calibration()[0])
    assert pm.fmt.to_json() == m["format"]
    assert pm.linear_layout().nbytes() == sum(s["nbytes"] for s in m["sections"] if s["name"] != "lm_head")


@pytest.mark.parametrize("stream", range(len(STREAMS)))
def test_w4_golden_and_csim_bit_exact(w4, stream):
    from accllm.hls.csim import CSim, compare_with_golden
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = w4
    r = compare_with_golden(GoldenModel.load(ckpt), CSim(build), STREAMS[stream])
    assert r["integers_compared"] > 0 and r["integer_mismatches"] == 0, r
    assert r["max_logit_diff"] < 1e-4


def test_w4_csim_same_tokens_as_golden(w4):
    from accllm.hls.csim import CSim
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = w4
    g, c = GoldenModel.load(ckpt), CSim(build)
    outs = []
    for p in PROMPTS[:3]:
        ids = tokenizer().encode(p)
        want = g.generate(ids, 10)
        assert c.generate(ids, 10) == want
        outs.append(tuple(want))
    assert len({t for o in outs for t in o}) > 1  # the tokens depend on the input (not one constant id)


def test_w4_prefill_equals_token_by_token(w4):
    """Blocks of T tokens (one weight pass each) give the KV cache, logits and every layer's integers of token by
    token, in the C-simulation and the golden model."""
    from accllm.hls.csim import CSim, prefill_mismatches
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = w4
    c = CSim(build)
    T = c.prefill_block
    ids = [int(x) for x in np.random.default_rng(4).integers(0, c.vocab, T + 5)]
    lb = csim_both_ways(c, ids)
    lg, counts = prefill_mismatches(GoldenModel.load(ckpt), c, ids)
    assert counts["integer_mismatches"] == 0
    assert np.abs(lg.numpy() - lb).max() < 1e-4


@pytest.mark.slow
def test_w4_engine_cosim_bit_exact(w4):
    """Every linear on the Verilated engine (W4 codes per operation, 120-cycle memory, 20 % stalls), decode and a
    prefill in blocks: 0 integer mismatches with the golden model, no protocol error, every decoder linear ran W4."""
    from accllm.hls.csim import compare_with_golden, prefill_mismatches
    from accllm.hw import engine_native
    from accllm.sim.golden import LINEARS, GoldenModel

    ckpt, _, build = w4
    g = GoldenModel.load(ckpt)
    sim = engine_native.engine_csim(build, {"latency": 120, "ar_stall": 20, "r_stall": 20, "out_stall": 20, "seed": 3})
    before = engine_native.stats(sim.lib)["protocol_errors"]
    engine_native.start_log(sim.lib)
    r = compare_with_golden(g, sim, STREAMS[0][:4])
    log = engine_native.read_log(sim.lib)
    assert r["integers_compared"] > 0 and r["integer_mismatches"] == 0, r
    n_lin = len(LINEARS) * g.d.layers
    assert {(x["mode"], x["wbits"]) for x in log if x["linear"] < n_lin} == {(int(g.d.sparse), 4)}
    ids = STREAMS[1][:sim.prefill_block + 2]  # a full block and a partial one
    sim.reset()
    sim.prefill(ids, trace=True)
    assert prefill_mismatches(g, sim, ids)[1]["integer_mismatches"] == 0
    assert engine_native.stats(sim.lib)["protocol_errors"] == before


def test_compile_refuses_mixed_weight_widths(w4, tmp_path):
    """One layer's weight Quant at 2 bits in a W4 model: one stream format for all decoder linears, refused naming
    the node."""
    import onnx_edits as E

    from accllm.hls.compiler import compile_export
    from accllm.hls.onnx_patterns import GraphRefused

    _, onnx_dir, _ = w4
    edited = copy_export(onnx_dir, tmp_path / "onnx")
    node = "/layer/self_attn/q_proj/weight_quant/export_handler/Quant"
    E.edit(edited / "layer01.onnx", E.set_input_const(node, 3, 2.0))
    with pytest.raises(GraphRefused, match=rf"'{node}' \(Quant\): weight code width 2 differs from 4"):
        compile_export(edited, tmp_path / "build", progress=False)


def test_engine_refuses_other_weight_widths():
    from types import SimpleNamespace

    from accllm.quant.quantize import CompressionSettings
    from accllm.sim.dims import dims_from, engine_bits_problem

    from quant_fixtures import tiny_config

    for bits in (2, 4):
        assert engine_bits_problem(CompressionSettings(weight_bits=bits)) is None
        assert dims_from(tiny_config(), CompressionSettings(weight_bits=bits)).wbits == bits
    for bits in (3, 8):
        s = CompressionSettings(weight_bits=bits)
        assert "weight_bits is" in engine_bits_problem(s)
        with pytest.raises(ValueError, match=rf"the engine runs W2A8KV4 or W4A8KV4; this checkpoint is W{bits}A8KV4"):
            dims_from(tiny_config(), s)
    assert "kv_bits is 8" in engine_bits_problem(SimpleNamespace(weight_bits=4, act_bits=8, kv_bits=8))


@pytest.mark.slow
def test_bundled_model_at_w4_bit_exact(tmp_path_factory):
    """The bundled model compressed at W4A8KV4 2:4 (RTN): golden and C-simulation integers equal, same tokens."""
    from accllm.hls.csim import CSim, compare_with_golden
    from accllm.hls.flow import export_and_compile
    from accllm.quant.checkpoint import save_compressed
    from accllm.quant.compress import compress
    from accllm.quant.model import load_model
    from accllm.quant.quantize import CompressionSettings
    from accllm.sim.golden import GoldenModel

    root = tmp_path_factory.mktemp("bundled_w4")
    model, tok = load_model(None)
    s = CompressionSettings(weight_bits=4, weight_method="rtn", calib_samples=16, calib_seqlen=128)
    model, masks = compress(model, tok, s, device="cpu", progress=False)
    save_compressed(model, tok, s, masks, root / "ckpt")
    _, build = export_and_compile(root / "ckpt", root)
    g, c = GoldenModel.load(root / "ckpt"), CSim(build)
    assert g.d.wbits == 4
    r = compare_with_golden(g, c, tok.encode(PROMPTS[0]) + [7, 100, 2000])
    assert r["integers_compared"] > 0 and r["integer_mismatches"] == 0, r
    for p in PROMPTS[:3]:
        assert c.generate(tok.encode(p), 10) == g.generate(tok.encode(p), 10)


def test_flow_runs_w4_and_refuses_other_widths(tmp_path):
    from accllm.host.flow_config import FlowError, load_flow

    p = tmp_path / "flow.yaml"
    p.write_text("compression: {weight_bits: 4}\n")
    assert load_flow(p).compression.weight_bits == 4
    for bits in (3, 8):
        p.write_text(f"compression: {{weight_bits: {bits}}}\n")
        with pytest.raises(FlowError, match=rf"compression\.weight_bits is {bits}: the engine runs W2A8KV4 or W4A8KV4 "
                                            r"\(weight_bits 2 or 4\)"):
            load_flow(p)
