"""The engine's weight stream: the one memory format of every operand the engine (hw/rtl/accllm_engine.sv) reads.

A memory channel streams *records* as one contiguous bit stream: record bits are laid end to end with no
padding, bit ``i`` of the stream is bit ``i % 8`` of byte ``i // 8``, and the stream is cut into whole memory
words of the channel width (128, 256 or 512 bits, little-endian: word bit ``j`` = stream bit ``w*W + j``). Only
the end of a section is padded (zero bits up to the next whole word). Fields are unsigned, LSB first.

Records (``G`` = group, ``L`` = lanes, ``wb`` = weight code width, 2 or 4 bits):

    DENSE   one group of one row       [0,16) scale fp16 | [16,16+wb) zero point | then G codes of wb bits
                                        (code i is input g*G + i)                          R = 16 + wb + G*wb
    SPARSE  one group of one row, 2:4  [0,16) scale fp16 | zero point (wb) | G/2 kept codes (wb each; kept i
                                        belongs to block i//2) | G/4 pattern indices (3 bits each, block j)
                                                                                            R = 16 + wb + G*wb/2 + 3G/4
    QK      L inputs of one key token  [0,4) key zero point kz[t] | L codes of 4 bits      R = 4 + 4L
    PV      L tokens of one column d   L codes v[t, d] of 4 bits | L zero points vz[t] of 4 bits   R = 8L

A 2:4 pattern index names the two kept positions of a block of four in ascending order:
0:(0,1) 1:(0,2) 2:(0,3) 3:(1,2) 4:(1,3) 5:(2,3); 6 and 7 never occur.

Order of records in a channel's section: rows are taken in *tiles* of ``cores`` rows (the last tile padded with
all-zero rows); per tile, per record index along the row, one record per core (core ``c`` owns row
``tile*cores + c``). The ``cores`` records of one (tile, record index) are a *super-record*: what the engine's
cores consume together. A row of K inputs has K/G records (DENSE/SPARSE) or K/L records (QK, PV; K padded by
the caller: QK with code = kz and q = 0, PV with p = 0 and code = zero = 0).

Engine output per channel (AXI4-Stream, one beat per closed accumulation): DENSE/SPARSE close every record,
QK/PV at the end of the row. Beat bits ``[32c+31 : 32c]`` = signed accumulator of core ``c``;
``[32*cores + 16c + 15 : 32*cores + 16c]`` = the fp16 scale of the closing record (DENSE/SPARSE, else 0).
Rows of a linear are split over channels in whole tiles (:func:`channel_rows`).

Block mode (prefill, DENSE/SPARSE): one pass over a section serves ``nt`` activation vectors (``nt`` <= the
engine's ``T``); each super-record gives ``nt`` beats, vector 0 first, so the beats run (tile, record index,
vector) with the vector fastest; the scale fields repeat in each. ``nt = 1`` is the matrix-vector order above.
A section's bytes are the same whatever ``nt`` and whatever the operation's code width says of the record length
(the code width is a field of the engine's MODE register, per operation: 2 or 4 bits).

Memory cost is what :func:`layout` returns; the compiler's blob map and the perf model both take it from there.
The golden core reads a section back with ``accllm.sim.golden_core.stream_acc``. QK/PV records are how the engine
reads KV operands; the KV cache itself (accllm.sim.kv_layout) is not stored in them yet.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

# The core's modes (the mode register of hw/rtl) and operand widths; accllm.sim.golden_core re-exports them.
MODE_DENSE, MODE_SPARSE, MODE_QK, MODE_PV = 0, 1, 2, 3
MODE_NAMES = {MODE_DENSE: "dense", MODE_SPARSE: "sparse", MODE_QK: "qk", MODE_PV: "pv"}
WEIGHT_BITS = (2, 4)  # weight code widths (2:4 and dense, W2 or W4)
KV4_MAX = 15


def wmax(wbits: int) -> int:
    """Largest weight code of a ``wbits``-bit weight (2 or 4)."""
    if wbits not in WEIGHT_BITS:
        raise ValueError(f"weight code width must be one of {WEIGHT_BITS} bits, got {wbits}")
    return (1 << wbits) - 1


SCALE_BITS = 16  # group scales are IEEE fp16
PATTERN_BITS = 3
KV_BITS = 4
CHANNEL_BITS = (128, 256, 512)  # a Zynq HP port, an HBM pseudo-channel port (256 at 450 MHz = 512 at 225)
PATTERNS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
_PATTERN_OF = {p: i for i, p in enumerate(PATTERNS)}
OUT_ACC_BITS, OUT_SCALE_BITS = 32, 16


@dataclass(frozen=True)
class StreamFormat:
    """The parameters that fix the bit layout: code width, group, lanes, cores per channel, channel width."""

    wbits: int = 2
    group: int = 32
    lanes: int = 16
    cores: int = 4
    channel_bits: int = 256

    def __post_init__(self):
        wmax(self.wbits)
        if self.lanes < 4 or self.lanes % 4:
            raise ValueError(f"lanes must be a positive multiple of 4, got {self.lanes}")
        if self.group < 2 * self.lanes or self.group % (2 * self.lanes):
            raise ValueError(f"group {self.group} must be a positive multiple of 2*lanes = {2 * self.lanes}")
        if self.cores < 1:
            raise ValueError(f"cores must be at least 1, got {self.cores}")
        if self.channel_bits not in CHANNEL_BITS:
            raise ValueError(f"channel width must be one of {CHANNEL_BITS} bits, got {self.channel_bits}")

    def record_bits(self, mode: int) -> int:
        g, wb, l = self.group, self.wbits, self.lanes
        return {MODE_DENSE: SCALE_BITS + wb + g * wb,
                MODE_SPARSE: SCALE_BITS + wb + g * wb // 2 + PATTERN_BITS * g // 4,
                MODE_QK: KV_BITS + KV_BITS * l,
                MODE_PV: 2 * KV_BITS * l}[_mode(mode)]

    def record_inputs(self, mode: int) -> int:
        """Inputs along the reduction covered by one record."""
        return self.group if _mode(mode) in (MODE_DENSE, MODE_SPARSE) else self.lanes

    def beats_per_record(self, mode: int) -> int:
        """Core cycles one record takes (the core does L products per cycle)."""
        return {MODE_DENSE: self.group // self.lanes, MODE_SPARSE: self.group // (2 * self.lanes),
                MODE_QK: 1, MODE_PV: 1}[_mode(mode)]

    def super_bits(self, mode: int) -> int:
        return self.cores * self.record_bits(mode)

    def out_bits(self) -> int:
        return self.cores * (OUT_ACC_BITS + OUT_SCALE_BITS)

    def to_json(self) -> dict:
        return asdict(self)


def _ints(x, name: str, lo: int, hi: int) -> np.ndarray:
    a = np.asarray(x.numpy() if hasattr(x, "numpy") else x)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(f"{name} values must lie in [{lo}, {hi}], got [{int(a.min())}, {int(a.max())}]")
    return a


def _check_group(k: int, group: int) -> None:
    if k % group:
        raise ValueError(f"reduction length {k} is not a multiple of the group size {group}")


def _mode(mode: int) -> int:
    if mode not in MODE_NAMES:
        raise ValueError(f"unknown core mode {mode} (0 dense, 1 sparse, 2 qk, 3 pv)")
    return mode


def cores_to_fill(mode: int, wbits: int, group: int, lanes: int, channel_bits: int) -> int:
    """Cores per channel whose consumption (a record per core every ``beats_per_record`` cycles) covers one full
    channel word per cycle: fewer leave memory bandwidth unused, more wait on memory."""
    one = StreamFormat(wbits, group, lanes, 1, channel_bits)
    return -(-channel_bits * one.beats_per_record(mode) // one.record_bits(mode))


def channel_rows(rows: int, cores: int, channels: int) -> list[tuple[int, int]]:
    """Row range [start, stop) of each channel: whole tiles of ``cores`` rows, as even as possible."""
    tiles = -(-rows // cores)
    out, t0 = [], 0
    for ch in range(channels):
        t1 = t0 + tiles // channels + (ch < tiles % channels)
        out.append((min(rows, t0 * cores), min(rows, t1 * cores)))
        t0 = t1
    return out


def section_bits(mode: int, fmt: StreamFormat, rows: int, k: int) -> int:
    """Payload bits (before the final word padding) of one channel section of ``rows`` rows of ``k`` inputs."""
    tiles = -(-rows // fmt.cores)
    return tiles * (k // fmt.record_inputs(mode)) * fmt.super_bits(mode)


def section_words(mode: int, fmt: StreamFormat, rows: int, k: int) -> int:
    return -(-section_bits(mode, fmt, rows, k) // fmt.channel_bits)


def section_bytes(mode: int, fmt: StreamFormat, rows: int, k: int) -> int:
    return section_words(mode, fmt, rows, k) * fmt.channel_bits // 8


# ---------------------------------------------------------------- bit packing

def _bits(values: np.ndarray, width: int) -> np.ndarray:
    """[..., n] unsigned fields -> [..., n*width] bits, LSB first."""
    v = np.asarray(values, np.int64)
    return ((v[..., None] >> np.arange(width)) & 1).astype(np.uint8).reshape(*v.shape[:-1], v.shape[-1] * width)


def _fields(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`_bits`."""
    b = bits.reshape(*bits.shape[:-1], -1, width).astype(np.int64)
    return (b << np.arange(width)).sum(-1)


def _stream(records: np.ndarray, fmt: StreamFormat) -> bytes:
    """Record bits [rows, per_row, R] -> the section's bytes: tile order, zero rows to a whole tile, whole words."""
    rows, per_row, r = records.shape
    pad = -rows % fmt.cores
    if pad:
        records = np.concatenate([records, np.zeros((pad, per_row, r), np.uint8)])
    tiles = records.shape[0] // fmt.cores
    bits = records.reshape(tiles, fmt.cores, per_row, r).transpose(0, 2, 1, 3).reshape(-1)
    bits = np.concatenate([bits, np.zeros(-bits.size % fmt.channel_bits, np.uint8)])
    return np.packbits(bits, bitorder="little").tobytes()


def _records(data, mode: int, fmt: StreamFormat, rows: int, k: int) -> np.ndarray:
    """A section's bytes -> record bits [rows, per_row, R] (inverse of :func:`_stream`)."""
    per_row = k // fmt.record_inputs(mode)
    r = fmt.record_bits(mode)
    tiles = -(-rows // fmt.cores)
    want = section_bytes(mode, fmt, rows, k)
    buf = np.frombuffer(bytes(data), np.uint8)
    if buf.size != want:
        raise ValueError(f"{MODE_NAMES[mode]} section of {rows} rows x {k} inputs must be {want} bytes "
                         f"({fmt.channel_bits}-bit words), got {buf.size}")
    bits = np.unpackbits(buf, bitorder="little")[: tiles * per_row * fmt.cores * r]
    return bits.reshape(tiles, per_row, fmt.cores, r).transpose(0, 2, 1, 3).reshape(-1, per_row, r)[:rows]


def fp16_bits(scales, round_scales: bool = False) -> np.ndarray:
    """float scales -> their fp16 bit patterns; raises if a scale is not exactly an fp16 value (unless rounding)."""
    s = np.asarray(scales, np.float32)
    h = s.astype(np.float16)
    if not round_scales and not np.array_equal(h.astype(np.float32), s, equal_nan=True):
        bad = np.flatnonzero(h.astype(np.float32).reshape(-1) != s.reshape(-1))[0]
        raise ValueError(f"scale {float(s.reshape(-1)[bad])!r} (index {bad}) is not an fp16 value; "
                         "the weight stream stores fp16 scales")
    return h.view(np.uint16).astype(np.int64)


def scales_from_bits(bits) -> np.ndarray:
    return np.asarray(bits, np.int64).astype(np.uint16).view(np.float16).astype(np.float32)


# ---------------------------------------------------------------- packing per mode

def pack_dense(codes, zeros, scales, fmt: StreamFormat, round_scales: bool = False) -> bytes:
    """Dense codes [N, K], zero points [N, K/G], scales [N, K/G] (float, fp16-exact) -> one section."""
    codes = _ints(codes, "weight codes", 0, wmax(fmt.wbits))
    if codes.ndim != 2:
        raise ValueError(f"weight codes must be [N, K], got shape {list(codes.shape)}")
    n, k = codes.shape
    _check_group(k, fmt.group)
    zeros = _shape(_ints(zeros, "weight zero points", 0, wmax(fmt.wbits)), (n, k // fmt.group), "zero points")
    sb = _shape(fp16_bits(scales, round_scales), (n, k // fmt.group), "scales")
    rec = np.concatenate([_bits(sb[..., None], SCALE_BITS), _bits(zeros[..., None], fmt.wbits),
                          _bits(codes.reshape(n, k // fmt.group, fmt.group), fmt.wbits)], axis=-1)
    return _stream(rec, fmt)


def pattern_index(pos: np.ndarray) -> np.ndarray:
    """Kept positions [..., K/2] (pairs ascending per block) -> pattern indices [..., K/4]."""
    p = np.asarray(pos, np.int64)
    a, b = p[..., 0::2], p[..., 1::2]
    if np.any(a >= b):
        raise ValueError("2:4 positions must be strictly increasing within each block")
    lut = np.full(16, -1, np.int64)
    for (x, y), i in _PATTERN_OF.items():
        lut[4 * x + y] = i
    return lut[4 * a + b]


def pattern_positions(idx: np.ndarray) -> np.ndarray:
    """Pattern indices [..., K/4] -> kept positions [..., K/2]."""
    idx = np.asarray(idx, np.int64)
    if np.any(idx >= len(PATTERNS)):
        raise ValueError(f"2:4 pattern index out of range (0..{len(PATTERNS) - 1})")
    table = np.asarray(PATTERNS, np.int64)
    return table[idx].reshape(*idx.shape[:-1], -1)


def pack_sparse(vals, pos, zeros, scales, fmt: StreamFormat, round_scales: bool = False) -> bytes:
    """2:4 kept codes / positions [N, K/2], zero points and scales [N, K/G] -> one section."""
    vals = _ints(vals, "kept codes", 0, wmax(fmt.wbits))
    pos = _ints(pos, "2:4 positions", 0, 3)
    if vals.ndim != 2 or vals.shape != pos.shape or vals.shape[1] % 2:
        raise ValueError(f"kept codes and positions must both be [N, K/2], got {list(vals.shape)} and {list(pos.shape)}")
    n, half = vals.shape
    g = fmt.group
    _check_group(2 * half, g)
    zeros = _shape(_ints(zeros, "weight zero points", 0, wmax(fmt.wbits)), (n, 2 * half // g), "zero points")
    sb = _shape(fp16_bits(scales, round_scales), zeros.shape, "scales")
    pat = pattern_index(pos).reshape(n, 2 * half // g, g // 4)
    rec = np.concatenate([_bits(sb[..., None], SCALE_BITS), _bits(zeros[..., None], fmt.wbits),
                          _bits(vals.reshape(n, 2 * half // g, g // 2), fmt.wbits), _bits(pat, PATTERN_BITS)], axis=-1)
    return _stream(rec, fmt)


def pack_linear(lin, fmt: StreamFormat, sparse: bool, round_scales: bool = False) -> bytes:
    """One linear (``accllm.sim.golden.LinearInts``) as one section."""
    if sparse:
        return pack_sparse(lin.vals, lin.pos, lin.zeros, lin.scales, fmt, round_scales)
    return pack_dense(lin.codes, lin.zeros, lin.scales, fmt, round_scales)


def pack_qk(k, kz, fmt: StreamFormat) -> bytes:
    """Key codes [T, D] (D a multiple of L) and zero points [T] -> one section (a row per key token)."""
    k = _ints(k, "key codes", 0, KV4_MAX)
    t, d = k.shape
    if d % fmt.lanes:
        raise ValueError(f"head dim {d} must be a multiple of lanes {fmt.lanes} (pad with code = kz, q = 0)")
    kz = _shape(_ints(kz, "key zero points", 0, KV4_MAX), (t,), "key zero points")
    per = d // fmt.lanes
    rec = np.concatenate([_bits(np.broadcast_to(kz[:, None, None], (t, per, 1)), KV_BITS),
                          _bits(k.reshape(t, per, fmt.lanes), KV_BITS)], axis=-1)
    return _stream(rec, fmt)


def pack_pv(v, vz, fmt: StreamFormat) -> bytes:
    """Value codes [T, D] (T a multiple of L) and zero points [T] -> one section (a row per output column d)."""
    v = _ints(v, "value codes", 0, KV4_MAX)
    t, d = v.shape
    if t % fmt.lanes:
        raise ValueError(f"token count {t} must be a multiple of lanes {fmt.lanes} (pad with p = 0, code = zero = 0)")
    vz = _shape(_ints(vz, "value zero points", 0, KV4_MAX), (t,), "value zero points")
    per = t // fmt.lanes
    codes = v.T.reshape(d, per, fmt.lanes)
    zs = np.broadcast_to(vz.reshape(1, per, fmt.lanes), (d, per, fmt.lanes))
    return _stream(np.concatenate([_bits(codes, KV_BITS), _bits(zs, KV_BITS)], axis=-1), fmt)


def _shape(x: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{what} must be {list(shape)}, got {list(x.shape)}")
    return x


# ---------------------------------------------------------------- unpacking (what the engine's unpacker does)

def unpack(data, mode: int, fmt: StreamFormat, rows: int, k: int) -> dict[str, np.ndarray]:
    """A section -> its fields: DENSE {codes, zeros, scales}; SPARSE {vals, pos, zeros, scales}; QK {k, kz}; PV {v, vz}."""
    rec = _records(data, _mode(mode), fmt, rows, k)
    wb, g, l = fmt.wbits, fmt.group, fmt.lanes
    if mode in (MODE_DENSE, MODE_SPARSE):
        out = {"scales": scales_from_bits(_fields(rec[..., :SCALE_BITS], SCALE_BITS)[..., 0]),
               "zeros": _fields(rec[..., SCALE_BITS: SCALE_BITS + wb], wb)[..., 0]}
        body = rec[..., SCALE_BITS + wb:]
        if mode == MODE_DENSE:
            out["codes"] = _fields(body, wb).reshape(rows, k)
        else:
            out["vals"] = _fields(body[..., : g // 2 * wb], wb).reshape(rows, k // 2)
            out["pos"] = pattern_positions(_fields(body[..., g // 2 * wb:], PATTERN_BITS)).reshape(rows, k // 2)
        return out
    if mode == MODE_QK:
        kz = _fields(rec[..., :KV_BITS], KV_BITS)[..., 0]
        if np.any(kz != kz[:, :1]):
            raise ValueError("QK section: a key token's records disagree on its zero point")
        return {"k": _fields(rec[..., KV_BITS:], KV_BITS).reshape(rows, k), "kz": kz[:, 0]}
    codes = _fields(rec[..., : KV_BITS * l], KV_BITS).reshape(rows, k)  # [D, T]
    zs = _fields(rec[..., KV_BITS * l:], KV_BITS).reshape(rows, k)
    if np.any(zs != zs[:1]):
        raise ValueError("PV section: value zero points differ between columns")
    return {"v": codes.T, "vz": zs[0]}


def output_beats(acc: np.ndarray, mode: int, fmt: StreamFormat, scale_bits: np.ndarray | None = None) -> list[int]:
    """Golden accumulators [rows, outs] or, in block mode, [nt, rows, outs] (and fp16 scale bits [rows, outs] for
    DENSE/SPARSE) -> the engine's output beats for one channel, in order (tile, output, vector); padding rows of the
    last tile give accumulator 0 (and scale 0)."""
    acc = np.asarray(acc, np.int64)
    if acc.ndim == 2:
        acc = acc[None]
    if acc.shape[0] > 1 and _mode(mode) not in (MODE_DENSE, MODE_SPARSE):
        raise ValueError(f"block mode (nt = {acc.shape[0]}) is for DENSE/SPARSE sections, not {MODE_NAMES[mode]}")
    nt, rows, outs = acc.shape
    pad = -rows % fmt.cores
    acc = np.concatenate([acc, np.zeros((nt, pad, outs), np.int64)], axis=1)
    sc = np.zeros(acc.shape[1:], np.int64) if scale_bits is None else np.concatenate(
        [np.asarray(scale_bits, np.int64), np.zeros((pad, outs), np.int64)])
    tiles = acc.shape[1] // fmt.cores
    acc = acc.reshape(nt, tiles, fmt.cores, outs).transpose(1, 3, 0, 2).reshape(-1, fmt.cores)
    sc = np.repeat(sc.reshape(tiles, fmt.cores, outs).transpose(0, 2, 1).reshape(-1, 1, fmt.cores), nt, 1)
    sc = sc.reshape(-1, fmt.cores)
    beats = []
    for ab, sb in zip(acc, sc):
        w = 0
        for c in range(fmt.cores):
            w |= (int(ab[c]) & 0xFFFFFFFF) << (OUT_ACC_BITS * c)
            w |= (int(sb[c]) & 0xFFFF) << (OUT_ACC_BITS * fmt.cores + OUT_SCALE_BITS * c)
        beats.append(w)
    return beats


def split_output(beats, fmt: StreamFormat, rows: int, nt: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Engine output beats of one channel -> (accumulators [rows, outs] int64, fp16 scale bits [rows, outs]); in
    block mode (``nt`` > 1) the accumulators are [nt, rows, outs] (inverse of :func:`output_beats`)."""
    n = len(beats)
    tiles = -(-rows // fmt.cores)
    if n % (tiles * nt):
        raise ValueError(f"{n} output beats is not a whole number per tile and vector ({tiles} tiles, {nt} vectors)")
    if nt > 1:
        per = np.asarray(list(beats), dtype=object).reshape(-1, nt)
        parts = [split_output(per[:, t].tolist(), fmt, rows) for t in range(nt)]
        return np.stack([p[0] for p in parts]), parts[0][1]
    acc = np.zeros((n, fmt.cores), np.int64)
    sc = np.zeros((n, fmt.cores), np.int64)
    for i, w in enumerate(beats):
        w = int(w)
        for c in range(fmt.cores):
            x = (w >> (OUT_ACC_BITS * c)) & 0xFFFFFFFF
            acc[i, c] = x - (1 << 32) if x >> 31 else x
            sc[i, c] = (w >> (OUT_ACC_BITS * fmt.cores + OUT_SCALE_BITS * c)) & 0xFFFF
    outs = n // tiles
    acc = acc.reshape(tiles, outs, fmt.cores).transpose(0, 2, 1).reshape(-1, outs)[:rows]
    sc = sc.reshape(tiles, outs, fmt.cores).transpose(0, 2, 1).reshape(-1, outs)[:rows]
    return acc, sc


# ---------------------------------------------------------------- layout: bytes of a model in this format

@dataclass
class Section:
    name: str  # e.g. "layers.3.q_proj"
    channel: int
    offset: int  # byte offset inside the channel's region
    nbytes: int
    rows: tuple[int, int]  # [start, stop) of the linear's rows
    k: int
    mode: int
    wbits: int = 2  # the section's weight code width (the engine's MODE register says it per operation)

    def to_json(self) -> dict:
        return {"name": self.name, "channel": self.channel, "offset": self.offset, "nbytes": self.nbytes,
                "rows": list(self.rows), "k": self.k, "mode": MODE_NAMES[self.mode], "wbits": self.wbits}


@dataclass
class Layout:
    fmt: StreamFormat
    channels: int
    sections: list[Section]
    weights: dict[str, int]  # dense-equivalent weights per linear name

    def nbytes(self, name: str | None = None) -> int:
        return sum(s.nbytes for s in self.sections if name is None or s.name == name)

    def channel_bytes(self) -> list[int]:
        return [sum(s.nbytes for s in self.sections if s.channel == c) for c in range(self.channels)]

    def bits_per_weight(self, name: str | None = None) -> float:
        w = sum(n for k, n in self.weights.items() if name is None or k == name)
        return 8 * self.nbytes(name) / w

    def by_linear(self) -> dict[str, dict]:
        """Per linear kind (q_proj, ...): bytes and bits per dense-equivalent weight, summed over layers."""
        out = {}
        for full in self.weights:
            kind = full.split(".")[-1]
            d = out.setdefault(kind, {"bytes": 0, "weights": 0})
            d["bytes"] += self.nbytes(full)
            d["weights"] += self.weights[full]
        for d in out.values():
            d["bits_per_weight"] = 8 * d["bytes"] / d["weights"]
        return out

    def to_json(self) -> dict:
        return {"format": self.fmt.to_json(), "channels": self.channels,
                "record_bits": {MODE_NAMES[m]: self.fmt.record_bits(m) for m in MODE_NAMES},
                "total_bytes": self.nbytes(), "bits_per_weight": self.bits_per_weight(),
                "by_linear": self.by_linear(), "channel_bytes": self.channel_bytes(),
                "sections": [s.to_json() for s in self.sections]}


def layout_linears(linears, fmt: StreamFormat, channels: int = 1, sparse: bool = True,
                   after: Layout | None = None) -> Layout:
    """Sections of named linears ``[(name, rows, k), ...]`` over ``channels`` channels, each channel's sections
    back to back from offset 0 of its own region (whole words, so every section starts on a word). With ``after``,
    the sections follow that layout's in each channel (e.g. the DENSE W4 LM head after W2 decoder linears: ``fmt``
    may differ in code width only) and the result holds both."""
    mode = MODE_SPARSE if sparse else MODE_DENSE
    offsets = [0] * channels
    sections, weights = [], {}
    if after is not None:
        if after.channels != channels or replace(after.fmt, wbits=fmt.wbits) != fmt:
            raise ValueError(f"sections appended to a layout must share its channels and format but the code width "
                             f"({after.channels} x {after.fmt} vs {channels} x {fmt})")
        offsets = after.channel_bytes()
        sections, weights = list(after.sections), dict(after.weights)
    for name, n, k in linears:
        _check_group(k, fmt.group)
        weights[name] = n * k
        for ch, (r0, r1) in enumerate(channel_rows(n, fmt.cores, channels)):
            nb = section_bytes(mode, fmt, r1 - r0, k) if r1 > r0 else 0
            sections.append(Section(name, ch, offsets[ch], nb, (r0, r1), k, mode, fmt.wbits))
            offsets[ch] += nb
    return Layout(after.fmt if after is not None else fmt, channels, sections, weights)


HEAD_WBITS = 4  # the LM head: DENSE records with 4-bit codes (project contract 2)


def layout(model, fmt: StreamFormat, channels: int = 1, sparse: bool = True, lm_head: bool = False) -> Layout:
    """Every decoder linear of a model in the weight stream. ``model`` has ``layers`` and ``linears()`` ->
    ``[(name, N, K), ...]`` of one decoder layer (``accllm.sim.boards.ModelShape``); with ``lm_head`` the
    output projection [vocab, hidden] is laid out too, after them, as one more linear of the engine: DENSE with
    :data:`HEAD_WBITS`-bit codes."""
    lins = [(f"layers.{i}.{name}", n, k) for i in range(model.layers) for name, n, k in model.linears()]
    lay = layout_linears(lins, fmt, channels, sparse)
    if lm_head:
        lay = layout_linears([("lm_head", model.vocab, model.hidden)], replace(fmt, wbits=HEAD_WBITS), channels,
                             sparse=False, after=lay)
    return lay
