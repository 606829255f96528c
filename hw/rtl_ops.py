"""Operations for the RTL testbench: random ones, and real ones taken from a model's layer.

An operation is a dict ``{"kind": dense|sparse|qk|pv, "name": ..., <operand arrays>, ["group"]}`` as described
by :data:`accllm.hw.rtl_runner.OP_ARRAYS`; a *vector* is one output accumulation of the core.

Real operations quantize a layer's FP weights with Brevitas' 2-bit asymmetric group quantizer
(``ShiftedUint8WeightGroupQuantFloat``, bit width 2) into integer codes and zero points, and take real
activations from running the model on held-out text: linear inputs quantized per token to int8
(``Int8DynamicActPerRowFloat``), keys and values per token to asymmetric 4 bits
(``ShiftedUint8DynamicActPerRowFloat``, bit width 4) and attention probabilities, with the value scale
folded in, per row to int8. Where accllm.quant offers ``integer_linear_weights``, the codes of the project's
own compression (Wanda 2:4 + W2) are added as well.
"""
from __future__ import annotations

import numpy as np

from accllm.sim.golden_core import sparse_from_dense

KINDS = ("dense", "sparse", "qk", "pv")


def _int8(rng, shape, extreme: bool):
    if extreme:
        return np.full(shape, -128, np.int64)
    a = rng.integers(-128, 128, size=shape)
    edge = rng.random(shape) < 0.05  # exercise the range ends
    return np.where(edge, rng.choice([-128, 127], size=shape), a)


def random_ops(kind: str, vectors: int, seed: int = 0, lanes: int = 16, group: int = 32) -> list[dict]:
    """Random operations of one kind totalling at least ``vectors`` outputs. Sizes vary per operation
    (including QK/PV lengths that are not a multiple of ``lanes``); about one operation in ten uses the
    extreme operands (a = -128, code - zero = +-max) that give the largest accumulators."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    ops, done, i = [], 0, 0
    while done < vectors:
        extreme = i % 10 == 9
        left = vectors - done
        if kind in ("dense", "sparse"):
            k = group * int(rng.choice([1, 2, 4]))
            n = int(min(max(1, left // (k // group)), rng.integers(8, 64)))
            n = max(n, 1)
            zeros = rng.integers(0, 4, size=(n, k // group))
            a = _int8(rng, (k,), extreme)
            if kind == "dense":
                codes = np.where(rng.random((n, k)) < 0.5, 3, 0) if extreme else rng.integers(0, 4, size=(n, k))
                if extreme:
                    zeros = np.where(rng.random(zeros.shape) < 0.5, 3, 0)
                ops.append({"kind": kind, "name": f"rand_dense_{i}", "group": group, "a": a, "codes": codes, "zeros": zeros})
            else:
                pos = np.sort(np.argsort(rng.random((n, k // 4, 4)), axis=-1)[..., :2], axis=-1).reshape(n, k // 2)
                vals = rng.integers(0, 4, size=(n, k // 2))
                if extreme:
                    zeros = np.full_like(zeros, 3)
                    vals = np.zeros_like(vals)
                ops.append({"kind": kind, "name": f"rand_sparse_{i}", "group": group, "a": a, "vals": vals, "pos": pos,
                            "zeros": zeros})
            done += n * (k // group)
        elif kind == "qk":
            d = int(rng.choice([lanes, 2 * lanes, 4 * lanes, 2 * lanes + lanes // 2]))
            t = int(min(left, rng.integers(16, 160)))
            k = np.full((t, d), 15) if extreme else rng.integers(0, 16, size=(t, d))
            kz = np.zeros(t, np.int64) if extreme else rng.integers(0, 16, size=t)
            ops.append({"kind": kind, "name": f"rand_qk_{i}", "q": _int8(rng, (d,), extreme), "k": k, "kz": kz})
            done += t
        else:
            t = int(rng.choice([lanes, 4 * lanes, 8 * lanes, 3 * lanes + 5]))
            d = int(min(left, rng.choice([lanes, 2 * lanes, 4 * lanes])))
            v = np.zeros((t, d), np.int64) if extreme else rng.integers(0, 16, size=(t, d))
            vz = np.full(t, 15) if extreme else rng.integers(0, 16, size=t)
            ops.append({"kind": kind, "name": f"rand_pv_{i}", "p": _int8(rng, (t,), extreme), "v": v, "vz": vz})
            done += d
        i += 1
    return ops


def steady_ops(lanes: int = 16, group: int = 32, seed: int = 0, size: int = 256) -> list[dict]:
    """One large random operation per mode, for cycle counts at steady state (a multiple of lanes everywhere)."""
    rng = np.random.default_rng(seed)
    k, n = size, size
    zeros = rng.integers(0, 4, size=(n, k // group))
    a = rng.integers(-128, 128, size=k)
    pos = np.sort(np.argsort(rng.random((n, k // 4, 4)), axis=-1)[..., :2], axis=-1).reshape(n, k // 2)
    t, d = 8 * size, 2 * lanes  # QK: many keys of one head; PV: a long context
    return [
        {"kind": "dense", "name": f"dense_{n}x{k}", "group": group, "a": a, "codes": rng.integers(0, 4, size=(n, k)), "zeros": zeros},
        {"kind": "sparse", "name": f"sparse_{n}x{k}", "group": group, "a": a, "vals": rng.integers(0, 4, size=(n, k // 2)),
         "pos": pos, "zeros": zeros},
        {"kind": "qk", "name": f"qk_T{t}_D{d}", "q": rng.integers(-128, 128, size=d), "k": rng.integers(0, 16, size=(t, d)),
         "kz": rng.integers(0, 16, size=t)},
        {"kind": "pv", "name": f"pv_T{t}_D{d}", "p": rng.integers(-128, 128, size=t), "v": rng.integers(0, 16, size=(t, d)),
         "vz": rng.integers(0, 16, size=t)},
    ]


# ---------------------------------------------------------------- real tensors

def _row_quant(bits: int, signed: bool):
    from brevitas_examples.common.generative.quantizers import (Int8DynamicActPerRowFloat,
                                                                 ShiftedUint8DynamicActPerRowFloat)

    per_row = dict(dynamic_scaling_broadcastable_fn=lambda x, shape: x.view(*shape[:-1], 1), permute_dims=None,
                   stats_reduce_dim=1, bit_width=bits)
    return (Int8DynamicActPerRowFloat if signed else ShiftedUint8DynamicActPerRowFloat).let(**per_row)


def quantize_rows(x, bits: int, signed: bool):
    """Per-row dynamic Brevitas quantization of a 2-D float tensor -> (int codes, zero points [rows], scales [rows])."""
    import torch
    from brevitas.nn import QuantIdentity

    q = QuantIdentity(act_quant=_row_quant(bits, signed), return_quant_tensor=True)
    with torch.no_grad():
        qt = q(x.float())
    zp = qt.zero_point.reshape(-1).expand(x.shape[0]) if qt.zero_point.numel() == 1 else qt.zero_point.reshape(-1)
    return qt.int().to(torch.int64), zp.round().to(torch.int64), qt.scale.reshape(-1).expand(x.shape[0])


def quantize_w2_group(weight, group: int):
    """Brevitas 2-bit asymmetric group quantization of a [N, K] weight -> (codes [N, K], zero points [N, K/group])."""
    import torch
    from brevitas.nn import QuantLinear
    from brevitas.quant.shifted_scaled_int import ShiftedUint8WeightGroupQuantFloat

    n, k = weight.shape
    lin = QuantLinear(k, n, bias=False, weight_quant=ShiftedUint8WeightGroupQuantFloat, weight_bit_width=2,
                      weight_group_size=group)
    with torch.no_grad():
        lin.weight.copy_(weight)
        qw = lin.quant_weight()
    codes = qw.int().to(torch.int64).reshape(n, k)
    zp = qw.zero_point.reshape(n, k // group, -1)[..., 0] if qw.zero_point.shape[-1] != k // group else qw.zero_point
    zp_int = zp.round()
    if not torch.equal(zp_int, zp):
        raise ValueError("Brevitas returned non-integer weight zero points")
    return codes, zp_int.to(torch.int64).reshape(n, k // group)


def prune_2to4(weight):
    """Magnitude 2:4 pruning along the input dimension (keeps the two largest |w| of every four)."""
    import torch

    n, k = weight.shape
    blocks = weight.reshape(n, k // 4, 4)
    keep = blocks.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, keep, True)
    return (blocks * mask).reshape(n, k)


def _capture(model, tokenizer, text: str, tokens: int, layer: int, linears: tuple[str, ...]):
    """Run the model on text; return layer ``layer``'s attention input [T, hidden], the positions' (cos, sin)
    and the last token's input of each named linear of the layer."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids[:, :tokens]
    if ids.shape[1] < tokens:
        raise ValueError(f"the sample text gives only {ids.shape[1]} tokens, {tokens} needed")
    seen, acts = {}, {}

    def attn_hook(module, args, kwargs):
        seen["hidden"] = kwargs.get("hidden_states", args[0] if args else None).detach()
        seen["pos"] = tuple(t.detach() for t in kwargs["position_embeddings"])

    blk = model.model.layers[layer]
    hooks = [blk.self_attn.register_forward_pre_hook(attn_hook, with_kwargs=True)]
    for name in linears:
        hooks.append(blk.get_submodule(name).register_forward_pre_hook(
            lambda m, a, name=name: acts.__setitem__(name, a[0][0, -1].detach())))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return seen["hidden"][0], seen["pos"], acts


def compressed_linear_codes(model_dir, group: int) -> dict | None:
    """Integer codes of the project's own compression (accllm.quant: Wanda 2:4 + Brevitas W2 group quant,
    round-to-nearest, small calibration) via ``integer_linear_weights``; None where that is not available."""
    try:
        from accllm.quant.checkpoint import integer_linear_weights
        from accllm.quant.quantize import CompressionSettings
        from accllm.quant.compress import compress
    except ImportError:
        return None
    from accllm.quant.model import load_model

    model, tok = load_model(model_dir)
    settings = CompressionSettings(group_size=group, weight_method="rtn", calib_samples=8, calib_seqlen=128)
    model, _ = compress(model, tok, settings, device="cpu", progress=False)
    return integer_linear_weights(model)


def real_ops(model_dir=None, layer: int = 0, head: int = 0, tokens: int = 64, group: int = 32,
             linears: tuple[str, ...] = ("self_attn.q_proj",), rows: int | None = None,
             compressed: bool = True) -> list[dict]:
    """Dense, 2:4-sparse, QK and PV operations from layer ``layer`` of a model run on held-out text.

    Linears are quantized here with Brevitas (unpruned -> DENSE; magnitude-2:4-pruned -> SPARSE) and, when
    ``compressed`` and accllm.quant provides ``integer_linear_weights``, also taken from the project's
    compression pipeline (Wanda 2:4 + W2), run in both DENSE and SPARSE mode."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from accllm.quant.corpus import load_text
    from accllm.quant.model import load_model

    model, tok = load_model(model_dir)
    cfg = model.config
    if not 0 <= layer < cfg.num_hidden_layers:
        raise ValueError(f"layer {layer} out of range: the model has {cfg.num_hidden_layers} layers")
    hidden, (cos, sin), acts = _capture(model, tok, load_text("valid"), tokens, layer, linears)
    blk = model.model.layers[layer]
    ops = []
    for name in linears:
        w = blk.get_submodule(name).weight.detach().float()
        if rows is not None:
            w = w[:rows]
        a, _, _ = quantize_rows(acts[name][None], 8, True)
        codes, zeros = quantize_w2_group(w, group)
        short = name.split(".")[-1]
        ops.append({"kind": "dense", "name": f"L{layer}.{short}", "group": group, "a": a[0].numpy(),
                    "codes": codes.numpy(), "zeros": zeros.numpy()})
        scodes, szeros = quantize_w2_group(prune_2to4(w), group)
        vals, pos = sparse_from_dense(scodes, szeros, group)
        ops.append({"kind": "sparse", "name": f"L{layer}.{short}.2:4", "group": group, "a": a[0].numpy(),
                    "vals": vals.numpy(), "pos": pos.numpy(), "zeros": szeros.numpy()})
    packed = compressed_linear_codes(model_dir, group) if compressed else None
    for name in linears if packed else ():
        d = packed[f"model.layers.{layer}.{name}"]
        codes, zeros = d["codes"].to(torch.int64), d["zero_points"].to(torch.int64)
        if rows is not None:
            codes, zeros = codes[:rows], zeros[:rows]
        a, _, _ = quantize_rows(acts[name][None], 8, True)
        vals, pos = sparse_from_dense(codes, zeros, group)  # raises unless every block of four is 2:4
        short = name.split(".")[-1]
        ops.append({"kind": "dense", "name": f"L{layer}.{short}.accllm", "group": group, "a": a[0].numpy(),
                    "codes": codes.numpy(), "zeros": zeros.numpy()})
        ops.append({"kind": "sparse", "name": f"L{layer}.{short}.accllm.2:4", "group": group, "a": a[0].numpy(),
                    "vals": vals.numpy(), "pos": pos.numpy(), "zeros": zeros.numpy()})
    # Attention of one head for the last token over all previous tokens.
    hd = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads
    kv_head = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    with torch.no_grad():
        attn = blk.self_attn
        q = attn.q_proj(hidden).view(tokens, -1, hd).transpose(0, 1)[None]
        k = attn.k_proj(hidden).view(tokens, -1, hd).transpose(0, 1)[None]
        v = attn.v_proj(hidden).view(tokens, -1, hd).transpose(0, 1)[None]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        q_last, k_h, v_h = q[0, head, -1], k[0, kv_head], v[0, kv_head]  # [D], [T, D], [T, D]
        qi, _, _ = quantize_rows(q_last[None], 8, True)
        kc, kz, ks = quantize_rows(k_h, 4, False)
        vc, vz, vs = quantize_rows(v_h, 4, False)
        probs = torch.softmax((q_last @ k_h.T) / hd ** 0.5, dim=-1)
        pi, _, _ = quantize_rows((probs * vs)[None], 8, True)  # V scale folded into p
    ops.append({"kind": "qk", "name": f"L{layer}.h{head}.qk", "q": qi[0].numpy(), "k": kc.numpy(), "kz": kz.numpy()})
    ops.append({"kind": "pv", "name": f"L{layer}.h{head}.pv", "p": pi[0].numpy(), "v": vc.numpy(), "vz": vz.numpy()})
    return ops
