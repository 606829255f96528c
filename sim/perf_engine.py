"""Cycles of the engine (hw/rtl/accllm_engine.sv) per operation and per decode token, from measurements.

Bytes come from the weight-stream layout (:mod:`accllm.sim.weight_stream`); the cycle model has two fitted
terms, taken from Verilated engine runs (``bench/engine.py`` writes them): the memory efficiency ``eff`` (words
delivered per cycle over the channel's peak ``rate``) and a fixed cost per operation ``overhead`` (read latency,
pipeline fill and drain). An operation takes

    cycles = max(words / (rate * eff), nt * core_beats * beat_cycles) + overhead

where ``words`` is channel 0's section (the largest share, whole tiles per channel) and ``core_beats`` the beats
its cores need for one activation vector (super-records x beats per record); in block mode (prefill) the cores
go over each held record once per vector of the block, ``nt`` of them: the engine waits on memory or on its
cores, whichever is slower. ``beat_cycles`` (cycles per core beat when compute-bound, ideally 1) is fitted on
Verilated block-mode runs (``block_operations``); without them it is 1. Nothing else is assumed; the clock is
the board's stated kernel clock.

The measured operations the fit is made from live in ``data/engine_timing.json`` (``bench/engine.py --small``
writes them); :func:`load_timing` fits them. The engine's format on a board (:func:`board_format`) is the
compiler's (accllm.hls.engine_image) and the perf model's (accllm.sim.perf).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import weight_stream as ws

TIMING_FILE = Path(__file__).resolve().parent / "data" / "engine_timing.json"


@dataclass(frozen=True)
class EngineTiming:
    eff: float  # achieved / peak words per cycle while streaming
    overhead: float  # cycles per operation beyond streaming
    source: str  # where the fit came from
    beat_cycles: float = 1.0  # cycles per core beat of a compute-bound (block-mode) operation

    def to_json(self) -> dict:
        return asdict(self)


def channel_work(mode: int, fmt: ws.StreamFormat, rows: int, k: int, channels: int) -> tuple[int, int]:
    """(words, core beats) of channel 0 for a linear of ``rows`` x ``k``."""
    r0, r1 = ws.channel_rows(rows, fmt.cores, channels)[0]
    n = r1 - r0
    words = ws.section_words(mode, fmt, n, k)
    beats = -(-n // fmt.cores) * (k // fmt.record_inputs(mode)) * fmt.beats_per_record(mode)
    return words, beats


def op_cycles(words: int, beats: int, rate: float, t: EngineTiming, nt: int = 1) -> float:
    """Cycles of one operation: ``beats`` core beats per vector, ``nt`` vectors per weight pass (block mode)."""
    return max(words / (rate * t.eff), nt * beats * t.beat_cycles) + t.overhead


def fit_block(ops: list[dict], rate: float, t: EngineTiming) -> EngineTiming:
    """``t`` with ``beat_cycles`` fitted on measured block-mode operations (dicts with ``words``, ``beats``,
    ``nt``, ``cycles``): least squares of ``cycles - overhead = beat_cycles * nt * beats`` over the compute-bound
    ones (``nt * beats`` above the streaming time)."""
    import numpy as np

    cb = [o for o in ops if o["nt"] * o["beats"] > o["words"] / (rate * t.eff)]
    if len(cb) < 2:
        raise ValueError("fitting the block timing needs at least two compute-bound block operations")
    x = np.array([o["nt"] * o["beats"] for o in cb], float)
    y = np.array([o["cycles"] - t.overhead for o in cb], float)
    return EngineTiming(t.eff, t.overhead, t.source, beat_cycles=float(x @ y / (x @ x)))


def fit_timing(ops: list[dict], rate: float, source: str) -> EngineTiming:
    """Least squares of ``cycles = words / (rate * eff) + overhead`` over memory-bound measured operations
    (dicts with ``words`` and ``cycles``, as ``bench/engine.py`` writes them)."""
    import numpy as np

    x = np.array([o["words"] / rate for o in ops], float)
    y = np.array([o["cycles"] for o in ops], float)
    if len(ops) < 2 or np.ptp(x) == 0:
        raise ValueError("fitting the engine timing needs at least two operations of different sizes")
    slope, icpt = np.polyfit(x, y, 1)
    return EngineTiming(eff=float(1.0 / slope), overhead=float(icpt), source=source)


def token_cycles(model, fmt: ws.StreamFormat, channels: int, rate: float, t: EngineTiming,
                 sparse: bool = True, lm_head: bool = True) -> dict:
    """Cycles of every linear of one decode token (``model``: ``accllm.sim.boards.ModelShape``); the LM head is
    a DENSE linear with :data:`~accllm.sim.weight_stream.HEAD_WBITS`-bit codes."""
    from dataclasses import replace

    mode = ws.MODE_SPARSE if sparse else ws.MODE_DENSE
    per = {}
    for name, n, k in model.linears():
        per[name] = op_cycles(*channel_work(mode, fmt, n, k, channels), rate, t)
    layer = sum(per.values())
    head = op_cycles(*channel_work(ws.MODE_DENSE, replace(fmt, wbits=ws.HEAD_WBITS), model.vocab, model.hidden,
                                   channels), rate, t) if lm_head else 0.0
    return {"per_linear": per, "layer": layer, "lm_head": head, "token": model.layers * layer + head}


def token_linears(model, lm_head: bool = True) -> list[tuple[int, int]]:
    """(rows, K) of every linear one decode token runs on the engine (``model``: ``ModelShape`` or ``Dims``-like
    with ``layers`` and ``linears()``)."""
    lins = [(n, k) for _, n, k in model.linears()] * model.layers
    return lins + ([(model.vocab, model.hidden)] if lm_head else [])


def pick_cores(linears, wbits: int, group: int, lanes: int, width: int, channels: int, sparse: bool = True) -> int:
    """Cores per channel: at least enough to take a word per cycle (:func:`~accllm.sim.weight_stream.cores_to_fill`);
    among the next few, the one whose whole-tile split gives channel 0 the fewest words over ``linears``
    [(rows, K), ...] (rows split over channels in tiles of ``cores`` rows)."""
    mode = ws.MODE_SPARSE if sparse else ws.MODE_DENSE
    low = ws.cores_to_fill(mode, wbits, group, lanes, width)

    def words(c):
        fmt = ws.StreamFormat(wbits, group, lanes, c, width)
        return sum(channel_work(mode, fmt, n, k, channels)[0] for n, k in linears)

    return min(range(low, low + 4), key=lambda c: (words(c), c))


def board_format(board, group: int, lanes: int, sparse: bool, wbits: int = 2, cores: int | None = None,
                 model=None) -> tuple[ws.StreamFormat, int]:
    """The weight-stream format and channel count of the engine on ``board``: one channel per memory port, the
    smallest channel width that holds the port, ``cores`` per channel (default: :func:`pick_cores` over
    ``model``'s decode token when given, else just enough to take a full word per cycle)."""
    width = next((w for w in ws.CHANNEL_BITS if w >= board.port_bits), ws.CHANNEL_BITS[-1])
    mode = ws.MODE_SPARSE if sparse else ws.MODE_DENSE
    channels = int(board.mem_ports)
    if not cores:
        cores = (pick_cores(token_linears(model), wbits, group, lanes, width, channels, sparse) if model is not None
                 else ws.cores_to_fill(mode, wbits, group, lanes, width))
    return ws.StreamFormat(wbits, group, lanes, cores, width), channels


def channel_rate(board, channel_bits: int) -> float:
    """Peak full-width words per kernel cycle of one channel: its share of the board's bandwidth (at most 1)."""
    per_channel = board.mem_bandwidth_gbs * 1e9 / board.mem_ports
    return min(1.0, per_channel / (channel_bits / 8 * board.clock_mhz * 1e6))


def save_timing_data(bench: dict, source: str, path: Path = TIMING_FILE) -> Path:
    """Keep a ``bench/engine.py`` run's measured operations (words, cycles), its block-mode operations (words,
    beats, nt, cycles) and peak rate for :func:`load_timing`."""
    ops = [{k: o[k] for k in ("name", "k", "rows_channel0", "words", "cycles")} for o in bench["simulated"]["operations"]]
    blocks = [{k: o[k] for k in ("name", "k", "rows_channel0", "words", "beats", "nt", "cycles")}
              for o in bench.get("block", {}).get("operations", [])]
    path.write_text(json.dumps({"source": source, "beats_per_cycle_peak": bench["memory_model"]["beats_per_cycle_peak"],
                                "latency_cycles": bench["memory_model"]["latency_cycles"], "operations": ops,
                                "block_operations": blocks}, indent=1))
    return path


def load_timing(path: Path = TIMING_FILE) -> EngineTiming:
    """The engine timing fitted on the stored measured operations (and block-mode operations when stored)."""
    d = json.loads(Path(path).read_text())
    t = fit_timing(d["operations"], d["beats_per_cycle_peak"], d["source"])
    if d.get("block_operations"):
        t = fit_block(d["block_operations"], d["beats_per_cycle_peak"], t)
    return t
