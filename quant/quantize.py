"""AccLLM compression with Brevitas: 2:4 (Wanda) pruning, Λ attention and W2A8KV4, and ``accllm quantize``.

Pipeline (:func:`compress`): install :class:`~accllm.quant.attention.AccAttention` (Λ policy) ->
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
from accllm.quant.prune import DECODER_LINEARS, apply_masks, decoder_linears, prune_2to4, sparsegpt_prune_2to4

WEIGHT_BITS = (2, 3, 4, 8)
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
    seed: int = 0

    def policy(self) -> attn.LambdaPolicy | None:
        return attn.LambdaPolicy(self.sinks, self.window, self.positions) if self.lambda_attention else None

    def validate(self, config=None) -> None:
        if self.sparsity not in ("2:4", "none"):
            raise ValueError(f"sparsity must be '2:4' or 'none', got {self.sparsity!r}")
        if self.weight_bits is not None and self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"unsupported weight bit width {self.weight_bits}; choose one of {WEIGHT_BITS} (the engine runs 2)")
        if self.act_bits is not None and self.act_bits not in ACT_BITS:
            raise ValueError(f"unsupported activation bit width {self.act_bits}; choose one of {ACT_BITS}")
        if self.kv_bits is not None and self.kv_bits not in KV_BITS:
            raise ValueError(f"unsupported KV bit width {self.kv_bits}; choose one of {KV_BITS} (the engine runs 4)")
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
    """Swap decoder linears for Brevitas QuantLinear and attach the attention quantisers."""
    import brevitas.nn as qnn
    from brevitas.graph.quantize import layerwise_quantize

    qz = brevitas_quantizers(s)
    dtype = next(model.parameters()).dtype
    if qz["weight"] is not None or qz["act"] is not None:
        cls = _masked_quant_linear_class()
        kwargs = {"weight_quant": qz["weight"], "input_quant": qz["act"], "dtype": dtype}
        keep_dense = [n for n, m in model.named_modules()
                      if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] not in DECODER_LINEARS]
        model = layerwise_quantize(model, compute_layer_map={nn.Linear: (cls, kwargs)}, name_blacklist=keep_dense)
        if masks:
            for name, mod in decoder_linears(model).items():
                mod.register_buffer("sparse_mask", masks[name].to(mod.weight.device), persistent=False)
    for m in attn.attention_modules(model):
        sd = m.sdpa
        if qz["act"] is not None:
            sd.q_quant = qnn.QuantIdentity(act_quant=qz["act"], return_quant_tensor=True)
            sd.p_quant = qnn.QuantIdentity(act_quant=qz["act"], return_quant_tensor=True)
        if qz["kv"] is not None:
            sd.k_quant = qnn.QuantIdentity(act_quant=qz["kv"], return_quant_tensor=True)
            sd.v_quant = qnn.QuantIdentity(act_quant=qz["kv"], return_quant_tensor=True)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


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

def compress(model, tokenizer, s: CompressionSettings, device=None, offload: bool = False,
             teacher=None, progress: bool = True, masks: dict | None = None):
    """Compress ``model`` (float, HF Llama) in place; returns ``(model, masks)``. ``masks``: the 2:4 masks of a
    model that is already pruned (e.g. the result of an earlier run), so pruning is not done again."""
    s.validate(model.config)
    torch.manual_seed(s.seed)
    device = pick_device(device)
    attn.install(model, s.policy())
    batches = calibration_batches(tokenizer, s.calib_samples, s.calib_seqlen, s.seed, text=s.calib_text) if (
        s.sparsity != "none" or s.weight_bits or s.qat_steps) else []
    model = place(model, device, offload)
    if s.sparsity != "2:4":
        masks = None
    elif masks is None:
        masks = (sparsegpt_prune_2to4 if s.prune_method == "sparsegpt" else prune_2to4)(model, batches, progress)
    if offload:
        remove_accelerate_hooks(model)
    model = quantize_layers(model, s, masks)
    model = place(model, device, offload)
    with torch.no_grad():
        model(input_ids=batches[0][:1].to(device) if batches else torch.tensor([[0, 1]], device=device))
    if s.weight_bits and s.weight_method == "gptq":
        gptq(model, batches, progress)
    if masks:
        apply_masks(model, masks)
    if s.qat_steps:
        from accllm.quant.qat import distill

        from accllm.quant.qat import teacher_generations

        gen = teacher_generations(teacher, tokenizer, s.qat_generated, s.calib_seqlen, s.seed, progress) \
            if s.qat_generated else None
        model.accllm_qat_losses = distill(model, teacher, train_stream(tokenizer, s.calib_text), s, masks, device,
                                          progress, generated=gen)
    if offload:
        remove_accelerate_hooks(model)
    round_dense_to_fp16(model)
    if s.weight_bits:
        round_scales_to_fp16(model, s.weight_bits)
    model.accllm_settings = s
    return model, masks


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


def round_scales_to_fp16(model, bits: int) -> None:
    """The weight stream stores group scales as fp16 and the engine dequantises with them: set Brevitas' learned
    scales to the nearest fp16 value (normal range), zero points unchanged, so that fake-quant computes what the
    engine does. Without it, models with massive activations (SmolLM2: |h| ~ 1e4) part from the golden model by
    ~10 % of the logits."""
    with torch.no_grad():
        for mod in decoder_linears(model).values():
            if getattr(mod, "weight_quant", None) is None or not mod.weight_quant.is_quant_enabled:
                continue
            qw = mod.quant_weight()
            scale = qw.scale_.detach().float().squeeze(-1)
            zero = qw.zero_point_.detach().float().squeeze(-1)
            s16 = scale.clamp(min=2.0 ** -14).half().float()
            set_weight_quant_params(mod, s16.cpu(), zero.cpu(), bits)


def round_dense_to_fp16(model) -> None:
    """The checkpoint stores embeddings and norms in fp16; round the live model the same way so that
    a reloaded checkpoint computes exactly what the saved model did."""
    from accllm.quant.prune import decoder_linears

    lin = {id(m.weight) for m in decoder_linears(model).values()}
    for name, p in model.named_parameters():
        if id(p) not in lin and "_quant" not in name:
            p.data = p.data.half().float()
