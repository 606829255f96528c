"""Measured decode rate of the engine (hw/rtl/accllm_engine.sv) on a board's memory channels.

    python bench/engine.py [--model llama-2-7b] [--board u280] [--latency 128] [--out bench/results/engine.json]
    python bench/engine.py --small        # the CI configuration: bundled model dims on KV260

Every linear of one decode token — the seven of a decoder layer (2:4 W2) and the LM head as one more integer
layer (DENSE W4) — runs on the Verilated engine (cocotb), with random weights in the real weight-stream format
(fp16 group scales) and every output checked against the golden core. Prefill: the decoder linears run again in
block mode, nt = T/4, T/2 and T activation vectors per weight pass (the engine is built with T = ``--block``);
their cycles give the block timing of the perf model (accllm.sim.perf_engine.fit_block) and the engine-only time
to first token (linears of ceil(n/T) blocks + one LM head) beside the perf model's whole prefill. Memory: one HBM2 pseudo-channel (or HP port) per
engine channel, at most ``rate`` full-width beats per kernel cycle (channel bandwidth / (word bytes x kernel
clock), capped at one word) and ``--latency`` cycles from address to first data, bursts overlapped.

What is simulated and how it scales (stated in the JSON): the engine's channels share nothing but the activation
broadcast and start/done, and the weight rows of a linear are split over channels in whole tiles, so channel 0
(which gets the largest share) is simulated alone and its cycles are the engine's (all channels must finish).
One decoder layer is simulated; all layers of the model have the same shapes, so a token is ``layers`` x that
layer + the LM head. Cycles are the engine's own CYCLES register (start to done of each operation); the control
kernel's work between operations (norms, RoPE, softmax, activation quantisation, register writes), attention
over the KV cache, and HBM effects beyond bandwidth and latency (refresh, bank conflicts) are not included.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from accllm.hw import engine_runner as er
from accllm.sim import golden_core as gc
from accllm.sim import weight_stream as ws
from accllm.sim.boards import get_board, load_model_shape

HERE = Path(__file__).resolve().parent
REFERENCES = {  # Llama-2-7B decode on U280, as publicly quoted (DESIGN.md)
    "AccLLM": {"tokens_per_s": 164, "source": "AccLLM, arXiv 2505.03745, Table VII (U280, 225 MHz, 2:4 + Λ + W2A8KV4)"},
    "FlightLLM": {"tokens_per_s": 55, "source": "FlightLLM on U280 as compared in AccLLM, arXiv 2505.03745, Table VII"},
}


def channel_config(board, model, group: int, lanes: int, wbits: int, k_max: int,
                   block: int = 1) -> tuple[er.EngineConfig, int, float]:
    """One channel of the board's engine (decoding W2 and W4, T = ``block``): (config, channels of the board, peak
    beats per cycle per channel); cores per channel picked for ``wbits``-bit decoder linears."""
    width = next((w for w in ws.CHANNEL_BITS if w >= board.port_bits), ws.CHANNEL_BITS[-1])
    from accllm.sim.perf_engine import pick_cores, token_linears

    cores = pick_cores(token_linears(model), wbits, group, lanes, width, int(board.mem_ports))
    per_channel = board.mem_bandwidth_gbs * 1e9 / board.mem_ports
    rate = min(1.0, per_channel / (width / 8 * board.clock_mhz * 1e6))
    burst = min(64, 4096 // (width // 8))
    cfg = er.EngineConfig(channels=1, cores=cores, lanes=lanes, group=group, wbits=4, channel_bits=width,
                          burst=burst, fifo_depth=4 * burst, k_max=k_max, block=block)
    return cfg, int(board.mem_ports), rate


def token_ops(model, cfg: er.EngineConfig, channels: int, seed: int = 0, wbits: int = 2,
              nt: int = 0) -> list[dict]:
    """Channel 0's share of every linear of one layer (random 2:4 codes of ``wbits`` bits) and, for decode
    (``nt`` = 0), of the LM head (random DENSE 4-bit codes), in the format; ``nt`` > 0: the layer's linears on a
    block of ``nt`` activation vectors."""
    rng = np.random.default_rng(seed)
    ops = []
    head = [] if nt else [("lm_head", model.vocab, model.hidden)]
    for name, n, k in model.linears() + head:
        r0, r1 = ws.channel_rows(n, cfg.cores, channels)[0]
        rows = r1 - r0
        a = rng.integers(-128, 128, (nt, k) if nt else k)
        if name == "lm_head":
            wm = gc.wmax(ws.HEAD_WBITS)
            op = {"kind": "dense", "name": name, "a": a, "codes": rng.integers(0, wm + 1, (rows, k)),
                  "zeros": rng.integers(0, wm + 1, (rows, k // cfg.group)), "wbits": ws.HEAD_WBITS}
        else:
            wm = gc.wmax(wbits)
            pos = np.sort(np.argsort(rng.random((rows, k // 4, 4)), -1)[..., :2], -1).reshape(rows, k // 2)
            op = {"kind": "sparse", "name": name, "a": a, "vals": rng.integers(0, wm + 1, (rows, k // 2)), "pos": pos,
                  "zeros": rng.integers(0, wm + 1, (rows, k // cfg.group)), "wbits": wbits}
        ops.append(dict(er.make_op(op, cfg, seed=len(ops)), n=n))
    return ops


def run(model_spec: str, board_name: str, latency: int, seed: int = 0, lanes: int = 16, wbits: int = 2,
        block: int = 32) -> dict:
    from tqdm import tqdm

    model, board = load_model_shape(model_spec), get_board(board_name)
    group = 32
    cfg, channels, rate = channel_config(board, model, group, lanes, wbits, max(k for _, _, k in model.linears()), block)
    t0 = time.perf_counter()
    eng = er.build_engine(cfg)
    build_s = time.perf_counter() - t0
    ops = token_ops(model, cfg, channels, seed, wbits)
    nts = sorted({max(1, block // 4), max(1, block // 2), block} - {1})
    block_ops = [op for i, nt in enumerate(nts) for op in token_ops(model, cfg, channels, seed + 10 + i, wbits, nt)]
    with tqdm(total=1, desc=f"engine sim ({len(ops)} + {len(block_ops)} block operations)") as bar:
        rep = er.run_job(eng, ops + block_ops, seed=seed + 1, latency=latency, rate=rate)
        bar.update(1)
    if rep["mismatches"]:
        raise SystemExit(f"engine outputs differ from the golden core: {rep['by_kind']}")
    blk_rep, rep["ops"] = rep["ops"][len(ops):], rep["ops"][:len(ops)]
    f = board.clock_mhz * 1e6
    per_op = []
    for r, op in zip(rep["ops"], ops):
        words = r["words_read"][0]
        per_op.append({"name": r["name"], "rows_total": op["n"], "rows_channel0": r["rows"][0], "k": r["k"],
                       "cycles": r["cycles"], "words": words, "bytes": words * cfg.channel_bits // 8,
                       "words_per_cycle": words / r["cycles"], "mismatches": r["mismatches"]})
    layer = [p for p in per_op if p["name"] != "lm_head"]
    head = next(p for p in per_op if p["name"] == "lm_head")
    layer_cycles = sum(p["cycles"] for p in layer)
    token_cycles = model.layers * layer_cycles + head["cycles"]
    fmt = cfg.fmt_for(wbits)
    lay = ws.layout(model, fmt, channels, sparse=True, lm_head=True)
    blk = []
    for r, op in zip(blk_rep, block_ops):
        words = r["words_read"][0]
        beats = -(-r["rows"][0] // fmt.cores) * (r["k"] // fmt.group) * fmt.beats_per_record(ws.MODE_SPARSE)
        blk.append({"name": r["name"], "nt": r["nt"], "rows_total": op["n"], "rows_channel0": r["rows"][0],
                    "k": r["k"], "words": words, "beats": beats, "cycles": r["cycles"],
                    "cycles_per_vector": r["cycles"] / r["nt"], "mismatches": r["mismatches"]})
    one = {p["name"]: p for p in per_op}
    for b in blk:  # the same linear at nt = 1 (decode), measured above
        b["words_nt1"], b["cycles_nt1"] = one[b["name"]]["words"], one[b["name"]]["cycles"]
    token_bytes = lay.nbytes()
    seconds = token_cycles / f
    peak_gbs = board.mem_ports * min(rate, 1.0) * cfg.channel_bits / 8 * f / 1e9
    tok_s = 1.0 / seconds
    limit_tok_s = board.mem_bandwidth_gbs * 1e9 / token_bytes
    sim_words = sum(p["words"] for p in per_op)
    sim_cycles = sum(p["cycles"] for p in per_op)
    return {
        "model": model.name, "board": board_name, "clock_mhz": board.clock_mhz,
        "engine": {"channels": channels, **{k: v for k, v in cfg.__dict__.items() if k not in ("channels", "wbits")},
                   "wbits": wbits, "build_wbits": cfg.wbits, "record_bits_sparse": fmt.record_bits(ws.MODE_SPARSE),
                   "lm_head": f"dense W{ws.HEAD_WBITS}"},
        "memory_model": {"latency_cycles": latency, "beats_per_cycle_peak": rate,
                         "channel_gbs": board.mem_bandwidth_gbs / board.mem_ports, "board_gbs": board.mem_bandwidth_gbs,
                         "peak_gbs_at_kernel_clock": peak_gbs, "stalls": "none beyond the bandwidth limit"},
        "format": {"bits_per_weight": lay.bits_per_weight(), "token_bytes": token_bytes,
                   "by_linear": lay.by_linear()},
        "simulated": {"scope": "channel 0 of one decoder layer + the LM head; token = layers x layer + LM head",
                      "operations": per_op, "cycles": sim_cycles, "words": sim_words,
                      "memory_utilization": sim_words / sim_cycles / rate,
                      "mismatches": rep["mismatches"], "axi_errors": rep["axi_errors"],
                      "max_outstanding_bursts": rep["max_outstanding_bursts"][0]},
        "block": {"scope": "channel 0's share of each decoder linear of one layer, nt vectors per weight pass",
                  "operations": blk, "mismatches": sum(b["mismatches"] for b in blk)},
        "token": {"cycles": token_cycles, "seconds": seconds, "tokens_per_s": tok_s, "bytes": token_bytes,
                  "achieved_gbs": token_bytes / seconds / 1e9, "achieved_over_peak": token_bytes / seconds / 1e9 / board.mem_bandwidth_gbs,
                  "bandwidth_limit_tokens_per_s": limit_tok_s, "over_limit": tok_s / limit_tok_s},
        "references": REFERENCES,
        "not_included": ["control kernel work between operations (norms, RoPE, softmax, SiLU, activation quantisation, "
                         "register writes)", "attention over the KV cache (QK/PV)", "HBM refresh and bank effects"],
        "build_seconds": build_s, "sim_seconds": rep["run_seconds"],
        "host": {"python": sys.version.split()[0], "machine": platform.machine()},
    }


def perf_check(res: dict, calib: dict, model_spec: str, board_name: str) -> dict:
    """The perf model (accllm.sim.perf_engine) fitted on another configuration's measured operations, predicting
    this run's operations and token: the held-out error."""
    from dataclasses import replace

    from accllm.sim import perf_engine as pe

    t = pe.fit_timing(calib["simulated"]["operations"], calib["memory_model"]["beats_per_cycle_peak"],
                      f"bench/engine.py {calib['model']} on {calib['board']}")
    e = res["engine"]
    fmt = ws.StreamFormat(e["wbits"], e["group"], e["lanes"], e["cores"], e["channel_bits"])
    rate = res["memory_model"]["beats_per_cycle_peak"]
    pred = pe.token_cycles(load_model_shape(model_spec), fmt, e["channels"], rate, t)
    ops = []
    for o in res["simulated"]["operations"]:
        head = o["name"] == "lm_head"  # DENSE W4, the others 2:4 at the decoder's width
        words, beats = pe.channel_work(ws.MODE_DENSE if head else ws.MODE_SPARSE,
                                       replace(fmt, wbits=ws.HEAD_WBITS) if head else fmt, o["rows_total"], o["k"],
                                       e["channels"])
        c = pe.op_cycles(words, beats, rate, t)
        ops.append({"name": o["name"], "measured": o["cycles"], "predicted": c, "error": c / o["cycles"] - 1})
    tok = res["token"]["cycles"]
    return {"timing": t.to_json(), "held_out": f"fitted on {calib['model']} / {calib['board']}, predicting "
            f"{res['model']} / {res['board']}", "operations": ops,
            "token_cycles_predicted": pred["token"], "token_cycles_measured": tok,
            "token_error": pred["token"] / tok - 1, "max_op_error": max(abs(o["error"]) for o in ops)}


def prefill_figures(res: dict, model_spec: str, board_name: str, prompts=(128, 1024)) -> dict:
    """Time to first token beside decode token/s: (a) the engine alone, from this run's measured operations (the
    linears of ceil(n/T) blocks, a partial block by the block timing fitted on this run, + one LM head); (b) the
    perf model's whole prefill (accllm.sim.perf: attention, vector work and hand-offs added; its engine timing
    fitted on the stored --small runs)."""
    from dataclasses import replace

    from accllm.sim import perf_engine as pe
    from accllm.sim.perf import PerfModel, size_engine
    from accllm.sim.perf_fit import load_calibration

    model, board = load_model_shape(model_spec), get_board(board_name)
    e, f = res["engine"], res["clock_mhz"] * 1e6
    T, rate = e["block"], res["memory_model"]["beats_per_cycle_peak"]
    blk = [b for b in res["block"]["operations"] if b["nt"] == T]
    t = pe.fit_block(res["block"]["operations"], rate,
                     pe.fit_timing(res["simulated"]["operations"], rate, "this run"))
    full = sum(b["cycles"] for b in blk)  # one decoder layer, a full block
    head = next(o["cycles"] for o in res["simulated"]["operations"] if o["name"] == "lm_head")
    fmt = ws.StreamFormat(e["wbits"], e["group"], e["lanes"], e["cores"], e["channel_bits"])
    engine_only = {}
    for n in prompts:
        rest = n % T
        part = sum(pe.op_cycles(*pe.channel_work(ws.MODE_SPARSE, fmt, rows, k, e["channels"]), rate, t, rest)
                   for _, rows, k in model.linears()) if rest else 0.0
        cyc = model.layers * ((n // T) * full + part) + head
        engine_only[str(n)] = {"cycles": cyc, "seconds": cyc / f, "weight_passes": -(-n // T),
                               "weight_bytes": -(-n // T) * res["format"]["token_bytes"]}
    timing, _ = load_calibration()
    eng = replace(size_engine(board, lanes=e["lanes"], group=e["group"], model=model), prefill_block=T).validate()
    pm = PerfModel(model, board, eng, timing)
    dec = pm.decode(2048)
    pre = {str(n): pm.prefill(n) for n in prompts}
    return {"block": T, "beat_cycles_fitted": t.beat_cycles,
            "decode_tokens_per_s": {"engine_linears_measured": res["token"]["tokens_per_s"],
                                    "perf_model": dec["tokens_per_s"]},
            "time_to_first_token_s": {"engine_linears_measured": {n: v["seconds"] for n, v in engine_only.items()},
                                      "perf_model": {n: p["seconds"] for n, p in pre.items()}},
            "engine_linears_measured": engine_only,
            "perf_model": {n: {k: p[k] for k in ("seconds", "cycles", "bytes", "weight_passes", "tokens_per_s")}
                           for n, p in pre.items()},
            "token_by_token_weight_bytes": {str(n): n * res["format"]["token_bytes"] for n in prompts}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="llama-2-7b", help="model dims: a preset, 'bundled' or a config.json")
    p.add_argument("--board", default="u280")
    p.add_argument("--latency", type=int, default=128, help="memory read latency in kernel cycles (>= 100)")
    p.add_argument("--small", action="store_true", help="CI configuration: bundled model dims on KV260")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, default=32, help="T: activation vectors per weight pass (prefill block)")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/engine.json "
                   "(engine_small.json with --small)")
    p.add_argument("--calibration", type=Path, default=HERE / "results" / "engine_small.json",
                   help="a --small run's JSON: the perf model is fitted on it and checked on this run")
    a = p.parse_args(argv)
    if a.small:
        a.model, a.board = "bundled", "kv260"
    a.out = a.out or HERE / "results" / ("engine_small.json" if a.small else "engine.json")
    res = run(a.model, a.board, a.latency, a.seed, block=a.block)
    res["prefill"] = prefill_figures(res, a.model, a.board)
    if not a.small and a.calibration.is_file():
        res["perf_model"] = perf_check(res, json.loads(a.calibration.read_text()), a.model, a.board)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    if a.small:  # the perf model's engine timing is fitted on these measurements
        from accllm.sim.perf_engine import save_timing_data

        src = f"bench/engine.py --small (bundled dims on kv260, Verilated accllm_engine, latency {a.latency} cycles)"
        print(f"wrote {save_timing_data(res, src)}")
    t = res["token"]
    print(f"{res['model']} on {res['board']} ({res['engine']['channels']} channels x {res['engine']['cores']} cores, "
          f"{res['clock_mhz']} MHz): {t['cycles']} cycles/token, {t['bytes'] / 1e9:.3f} GB/token, "
          f"{t['tokens_per_s']:.1f} token/s = {t['over_limit']:.3f} of the format's bandwidth limit "
          f"({t['bandwidth_limit_tokens_per_s']:.1f}); memory utilisation in the sim "
          f"{res['simulated']['memory_utilization']:.3f}")
    pf = res["prefill"]
    for n, s_ in pf["time_to_first_token_s"]["perf_model"].items():
        print(f"prefill {n} tokens (T = {pf['block']}): time to first token {s_ * 1e3:.1f} ms (perf model), engine "
              f"linears alone {pf['time_to_first_token_s']['engine_linears_measured'][n] * 1e3:.1f} ms (measured); "
              f"decode {pf['decode_tokens_per_s']['perf_model']:.1f} token/s (perf model)")
    blk = res["block"]["operations"]
    print(f"block mode: {len(blk)} operations, {res['block']['mismatches']} mismatches; words per weight pass equal "
          f"to decode's: {all(b['words'] == b['words_nt1'] for b in blk)}; {pf['beat_cycles_fitted']:.3f} cycles "
          f"per core beat")
    if "perf_model" in res:
        pm = res["perf_model"]
        print(f"perf model ({pm['held_out']}): token {pm['token_cycles_predicted']:.0f} cycles predicted, "
              f"error {pm['token_error']:+.3f}; worst operation {pm['max_op_error']:.3f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
