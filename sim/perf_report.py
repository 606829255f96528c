"""``accllm perf``: the analytical model's projection of a model on a board, printed (and as JSON)."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from accllm.sim.boards import get_board, load_model_shape, presets
from accllm.sim.perf import PerfModel, size_engine
from accllm.sim.perf_fit import load_calibration


def resources_or_error(pm: PerfModel) -> dict:
    """The engine's Yosys-based device use, or ``{"error": ...}`` for a configuration without synthesis results
    or one that does not fit (the flow's perf step refuses those instead)."""
    from accllm.sim.resources import ResourceError

    try:
        return pm.resources()
    except ResourceError as e:
        return {"error": str(e)}


def _print_report(pm: PerfModel, dec: dict, pre: list[dict]) -> None:
    e, b, m = pm.engine, pm.board, pm.model
    print(f"model {m.name}: {m.layers} layers, hidden {m.hidden}, {m.heads} heads ({m.kv_heads} KV), "
          f"{m.linear_params() / 1e9:.3f} B linear weights")
    print(f"board {b.name}: {b.title}, kernel clock {b.clock_mhz:g} MHz, {b.mem_bandwidth_gbs:g} GB/s "
          f"({b.memory}); kernel ports {b.mem_ports} x {b.port_bits} bit")
    print(f"engine: {e.cores} cores x {e.lanes} lanes, group {e.group}, {'2:4 sparse' if e.sparse else 'dense'} "
          f"W{e.weight_bits}, LM head {e.lm_head} W{e.head_bits}, KV4, Λ {e.sinks}+{e.window}; prefill blocks of "
          f"T = {e.prefill_block}; {pm.weight_bits_per_weight():.3f} bits per weight read "
          f"(weight-stream layout, {pm.channels} x {pm.fmt.channel_bits}-bit channels x {pm.fmt.cores} cores)")
    t = pm.engine_timing
    print(f"engine timing (linears): memory efficiency {t.eff:.3f}, {t.overhead:.0f} cycles per operation, "
          f"{t.beat_cycles:.3f} cycles per core beat in block mode (fitted on {t.source})")
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
    for p in pre:
        print(f"prefill: {p['tokens']} tokens, time to first token {p['seconds'] * 1e3:.1f} ms beside decode "
              f"{dec['tokens_per_s']:.1f} token/s "
              f"({p['tokens_per_s']:.1f} token/s; blocks of T = {p['block']}: {p['weight_passes']} weight passes, "
              f"{p['bytes'] / 1e9:.2f} GB read, {p['ops_per_byte']:.0f} ops/byte; on-chip block buffers "
              f"{p['block_buffer_bytes'] / 2**20:.1f} MiB)")
    if not dec["fits_in_memory"]:
        print(f"warning: the model needs {dec['footprint_bytes'] / 2**30:.2f} GiB, more than the board's "
              f"{b.extra.get('memory_gb')} GB")
    r = resources_or_error(pm)
    if "error" in r:
        print(f"resources: {r['error']}")
        return
    print(f"resources ({r['source']}; {r['basis']}; kernel reserve assumed {r['reserve']}): " + ", ".join(
        f"{k} {v:,.0f} of {r['available'][k]:,} ({r['fraction'][k]:.0%})" for k, v in r["used"].items()))


def run_cli(args) -> int:
    board = get_board(args.board)
    if args.power is not None:
        board = replace(board, power_w=args.power, power_source="--power")
    shape = load_model_shape(args.model)
    timing, _ = load_calibration()
    kw = {k: getattr(args, k) for k in ("sinks", "window") if getattr(args, k) is not None}
    engine = size_engine(board, lanes=args.lanes, group=args.group, sparse=not args.dense, model=shape, **kw)
    if args.cores:
        engine = replace(engine, cores=args.cores).validate()
    engine = replace(engine, prefill_block=args.prefill_block).validate()
    pm = PerfModel(shape, board, engine, timing)
    dec, pre = pm.decode(args.context), [pm.prefill(n) for n in args.prompt]
    _print_report(pm, dec, pre)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": asdict(shape), "board": board.name, "engine": asdict(engine),
                                               "decode": dec, "prefill": pre[0], "prefill_prompts": pre,
                                               "resources": resources_or_error(pm)}, indent=1))
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
    p.add_argument("--prompt", type=int, nargs="+", default=[128, 1024],
                   help="prompt length(s) for prefill (time to first token)")
    p.add_argument("--prefill-block", type=int, default=32,
                   help="prefill block T: prompt tokens per weight pass (the compile option of the same name)")
    p.add_argument("--sinks", type=int, default=None)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--power", type=float, default=None, help="watts for token/J (default: the board's assumed power)")
    p.add_argument("--json", default=None, help="also write the full result as JSON")
    p.set_defaults(func=run_cli)
