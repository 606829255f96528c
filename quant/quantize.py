"""AccLLM compression with Brevitas: 2:4 (Wanda) pruning, Λ attention and W2A8KV4, and ``accllm quantize``.

Pipeline (:func:`accllm.quant.compress.compress`): install :class:`~accllm.quant.attention.AccAttention` (Λ policy) ->
Wanda 2:4 pruning of the decoder projections -> Brevitas quantisation (asymmetric group-wise
weights with an integer zero point, int8 per-token dynamic inputs at every decoder linear, int8 Q and
probabilities, 4-bit per-token K/V) -> weight rounding by round-to-nearest or Brevitas GPTQ (mask
aware: pruned weights are "quantised" to zero, so GPTQ compensates their error) -> optional
distillation fine-tune (:mod:`accllm.quant.qat`). Calibration text comes from the corpus "train" split.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from accllm.quant import attention as attn
from accllm.quant.prune import DECODER_LINEARS, decoder_linears, quant_linears  # noqa: F401

WEIGHT_BITS = (2, 3, 4, 8)
HEAD_BITS = (4, 8)  # the LM head's codes: 4 is the engine's (its cores have no 8-bit weight mode)
ACT_BITS = (8,)
KV_BITS = (4, 8)
WEIGHT_METHODS = ("rtn", "gptq")
PRUNE_METHODS = ("sparsegpt", "wanda")
CALIB_TEXTS = ("python", "python+english")


@dataclass
class CompressionSettings:
    sparsity: str = "2:4"            # "2:4" or "none"
    weight_bits: int | None = 2      # None: float weights
    group_size: int = 32
    weight_method: str = "gptq"      # "rtn" or "gptq"
    head_bits: int | None = 4        # LM head: group-wise asymmetric codes (untied from the embedding); None: fp16
    prune_method: str = "wanda"      # "wanda" (mask only) or "sparsegpt" (mask + weight update; slower, better)
    calib_text: str = "python"       # corpus "train" split, + the English licence texts' "train" split
    act_bits: int | None = 8         # linear inputs, query and probabilities
    kv_bits: int | None = 4
    lambda_attention: bool = True
    sinks: int = 4
    window: int = 124
    positions: str = "cache"
    calib_samples: int = 128
    calib_seqlen: int = 256
    qat_steps: int = 0
    qat_lr: float = 1e-4
    qat_batch: int = 16
    qat_seconds: float = 0.0         # stop the fine-tune after this long (0: run all steps)
    qat_generated: int = 0           # teacher-generated sequences mixed into the fine-tune (data-free, LLM-QAT)
    qat_learn_masks: bool = False    # re-choose the 2:4 masks during the fine-tune (SR-STE) instead of keeping them
    seed: int = 0

    def policy(self) -> attn.LambdaPolicy | None:
        return attn.LambdaPolicy(self.sinks, self.window, self.positions) if self.lambda_attention else None

    def validate(self, config=None) -> None:
        if self.sparsity not in ("2:4", "none"):
            raise ValueError(f"sparsity must be '2:4' or 'none', got {self.sparsity!r}")
        if self.weight_bits is not None and self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"unsupported weight bit width {self.weight_bits}; choose one of {WEIGHT_BITS} (the engine runs 2 or 4)")
        if self.act_bits is not None and self.act_bits not in ACT_BITS:
            raise ValueError(f"unsupported activation bit width {self.act_bits}; choose one of {ACT_BITS}")
        if self.kv_bits is not None and self.kv_bits not in KV_BITS:
            raise ValueError(f"unsupported KV bit width {self.kv_bits}; choose one of {KV_BITS} (the engine runs 4)")
        if self.head_bits is not None and self.head_bits not in HEAD_BITS:
            raise ValueError(f"unsupported LM head bit width {self.head_bits}; choose one of {HEAD_BITS} (the engine runs 4)")
        if self.weight_method not in WEIGHT_METHODS:
            raise ValueError(f"weight method must be one of {WEIGHT_METHODS}, got {self.weight_method!r}")
        if self.prune_method not in PRUNE_METHODS:
            raise ValueError(f"prune method must be one of {PRUNE_METHODS}, got {self.prune_method!r}")
        if self.calib_text not in CALIB_TEXTS:
            raise ValueError(f"calibration text must be one of {CALIB_TEXTS}, got {self.calib_text!r}")
        if self.qat_generated < 0:
            raise ValueError(f"generated distillation sequences must be >= 0, got {self.qat_generated}")
        if self.group_size <= 0:
            raise ValueError(f"group size must be > 0, got {self.group_size}")
        if self.calib_samples <= 0 or self.calib_seqlen <= 1:
            raise ValueError("calibration needs at least one sample of at least 2 tokens")
        if self.qat_steps < 0:
            raise ValueError(f"QAT steps must be >= 0, got {self.qat_steps}")
        if self.qat_steps and (self.qat_lr <= 0 or self.qat_batch <= 0 or self.qat_seconds < 0):
            raise ValueError(f"distillation needs qat_lr > 0, qat_batch > 0 and qat_seconds >= 0; got "
                             f"{self.qat_lr}, {self.qat_batch}, {self.qat_seconds}")
        if self.qat_learn_masks and self.sparsity != "2:4":
            raise ValueError(f"qat_learn_masks needs sparsity '2:4' (got {self.sparsity!r}): it learns 2:4 masks")
        if self.qat_learn_masks and not self.qat_steps:
            raise ValueError("qat_learn_masks needs qat_steps > 0: the masks are learned by the distillation")
        self.policy()  # validates sinks / window / positions
        if config is not None:
            dims = linear_in_features(config)
            for name, k in dims.items():
                # a group size that does not divide k leaves a ragged last group (see accllm.quant.checkpoint)
                if self.sparsity == "2:4" and k % 4:
                    raise ValueError(f"2:4 sparsity needs input dimensions divisible by 4; {name} has {k}")
            if self.lambda_attention and self.sinks + self.window > config.max_position_embeddings:
                raise ValueError(f"sinks + window = {self.sinks + self.window} exceeds the trained context "
                                 f"{config.max_position_embeddings}; Λ attention would see unseen distances")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "CompressionSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {"head_bits": None, **d}  # written before the head was quantised: an fp16 head
        return cls(**{k: v for k, v in d.items() if k in names})


def linear_in_features(config) -> dict[str, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    h = config.hidden_size
    return {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": config.num_attention_heads * head_dim,
            "gate_proj": h, "up_proj": h, "down_proj": config.intermediate_size}


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_TRAIN_STREAMS: dict = {}


def train_stream(tokenizer, text: str = "python") -> torch.Tensor:
    """The "train" splits as one id stream: all calibration and fine-tuning text comes from here (``text``:
    "python" = the Python-docs corpus; "python+english" adds the English licence texts' "train" split)."""
    from accllm.quant.corpus import english_documents, load_documents, token_stream

    key = (getattr(tokenizer, "name_or_path", None), len(tokenizer), text)
    if key not in _TRAIN_STREAMS:
        docs = load_documents("train") + (english_documents("train") if text == "python+english" else [])
        _TRAIN_STREAMS[key] = token_stream(tokenizer, docs)
    return _TRAIN_STREAMS[key]


def calibration_batches(tokenizer, samples: int, seqlen: int, seed: int = 0, batch: int = 8,
                        text: str = "python") -> list[torch.Tensor]:
    """Random windows of the "train" splits (never the held-out splits), as [b, seqlen] batches."""
    ids = train_stream(tokenizer, text)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seqlen - 1, (samples,), generator=g)
    windows = torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
    return list(windows.split(batch))


# ---------------------------------------------------------------- Brevitas quantisers

def brevitas_quantizers(s: CompressionSettings) -> dict:
    """Quantiser injectors from Brevitas' LLM example (``generate_quantizers``), engine conventions."""
    from brevitas_examples.common.generative.quantize import generate_quantizers

    q = generate_quantizers(
        weight_bit_width=s.weight_bits or 8, weight_param_method="stats", weight_scale_precision="float_scale",
        weight_quant_type="asym", weight_quant_granularity="per_group", weight_group_size=s.group_size,
        quantize_weight_zero_point=True, weight_scaling_impl_type="parameter_from_stats",
        input_bit_width=s.act_bits or 8, input_quant_format="int", input_scale_precision="float_scale",
        input_scale_type="dynamic", input_param_method="stats", input_quant_type="sym",
        input_quant_granularity="per_row",
        attn_bit_width=s.kv_bits or 8, attn_quant_type="asym", attn_quant_granularity="per_row",
        quantize_input_zero_point=True, quant_attn_mode="sdpa", attn_quant_config="qkv")
    return {"weight": q["weight_quant"] if s.weight_bits else None,
            "head": q["weight_quant"].let(bit_width=s.head_bits) if s.head_bits else None,
            "act": q["linear_input_quant"] if s.act_bits else None,
            "kv": q["k_transposed_quant"] if s.kv_bits else None}


def _masked_quant_linear_class():
    import brevitas.nn as qnn

    class MaskedQuantLinear(qnn.QuantLinear):
        """QuantLinear whose quantised weight is zero where the 2:4 mask prunes: GPTQ then treats
        pruned weights as quantised to 0 and propagates their error (SparseGPT with a fixed mask)."""

        def quant_weight(self, quant_input=None, subtensor_slice_list=None):
            out = super().quant_weight(quant_input, subtensor_slice_list)
            mask = getattr(self, "sparse_mask", None)
            if mask is None or subtensor_slice_list is not None or not hasattr(out, "value_"):
                return out
            m = mask.to(out.value_.device, out.value_.dtype)
            m = nn.functional.pad(m, (0, out.value_.shape[-2] * out.value_.shape[-1] - m.shape[-1]))  # ragged group
            value = out.value_ * m.view(out.value_.shape)
            return out._replace(value_=value)

    return MaskedQuantLinear


def quantize_layers(model, s: CompressionSettings, masks: dict | None = None) -> nn.Module:
    """Swap decoder linears for Brevitas QuantLinear and attach the attention quantisers, layer by layer
    (:func:`quantize_layer`, which the streaming path calls on one loaded layer at a time)."""
    for i, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{i}."
        layer_masks = {k[len(prefix):]: v for k, v in masks.items() if k.startswith(prefix)} if masks else None
        model.model.layers[i] = quantize_layer(layer, s, layer_masks)
    if s.head_bits:
        quantize_head(model, s)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def quantize_head(model, s: CompressionSettings) -> None:
    """The LM head as a Brevitas QuantLinear: the decoder linears' group-wise asymmetric quantiser at ``head_bits``,
    int8 per-token input as every linear; untied from the embedding first when tied (the embedding stays an fp16
    table: a lookup has nothing to multiply). Its scales are taken from the weights' statistics here."""
    import brevitas.nn as qnn

    full = brevitas_quantizers(CompressionSettings(**{**s.to_json(), "act_bits": 8}))
    old = model.lm_head
    w = old.weight.detach().clone()
    model.config.tie_word_embeddings = False
    head = qnn.QuantLinear(old.in_features, old.out_features, bias=False, weight_quant=full["head"],
                           input_quant=full["act"], dtype=w.dtype, device=w.device)
    with torch.no_grad():
        head.weight.copy_(w)
        head.quant_weight()
    model.lm_head = head


def quantize_layer(layer, s: CompressionSettings, masks: dict | None = None) -> nn.Module:
    """One decoder layer: its linears become Brevitas QuantLinear (mask-aware), its attention gets the Q/K/V/P
    quantisers; ``masks``: ``{linear name within the layer: bool mask}``. Brevitas' weight scales are taken from
    the weights' statistics here (the same values a first forward pass would take)."""
    import brevitas.nn as qnn
    from brevitas.graph.quantize import layerwise_quantize

    qz = brevitas_quantizers(s)
    dtype = next(layer.parameters()).dtype
    if qz["weight"] is not None or qz["act"] is not None:
        cls = _masked_quant_linear_class()
        kwargs = {"weight_quant": qz["weight"], "input_quant": qz["act"], "dtype": dtype}
        keep_dense = [n for n, m in layer.named_modules()
                      if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] not in DECODER_LINEARS]
        layer = layerwise_quantize(layer, compute_layer_map={nn.Linear: (cls, kwargs)}, name_blacklist=keep_dense)
        for name, mod in decoder_linears(layer).items():
            if masks:
                mod.register_buffer("sparse_mask", masks[name].to(mod.weight.device), persistent=False)
            if qz["weight"] is not None:
                with torch.no_grad():
                    mod.quant_weight()
    for m in attn.attention_modules(layer):
        sd = m.sdpa
        if qz["act"] is not None:
            sd.q_quant = qnn.QuantIdentity(act_quant=qz["act"], return_quant_tensor=True)
            sd.p_quant = qnn.QuantIdentity(act_quant=qz["act"], return_quant_tensor=True)
        if qz["kv"] is not None:
            sd.k_quant = qnn.QuantIdentity(act_quant=qz["kv"], return_quant_tensor=True)
            sd.v_quant = qnn.QuantIdentity(act_quant=qz["kv"], return_quant_tensor=True)
    return layer.eval()


def remove_accelerate_hooks(model) -> None:
    from accelerate.hooks import remove_hook_from_module

    remove_hook_from_module(model, recurse=True)


def place(model, device: torch.device, offload: bool):
    """Put the model on ``device``; with ``offload`` spread it over GPU(s)/CPU with accelerate, as
    Brevitas' LLM example does for checkpoints larger than one GPU."""
    if offload:
        from brevitas_examples.common.accelerate_utils.accelerate import offload_model

        return offload_model(model)
    return model.to(device)


# ---------------------------------------------------------------- the pipeline


def _column_gptq_class():
    from brevitas.graph.gptq import GPTQ

    class ColumnGPTQ(GPTQ):
        """Brevitas GPTQ whose column quantiser reads the layer's group scales and zero points once per layer.

        For group-wise weights Brevitas re-quantises the whole matrix for every column (no slicing), which makes
        GPTQ on a 135 M model take minutes per run. The scales and zero points are parameters fixed during GPTQ
        (``parameter_from_stats``), so one column's quantised value is the documented formula
        (:func:`accllm.quant.checkpoint.fake_quant_weight`, checked bit-exact against Brevitas in the tests),
        times the 2:4 mask; everything else is Brevitas' algorithm."""

        def single_layer_update(self, *args, **kwargs):
            qw = self.layer.quant_weight()
            self._scale = qw.scale_.detach().float().squeeze(-1)  # [out, groups]
            self._zero = qw.zero_point_.detach().float().squeeze(-1)
            self._levels = float(2 ** int(qw.bit_width) - 1)
            self._group = qw.value_.shape[-1]
            return super().single_layer_update(*args, **kwargs)

        def get_quant_weights(self, i, i1, permutation_list, with_quant_history=False):
            if with_quant_history:
                return super().get_quant_weights(i, i1, permutation_list, with_quant_history)
            col = int(permutation_list[0][i1 + i])
            g = col // self._group
            s, z = self._scale[:, g], self._zero[:, g]
            q = (torch.clamp(torch.round(self.layer.weight.data[:, col].float() / s + z), 0, self._levels) - z) * s
            mask = getattr(self.layer, "sparse_mask", None)
            if mask is not None:
                q = q * mask[:, col].to(q.dtype)
            return q[None]  # [1, OC]

    return ColumnGPTQ


def gptq(model, batches, progress: bool = True) -> None:
    """Brevitas GPTQ (act-order) over the quantised decoder linears, layer by layer (column quantiser: see
    ``ColumnGPTQ``)."""
    from brevitas.graph.gptq import gptq_mode
    from tqdm import tqdm

    device = next(model.parameters()).device
    # q/k/v and gate/up read the same input: one calibration pass serves each group (Hessians kept on the
    # model's device)
    parallel = []
    for i in range(len(model.model.layers)):
        parallel += [[f"model.layers.{i}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")],
                     [f"model.layers.{i}.mlp.{n}" for n in ("gate_proj", "up_proj")]]
    with torch.no_grad(), gptq_mode(model, group_of_parallel_layers=parallel, act_order=True,
                                    use_quant_activations=False, create_weight_orig=False,
                                    gptq_class=_column_gptq_class(), device=str(device)) as g:
        # few large batches: each calibration pass re-quantises every weight it goes through (Brevitas' proxies)
        big = list(torch.cat(batches).split(64))
        for _ in tqdm(range(g.num_layers), desc="gptq", disable=not progress):
            for x in big:
                g.model(input_ids=x.to(device))
            g.update()


def gptq_head(model, batches, progress: bool = True) -> None:
    """Brevitas GPTQ (act-order, column quantiser of ``ColumnGPTQ``) of the LM head alone, the rest of the model as
    it is: the head's inputs are what the model feeds it on the calibration batches."""
    from brevitas.graph.gptq import gptq_mode
    from tqdm import tqdm

    device = next(model.parameters()).device
    inputs = []
    hook = model.lm_head.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    try:
        with torch.no_grad():
            for x in tqdm(batches, desc="head inputs", disable=not progress):
                model(input_ids=x.to(device))
    finally:
        hook.remove()
    # a one-module model, so that Brevitas' hook on the head fires when gptq_mode calls it
    with torch.no_grad(), gptq_mode(nn.Sequential(model.lm_head), act_order=True, use_quant_activations=False,
                                    create_weight_orig=False, gptq_class=_column_gptq_class(), device=str(device)) as g:
        for x in inputs:
            g.model(x)
        g.update()


def set_weight_quant_params(mod, scales: torch.Tensor, zps: torch.Tensor, bits: int) -> None:
    """Point Brevitas' learned (parameter_from_stats) scale and zero point at the stored integers."""
    tq = mod.weight_quant.tensor_quant
    levels = 2 ** bits - 1
    s = scales.to(tq.scaling_impl.value.device)[:, :, None]
    value = s * levels
    for _ in range(4):  # Brevitas divides by (2^b - 1): nudge by ulps until that gives s exactly
        off = value / levels - s
        if not bool(off.any()):
            break
        value = torch.where(off > 0, torch.nextafter(value, torch.zeros_like(value)),
                            torch.where(off < 0, torch.nextafter(value, value * 2), value))
    tq.scaling_impl.value.data.copy_(value)
    tq.zero_point_impl.value.data.copy_(-zps.float().to(s.device)[:, :, None] * s)


def round_scales_to_fp16(model, bits: int | None = None) -> None:
    """The weight stream stores group scales as fp16 and the engine dequantises with them: set Brevitas' learned
    scales to the nearest fp16 value (normal range), zero points unchanged, so that fake-quant computes what the
    engine does. Without it, models with massive activations (SmolLM2: |h| ~ 1e4) part from the golden model by
    ~10 % of the logits."""
    with torch.no_grad():
        for mod in quant_linears(model).values():
            if getattr(mod, "weight_quant", None) is None or not mod.weight_quant.is_quant_enabled:
                continue
            qw = mod.quant_weight()
            scale = qw.scale_.detach().float().squeeze(-1)
            zero = qw.zero_point_.detach().float().squeeze(-1)
            s16 = scale.clamp(min=2.0 ** -14).half().float()
            set_weight_quant_params(mod, s16.cpu(), zero.cpu(), int(qw.bit_width))


def round_dense_to_fp16(model) -> None:
    """The checkpoint stores embeddings and norms in fp16; round the live model the same way so that
    a reloaded checkpoint computes exactly what the saved model did."""
    lin = {id(m.weight) for m in quant_linears(model).values()}
    for name, p in model.named_parameters():
        if id(p) not in lin and "_quant" not in name:
            p.data = p.data.half().float()


# ---------------------------------------------------------------- layer by layer (bounded memory)


def single_layer_view(layer, rotary):
    """The ``model.model.layers`` / ``model.model.rotary_emb`` view of one loaded layer that
    :func:`accllm.quant.attention.install` expects."""
    from types import SimpleNamespace

    return SimpleNamespace(model=SimpleNamespace(layers=[layer], rotary_emb=rotary))


