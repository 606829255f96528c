"""Analytical performance model of the accllm engine, calibrated on RTL cycle counts.

What is measured and what is assumed:

- The integer core's cycles per call come from a linear fit ``cycles = per_beat * beats + per_packet *
  packets + per_op`` to cycle counts of the RTL core behind its HLS blackbox wrapper, simulated in Verilator
  (``accllm.hw.rtl_native``), from ap_start to ap_done: what one ``accllm_core_hls_bb()`` call of the kernel
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

import math
from dataclasses import asdict, dataclass, replace

from accllm.sim.boards import Board, ModelShape
from accllm.sim.perf_fit import CoreTiming

KINDS = ("dense", "sparse", "qk", "pv")


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
