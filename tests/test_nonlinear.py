"""The engine's float32 arithmetic (accllm.sim.nonlinear): accuracy of the tables against float64, the reduction
order, and the HLS kernel's functions compiled with g++ against the torch reference (bit for bit on this CPU; the tests
bound them to a few float32 roundings, since torch's vector kernels differ between CPUs)."""
import ctypes
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from accllm.sim import nonlinear as nl

TEMPLATES = Path(__file__).resolve().parents[1] / "hls" / "templates"
# Measured: 1.81e-7 (2.03 ulp) over [-86, 88] with the 1024-entry table; 1.43e-7 with 2048.
EXP_MAX_REL = 2.0e-7
# Measured: 3.9e-7 over uint32 positions (5 angle additions), 1.2e-7 below 4096, exact below 64.
ROPE_MAX_ABS = 6e-7


def test_exp_relative_error_vs_float64():
    x = torch.cat([torch.linspace(nl.EXP_MIN, nl.EXP_MAX, 1_000_001),
                   torch.rand(1_000_000, generator=torch.Generator().manual_seed(0)) * -30])
    y, ref = nl.exp(x).double(), torch.exp(x.double())
    rel = float(((y - ref).abs() / ref).max())
    assert rel < EXP_MAX_REL, rel
    assert 1e-8 < rel  # a table, not libm: the bound is the table's


def test_exp_range_ends_and_exact_points():
    y = nl.exp(torch.tensor([-1000.0, nl.EXP_MIN - 0.01, 0.0, -0.0, nl.EXP_MAX + 0.01, math.inf, -math.inf, math.nan]))
    assert y[:2].tolist() == [0.0, 0.0] and y[2:4].tolist() == [1.0, 1.0]
    assert math.isinf(y[4]) and math.isinf(y[5]) and y[6] == 0.0 and math.isnan(y[7])
    lo = nl.exp(torch.tensor([nl.EXP_MIN]))  # the smallest result is a normal float (no subnormal on the FPGA)
    assert float(lo) >= np.finfo(np.float32).tiny


def test_exp_table_is_float64_rounded_once():
    t = nl.exp2_table()
    ref = np.exp2(np.arange(nl.EXP_TABLE_SIZE + 1) / nl.EXP_TABLE_SIZE - 0.5)
    assert t.dtype == np.float32 and np.array_equal(t, ref.astype(np.float32))
    assert t[nl.EXP_TABLE_SIZE // 2] == 1.0


def test_tree_sum_is_the_pairwise_tree_and_padding_independent():
    torch.manual_seed(0)
    x = torch.tensor([1e8, 1.0, -1e8, 1.0, 3.0], dtype=torch.float32)
    # ((1e8 + 1) + (-1e8 + 1)) + (3 + 0): in float32 1e8 + 1 == 1e8, so the tree gives 0 + 3 = 3, a sequential sum
    # 4, the exact sum 5: the order is part of the definition.
    assert float(nl.tree_sum(x)) == 3.0
    a, b, c, d = (np.float32(v) for v in torch.randn(4).tolist())
    assert float(nl.tree_sum(torch.tensor([a, b, c, d]))) == float(np.float32(np.float32(a + b) + np.float32(c + d)))
    r = torch.randn(7, 37)
    padded = torch.nn.functional.pad(r, (0, 128 - 37))
    assert torch.equal(nl.tree_sum(r), nl.tree_sum(padded))
    assert float(nl.tree_sum(torch.tensor([-0.0, -0.0, -0.0]))) == 0.0 and not math.copysign(1, nl.tree_sum(
        torch.tensor([-0.0]))) < 0
    assert torch.allclose(nl.tree_sum(r).double(), r.double().sum(-1), rtol=1e-5, atol=1e-5)


def test_rsqrt_is_correctly_rounded_division_of_sqrt():
    x = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 100 + 1e-6
    y = nl.rsqrt(x)
    ref = (np.float32(1.0) / np.sqrt(x.numpy())).astype(np.float32)  # numpy float32: IEEE sqrt and division
    assert np.array_equal(y.numpy(), ref)
    assert float(((y.double() - 1 / x.double().sqrt()).abs() * x.double().sqrt()).max()) < 1.2e-7


@pytest.fixture(scope="module")
def inv_freq():
    return (1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))).float()


def test_rope_table_vs_float64_cos_sin(inv_freq):
    table = torch.from_numpy(nl.rope_table(inv_freq.numpy()))
    assert tuple(table.shape) == (nl.ROPE_LEVELS, nl.ROPE_RADIX, 2, 32)
    pos = torch.cat([torch.arange(0, 3000), torch.randint(0, 2 ** 32, (3000,), generator=torch.Generator().manual_seed(1)),
                     torch.tensor([2 ** 32 - 1, 2 ** 31, 64, 4095, 4096])])
    c, s = nl.rope_cos_sin(table, pos)
    ang = [[float(p) * float(f) for f in inv_freq.double()] for p in pos.tolist()]
    cr = torch.tensor([[math.cos(a) for a in row] for row in ang], dtype=torch.float64)
    sr = torch.tensor([[math.sin(a) for a in row] for row in ang], dtype=torch.float64)
    err = max(float((c.double() - cr).abs().max()), float((s.double() - sr).abs().max()))
    assert err < ROPE_MAX_ABS, err
    small = pos < nl.ROPE_RADIX  # a single non-zero digit: the float64 value rounded once
    assert torch.equal(c[small], cr[small].float()) and torch.equal(s[small], sr[small].float())
    with pytest.raises(ValueError, match="RoPE position"):
        nl.rope_cos_sin(table, -1)


def test_rope_rotation_keeps_relative_angle(inv_freq):
    """q at i, k at j: q.k depends on i - j only (what Λ's re-rotated sink query relies on), within float32."""
    table = torch.from_numpy(nl.rope_table(inv_freq.numpy()))
    torch.manual_seed(0)
    q, k = torch.randn(64), torch.randn(64)
    dots = []
    for i, j in ((10, 3), (1_000_007, 1_000_000), (4_000_000_007, 4_000_000_000)):
        qi, kj = nl.rope(q, *nl.rope_cos_sin(table, i)), nl.rope(k, *nl.rope_cos_sin(table, j))
        dots.append(float((qi.double() * kj.double()).sum()))
    assert max(dots) - min(dots) < 1e-4 * max(1.0, abs(dots[0]))


def test_units_follow_their_formulas():
    """Each unit against its float64 formula, relative error (worst over 300 seeds: silu 2.1e-7, softmax 1.9e-6 (the
    float32 rounding of s - max s, amplified by exp), rmsnorm 2.2e-7, dequant 1.0e-7 of the sum of |terms|)."""
    torch.manual_seed(0)
    for _ in range(20):
        g = torch.randn(4, 50) * 6
        ref = g.double() / (1.0 + torch.exp(-g.double()))
        assert ((nl.silu(g).double() - ref).abs() <= 4e-7 * ref.abs()).all()
        s = torch.randn(3, 40) * 5
        ref = torch.softmax(s.double(), -1)
        assert ((nl.softmax(s).double() - ref).abs() <= 4e-6 * ref).all()
        x, w = torch.randn(2, 96), torch.rand(96) + 0.5
        ref = x.double() / (x.double().pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * w.double()
        assert ((nl.rmsnorm(x, w, 1e-5).double() - ref).abs() <= 4e-7 * ref.abs()).all()
        acc, sc, sx = torch.randint(-3000, 3000, (5, 8)), torch.rand(5, 8).half().float(), torch.rand(1)
        terms = acc.double() * sc.double()
        err = (nl.dequant(acc, sc, sx).double() - terms.sum(-1) * sx.double()).abs()
        assert (err <= 3e-7 * terms.abs().sum(-1) * sx.double()).all()


def test_exp_table_header_holds_the_same_numbers():
    text = nl.exp_table_header()
    body = text.split("EXP2_TABLE[EXP_TABLE_SIZE + 1] = {", 1)[1].split("};", 1)[0]
    vals = np.array([float(v) for v in re.findall(r"([-0-9.e+]+)f", body)], dtype=np.float32)
    assert vals.tobytes() == nl.exp2_table().tobytes()
    consts = dict(re.findall(r"(EXP_LOG2E|EXP_LN2_HI|EXP_LN2_LO) = ([-0-9.e+]+)f", text))
    assert np.float32(consts["EXP_LOG2E"]) == nl.LOG2E and np.float32(consts["EXP_LN2_HI"]) == nl.LN2_HI
    assert np.float32(consts["EXP_LN2_LO"]) == nl.LN2_LO


# ------------------------------------------------------------------ the kernel's functions, compiled

HARNESS = r"""
#include "accllm_kernel.h"
using namespace accllm;
struct cfg {
    static const unsigned hidden = 96, head_dim = 64, slots = 40, group = 32, max_vec = 256;
    static constexpr float eps = %(eps)sf;
};
extern "C" {
void k_exp(const float *x, float *y, unsigned n) { for (unsigned i = 0; i < n; i++) y[i] = exp_f32(x[i]); }
void k_half(float *y) { for (unsigned i = 0; i < 65536; i++) y[i] = half_to_float((uint16_t)i); }
void k_tree(const float *x, float *y, unsigned rows, unsigned n) {
    for (unsigned r = 0; r < rows; r++) y[r] = tree_sum<256>(x + r * n, n);
}
void k_rmsnorm(const float *x, const float *w, float *y, unsigned rows) {
    for (unsigned r = 0; r < rows; r++) rmsnorm<cfg>(x + r * cfg::hidden, w, y + r * cfg::hidden);
}
void k_softmax(const float *s, float *p, unsigned rows, unsigned n) {
    for (unsigned r = 0; r < rows; r++) softmax<cfg>(s + r * n, p + r * n, n);
}
void k_silu_mul(float *g, const float *u, unsigned n) { silu_mul<cfg>(g, u, n); }
void k_rope(const uint8_t *table, unsigned nbytes, const unsigned *pos, unsigned npos, float *c, float *s) {
    static word_t mem[1 << 12];
    for (unsigned i = 0; i < nbytes / 4; i++) set_word_u32(mem[i / WORD_U32], i %% WORD_U32, ((const uint32_t *)table)[i]);
    for (unsigned p = 0; p < npos; p++) rope_cos_sin<cfg>(mem, 0, pos[p], c + p * 32, s + p * 32);
}
void k_dequant(const int32_t *acc, const uint16_t *sc, const float *sx, float *y, unsigned rows, unsigned groups) {
    for (unsigned r = 0; r < rows; r++) y[r] = dequant_row<cfg>(acc + r * groups, sc + r * groups, groups, sx[r]);
}
}
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from accllm.hls.csim import CXXFLAGS, ap_types_dir

    d = tmp_path_factory.mktemp("nonlinear_kernel")
    (d / "accllm_tables.h").write_text(nl.exp_table_header())
    (d / "harness.cpp").write_text(HARNESS % {"eps": "%.9g" % np.float32(1e-5)})
    lib = d / "harness.so"
    cmd = ["g++", *CXXFLAGS, "-I", str(d), "-I", str(TEMPLATES), "-I", str(ap_types_dir()), str(d / "harness.cpp"),
           "-o", str(lib)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return ctypes.CDLL(str(lib))


def _close(got: np.ndarray, ref: np.ndarray, what: str = "", floor: float = 1e-3) -> None:
    """The kernel's float32 result against the torch reference: the same operations in the same order (measured bit
    for bit equal on this CPU), bounded to a few float32 roundings because torch's vector kernels differ by CPU."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    special = ~np.isfinite(ref)
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.array_equal(got[special & ~np.isnan(ref)],
                                                                           ref[special & ~np.isnan(ref)]), what
    fin = np.isfinite(ref)
    err = np.abs(got[fin] - ref[fin])
    bound = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(ref[fin]), np.abs(ref[fin]).max(initial=0) * floor)
    assert (err <= bound).all(), f"{what} max error {err.max():.3g}"


def _p(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def test_kernel_exp_bit_exact(kernel):
    x = np.concatenate([np.linspace(-90, 90, 400_001, dtype=np.float32),
                        np.random.default_rng(0).standard_normal(200_000).astype(np.float32) * 20,
                        np.array([nl.EXP_MIN, nl.EXP_MAX, 0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)])
    y = np.empty_like(x)
    kernel.k_exp(_p(x), _p(y), ctypes.c_uint(x.size))
    ref = nl.exp(torch.from_numpy(x)).numpy()
    _close(y, ref, "exp", floor=0.0)  # relative to each value: exp spans 0 .. 1e38


def test_kernel_half_to_float_all_codes(kernel):
    y = np.empty(65536, np.float32)
    kernel.k_half(_p(y))
    ref = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    same = (y.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(y) & np.isnan(ref))
    assert same.all(), np.flatnonzero(~same)[:10]


def test_kernel_reductions_and_units_bit_exact(kernel):
    rng = np.random.default_rng(2)
    n = 200
    x = (rng.standard_normal((64, n)) * rng.uniform(1e-3, 1e3, (64, 1))).astype(np.float32)
    y = np.empty(64, np.float32)
    kernel.k_tree(_p(x), _p(y), 64, n)
    _close(y, nl.tree_sum(torch.from_numpy(x)).numpy(), "tree sum")

    h = (rng.standard_normal((16, 96)) * 3).astype(np.float32)
    w = rng.uniform(0.2, 2, 96).astype(np.float32)
    out = np.empty_like(h)
    kernel.k_rmsnorm(_p(h), _p(w), _p(out), 16)
    ref = nl.rmsnorm(torch.from_numpy(h), torch.from_numpy(w), 1e-5).numpy()
    _close(out, ref, "rmsnorm")

    for m in (1, 7, 40):
        s = (rng.standard_normal((8, m)) * 4).astype(np.float32)
        p = np.empty_like(s)
        kernel.k_softmax(_p(s), _p(p), 8, m)
        _close(p, nl.softmax(torch.from_numpy(s)).numpy(), f"softmax {m}")

    g, u = (rng.standard_normal(5000) * 8).astype(np.float32), rng.standard_normal(5000).astype(np.float32)
    ref = (nl.silu(torch.from_numpy(g)) * torch.from_numpy(u)).numpy()
    kernel.k_silu_mul(_p(g), _p(u), 5000)
    _close(g, ref, "silu")

    acc = rng.integers(-40000, 40000, (50, 8)).astype(np.int32)
    sc = rng.uniform(1e-4, 1e-1, (50, 8)).astype(np.float16)
    sx = rng.uniform(1e-3, 1, 50).astype(np.float32)
    y = np.empty(50, np.float32)
    kernel.k_dequant(_p(acc), _p(sc.view(np.uint16)), _p(sx), _p(y), 50, 8)
    ref = nl.dequant(torch.from_numpy(acc.astype(np.int64)), torch.from_numpy(sc.astype(np.float32)),
                     torch.from_numpy(sx)).numpy()  # one row per accumulator row here
    _close(y, ref, "dequant")


def test_kernel_rope_rows_bit_exact(kernel, inv_freq):
    table = nl.rope_table(inv_freq.numpy())
    pos = np.concatenate([np.arange(300), np.random.default_rng(3).integers(0, 2 ** 32, 300), [2 ** 32 - 1]]).astype(np.uint32)
    c, s = np.empty((pos.size, 32), np.float32), np.empty((pos.size, 32), np.float32)
    kernel.k_rope(_p(table), table.nbytes, _p(pos), pos.size, _p(c), _p(s))
    rc, rs = nl.rope_cos_sin(torch.from_numpy(table), torch.from_numpy(pos.astype(np.int64)))
    _close(c, rc.numpy(), "cos")
    _close(s, rs.numpy(), "sin")



# ------------------------------------------------------------------ a compiled build holds the same tables

@pytest.fixture(scope="session")
def flow(tmp_path_factory):
    from flow_fixtures import flow_paths

    return flow_paths(tmp_path_factory)


def test_build_tables_are_the_golden_models_bytes(flow):
    """The compiler's RoPE section (what every ATTENTION points at) and the HLS project's exp table are the bytes
    the golden model computes with: one definition, no second copy that could drift."""
    from accllm.hls import blob
    from accllm.hls import program as prog
    from accllm.hls.project import TABLES_H
    from accllm.sim.golden import GoldenModel

    ckpt, _, build = flow
    meta, payload = blob.read_blob(build / "weights.blob")
    sec = meta["sections"]["rope_table"]
    golden = GoldenModel.load(ckpt)  # its table comes from the checkpoint's config, the blob's from the ONNX export
    assert payload[sec["offset"]:sec["offset"] + sec["nbytes"]] == golden.rope_table.numpy().tobytes()
    _, instrs, _ = prog.read_program(build / "program.bin")
    attention = [i for i in instrs if i.op == prog.OP_ATTENTION]
    assert attention and all(i.args[5] == sec["offset"] for i in attention)
    assert (build / "hls" / TABLES_H).read_text() == nl.exp_table_header()
