"""Analytical performance model of the accllm engine, calibrated on RTL cycle counts.

What is measured and what is assumed:

- The integer core's cycles per call come from a linear fit ``cycles = per_beat * beats + per_packet *
  packets + per_op`` to cycle counts of the RTL core behind its HLS blackbox wrapper, simulated in Verilator
  (``accllm.hw.rtl_native``), from ap_start to ap_done: what one ``accllm_core_hls_bb()`` call of the kernel
  costs (``bench/perf.py --calibrate`` writes ``data/perf_calibration.json``; the beat and packet counts are
  those of ``accllm.sim.core_stream``). It is checked on held-out shapes, other LANES/GROUP builds, and every
  core call of the bundled model's engine running with the RTL core.
  That core timing is used for QK and PV (the kernel's single core).
- Linears run on the engine (hw/rtl/accllm_engine.sv): their bytes are the weight-stream layout's
  (:func:`accllm.sim.weight_stream.layout_linears`, the compiler's blob map uses the same function), their
  cycles the engine fit of :mod:`accllm.sim.perf_engine` (memory efficiency and per-operation overhead measured
  on Verilated engine runs), on the board's engine format (:func:`accllm.sim.perf_engine.board_format`).
- Everything else is a stated assumption (:class:`Engine` fields): the memory efficiency of the KV and vector
  traffic, the vector unit for the non-linear work and a fixed hand-off gap between dependent operations. None of
  it is calibrated, and no board has run it.

Decode at batch 1 overlaps each operation's memory reads with its compute, so an operation takes
``max(compute, memory)`` cycles; the bandwidth limit of a board is ``bandwidth / bytes read per token``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from accllm.sim import perf_engine as pe
from accllm.sim import weight_stream as ws
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
    lm_head: str = "dense"         # the LM head as a linear in DENSE ("dense") or SPARSE ("sparse") mode
    head_bits: int = 4             # the LM head's weight code width (DENSE W4: accllm.sim.weight_stream.HEAD_WBITS)
    weight_bits: int = 2
    kv_bits: int = 4
    kv_scale_bits: int = 16        # fp16 scale per (token, head), K and V each
    kv_zero_bits: int = 4
    sinks: int = 4
    window: int = 1020
    mem_efficiency: float = 0.9    # assumed fraction of peak bandwidth that long sequential bursts reach
    vector_lanes: int = 64         # elements per cycle of the non-linear unit (norm, RoPE, softmax, SiLU, quantise)
    op_gap: int = 64               # assumed cycles of hand-off between dependent operations
    prefill_block: int = 32        # prefill: prompt tokens multiplied per weight pass (activations held on chip)

    def validate(self) -> "Engine":
        from .core_stream import check_lanes

        check_lanes(self.lanes)
        if self.group <= 0 or self.group % (2 * self.lanes):
            raise ValueError(f"group {self.group} must be a positive multiple of 2*lanes = {2 * self.lanes} "
                             f"(the core closes a group on a whole number of SPARSE beats)")
        if self.cores < 1:
            raise ValueError(f"cores must be >= 1, got {self.cores}")
        if self.prefill_block < 1:
            raise ValueError(f"prefill block must be >= 1 token, got {self.prefill_block}")
        if self.lm_head not in ("dense", "sparse"):
            raise ValueError(f"lm_head must be 'dense' or 'sparse', got {self.lm_head!r}")
        ws.wmax(self.head_bits)
        ws.wmax(self.weight_bits)
        return self

    @property
    def cache_tokens(self) -> int:
        return self.sinks + self.window


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
    engine_timing: pe.EngineTiming | None = None  # default: fitted on the stored engine runs (perf_engine.load_timing)

    def __post_init__(self):
        e = self.engine.validate()
        # the engine's format on this board, with the engine's cores spread over the board's channels
        self.fmt, self.channels = pe.board_format(self.board, e.group, e.lanes, e.sparse, e.weight_bits)
        self.fmt = replace(self.fmt, cores=max(1, e.cores // self.channels))
        self.rate = pe.channel_rate(self.board, self.fmt.channel_bits)
        self.engine_timing = self.engine_timing or pe.load_timing()

    def linear_layout(self, lm_head: bool = False) -> ws.Layout:
        """The decoder linears (and the LM head) in the engine's weight stream on this board."""
        return ws.layout(self.model, self.fmt, self.channels, self.engine.sparse, lm_head)

    def weight_bits_per_weight(self) -> float:
        """Bits read from memory per dense-equivalent decoder linear weight (the layout's)."""
        return self.linear_layout().bits_per_weight()

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

    def linear(self, layer: str, name: str, n: int, k: int, sparse: bool, tokens: int = 1,
               wbits: int | None = None) -> OpCost:
        """One weight pass of a linear for ``tokens`` activation vectors (decode 1; prefill a block of up to T, the
        engine's block mode: the cores go over each record once per vector, ``beat_cycles`` per core beat as
        measured on the Verilated engine)."""
        e = self.engine
        if k % e.group:
            raise ValueError(f"{layer}.{name}: input size {k} is not a multiple of the group {e.group}")
        mode = ws.MODE_SPARSE if sparse else ws.MODE_DENSE
        fmt = self.fmt if wbits is None else replace(self.fmt, wbits=wbits)
        nbytes = ws.layout_linears([(name, n, k)], fmt, self.channels, sparse).nbytes()
        words, beats = pe.channel_work(mode, fmt, n, k, self.channels)  # channel 0, the largest share
        t = self.engine_timing
        memory, compute = words / (self.rate * t.eff), tokens * beats * t.beat_cycles
        kind = "sparse" if sparse else "dense"
        return OpCost(layer, name, kind, n * k * tokens, beats * tokens, n * tokens, compute, nbytes, memory,
                      max(memory, compute) + t.overhead)

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
                self.linear("head", "lm_head", m.vocab, m.hidden, e.lm_head == "sparse", tokens_out, e.head_bits)]

    # -- phases
    def decode(self, context: int) -> dict:
        """One decode step with ``context`` tokens already in the stream (Λ: at most sinks+window cached)."""
        t = min(context + 1, self.engine.cache_tokens)
        ops = [op for i in range(self.model.layers) for op in self.layer_ops(i, 1, [t])] + self.head_ops(1)
        return self._summary("decode", ops, tokens=1, context=context, keys=t)

    def prefill(self, prompt: int) -> dict:
        """The prompt in blocks of ``engine.prefill_block`` (T) tokens: per block every linear streams its weights
        once against the block's activation vectors held on chip (the engine's block mode, time-multiplexed over
        the held record: a block costs max(one weight pass, T x the core beats)), so the weights are read
        ``ceil(prompt / T)`` times; attention runs per token over its Λ keys; one LM head (the last token's logits,
        DENSE W4). ``seconds`` is the time to first token."""
        if prompt < 1:
            raise ValueError(f"prompt must be >= 1 token, got {prompt}")
        e, m = self.engine, self.model
        ops = []
        for b0 in range(0, prompt, e.prefill_block):
            keys = [min(i + 1, e.cache_tokens) for i in range(b0, min(b0 + e.prefill_block, prompt))]
            ops += [op for i in range(m.layers) for op in self.layer_ops(i, len(keys), keys)]
        ops += self.head_ops(1)
        out = self._summary("prefill", ops, tokens=prompt, context=0, keys=min(prompt, e.cache_tokens))
        out.update(block=e.prefill_block, weight_passes=-(-prompt // e.prefill_block),
                   time_to_first_token_s=out["seconds"], block_buffer_bytes=prefill_buffer_bytes(m, e))
        return out

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
        weights = self.linear_layout().nbytes()
        head = ws.layout_linears([("lm_head", m.vocab, m.hidden)], replace(self.fmt, wbits=e.head_bits), self.channels,
                                 e.lm_head == "sparse")
        weights += head.nbytes() + (0 if m.tied else 2 * m.vocab * m.hidden)
        return weights + m.layers * e.cache_tokens * e.kv_bytes_per_token(m)

    # -- peaks and resources
    def peak_ops_per_s(self) -> float:
        """Dense-equivalent ops/s of the cores at the board clock (2 ops per MAC; 2:4 doubles the rate)."""
        per_cycle = self.engine.cores * self.engine.lanes * 2 * (2 if self.engine.sparse else 1)
        return per_cycle * self.board.clock_mhz * 1e6

    def resources(self) -> dict:
        """Device use of the engine from the Yosys results (accllm.sim.resources), plus the HLS kernel's assumed
        share (:data:`KERNEL_RESERVE`, not synthesised); raises ``ResourceError`` when it does not fit."""
        from accllm.sim.resources import board_config, fits, k_max_for

        e = self.engine
        config = board_config(self.board, e.cores, e.lanes, e.group, k_max_for(self.model, e.cache_tokens))
        return fits(self.board, config, reserve=KERNEL_RESERVE)


def prefill_buffer_bytes(m: ModelShape, e: Engine) -> int:
    """On-chip activation storage of a prefill block of T tokens as the kernel declares it (grows linearly with
    T): per token, nine float32 vector buffers of max_vec elements and the int8 activation codes (held twice:
    ap_int and plain int8)."""
    max_vec = max(m.hidden, m.heads * m.head_dim, m.intermediate, e.cache_tokens)
    return e.prefill_block * max_vec * (9 * 4 + 2)


def _add(a: OpCost, b: OpCost) -> OpCost:
    return OpCost(a.layer, a.op, a.kind, a.macs + b.macs, a.beats + b.beats, a.packets + b.packets,
                  a.compute_cycles + b.compute_cycles, a.bytes + b.bytes, a.memory_cycles + b.memory_cycles,
                  a.cycles + b.cycles)


# The HLS control kernel around the engine (non-linear units, dequantisation, program interpreter) is not
# synthesised by the open flow: an assumed reserve, added to the engine's Yosys figures.
KERNEL_RESERVE = {"lut": 60_000, "ff": 90_000, "dsp": 120, "bram36": 40}


def size_engine(board: Board, lanes: int = 16, group: int = 32, sparse: bool = True, dsp_fraction: float = 0.7,
                model: ModelShape | None = None, **kw) -> Engine:
    """An engine whose cores consume weights as fast as the board's memory delivers them (per channel: the cores
    of :func:`accllm.sim.perf_engine.board_format`, picked for ``model`` when given, as the compiler does), within
    ``dsp_fraction`` of the board's DSPs."""
    e = Engine(lanes=lanes, group=group, sparse=sparse, **kw)
    fmt, channels = pe.board_format(board, group, lanes, sparse, e.weight_bits, model=model)  # cores per channel
    cap = max(1, int(dsp_fraction * board.resources["dsp"]) // (lanes // 2)) // channels
    return replace(e, cores=channels * max(1, min(fmt.cores, cap))).validate()


def engine_dict(e: Engine) -> dict:
    return asdict(e)
