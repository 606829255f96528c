"""Flow steps owned by sim/: RTL simulation of the core on the compressed model's real tensors, and the
performance projection (see accllm.host.flow)."""
from __future__ import annotations

import json
from dataclasses import asdict

from accllm.host.flow import StepContext, StepResult


def real_layer_ops(checkpoint, prompt_ids: list[int], layer: int = 0, head: int = 0) -> list[dict]:
    """Core operations of one layer exactly as the golden model issues them for the last prompt token: the
    seven linears (2:4 sparse or dense, with their int8 inputs), then QK and PV of one head over the cache."""
    from accllm.sim.golden import GoldenModel

    g = GoldenModel.load(checkpoint)
    d = g.d
    trace = []
    for t in prompt_ids:
        trace.clear()
        g.step(t, trace)
    tr, lin = trace[layer], g.w.linears[layer]
    inputs = {"q_proj": "attn_in_a", "k_proj": "attn_in_a", "v_proj": "attn_in_a", "o_proj": "o_in_a",
              "gate_proj": "mlp_in_a", "up_proj": "mlp_in_a", "down_proj": "down_in_a"}
    ops = []
    for name, field in inputs.items():
        li, a = lin[name], tr[field].numpy()
        if li.vals is not None:
            ops.append({"kind": "sparse", "name": f"L{layer}.{name}", "group": d.group, "a": a,
                        "vals": li.vals.numpy(), "pos": li.pos.numpy(), "zeros": li.zeros.numpy()})
        else:
            ops.append({"kind": "dense", "name": f"L{layer}.{name}", "group": d.group, "a": a,
                        "codes": li.codes.numpy(), "zeros": li.zeros.numpy()})
    n = min(len(prompt_ids), d.slots)  # occupied cache slots
    kv_head = head // (d.heads // d.kv_heads)
    c, z = g.cache.codes[layer, :, kv_head, :n], g.cache.zeros[layer, :, kv_head, :n]
    ops.append({"kind": "qk", "name": f"L{layer}.h{head}.qk", "q": tr["q_a"][head].numpy(),
                "k": c[0].numpy(), "kz": z[0].numpy()})
    ops.append({"kind": "pv", "name": f"L{layer}.h{head}.pv", "p": tr["p_a"][head, :n].numpy(),
                "v": c[1].numpy(), "vz": z[1].numpy()})
    return ops


def rtlsim(ctx: StepContext) -> StepResult:
    from transformers import AutoTokenizer

    from accllm.sim.rtl_runner import build_core, run_job

    e = ctx.flow.engine
    tok = AutoTokenizer.from_pretrained(ctx.artifacts["compress"])
    ops = real_layer_ops(ctx.artifacts["compress"], tok.encode(ctx.flow.evaluation.prompts[0]))
    out = ctx.step_dir("rtlsim")
    report = run_job(build_core(e.lanes, e.group_size), ops, work_dir=out / "work")
    summary = {k: report[k] for k in ("lanes", "group", "by_kind", "mismatches", "outputs", "cycles", "sim_cycles_per_s")}
    summary["ops"] = [{k: r[k] for k in ("name", "kind", "outputs", "beats", "cycles", "utilization", "mismatches")}
                      for r in report["ops"]]
    path = out / "rtl.json"
    path.write_text(json.dumps(summary, indent=1))
    return StepResult(path, {"mismatches": report["mismatches"], "cycles": report["cycles"]})


def verify_rtlsim(ctx: StepContext) -> dict:
    r = json.loads(ctx.artifacts["rtlsim"].read_text())
    if r["mismatches"]:
        raise AssertionError(f"RTL core differs from the golden core in {r['mismatches']} outputs")
    return {"outputs_compared": r["outputs"], "mismatches": r["mismatches"]}


def perf(ctx: StepContext) -> StepResult:
    """Projected decode/prefill figures of this model on the flow's board (core cycles calibrated on RTL)."""
    from accllm.sim.perf import PerfModel, get_board, load_calibration, load_model_shape, size_engine

    e, board = ctx.flow.engine, get_board(ctx.flow.board)
    shape = load_model_shape(str(ctx.artifacts["compress"]))
    engine = size_engine(board, lanes=e.lanes, group=e.group_size, sparse=ctx.flow.compression.sparsity == "2:4",
                         sinks=e.sinks, window=e.window)
    pm = PerfModel(shape, board, engine, load_calibration()[0])
    context = 4 * (e.sinks + e.window)
    result = {"board": board.name, "engine": asdict(engine), "decode": pm.decode(context), "prefill": pm.prefill(128),
              "resources_estimate": pm.resources()}
    path = ctx.step_dir("perf") / "perf.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    return StepResult(path, {"decode_tokens_per_s": result["decode"].get("tokens_per_s")})
