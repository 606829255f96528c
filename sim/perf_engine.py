"""Cycles of the engine (hw/rtl/accllm_engine.sv) per operation and per decode token, from measurements.

Bytes come from the weight-stream layout (:mod:`accllm.sim.weight_stream`); the cycle model has two fitted
terms, taken from Verilated engine runs (``bench/engine.py`` writes them): the memory efficiency ``eff`` (words
delivered per cycle over the channel's peak ``rate``) and a fixed cost per operation ``overhead`` (read latency,
pipeline fill and drain). An operation takes

    cycles = max(words / (rate * eff), core_beats) + overhead

where ``words`` is channel 0's section (the largest share, whole tiles per channel) and ``core_beats`` the beats
its cores need (super-records x beats per record): the engine waits on memory or on its cores, whichever is
slower. Nothing else is assumed; the clock is the board's stated kernel clock.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from . import weight_stream as ws


@dataclass(frozen=True)
class EngineTiming:
    eff: float  # achieved / peak words per cycle while streaming
    overhead: float  # cycles per operation beyond streaming
    source: str  # where the fit came from

    def to_json(self) -> dict:
        return asdict(self)


def channel_work(mode: int, fmt: ws.StreamFormat, rows: int, k: int, channels: int) -> tuple[int, int]:
    """(words, core beats) of channel 0 for a linear of ``rows`` x ``k``."""
    r0, r1 = ws.channel_rows(rows, fmt.cores, channels)[0]
    n = r1 - r0
    words = ws.section_words(mode, fmt, n, k)
    beats = -(-n // fmt.cores) * (k // fmt.record_inputs(mode)) * fmt.beats_per_record(mode)
    return words, beats


def op_cycles(words: int, beats: int, rate: float, t: EngineTiming) -> float:
    return max(words / (rate * t.eff), beats) + t.overhead


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
    """Cycles of every linear of one decode token (``model``: ``accllm.sim.boards.ModelShape``)."""
    mode = ws.MODE_SPARSE if sparse else ws.MODE_DENSE
    per = {}
    for name, n, k in model.linears():
        per[name] = op_cycles(*channel_work(mode, fmt, n, k, channels), rate, t)
    layer = sum(per.values())
    head = op_cycles(*channel_work(mode, fmt, model.vocab, model.hidden, channels), rate, t) if lm_head else 0.0
    return {"per_linear": per, "layer": layer, "lm_head": head, "token": model.layers * layer + head}
