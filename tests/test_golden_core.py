"""The golden integer core (accllm.sim.golden_core) and the core's stream format (accllm.sim.core_stream)."""
import numpy as np
import pytest
import torch

from accllm.sim import core_stream as cs
from accllm.sim import golden_core as gc
from accllm.hw.rtl_ops import random_ops


def test_dense_hand_example():
    a = [1, -2, 3, 4]
    codes = [[3, 0, 1, 2], [0, 0, 3, 3]]
    zeros = [[1, 2], [0, 3]]  # group 2
    # row 0: 1*(3-1) + -2*(0-1) = 4 ; 3*(1-2) + 4*(2-2) = -3 ; row 1: 0 + 0 = 0 ; 3*0 + 4*0 = 0
    assert gc.dense_w2a8(a, codes, zeros, 2).tolist() == [[4, -3], [0, 0]]


def test_dense_batched_tokens_match_single():
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (3, 64))
    codes, zeros = rng.integers(0, 4, (5, 64)), rng.integers(0, 4, (5, 2))
    batched = gc.dense_w2a8(a, codes, zeros, 32)
    assert batched.shape == (3, 5, 2)
    for i in range(3):
        assert torch.equal(batched[i], gc.dense_w2a8(a[i], codes, zeros, 32))


def test_sparse_decodes_positions():
    a = list(range(1, 9))  # two blocks of four
    vals = [[3, 2, 1, 3]]
    pos = [[0, 3, 1, 2]]
    zeros = [[1]]
    dense = gc.decode_2to4(vals, pos, zeros, 8)
    assert dense.tolist() == [[3, 1, 1, 2, 1, 1, 3, 1]]
    # 1*2 + 4*1 + 6*0 + 7*2 = 20
    assert gc.sparse_w2a8(a, vals, pos, zeros, 8).tolist() == [[20]]
    assert torch.equal(gc.sparse_w2a8(a, vals, pos, zeros, 8), gc.dense_w2a8(a, dense, zeros, 8))


def test_sparse_from_dense_round_trip_and_padding():
    codes = torch.tensor([[2, 2, 0, 2, 2, 2, 2, 2]])  # zero point 2: block 0 has one non-zero, block 1 none
    zeros = torch.tensor([[2]])
    vals, pos = gc.sparse_from_dense(codes, zeros, 8)
    assert pos.tolist() == [[0, 2, 0, 1]] and vals.tolist() == [[2, 0, 2, 2]]
    assert torch.equal(gc.decode_2to4(vals, pos, zeros, 8), codes)
    rng = np.random.default_rng(1)
    for op in random_ops("sparse", 64, seed=2, group=32):
        dense = gc.decode_2to4(op["vals"], op["pos"], op["zeros"], 32)
        v, p = gc.sparse_from_dense(dense, op["zeros"], 32)
        assert torch.equal(gc.decode_2to4(v, p, op["zeros"], 32), dense)


def test_sparse_from_dense_rejects_three_nonzero():
    with pytest.raises(ValueError, match="not 2:4 sparse: row 0, inputs 4..7 have 3 non-zero"):
        gc.sparse_from_dense([[1, 1, 1, 1, 0, 3, 2, 1]], [[1]], 8)


def test_qk_pv_hand_example():
    q = [2, -1]
    k = [[15, 0], [3, 4]]
    kz = [8, 3]
    assert gc.qk_a8kv4(q, k, kz).tolist() == [2 * 7 + -1 * -8, 0 + -1 * 1]
    p = [10, -3]
    v = [[0, 15], [5, 5]]
    vz = [4, 5]
    assert gc.pv_a8kv4(p, v, vz).tolist() == [10 * -4 + 0, 10 * 11 + 0]


def test_extreme_accumulators_are_exact_and_in_range():
    t = gc.MAX_REDUCTION
    acc = gc.pv_a8kv4(np.full(t, -128), np.full((t, 1), 0), np.full(t, 15))
    assert acc.tolist() == [128 * 15 * t]
    assert acc.item() < 2 ** 31


@pytest.mark.parametrize("call, message", [
    (lambda: gc.dense_w2a8([1.5] * 4, [[0] * 4], [[0]], 4), "must hold integers"),
    (lambda: gc.dense_w2a8([200] * 4, [[0] * 4], [[0]], 4), r"activations a values must lie in \[-128, 127\]"),
    (lambda: gc.dense_w2a8([1] * 4, [[4] * 4], [[0]], 4), "weight codes values"),
    (lambda: gc.dense_w2a8([1] * 6, [[0] * 6], [[0]], 4), "not a multiple of the group size"),
    (lambda: gc.dense_w2a8([1] * 4, [[0] * 4], [[0, 0]], 4), "zero points must be"),
    (lambda: gc.decode_2to4([[0, 0]], [[2, 1]], [[0]], 4), "strictly increasing"),
    (lambda: gc.qk_a8kv4([1, 2], [[16, 0]], [0]), "key codes values"),
    (lambda: gc.pv_a8kv4([1, 2], [[1], [2]], [0]), "value zero points must be"),
    (lambda: gc.pv_a8kv4(np.ones(gc.MAX_REDUCTION + 1, int), np.ones((gc.MAX_REDUCTION + 1, 1), int),
                         np.zeros(gc.MAX_REDUCTION + 1, int)), "could overflow"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_accumulator_bound_is_asserted():
    big = torch.full((4,), 1 << 40)
    with pytest.raises(AssertionError, match="32-bit"):
        gc._check_acc(big, 4)


@pytest.mark.parametrize("lanes", [4, 16])
@pytest.mark.parametrize("kind", ["dense", "sparse", "qk", "pv"])
def test_stream_beats_reproduce_golden(kind, lanes):
    """Unpack the beats and redo the arithmetic per beat: the format carries exactly the golden operands."""
    group = 8 * lanes
    for op in random_ops(kind, 40, seed=3, lanes=lanes, group=group):
        if kind == "dense":
            s = cs.dense_stream(op["a"], op["codes"], op["zeros"], group, lanes)
            b, a = cs.unpack_b(gc.MODE_DENSE, lanes, s.b), cs.unpack_a(s.a, lanes, lanes)
            per_beat = (a * (b["codes"] - b["zeros"][:, None])).sum(1)
            gold = gc.dense_w2a8(op["a"], op["codes"], op["zeros"], group)
        elif kind == "sparse":
            s = cs.sparse_stream(op["a"], op["vals"], op["pos"], op["zeros"], group, lanes)
            b, a = cs.unpack_b(gc.MODE_SPARSE, lanes, s.b), cs.unpack_a(s.a, lanes, 2 * lanes)
            picked = np.take_along_axis(a, 4 * (np.arange(lanes) // 2)[None] + b["pos"], 1)
            per_beat = (picked * (b["codes"] - b["zeros"][:, None])).sum(1)
            gold = gc.sparse_w2a8(op["a"], op["vals"], op["pos"], op["zeros"], group)
        elif kind == "qk":
            s = cs.qk_stream(op["q"], op["k"], op["kz"], lanes)
            b, a = cs.unpack_b(gc.MODE_QK, lanes, s.b), cs.unpack_a(s.a, lanes, lanes)
            per_beat = (a * (b["codes"] - b["zeros"][:, None])).sum(1)
            gold = gc.qk_a8kv4(op["q"], op["k"], op["kz"])
        else:
            s = cs.pv_stream(op["p"], op["v"], op["vz"], lanes)
            b, a = cs.unpack_b(gc.MODE_PV, lanes, s.b), cs.unpack_a(s.a, lanes, lanes)
            per_beat = (a * (b["codes"] - b["zeros"])).sum(1)
            gold = gc.pv_a8kv4(op["p"], op["v"], op["vz"])
        gold = gold.numpy().reshape(-1)
        assert len(s.b) == len(s.a) == len(s.b_last) and sum(s.b_last) == s.packets
        assert np.array_equal(per_beat.reshape(len(gold), -1).sum(1), gold)
        assert all(w < 1 << cs.b_width(lanes) for w in s.b) and all(w < 1 << cs.a_width(lanes) for w in s.a)


def test_blob_bytes_round_trip():
    words = cs.pack_b(gc.MODE_SPARSE, 8, [[0, 1, 2, 3, 3, 2, 1, 0]], [2], [[0, 1, 2, 3, 1, 3, 0, 2]])
    blob = cs.beats_to_bytes(words, cs.b_width(8))
    assert len(blob) == 8 and cs.bytes_to_beats(blob, cs.b_width(8)) == words
    fields = cs.unpack_b(gc.MODE_SPARSE, 8, words)
    assert fields["codes"].tolist() == [[0, 1, 2, 3, 3, 2, 1, 0]] and fields["zeros"].tolist() == [2]
    assert fields["pos"].tolist() == [[0, 1, 2, 3, 1, 3, 0, 2]]
    # codes of lanes 0..3 share byte 0, lane 0 in the low bits: 0 | 1<<2 | 2<<4 | 3<<6
    assert blob[0] == 0b11100100
    assert cs.unpack_out([0xFFFFFFFF, 5, 0x80000000]).tolist() == [-1, 5, -(1 << 31)]


def test_stream_rejects_bad_lanes_and_group():
    with pytest.raises(ValueError, match="multiple of 4"):
        cs.check_lanes(6)
    with pytest.raises(ValueError, match="multiple of 32 inputs per beat"):
        cs.dense_stream(np.zeros(64, int), np.zeros((1, 64), int), np.zeros((1, 4), int), 16, 32)
