"""The 2:4 layer graph: pruned weights are exact zeros in the weight Quant's input, no mask tensor (4 bytes a
weight instead of 8, so a Llama-2-7B layer fits protobuf's 2 GiB), metadata ``accllm_sparsity`` = ``2:4``; the
graph still computes the Brevitas layer, and exporting leaves the model as it was."""
import numpy as np
import onnx
import torch
from flow_fixtures import BUNDLED_COMPRESSED, one_thread
import pytest

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _state(layer):
    return {k: v.clone() for k, v in layer.state_dict().items()} | {
        n: b.clone() for n, b in layer.named_buffers() if n.endswith("sparse_mask")}


def test_2to4_layer_graph_has_pruned_zeros_and_no_mask(tmp_path):
    from accllm.hls.export import SPARSITY_META, export_model, onnx_vs_torch
    from accllm.quant.checkpoint import load_compressed

    model, _, _ = load_compressed(BUNDLED_COMPRESSED)
    layer = model.model.layers[1]
    masks = {n: b for n, b in layer.named_buffers() if n.endswith("sparse_mask")}
    assert len(masks) == 7
    # a pruned weight that is not zero (as training could leave one): the graph still holds a zero there
    w = layer.mlp.up_proj.weight
    pruned = torch.nonzero(~layer.mlp.up_proj.sparse_mask)[0].tolist()
    with torch.no_grad():
        w[pruned[0], pruned[1]] = 0.5
    before = _state(layer)
    export_model(model, tmp_path, progress=False)
    after = _state(layer)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    path = tmp_path / "layer01.onnx"
    m = onnx.load(str(path))
    assert {p.key: p.value for p in m.metadata_props}[SPARSITY_META] == "2:4"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    quants = [n for n in m.graph.node if n.name.endswith("weight_quant/export_handler/Quant")]
    assert len(quants) == 7
    for q in quants:
        wq = inits[q.input[0]]
        proj = q.name.split("/")[3]
        mask = masks[f"{q.name.split('/')[2]}.{proj}.sparse_mask"].numpy()
        assert np.all(wq.reshape(mask.shape)[~mask] == 0), proj  # pruned: exact zeros
        readers = [n for n in m.graph.node if q.output[0] in n.input]
        assert [r.op_type for r in readers] == ["Flatten"], proj  # no mask Mul after the Quant
    params = sum(p.numel() for p in layer.parameters())
    assert path.stat().st_size < 4.2 * params, path.stat().st_size / params  # was 7.8 bytes a weight with the mask
    err, scale = onnx_vs_torch(tmp_path, model, 1)
    assert err < 2e-2 * scale, (err, scale)


def test_dense_layer_graph_has_no_sparsity_metadata(tmp_path):
    from accllm.hls.export import SPARSITY_META, export_model
    from accllm.quant.checkpoint import load_compressed

    model, _, _ = load_compressed(BUNDLED_COMPRESSED)
    for layer in model.model.layers:
        for mod in layer.modules():
            mod._buffers.pop("sparse_mask", None)
    export_model(model, tmp_path, progress=False, layers=model.model.layers[:1])
    m = onnx.load(str(tmp_path / "layer00.onnx"))
    assert SPARSITY_META not in {p.key for p in m.metadata_props}
