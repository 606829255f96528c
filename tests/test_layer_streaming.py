"""Bounded-memory loading: a decoder layer read alone from a compressed checkpoint is the same Brevitas layer as in
the whole model (every parameter and buffer, and its output), and a model of no layers keeps embedding and head."""
import pytest
import torch
from flow_fixtures import BUNDLED_COMPRESSED

from accllm.hls.export import DecoderLayerGraph, layer_inputs
from accllm.quant.checkpoint import iter_compressed_layers, load_compressed


def test_one_layer_alone_equals_that_layer_of_the_whole_model():
    full, _, _ = load_compressed(BUNDLED_COMPRESSED)
    n = full.config.num_hidden_layers
    alone, _, _ = load_compressed(BUNDLED_COMPRESSED, layers=[n - 2], verify_files=False)
    assert alone.config.num_hidden_layers == 1
    a, b = full.model.layers[n - 2].state_dict(), alone.model.layers[0].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    args = layer_inputs(full, 8)
    with torch.no_grad():
        assert torch.equal(DecoderLayerGraph(full.model.layers[n - 2])(*args), DecoderLayerGraph(alone.model.layers[0])(*args))
    head, _, _ = load_compressed(BUNDLED_COMPRESSED, layers=[])
    assert len(head.model.layers) == 0
    assert torch.equal(head.model.embed_tokens.weight, full.model.embed_tokens.weight)
    assert torch.equal(head.lm_head.weight, full.lm_head.weight)


def test_iterating_layers_yields_each_once_in_order():
    full, _, _ = load_compressed(BUNDLED_COMPRESSED)
    layers = list(iter_compressed_layers(BUNDLED_COMPRESSED))
    assert len(layers) == full.config.num_hidden_layers
    for mine, theirs in zip(layers, full.model.layers):
        assert torch.equal(mine.mlp.down_proj.weight, theirs.mlp.down_proj.weight)


def test_a_layer_outside_the_model_is_refused():
    with pytest.raises(ValueError, match="decoder layers, not \\[99\\]"):
        load_compressed(BUNDLED_COMPRESSED, layers=[99])
