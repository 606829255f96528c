"""The compressed checkpoint: ONE definition of its files, its integer view and the quantiser conventions.

Directory layout (``save_compressed`` / ``load_compressed``)::

    config.json, tokenizer.json, tokenizer_config.json   copied from the source checkpoint
    compression.json    {"format": FORMAT, "settings": CompressionSettings}
    compressed.safetensors
        <linear>.codes        uint8 [out, in*bits/8]  weight codes, packed LSB-first (8 % bits == 0),
                                                      else uint8 [out, in] one code per byte
        <linear>.scales       float32 [out, in/G]     read back as fp16 values (what the engine streams)
        <linear>.zero_points  uint8 [out, in/G]
        <linear>.mask         uint8 [out, in/8]       2:4 keep-mask, np.packbits (big-endian bits); decoder linears
        <linear>.weight       float16 [out, in]       only when weights are not quantised
        <other parameter>     float16                 embeddings, norms (lm_head.weight when the head is not quantised)

``<linear>`` is also ``lm_head`` when ``settings.head_bits`` is set (``accllm quantize``, or ``accllm quantize-head``
on an existing checkpoint): codes ``head_bits`` wide, dense (no mask), group scales / zero points as above; the head
is then untied from the embedding (config ``tie_word_embeddings: false``) and the embedding stays an fp16 table.
    report.json         what ``accllm quantize`` measured
    files.sha256        sha256 of every file above (:mod:`accllm.quant.integrity`), checked when loaded

``<linear>`` is the module name, e.g. ``model.layers.0.self_attn.q_proj``.

Conventions (Brevitas fake-quant, reproduced bit-exactly by :func:`fake_quant_weight`,
:func:`fake_quant_act` and :func:`fake_quant_kv`; ``round`` is ``torch.round``, half to even; all in
float32):

- **Weights** (``ShiftedUint8WeightGroupQuantFloat``, bits b, group G along the input dim (ceil(in/G) groups;
  when G does not divide the input dim the row is zero-padded to a whole number of groups, as Brevitas does, and
  only the real columns' codes are stored: the last group is ragged), learned
  from min/max stats): ``code = clamp(round(w / s + z), 0, 2^b - 1)``, ``w_q = (code - z) * s`` with
  ``s`` float32 and ``z`` an integer in [0, 2^b - 1] per (output row, group). Pruned weights have
  ``code == z`` (exactly 0) and ``mask == 0``.
- **Linear inputs, query, probabilities** (``Int8DynamicActPerRowFloat``, per token; for Q per token
  and head): ``s = clamp(absmax(x), min=1e-4) / 128``,
  ``a = clamp(round(x / s), -128, 127)``, ``x_q = a * s`` (no zero point).
- **K and V** (``ShiftedUint8DynamicActPerRowFloat`` at 4 bits, per token and KV head over head_dim):
  ``lo = min(min(x), 0)``, ``hi = max(max(x), 0)``, ``s = clamp(hi - lo, min=1e-4) / 15``,
  ``z = clamp(round(-lo / s), 0, 15)``, ``c = clamp(round(x / s + z), 0, 15)``, ``x_q = (c - z) * s``.
- Attention arithmetic and Λ policy: see :mod:`accllm.quant.attention`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from accllm.quant.integrity import verify, write_manifest
from accllm.quant.prune import HEAD

FORMAT = "accllm-compressed-v1"
WEIGHTS_FILE = "compressed.safetensors"
SETTINGS_FILE = "compression.json"
ACT_MIN_SCALE = 1e-4  # Brevitas' scaling_min_val in generate_quantizers


# ------------------------------------------------------------ reference formulas (the golden model's)

def n_groups(in_features: int, group: int) -> int:
    """Groups per row: ceil(in / G). When G does not divide the input dim the last group is ragged (narrower)."""
    return -(-in_features // group)


def _grouped(x: torch.Tensor, group: int) -> torch.Tensor:
    """[out, in] -> [out, ceil(in/G), G], the input dim zero-padded to a whole number of groups, as Brevitas pads
    it (a zero weight is exactly representable, so the padding changes no code of a real weight)."""
    out_f, in_f = x.shape
    n = n_groups(in_f, group)
    return torch.nn.functional.pad(x, (0, n * group - in_f)).view(out_f, n, group)


def fake_quant_weight(w: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, bits: int, group: int):
    """(codes uint8 [out, in], dequantised float32 [out, in]) for group-wise asymmetric weights."""
    out_f, in_f = w.shape
    s = scales.float()[:, :, None]
    z = zero_points.float()[:, :, None]
    codes = torch.clamp(torch.round(_grouped(w.float(), group) / s + z), 0, 2 ** bits - 1)
    return (codes.to(torch.uint8).view(out_f, -1)[:, :in_f].contiguous(),
            ((codes - z) * s).view(out_f, -1)[:, :in_f].contiguous())


def dequantize_codes(codes, scales, zero_points, group: int):
    out_f, in_f = codes.shape
    deq = (_grouped(codes.float(), group) - zero_points.float()[:, :, None]) * scales.float()[:, :, None]
    return deq.view(out_f, -1)[:, :in_f].contiguous()


def fake_quant_act(x: torch.Tensor):
    """(int8 values, scale [..., 1]) of the per-row symmetric int8 activation quantiser."""
    s = torch.clamp(x.float().abs().amax(-1, keepdim=True), min=ACT_MIN_SCALE) / 128
    return torch.clamp(torch.round(x.float() / s), -128, 127), s


def fake_quant_kv(x: torch.Tensor, bits: int = 4):
    """(codes, scale [..., 1], zero point [..., 1]) of the per-row asymmetric KV quantiser over the last dim."""
    xf = x.float()
    lo = torch.clamp(xf.amin(-1, keepdim=True), max=0)
    hi = torch.clamp(xf.amax(-1, keepdim=True), min=0)
    levels = 2 ** bits - 1
    s = torch.clamp(hi - lo, min=ACT_MIN_SCALE) / levels
    z = torch.clamp(torch.round(-lo / s), 0, levels)
    return torch.clamp(torch.round(xf / s + z), 0, levels), s, z


# ------------------------------------------------------------ packing

def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if 8 % bits:
        return codes.to(torch.uint8)
    per = 8 // bits
    c = codes.to(torch.int32).view(codes.shape[0], -1, per)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (c << shifts).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    if 8 % bits:
        return packed
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    c = (packed.to(torch.int32)[:, :, None] >> shifts) & (2 ** bits - 1)
    return c.view(packed.shape[0], -1)[:, :in_features].to(torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.cpu().numpy().astype(np.uint8), axis=1))


def unpack_mask(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), axis=1)[:, :in_features].astype(bool))


def linear_storage_bytes(shape, settings) -> float:
    """Bytes the engine reads for one linear: codes (2:4: two codes + two 2-bit positions per block of
    four), one fp16 scale and one b-bit zero point per group; fp16 weights when not quantised."""
    out_f, in_f = shape
    if not settings.weight_bits:
        return out_f * in_f * 2
    b = settings.weight_bits
    codes = out_f * in_f * b / 8 if settings.sparsity == "none" else out_f * (in_f // 4) * 2 * (b + 2) / 8
    return codes + out_f * -(-in_f // settings.group_size) * (2 + b / 8)


# ------------------------------------------------------------ the integer view



def linear_bits(settings: dict, name: str) -> int:
    """Code width of a stored linear: ``head_bits`` for the LM head, ``weight_bits`` for the decoder linears."""
    return settings.get("head_bits") if name == HEAD else settings["weight_bits"]


def _quant_linear_integers(mod, group: int) -> dict:
    qw = mod.quant_weight()
    bits = int(qw.bit_width)
    scales = qw.scale_.detach().float().squeeze(-1).cpu()
    zps = qw.zero_point_.detach().float().squeeze(-1).cpu()
    codes, deq = fake_quant_weight(mod.weight.detach().cpu(), scales, zps, bits, group)
    return {"codes": codes, "scales": scales.contiguous(), "zero_points": zps.to(torch.uint8),
            "fake_quant": qw.value.detach().float().cpu(), "dequantized": deq}


def integer_linear_weights(model_or_dir, with_reference: bool = False) -> dict:
    """``{linear name: {"codes" uint8 [out,in], "scales" f32 [out,in/G], "zero_points" uint8 [out,in/G],
    "mask" bool [out,in]}}`` for every quantised linear (decoder linears; ``lm_head`` when quantised, all-ones
    mask), from a Brevitas model or a checkpoint directory. ``with_reference`` adds Brevitas' own fake-quant weight
    ("fake_quant") for checking."""
    from accllm.quant.prune import quant_linears

    if isinstance(model_or_dir, (str, Path)):
        tensors, settings = _read(Path(model_or_dir))
        out = {}
        for name in sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith(".codes")}):
            bits = linear_bits(settings, name)
            packed = tensors[f"{name}.codes"]
            in_f = packed.shape[1] * (8 // bits if 8 % bits == 0 else 1)
            codes = unpack_codes(packed, bits, in_f)
            mask = tensors.get(f"{name}.mask")
            out[name] = {"codes": codes, "scales": tensors[f"{name}.scales"],
                         "zero_points": tensors[f"{name}.zero_points"],
                         "mask": torch.ones_like(codes, dtype=torch.bool) if mask is None else unpack_mask(mask, in_f)}
        return out
    model = model_or_dir
    out = {}
    for name, mod in quant_linears(model).items():
        if getattr(mod, "weight_quant", None) is None or not mod.weight_quant.is_quant_enabled:
            continue
        d = _quant_linear_integers(mod, model.accllm_settings.group_size)
        mask = getattr(mod, "sparse_mask", None)
        d["mask"] = mask.cpu().bool() if mask is not None else torch.ones_like(d["codes"], dtype=torch.bool)
        if not with_reference:
            d.pop("fake_quant")
            d.pop("dequantized")
        out[name] = d
    return out


# ------------------------------------------------------------ save / load

class SafetensorsStream:
    """One safetensors file written tensor by tensor: each tensor's bytes go to a spool file beside ``path`` as it
    is added (memory holds one tensor), and ``close`` writes the header (the safetensors layout: 8-byte header
    length, JSON header, data) in front of the spooled data."""

    _DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.uint8: "U8", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.bool: "BOOL"}

    def __init__(self, path):
        self.path = Path(path)
        self._spool_path = self.path.with_name(self.path.name + ".spool")
        self._spool = open(self._spool_path, "wb")
        self.header: dict[str, dict] = {}
        self.size = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        if name in self.header:
            raise ValueError(f"duplicate checkpoint tensor {name}")
        t = t.detach().cpu().contiguous()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        self.header[name] = {"dtype": self._DTYPES[t.dtype], "shape": list(t.shape),
                             "data_offsets": [self.size, self.size + len(data)]}
        self._spool.write(data)
        self.size += len(data)

    def close(self) -> Path:
        import struct

        self._spool.close()
        head = json.dumps(self.header, separators=(",", ":"), sort_keys=True).encode()
        head += b" " * (-len(head) % 8)
        with open(self.path, "wb") as out, open(self._spool_path, "rb") as src:
            out.write(struct.pack("<Q", len(head)) + head)
            shutil.copyfileobj(src, out, 16 << 20)
        self._spool_path.unlink()
        return self.path


def layer_tensors(layer, settings, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of one decoder layer (Brevitas linears + norms), named ``prefix`` + module name."""
    from accllm.quant.prune import decoder_linears

    layer.accllm_settings = settings
    lin = decoder_linears(layer)
    tensors: dict[str, torch.Tensor] = {}
    if settings.weight_bits:
        for name, d in integer_linear_weights(layer).items():
            tensors[f"{prefix}{name}.codes"] = pack_codes(d["codes"], settings.weight_bits)
            tensors[f"{prefix}{name}.scales"] = d["scales"]
            tensors[f"{prefix}{name}.zero_points"] = d["zero_points"]
            tensors[f"{prefix}{name}.mask"] = pack_mask(d["mask"])
    else:
        for name, mod in lin.items():
            tensors[f"{prefix}{name}.weight"] = mod.weight.detach().half().cpu()
    tensors.update(_plain_tensors(layer, prefix, {id(m.weight) for m in lin.values()}))
    return tensors


def outer_tensors(model) -> dict[str, torch.Tensor]:
    """The checkpoint tensors outside the decoder layers: embedding, final norm, and the LM head (its codes when
    quantised, else fp16 when untied)."""
    from accllm.quant.prune import quant_linears

    skip = {id(p) for p in model.model.layers.parameters()}
    out = {}
    head = quant_linears(model).get(HEAD)
    if head is not None:
        skip.add(id(head.weight))
        out.update(head_tensors(head))
    return {**out, **_plain_tensors(model, "", skip)}


def head_tensors(head) -> dict[str, torch.Tensor]:
    """The quantised LM head's stored tensors (Brevitas QuantLinear -> packed codes, scales, zero points)."""
    qw = head.quant_weight()
    d = _quant_linear_integers(head, int(qw.value_.shape[-1]))
    return {f"{HEAD}.codes": pack_codes(d["codes"], int(qw.bit_width)), f"{HEAD}.scales": d["scales"],
            f"{HEAD}.zero_points": d["zero_points"]}


def _plain_tensors(module, prefix: str, skip: set) -> dict[str, torch.Tensor]:
    out, seen = {}, set(skip)
    for name, p in module.named_parameters():
        if id(p) in seen or "_quant" in name:
            continue
        seen.add(id(p))  # a tied LM head is the embedding's tensor: stored once
        out[prefix + name] = p.detach().half().cpu().contiguous()
    return out


class CheckpointWriter:
    """Writes a compressed checkpoint (the layout above) a part at a time: the embedding and head, then decoder
    layer after decoder layer, so a model larger than memory can be saved as it is compressed. The whole-model
    path (:func:`save_compressed`) writes through it too, in the same order, so both give the same bytes."""

    def __init__(self, out_dir, settings):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self._stream = SafetensorsStream(self.out_dir / WEIGHTS_FILE)

    def add(self, tensors: dict) -> None:
        for name in sorted(tensors):
            self._stream.add(name, tensors[name])

    def add_layer(self, index: int, layer) -> None:
        self.add(layer_tensors(layer, self.settings, f"{_LAYER_PREFIX}{index}."))

    def finish(self, config, tokenizer, report: dict | None = None) -> Path:
        self._stream.close()
        (self.out_dir / SETTINGS_FILE).write_text(
            json.dumps({"format": FORMAT, "settings": self.settings.to_json()}, indent=1))
        config.save_pretrained(self.out_dir)
        tokenizer.save_pretrained(self.out_dir)
        if report is not None:
            (self.out_dir / "report.json").write_text(json.dumps(report, indent=1))
        write_manifest(self.out_dir)
        return self.out_dir


def save_compressed(model, tokenizer, settings, masks, out_dir: Path, source_dir: Path | None = None,
                    report: dict | None = None) -> Path:
    model.accllm_settings = settings
    w = CheckpointWriter(out_dir, settings)
    w.add(outer_tensors(model))
    for i, layer in enumerate(model.model.layers):
        w.add_layer(i, layer)
    return w.finish(model.config, tokenizer, report)


# The files a loader reads (tokenizer.json and tokenizer_config.json when the tokenizer has them).
CHECKPOINT_FILES = (WEIGHTS_FILE, SETTINGS_FILE, "config.json")


def verify_checkpoint(path) -> None:
    """The checkpoint's files against its ``files.sha256``: a missing, modified or truncated one is refused
    naming it (before a corrupt safetensors header or a flipped weight reaches a model)."""
    path = Path(path)
    if not (path / SETTINGS_FILE).is_file():
        raise FileNotFoundError(f"{path} is not an accllm compressed checkpoint (no {SETTINGS_FILE})")
    optional = [n for n in ("tokenizer.json", "tokenizer_config.json") if (path / n).exists()]
    verify(path, CHECKPOINT_FILES + tuple(optional))


def _read(path: Path, layers: list[int] | None = None, verify_files: bool = True, outer: bool = True):
    """``(tensors, settings)``; with ``layers`` only those decoder layers' tensors (renumbered 0, 1, ... in the
    order given) and (``outer``) the rest of the model, read tensor by tensor so memory holds no other layer."""
    from safetensors import safe_open

    meta_path = path / SETTINGS_FILE
    if verify_files:
        verify_checkpoint(path)
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    renumber = None if layers is None else {str(i): str(j) for j, i in enumerate(layers)}
    tensors = {}
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        for key in f.keys():
            if renumber is not None and key.startswith(_LAYER_PREFIX):
                index, rest = key[len(_LAYER_PREFIX):].split(".", 1)
                if index not in renumber:
                    continue
                tensors[f"{_LAYER_PREFIX}{renumber[index]}.{rest}"] = f.get_tensor(key)
            elif outer:
                tensors[key] = f.get_tensor(key)
    for key in tensors:
        if key.endswith(".scales"):  # the engine's weight stream holds fp16 scales; every reader sees those
            tensors[key] = tensors[key].half().float()
    return tensors, meta["settings"]


_LAYER_PREFIX = "model.layers."


def load_compressed(path, device="cpu", layers: list[int] | None = None, verify_files: bool = True):
    """Rebuild the Brevitas fake-quant model from a checkpoint directory: ``(model, tokenizer, settings)``.
    ``layers``: only these decoder layers (as layers 0, 1, ... of the model; ``[]``: embedding and head only), so
    a model larger than memory can be worked on one layer at a time (:func:`iter_compressed_layers`)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from accllm.quant import attention as attn
    from accllm.quant.quantize import CompressionSettings, quantize_layers, set_weight_quant_params

    path = Path(path)
    tensors, sdict = _read(path, layers, verify_files)
    s = CompressionSettings.from_json(sdict)
    config = LlamaConfig.from_pretrained(path)
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < config.num_hidden_layers]
        if bad:
            raise ValueError(f"{path}: the model has {config.num_hidden_layers} decoder layers, not {bad}")
        config.num_hidden_layers = len(layers)
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i] for i in layers]
    if s.head_bits and config.tie_word_embeddings:
        raise ValueError(f"{path}: the checkpoint quantises its LM head (head_bits {s.head_bits}) but config.json ties "
                         "the head to the embedding (tie_word_embeddings: true); loading it would overwrite the "
                         "embedding with the head's codes")
    model = LlamaForCausalLM(config).eval()
    attn.install(model, s.policy())
    with torch.no_grad():
        masks = _fill_weights(model, tensors, s)
        if s.head_bits:
            codes = unpack_codes(tensors[f"{HEAD}.codes"], s.head_bits, config.hidden_size)
            model.lm_head.weight.copy_(dequantize_codes(codes, tensors[f"{HEAD}.scales"],
                                                        tensors[f"{HEAD}.zero_points"], s.group_size))
    model = quantize_layers(model, s, masks if s.sparsity == "2:4" and s.weight_bits else None)
    with torch.no_grad():
        model(input_ids=torch.tensor([[0, 1]]))  # initialise Brevitas' parameters, then overwrite them
        _set_quant_params(model, tensors, s)
        if s.head_bits:
            set_weight_quant_params(model.lm_head, tensors[f"{HEAD}.scales"], tensors[f"{HEAD}.zero_points"],
                                    s.head_bits)
    model.accllm_settings = s
    return model.to(device), AutoTokenizer.from_pretrained(path), s


def _fill_weights(module, tensors: dict, s) -> dict:
    """Copy the stored tensors into ``module``'s parameters (names relative to ``module``), decoder linears
    dequantised from their codes; returns their 2:4 masks."""
    from accllm.quant.prune import decoder_linears

    masks = {}
    for name, p in module.named_parameters():
        if name in tensors:
            p.copy_(tensors[name].float())
    for name, mod in decoder_linears(module).items():
        if s.weight_bits:
            in_f = mod.weight.shape[1]
            codes = unpack_codes(tensors[f"{name}.codes"], s.weight_bits, in_f)
            mod.weight.copy_(dequantize_codes(codes, tensors[f"{name}.scales"], tensors[f"{name}.zero_points"],
                                              s.group_size))
            masks[name] = unpack_mask(tensors[f"{name}.mask"], in_f)
        else:
            mod.weight.copy_(tensors[f"{name}.weight"].float())
    return masks


def _set_quant_params(module, tensors: dict, s) -> None:
    """Brevitas' weight scales and zero points of ``module``'s decoder linears := the stored ones."""
    from accllm.quant.prune import decoder_linears
    from accllm.quant.quantize import set_weight_quant_params

    if s.weight_bits:
        for name, mod in decoder_linears(module).items():
            set_weight_quant_params(mod, tensors[f"{name}.scales"], tensors[f"{name}.zero_points"], s.weight_bits)


@torch.no_grad()
def load_compressed_layer(path, index: int, verify_files: bool = True):
    """Decoder layer ``index`` alone, the same Brevitas layer as layer ``index`` of :func:`load_compressed` (as
    its layer 0 when loaded with ``layers=[index]``), without building the embedding or the head."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from accllm.quant import attention as attn
    from accllm.quant.quantize import CompressionSettings, quantize_layer, single_layer_view

    path = Path(path)
    config = LlamaConfig.from_pretrained(path)
    if not 0 <= index < config.num_hidden_layers:
        raise ValueError(f"{path}: the model has {config.num_hidden_layers} decoder layers, not [{index}]")
    tensors, sdict = _read(path, [index], verify_files, outer=False)
    s = CompressionSettings.from_json(sdict)
    prefix = f"{_LAYER_PREFIX}0."
    tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    with torch.device("meta"):  # no random initialisation of weights about to be overwritten
        layer = LlamaDecoderLayer(config, 0)
    layer = layer.to_empty(device="cpu").eval()
    rotary = LlamaRotaryEmbedding(config)
    attn.install(single_layer_view(layer, rotary), s.policy())
    masks = _fill_weights(layer, tensors, s)
    layer = quantize_layer(layer, s, masks if s.sparsity == "2:4" and s.weight_bits else None)
    x, pos = torch.zeros(1, 2, config.hidden_size), torch.arange(2)[None]
    layer(x, position_embeddings=rotary(x, pos), position_ids=pos)  # initialise Brevitas, then overwrite
    _set_quant_params(layer, tensors, s)
    return layer


def iter_compressed_layers(path):
    """The checkpoint's decoder layers one at a time, each a Brevitas layer read alone from the checkpoint (the
    files are verified once, before the first): memory holds one layer, however many the model has."""
    from transformers import LlamaConfig

    verify_checkpoint(path)
    for i in range(LlamaConfig.from_pretrained(path).num_hidden_layers):
        layer = load_compressed_layer(path, i, verify_files=False)
        yield layer
        del layer
        _release_freed_memory()


def _release_freed_memory() -> None:
    """Hand freed heap back to the OS between layers; without it glibc keeps each layer's arenas and the
    resident size creeps up layer by layer."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
