"""The engine's weight-stream format (accllm.sim.weight_stream): exact round trips in W2 and W4, the golden core
fed from the words, the bit layout of a record, and the bytes per weight of real model dims."""
import numpy as np
import pytest
import torch

from accllm.sim import golden_core as gc
from accllm.sim import weight_stream as ws
from accllm.sim.boards import load_model_shape

LLAMA2_7B = load_model_shape("llama-2-7b")


def _fp16(rng, shape):
    return rng.standard_normal(shape).astype(np.float16).astype(np.float32)


def _sparse(rng, rows, k, group, wbits):
    zeros = rng.integers(0, 1 << wbits, (rows, k // group))
    dense = np.repeat(zeros, group, 1).reshape(rows, k // 4, 4)
    keep = np.argsort(rng.random((rows, k // 4, 4)), -1)[..., :2]
    np.put_along_axis(dense, keep, rng.integers(0, 1 << wbits, (rows, k // 4, 2)), -1)
    dense = dense.reshape(rows, k)
    vals, pos = gc.sparse_from_dense(dense, zeros, group, wbits)
    return dense, vals.numpy(), pos.numpy(), zeros


@pytest.mark.parametrize("wbits", [2, 4])
@pytest.mark.parametrize("channel_bits,cores,group", [(256, 3, 32), (512, 8, 128), (256, 1, 64)])
def test_round_trip_and_golden_from_words(wbits, channel_bits, cores, group):
    rng = np.random.default_rng(wbits * 7 + cores)
    fmt = ws.StreamFormat(wbits=wbits, group=group, lanes=16, cores=cores, channel_bits=channel_bits)
    rows, k = 11, 3 * group
    a = rng.integers(-128, 128, k)
    codes = rng.integers(0, 1 << wbits, (rows, k))
    zeros = rng.integers(0, 1 << wbits, (rows, k // group))
    scales = _fp16(rng, zeros.shape)
    data = ws.pack_dense(codes, zeros, scales, fmt)
    assert len(data) == ws.section_bytes(gc.MODE_DENSE, fmt, rows, k) and len(data) % (channel_bits // 8) == 0
    f = ws.unpack(data, gc.MODE_DENSE, fmt, rows, k)
    assert np.array_equal(f["codes"], codes) and np.array_equal(f["zeros"], zeros)
    assert np.array_equal(f["scales"], scales)
    assert np.array_equal(gc.stream_acc(data, gc.MODE_DENSE, fmt, rows, k, a).numpy(),
                          gc.dense_w2a8(a, codes, zeros, group, wbits).numpy())

    dense, vals, pos, zeros = _sparse(rng, rows, k, group, wbits)
    data = ws.pack_sparse(vals, pos, zeros, scales, fmt)
    f = ws.unpack(data, gc.MODE_SPARSE, fmt, rows, k)
    assert np.array_equal(f["vals"], vals) and np.array_equal(f["pos"], pos)
    assert np.array_equal(gc.stream_acc(data, gc.MODE_SPARSE, fmt, rows, k, a).numpy(),
                          gc.dense_w2a8(a, dense, zeros, group, wbits).numpy())

    kc, kz = rng.integers(0, 16, (7, 32)), rng.integers(0, 16, 7)
    q = rng.integers(-128, 128, 32)
    data = ws.pack_qk(kc, kz, fmt)
    assert np.array_equal(gc.stream_acc(data, gc.MODE_QK, fmt, 7, 32, q).numpy()[:, 0], gc.qk_a8kv4(q, kc, kz).numpy())
    v, vz, p = rng.integers(0, 16, (48, 5)), rng.integers(0, 16, 48), rng.integers(-128, 128, 48)
    data = ws.pack_pv(v, vz, fmt)
    assert np.array_equal(gc.stream_acc(data, gc.MODE_PV, fmt, 5, 48, p).numpy()[:, 0], gc.pv_a8kv4(p, v, vz).numpy())


def test_record_bit_layout_by_hand():
    """One dense W2 record, one core, group 32: scale fp16 bits 0-15, zero 16-17, code i at 18 + 2i."""
    fmt = ws.StreamFormat(wbits=2, group=32, lanes=16, cores=1, channel_bits=256)
    codes = np.arange(32) % 4
    data = ws.pack_dense(codes[None], [[2]], [[1.5]], fmt)
    word = int.from_bytes(data, "little")
    assert word & 0xFFFF == 0x3E00  # fp16 1.5
    assert (word >> 16) & 3 == 2
    assert all((word >> (18 + 2 * i)) & 3 == codes[i] for i in range(32))
    assert word >> (18 + 64) == 0 and fmt.record_bits(gc.MODE_DENSE) == 82
    # 2:4: positions (1, 3) are pattern 4, (0, 1) pattern 0
    s = ws.StreamFormat(wbits=2, group=32, lanes=16, cores=1, channel_bits=256)
    pos = np.tile([1, 3, 0, 1], 4)[None]
    word = int.from_bytes(ws.pack_sparse(np.ones((1, 16), int), pos, [[0]], [[1.0]], s), "little")
    pat0 = 16 + 2 + 32
    assert (word >> pat0) & 7 == 4 and (word >> (pat0 + 3)) & 7 == 0


def test_records_run_across_words_without_padding():
    fmt = ws.StreamFormat(wbits=2, group=32, lanes=16, cores=3, channel_bits=256)  # 3 x 74-bit records
    rows, k = 3, 32 * 10
    _, vals, pos, zeros = _sparse(np.random.default_rng(3), rows, k, 32, 2)
    data = ws.pack_sparse(vals, pos, zeros, np.ones(zeros.shape, np.float32), fmt)
    assert 8 * len(data) == -(-(rows * 10 * 74) // 256) * 256  # only the section's end is padded


def test_bad_input_is_named():
    fmt = ws.StreamFormat()
    with pytest.raises(ValueError, match="not an fp16 value"):
        ws.pack_dense(np.zeros((1, 32), int), [[0]], [[0.1]], fmt)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        ws.pack_dense(np.full((1, 32), 4), [[0]], [[1.0]], fmt)
    with pytest.raises(ValueError, match="channel width"):
        ws.StreamFormat(channel_bits=64)
    with pytest.raises(ValueError, match="weight code width"):
        ws.StreamFormat(wbits=3)
    with pytest.raises(ValueError, match="must be 64 bytes|bytes"):
        ws.unpack(b"\0" * 10, gc.MODE_DENSE, fmt, 1, 32)


def test_bits_per_weight_targets_llama2_7b():
    """Full-payload targets of the engine issue: 2:4 W2 <= 2.6 bits per dense-equivalent weight at group 32,
    <= 2.3 at group 128; the section bytes add up to what the layout reports."""
    for group, limit in ((32, 2.6), (128, 2.3)):
        lay = ws.layout(LLAMA2_7B, ws.StreamFormat(wbits=2, group=group, cores=8, channel_bits=512), channels=32)
        assert lay.bits_per_weight() <= limit
        assert lay.nbytes() == sum(s.nbytes for s in lay.sections) == sum(lay.channel_bytes())
        assert sum(lay.weights.values()) == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    w4 = ws.layout(LLAMA2_7B, ws.StreamFormat(wbits=4, group=32, cores=8, channel_bits=512), channels=32)
    assert 3.3 < w4.bits_per_weight() < 3.4  # 2:4 W4: (16 + 4 + 64 + 24) / 32
    dense = ws.layout(LLAMA2_7B, ws.StreamFormat(wbits=2), channels=1, sparse=False)
    assert abs(dense.bits_per_weight() - (16 + 2 + 64) / 32) < 1e-3


def test_channel_rows_split_whole_tiles():
    assert ws.channel_rows(10, 3, 2) == [(0, 6), (6, 10)]
    assert ws.channel_rows(2, 4, 3) == [(0, 2), (2, 2), (2, 2)]
    spans = ws.channel_rows(4096, 8, 32)
    assert spans[0] == (0, 128) and spans[-1] == (3968, 4096)


def test_output_beats_round_trip():
    fmt = ws.StreamFormat(cores=3)
    acc = np.random.default_rng(0).integers(-2**31, 2**31, (7, 4))
    sc = np.random.default_rng(1).integers(0, 2**16, (7, 4))
    got_acc, got_sc = ws.split_output(ws.output_beats(acc, gc.MODE_DENSE, fmt, sc), fmt, 7)
    assert np.array_equal(got_acc, acc) and np.array_equal(got_sc, sc)


def test_golden_core_w4_range():
    a = torch.tensor([-128, 127])
    assert gc.dense_w2a8(a, [[15, 0]], [[0]], 2, wbits=4).tolist() == [[-1920]]
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        gc.dense_w2a8(a, [[15, 0]], [[0]], 2)
