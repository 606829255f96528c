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
    """Each layer read alone (no embedding or head built) is the whole model's layer: every parameter and
    buffer, and its output."""
    full, _, _ = load_compressed(BUNDLED_COMPRESSED)
    layers = list(iter_compressed_layers(BUNDLED_COMPRESSED))
    assert len(layers) == full.config.num_hidden_layers
    args = layer_inputs(full, 8)
    for mine, theirs in zip(layers, full.model.layers):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
        with torch.no_grad():
            assert torch.equal(DecoderLayerGraph(mine)(*args), DecoderLayerGraph(theirs)(*args))


def test_a_layer_outside_the_model_is_refused():
    with pytest.raises(ValueError, match="decoder layers, not \\[99\\]"):
        load_compressed(BUNDLED_COMPRESSED, layers=[99])


def test_layer_by_layer_quantize_writes_the_whole_model_checkpoint(tmp_path):
    """RTN + Wanda 2:4, one decoder layer in memory at a time, gives the same checkpoint file, byte for byte, as
    compressing the whole model and saving it."""
    from accllm.quant.checkpoint import WEIGHTS_FILE, save_compressed
    from accllm.quant.model import load_model
    from accllm.quant.quantize import CompressionSettings
    from accllm.quant.compress import compress, compress_streaming

    s = CompressionSettings(weight_method="rtn", calib_samples=4, calib_seqlen=64)
    model, tok = load_model(None)
    model, masks = compress(model, tok, s, device="cpu", progress=False)
    save_compressed(model, tok, s, masks, tmp_path / "whole")
    compress_streaming(None, s, tmp_path / "layers", progress=False)
    for f in (WEIGHTS_FILE, "config.json", "compression.json"):
        assert (tmp_path / "whole" / f).read_bytes() == (tmp_path / "layers" / f).read_bytes(), f


def test_layer_by_layer_quantize_runs_on_a_machine_with_a_gpu(tmp_path, monkeypatch):
    """The layer-by-layer path runs on the CPU: a GPU on the machine (the default device) does not refuse it."""
    from accllm.quant.checkpoint import WEIGHTS_FILE
    from accllm.quant.compress import compress_streaming
    from accllm.quant.quantize import CompressionSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    compress_streaming(None, CompressionSettings(weight_method="rtn", calib_samples=1, calib_seqlen=16),
                       tmp_path / "ckpt", progress=False)
    assert (tmp_path / "ckpt" / WEIGHTS_FILE).stat().st_size > 0


def test_streaming_applies_only_where_it_gives_the_same_result():
    from accllm.quant.pipeline import compress_to_checkpoint
    from accllm.quant.quantize import CompressionSettings
    from accllm.quant.compress import compress_streaming, streaming_refusal

    assert streaming_refusal(CompressionSettings(weight_method="rtn"), "cpu") is None
    assert "GPTQ" in streaming_refusal(CompressionSettings(weight_method="gptq"), "cpu").upper()
    assert "sparsegpt" in streaming_refusal(CompressionSettings(weight_method="rtn", prune_method="sparsegpt"), "cpu")
    assert "distillation" in streaming_refusal(CompressionSettings(weight_method="rtn", qat_steps=5), "cpu")
    with pytest.raises(ValueError, match="layer-by-layer compression does not apply to weight method gptq"):
        compress_streaming(None, CompressionSettings(weight_method="gptq"), "unused")
    assert callable(compress_to_checkpoint)


def test_safetensors_stream_reads_back_with_safe_open(tmp_path):
    from safetensors import safe_open

    from accllm.quant.checkpoint import SafetensorsStream

    ts = {"b": torch.arange(6, dtype=torch.uint8).view(2, 3), "a": torch.randn(3, 5).half(),
          "c": torch.randn(4), "e": torch.zeros(0, 4, dtype=torch.uint8)}
    w = SafetensorsStream(tmp_path / "x.safetensors")
    for k, v in ts.items():
        w.add(k, v)
    with pytest.raises(ValueError, match="duplicate checkpoint tensor a"):
        w.add("a", ts["a"])
    w.close()
    assert not (tmp_path / "x.safetensors.spool").exists()
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(ts)
        for k, v in ts.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and torch.equal(got, v), k


def test_streaming_compile_equals_the_whole_model_compile(tmp_path_factory):
    """compile_export reads one layer graph at a time; its program, blob and engine image are byte-identical to
    the whole-model path (read_graphs -> build_program -> write_engine_image)."""
    from flow_fixtures import flow_paths

    from accllm.hls import program as prog
    from accllm.hls.blob import read_blob
    from accllm.hls.compiler import build_program, read_graphs
    from accllm.hls.engine_image import IMAGE_FILE, MAP_FILE, write_engine_image
    from accllm.sim.boards import get_board

    _, onnx_dir, build = flow_paths(tmp_path_factory)  # compiled by compile_export for kv260, 16 lanes
    g = read_graphs(onnx_dir, progress=False)
    ins, bw = build_program(g.weights, 16, g.order)
    _, _, payload = prog.read_program(build / "program.bin")
    assert payload == b"".join(i.pack() for i in ins)
    blob_meta, blob_payload = read_blob(build / "weights.blob")
    assert blob_payload == bw.payload() and blob_meta["sections"] == bw.sections
    whole = tmp_path_factory.mktemp("whole_image")
    write_engine_image(whole, g.weights, get_board("kv260"), 16)
    assert (whole / IMAGE_FILE).read_bytes() == (build / IMAGE_FILE).read_bytes()
    assert (whole / MAP_FILE).read_text() == (build / MAP_FILE).read_text()


def test_a_layer_graph_over_protobufs_limit_is_refused_naming_it(monkeypatch):
    from accllm.hls import export as ex
    from accllm.quant.checkpoint import load_compressed_layer

    layer = load_compressed_layer(BUNDLED_COMPRESSED, 0)
    ex._check_graph_size(layer, "layer00.onnx")  # the bundled layer fits
    monkeypatch.setattr(ex, "_PROTOBUF_LIMIT", 1000)
    with pytest.raises(ValueError, match=r"layer00.onnx: the layer graph would hold .* GiB of fp32 weights, over "
                                         r"protobuf's 2 GiB limit"):
        ex._check_graph_size(layer, "layer00.onnx")


def test_a_multi_head_attention_model_exports_and_compiles(tmp_path):
    """KV heads == query heads (Llama-2-7B's attention): the graph still shows the one-per-head KV repeat the
    engine's attention pattern reads, and the compiled dims say so."""
    from quant_fixtures import tiny_model, tokenizer

    from accllm.hls.compiler import compile_export
    from accllm.hls.export import export_model
    from accllm.quant.checkpoint import load_compressed, save_compressed
    from accllm.quant.quantize import CompressionSettings
    from accllm.quant.compress import compress

    s = CompressionSettings(weight_method="rtn", calib_samples=2, calib_seqlen=32, sinks=2, window=14)
    model, masks = compress(tiny_model(num_key_value_heads=4), tokenizer(), s, device="cpu", progress=False)
    save_compressed(model, tokenizer(), s, masks, tmp_path / "ckpt")
    export_model(load_compressed(tmp_path / "ckpt")[0], tmp_path / "onnx", progress=False)
    r = compile_export(tmp_path / "onnx", tmp_path / "build", progress=False)
    dims = __import__("json").loads((r.out_dir / "blob_map.json").read_text())
    from accllm.hls.blob import read_blob

    meta, _ = read_blob(r.blob)
    assert meta["dims"]["heads"] == meta["dims"]["kv_heads"] == 4 and dims["total_bytes"] > 0
