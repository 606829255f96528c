"""Golden model of the engine: the compressed Llama run with the engine's integer arithmetic, token by token.
(Over 300 lines on purpose: it is the single statement of the engine's arithmetic, read top to bottom.)

The integer work is done by :mod:`accllm.sim.golden_core` (the one statement of the core ops) and the
quantisers of :mod:`accllm.quant.checkpoint` (the one statement of the Brevitas conventions); the Λ KV cache
is :mod:`accllm.sim.kv_layout`. This module fixes everything around them — the order of operations, widths
and rounding of the float post-processing — so that the HLS C-simulation can reproduce it bit for bit:

- Every float step is float32, one IEEE operation at a time in the order written, no fused multiply-add: the
  float arithmetic of the non-linear units is :mod:`accllm.sim.nonlinear` (its one definition, which the HLS
  kernel follows): reductions (RMSNorm sum of squares, the dequantisation's group sum, the softmax sum) are
  its adder tree ``tree_sum``; exp is its table exp, 1/sqrt two correctly rounded operations, RoPE's cos/sin
  rows of the compiler's table. So golden and C-simulation agree bit for bit, floats included.

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

``linear``: ``y[n] = tree_sum_g(float(acc[n, g]) * s_w[n, g]) * s_x`` (``s_w``: the stream's fp16 scales).

The embedding stays an fp16 table (a lookup: no multiply to save). The LM head is an integer linear like the
others (``lm_head``: DENSE, 4-bit codes, the checkpoint's own head, untied from the embedding by the compression
flow): ``a8 = act_quant(h)``, the core's W4 group dot products, the same dequantisation with its fp16 scales. It
runs once per program run, on the run's last token; what leaves the engine is its top-K (:func:`top_k`: sorted by
logit descending, ties by lower id; the full logits only on request). Its integer trace (:func:`head_trace_fields`)
is the trace's head region, right after the last token's layers (``GoldenModel.head_trace``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from accllm.quant.checkpoint import fake_quant_act, fake_quant_kv
from accllm.sim import golden_core as core
from accllm.sim import nonlinear as nl
from accllm.sim.nonlinear import rmsnorm, rope, silu, softmax  # noqa: F401  (the units, re-exported)
from accllm.sim.dims import Dims, dims_from  # noqa: F401  (re-exported: the golden model's dimensions)
from accllm.sim.kv_layout import KVLayout, pack_slots
from accllm.sim.topk import top_k  # noqa: F401  (re-exported: the engine's output, contract 3)

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

    codes: torch.Tensor  # int64 [N, K] uint``wbits`` codes (dense form; pruned weights have code == zero point)
    zeros: torch.Tensor  # int64 [N, K/G]
    scales: torch.Tensor  # float32 [N, K/G] holding fp16 values (rounded on construction)
    vals: torch.Tensor | None = None  # 2:4 kept codes [N, K/2]
    pos: torch.Tensor | None = None  # 2:4 positions [N, K/2]
    wbits: int = 2  # code width (the LM head: 4)

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
    lm_head: LinearInts | None = None  # the LM head [V, H], DENSE W4 (required to run)


HEAD_BITS = core.ws.HEAD_WBITS  # the LM head's code width on the engine (the core's W4 mode)


def _linear_ints(d: dict, group: int, sparse: bool, name: str, wbits: int = 2) -> LinearInts:
    codes = d["codes"].to(torch.int64)
    zeros = d["zero_points"].to(torch.int64)
    mask = d.get("mask")
    if mask is not None:
        zr = zeros.repeat_interleave(group, dim=1)
        bad = int(((codes != zr) & ~mask.bool()).sum())
        if bad:
            raise ValueError(f"{name}: {bad} pruned weights have a code different from their zero point")
    lin = LinearInts(codes, zeros, d["scales"].float().contiguous(), wbits=wbits)
    if sparse:
        lin.vals, lin.pos = core.sparse_from_dense(codes, zeros, group, wbits)
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
            lin = _linear_ints(ints[key], dims.group, dims.sparse, key, dims.wbits)
            if tuple(lin.codes.shape) != dims.linear_shape(name):
                raise ValueError(f"{key}: shape {tuple(lin.codes.shape)}, expected {dims.linear_shape(name)}")
            layer[name] = lin
        linears.append(layer)
        norms.append((tensors[f"model.layers.{i}.input_layernorm.weight"],
                      tensors[f"model.layers.{i}.post_attention_layernorm.weight"]))
    if settings.head_bits != HEAD_BITS or "lm_head" not in ints:
        raise ValueError(f"the engine runs the LM head as a {HEAD_BITS}-bit linear; this checkpoint's head is "
                         f"{'fp16' if not settings.head_bits else f'{settings.head_bits}-bit'}: "
                         "run `accllm quantize-head CHECKPOINT` (or re-quantize)")
    head = _linear_ints(ints["lm_head"], dims.group, False, "lm_head", HEAD_BITS)
    if tuple(head.codes.shape) != (dims.vocab, dims.hidden):
        raise ValueError(f"lm_head: shape {tuple(head.codes.shape)}, expected {(dims.vocab, dims.hidden)}")
    return GoldenWeights(dims, tensors["model.embed_tokens.weight"], norms, tensors["model.norm.weight"],
                         rope_inv_freq(config), linears, lm_head=head)


# ------------------------------------------------------------------ float units (accllm.sim.nonlinear)

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


def head_trace_fields(d: Dims) -> list[tuple[str, tuple[int, ...]]]:
    """The trace's head region (the LM head on a run's last token), right after that token's layers: in a run of
    ``n`` tokens at int32 ``n * layers * trace_size``, so after ``layers * trace_size`` for one token."""
    return [("head_in_a", (d.hidden,)), ("head_acc", (d.vocab, d.hidden // d.group))]


def head_trace_size(d: Dims) -> int:
    return sum(math.prod(s) for _, s in head_trace_fields(d))




# ------------------------------------------------------------------ the model

class GoldenModel:
    """Runs the compressed model on the engine's arithmetic; ``step`` is one program run (one token)."""

    def __init__(self, weights: GoldenWeights):
        self.w = weights
        self.d = weights.dims
        self.scaling = torch.tensor(self.d.head_dim ** -0.5, dtype=torch.float32)
        self.rope_table = torch.from_numpy(nl.rope_table(weights.inv_freq.numpy()))  # the blob's rope_table
        self.sink_cos_sin = nl.rope_cos_sin(self.rope_table, self.d.slots - 1)  # the re-rotated query's
        self.head_trace: dict | None = None  # the last traced run's LM head (head_in_a, head_acc)
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
            acc = core.sparse_w2a8(a, lin.vals, lin.pos, lin.zeros, self.d.group, lin.wbits)
        else:
            acc = core.dense_w2a8(a, lin.codes, lin.zeros, self.d.group, lin.wbits)
        y = nl.dequant(acc, lin.scales, s)  # s: [..., 1], a row per token
        return y, a, acc

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int, tr: dict,
                  cos_sin: tuple):
        """One token at ``pos``; ``cos_sin``: its RoPE rows (:func:`accllm.sim.nonlinear.rope_cos_sin`)."""
        d, L = self.d, self.d.kv_layout()
        D, groups = d.head_dim, d.heads // d.kv_heads
        q_pre = q.view(d.heads, D)
        q_rot = rope(q_pre, *cos_sin)
        k_rot = rope(k.view(d.kv_heads, D), *cos_sin)
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
            qsa, sqs = act_quant(rope(q_pre, *self.sink_cos_sin))
            tr["q_sink_a"] = qsa
        out = torch.zeros(d.heads, D)
        qk_tr, p_tr, pv_tr = torch.zeros(d.heads, d.slots, dtype=torch.int64), torch.zeros(
            d.heads, d.slots, dtype=torch.int64), torch.zeros(d.heads, D, dtype=torch.int64)
        K, KS, KZ = self.cache.codes[layer, 0], self.cache.scales[layer, 0], self.cache.zeros[layer, 0]
        V, VS, VZ = self.cache.codes[layer, 1], self.cache.scales[layer, 1], self.cache.zeros[layer, 1]
        scores = torch.empty(d.heads, n)
        for kvh in range(d.kv_heads):
            hs = slice(kvh * groups, (kvh + 1) * groups)
            acc = core.qk_a8kv4(qa[hs], K[kvh, :n], KZ[kvh, :n])  # [groups, n]
            scale_q = sq[hs].expand(-1, n)
            if sink_rot:
                acc_s = core.qk_a8kv4(qsa[hs], K[kvh, : d.sinks], KZ[kvh, : d.sinks])
                acc = torch.cat([acc_s, acc[:, d.sinks:]], dim=1)
                scale_q = torch.cat([sqs[hs].expand(-1, d.sinks), scale_q[:, d.sinks:]], dim=1)
            scores[hs] = ((acc.float() * scale_q) * KS[kvh, :n]) * self.scaling
            qk_tr[hs, :n] = acc
        p = softmax(scores)  # row-wise: all heads in one call (the kernel runs them head after head)
        pa, sp = act_quant(p * VS[:, :n].repeat_interleave(groups, 0))  # V scale folded into p
        for kvh in range(d.kv_heads):
            hs = slice(kvh * groups, (kvh + 1) * groups)
            acc_o = core.pv_a8kv4(pa[hs], V[kvh, :n], VZ[kvh, :n])  # [groups, D]
            out[hs] = acc_o.float() * sp[hs]
            p_tr[hs, :n], pv_tr[hs] = pa[hs], acc_o
        tr.update(qk_acc=qk_tr, p_a=p_tr, pv_acc=pv_tr)
        return out.reshape(-1)

    @torch.no_grad()
    def step(self, token: int, trace: list | None = None) -> torch.Tensor:
        """Run one token at the next stream position (decode); returns float32 logits [V]. With ``trace`` (a
        list), appends one dict of integer tensors per layer (see :func:`trace_fields`), and sets
        :attr:`head_trace` (:func:`head_trace_fields`)."""
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
        rc, rs = nl.rope_cos_sin(self.rope_table, torch.arange(pos, pos + len(ids)))  # [T, D/2] each
        for i in range(d.layers):
            lin = w.linears[i]
            trs = [{"q_sink_a": torch.zeros(d.heads, d.head_dim, dtype=torch.int64)} for _ in ids]
            bt = {}  # block fields, a row per token
            h = rmsnorm(x, w.norms[i][0], d.eps)
            q, bt["attn_in_a"], bt["q_acc"] = self.linear(h, lin["q_proj"])
            k, _, bt["k_acc"] = self.linear(h, lin["k_proj"])
            v, _, bt["v_acc"] = self.linear(h, lin["v_proj"])
            o = torch.stack([self.attention(i, q[t], k[t], v[t], pos + t, trs[t], (rc[t], rs[t]))
                             for t in range(len(ids))])
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
        h = rmsnorm(x[-1:], w.final_norm, d.eps)
        self.pos += len(ids)
        if w.lm_head is None:
            raise ValueError("the golden model has no LM head (a 4-bit linear); quantise it: accllm quantize-head")
        logits, a, acc = self.linear(h, w.lm_head)  # the last token only
        if traces is not None:
            self.head_trace = {"head_in_a": a[0], "head_acc": acc[0]}
        return logits[0]

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
    """One layer's trace dict (or the head's, :attr:`GoldenModel.head_trace`) -> int64 vector in
    :func:`trace_fields` (:func:`head_trace_fields`) order."""
    parts = []
    for name, shape in (head_trace_fields(d) if "head_acc" in tr else trace_fields(d)):
        t = torch.as_tensor(tr[name]).to(torch.int64)
        if tuple(t.shape) != shape:
            raise ValueError(f"trace field {name}: shape {tuple(t.shape)}, expected {shape}")
        parts.append(t.reshape(-1))
    return torch.cat(parts)


def _fresh_cache(model):
    """The Brevitas model's own Λ KV cache, empty, attached for a ``with`` block."""
    from accllm.quant import attention as attn

    return attn.attached(model, attn.KVCache(model.config.num_hidden_layers, model.accllm_settings.policy()))


def _brevitas_chunk(model, ids: list[int], start: int = 0) -> torch.Tensor:
    """Logits [len(ids), vocab] of the Brevitas model over ``ids`` at positions ``start``.. (cache attached)."""
    pos = torch.arange(start, start + len(ids))[None]
    return model(input_ids=torch.tensor(ids)[None], position_ids=pos, use_cache=False).logits[0].float()


@torch.no_grad()
def brevitas_generate(model, prompt: list[int], max_new: int, eos: int | None = None):
    """Greedy tokens and per-step logits of the Brevitas fake-quant model, with its own Λ KV cache
    (prompt as one prefill chunk, then one token per step): the reference the golden model is checked against."""
    out, logits_all = [], []
    with _fresh_cache(model):
        logits = _brevitas_chunk(model, prompt)[-1]
        for i in range(max_new):
            logits_all.append(logits)
            t = int(torch.argmax(logits))
            out.append(t)
            if eos is not None and t == eos:
                break
            logits = _brevitas_chunk(model, [t], len(prompt) + i)[-1]
    return out, logits_all


@torch.no_grad()
def brevitas_prefill_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits [len(ids), vocab] of the Brevitas model over ``ids`` as one prefill chunk (fresh Λ KV cache)."""
    with _fresh_cache(model):
        return _brevitas_chunk(model, ids)


def teacher_forced_vs_brevitas(model, golden: "GoldenModel", prompts: list[list[int]], max_new: int,
                               progress=None) -> dict:
    """The golden model fed the Brevitas model's own greedy continuation, so both see the same context at every
    step (float paths that differ by design part at near-ties, and a near-tie flips with the CPU's float kernels;
    teacher forcing keeps every step comparable). Per step: logit error, and whether the argmaxes agree.

    Returns ``steps``, ``agree`` (argmax equal), ``agreement`` (rate), ``max_abs`` / ``max_rel`` logit error
    (relative to the step's max |logit|), and ``max_disagree_margin``: the largest Brevitas logit gap between
    its own top token and the golden model's, over the steps that disagree (a near-tie has a gap within the
    logit error); ``floor_rel``: Brevitas against itself, the same tokens as one prefill chunk instead of token by
    token (relative as ``max_rel``), how far its float32 result moves with the summation order alone."""
    steps = agree = 0
    max_abs = max_rel = margin = floor = 0.0
    for ids in prompts:
        ref, ref_logits = brevitas_generate(model, ids, max_new)
        chunk = brevitas_prefill_logits(model, ids + ref[:-1])[len(ids) - 1:]
        floor = max([floor] + [float((a - b).abs().max() / a.abs().max()) for a, b in zip(ref_logits, chunk)])
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
            "max_rel": max_rel, "max_disagree_margin": margin, "floor_rel": floor}
