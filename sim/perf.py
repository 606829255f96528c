"""Analytical performance model of the accllm engine, calibrated on RTL cycle counts.

What is measured and what is assumed:

- The integer core's cycles per call come from a linear fit ``cycles = per_beat * beats + per_packet *
  packets + per_op`` to cycle counts of the RTL core behind its HLS blackbox wrapper, simulated in Verilator
  (``accllm.sim.rtl_native``), from ap_start to ap_done: what one ``accllm_core_hls_bb()`` call of the kernel
  costs (``bench/perf.py --calibrate`` writes ``data/perf_calibration.json``; the beat and packet counts are
  those of ``accllm.sim.core_stream``). It is checked on held-out shapes, other LANES/GROUP builds, and every
  core call of the bundled model's engine running with the RTL core.
- Everything around the core is a stated assumption (:class:`Engine` fields): how many cores run in parallel,
  how the weights are packed in memory, the memory efficiency, the vector unit for the non-linear work and a
  fixed hand-off gap between dependent operations. None of it is calibrated, and no board has run it.

Decode at batch 1 overlaps each operation's memory reads with its compute, so an operation takes
``max(compute, memory)`` cycles; the bandwidth limit of a board is ``bandwidth / bytes read per token``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
BOARDS_FILE = DATA / "boards.json"
MODELS_DIR = DATA / "models"
CALIBRATION_FILE = DATA / "perf_calibration.json"
KINDS = ("dense", "sparse", "qk", "pv")


# ---------------------------------------------------------------- boards and models

@dataclass(frozen=True)
class Board:
    name: str
    title: str
    part: str
    flow: str
    clock_mhz: float
    memory: str
    mem_bandwidth_gbs: float
    mem_ports: int
    port_bits: int
    resources: dict
    power_w: float | None
    power_source: str
    sources: dict
    extra: dict = field(default_factory=dict)  # flow-specific fields (platform, board part pattern)

    @property
    def bytes_per_cycle(self) -> float:
        """Peak bytes per kernel cycle: the memory's bandwidth, or the kernel's ports if they are narrower."""
        return min(self.mem_bandwidth_gbs * 1e9 / (self.clock_mhz * 1e6), self.mem_ports * self.port_bits / 8)


def load_boards(path: Path = BOARDS_FILE) -> dict[str, Board]:
    data = json.loads(Path(path).read_text())
    keys = {f for f in Board.__dataclass_fields__ if f not in ("name", "extra")}
    boards = {}
    for name, b in data["boards"].items():
        boards[name] = Board(name=name, **{k: b.get(k) for k in keys},
                             extra={k: v for k, v in b.items() if k not in keys})
    return boards


def get_board(name: str) -> Board:
    boards = load_boards()
    key = name.lower()
    if key not in boards:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(sorted(boards))}")
    return boards[key]


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-family decoder that the cost depends on."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict, name: str) -> "ModelShape":
        need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise ValueError(f"{name}: not a Llama-style config.json (missing {', '.join(missing)})")
        heads = cfg["num_attention_heads"]
        return cls(name=name, hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                   layers=cfg["num_hidden_layers"], heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab=cfg["vocab_size"],
                   tied=bool(cfg.get("tie_word_embeddings", False)))

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, N outputs, K inputs) of the linear layers of one decoder layer, in execution order."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q),
                ("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]

    def linear_params(self) -> int:
        return self.layers * sum(n * k for _, n, k in self.linears())


def presets() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_model_shape(spec: str) -> ModelShape:
    """``spec``: ``bundled``, a preset name (see :func:`presets`), or a HF config.json file or its folder."""
    if spec == "bundled":
        from accllm.quant.model import BUNDLED_MODEL

        path = Path(BUNDLED_MODEL) / "config.json"
        name = "bundled"
    elif (MODELS_DIR / f"{spec}.json").is_file():
        path, name = MODELS_DIR / f"{spec}.json", spec
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec!r}: no such config.json, and not 'bundled' or a preset "
                                    f"({', '.join(presets())})")
        name = path.parent.name if path.name == "config.json" else path.stem
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return ModelShape.from_config(cfg, name)


# ---------------------------------------------------------------- engine and core timing

@dataclass(frozen=True)
class Engine:
    """Engine parameters. ``lanes``/``group`` are the RTL core's LANES/GROUP; the rest are assumptions."""

    lanes: int = 16
    group: int = 32
    cores: int = 1                 # parallel integer cores (each LANES multipliers)
    sparse: bool = True            # decoder linears run 2:4 (SPARSE mode); else DENSE
    lm_head: str = "dense"         # the LM head as a W2 linear in DENSE ("dense") or SPARSE ("sparse") mode
    weight_bits: int = 2
    pos_bits: int = 2              # 2:4 position of a kept weight
    w_scale_bits: int = 16         # fp16 scale per (row, group)
    w_zero_bits: int = 2           # zero point per (row, group)
    kv_bits: int = 4
    kv_scale_bits: int = 16        # fp16 scale per (token, head), K and V each
    kv_zero_bits: int = 4
    sinks: int = 4
    window: int = 1020
    mem_efficiency: float = 0.9    # assumed fraction of peak bandwidth that long sequential bursts reach
    vector_lanes: int = 64         # elements per cycle of the non-linear unit (norm, RoPE, softmax, SiLU, quantise)
    op_gap: int = 64               # assumed cycles of hand-off between dependent operations

    def validate(self) -> "Engine":
        from .core_stream import check_lanes

        check_lanes(self.lanes)
        if self.group <= 0 or self.group % (2 * self.lanes):
            raise ValueError(f"group {self.group} must be a positive multiple of 2*lanes = {2 * self.lanes} "
                             f"(the core closes a group on a whole number of SPARSE beats)")
        if self.cores < 1:
            raise ValueError(f"cores must be >= 1, got {self.cores}")
        if self.lm_head not in ("dense", "sparse"):
            raise ValueError(f"lm_head must be 'dense' or 'sparse', got {self.lm_head!r}")
        return self

    @property
    def cache_tokens(self) -> int:
        return self.sinks + self.window

    def weight_bits_per_param(self, sparse: bool) -> float:
        """Bits read from memory per original weight (codes, positions, per-group scale and zero point)."""
        per_group = (self.w_scale_bits + self.w_zero_bits) / self.group
        return (self.weight_bits + self.pos_bits) / 2 + per_group if sparse else self.weight_bits + per_group

    def kv_bytes_per_token(self, m: ModelShape) -> float:
        """Bytes of K and V of one cached token in one layer (codes and per-head scale and zero point)."""
        return 2 * m.kv_heads * (m.head_dim * self.kv_bits + self.kv_scale_bits + self.kv_zero_bits) / 8


def op_shape(kind: str, lanes: int, n: int = 0, k: int = 0, t: int = 0, d: int = 0) -> tuple[int, int]:
    """(B beats, packets) of one core operation, as ``accllm.sim.core_stream`` streams it.

    dense/sparse: ``n`` rows x ``k`` inputs; qk: ``t`` keys of ``d`` dims; pv: ``t`` tokens x ``d`` columns.
    """
    if kind == "dense":
        return n * (k // lanes), n
    if kind == "sparse":
        return n * (k // (2 * lanes)), n
    if kind == "qk":
        return t * math.ceil(d / lanes), t
    if kind == "pv":
        return d * math.ceil(t / lanes), d
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@dataclass(frozen=True)
class CoreTiming:
    """cycles = per_beat * beats + per_packet * packets + per_op, fitted on RTL cycle counts."""

    per_beat: float
    per_packet: float
    per_op: float
    source: str = "uncalibrated"
    fit: dict = field(default_factory=dict)

    def cycles(self, beats: float, packets: float) -> float:
        return self.per_beat * beats + self.per_packet * packets + self.per_op


def fit_timing(samples: list[dict]) -> CoreTiming:
    """Least-squares fit of :class:`CoreTiming` to samples ``{"beats", "packets", "cycles"}``."""
    import numpy as np

    if len(samples) < 3:
        raise ValueError(f"a fit of three terms needs at least 3 samples, got {len(samples)}")
    x = np.array([[s["beats"], s["packets"], 1.0] for s in samples], dtype=float)
    y = np.array([s["cycles"] for s in samples], dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return CoreTiming(*map(float, coef))


def timing_errors(timing: CoreTiming, samples: list[dict]) -> dict:
    """Relative error of the predicted cycles on ``samples``: per sample and the maximum / mean of |error|."""
    rows = []
    for s in samples:
        pred = timing.cycles(s["beats"], s["packets"])
        rows.append({**s, "predicted": pred, "rel_error": (pred - s["cycles"]) / s["cycles"]})
    errs = [abs(r["rel_error"]) for r in rows]
    return {"samples": rows, "max_abs_rel_error": max(errs), "mean_abs_rel_error": sum(errs) / len(errs)}


def load_calibration(path: Path = CALIBRATION_FILE) -> tuple[CoreTiming, dict]:
    """The fitted core timing and the whole calibration record written by ``bench/perf.py --calibrate``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no core calibration at {path}: run 'python bench/perf.py --calibrate' "
                                "(simulates the RTL core in Verilator) first")
    rec = json.loads(path.read_text())
    c = rec["fit"]
    return CoreTiming(c["per_beat"], c["per_packet"], c["per_op"], source=str(path), fit=c), rec


# ---------------------------------------------------------------- the model

@dataclass
class OpCost:
    layer: str
    op: str
    kind: str
    macs: int            # dense-equivalent multiply-accumulates (a 2:4 linear counts all N*K)
    beats: int           # B beats of the whole operation
    packets: int
    compute_cycles: float
    bytes: float         # bytes read from / written to external memory
    memory_cycles: float
    cycles: float

    @property
    def bound(self) -> str:
        return "memory" if self.memory_cycles >= self.compute_cycles else "compute"


@dataclass
class PerfModel:
    model: ModelShape
    board: Board
    engine: Engine
    timing: CoreTiming

    def __post_init__(self):
        self.engine.validate()

    # -- building blocks
    @property
    def bytes_per_cycle(self) -> float:
        return self.board.bytes_per_cycle * self.engine.mem_efficiency

    def core_op(self, layer: str, op: str, kind: str, tokens: int = 1, bytes_: float = 0.0,
                macs: int = 0, calls: int = 1, **dims) -> OpCost:
        """``calls`` core calls of shape ``dims`` (the kernel calls the core once per linear and once per head for
        QK and PV), each split over the cores by packets (rows / keys / columns), repeated for ``tokens``
        activation vectors (the core pairs every A beat with a B beat, so weights stream once per token)."""
        beats, packets = op_shape(kind, self.engine.lanes, **dims)
        per_packet = beats // packets if packets else 0
        core_packets = math.ceil(packets / self.engine.cores)
        compute = tokens * calls * self.timing.cycles(core_packets * per_packet, core_packets) if packets else 0.0
        mem = bytes_ / self.bytes_per_cycle
        return OpCost(layer, op, kind, macs * tokens, calls * beats * tokens, calls * packets * tokens, compute,
                      bytes_, mem, max(compute, mem) + self.engine.op_gap)

    def linear(self, layer: str, name: str, n: int, k: int, sparse: bool, tokens: int = 1) -> OpCost:
        e = self.engine
        if k % e.group:
            raise ValueError(f"{layer}.{name}: input size {k} is not a multiple of the group {e.group}")
        nbytes = n * k * e.weight_bits_per_param(sparse) / 8
        return self.core_op(layer, name, "sparse" if sparse else "dense", tokens, nbytes, n * k, n=n, k=k)

    def vector(self, layer: str, name: str, elements: int, bytes_: float = 0.0) -> OpCost:
        """Non-linear work in the HLS kernel (not calibrated: ``vector_lanes`` elements per cycle)."""
        compute = math.ceil(elements / self.engine.vector_lanes)
        mem = bytes_ / self.bytes_per_cycle
        return OpCost(layer, name, "vector", 0, 0, 0, compute, bytes_, mem, max(compute, mem) + self.engine.op_gap)

    # -- one decoder layer
    def layer_ops(self, idx: int, tokens: int, keys: list[int]) -> list[OpCost]:
        """Operations of decoder layer ``idx`` for ``tokens`` new tokens whose attention sees ``keys[i]`` keys."""
        m, e = self.model, self.engine
        name = f"layer{idx}"
        lin = dict((n_, (n, k)) for n_, n, k in m.linears())
        ops = [self.vector(name, "rmsnorm+quant", 2 * m.hidden * tokens, bytes_=2 * m.hidden)]
        ops += [self.linear(name, n_, *lin[n_], e.sparse, tokens) for n_ in ("q_proj", "k_proj", "v_proj")]
        ops.append(self.vector(name, "rope+kv_quant", (m.heads + 2 * m.kv_heads) * m.head_dim * tokens,
                               bytes_=tokens * e.kv_bytes_per_token(m)))  # writes the new tokens' K and V
        kv_tok = e.kv_bytes_per_token(m) / 2  # K (or V) bytes of one cached token in this layer
        qk = pv = None
        for t in keys:  # one query per new token, over all heads
            a = self.core_op(name, "qk", "qk", 1, t * kv_tok, m.heads * t * m.head_dim, calls=m.heads, t=t, d=m.head_dim)
            b = self.core_op(name, "pv", "pv", 1, t * kv_tok, m.heads * t * m.head_dim, calls=m.heads, t=t, d=m.head_dim)
            qk, pv = (a, b) if qk is None else (_add(qk, a), _add(pv, b))
        ops += [qk, self.vector(name, "softmax+quant", 3 * m.heads * sum(keys)), pv]
        ops.append(self.linear(name, "o_proj", *lin["o_proj"], e.sparse, tokens))
        ops.append(self.vector(name, "residual+rmsnorm+quant", 3 * m.hidden * tokens, bytes_=2 * m.hidden))
        ops += [self.linear(name, n_, *lin[n_], e.sparse, tokens) for n_ in ("gate_proj", "up_proj")]
        ops.append(self.vector(name, "silu*up+quant", 3 * m.intermediate * tokens))
        ops.append(self.linear(name, "down_proj", *lin["down_proj"], e.sparse, tokens))
        ops.append(self.vector(name, "residual", m.hidden * tokens))
        return ops

    def head_ops(self, tokens_out: int) -> list[OpCost]:
        m, e = self.model, self.engine
        return [self.vector("head", "embed", m.hidden * tokens_out, bytes_=2 * m.hidden * tokens_out),
                self.vector("head", "final_rmsnorm+quant", 2 * m.hidden * tokens_out, bytes_=2 * m.hidden),
                self.linear("head", "lm_head", m.vocab, m.hidden, e.lm_head == "sparse", tokens_out)]

    # -- phases
    def decode(self, context: int) -> dict:
        """One decode step with ``context`` tokens already in the stream (Λ: at most sinks+window cached)."""
        t = min(context + 1, self.engine.cache_tokens)
        ops = [op for i in range(self.model.layers) for op in self.layer_ops(i, 1, [t])] + self.head_ops(1)
        return self._summary("decode", ops, tokens=1, context=context, keys=t)

    def prefill(self, prompt: int) -> dict:
        """The prompt's tokens through every layer (weights held on chip per operation, reused by all tokens)."""
        keys = [min(i + 1, self.engine.cache_tokens) for i in range(prompt)]
        ops = [op for i in range(self.model.layers) for op in self.layer_ops(i, prompt, keys)] + self.head_ops(1)  # only the last position's logits are needed
        return self._summary("prefill", ops, tokens=prompt, context=0, keys=max(keys))

    def _summary(self, phase: str, ops: list[OpCost], tokens: int, context: int, keys: int) -> dict:
        f = self.board.clock_mhz * 1e6
        cycles = sum(o.cycles for o in ops)
        nbytes = sum(o.bytes for o in ops)
        macs = sum(o.macs for o in ops)
        seconds = cycles / f
        per_layer = {}
        for o in ops:
            row = per_layer.setdefault(o.op, {"op": o.op, "kind": o.kind, "cycles": 0.0, "compute_cycles": 0.0,
                                              "memory_cycles": 0.0, "bytes": 0.0, "macs": 0})
            for k in ("cycles", "compute_cycles", "memory_cycles", "bytes", "macs"):
                row[k] += getattr(o, k)
        for row in per_layer.values():  # per decoder layer (the head ops appear once)
            if row["op"] not in ("embed", "final_rmsnorm+quant", "lm_head"):
                for k in ("cycles", "compute_cycles", "memory_cycles", "bytes", "macs"):
                    row[k] /= self.model.layers
            row["bound"] = "memory" if row["memory_cycles"] >= row["compute_cycles"] else "compute"
        out = {"phase": phase, "tokens": tokens, "context": context, "attended_keys": keys,
               "cycles": cycles, "seconds": seconds, "tokens_per_s": tokens / seconds,
               "bytes": nbytes, "bytes_per_token": nbytes / tokens, "macs": macs,
               "ops_per_byte": 2 * macs / nbytes if nbytes else math.inf,
               "ops_per_s": 2 * macs / seconds, "per_layer": list(per_layer.values())}
        out["footprint_bytes"] = self.footprint_bytes()
        out["fits_in_memory"] = out["footprint_bytes"] <= self.board.extra.get("memory_gb", math.inf) * 2**30
        if phase == "decode":
            limit = self.board.mem_bandwidth_gbs * 1e9 / out["bytes_per_token"]
            out["bandwidth_limit_tokens_per_s"] = limit
            out["achieved_over_limit"] = out["tokens_per_s"] / limit
            if self.board.power_w:
                out["tokens_per_j"] = out["tokens_per_s"] / self.board.power_w
        return out

    def footprint_bytes(self) -> float:
        """Bytes the model needs in external memory: weights (as read by decode) plus a full Λ KV cache."""
        m, e = self.model, self.engine
        weights = m.linear_params() * e.weight_bits_per_param(e.sparse) / 8
        weights += m.vocab * m.hidden * (e.weight_bits_per_param(e.lm_head == "sparse") / 8 + (0 if m.tied else 2))
        return weights + m.layers * e.cache_tokens * e.kv_bytes_per_token(m)

    # -- peaks and resources
    def peak_ops_per_s(self) -> float:
        """Dense-equivalent ops/s of the cores at the board clock (2 ops per MAC; 2:4 doubles the rate)."""
        per_cycle = self.engine.cores * self.engine.lanes * 2 * (2 if self.engine.sparse else 1)
        return per_cycle * self.board.clock_mhz * 1e6

    def resources(self) -> dict:
        return estimate_resources(self.engine, self.board)


def _add(a: OpCost, b: OpCost) -> OpCost:
    return OpCost(a.layer, a.op, a.kind, a.macs + b.macs, a.beats + b.beats, a.packets + b.packets,
                  a.compute_cycles + b.compute_cycles, a.bytes + b.bytes, a.memory_cycles + b.memory_cycles,
                  a.cycles + b.cycles)


# Resource coefficients: DSPs follow the RTL (accllm_dot2 packs two products in one DSP48E2); the LUT / FF /
# BRAM figures are assumptions for an order-of-magnitude check, not synthesis results.
LUT_PER_LANE, FF_PER_LANE, LUT_PER_CORE = 40, 60, 300
KERNEL_LUT, KERNEL_FF, KERNEL_DSP, KERNEL_BRAM = 60_000, 90_000, 120, 40   # non-linear + dequant units, control
PORT_LUT, PORT_FF, PORT_BRAM = 2_500, 4_000, 8                           # one m_axi read port with burst buffers


def estimate_resources(engine: Engine, board: Board) -> dict:
    """Estimated device use of the engine (an estimate: see the coefficients above; no synthesis was run)."""
    ports = board.mem_ports
    lanes = engine.cores * engine.lanes
    use = {"dsp": engine.cores * engine.lanes // 2 + KERNEL_DSP,
           "lut": lanes * LUT_PER_LANE + engine.cores * LUT_PER_CORE + KERNEL_LUT + ports * PORT_LUT,
           "ff": lanes * FF_PER_LANE + KERNEL_FF + ports * PORT_FF,
           "bram36": KERNEL_BRAM + ports * PORT_BRAM + engine.cores}
    avail = board.resources
    return {"estimate": True, "used": use,
            "available": {k: avail[k] for k in use},
            "fraction": {k: use[k] / avail[k] for k in use}}


def size_engine(board: Board, lanes: int = 16, group: int = 32, sparse: bool = True, dsp_fraction: float = 0.7,
                **kw) -> Engine:
    """An engine whose cores consume weights as fast as the board's memory delivers them, within
    ``dsp_fraction`` of the board's DSPs."""
    e = Engine(lanes=lanes, group=group, sparse=sparse, **kw)
    bytes_per_core = 2 * lanes * e.weight_bits_per_param(sparse) / 8 if sparse else lanes * e.weight_bits_per_param(False) / 8
    need = math.ceil(board.bytes_per_cycle * e.mem_efficiency / bytes_per_core)
    cap = max(1, int(dsp_fraction * board.resources["dsp"]) // (lanes // 2))
    return replace(e, cores=max(1, min(need, cap))).validate()


def engine_dict(e: Engine) -> dict:
    return asdict(e)


# ---------------------------------------------------------------- calibration on the RTL core

# Shapes the fit is made on (LANES=16, GROUP=32) and shapes it is checked on: other sizes, QK/PV lengths that
# are not a multiple of LANES, and other LANES/GROUP builds of the core that the fit never saw.
FIT_CONFIG = (16, 32)
FIT_SHAPES = [("dense", dict(n=8, k=32)), ("dense", dict(n=16, k=64)), ("dense", dict(n=4, k=128)),
              ("sparse", dict(n=8, k=64)), ("sparse", dict(n=16, k=32)), ("sparse", dict(n=6, k=128)),
              ("qk", dict(t=16, d=16)), ("qk", dict(t=24, d=32)), ("qk", dict(t=10, d=64)),
              ("pv", dict(t=16, d=8)), ("pv", dict(t=48, d=4)), ("pv", dict(t=32, d=16))]
HELD_OUT = {
    (16, 32): [("dense", dict(n=40, k=256)), ("dense", dict(n=3, k=96)), ("sparse", dict(n=50, k=128)),
               ("sparse", dict(n=7, k=224)), ("qk", dict(t=70, d=40)), ("qk", dict(t=5, d=128)),
               ("pv", dict(t=77, d=12)), ("pv", dict(t=200, d=3))],
    (8, 32): [("dense", dict(n=24, k=96)), ("sparse", dict(n=20, k=128)), ("qk", dict(t=30, d=20)),
              ("pv", dict(t=45, d=10))],
    (32, 64): [("dense", dict(n=12, k=256)), ("sparse", dict(n=30, k=192)), ("qk", dict(t=40, d=96)),
               ("pv", dict(t=100, d=16))],
}


def make_op(kind: str, dims: dict, group: int, rng) -> dict:
    """A random operation of the given shape for the RTL testbench (``accllm.sim.rtl_runner`` job format)."""
    import numpy as np

    name = f"{kind}_" + "_".join(f"{k}{v}" for k, v in dims.items())
    if kind in ("dense", "sparse"):
        n, k = dims["n"], dims["k"]
        zeros = rng.integers(0, 4, size=(n, k // group))
        a = rng.integers(-128, 128, size=k)
        if kind == "dense":
            return {"kind": kind, "name": name, "group": group, "a": a, "codes": rng.integers(0, 4, size=(n, k)),
                    "zeros": zeros}
        pos = np.sort(np.argsort(rng.random((n, k // 4, 4)), axis=-1)[..., :2], axis=-1).reshape(n, k // 2)
        return {"kind": kind, "name": name, "group": group, "a": a, "vals": rng.integers(0, 4, size=(n, k // 2)),
                "pos": pos, "zeros": zeros}
    t, d = dims["t"], dims["d"]
    if kind == "qk":
        return {"kind": kind, "name": name, "q": rng.integers(-128, 128, size=d), "k": rng.integers(0, 16, size=(t, d)),
                "kz": rng.integers(0, 16, size=t)}
    return {"kind": kind, "name": name, "p": rng.integers(-128, 128, size=t), "v": rng.integers(0, 16, size=(t, d)),
            "vz": rng.integers(0, 16, size=t)}


def core_stream_of(op: dict, lanes: int):
    """The :class:`~accllm.sim.core_stream.CoreStream` and golden accumulators of a :func:`make_op` operation."""
    from . import core_stream as cs
    from . import golden_core as gc

    kind, g = op["kind"], op.get("group")
    if kind == "dense":
        return cs.dense_stream(op["a"], op["codes"], op["zeros"], g, lanes), gc.dense_w2a8(op["a"], op["codes"], op["zeros"], g)
    if kind == "sparse":
        return (cs.sparse_stream(op["a"], op["vals"], op["pos"], op["zeros"], g, lanes),
                gc.sparse_w2a8(op["a"], op["vals"], op["pos"], op["zeros"], g))
    if kind == "qk":
        return cs.qk_stream(op["q"], op["k"], op["kz"], lanes), gc.qk_a8kv4(op["q"], op["k"], op["kz"])
    return cs.pv_stream(op["p"], op["v"], op["vz"], lanes), gc.pv_a8kv4(op["p"], op["v"], op["vz"])


def measure_rtl(lanes: int, group: int, shapes: list[tuple[str, dict]], seed: int = 0) -> list[dict]:
    """Run random operations of ``shapes`` on the Verilated core wrapper (``accllm.sim.rtl_native``; outputs
    checked against the golden core); one sample per call with its measured cycles and the model's beats and
    packets."""
    import numpy as np

    from .rtl_native import RtlCore

    rng = np.random.default_rng(seed)
    core = RtlCore(lanes, group)
    samples = []
    for kind, dims in shapes:
        stream, gold = core_stream_of(make_op(kind, dims, group, rng), lanes)
        out, rec = core.run(stream)
        bad = int((out != gold.numpy().reshape(-1)).sum())
        if bad:
            raise RuntimeError(f"the RTL core disagrees with the golden core on {bad} outputs of {kind} {dims}")
        beats, packets = op_shape(kind, lanes, **dims)
        if (beats, packets) != (rec["beats"], rec["packets"]):
            raise AssertionError(f"{kind} {dims}: the model counts {beats} beats / {packets} packets, the core "
                                 f"consumed {rec['beats']} / {rec['packets']}")
        samples.append({"lanes": lanes, "group": group, "kind": kind, "dims": dims, "beats": beats,
                        "packets": packets, "cycles": rec["cycles"]})
    return samples


def measure_engine(build, prompt_ids: list[int]) -> list[dict]:
    """Every core call the compiled engine makes for ``prompt_ids`` with the RTL core linked in (C/RTL
    co-simulation), as samples: the real shapes of a model, measured inside the kernel."""
    from accllm.hls.csim import CSim

    from . import rtl_native
    from .golden_core import MODE_NAMES

    sim = CSim(build, core="rtl")
    rtl_native.start_log(sim.lib)
    errors = rtl_native.load_stats(sim.lib)["protocol_errors"]
    for t in prompt_ids:
        sim.step(t)
    log = rtl_native.read_log(sim.lib)
    if rtl_native.load_stats(sim.lib)["protocol_errors"] != errors:
        raise RuntimeError("the RTL core broke the blackbox protocol during the engine run")
    lanes = sim.meta["engine"]["lanes"]
    return [{"lanes": lanes, "group": sim.meta["dims"]["group"], "kind": MODE_NAMES[r["mode"]],
             "dims": {"call": i}, "beats": r["beats"], "packets": r["packets"], "cycles": r["cycles"]}
            for i, r in enumerate(log)]


# ---------------------------------------------------------------- CLI: accllm perf

def _print_report(pm: PerfModel, dec: dict, pre: dict) -> None:
    e, b, m = pm.engine, pm.board, pm.model
    print(f"model {m.name}: {m.layers} layers, hidden {m.hidden}, {m.heads} heads ({m.kv_heads} KV), "
          f"{m.linear_params() / 1e9:.3f} B linear weights")
    print(f"board {b.name}: {b.title}, kernel clock {b.clock_mhz:g} MHz, {b.mem_bandwidth_gbs:g} GB/s "
          f"({b.memory}); kernel ports {b.mem_ports} x {b.port_bits} bit")
    print(f"engine: {e.cores} cores x {e.lanes} lanes, group {e.group}, {'2:4 sparse' if e.sparse else 'dense'} W2, "
          f"KV4, Λ {e.sinks}+{e.window}; {e.weight_bits_per_param(e.sparse):.3f} bits per weight read")
    print(f"core timing: {pm.timing.per_beat:.4f}*beats + {pm.timing.per_packet:.4f}*packets + {pm.timing.per_op:.2f} "
          f"cycles (fitted on RTL cycles, {pm.timing.source}); everything else assumed (accllm.sim.perf.Engine)")
    print(f"\nper decoder layer ({dec['phase']}, context {dec['context']}, {dec['attended_keys']} keys attended):")
    print(f"  {'op':24s} {'kind':7s} {'cycles':>10s} {'compute':>10s} {'memory':>10s} {'KB read':>10s}  bound")
    for r in dec["per_layer"]:
        print(f"  {r['op']:24s} {r['kind']:7s} {r['cycles']:10.0f} {r['compute_cycles']:10.0f} "
              f"{r['memory_cycles']:10.0f} {r['bytes'] / 1e3:10.1f}  {r['bound']}")
    print(f"\ndecode:  {dec['tokens_per_s']:.1f} token/s, {dec['bytes_per_token'] / 1e6:.1f} MB read per token, "
          f"bandwidth limit {dec['bandwidth_limit_tokens_per_s']:.1f} token/s -> achieved/limit "
          f"{dec['achieved_over_limit']:.2f}" + (f", {dec['tokens_per_j']:.2f} token/J at {b.power_w:g} W (assumed)"
                                                 if "tokens_per_j" in dec else ""))
    print(f"prefill: {pre['tokens']} tokens in {pre['seconds'] * 1e3:.1f} ms ({pre['tokens_per_s']:.1f} token/s, "
          f"{pre['ops_per_byte']:.0f} ops/byte)")
    if not dec["fits_in_memory"]:
        print(f"warning: the model needs {dec['footprint_bytes'] / 2**30:.2f} GiB, more than the board's "
              f"{b.extra.get('memory_gb')} GB")
    r = pm.resources()
    print("resources (ESTIMATE, not synthesis): " + ", ".join(
        f"{k} {v} of {r['available'][k]} ({r['fraction'][k]:.0%})" for k, v in r["used"].items()))


def run_cli(args) -> int:
    board = get_board(args.board)
    if args.power is not None:
        board = replace(board, power_w=args.power, power_source="--power")
    shape = load_model_shape(args.model)
    timing, _ = load_calibration()
    kw = {k: getattr(args, k) for k in ("sinks", "window") if getattr(args, k) is not None}
    engine = size_engine(board, lanes=args.lanes, group=args.group, sparse=not args.dense, **kw)
    if args.cores:
        engine = replace(engine, cores=args.cores).validate()
    pm = PerfModel(shape, board, engine, timing)
    dec, pre = pm.decode(args.context), pm.prefill(args.prompt)
    _print_report(pm, dec, pre)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": asdict(shape), "board": board.name, "engine": asdict(engine),
                                               "decode": dec, "prefill": pre, "resources": pm.resources()}, indent=1))
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("perf", help="project the engine's performance on a board (model calibrated on RTL cycles)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled", help=f"HF config.json (file or folder), 'bundled', or a preset: "
                                                      f"{', '.join(presets())}")
    p.add_argument("--board", default="u280", help="board name (see sim/data/boards.json)")
    p.add_argument("--lanes", type=int, default=16, help="multipliers per core (the RTL's LANES)")
    p.add_argument("--group", type=int, default=32, help="weight quantisation group (the RTL's GROUP)")
    p.add_argument("--cores", type=int, default=None, help="parallel cores (default: sized to the board's bandwidth)")
    p.add_argument("--dense", action="store_true", help="decoder linears without 2:4 sparsity")
    p.add_argument("--context", type=int, default=2048, help="tokens in the stream before the decode step")
    p.add_argument("--prompt", type=int, default=128, help="prompt length for prefill")
    p.add_argument("--sinks", type=int, default=None)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--power", type=float, default=None, help="watts for token/J (default: the board's assumed power)")
    p.add_argument("--json", default=None, help="also write the full result as JSON")
    p.set_defaults(func=run_cli)
