"""Compress a model into a checkpoint: the ``quantize`` command and the flow's compress step (load, compress,
evaluate, report bytes per token, save)."""
from __future__ import annotations

from pathlib import Path

from accllm.quant import attention as attn
from accllm.quant.checkpoint import save_compressed
from accllm.quant.model import MODEL_HELP
from accllm.quant.quantize import CALIB_TEXTS, PRUNE_METHODS, WEIGHT_METHODS, CompressionSettings, pick_device
from accllm.quant.compress import compress, compress_streaming, streaming_refusal, weight_bytes_per_token


# ---------------------------------------------------------------- reporting helpers

def kv_bytes_per_token(config, kv_bits: int | None) -> float:
    """Bytes one token adds to the KV cache across all layers (codes + fp16 scale + zero point per head)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_head = head_dim * 2 if kv_bits is None else head_dim * kv_bits / 8 + 2 + 1
    return 2 * config.num_hidden_layers * config.num_key_value_heads * per_head


def kv_cache_bytes(config, seq_len: int, kv_bits: int | None, policy: attn.LambdaPolicy | None) -> float:
    slots = seq_len if policy is None else min(seq_len, policy.slots)
    return slots * kv_bytes_per_token(config, kv_bits)


# ---------------------------------------------------------------- CLI

def add_quantize_arguments(p):
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory for the compressed checkpoint")
    p.add_argument("--sparsity", default="2:4", choices=["2:4", "none"])
    p.add_argument("--weight-bits", type=int, default=2, help="0 keeps float weights")
    p.add_argument("--head-bits", type=int, default=4,
                   help="LM head code width (group-wise, untied from the embedding); 0 keeps an fp16 head, which the "
                        "engine does not run")
    p.add_argument("--act-bits", type=int, default=8, help="0 keeps float activations")
    p.add_argument("--kv-bits", type=int, default=4, help="0 keeps a float KV cache")
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--weight-method", default="gptq", choices=WEIGHT_METHODS)
    p.add_argument("--prune-method", default="wanda", choices=PRUNE_METHODS,
                   help="2:4 mask: SparseGPT (mask + weight update) or Wanda (mask only)")
    p.add_argument("--calib-text", default="python", choices=CALIB_TEXTS,
                   help="calibration / fine-tune text: Python-docs train split, + English licence texts' train split")
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--window", type=int, default=124)
    p.add_argument("--positions", default="cache", choices=attn.POSITION_MODES)
    p.add_argument("--no-lambda", action="store_true", help="full causal attention instead of Λ")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--qat-steps", type=int, default=0, help="distillation fine-tune steps (teacher: the float model)")
    p.add_argument("--qat-lr", type=float, default=1e-4)
    p.add_argument("--qat-batch", type=int, default=16, help="windows per fine-tune step")
    p.add_argument("--qat-seconds", type=float, default=0, help="stop the fine-tune after this many seconds")
    p.add_argument("--qat-generated", type=int, default=0,
                   help="teacher-generated sequences (data-free distillation) mixed into the fine-tune")
    p.add_argument("--qat-learn-masks", action="store_true", help="re-choose the 2:4 masks during the fine-tune (SR-STE)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1")
    p.add_argument("--offload", action="store_true", help="spread the model over GPU/CPU with accelerate")
    p.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens for perplexity (0: skip)")


def settings_from_args(a) -> CompressionSettings:
    return CompressionSettings(
        sparsity=a.sparsity, weight_bits=a.weight_bits or None, head_bits=a.head_bits or None, group_size=a.group_size,
        weight_method=a.weight_method, prune_method=a.prune_method, calib_text=a.calib_text,
        act_bits=a.act_bits or None, kv_bits=a.kv_bits or None,
        lambda_attention=not a.no_lambda, sinks=a.sinks, window=a.window, positions=a.positions,
        calib_samples=a.calib_samples, calib_seqlen=a.calib_seqlen, qat_steps=a.qat_steps, qat_lr=a.qat_lr,
        qat_batch=a.qat_batch, qat_seconds=a.qat_seconds, qat_generated=a.qat_generated,
        qat_learn_masks=a.qat_learn_masks)


def compress_to_checkpoint(model_dir, s: CompressionSettings, out, eval_tokens: int = 0, device=None,
                           offload: bool = False, progress: bool = True) -> dict:
    """Load ``model_dir``, compress it with ``s``, write the checkpoint and its report to ``out``; returns the
    report (settings, bytes per token, perplexities on the first ``eval_tokens`` "test" tokens when > 0)."""
    import copy

    from accllm.quant.corpus import load_documents, token_stream
    from accllm.quant.evaluate import perplexity
    from accllm.quant.model import load_model, resolve_model_dir, trained_context

    s.validate()
    if not eval_tokens and streaming_refusal(s, device, offload) is None:
        # one decoder layer in memory at a time; the same checkpoint as the whole-model path below
        from transformers import LlamaConfig

        from accllm.quant.model import resolve_model

        src = resolve_model(model_dir)
        config = LlamaConfig.from_pretrained(src.folder, **src.hf_kwargs())
        report = {"model": str(model_dir), "settings": s.to_json(), "device": "cpu", "layer_by_layer": True,
                  "kv_bytes_per_token": kv_bytes_per_token(config, s.kv_bits),
                  "kv_cache_bytes_max": kv_cache_bytes(config, 1 << 20, s.kv_bits, s.policy())
                  if s.lambda_attention else None}
        compress_streaming(model_dir, s, out, progress, report)  # adds weight_bytes_per_token, writes report.json
        return report
    model, tok = load_model(model_dir)
    s.validate(model.config)
    device = pick_device(device)
    ctx = trained_context(model.config)
    report = {"model": str(model_dir), "settings": s.to_json(), "device": str(device)}
    test_ids = token_stream(tok, load_documents("test"))[:eval_tokens] if eval_tokens else None
    teacher = copy.deepcopy(model).to(device) if s.qat_steps else None
    if test_ids is not None:
        ref = teacher if teacher is not None else model.to(device)
        report["perplexity_fp"] = perplexity(ref, test_ids, ctx, ctx // 2, progress)["perplexity"]
        print(f"float perplexity {report['perplexity_fp']:.3f}")
    model, masks = compress(model, tok, s, device=device, offload=offload, teacher=teacher, progress=progress)
    if test_ids is not None:
        report["perplexity_compressed"] = perplexity(model, test_ids, ctx, ctx // 2, progress)["perplexity"]
        print(f"compressed perplexity {report['perplexity_compressed']:.3f}")
    if s.qat_steps:
        losses = model.accllm_qat_losses
        report["qat"] = {"steps_run": len(losses), "kl_first": losses[0],
                         "kl_last_50_mean": sum(losses[-50:]) / len(losses[-50:]),
                         "distill_stats": model.accllm_distill_stats}  # seconds, steps/s, tokens/s, batch, amp
    report["weight_bytes_per_token"] = weight_bytes_per_token(model, s)
    report["kv_bytes_per_token"] = kv_bytes_per_token(model.config, s.kv_bits)
    report["kv_cache_bytes_max"] = kv_cache_bytes(model.config, 1 << 20, s.kv_bits, s.policy()) if s.lambda_attention else None
    save_compressed(model.cpu(), tok, s, masks, out, source_dir=resolve_model_dir(model_dir), report=report)
    return report


def quantize_command(a) -> int:
    compress_to_checkpoint(a.model, settings_from_args(a), a.out, a.eval_tokens, a.device, a.offload)
    print(f"wrote {a.out} (compressed checkpoint) and {a.out / 'report.json'}")
    return 0


def register(sub):
    p = sub.add_parser("quantize", help="2:4 prune + Λ attention + W2A8KV4 (Brevitas) a Llama checkpoint")
    add_quantize_arguments(p)
    p.set_defaults(func=quantize_command)
