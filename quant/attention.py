"""Λ-shaped attention for Llama: a few sink tokens plus a local window, as a prefill mask and as a
constant-size KV cache, with optional Brevitas fake-quantisation of Q, K, V and the probabilities.

Λ policy (sinks S, window W). Query at stream position i sees key j iff ``j <= i`` and
(``j < S`` or ``i - j < W``). In decode the cache holds exactly those keys: S sink slots, then a ring
buffer of W slots where position ``p >= S`` lives in slot ``S + (p - S) % W``; memory is S + W slots
per layer however long the stream.

Positions (``positions=``):

- ``"absolute"``: every token is rotated (RoPE) at its stream index; keys are cached pre-rotated.
- ``"cache"`` (default, StreamingLLM's choice): distances are those of a cache that numbers its slots
  0..S+W-1 in time order with the query last. For window keys that is the true distance ``i - j``
  (< W); for sink key ``k`` it is ``min(i, S + W - 1) - k``. Because RoPE scores depend only on the
  distance, this is done by scoring sink keys with the query rotated at ``min(i, S + W - 1)`` instead
  of ``i``: keys stay cached pre-rotated at their stream index, and the engine rotates the query twice.
  ``bench/quality.py`` measures both; with "absolute" the sinks sit at distances never seen in
  training once the stream passes the trained context.

Quantised attention arithmetic (the engine's QK and PV modes; see ``accllm.quant.checkpoint``):
``s = (fq8(q) . fq4(k)) * scaling`` (mask, softmax in float), then with per-token V scale ``s_v[t]``,
``out = fq8(p * s_v) @ ((v_int - v_zp))`` — the V scale is folded into the probabilities before their
int8 quantisation, exactly as the engine's PV mode expects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

POSITION_MODES = ("cache", "absolute")


@dataclass(frozen=True)
class LambdaPolicy:
    sinks: int = 4
    window: int = 124
    positions: str = "cache"

    def __post_init__(self):
        if self.sinks < 0:
            raise ValueError(f"sink count must be >= 0, got {self.sinks}")
        if self.window <= 0:
            raise ValueError(f"window must be > 0, got {self.window}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {self.positions!r}")

    @property
    def slots(self) -> int:
        return self.sinks + self.window

    def slot_of(self, pos: torch.Tensor) -> torch.Tensor:
        """Cache slot of each stream position: sinks first, then the ring buffer."""
        return torch.where(pos < self.sinks, pos, self.sinks + (pos - self.sinks) % self.window)


def visibility(qpos: torch.Tensor, kpos: torch.Tensor, policy: LambdaPolicy | None) -> torch.Tensor:
    """Bool [Lq, Lk]: may the query at ``qpos`` attend to the key at ``kpos`` (causal, then Λ)."""
    q, k = qpos[:, None], kpos[None, :]
    vis = (k <= q) & (k >= 0)
    if policy is not None:
        vis &= (k < policy.sinks) | (q - k < policy.window)
    return vis


class KVLayerState:
    """One layer's cache: fixed S+W slots under a Λ policy (ring buffer), or a growing list without."""

    def __init__(self, policy: LambdaPolicy | None):
        self.policy = policy
        self.keys = self.values = self.pos = None

    def read_and_write(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """Return (cached keys + ``k``, values, their positions) for this step, then store ``k, v``."""
        if self.keys is None:
            b, h, _, d = k.shape
            cap = self.policy.slots if self.policy else 0
            self.keys = k.new_zeros(b, h, cap, d)
            self.values = v.new_zeros(b, h, cap, d)
            self.pos = torch.full((cap,), -1, dtype=torch.long, device=k.device)
        keys = torch.cat([self.keys, k], dim=2)
        values = torch.cat([self.values, v], dim=2)
        kpos = torch.cat([self.pos, pos])
        if self.policy is None:
            self.keys, self.values, self.pos = keys, values, kpos
        else:
            p = self.policy
            # Only sinks and the last W positions of this chunk survive; slots are then unique.
            keep = (pos < p.sinks) | (pos > pos.max() - p.window)
            slots = p.slot_of(pos[keep])
            self.keys[:, :, slots] = k[:, :, keep]
            self.values[:, :, slots] = v[:, :, keep]
            self.pos[slots] = pos[keep]
        return keys, values, kpos

    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nelement() * self.keys.element_size() * 2


class KVCache:
    """Decode-time cache for a model whose attention is :class:`AccAttention` (see :func:`attached`)."""

    def __init__(self, num_layers: int, policy: LambdaPolicy | None):
        self.layers = [KVLayerState(policy) for _ in range(num_layers)]
        self.seen = 0

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x, cos, sin):
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def _fake_quant(quant, x):
    """``(fake-quantised x, its scale)``; ``(x, None)`` when there is no quantiser or it is disabled
    (Brevitas returns a plain tensor then, e.g. while GPTQ runs with float activations)."""
    if quant is None:
        return x, None
    out = quant(x)
    if isinstance(out, torch.Tensor):
        return out, None
    return out.value, out.scale


class KVQuantSDPA(nn.Module):
    """Scaled dot-product attention with optional Brevitas quantisers at the engine's operands.

    ``q_quant`` / ``p_quant``: int8 per-row (per token, per head) symmetric; ``k_quant`` / ``v_quant``:
    4-bit asymmetric per token per KV head. ``k_quant`` follows Brevitas' SDPA convention of
    quantising K transposed ([B, H, D, T]); V is fed through the same kind of quantiser transposed, so
    both get one scale and zero point per (token, head). ``None`` leaves an operand in float.
    """

    def __init__(self):
        super().__init__()
        self.q_quant = self.k_quant = self.v_quant = self.p_quant = None

    def quant_kv(self, k, v):
        """Fake-quantised K and V, and V's per-token scale (None if V is float)."""
        k, _ = _fake_quant(self.k_quant, k.transpose(-2, -1))
        v, s_v = _fake_quant(self.v_quant, v.transpose(-2, -1))
        s_v = s_v.transpose(-2, -1) if s_v is not None else None  # [B, H, T, 1]
        return k.transpose(-2, -1), v.transpose(-2, -1), s_v

    def forward(self, q, q_sink, k, v, visible, sink_keys, scaling):
        groups = q.shape[1] // k.shape[1]
        k, v, s_v = self.quant_kv(k, v)
        # also when groups == 1 (multi-head attention, e.g. Llama-2-7B): an identity, exported as the same Tile the
        # engine's attention pattern reads with one query head per KV head
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        s_v = s_v.repeat_interleave(groups, 1) if s_v is not None else None
        qq, _ = _fake_quant(self.q_quant, q)
        scores = qq @ k.transpose(-2, -1)
        if q_sink is not None and bool(sink_keys.any()):
            qs, _ = _fake_quant(self.q_quant, q_sink)
            scores = torch.where(sink_keys, qs @ k.transpose(-2, -1), scores)
        scores = (scores * scaling).float().masked_fill(~visible, float("-inf"))
        p = torch.softmax(scores, dim=-1).to(q.dtype)
        if s_v is None:
            return _fake_quant(self.p_quant, p)[0] @ v
        # Engine PV mode: fold V's per-token scale into p, quantise, multiply by (v_int - v_zp).
        p_folded = p * s_v.transpose(-2, -1)
        p_folded, _ = _fake_quant(self.p_quant, p_folded)
        v_int = v / s_v  # integer-valued; rounded straight through, so V's projection is trained by distillation
        if not torch.is_grad_enabled():  # the same values; exported (no grad) as the Round the engine pattern reads
            return p_folded @ torch.round(v_int)
        return p_folded @ (v_int + (torch.round(v_int) - v_int).detach())


class AccAttention(nn.Module):
    """Drop-in for ``LlamaAttention``: same projections, Λ policy, RoPE position modes, quantisable SDPA."""

    def __init__(self, attn, rotary_emb, policy: LambdaPolicy | None):
        super().__init__()
        self.layer_idx = attn.layer_idx
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.rotary = [rotary_emb]  # a list: shared with the model, not a child module
        self.policy = policy
        self.sdpa = KVQuantSDPA()
        self.kv_state: KVLayerState | None = None

    def forward(self, hidden_states, position_embeddings=None, position_ids=None, **kwargs):
        b, n, _ = hidden_states.shape
        shape = (b, n, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if position_ids is None:
            position_ids = torch.arange(n, device=q.device)[None]
        qpos = position_ids[0]
        cos, sin = position_embeddings
        q_rot, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if self.kv_state is not None:
            k, v, kpos = self.kv_state.read_and_write(k, v, qpos)
        else:
            kpos = qpos
        p = self.policy
        visible = visibility(qpos, kpos, p)
        q_sink, sink_keys = None, None
        if p is not None and p.positions == "cache" and p.sinks > 0:
            capped = qpos.clamp(max=p.slots - 1)
            if bool((capped != qpos).any()):
                cos_s, sin_s = self.rotary[0](hidden_states, capped[None].expand(b, -1))
                q_sink = _rope(q, cos_s, sin_s)
                sink_keys = (kpos < p.sinks) & (kpos >= 0)
        out = self.sdpa(q_rot, q_sink, k, v, visible, sink_keys, self.scaling)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.o_proj(out), None


def install(model, policy: LambdaPolicy | None) -> None:
    """Replace every decoder layer's attention with :class:`AccAttention` (idempotent: re-sets the policy)."""
    rotary = model.model.rotary_emb
    for layer in model.model.layers:
        if isinstance(layer.self_attn, AccAttention):
            layer.self_attn.policy = policy
        else:
            layer.self_attn = AccAttention(layer.self_attn, rotary, policy)


def attention_modules(model) -> list[AccAttention]:
    return [m for m in model.modules() if isinstance(m, AccAttention)]


def set_policy(model, policy: LambdaPolicy | None) -> None:
    for m in attention_modules(model):
        m.policy = policy


class attached:
    """``with attached(model, cache):`` — the model's attention layers read and write ``cache``."""

    def __init__(self, model, cache: KVCache):
        self.mods, self.cache = attention_modules(model), cache
        if not self.mods:
            raise ValueError("model has no AccAttention layers; call accllm.quant.attention.install first")

    def __enter__(self):
        for m in self.mods:
            m.kv_state = self.cache.layers[m.layer_idx]
        return self.cache

    def __exit__(self, *exc):
        for m in self.mods:
            m.kv_state = None


@torch.no_grad()
def stream_logits(model, ids: torch.Tensor, policy: LambdaPolicy | None, chunk: int = 64, progress=None):
    """Feed a 1-D id stream through the cache ``chunk`` tokens at a time; yield ``(start, logits[chunk])``.

    With a Λ policy the cache stays at S + W slots per layer however long ``ids`` is.
    """
    device = next(model.parameters()).device
    cache = KVCache(model.config.num_hidden_layers, policy)
    with attached(model, cache):
        for start in range(0, len(ids), chunk):
            x = ids[start:start + chunk].to(device)[None]
            pos = torch.arange(start, start + x.shape[1], device=device)[None]
            yield start, model(input_ids=x, position_ids=pos, use_cache=False).logits[0], cache
            if progress is not None:
                progress.update(x.shape[1])
