"""The compression pipeline (:func:`compress`, whole model; :func:`compress_streaming`, one decoder layer at a time):
the orchestration above the per-layer Brevitas steps of :mod:`accllm.quant.quantize`, distillation
(:mod:`accllm.quant.qat`) and the checkpoint format (:mod:`accllm.quant.checkpoint`)."""
from __future__ import annotations

import copy

import torch

from accllm.quant import attention as attn
from accllm.quant.prune import HEAD, apply_masks, decoder_linears, prune_2to4, quant_linears, sparsegpt_prune_2to4
from accllm.quant.quantize import (CompressionSettings, calibration_batches, gptq, pick_device, place,
                                   quantize_head, quantize_layer, quantize_layers, remove_accelerate_hooks, round_dense_to_fp16,
                                   round_scales_to_fp16, single_layer_view, train_stream)


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
    if s.weight_bits or s.head_bits:
        round_scales_to_fp16(model, s.weight_bits)
    model.accllm_settings = s
    return model, masks


def streaming_refusal(s: CompressionSettings, device=None, offload: bool = False) -> str | None:
    """Why ``s`` needs the whole model in memory, or None when :func:`compress_streaming` gives the same
    checkpoint one decoder layer at a time (RTN weights, Wanda or no pruning, no distillation, on the CPU).
    GPTQ and SparseGPT take each layer's Hessians through the compressed layers below, and distillation trains
    all layers at once: those keep the whole-model path."""
    if s.weight_bits and s.weight_method != "rtn":
        return f"weight method {s.weight_method} (only RTN streams)"
    if s.sparsity == "2:4" and s.prune_method != "wanda":
        return f"prune method {s.prune_method} (only Wanda streams)"
    if s.qat_steps:
        return "distillation"
    if offload or pick_device(device).type != "cpu":
        return "a GPU or offloaded model"
    return None


@torch.no_grad()
def compress_streaming(model, s: CompressionSettings, out, progress: bool = True, report: dict | None = None):
    """:func:`compress` and :func:`accllm.quant.checkpoint.save_compressed` one decoder layer at a time: each
    layer's weights are read alone (:class:`accllm.quant.model.LayerReader`), the Wanda calibration activations
    are carried from layer to layer, the layer goes through the same per-layer steps as the whole model
    (:func:`~accllm.quant.prune.wanda_prune`, :func:`quantize_layer`, fp16 rounding) and is appended to the
    checkpoint, then freed. Peak memory: one float layer, its quantised copy, the embedding and head. Returns
    ``(config, tokenizer, weight bytes per token)``."""
    from tqdm import tqdm
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from accllm.quant.checkpoint import CheckpointWriter, _release_freed_memory, outer_tensors
    from accllm.quant.model import LayerReader, load_tokenizer
    from accllm.quant.prune import collect_input_norms, wanda_prune

    why = streaming_refusal(s, device="cpu")  # this path runs on the CPU, whatever GPU the machine has
    if why:
        raise ValueError(f"layer-by-layer compression does not apply to {why}; use the whole-model path")
    reader = LayerReader(model)
    config = reader.config
    config.dtype = torch.float32  # what the whole-model path's float32 load records in config.json
    s.validate(config)
    torch.manual_seed(s.seed)
    tokenizer = load_tokenizer(model)
    outer_cfg = copy.deepcopy(config)
    outer_cfg.num_hidden_layers = 0
    with torch.device("meta"):  # embedding, final norm, head: no random initialisation of what is loaded next
        shell = LlamaForCausalLM(outer_cfg).eval()
    shell.model.rotary_emb = LlamaRotaryEmbedding(config)  # its tables are computed, not loaded
    missing = shell.load_state_dict(reader.outer(), strict=False, assign=True).missing_keys
    if config.tie_word_embeddings:
        shell.tie_weights()
    elif "lm_head.weight" in missing:
        raise ValueError(f"{reader.source.path}: untied model without lm_head.weight")
    rotary = shell.model.rotary_emb
    batches = calibration_batches(tokenizer, s.calib_samples, s.calib_seqlen, s.seed, text=s.calib_text) \
        if s.sparsity == "2:4" else []
    hidden = [shell.model.embed_tokens(x) for x in batches]
    pos = [torch.arange(x.shape[1])[None] for x in batches]
    pe = [rotary(h, p) for h, p in zip(hidden, pos)]
    if s.head_bits:
        quantize_head(shell, s)  # as quantize_layers does; config.json then records the untied head
        config.tie_word_embeddings = False
    round_dense_to_fp16(shell)
    round_scales_to_fp16(shell)
    writer = CheckpointWriter(out, s)
    writer.add(outer_tensors(shell))
    totals = weight_bytes_per_token(shell, s)
    del shell
    for i in tqdm(range(config.num_hidden_layers), desc="quantize layers", disable=not progress):
        with torch.device("meta"):  # no random initialisation of weights about to be overwritten
            layer = LlamaDecoderLayer(config, i).eval()
        layer.load_state_dict(reader.layer(i), assign=True)
        attn.install(single_layer_view(layer, rotary), s.policy())
        masks = None
        if batches:
            def run(layer=layer):
                for j in range(len(hidden)):
                    hidden[j] = layer(hidden[j], position_embeddings=pe[j], position_ids=pos[j])

            masks = wanda_prune(layer, collect_input_norms(layer, run))
        layer = quantize_layer(layer, s, masks)
        if masks:
            apply_masks(layer, masks)
        round_dense_to_fp16(layer)
        if s.weight_bits:
            round_scales_to_fp16(layer, s.weight_bits)
        writer.add_layer(i, layer)
        for k, v in weight_bytes_per_token(layer, s).items():
            totals[k] += v
        del layer
        _release_freed_memory()
    if report is not None:
        report["weight_bytes_per_token"] = totals
    writer.finish(config, tokenizer, report)
    return config, tokenizer, totals


def weight_bytes_per_token(module, s: CompressionSettings) -> dict:
    """Bytes of weights read per decoded token: decoder linears compressed, the LM head's codes when quantised
    (dense, ``head_bits``), the rest fp16 (``module``: a model, or a part of one; the parts' counts add up)."""
    from accllm.quant.checkpoint import linear_storage_bytes

    # Brevitas' scale / zero-point parameters are already in the linears' storage bytes
    lin = decoder_linears(module)
    head = quant_linears(module).get(HEAD)
    lin_ids = {id(m.weight) for m in lin.values()} | ({id(head.weight)} if head is not None else set())
    other = sum(p.numel() * 2 for n, p in module.named_parameters()
                if id(p) not in lin_ids and p.dim() > 0 and "_quant" not in n)
    compressed = sum(linear_storage_bytes(m.weight.shape, s) for m in lin.values())
    head_bytes = 0 if head is None else linear_storage_bytes(
        head.weight.shape, CompressionSettings(sparsity="none", weight_bits=s.head_bits, group_size=s.group_size))
    fp16 = sum(m.weight.numel() * 2 for m in lin.values()) + (0 if head is None else head.weight.numel() * 2) + other
    return {"decoder_linears": compressed, "lm_head": head_bytes, "other_fp16": other,
            "total": compressed + head_bytes + other, "fp16_total": fp16}

