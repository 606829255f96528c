"""2:4 Wanda pruning: the mask rule, the activation-aware score, which layers are pruned."""
import pytest
import torch

from accllm.quant.prune import check_2to4, decoder_linears, mask_2to4, prune_2to4
from quant_fixtures import tiny_model


def test_mask_keeps_the_two_best_of_every_four():
    torch.manual_seed(0)
    score = torch.rand(8, 32)
    mask = mask_2to4(score)
    blocks, sblocks = mask.view(8, 8, 4), score.view(8, 8, 4)
    assert (blocks.sum(-1) == 2).all()
    kept_min = sblocks.masked_fill(~blocks, float("inf")).amin(-1)
    dropped_max = sblocks.masked_fill(blocks, float("-inf")).amax(-1)
    assert (kept_min > dropped_max).all()


def test_check_2to4_counts_bad_blocks():
    w = torch.ones(2, 8)
    assert check_2to4(w) == 4
    w[:, [1, 3, 5, 7]] = 0
    assert check_2to4(w) == 0
    with pytest.raises(ValueError, match="multiple of 4"):
        check_2to4(torch.ones(2, 6))


def test_score_is_activation_aware():
    """Equal weights: the inputs with the largest activations must be the ones kept."""
    lin = torch.nn.Linear(8, 3, bias=False)
    model = torch.nn.Module()
    model.q_proj = lin
    lin.weight.data.fill_(1.0)
    scale = torch.tensor([1, 9, 1, 9, 9, 1, 9, 1.0])

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = lin

        def forward(self, input_ids):
            return self.q_proj(input_ids)

    m = Wrap()
    masks = prune_2to4(m, [torch.randn(16, 8) * scale], progress=False)
    assert masks["q_proj"].tolist() == [[False, True, False, True, True, False, True, False]] * 3


def test_prunes_every_decoder_linear_and_nothing_else():
    model = tiny_model()
    emb = model.model.embed_tokens.weight.clone()
    masks = prune_2to4(model, [torch.randint(3, 4096, (2, 16))], progress=False)
    lins = decoder_linears(model)
    assert len(lins) == 7 * model.config.num_hidden_layers == len(masks)
    for name, mod in lins.items():
        assert check_2to4(mod.weight) == 0, name
        assert (mod.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
        assert torch.equal(mod.weight != 0, masks[name] & (mod.weight != 0))
    assert torch.equal(model.model.embed_tokens.weight, emb)  # embeddings and tied lm_head stay dense
