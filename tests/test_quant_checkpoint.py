"""W2A8KV4 with Brevitas: bit widths, groups, zero points, the 2:4 mask through GPTQ, the integer view
(exactly Brevitas' fake-quant), the documented activation/KV formulas, save/load, flag errors."""
import pytest
import torch

from accllm.quant import checkpoint as ck
from accllm.quant.prune import check_2to4, decoder_linears
from accllm.quant.quantize import CompressionSettings
from accllm.quant.compress import compress
from quant_fixtures import tiny_config, tiny_model, tokenizer

SETTINGS = dict(calib_samples=4, calib_seqlen=32, group_size=16, sinks=2, window=14)


@pytest.fixture(scope="module")
def compressed():
    s = CompressionSettings(weight_method="gptq", **SETTINGS)
    model, masks = compress(tiny_model(), tokenizer(), s, device="cpu", progress=False)
    return model, masks, s


def test_integer_view_is_brevitas_fake_quant_exactly(compressed):
    model, masks, s = compressed
    view = ck.integer_linear_weights(model, with_reference=True)
    assert set(view) == set(decoder_linears(model)) | {"lm_head"}
    head = view.pop("lm_head")  # dense 4-bit codes (GPTQ'd too), exactly Brevitas' fake-quant
    assert int(head["codes"].max()) <= 15 and int(head["codes"].max()) > 3 and bool(head["mask"].all())
    assert int((head["fake_quant"] != head["dequantized"]).sum()) == 0
    for name, d in view.items():
        out_f, in_f = d["codes"].shape
        assert d["codes"].dtype == torch.uint8 and int(d["codes"].max()) <= 3  # 2-bit codes
        assert d["scales"].shape == (out_f, in_f // 16) and d["scales"].dtype == torch.float32
        assert d["zero_points"].shape == (out_f, in_f // 16) and int(d["zero_points"].max()) <= 3
        mismatches = int((d["fake_quant"] != d["dequantized"]).sum())
        assert mismatches == 0, f"{name}: {mismatches} weights differ from Brevitas"
        # 2:4 survives GPTQ: pruned weights are exactly zero, i.e. code == zero point
        deq = d["dequantized"]
        assert check_2to4(deq) == 0
        assert torch.equal(d["mask"], masks[name])
        zp = d["zero_points"].repeat_interleave(16, dim=1)
        assert torch.equal(d["codes"][~d["mask"]], zp[~d["mask"]])
        # at most 2^2 distinct values in each group
        groups = deq.view(out_f, -1, 16)
        assert max(len(g.unique()) for g in groups.reshape(-1, 16)[:64]) <= 4


def test_activation_and_kv_formulas_match_brevitas(compressed):
    model, _, _ = compressed
    torch.manual_seed(1)
    x = torch.randn(2, 5, 64) * 3
    x[0, 0] = 0  # an all-zero row hits the minimum scale
    lin = model.model.layers[0].self_attn.q_proj
    qt = lin.input_quant(x)
    a, s = ck.fake_quant_act(x)
    assert torch.equal(qt.value, a * s) and torch.equal(qt.scale, s)
    sd = model.model.layers[0].self_attn.sdpa
    k = torch.randn(1, 2, 7, 16) + 0.3
    qk = sd.k_quant(k.transpose(-2, -1))
    c, sk, zk = ck.fake_quant_kv(k, 4)  # per token and head, over head_dim
    assert int(c.max()) <= 15 and int(zk.max()) <= 15
    assert torch.equal(qk.value.transpose(-2, -1), (c - zk) * sk)
    assert torch.equal(qk.zero_point.transpose(-2, -1), zk)


def test_save_load_roundtrip(compressed, tmp_path):
    model, masks, s = compressed
    ck.save_compressed(model, tokenizer(), s, masks, tmp_path)
    loaded, _, s2 = ck.load_compressed(tmp_path)
    assert s2 == s
    a, b = ck.integer_linear_weights(model), ck.integer_linear_weights(tmp_path)
    for name in a:
        for key in ("codes", "scales", "zero_points", "mask"):
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    assert ck.integer_linear_weights(loaded).keys() == a.keys()
    ids = torch.randint(3, 4096, (1, 24))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 4, 3])
def test_code_packing_roundtrip(bits):
    codes = torch.randint(0, 2 ** bits, (5, 32), dtype=torch.uint8)
    packed = ck.pack_codes(codes, bits)
    assert packed.shape[1] == (32 * bits // 8 if 8 % bits == 0 else 32)
    assert torch.equal(ck.unpack_codes(packed, bits, 32), codes)
    mask = torch.rand(5, 32) > 0.5
    assert torch.equal(ck.unpack_mask(ck.pack_mask(mask), 32), mask)


def test_group_size_and_bits_follow_the_settings():
    s = CompressionSettings(sparsity="none", weight_method="rtn", weight_bits=4, group_size=32,
                            act_bits=None, kv_bits=None, lambda_attention=False, calib_samples=2, calib_seqlen=16)
    model, _ = compress(tiny_model(), tokenizer(), s, device="cpu", progress=False)
    for d in ck.integer_linear_weights(model).values():
        assert d["scales"].shape[1] == d["codes"].shape[1] // 32
        assert int(d["codes"].max()) > 3 and int(d["codes"].max()) <= 15


@pytest.mark.parametrize("over, msg", [
    (dict(group_size=0), "group size must be > 0"),
    (dict(weight_bits=5), "unsupported weight bit width"),
    (dict(kv_bits=2), "unsupported KV bit width"),
    (dict(act_bits=4), "unsupported activation bit width"),
    (dict(window=0), "window must be > 0"),
    (dict(window=100), "exceeds the trained context"),
    (dict(sparsity="1:2"), "sparsity"),
])
def test_bad_settings_get_clear_errors(over, msg):
    with pytest.raises(ValueError, match=msg):
        CompressionSettings(**{**SETTINGS, **over}).validate(tiny_config())


def test_cli_rejects_bad_flags(capsys):
    from accllm.host.cli import main

    assert main(["quantize", "bundled", "-o", "/tmp/never", "--weight-bits", "5"]) == 2
    assert "unsupported weight bit width" in capsys.readouterr().err


def test_ragged_last_group_is_brevitas_exactly_and_survives_save_load(tmp_path):
    """Group 48 on inputs of 64 and 128: ceil(in/G) groups, the last one ragged (Brevitas zero-pads it)."""
    s = CompressionSettings(weight_method="rtn", **{**SETTINGS, "group_size": 48})
    model, masks = compress(tiny_model(), tokenizer(), s, device="cpu", progress=False)
    view = ck.integer_linear_weights(model, with_reference=True)
    for name, d in view.items():
        out_f, in_f = d["codes"].shape
        assert d["scales"].shape == (out_f, -(-in_f // 48)) and in_f % 48
        assert int((d["fake_quant"] != d["dequantized"]).sum()) == 0, name
    ck.save_compressed(model, tokenizer(), s, masks, tmp_path)
    loaded, _, _ = ck.load_compressed(tmp_path)
    back = ck.integer_linear_weights(tmp_path)
    for name, d in view.items():
        for key in ("codes", "scales", "zero_points", "mask"):
            assert torch.equal(d[key], back[name][key]), (name, key)
    ids = torch.randint(3, 4096, (1, 24))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-5)


def test_accelerate_offload_path_gives_the_same_model(compressed):
    """The device-map path a 7B checkpoint takes (Brevitas' offload_model + accelerate hooks), on CPU."""
    model, _, s = compressed
    off, _ = compress(tiny_model(), tokenizer(), s, device="cpu", offload=True, progress=False)
    assert not any(hasattr(m, "_hf_hook") for m in off.modules())
    a, b = ck.integer_linear_weights(model), ck.integer_linear_weights(off)
    assert all(torch.equal(a[k]["codes"], b[k]["codes"]) for k in a)


def test_column_gptq_equals_brevitas_gptq():
    """The fast column quantiser inside GPTQ gives exactly the codes of Brevitas' own (whole-matrix) path."""
    import copy

    from brevitas.graph.gptq import GPTQ

    from accllm.quant import quantize as qz

    s = CompressionSettings(weight_method="rtn", **SETTINGS)
    base, _ = compress(tiny_model(), tokenizer(), s, device="cpu", progress=False)
    batches = qz.calibration_batches(tokenizer(), 4, 32)
    fast, slow = copy.deepcopy(base), copy.deepcopy(base)
    qz.gptq(fast, batches, progress=False)
    orig = qz._column_gptq_class
    try:
        qz._column_gptq_class = lambda: GPTQ
        qz.gptq(slow, batches, progress=False)
    finally:
        qz._column_gptq_class = orig
    a, b, r = ck.integer_linear_weights(fast), ck.integer_linear_weights(slow), ck.integer_linear_weights(base)
    assert sum(int((a[k]["codes"] != b[k]["codes"]).sum()) for k in a) == 0
    assert sum(int((a[k]["codes"] != r[k]["codes"]).sum()) for k in a) > 0  # GPTQ did change the rounding


def test_weight_bytes_count_no_quantiser_parameters(compressed):
    """"other" weights are the fp16 embedding and norms only; scales and zero points are in the linears' bytes, the
    LM head's 4-bit codes (untied from the embedding) with its fp16 scales and 4-bit zero points."""
    from accllm.quant.pipeline import weight_bytes_per_token

    model, _, s = compressed
    wb = weight_bytes_per_token(model, s)
    cfg = model.config
    assert wb["other_fp16"] == 2 * (cfg.vocab_size * cfg.hidden_size + cfg.hidden_size * (2 * cfg.num_hidden_layers + 1))
    v, h = cfg.vocab_size, cfg.hidden_size
    assert s.head_bits == 4 and wb["lm_head"] == v * h / 2 + v * (h // s.group_size) * 2.5
    assert wb["total"] == wb["decoder_linears"] + wb["lm_head"] + wb["other_fp16"]
