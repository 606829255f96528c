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
