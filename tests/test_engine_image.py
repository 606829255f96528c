"""The compiler's engine memory image (weights.engine + blob_map.json): every linear of the bundled compressed
model in the weight stream, read back to the graph's integers, with the same bytes the layout function gives."""
import json

import numpy as np
import pytest

from flow_fixtures import flow_paths, one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="session")
def flow(tmp_path_factory):
    return flow_paths(tmp_path_factory)


def test_blob_map_and_image_read_back(flow):
    from accllm.hls.compiler import weights_from_export
    from accllm.hls.engine_image import HEAD_NAME, IMAGE_FILE, MAP_FILE, engine_format, quantised_head
    from accllm.sim import golden_core as gc
    from accllm.sim import weight_stream as ws
    from accllm.sim.boards import get_board, load_model_shape

    _, onnx_dir, build = flow
    m = json.loads((build / MAP_FILE).read_text())
    image = (build / IMAGE_FILE).read_bytes()
    w = weights_from_export(onnx_dir, progress=False)
    fmt = ws.StreamFormat(**m["format"])
    assert (fmt, m["channels"]) == engine_format(w.dims, get_board("kv260"), fmt.lanes)
    assert m["file_bytes"] == len(image) and m["total_bytes"] == sum(s["nbytes"] for s in m["sections"])
    # the perf model's layout of the same model dims gives the same bytes
    head = quantised_head(w)  # the LM head's DENSE W4 section, when the export quantises the head
    assert any(s["name"] == HEAD_NAME for s in m["sections"]) == (head is not None)
    lay = ws.layout(load_model_shape("bundled"), fmt, m["channels"], sparse=w.dims.sparse, lm_head=head is not None)
    assert lay.nbytes() == m["total_bytes"] and abs(lay.bits_per_weight() - m["bits_per_weight"]) < 1e-12
    print({k: round(v["bits_per_weight"], 4) for k, v in m["by_linear"].items()}, "total", m["bits_per_weight"])
    dec = [v for name, v in m["by_linear"].items() if name != HEAD_NAME]
    assert 8 * sum(v["bytes"] for v in dec) / sum(v["weights"] for v in dec) < 2.6
    rng = np.random.default_rng(0)
    for sec in m["sections"]:
        if sec["name"] != HEAD_NAME or not sec["nbytes"]:
            continue
        r0, r1 = sec["rows"]
        start = m["channel_offsets"][sec["channel"]] + sec["offset"]
        a = rng.integers(-128, 128, sec["k"])
        got = gc.stream_acc(image[start: start + sec["nbytes"]], ws.MODE_DENSE, ws.StreamFormat(**dict(m["format"], wbits=4)),
                            r1 - r0, sec["k"], a)
        assert np.array_equal(got.numpy(), gc.dense_w2a8(a, head.codes[r0:r1], head.zeros[r0:r1], w.dims.group, 4).numpy())
    mode = ws.MODE_SPARSE if w.dims.sparse else ws.MODE_DENSE
    for sec in m["sections"]:
        if sec["name"] not in ("layers.0.q_proj", "layers.5.down_proj") or not sec["nbytes"]:
            continue
        lin = w.linears[int(sec["name"].split(".")[1])][sec["name"].split(".")[2]]
        r0, r1 = sec["rows"]
        start = m["channel_offsets"][sec["channel"]] + sec["offset"]
        data = image[start: start + sec["nbytes"]]
        f = ws.unpack(data, mode, fmt, r1 - r0, sec["k"])
        assert np.array_equal(f["zeros"], lin.zeros[r0:r1].numpy())
        assert np.array_equal(f["scales"], lin.scales[r0:r1].numpy())  # the golden model's fp16 scales, exactly
        a = rng.integers(-128, 128, sec["k"])
        assert np.array_equal(gc.stream_acc(data, mode, fmt, r1 - r0, sec["k"], a).numpy(),
                              gc.dense_w2a8(a, lin.codes[r0:r1], lin.zeros[r0:r1], w.dims.group).numpy())
