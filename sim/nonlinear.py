"""The engine's float32 arithmetic: ONE definition of the non-linear units and reductions, their tables, and
torch reference functions that the HLS kernel (``hls/templates/accllm_kernel.h``) follows operation for operation.

Rules (contract 5): every value is float32; every operation is one IEEE-754 float32 operation (round to
nearest even) in the order written here, no fused multiply-add; ``+ - * /`` and ``sqrt`` are correctly
rounded on the CPU (g++; torch's element-wise ops; numpy's sqrt, see :func:`sqrt`) and on Vitis HLS (which maps them to the Floating-Point Operator core), so
the two sides agree bit for bit. Transcendentals are not computed by a library (libm and the bit-approximate
``hls_math`` functions differ by ulps): exp and cos/sin read tables computed here once, in float64, rounded to
float32, and the compiler writes the same numbers into the kernel's project (exp) and the weight blob (RoPE).

- :func:`tree_sum` is every reduction: a pairwise (adder-tree) sum over the values zero-padded to a power of
  two, adjacent pairs first, then ``+ 0.0`` (so any padding gives the same bits, -0 included).
- :func:`exp` : Cody-Waite reduction ``x = k ln2 + r``, ``2^(r/ln2)`` by linear interpolation in
  :func:`exp2_table` (``EXP_TABLE_SIZE + 1`` entries over [-1/2, 1/2]), then an exact scaling by ``2^k``.
  Inputs below ``EXP_MIN`` give 0 (their result would be subnormal; the FPGA's float cores flush subnormals),
  above ``EXP_MAX`` +inf, NaN stays NaN. Measured against float64: max relative error 1.8e-7 (2.0 ulp) over
  [EXP_MIN, EXP_MAX] (tests/test_nonlinear.py bounds it by 2e-7).
- :func:`rsqrt` is ``1 / sqrt(x)``: two correctly rounded operations, no table needed.
- RoPE: :func:`rope_table` holds cos/sin of ``d * 64^l * inv_freq`` for the 6 base-64 digits ``d`` of a
  position (levels ``l`` = 0..5: every uint32 position, so Λ's stream can run on without bound);
  :func:`rope_cos_sin` combines the rows of a position's digits by the angle-addition formula. Measured against
  float64 cos/sin of ``pos * inv_freq``: exact (rounded once) below 64, max abs error 1.2e-7 below 4096 and
  3.9e-7 over all uint32 positions. One table of 6 * 64 rows per model (96 KiB at D = 64) instead of one row per
  position: Λ's positions grow without bound while its cache stays constant.
"""
from __future__ import annotations

import math

import numpy as np
import torch

F32 = torch.float32

# ------------------------------------------------------------------ reductions

def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis as an adder tree: zero-pad to the next power of two, add adjacent pairs level by
    level, then ``+ 0.0``. float32 in, float32 out (one rounding per addition)."""
    x = x.to(F32)
    n = x.shape[-1]
    p = 1 << max(n - 1, 0).bit_length()
    if p != n:
        x = torch.nn.functional.pad(x, (0, p - n))
    while x.shape[-1] > 1:
        x = x[..., 0::2] + x[..., 1::2]
    return x[..., 0] + 0.0


# ------------------------------------------------------------------ exp

EXP_TABLE_BITS = 10
EXP_TABLE_SIZE = 1 << EXP_TABLE_BITS
EXP_MIN, EXP_MAX = -86.0, 88.0  # exp stays a normal float32 in between (2^-124 .. 2^127 * sqrt 2)
LOG2E = np.float32(1.0 / math.log(2.0))
LN2_HI = np.float32(0.693145751953125)  # 15 significant bits: k * LN2_HI is exact for |k| <= 256
LN2_LO = np.float32(math.log(2.0) - float(LN2_HI))


def exp2_table() -> np.ndarray:
    """float32 [EXP_TABLE_SIZE + 1]: ``2^(i / N - 1/2)``, i = 0..N (float64 rounded once)."""
    i = np.arange(EXP_TABLE_SIZE + 1, dtype=np.float64)
    return np.exp2(i / EXP_TABLE_SIZE - 0.5).astype(np.float32)


_EXP2 = torch.from_numpy(exp2_table())
_EXP2_STEP = torch.cat([_EXP2[1:] - _EXP2[:-1], torch.zeros(1)])  # hi - lo: exact in float32, as the kernel computes it


def pow2(k: torch.Tensor) -> torch.Tensor:
    """float32 ``2^k`` for integral float32 ``k`` in [-126, 127], built from its exponent bits (exact)."""
    return ((k.to(torch.int32) + 127) << 23).view(F32)


def exp(x: torch.Tensor) -> torch.Tensor:
    """Table exp of a float32 tensor (see the module text); the kernel's ``exp_f32``."""
    x = x.to(F32)
    xc = x.clamp(EXP_MIN, EXP_MAX)  # lanes out of range are replaced at the end; NaN stays NaN throughout
    k = torch.round(xc * float(LOG2E))  # round half to even, like nearbyint
    r = (xc - k * float(LN2_HI)) - k * float(LN2_LO)
    s = (r * float(LOG2E) + 0.5) * float(EXP_TABLE_SIZE)
    i = torch.nan_to_num_(torch.floor(s).clamp_(0, EXP_TABLE_SIZE - 1))
    f = s - i
    i = i.long()
    v = _EXP2[i] + f * _EXP2_STEP[i]
    y = v * pow2(torch.nan_to_num(k))
    return torch.where(x < EXP_MIN, 0.0, torch.where(x > EXP_MAX, math.inf, y))


# ------------------------------------------------------------------ units

def sqrt(x: torch.Tensor) -> torch.Tensor:
    """IEEE (correctly rounded) float32 square root. numpy's, not torch's: torch hands tensors of more than a few
    elements to MKL, whose sqrt is off by an ulp in ~15 % of cases (measured)."""
    return torch.from_numpy(np.sqrt(x.to(F32).contiguous().numpy()))


def rsqrt(x: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(x)`` in float32: both operations correctly rounded, on the CPU and in Vitis HLS."""
    return 1.0 / sqrt(x)


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps) -> torch.Tensor:
    """``(x * rsqrt(tree_sum(x * x) / n + eps)) * w`` over the last axis; ``eps`` is rounded to float32."""
    var = tree_sum(x * x) / float(x.shape[-1])
    inv = rsqrt(var + float(np.float32(eps)))
    return (x * inv.unsqueeze(-1)) * w


def softmax(s: torch.Tensor) -> torch.Tensor:
    """``e / tree_sum(e)`` with ``e = exp(s - max s)`` over the last axis."""
    e = exp(s - s.amax(-1, keepdim=True))
    return e / tree_sum(e).unsqueeze(-1)


def silu(g: torch.Tensor) -> torch.Tensor:
    """``g * (1 / (1 + exp(-g)))``."""
    return g * (1.0 / (1.0 + exp(-g)))


def dequant(acc: torch.Tensor, scales: torch.Tensor, sx: torch.Tensor) -> torch.Tensor:
    """A linear's float result: ``tree_sum(float(acc) * s_w) * s_x``; ``acc`` [..., N, K/G] integer
    accumulators (|acc| < 2^24, exact in float32), ``scales`` [N, K/G] (fp16 values), ``sx`` [..., 1]."""
    return tree_sum(acc.to(F32) * scales) * sx


# ------------------------------------------------------------------ RoPE

ROPE_RADIX_BITS = 6
ROPE_RADIX = 1 << ROPE_RADIX_BITS
ROPE_LEVELS = 6  # 36 bits of position: every uint32 position of the kernel


def rope_table(inv_freq) -> np.ndarray:
    """float32 [ROPE_LEVELS, ROPE_RADIX, 2, D/2]: ``[l, d, 0] = cos(d * 64^l * f)``, ``[l, d, 1] = sin(...)``.
    The angle is exact in float64 (a 6-bit digit times a power of two times the float32 ``f``); ``math.cos``
    (libm, argument reduction exact for any size) is rounded once to float32."""
    f = np.asarray(inv_freq, np.float32).astype(np.float64).reshape(-1)
    out = np.empty((ROPE_LEVELS, ROPE_RADIX, 2, f.size), np.float32)
    for lvl in range(ROPE_LEVELS):
        for d in range(ROPE_RADIX):
            ang = [float(d * ROPE_RADIX ** lvl) * fj for fj in f]
            out[lvl, d, 0] = np.array([math.cos(a) for a in ang], np.float64).astype(np.float32)
            out[lvl, d, 1] = np.array([math.sin(a) for a in ang], np.float64).astype(np.float32)
    return out


def rope_digits(pos) -> torch.Tensor:
    """int64 [..., ROPE_LEVELS]: the base-64 digits of ``pos`` (< 2^36), least significant first."""
    p = torch.as_tensor(pos, dtype=torch.int64)
    if bool((p < 0).any()) or bool((p >= ROPE_RADIX ** ROPE_LEVELS).any()):
        raise ValueError(f"RoPE position outside [0, 2^{ROPE_RADIX_BITS * ROPE_LEVELS})")
    shifts = torch.arange(ROPE_LEVELS) * ROPE_RADIX_BITS
    return (p.unsqueeze(-1) >> shifts) & (ROPE_RADIX - 1)


def rope_cos_sin(table: torch.Tensor, pos) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [..., D/2] at position(s) ``pos`` from :func:`rope_table` (as a tensor): start at level
    0's row, then per level ``c, s = c*C - s*S, s*C + c*S``. A zero digit's row is (1, 0): exact, so positions
    < 64 give the float64 values rounded once."""
    dig = rope_digits(pos)
    rows = table[torch.arange(ROPE_LEVELS), dig]  # [..., levels, 2, D/2]
    c, s = rows[..., 0, 0, :], rows[..., 0, 1, :]
    for lvl in range(1, ROPE_LEVELS):
        cl, sl = rows[..., lvl, 0, :], rows[..., lvl, 1, :]
        c, s = c * cl - s * sl, s * cl + c * sl
    return c, s


def rope(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x [..., D] rotated (HF rotate_half): ``[x1*c - x2*s, x2*c + x1*s]``."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


# ------------------------------------------------------------------ the kernel's copy of the exp table

def _c_float(v) -> str:
    """A C float literal that round-trips float32 ``v`` exactly (9 significant digits)."""
    s = "%.9g" % float(v)
    return s + ("f" if any(ch in s for ch in ".en") else ".0f")


def exp_table_header() -> str:
    """``accllm_tables.h`` of the HLS project: the exp table and constants (decimal literals of 9 significant
    digits round-trip float32 exactly)."""
    vals = exp2_table()
    rows = ",\n".join("    " + ", ".join(_c_float(v) for v in vals[i:i + 8]) for i in range(0, vals.size, 8))
    return f"""// Generated by accllm compile from accllm.sim.nonlinear (the one definition). Do not edit; recompile instead.
#ifndef ACCLLM_TABLES_H
#define ACCLLM_TABLES_H

namespace accllm {{

static const unsigned EXP_TABLE_SIZE = {EXP_TABLE_SIZE};
static const float EXP_MIN = {_c_float(EXP_MIN)}, EXP_MAX = {_c_float(EXP_MAX)};
static const float EXP_LOG2E = {_c_float(LOG2E)}, EXP_LN2_HI = {_c_float(LN2_HI)}, EXP_LN2_LO = {_c_float(LN2_LO)};
// 2^(i / EXP_TABLE_SIZE - 1/2), i = 0 .. EXP_TABLE_SIZE
static const float EXP2_TABLE[EXP_TABLE_SIZE + 1] = {{
{rows}}};

static const unsigned ROPE_RADIX_BITS = {ROPE_RADIX_BITS}, ROPE_LEVELS = {ROPE_LEVELS};

}}  // namespace accllm

#endif
"""
