"""An untied LM head (``lm_head.weight`` of its own, as Llama-2 / TinyLlama have) through compression, the
checkpoint and the golden model: the head is quantised from its own weight (4-bit, as the engine runs it), golden
logits follow the Brevitas fake-quant model, and the head is the stored one, not the embedding."""
import pytest
import torch

from accllm.quant.checkpoint import load_compressed, save_compressed
from accllm.quant.quantize import CompressionSettings
from accllm.quant.compress import compress
from accllm.sim.golden import GoldenModel, teacher_forced_vs_brevitas
from quant_fixtures import tiny_model, tokenizer


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    model = tiny_model(seed=3, tie_word_embeddings=False)
    with torch.no_grad():  # a head clearly unlike the embedding, with logits well above the quantisation noise
        model.lm_head.weight.normal_(0, 0.5)
    s = CompressionSettings(weight_method="rtn", calib_samples=4, calib_seqlen=32, group_size=16, sinks=2, window=14)
    model, masks = compress(model, tokenizer(), s, device="cpu", progress=False)
    out = tmp_path_factory.mktemp("untied")
    save_compressed(model, tokenizer(), s, masks, out)
    return model, out


def test_untied_head_is_saved_and_reloaded(untied):
    model, out = untied
    loaded, _, s = load_compressed(out)
    assert not loaded.config.tie_word_embeddings and s.head_bits == 4
    qa, qb = loaded.lm_head.quant_weight(), model.lm_head.quant_weight()
    assert int(qa.bit_width) == 4 and torch.equal(qa.value, qb.value)
    assert not torch.equal(qa.value, loaded.model.embed_tokens.weight)


def test_golden_untied_head_matches_brevitas(untied):
    from accllm.quant.checkpoint import fake_quant_weight, integer_linear_weights
    from accllm.sim.golden import LinearInts

    model, out = untied
    golden = GoldenModel.load(out)
    ref = integer_linear_weights(model)["lm_head"]
    assert golden.w.lm_head.wbits == 4 and torch.equal(golden.w.lm_head.codes, ref["codes"].long())
    prompts = [[5, 17, 300, 42, 7], [1000, 2000, 3, 99]]
    r = teacher_forced_vs_brevitas(model, golden, prompts, max_new=8)
    assert r["steps"] == 16 and r["agreement"] == 1.0, r
    assert r["max_rel"] < 0.05, r
    # the same check fails when the golden model's head is the embedding (the bug this guards against), in the
    # head's own integer form
    h = golden.w.lm_head
    codes, _ = fake_quant_weight(golden.w.embed, h.scales, h.zeros, 4, golden.d.group)
    golden.w.lm_head = LinearInts(codes.long(), h.zeros, h.scales, wbits=4)
    wrong = teacher_forced_vs_brevitas(model, golden, prompts, max_new=8)
    assert wrong["max_rel"] > 0.5 and wrong["agreement"] < 1.0, wrong
    # and the flow's bound, widened only by Brevitas's disagreement with itself, still refuses it
    from accllm.sim.steps import rel_logit_bound

    assert wrong["floor_rel"] == r["floor_rel"] and wrong["max_rel"] > rel_logit_bound(wrong["floor_rel"]), wrong
