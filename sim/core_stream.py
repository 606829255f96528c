"""Stream format of the integer core (hw/rtl/accllm_core.sv): the one definition of its AXI4-Stream beats.

The core has two input streams consumed in lockstep (one beat of each per cycle) and one output stream.
``L`` = LANES (multipliers, a multiple of 4). Bit 0 is the LSB of ``tdata``; multi-byte words are
little-endian when stored as bytes (the weight blob is the B beats of a layer, each ``L`` bytes).

A stream (``s_a``, 16*L bits, no tlast): signed int8 operands, byte i = a[i] (two's complement).
    DENSE / QK / PV use bytes 0..L-1; SPARSE uses bytes 0..2L-1 (L/2 blocks of four inputs).

B stream (``s_b``, 8*L bits, tlast = end of a packet):
    DENSE   bits [2l+1:2l]       code of lane l (uint2)          l = 0..L-1
            bits [2L+7:2L]       zero point of the group (uint2 in an 8-bit field)
    SPARSE  bits [2l+1:2l]       kept code of lane l (uint2); lanes 2j, 2j+1 belong to block j
            bits [2L+2l+1:2L+2l] its position in the block (0..3), pos[2j] < pos[2j+1]
            bits [4L+7:4L]       zero point of the group
    QK      bits [4l+3:4l]       key code k[t, d0+l] (uint4)
            bits [4L+7:4L]       key zero point kz[t]
    PV      bits [4l+3:4l]       value code v[t0+l, d] (uint4)
            bits [4L+4l+3:4L+4l] value zero point vz[t0+l] (one per lane: it varies along the reduction)
    Unused bits are 0.

Output stream (``m``, 32 bits): one signed 32-bit accumulator per beat, tlast on the last output of a packet.

Packets and groups: a B packet (ended by tlast) is one row n of a linear layer (DENSE, SPARSE), one key
token t (QK) or one output column d (PV). In DENSE/SPARSE the core closes an accumulation every
GROUP inputs (GROUP/L beats dense, GROUP/(2L) sparse) and at tlast, so a row packet gives K/GROUP outputs;
in QK/PV the whole packet is one reduction. QK pads D and PV pads T to a multiple of L with zero operands
(a = 0, code = zero point). The A beats of a packet are the operand vector's chunks, re-sent for every packet.

The mode is not in the stream: it is the core's mode register (MODE_* in accllm.sim.golden_core).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .golden_core import (MODE_DENSE, MODE_PV, MODE_QK, MODE_SPARSE, _check_group, _ints, decode_2to4, KV4_MAX,
                          W2_MAX)

OUT_BITS = 32


def check_lanes(lanes: int) -> int:
    if lanes < 4 or lanes % 4:
        raise ValueError(f"LANES must be a positive multiple of 4, got {lanes}")
    return lanes


def a_width(lanes: int) -> int:
    """Bits of an A beat."""
    return 16 * check_lanes(lanes)


def b_width(lanes: int) -> int:
    """Bits of a B beat."""
    return 8 * check_lanes(lanes)


def group_beats(mode: int, group: int, lanes: int) -> int:
    """B beats per quantisation group in the W2 modes (what the core's GROUP parameter counts)."""
    per_beat = {MODE_DENSE: lanes, MODE_SPARSE: 2 * lanes}[mode]
    if group % per_beat:
        raise ValueError(f"group size {group} must be a multiple of {per_beat} inputs per beat (LANES={lanes})")
    return group // per_beat


def _fields_to_words(fields: np.ndarray, bits: int) -> np.ndarray:
    """[beats, n] unsigned fields of ``bits`` each -> [beats, n*bits/8] bytes, field 0 in the low bits."""
    per = 8 // bits
    f = fields.astype(np.uint16).reshape(fields.shape[0], -1, per)
    shifts = (np.arange(per, dtype=np.uint16) * bits)
    return (f << shifts).sum(-1).astype(np.uint8)


def _words_to_fields(data: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    return ((data[..., None] >> shifts) & ((1 << bits) - 1)).reshape(data.shape[0], -1)


def _to_ints(rows: np.ndarray) -> list[int]:
    return [int.from_bytes(r.tobytes(), "little") for r in rows]


def _to_bytes(words, nbytes: int) -> np.ndarray:
    return np.frombuffer(b"".join(int(w).to_bytes(nbytes, "little") for w in words), np.uint8).reshape(-1, nbytes)


def pack_a(a: np.ndarray, lanes: int) -> list[int]:
    """[beats, <=2L] int8 operands -> A words (16L bits)."""
    a = np.asarray(a, dtype=np.int64)
    out = np.zeros((a.shape[0], 2 * check_lanes(lanes)), np.uint8)
    out[:, : a.shape[1]] = (a & 0xFF).astype(np.uint8)
    return _to_ints(out)


def unpack_a(words, lanes: int, n: int) -> np.ndarray:
    """A words -> [beats, n] int8 operands."""
    return _to_bytes(words, 2 * lanes)[:, :n].view(np.int8).astype(np.int64)


def pack_b(mode: int, lanes: int, codes: np.ndarray, zeros: np.ndarray, pos: np.ndarray | None = None) -> list[int]:
    """B words from per-beat fields: ``codes`` [beats, L]; ``zeros`` [beats] (or [beats, L] for PV);
    ``pos`` [beats, L] for SPARSE."""
    check_lanes(lanes)
    codes = np.asarray(codes, np.int64)
    zeros = np.asarray(zeros, np.int64)
    beats = codes.shape[0]
    out = np.zeros((beats, lanes), np.uint8)
    if mode in (MODE_DENSE, MODE_SPARSE):
        out[:, : lanes // 4] = _fields_to_words(codes, 2)
        zbyte = lanes // 4
        if mode == MODE_SPARSE:
            out[:, lanes // 4: lanes // 2] = _fields_to_words(np.asarray(pos, np.int64), 2)
            zbyte = lanes // 2
        out[:, zbyte] = zeros
    elif mode in (MODE_QK, MODE_PV):
        out[:, : lanes // 2] = _fields_to_words(codes, 4)
        if mode == MODE_QK:
            out[:, lanes // 2] = zeros
        else:
            out[:, lanes // 2:] = _fields_to_words(zeros, 4)
    else:
        raise ValueError(f"unknown core mode {mode} (0 dense, 1 sparse, 2 qk, 3 pv)")
    return _to_ints(out)


def unpack_b(mode: int, lanes: int, words) -> dict[str, np.ndarray]:
    """B words -> {"codes": [beats, L], "zeros": [beats] or [beats, L] (PV), "pos": [beats, L] (SPARSE)}."""
    data = _to_bytes(words, lanes).astype(np.int64)
    if mode in (MODE_DENSE, MODE_SPARSE):
        out = {"codes": _words_to_fields(data[:, : lanes // 4], 2)}
        if mode == MODE_SPARSE:
            out["pos"] = _words_to_fields(data[:, lanes // 4: lanes // 2], 2)
            out["zeros"] = data[:, lanes // 2]
        else:
            out["zeros"] = data[:, lanes // 4]
    elif mode == MODE_QK:
        out = {"codes": _words_to_fields(data[:, : lanes // 2], 4), "zeros": data[:, lanes // 2]}
    elif mode == MODE_PV:
        out = {"codes": _words_to_fields(data[:, : lanes // 2], 4), "zeros": _words_to_fields(data[:, lanes // 2:], 4)}
    else:
        raise ValueError(f"unknown core mode {mode} (0 dense, 1 sparse, 2 qk, 3 pv)")
    return out


def unpack_out(words) -> np.ndarray:
    """Output words (32-bit two's complement) -> int64 accumulators."""
    w = np.asarray([int(x) for x in words], dtype=np.int64)
    return np.where(w >= 1 << (OUT_BITS - 1), w - (1 << OUT_BITS), w)


@dataclass
class CoreStream:
    """Everything the core consumes and emits for one operation, beat by beat."""

    mode: int
    lanes: int
    a: list[int]  # A words
    b: list[int]  # B words
    b_last: list[bool]  # tlast of each B beat
    packets: int  # B packets = output packets
    outputs_per_packet: int  # accumulators per output packet

    @property
    def beats(self) -> int:
        return len(self.b)

    def packet_beats(self) -> list[int]:
        """Number of beats in each B packet."""
        ends = np.flatnonzero(self.b_last)
        return np.diff(np.concatenate([[-1], ends])).tolist()


def _np(x) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.int64)


def _chunks(x: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """Pad the last axis of x to a multiple of size with ``fill`` and split it: [..., n] -> [..., n/size, size]."""
    pad = (-x.shape[-1]) % size
    if pad:
        x = np.concatenate([x, np.broadcast_to(np.asarray(fill, np.int64), (*x.shape[:-1], pad))], axis=-1)
    return x.reshape(*x.shape[:-1], -1, size)


def _last_flags(packets: int, per_packet: int) -> list[bool]:
    flags = np.zeros((packets, per_packet), bool)
    flags[:, -1] = True
    return flags.reshape(-1).tolist()


def dense_stream(a, codes, zeros, group: int, lanes: int) -> CoreStream:
    """W2A8 dense ``a`` [K] x ``codes`` [N, K]: one packet per row, outputs in golden order [N, K/group]."""
    a = _ints(a, "activations a", -128, 127)
    codes = _ints(codes, "weight codes", 0, W2_MAX)
    zeros = _ints(zeros, "weight zero points", 0, W2_MAX)
    n, k = codes.shape
    _check_group(k, group)
    gb = group_beats(MODE_DENSE, group, lanes)
    if a.shape != (k,):
        raise ValueError(f"the core takes one activation vector [{k}], got shape {tuple(a.shape)}")
    a_beats = pack_a(np.tile(_np(a).reshape(k // lanes, lanes), (n, 1)), lanes)
    z = np.repeat(_np(zeros), gb, axis=1).reshape(-1)
    b_beats = pack_b(MODE_DENSE, lanes, _np(codes).reshape(-1, lanes), z)
    return CoreStream(MODE_DENSE, lanes, a_beats, b_beats, _last_flags(n, k // lanes), n, k // group)


def sparse_stream(a, vals, pos, zeros, group: int, lanes: int) -> CoreStream:
    """W2A8 2:4 ``a`` [K] x kept ``vals``/``pos`` [N, K/2]: one packet per row, outputs [N, K/group]."""
    decode_2to4(vals, pos, zeros, group)  # validates shapes, ranges and position order
    a = _ints(a, "activations a", -128, 127)
    vals, pos, zeros = _np(vals), _np(pos), _np(zeros)
    n, half = vals.shape
    k = 2 * half
    gb = group_beats(MODE_SPARSE, group, lanes)
    if a.shape != (k,):
        raise ValueError(f"the core takes one activation vector [{k}], got shape {tuple(a.shape)}")
    a_beats = pack_a(np.tile(_np(a).reshape(k // (2 * lanes), 2 * lanes), (n, 1)), lanes)
    z = np.repeat(zeros, gb, axis=1).reshape(-1)
    b_beats = pack_b(MODE_SPARSE, lanes, vals.reshape(-1, lanes), z, pos.reshape(-1, lanes))
    return CoreStream(MODE_SPARSE, lanes, a_beats, b_beats, _last_flags(n, half // lanes), n, k // group)


def qk_stream(q, k, kz, lanes: int) -> CoreStream:
    """A8 x KV4 ``q`` [D] x ``k`` [T, D]: one packet per key token, outputs [T]."""
    q = _ints(q, "query q", -128, 127)
    k = _ints(k, "key codes", 0, KV4_MAX)
    kz = _ints(kz, "key zero points", 0, KV4_MAX)
    t, d = k.shape
    if q.shape != (d,) or kz.shape != (t,):
        raise ValueError(f"qk_stream needs q [{d}] and kz [{t}] for keys [{t}, {d}], got {tuple(q.shape)}, {tuple(kz.shape)}")
    qc = _chunks(_np(q), lanes)  # [D/L, L]
    kz_np = _np(kz)
    # Padding a key row with its own zero point makes the padded products exactly 0.
    kc = np.stack([_chunks(_np(k)[i], lanes, int(kz_np[i])) for i in range(t)]) if t else np.zeros((0,) + qc.shape, np.int64)
    per = qc.shape[0]
    a_beats = pack_a(np.tile(qc, (t, 1)), lanes)
    b_beats = pack_b(MODE_QK, lanes, kc.reshape(-1, lanes), np.repeat(kz_np, per))
    return CoreStream(MODE_QK, lanes, a_beats, b_beats, _last_flags(t, per), t, 1)


def pv_stream(p, v, vz, lanes: int) -> CoreStream:
    """A8 x KV4 ``p`` [T] x ``v`` [T, D]: one packet per output column d, outputs [D]."""
    p = _ints(p, "probabilities p", -128, 127)
    v = _ints(v, "value codes", 0, KV4_MAX)
    vz = _ints(vz, "value zero points", 0, KV4_MAX)
    t, d = v.shape
    if p.shape != (t,) or vz.shape != (t,):
        raise ValueError(f"pv_stream needs p [{t}] and vz [{t}] for values [{t}, {d}], got {tuple(p.shape)}, {tuple(vz.shape)}")
    pc = _chunks(_np(p), lanes)  # [T/L, L]; padded tokens have p = 0, v = vz = 0
    per = pc.shape[0]
    vc = _chunks(_np(v).T, lanes)  # [D, T/L, L]
    zc = np.broadcast_to(_chunks(_np(vz), lanes), (d, per, lanes))
    a_beats = pack_a(np.tile(pc, (d, 1)), lanes)
    b_beats = pack_b(MODE_PV, lanes, vc.reshape(-1, lanes), zc.reshape(-1, lanes))
    return CoreStream(MODE_PV, lanes, a_beats, b_beats, _last_flags(d, per), d, 1)


def beats_to_bytes(words, width_bits: int) -> bytes:
    """Words -> little-endian bytes, ``width_bits/8`` per word (e.g. a weight blob of B beats)."""
    return b"".join(int(w).to_bytes(width_bits // 8, "little") for w in words)


def bytes_to_beats(data: bytes, width_bits: int) -> list[int]:
    n = width_bits // 8
    if len(data) % n:
        raise ValueError(f"{len(data)} bytes is not a whole number of {n}-byte beats")
    return [int.from_bytes(data[i: i + n], "little") for i in range(0, len(data), n)]
