"""Loading Llama-family checkpoints: the bundled tiny model or any local Hugging Face directory."""
from __future__ import annotations

import json
from pathlib import Path

BUNDLED_MODEL = Path(__file__).parent / "bundled" / "tiny-llama"
SUPPORTED_MODEL_TYPES = ("llama",)


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete or not a supported architecture."""


def resolve_model_dir(model: str | Path | None) -> Path:
    """``None`` or ``"bundled"`` means the bundled tiny model; anything else must be a local directory."""
    if model is None or str(model) == "bundled":
        return BUNDLED_MODEL
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist (give a local Hugging Face checkpoint directory or 'bundled')")
    return path


def check_model_dir(path: Path) -> dict:
    """Validate a checkpoint directory before handing it to transformers; return its config."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelDirError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{cfg_path} is not valid JSON: {e}") from None
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelDirError(
            f"{path}: model_type {model_type!r} is not supported; accllm handles {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(RoPE, RMSNorm, SwiGLU decoder layers)"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelDirError(f"{path} has no *.safetensors weights (pytorch_model.bin is not loaded, for safety)")
    if not (path / "tokenizer.json").is_file():
        raise ModelDirError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    return cfg


def load_tokenizer(model: str | Path | None = None):
    from transformers import AutoTokenizer

    path = resolve_model_dir(model)
    check_model_dir(path)
    return AutoTokenizer.from_pretrained(path)


def load_model(model: str | Path | None = None, dtype=None, device_map=None):
    """Return ``(model, tokenizer)`` in eval mode; float32 on CPU unless ``dtype`` says otherwise."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = resolve_model_dir(model)
    check_model_dir(path)
    kwargs = {"dtype": dtype or torch.float32}
    if device_map is not None:
        kwargs["device_map"] = device_map
    lm = LlamaForCausalLM.from_pretrained(path, **kwargs)
    lm.eval()
    return lm, AutoTokenizer.from_pretrained(path)


def trained_context(model_config) -> int:
    """Context length the model was trained at (``max_position_embeddings`` for the bundled model)."""
    return int(model_config.max_position_embeddings)
