"""Λ attention: the visibility rule, prefill mask == streaming ring-buffer cache, constant memory."""
import pytest
import torch

from accllm.quant import attention as attn
from quant_fixtures import tiny_model


def test_visibility_rule():
    p = attn.LambdaPolicy(sinks=2, window=3)
    pos = torch.arange(8)
    vis = attn.visibility(pos, pos, p)
    # query 7 sees sinks 0,1 and the window 5,6,7 only
    assert vis[7].nonzero().flatten().tolist() == [0, 1, 5, 6, 7]
    assert vis[3].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert not vis.triu(1).any()  # causal


@pytest.mark.parametrize("bad", [dict(window=0), dict(window=-1), dict(sinks=-1), dict(positions="rope")])
def test_bad_policy_rejected(bad):
    with pytest.raises(ValueError):
        attn.LambdaPolicy(**{**dict(sinks=4, window=8), **bad})


def test_full_policy_matches_transformers():
    model = tiny_model()
    ids = torch.randint(3, 4096, (1, 40))
    with torch.no_grad():
        ref = model(ids).logits
        attn.install(model, None)
        out = model(ids).logits
    assert torch.allclose(ref, out, atol=1e-5)


@pytest.mark.parametrize("positions", ["cache", "absolute"])
@pytest.mark.parametrize("chunk", [1, 7])
def test_prefill_mask_equals_streaming_cache(positions, chunk):
    model = tiny_model()
    policy = attn.LambdaPolicy(sinks=2, window=9, positions=positions)
    attn.install(model, policy)
    ids = torch.randint(3, 4096, (60,))
    with torch.no_grad():
        prefill = model(ids[None]).logits[0]
    streamed = torch.cat([lg for _, lg, _ in attn.stream_logits(model, ids, policy, chunk)])
    assert torch.allclose(prefill, streamed, atol=1e-4)
    attn.set_policy(model, None)
    with torch.no_grad():
        full = model(ids[None]).logits[0]
    # identical while everything fits in the cache, different once tokens are evicted
    assert torch.allclose(full[:11], prefill[:11], atol=1e-5)
    assert not torch.allclose(full[20:], prefill[20:], atol=1e-3)


def test_cache_memory_is_constant_and_holds_sinks_plus_window():
    model = tiny_model()
    policy = attn.LambdaPolicy(sinks=3, window=5)
    attn.install(model, policy)
    ids = torch.randint(3, 4096, (47,))
    shapes = []
    for _, _, cache in attn.stream_logits(model, ids, policy, chunk=4):
        shapes.append(tuple(cache.layers[0].keys.shape))
    assert len(set(shapes)) == 1 and shapes[0][2] == policy.slots
    layer = cache.layers[1]
    assert sorted(layer.pos.tolist()) == [0, 1, 2, 42, 43, 44, 45, 46]
    # ring buffer: position p >= S lives in slot S + (p - S) % W
    for slot, p in enumerate(layer.pos.tolist()):
        assert slot == (p if p < 3 else 3 + (p - 3) % 5)


def test_position_modes_differ_only_after_the_cache_fills():
    model = tiny_model()
    ids = torch.randint(3, 4096, (1, 30))
    out = {}
    for mode in ("cache", "absolute"):
        attn.install(model, attn.LambdaPolicy(sinks=2, window=6, positions=mode))
        with torch.no_grad():
            out[mode] = model(ids).logits[0]
    assert torch.allclose(out["cache"][:8], out["absolute"][:8], atol=1e-6)
    assert not torch.allclose(out["cache"][9:], out["absolute"][9:], atol=1e-4)
