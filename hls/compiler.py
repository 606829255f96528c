"""``accllm compile``: exported QONNX decoder layers -> engine program + packed weight blob + HLS project.

The compiler reads each layer graph with qonnx's ModelWrapper (shape inference as clean-up), checks that
every node is one the engine implements (an unsupported op or shape is an error naming the node), and
recovers the engine's integers from the graph itself: the 2-bit codes of each linear from its weight
``Quant`` node (``code = round(W / scale + zeropt)``, QONNX semantics), its scales and zero points, the
2:4 pattern from the pruned codes; the quantiser widths (int8 inputs/Q/P, uint4 K/V) are checked on the
activation ``Quant`` nodes. Norm weights come from the graph initialisers; the embedding, final norm and
RoPE frequencies from the export's ``extras.safetensors``.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from accllm.hls import blob as blobfmt
from accllm.hls import program as prog
from accllm.hls.export import read_manifest
from accllm.sim import golden_core as core
from accllm.sim.golden import LINEAR_PARENT, LINEARS, Dims, GoldenWeights, LinearInts, trace_fields

# ONNX ops of a decoder layer graph and the engine unit that implements them.
SUPPORTED_OPS = {
    "Quant": "integer core operands (int8 activations, uint2 weights, uint4 KV)",
    "MatMul": "integer core (dense / sparse / QK / PV modes)",
    "Softmax": "softmax unit", "Sigmoid": "SiLU unit", "Pow": "RMSNorm", "ReduceMean": "RMSNorm",
    "Sqrt": "RMSNorm", "Div": "RMSNorm / quantiser scale", "Mul": "dequantisation / RoPE / norm weight",
    "Add": "residual / RoPE", "Sub": "RoPE", "Neg": "RoPE", "Abs": "quantiser statistics",
    "ReduceMax": "quantiser statistics", "ReduceMin": "quantiser statistics", "Clip": "quantiser statistics",
    "Round": "quantiser zero point", "Where": "Λ mask / quantiser", "Reshape": "layout", "Transpose": "layout",
    "Flatten": "layout", "Slice": "layout", "Concat": "layout", "Unsqueeze": "layout", "Squeeze": "layout",
    "Gather": "layout", "Shape": "layout", "Cast": "layout", "Tile": "GQA head sharing", "Expand": "GQA head sharing",
    "Constant": "constant", "Identity": "layout", "Range": "Λ mask", "Equal": "Λ mask", "Less": "Λ mask",
    "LessOrEqual": "Λ mask", "Greater": "Λ mask", "GreaterOrEqual": "Λ mask / quantiser", "And": "Λ mask",
    "Or": "Λ mask", "Not": "Λ mask",
}

DEFAULT_LANES = 16


@dataclass
class CompileResult:
    out_dir: Path
    program: Path
    blob: Path
    hls_dir: Path
    instructions: int
    blob_bytes: int
    seconds: float


def _load_layer_graph(path: Path):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    if not path.is_file():
        raise FileNotFoundError(f"layer graph {path} is missing from the export")
    mw = ModelWrapper(str(path)).transform(InferShapes())
    for node in mw.graph.node:
        if node.op_type not in SUPPORTED_OPS:
            raise ValueError(f"{path.name}: node {node.name!r} has op {node.op_type!r}, which the engine does not implement")
    return mw


def _quant_attrs(node) -> dict:
    from onnx import helper

    out = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in out.items()}


def _linear_from_graph(mw, graph_name: str, lin_name: str, dims: Dims) -> LinearInts:
    """Codes / zero points / scales of one linear from its weight ``Quant`` node (QONNX semantics)."""
    from qonnx.custom_op.general.quant import quant

    parent = LINEAR_PARENT[lin_name]
    wq = [n for n in mw.graph.node if n.op_type == "Quant" and f"/{parent}/{lin_name}/weight_quant/" in n.name]
    aq = [n for n in mw.graph.node if n.op_type == "Quant" and f"/{parent}/{lin_name}/input_quant/" in n.name]
    if len(wq) != 1 or len(aq) != 1:
        raise ValueError(f"{graph_name}: expected one weight and one input Quant node for {lin_name}, found {len(wq)} and {len(aq)}")
    wq, aq = wq[0], aq[0]
    a_attr, a_bits = _quant_attrs(aq), mw.get_initializer(aq.input[3])
    if a_bits is None or int(a_bits) != 8 or a_attr.get("signed") != 1:
        raise ValueError(f"{graph_name}: node {aq.name!r}: the engine needs signed int8 inputs, got bit width {a_bits}, signed={a_attr.get('signed')}")
    w, scale, zp, bits = (mw.get_initializer(i) for i in wq.input)
    if w is None or scale is None or zp is None or bits is None:
        raise ValueError(f"{graph_name}: node {wq.name!r}: weight, scale, zero point and bit width must be constants")
    attr = _quant_attrs(wq)
    if int(bits) != 2 or attr.get("signed") != 0 or attr.get("narrow") != 0:
        raise ValueError(f"{graph_name}: node {wq.name!r}: the engine needs unsigned 2-bit weights, got {int(bits)}-bit signed={attr.get('signed')}")
    n, k = dims.linear_shape(lin_name)
    g = dims.group
    if w.shape != (n, k // g, g) or scale.shape != (n, k // g, 1) or zp.shape != (n, k // g, 1):
        raise ValueError(f"{graph_name}: node {wq.name!r}: weight/scale/zero point shapes {w.shape}/{scale.shape}/{zp.shape} "
                         f"do not match a [{n}, {k}] linear with groups of {g}")
    deq = quant(w, scale, zp, bits, signed=0, narrow=0, rounding_mode=attr.get("rounding_mode", "ROUND"))
    codes = np.rint(deq / scale + zp).astype(np.int64).reshape(n, k)
    zeros = torch.from_numpy(np.rint(zp).astype(np.int64).reshape(n, k // g))
    lin = LinearInts(torch.from_numpy(codes), zeros, torch.from_numpy(scale.reshape(n, k // g).astype(np.float32)))
    if dims.sparse:
        try:
            lin.vals, lin.pos = core.sparse_from_dense(lin.codes, zeros, g)
        except ValueError as e:
            raise ValueError(f"{graph_name}: node {wq.name!r}: {e}") from None
    return lin


def _check_attention_quant(mw, graph_name: str) -> None:
    want = {"q_quant": (8, 1), "p_quant": (8, 1), "k_quant": (4, 0), "v_quant": (4, 0)}
    for key, (bits, signed) in want.items():
        nodes = [n for n in mw.graph.node if n.op_type == "Quant" and f"/sdpa/{key}/" in n.name]
        if len(nodes) != 1:
            raise ValueError(f"{graph_name}: expected one {key} Quant node in the attention, found {len(nodes)}")
        b = mw.get_initializer(nodes[0].input[3])
        if b is None or int(b) != bits or _quant_attrs(nodes[0]).get("signed") != signed:
            raise ValueError(f"{graph_name}: node {nodes[0].name!r}: the engine needs {'int' if signed else 'uint'}{bits}, "
                             f"got bit width {b}, signed={_quant_attrs(nodes[0]).get('signed')}")


def weights_from_export(export_path, progress: bool = True) -> GoldenWeights:
    """Everything the engine needs, read back from the exported graphs (what the compiler compiles)."""
    from safetensors.torch import load_file
    from tqdm import tqdm

    d, manifest = read_manifest(export_path)
    dims = Dims(**manifest["dims"])
    if len(manifest["layers"]) != dims.layers:
        raise ValueError(f"{d}: manifest lists {len(manifest['layers'])} layer graphs for a {dims.layers}-layer model")
    linears, norms = [], []
    for i, name in enumerate(tqdm(manifest["layers"], desc="read graphs", disable=not progress)):
        mw = _load_layer_graph(d / name)
        _check_attention_quant(mw, name)
        linears.append({lin: _linear_from_graph(mw, name, lin, dims) for lin in LINEARS})
        pair = []
        for key in ("input_layernorm", "post_attention_layernorm"):
            t = mw.get_initializer(f"layer.{key}.weight")
            if t is None or t.shape != (dims.hidden,):
                raise ValueError(f"{name}: no [{dims.hidden}] initializer layer.{key}.weight (RMSNorm weight)")
            pair.append(torch.from_numpy(t.astype(np.float32)))
        norms.append(tuple(pair))
    ex = load_file(str(d / manifest["extras"]))
    return GoldenWeights(dims, ex["embed"].float(), norms, ex["final_norm"].float(), ex["inv_freq"].float(), linears)


def trace_offsets(dims: Dims) -> dict[str, int]:
    off, out = 0, {}
    for name, shape in trace_fields(dims):
        out[name] = off
        off += int(np.prod(shape))
    out["_size"] = off
    return out


def build_program(w: GoldenWeights, lanes: int) -> tuple[list, blobfmt.BlobWriter]:
    """Lay out the blob and emit the instruction stream for one token."""
    d = w.dims
    if d.sparse:
        core_stream_check = 2 * lanes
    else:
        core_stream_check = lanes
    if d.group % core_stream_check:
        raise ValueError(f"group size {d.group} must be a multiple of {core_stream_check} inputs per beat (lanes={lanes})")
    bw = blobfmt.BlobWriter()
    embed_off = bw.add("embed", w.embed.half().numpy())
    if not torch.equal(w.embed.half().float(), w.embed):
        raise ValueError("embedding is not fp16-representable; the engine stores it as fp16")
    final_off = bw.add("final_norm", w.final_norm.numpy().astype(np.float32))
    freq_off = bw.add("inv_freq", w.inv_freq.numpy().astype(np.float32))
    tr = trace_offsets(d)
    mode = core.MODE_SPARSE if d.sparse else core.MODE_DENSE
    P = prog
    ins = [P.Instr(P.OP_EMBED, args=(P.BUF_X, embed_off))]
    io = {"q_proj": (P.BUF_H, P.BUF_Q, "attn_in_a"), "k_proj": (P.BUF_H, P.BUF_K, None), "v_proj": (P.BUF_H, P.BUF_V, None),
          "o_proj": (P.BUF_O, P.BUF_Y, "o_in_a"), "gate_proj": (P.BUF_H, P.BUF_G, "mlp_in_a"),
          "up_proj": (P.BUF_H, P.BUF_U, None), "down_proj": (P.BUF_G, P.BUF_Y, "down_in_a")}
    acc_field = {"q_proj": "q_acc", "k_proj": "k_acc", "v_proj": "v_acc", "o_proj": "o_acc", "gate_proj": "gate_acc",
                 "up_proj": "up_acc", "down_proj": "down_acc"}
    for i in range(d.layers):
        offs = {}
        for name in LINEARS:
            lin = w.linears[i][name]
            offs[name] = (bw.add(f"layers.{i}.{name}.beats", blobfmt.pack_linear_beats(lin, d.group, lanes, d.sparse)),
                          bw.add(f"layers.{i}.{name}.scales", lin.scales.numpy().astype(np.float32)))
        n_in = bw.add(f"layers.{i}.input_norm", w.norms[i][0].numpy().astype(np.float32))
        n_post = bw.add(f"layers.{i}.post_norm", w.norms[i][1].numpy().astype(np.float32))

        def lin_ins(name):
            src, dst, act = io[name]
            n, k = d.linear_shape(name)
            return P.linear(mode, i, src, dst, offs[name][0], offs[name][1], n, k,
                            tr[act] if act else P.NONE, tr[acc_field[name]])

        ins.append(P.Instr(P.OP_RMSNORM, 0, i, (P.BUF_X, P.BUF_H, n_in, d.hidden)))
        ins += [lin_ins("q_proj"), lin_ins("k_proj"), lin_ins("v_proj")]
        ins.append(P.Instr(P.OP_ATTENTION, 0, i, (P.BUF_Q, P.BUF_K, P.BUF_V, P.BUF_O, tr["k_code"], freq_off)))
        ins.append(lin_ins("o_proj"))
        ins.append(P.Instr(P.OP_ADD, 0, i, (P.BUF_X, P.BUF_Y, d.hidden)))
        ins.append(P.Instr(P.OP_RMSNORM, 0, i, (P.BUF_X, P.BUF_H, n_post, d.hidden)))
        ins += [lin_ins("gate_proj"), lin_ins("up_proj")]
        ins.append(P.Instr(P.OP_SILU_MUL, 0, i, (P.BUF_G, P.BUF_U, d.intermediate)))
        ins.append(lin_ins("down_proj"))
        ins.append(P.Instr(P.OP_ADD, 0, i, (P.BUF_X, P.BUF_Y, d.hidden)))
    ins.append(P.Instr(P.OP_RMSNORM, 0, 0, (P.BUF_X, P.BUF_H, final_off, d.hidden)))
    ins.append(P.Instr(P.OP_LMHEAD, 0, 0, (P.BUF_H, embed_off)))
    ins.append(P.Instr(P.OP_END))
    return ins, bw


def compile_export(export_path, out_dir, target: str = "kv260", lanes: int = DEFAULT_LANES,
                   progress: bool = True) -> CompileResult:
    from accllm.hls import project

    from accllm.sim.boards import get_board

    board = get_board(target)  # the one board table; raises naming the known boards
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    w = weights_from_export(export_path, progress)
    instrs, bw = build_program(w, lanes)
    engine = {"lanes": lanes, "target": target, "part": board.part, "clock_ns": round(1000.0 / board.clock_mhz, 3)}
    meta = {"dims": w.dims.to_json(), "engine": engine, "kv_bytes": w.dims.kv_layout().nbytes}
    blob_path = out_dir / "weights.blob"
    sha = bw.write(blob_path, meta)
    prog_path = out_dir / "program.bin"
    prog.write_program(prog_path, instrs, dict(meta, blob_sha256=sha, trace=trace_offsets(w.dims)))
    hls_dir = project.write_project(out_dir / "hls", w.dims, engine, trace_offsets(w.dims))
    return CompileResult(out_dir, prog_path, blob_path, hls_dir, len(instrs), bw.size, time.perf_counter() - t0)


def compile_command(a) -> int:
    r = compile_export(a.model, a.out, a.target, a.lanes)
    print(f"wrote {r.program} ({r.instructions} instructions), {r.blob} ({r.blob_bytes} payload bytes), "
          f"HLS project {r.hls_dir} in {r.seconds:.1f} s")
    return 0


def export_command(a) -> int:
    from accllm.hls.export import export_model
    from accllm.quant.checkpoint import load_compressed

    model, _, _ = load_compressed(a.checkpoint)
    out = export_model(model, a.out, tokens=a.tokens)
    print(f"wrote {out} (QONNX graph per decoder layer, model.json, extras.safetensors)")
    return 0


def register(sub):
    p = sub.add_parser("export", help="export a compressed checkpoint to QONNX (one graph per decoder layer)")
    p.add_argument("checkpoint", help="directory written by `accllm quantize`")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--tokens", type=int, default=16, help="sequence length of the exported graphs")
    p.set_defaults(func=export_command)
    p = sub.add_parser("compile", help="compile an exported model to an engine program, weight blob and HLS project")
    p.add_argument("model", help="export directory (or its model.json / a layer .onnx) from `accllm export`")
    p.add_argument("-o", "--out", type=Path, required=True, help="build directory")
    p.add_argument("--target", default="kv260", help="board from sim/data/boards.json (kv260, zcu104, u280)")
    p.add_argument("--lanes", type=int, default=DEFAULT_LANES, help="integer core lanes (multipliers)")
    p.set_defaults(func=compile_command)
