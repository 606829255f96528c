"""Golden integer core: the one statement of the engine core's arithmetic (engine contract v1).

Every operation is a sum of products ``a[i] * (b[i] - z)``: ``a`` is signed int8, ``b`` an unsigned low-bit
code and ``z`` its unsigned integer zero point. Results are exact int64 tensors; each is checked against the
core's 32-bit signed accumulator, which the contract says must never overflow (asserted, not saturated).

- ``dense_w2a8(a, codes, zeros, group)``        acc[..., n, g] = sum_{k in group g} a[..., k] * (codes[n, k] - zeros[n, g])
- ``sparse_w2a8(a, vals, pos, zeros, group)``   same, with 2:4 weights stored as two kept codes + 2-bit positions
- ``qk_a8kv4(q, k, kz)``                        acc[..., t] = sum_d q[..., d] * (k[t, d] - kz[t])
- ``pv_a8kv4(p, v, vz)``                        acc[..., d] = sum_t p[..., t] * (v[t, d] - vz[t])

Inputs may be torch tensors, numpy arrays or nested lists of integers; ``a``/``q``/``p`` may carry leading
batch dimensions (tokens). Group-wise float dequantisation is not part of the core.
"""
from __future__ import annotations

import torch

from . import weight_stream as ws
from .weight_stream import (KV4_MAX, MODE_DENSE, MODE_NAMES, MODE_PV, MODE_QK, MODE_SPARSE,  # noqa: F401
                            WEIGHT_BITS, wmax)

ACC_BITS = 32
MAX_REDUCTION = 1 << 16  # contract: no 32-bit overflow is possible up to this reduction length
W2_MAX = wmax(2)


def _ints(x, name: str, lo: int, hi: int) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise ValueError(f"{name} values must lie in [{lo}, {hi}], got [{int(t.min())}, {int(t.max())}]")
    return t


def _check_acc(acc: torch.Tensor, reduction: int) -> torch.Tensor:
    if reduction > MAX_REDUCTION:
        raise ValueError(f"reduction length {reduction} exceeds {MAX_REDUCTION}: a 32-bit accumulator could overflow")
    lim = 1 << (ACC_BITS - 1)
    if acc.numel() and (int(acc.min()) < -lim or int(acc.max()) >= lim):
        raise AssertionError(f"accumulator outside the {ACC_BITS}-bit signed range: [{int(acc.min())}, {int(acc.max())}]")
    return acc


def _check_group(k: int, group: int, multiple: int = 1) -> None:
    if group <= 0 or group % multiple:
        raise ValueError(f"group size {group} must be a positive multiple of {multiple}")
    if k % group:
        raise ValueError(f"reduction length {k} is not a multiple of the group size {group}")


def dense_w2a8(a, codes, zeros, group: int, wbits: int = 2) -> torch.Tensor:
    """W2A8 (or W4A8) dense: ``a`` [..., K] int8, ``codes`` [N, K] uint``wbits``, ``zeros`` [N, K//group] -> [..., N, K//group]."""
    a = _ints(a, "activations a", -128, 127)
    codes = _ints(codes, "weight codes", 0, wmax(wbits))
    zeros = _ints(zeros, "weight zero points", 0, wmax(wbits))
    if codes.dim() != 2:
        raise ValueError(f"weight codes must be [N, K], got shape {tuple(codes.shape)}")
    n, k = codes.shape
    _check_group(k, group)
    if a.dim() < 1 or a.shape[-1] != k:
        raise ValueError(f"activations must be [..., {k}] to match codes [N, {k}], got shape {tuple(a.shape)}")
    if tuple(zeros.shape) != (n, k // group):
        raise ValueError(f"zero points must be [{n}, {k // group}] (one per row and group of {group}), got {tuple(zeros.shape)}")
    w = codes - zeros.repeat_interleave(group, dim=1)  # [N, K] in [-3, 3] (W2) or [-15, 15] (W4)
    prod = a.unsqueeze(-2) * w  # [..., N, K]
    acc = prod.reshape(*prod.shape[:-1], k // group, group).sum(-1)
    return _check_acc(acc, group)


def decode_2to4(vals, pos, zeros, group: int, wbits: int = 2) -> torch.Tensor:
    """2:4 index decoding: kept codes ``vals`` [N, K/2] at ``pos`` [N, K/2] -> dense codes [N, K].

    In block j of four inputs, kept pair (vals[2j], pos[2j]), (vals[2j+1], pos[2j+1]) with pos[2j] < pos[2j+1]
    means w[4j + pos[2j]] = vals[2j] and w[4j + pos[2j+1]] = vals[2j+1]; the other two weights are pruned,
    i.e. their code equals the group's zero point so they contribute exactly 0.
    """
    vals = _ints(vals, "kept codes", 0, wmax(wbits))
    pos = _ints(pos, "2:4 positions", 0, 3)
    zeros = _ints(zeros, "weight zero points", 0, wmax(wbits))
    if vals.dim() != 2 or vals.shape != pos.shape or vals.shape[1] % 2:
        raise ValueError(f"kept codes and positions must both be [N, K/2] with K/2 even, got {tuple(vals.shape)} and {tuple(pos.shape)}")
    n, half = vals.shape
    k = 2 * half
    _check_group(k, group, 4)
    if tuple(zeros.shape) != (n, k // group):
        raise ValueError(f"zero points must be [{n}, {k // group}] (one per row and group of {group}), got {tuple(zeros.shape)}")
    if bool((pos[:, 0::2] >= pos[:, 1::2]).any()):
        raise ValueError("2:4 positions must be strictly increasing within each block (pos[2j] < pos[2j+1])")
    dense = zeros.repeat_interleave(group, dim=1).clone()
    block_base = 4 * (torch.arange(half) // 2)
    dense.scatter_(1, (block_base + pos), vals)
    return dense


def sparse_w2a8(a, vals, pos, zeros, group: int, wbits: int = 2) -> torch.Tensor:
    """W2A8 (or W4A8) 2:4 sparse: ``a`` [..., K] int8, ``vals``/``pos`` [N, K/2], ``zeros`` [N, K//group] -> [..., N, K//group]."""
    return dense_w2a8(a, decode_2to4(vals, pos, zeros, group, wbits), zeros, group, wbits)


def sparse_from_dense(codes, zeros, group: int, wbits: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress a 2:4-pruned dense code matrix [N, K] to (kept codes [N, K/2], positions [N, K/2]).

    A weight is zero when its code equals its group's zero point. Blocks with fewer than two non-zero weights
    keep zero-valued slots (code == zero point) at the lowest free positions, so the result always decodes
    back to ``codes``. A block with more than two non-zero weights is an error.
    """
    codes = _ints(codes, "weight codes", 0, wmax(wbits))
    zeros = _ints(zeros, "weight zero points", 0, wmax(wbits))
    if codes.dim() != 2:
        raise ValueError(f"weight codes must be [N, K], got shape {tuple(codes.shape)}")
    n, k = codes.shape
    _check_group(k, group, 4)
    if tuple(zeros.shape) != (n, k // group):
        raise ValueError(f"zero points must be [{n}, {k // group}] (one per row and group of {group}), got {tuple(zeros.shape)}")
    blocks = codes.reshape(n, k // 4, 4)
    nonzero = blocks != zeros.repeat_interleave(group // 4, dim=1).unsqueeze(-1)
    count = nonzero.sum(-1)
    if bool((count > 2).any()):
        r, b = (count > 2).nonzero()[0].tolist()
        raise ValueError(f"not 2:4 sparse: row {r}, inputs {4 * b}..{4 * b + 3} have {int(count[r, b])} non-zero weights (codes != zero point)")
    # Non-zero positions first (ascending), then the lowest zero positions; keep two and sort them.
    order = torch.argsort((~nonzero).to(torch.int64) * 4 + torch.arange(4), dim=-1)[..., :2]
    pos = order.sort(dim=-1).values
    vals = torch.gather(blocks, 2, pos)
    return vals.reshape(n, k // 2), pos.reshape(n, k // 2)


def qk_a8kv4(q, k, kz) -> torch.Tensor:
    """A8 x KV4 scores: ``q`` [..., D] int8, ``k`` [T, D] uint4, ``kz`` [T] uint4 -> [..., T]."""
    q = _ints(q, "query q", -128, 127)
    k = _ints(k, "key codes", 0, KV4_MAX)
    kz = _ints(kz, "key zero points", 0, KV4_MAX)
    if k.dim() != 2:
        raise ValueError(f"key codes must be [T, D], got shape {tuple(k.shape)}")
    t, d = k.shape
    if q.dim() < 1 or q.shape[-1] != d:
        raise ValueError(f"query must be [..., {d}] to match keys [T, {d}], got shape {tuple(q.shape)}")
    if tuple(kz.shape) != (t,):
        raise ValueError(f"key zero points must be [{t}] (one per token), got {tuple(kz.shape)}")
    acc = (q.unsqueeze(-2) * (k - kz.unsqueeze(1))).sum(-1)
    return _check_acc(acc, d)


def pv_a8kv4(p, v, vz) -> torch.Tensor:
    """A8 x KV4 context: ``p`` [..., T] int8, ``v`` [T, D] uint4, ``vz`` [T] uint4 -> [..., D]."""
    p = _ints(p, "probabilities p", -128, 127)
    v = _ints(v, "value codes", 0, KV4_MAX)
    vz = _ints(vz, "value zero points", 0, KV4_MAX)
    if v.dim() != 2:
        raise ValueError(f"value codes must be [T, D], got shape {tuple(v.shape)}")
    t, d = v.shape
    if p.dim() < 1 or p.shape[-1] != t:
        raise ValueError(f"probabilities must be [..., {t}] to match values [{t}, D], got shape {tuple(p.shape)}")
    if tuple(vz.shape) != (t,):
        raise ValueError(f"value zero points must be [{t}] (one per token), got {tuple(vz.shape)}")
    acc = (p.unsqueeze(-1) * (v - vz.unsqueeze(1))).sum(-2)
    return _check_acc(acc, t)


def stream_acc(data, mode: int, fmt, rows: int, k: int, a) -> torch.Tensor:
    """The core on one section of the weight stream (:mod:`accllm.sim.weight_stream`), decoded from its words:
    accumulators [rows, outputs per row]. ``a`` is the activation vector [K] (DENSE/SPARSE; a block of ``nt``
    vectors [nt, K] gives [nt, rows, groups], the engine's block mode), the query [D] (QK) or the probabilities [T]
    (PV); ``fmt`` is the section's ``StreamFormat`` (its ``wbits`` the operation's code width)."""
    f = ws.unpack(data, mode, fmt, rows, k)
    if mode == MODE_DENSE:
        return dense_w2a8(a, f["codes"], f["zeros"], fmt.group, fmt.wbits)
    if mode == MODE_SPARSE:
        return sparse_w2a8(a, f["vals"], f["pos"], f["zeros"], fmt.group, fmt.wbits)
    if mode == MODE_QK:
        return qk_a8kv4(a, f["k"], f["kz"]).reshape(rows, 1)
    return pv_a8kv4(a, f["v"], f["vz"]).reshape(rows, 1)
