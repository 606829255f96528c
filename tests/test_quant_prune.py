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


def _correlated_inputs(n=2048, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * 0.3 + torch.eye(k)
    return (torch.randn(n, k, generator=g) * torch.linspace(0.2, 3, k)) @ mix


def test_sparsegpt_is_2to4_and_beats_wanda_on_the_layer_output():
    """SparseGPT's weight update must lower the layer's output error below a mask-only (Wanda) prune."""
    from accllm.quant.prune import sparsegpt_2to4_weight

    x = _correlated_inputs()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    h = 2 * x.T @ x / len(x)
    w_sg, keep = sparsegpt_2to4_weight(w, h)
    assert check_2to4(w_sg) == 0 and torch.equal(w_sg != 0, keep)
    assert (keep.view(32, 16, 4).sum(-1) == 2).all()
    w_wanda = w * mask_2to4(w.abs() * x.norm(dim=0)[None, :])
    err_sg = ((x @ (w - w_sg).T) ** 2).mean()
    err_wanda = ((x @ (w - w_wanda).T) ** 2).mean()
    assert err_sg < 0.8 * err_wanda, (err_sg, err_wanda)


def test_sparsegpt_prunes_every_decoder_linear_in_place():
    from accllm.quant.prune import sparsegpt_prune_2to4

    model = tiny_model()
    batches = [torch.randint(3, 4096, (2, 16))]
    masks = sparsegpt_prune_2to4(model, batches, progress=False)
    lin = decoder_linears(model)
    assert set(masks) == set(lin)
    for name, mod in lin.items():
        assert check_2to4(mod.weight) == 0
        assert torch.equal(mod.weight != 0, masks[name])
