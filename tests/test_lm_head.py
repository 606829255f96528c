"""The LM head as an integer layer (issue 13.2): quantised by Brevitas (4-bit codes, untied from the embedding),
stored and reloaded, added to an existing checkpoint by `accllm quantize-head` (deterministic), compiled to a DENSE
W4 section + LMHEAD (program v2 mode byte), run by the golden model as a W4 linear (its trace in the head region)
and by the C-simulation bit for bit, with the same top-K."""
import json
import shutil

import numpy as np
import pytest
import torch

from flow_fixtures import PROMPTS, flow_paths, one_thread
from quant_fixtures import tiny_model, tokenizer

_one_thread = pytest.fixture(autouse=True)(one_thread)

SMALL = dict(weight_method="rtn", calib_samples=4, calib_seqlen=32, group_size=16, sinks=2, window=14)


@pytest.fixture(scope="session")
def flow(tmp_path_factory):
    return flow_paths(tmp_path_factory)


@pytest.fixture(scope="module")
def fp16_head_checkpoint(tmp_path_factory):
    """A checkpoint as written before the head was quantised (head_bits None: the tied fp16 head)."""
    from accllm.quant.checkpoint import save_compressed
    from accllm.quant.quantize import CompressionSettings
    from accllm.quant.compress import compress

    s = CompressionSettings(head_bits=None, **SMALL)
    model, masks = compress(tiny_model(seed=5), tokenizer(), s, device="cpu", progress=False)
    assert model.config.tie_word_embeddings
    out = tmp_path_factory.mktemp("fp16head")
    save_compressed(model, tokenizer(), s, masks, out)
    return out


def test_mode_byte_round_trip_and_refusal():
    from accllm.hls import program as P

    assert P.mode_byte(1, 2) == 0x21 and P.split_mode(0x40) == (0, 4)
    for mode in (0, 1):
        for wbits in (2, 4):
            assert P.split_mode(P.mode_byte(mode, wbits)) == (mode, wbits)
    with pytest.raises(ValueError, match="wbits"):
        P.mode_byte(0, 3)


def test_compress_quantises_and_unties_the_head(tmp_path):
    from accllm.quant.checkpoint import integer_linear_weights, load_compressed, save_compressed
    from accllm.quant.quantize import CompressionSettings
    from accllm.quant.compress import compress

    s = CompressionSettings(**SMALL)
    model, masks = compress(tiny_model(seed=5), tokenizer(), s, device="cpu", progress=False)
    assert not model.config.tie_word_embeddings and int(model.lm_head.quant_weight().bit_width) == 4
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    save_compressed(model, tokenizer(), s, masks, tmp_path)
    loaded, _, _ = load_compressed(tmp_path)
    x = torch.tensor([[5, 17, 300, 42]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    a, b = integer_linear_weights(model)["lm_head"], integer_linear_weights(tmp_path)["lm_head"]
    assert torch.equal(a["codes"], b["codes"]) and int(b["codes"].max()) > 3  # 4-bit codes, stored and read back
    assert torch.equal(a["scales"], b["scales"]) and torch.equal(a["zero_points"], b["zero_points"])


def test_quantize_head_is_deterministic_and_refuses_twice(fp16_head_checkpoint, tmp_path, capsys):
    from accllm.host.cli import main
    from accllm.quant.checkpoint import load_compressed
    from accllm.sim.golden import GoldenModel

    with pytest.raises(ValueError, match="fp16.*quantize-head"):
        GoldenModel.load(fp16_head_checkpoint)  # the engine has no fp16 head
    a, b = shutil.copytree(fp16_head_checkpoint, tmp_path / "a"), shutil.copytree(fp16_head_checkpoint, tmp_path / "b")
    for d in (a, b):
        assert main(["quantize-head", str(d)]) == 0
    weights = "compressed.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    meta = json.loads((a / "compression.json").read_text())
    assert meta["settings"]["head_bits"] == 4 and meta["head"]["source"] == "model.embed_tokens.weight"
    assert meta["head"]["method"] == "rtn" and meta["head"]["command"].startswith("accllm quantize-head")
    model, _, s = load_compressed(a)  # files.sha256 rewritten: verified on load
    assert s.head_bits == 4 and not model.config.tie_word_embeddings
    GoldenModel.load(a)
    before = (a / weights).read_bytes()
    assert main(["quantize-head", str(a)]) == 2
    assert "already quantised" in capsys.readouterr().err and (a / weights).read_bytes() == before


def test_compiled_head_is_a_dense_w4_section(flow):
    from accllm.hls import blob, program
    from accllm.hls.blob import kernel_stream_format
    from accllm.sim import weight_stream as ws
    from accllm.sim.golden import load_weights

    ckpt, _, build = flow
    meta, instrs, _ = program.read_program(build / "program.bin")
    assert program.VERSION == 2 and meta["engine"]["topk"] == 16
    d = meta["dims"]
    head = [i for i in instrs if i.op == program.OP_LMHEAD]
    assert len(head) == 1 and program.split_mode(head[0].mode) == (ws.MODE_DENSE, 4)
    bmeta, payload = blob.read_blob(build / "weights.blob")
    src, off, index, n, k, act, acc = head[0].args
    assert (off, index, n, k) == (bmeta["sections"]["lm_head.stream"]["offset"], d["layers"] * 7, d["vocab"],
                                  d["hidden"])
    assert head[0].layer == d["layers"] and (act, acc) == (meta["trace"]["head"]["head_in_a"],
                                                          meta["trace"]["head"]["head_acc"])
    fmt = kernel_stream_format(d["group"], meta["engine"]["lanes"], 4)
    f = ws.unpack(blob.section(bmeta, payload, "lm_head.stream"), ws.MODE_DENSE, fmt, n, k)
    g = load_weights(ckpt).lm_head
    assert np.array_equal(f["codes"], g.codes.numpy()) and np.array_equal(f["zeros"], g.zeros.numpy())
    assert np.array_equal(f["scales"], g.scales.numpy())


def test_golden_and_csim_head_bit_exact_with_the_same_top_k(flow):
    """Decode and prefill: the head's integers (int8 input codes, W4 group accumulators) of the trace's head region
    are the golden model's, 0 mismatches, and the kernel's top-K is the golden top-K."""
    from transformers import AutoTokenizer

    from accllm.hls.csim import CSim
    from accllm.sim.golden import GoldenModel, flatten_trace, top_k

    ckpt, _, build = flow
    g, c = GoldenModel.load(ckpt), CSim(build)
    ids = AutoTokenizer.from_pretrained(ckpt).encode(PROMPTS[0])
    off = c.layers * c.trace_size
    mism = compared = 0
    for t in ids[:6]:
        lg = g.step(t, [])
        c.step(t, trace=True)
        a = flatten_trace(g.d, g.head_trace).numpy()
        mism += int((a != c.trace[off:off + a.size]).sum())
        compared += a.size
        gi, gv = top_k(lg, c.topk)
        ci, cv = c.top
        assert np.array_equal(gi, ci), (gi, ci)
        assert np.allclose(gv, cv, rtol=0, atol=1e-4 * max(1.0, float(np.abs(gv).max())))
    g.reset(), c.reset()
    g.prefill(ids, block=c.prefill_block, traces=[])
    c.prefill(ids, trace=True, logits=False)
    a = flatten_trace(g.d, g.head_trace).numpy()
    poff = len(ids) * c.layers * c.trace_size
    mism += int((a != c.block_trace[poff:poff + a.size]).sum())
    compared += a.size
    assert compared > 100_000 and mism == 0, f"{mism} of {compared} head integers differ"
