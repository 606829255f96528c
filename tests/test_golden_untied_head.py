"""An untied LM head (``lm_head.weight`` of its own, as Llama-2 / TinyLlama have) through compression, the
checkpoint and the golden model: golden logits follow the Brevitas fake-quant model, and the head is the stored
one, not the embedding."""
import pytest
import torch

from accllm.quant.checkpoint import load_compressed, save_compressed
from accllm.quant.quantize import CompressionSettings, compress
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
    loaded, _, _ = load_compressed(out)
    assert not loaded.config.tie_word_embeddings
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)


def test_golden_untied_head_matches_brevitas(untied):
    model, out = untied
    golden = GoldenModel.load(out)
    assert golden.w.lm_head is not None and torch.equal(golden.w.head, model.lm_head.weight.detach().float())
    prompts = [[5, 17, 300, 42, 7], [1000, 2000, 3, 99]]
    r = teacher_forced_vs_brevitas(model, golden, prompts, max_new=8)
    assert r["steps"] == 16 and r["agreement"] == 1.0, r
    assert r["max_rel"] < 0.05, r
    # the same check fails when the golden model uses the embedding as head (the bug this guards against)
    golden.w.lm_head = None
    wrong = teacher_forced_vs_brevitas(model, golden, prompts, max_new=8)
    assert wrong["max_rel"] > 0.5 and wrong["agreement"] < 1.0, wrong
