"""Golden model of the engine: the compressed Llama run with the engine's integer arithmetic, token by token.
(Over 300 lines on purpose: it is the single statement of the engine's arithmetic, read top to bottom.)

The integer work is done by :mod:`accllm.sim.golden_core` (the one statement of the core ops) and the
quantisers of :mod:`accllm.quant.checkpoint` (the one statement of the Brevitas conventions); the Λ KV cache
is :mod:`accllm.sim.kv_layout`. This module fixes everything around them — the order of operations, widths
and rounding of the float post-processing — so that the HLS C-simulation can reproduce it bit for bit:

- Vectors between units are float32. Element-wise steps are float32 IEEE operations in the order written
  below (no fused multiply-add).
- Reductions (RMSNorm sum of squares, the group sum of the dequantisation, the softmax sum, lm_head dot
  products) accumulate in float64 in index order and round once to float32 (``_seq_sum``).
- Transcendentals (exp, cos, sin) are evaluated in float64 and rounded to float32; 1/sqrt is
  ``1.0 / sqrt(double)`` (both correctly rounded). libm and torch agree on these float64 values to within
  an ulp of float64, so the float32 results agree except with probability ~2^-29 per value.

Per token at stream position ``i`` (one program run of the engine; :meth:`GoldenModel.prefill` runs a block of
tokens per program run: each linear over the block's rows with one weight pass, attention token after token, so
every token gets exactly these operations):

    x = embed[token]                                     fp16 table -> float32
    per layer:
      h = rmsnorm(x, w_in)                               (x * (1/sqrt(mean(x^2) + eps))) * w
      q, k, v = linear(h)                                a8 = act_quant(h); acc = core(a8, W); dequant
      q, k = rope(q, i), rope(k, i)                      q*cos - q'*sin (HF rotate_half convention)
      K4, V4 = kv_quant(k), kv_quant(v) -> slot(i)       per token and KV head
      per head: s = ((acc_qk * s_q) * s_k) * scaling     QK core on all occupied slots
                p = softmax(s); p_v = p * s_v            V scale folded into p
                o = acc_pv * s_p                         PV core, p_v quantised to int8
      x = x + linear(o)                                  o_proj
      h = rmsnorm(x, w_post)
      x = x + linear(silu(linear_gate(h)) * linear_up(h))      silu(g) = g * (1/(1+exp(-g)))
    logits = lm_head(rmsnorm(x, w_final))

``linear``: ``y[n] = float32(sum_g float64(acc[n, g]) * float64(s_w[n, g])) * s_x`` (``s_w``: the stream's fp16 scales).

The embedding and lm_head (the embedding when tied, else the checkpoint's ``lm_head.weight``) stay fp16
weights with float32 activations and float64 accumulation: the embedding is a lookup (no multiply to save), and
lm_head is the layer most sensitive to quantisation error (kept dense by the compression flow too); at batch 1 it
is one matrix-vector product per token.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from accllm.quant.checkpoint import fake_quant_act, fake_quant_kv
from accllm.sim import golden_core as core
from accllm.sim.dims import Dims, dims_from  # noqa: F401  (re-exported: the golden model's dimensions)
from accllm.sim.kv_layout import KVLayout, pack_slots

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LINEAR_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def rope_inv_freq(config) -> torch.Tensor:
    """float32 [head_dim/2] inverse frequencies, as the HF model computes them."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rot = LlamaRotaryEmbedding(config)
    if float(getattr(rot, "attention_scaling", 1.0)) != 1.0:
        raise ValueError("RoPE attention scaling != 1 is not supported by the engine")
    return rot.inv_freq.detach().float().clone()


class KVCache:
    """The golden model's Λ cache (:mod:`accllm.sim.kv_layout`): unpacked integer codes, float32 scales,
    integer zero points."""

    def __init__(self, layout: KVLayout):
        self.layout = layout
        shape = (layout.layers, 2, layout.kv_heads, layout.slots)
        self.codes = torch.zeros(*shape, layout.head_dim, dtype=torch.int64)
        self.scales = torch.zeros(shape, dtype=torch.float32)
        self.zeros = torch.zeros(shape, dtype=torch.int64)

    def write(self, layer: int, pos: int, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero) -> int:
        """Store one token (all KV heads) of ``layer`` in its slot; returns the slot."""
        s = self.layout.slot_of(pos)
        for t, (c, sc, z) in enumerate(((k_codes, k_scale, k_zero), (v_codes, v_scale, v_zero))):
            self.codes[layer, t, :, s] = c
            self.scales[layer, t, :, s] = sc
            self.zeros[layer, t, :, s] = z
        return s

    def packed(self) -> bytes:
        """The engine's memory image of the cache."""
        return pack_slots(self.layout, self.codes.numpy(), self.scales.numpy(), self.zeros.numpy())


@dataclass
class LinearInts:
    """One decoder linear in the engine's integer form."""

    codes: torch.Tensor  # int64 [N, K] uint2 codes (dense form; pruned weights have code == zero point)
    zeros: torch.Tensor  # int64 [N, K/G]
    scales: torch.Tensor  # float32 [N, K/G] holding fp16 values (rounded on construction)
    vals: torch.Tensor | None = None  # 2:4 kept codes [N, K/2]
    pos: torch.Tensor | None = None  # 2:4 positions [N, K/2]

    def __post_init__(self):
        # The weight stream stores group scales as fp16 (accllm.sim.weight_stream); the engine dequantises with
        # exactly those, so the golden model does too: round-to-nearest-even from the quantiser's float32.
        self.scales = torch.as_tensor(self.scales).to(torch.float16).to(torch.float32)


@dataclass
class GoldenWeights:
    dims: Dims
    embed: torch.Tensor  # float32 [V, H] (fp16 values)
    norms: list  # per layer (input_layernorm, post_attention_layernorm) float32 [H]
    final_norm: torch.Tensor
    inv_freq: torch.Tensor  # float32 [D/2]
    linears: list  # per layer {name: LinearInts}
    extra: dict = field(default_factory=dict)
    lm_head: torch.Tensor | None = None  # float32 [V, H] (fp16 values) of an untied head; None: tied to embed

    @property
    def head(self) -> torch.Tensor:
        return self.embed if self.lm_head is None else self.lm_head


def _linear_ints(d: dict, group: int, sparse: bool, name: str) -> LinearInts:
    codes = d["codes"].to(torch.int64)
    zeros = d["zero_points"].to(torch.int64)
    mask = d.get("mask")
    if mask is not None:
        zr = zeros.repeat_interleave(group, dim=1)
        bad = int(((codes != zr) & ~mask.bool()).sum())
        if bad:
            raise ValueError(f"{name}: {bad} pruned weights have a code different from their zero point")
    lin = LinearInts(codes, zeros, d["scales"].float().contiguous())
    if sparse:
        lin.vals, lin.pos = core.sparse_from_dense(codes, zeros, group)
    return lin


def load_weights(source) -> GoldenWeights:
    """Golden weights from a compressed checkpoint directory (``accllm quantize -o DIR``) or from the
    live Brevitas model returned by :func:`accllm.quant.quantize.compress` / ``load_compressed``."""
    from accllm.quant.checkpoint import SETTINGS_FILE, WEIGHTS_FILE, integer_linear_weights, verify_checkpoint
    from accllm.quant.quantize import CompressionSettings

    if isinstance(source, (str, Path)):
        from safetensors.torch import load_file
        from transformers import LlamaConfig

        path = Path(source)
        if not (path / SETTINGS_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a compressed checkpoint (no {SETTINGS_FILE}); run `accllm quantize` first")
        verify_checkpoint(path)
        settings = CompressionSettings.from_json(json.loads((path / SETTINGS_FILE).read_text())["settings"])
        config = LlamaConfig.from_pretrained(path)
        tensors = {k: v.float() for k, v in load_file(str(path / WEIGHTS_FILE)).items() if not k.endswith(
            (".codes", ".scales", ".zero_points", ".mask"))}
    else:
        model = source
        settings, config = model.accllm_settings, model.config
        tensors = {n: p.detach().float().cpu() for n, p in model.named_parameters() if "_quant" not in n}
    dims = dims_from(config, settings)
    ints = integer_linear_weights(source)
    linears, norms = [], []
    for i in range(dims.layers):
        layer = {}
        for name in LINEARS:
            key = f"model.layers.{i}.{LINEAR_PARENT[name]}.{name}"
            if key not in ints:
                raise ValueError(f"{key} has no integer weights in the compressed model")
            lin = _linear_ints(ints[key], dims.group, dims.sparse, key)
            if tuple(lin.codes.shape) != dims.linear_shape(name):
                raise ValueError(f"{key}: shape {tuple(lin.codes.shape)}, expected {dims.linear_shape(name)}")
            layer[name] = lin
        linears.append(layer)
        norms.append((tensors[f"model.layers.{i}.input_layernorm.weight"],
                      tensors[f"model.layers.{i}.post_attention_layernorm.weight"]))
    return GoldenWeights(dims, tensors["model.embed_tokens.weight"], norms, tensors["model.norm.weight"],
                         rope_inv_freq(config), linears, lm_head=tensors.get("lm_head.weight"))


# ------------------------------------------------------------------ float units (fixed order)

def _seq_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis in float64, in index order (cumsum is a sequential scan), -> float32."""
    return torch.cumsum(x.double(), -1)[..., -1].float()


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    var = (torch.cumsum(x.double() * x.double(), -1)[..., -1] / x.shape[-1]).float()
    inv = (1.0 / torch.sqrt(var.double() + eps)).float()
    return (x * inv.unsqueeze(-1)) * w


def rope_cos_sin(inv_freq: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    ang = float(pos) * inv_freq.double()
    return torch.cos(ang).float(), torch.sin(ang).float()


def rope(x: torch.Tensor, inv_freq: torch.Tensor, pos: int) -> torch.Tensor:
    """x [..., D] rotated at ``pos``: out[j] = x[j]*c[j] - x[j+D/2]*s[j], out[j+D/2] = x[j+D/2]*c[j] + x[j]*s[j]."""
    c, s = rope_cos_sin(inv_freq, pos)
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def silu(g: torch.Tensor) -> torch.Tensor:
    return g * (1.0 / (1.0 + torch.exp(-g.double()))).float()


def softmax(scores: torch.Tensor) -> torch.Tensor:
    e = torch.exp((scores - scores.amax(-1, keepdim=True)).double()).float()
    return (e.double() / _seq_sum(e).double().unsqueeze(-1)).float()


def act_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 codes and float32 scale [..., 1] of the per-row int8 activation quantiser."""
    a, s = fake_quant_act(x)
    return a.to(torch.int64), s


# ------------------------------------------------------------------ the integer trace

def trace_fields(d: Dims) -> list[tuple[str, tuple[int, ...]]]:
    """Integer results of one layer for one token, in a fixed order shared with the C-simulation."""
    H, I, G, D = d.hidden, d.intermediate, d.group, d.head_dim
    Q, KV, S = d.heads * D, d.kv_heads * D, d.slots
    return [("attn_in_a", (H,)), ("q_acc", (Q, H // G)), ("k_acc", (KV, H // G)), ("v_acc", (KV, H // G)),
            ("k_code", (d.kv_heads, D)), ("k_zero", (d.kv_heads,)), ("v_code", (d.kv_heads, D)),
            ("v_zero", (d.kv_heads,)), ("q_a", (d.heads, D)), ("q_sink_a", (d.heads, D)),
            ("qk_acc", (d.heads, S)), ("p_a", (d.heads, S)), ("pv_acc", (d.heads, D)),
            ("o_in_a", (Q,)), ("o_acc", (H, Q // G)), ("mlp_in_a", (H,)), ("gate_acc", (I, H // G)),
            ("up_acc", (I, H // G)), ("down_in_a", (I,)), ("down_acc", (H, I // G))]


def trace_size(d: Dims) -> int:
    return sum(math.prod(s) for _, s in trace_fields(d))


# ------------------------------------------------------------------ the model

class GoldenModel:
    """Runs the compressed model on the engine's arithmetic; ``step`` is one program run (one token)."""

    def __init__(self, weights: GoldenWeights):
        self.w = weights
        self.d = weights.dims
        self.scaling = torch.tensor(self.d.head_dim ** -0.5, dtype=torch.float32)
        self.reset()

    @classmethod
    def load(cls, source) -> "GoldenModel":
        return cls(load_weights(source))

    def reset(self) -> None:
        self.cache = KVCache(self.d.kv_layout())
        self.pos = 0

    def linear(self, x: torch.Tensor, lin: LinearInts):
        a, s = act_quant(x)
        if lin.vals is not None:
            acc = core.sparse_w2a8(a, lin.vals, lin.pos, lin.zeros, self.d.group)
        else:
            acc = core.dense_w2a8(a, lin.codes, lin.zeros, self.d.group)
        y = _seq_sum(acc.double() * lin.scales.double()) * s  # s: [..., 1], a row per token
        return y, a, acc

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int, tr: dict):
        d, L = self.d, self.d.kv_layout()
        D, groups = d.head_dim, d.heads // d.kv_heads
        q_pre = q.view(d.heads, D)
        q_rot = rope(q_pre, self.w.inv_freq, pos)
        k_rot = rope(k.view(d.kv_heads, D), self.w.inv_freq, pos)
        kc, ks, kz = fake_quant_kv(k_rot)
        vc, vs, vz = fake_quant_kv(v.view(d.kv_heads, D))
        kc, kz, vc, vz = kc.long(), kz.squeeze(-1).long(), vc.long(), vz.squeeze(-1).long()
        self.cache.write(layer, pos, kc, ks.squeeze(-1), kz, vc, vs.squeeze(-1), vz)
        tr.update(k_code=kc, k_zero=kz, v_code=vc, v_zero=vz)
        n = L.occupied(pos)
        sink_rot = d.sink_rotation and d.sinks > 0 and pos > d.slots - 1
        qa, sq = act_quant(q_rot)  # [heads, D], [heads, 1]
        tr["q_a"] = qa
        if sink_rot:
            qsa, sqs = act_quant(rope(q_pre, self.w.inv_freq, d.slots - 1))
            tr["q_sink_a"] = qsa
        out = torch.zeros(d.heads, D)
        qk_tr, p_tr, pv_tr = torch.zeros(d.heads, d.slots, dtype=torch.int64), torch.zeros(
            d.heads, d.slots, dtype=torch.int64), torch.zeros(d.heads, D, dtype=torch.int64)
        K, KS, KZ = self.cache.codes[layer, 0], self.cache.scales[layer, 0], self.cache.zeros[layer, 0]
        V, VS, VZ = self.cache.codes[layer, 1], self.cache.scales[layer, 1], self.cache.zeros[layer, 1]
        for kvh in range(d.kv_heads):
            hs = slice(kvh * groups, (kvh + 1) * groups)
            acc = core.qk_a8kv4(qa[hs], K[kvh, :n], KZ[kvh, :n])  # [groups, n]
            scale_q = sq[hs].expand(-1, n)
            if sink_rot:
                acc_s = core.qk_a8kv4(qsa[hs], K[kvh, : d.sinks], KZ[kvh, : d.sinks])
                acc = torch.cat([acc_s, acc[:, d.sinks:]], dim=1)
                scale_q = torch.cat([sqs[hs].expand(-1, d.sinks), scale_q[:, d.sinks:]], dim=1)
            scores = ((acc.float() * scale_q) * KS[kvh, :n]) * self.scaling
            p = softmax(scores)
            pa, sp = act_quant(p * VS[kvh, :n])
            acc_o = core.pv_a8kv4(pa, V[kvh, :n], VZ[kvh, :n])  # [groups, D]
            out[hs] = acc_o.float() * sp
            qk_tr[hs, :n], p_tr[hs, :n], pv_tr[hs] = acc, pa, acc_o
        tr.update(qk_acc=qk_tr, p_a=p_tr, pv_acc=pv_tr)
        return out.reshape(-1)

    @torch.no_grad()
    def step(self, token: int, trace: list | None = None) -> torch.Tensor:
        """Run one token at the next stream position (decode); returns float32 logits [V]. With ``trace`` (a
        list), appends one dict of integer tensors per layer (see :func:`trace_fields`)."""
        return self._run([token], None if trace is None else [trace])

    @torch.no_grad()
    def prefill(self, tokens, block: int = 32, traces: list | None = None) -> torch.Tensor:
        """Run ``tokens`` at the next stream positions in the engine's prefill mode: blocks of ``block`` tokens,
        each one program run that passes over the weights once; returns the last token's logits. The results
        per token are bit for bit those of :meth:`step` token by token. With ``traces`` (a list), appends one
        list per token of one dict per layer."""
        ids = [int(t) for t in tokens]
        if not ids:
            raise ValueError("empty prompt: give at least one token")
        if block < 1:
            raise ValueError(f"prefill block must be >= 1 token, got {block}")
        for t0 in range(0, len(ids), block):
            per_token = None if traces is None else [[] for _ in ids[t0:t0 + block]]
            logits = self._run(ids[t0:t0 + block], per_token)
            if traces is not None:
                traces.extend(per_token)
        return logits

    def _run(self, ids: list[int], traces: list | None) -> torch.Tensor:
        """One program run for the block ``ids`` (a row per token) at the next stream positions: every linear
        multiplies its weights once against the whole block, attention runs token after token (each writes its KV
        slot, then attends over the occupied slots: causal over the block under the Λ mask). Returns the last
        token's logits; ``traces`` (a list per token) get one dict per layer."""
        d, w, pos = self.d, self.w, self.pos
        for token in ids:
            if not 0 <= token < d.vocab:
                raise ValueError(f"token id {token} outside the vocabulary [0, {d.vocab})")
        x = w.embed[torch.tensor(ids)].clone()  # [T, H]
        for i in range(d.layers):
            lin = w.linears[i]
            trs = [{"q_sink_a": torch.zeros(d.heads, d.head_dim, dtype=torch.int64)} for _ in ids]
            bt = {}  # block fields, a row per token
            h = rmsnorm(x, w.norms[i][0], d.eps)
            q, bt["attn_in_a"], bt["q_acc"] = self.linear(h, lin["q_proj"])
            k, _, bt["k_acc"] = self.linear(h, lin["k_proj"])
            v, _, bt["v_acc"] = self.linear(h, lin["v_proj"])
            o = torch.stack([self.attention(i, q[t], k[t], v[t], pos + t, trs[t]) for t in range(len(ids))])
            y, bt["o_in_a"], bt["o_acc"] = self.linear(o, lin["o_proj"])
            x = x + y
            h = rmsnorm(x, w.norms[i][1], d.eps)
            g, bt["mlp_in_a"], bt["gate_acc"] = self.linear(h, lin["gate_proj"])
            u, _, bt["up_acc"] = self.linear(h, lin["up_proj"])
            y, bt["down_in_a"], bt["down_acc"] = self.linear(silu(g) * u, lin["down_proj"])
            x = x + y
            if traces is not None:
                for t, tr in enumerate(trs):
                    tr.update({name: val[t] for name, val in bt.items()})
                    traces[t].append(tr)
        h = rmsnorm(x[-1], w.final_norm, d.eps)
        self.pos += len(ids)
        return _seq_sum(h.double() * w.head.double())

    def generate(self, prompt: list[int], max_new: int, eos: int | None = None, on_token=None) -> list[int]:
        return greedy(self, prompt, max_new, eos, on_token)


def greedy(engine, prompt: list[int], max_new: int, eos: int | None = None, on_token=None) -> list[int]:
    """Greedy decoding on anything with ``reset()`` and ``step(token) -> logits`` (golden model, C-sim):
    prefill ``prompt`` token by token, as the engine does, then decode up to ``max_new`` tokens."""
    if not prompt:
        raise ValueError("empty prompt: give at least one token")
    engine.reset()
    for t in prompt:
        logits = engine.step(t)
    out = []
    for _ in range(max_new):
        t = int(logits.argmax())
        out.append(t)
        if on_token is not None:
            on_token(t)
        if eos is not None and t == eos:
            break
        logits = engine.step(t)
    return out


def flatten_trace(d: Dims, tr: dict) -> torch.Tensor:
    """One layer's trace dict -> int64 vector in :func:`trace_fields` order."""
    parts = []
    for name, shape in trace_fields(d):
        t = torch.as_tensor(tr[name]).to(torch.int64)
        if tuple(t.shape) != shape:
            raise ValueError(f"trace field {name}: shape {tuple(t.shape)}, expected {shape}")
        parts.append(t.reshape(-1))
    return torch.cat(parts)


@torch.no_grad()
def brevitas_generate(model, prompt: list[int], max_new: int, eos: int | None = None):
    """Greedy tokens and per-step logits of the Brevitas fake-quant model, with its own Λ KV cache
    (prompt as one prefill chunk, then one token per step): the reference the golden model is checked against."""
    from accllm.quant import attention as attn

    cache = attn.KVCache(model.config.num_hidden_layers, model.accllm_settings.policy())
    out, logits_all = [], []
    with attn.attached(model, cache):
        ids = torch.tensor(prompt)[None]
        pos = torch.arange(len(prompt))[None]
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, -1].float()
        for i in range(max_new):
            logits_all.append(logits)
            t = int(torch.argmax(logits))
            out.append(t)
            if eos is not None and t == eos:
                break
            p = torch.tensor([[len(prompt) + i]])
            logits = model(input_ids=torch.tensor([[t]]), position_ids=p, use_cache=False).logits[0, -1].float()
    return out, logits_all


def teacher_forced_vs_brevitas(model, golden: "GoldenModel", prompts: list[list[int]], max_new: int,
                               progress=None) -> dict:
    """The golden model fed the Brevitas model's own greedy continuation, so both see the same context at every
    step (float paths that differ by design part at near-ties, and a near-tie flips with the CPU's float kernels;
    teacher forcing keeps every step comparable). Per step: logit error, and whether the argmaxes agree.

    Returns ``steps``, ``agree`` (argmax equal), ``agreement`` (rate), ``max_abs`` / ``max_rel`` logit error
    (relative to the step's max |logit|), and ``max_disagree_margin``: the largest Brevitas logit gap between
    its own top token and the golden model's, over the steps that disagree (a near-tie has a gap within the
    logit error)."""
    steps = agree = 0
    max_abs = max_rel = margin = 0.0
    for ids in prompts:
        ref, ref_logits = brevitas_generate(model, ids, max_new)
        golden.reset()
        for t in ids:
            lg = golden.step(t)
        for i, r in enumerate(ref):
            lg, rl = lg.float(), ref_logits[i].float()
            err = float((lg - rl).abs().max())
            max_abs, max_rel = max(max_abs, err), max(max_rel, err / float(rl.abs().max()))
            g = int(lg.argmax())
            steps += 1
            if g == r:
                agree += 1
            else:
                margin = max(margin, float(rl[r] - rl[g]))
            if i + 1 < len(ref):
                lg = golden.step(r)  # the reference token, whatever the golden model chose
        if progress is not None:
            progress.update(1)
    return {"steps": steps, "agree": agree, "agreement": agree / max(steps, 1), "max_abs": max_abs,
            "max_rel": max_rel, "max_disagree_margin": margin}
