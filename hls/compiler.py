"""``accllm compile``: the exported QONNX graphs -> engine program + packed weight blob + HLS project.

The program comes from the graphs: :mod:`accllm.hls.onnx_patterns` matches every node of ``embed.onnx``, each
``layerNN.onnx`` and ``lm_head.onnx`` to a unit of the engine (or refuses the graph, naming the node), and this
module emits one instruction per matched unit, in the order the graph computes them. Dimensions, bit widths,
group size, Λ sinks/window and head counts are read from the matches (initializer shapes and values, node
attributes); only the sink-rotation rule, which a prefill graph cannot show, comes from the graphs' metadata
(``accllm_positions``). The engine's integers come from the weight ``Quant`` nodes (``code = round(W / scale +
zeropt)``, QONNX semantics, after the 2:4 mask), the 2:4 pattern from the pruned codes.

Operands and the graph fields they come from:

    EMBED       embed_off          embed.onnx Gather's table [V, H] (fp16 in the blob)
    RMSNORM     weight_off, n      the RMSNorm's weight initializer [H]; eps (one per engine) its Add constant
    LINEAR      stream, mode       weight Quant's (W, scale, zeropt) [N, K/G, G] x the 2:4 mask; G = last dim;
                                   scales rounded to fp16 (the stream's); SPARSE when every linear is masked 2:4;
                                   wbits (2 or 4) the Quant's bit width, one for every decoder linear
    ATTENTION   rope_off           the RoPE table (accllm.sim.nonlinear.rope_table) of embed.onnx's inverse
                                   frequencies [D/2]; heads / kv_heads / D from the q, k
                                   linear shapes and the head Reshape; sinks / window from the Λ mask's Less
                                   constants; 1/sqrt(D) checked on the score Mul
    ADD         n                  the residual Add (stream + block)
    SILU_MUL    n                  Mul(Mul(g, Sigmoid(g)), u); n = gate N
    LMHEAD      stream, wbits      lm_head.onnx: the final RMSNorm, then a quantised linear like LINEAR's (weight
                                   Quant [V, H/G, G], 4-bit, dense) -> a DENSE W4 section ``lm_head.stream``;
                                   linear index layers * 7; its trace fields in the head region
                                   (accllm.sim.golden.head_trace_fields, metadata ``trace.head``)
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from accllm.hls import blob as blobfmt
from accllm.hls import onnx_patterns as pat
from accllm.hls import program as prog
from accllm.hls.export import read_manifest
from accllm.sim import golden_core as core
from accllm.sim import nonlinear
from accllm.sim.golden import LINEARS, Dims, GoldenWeights, LinearInts, head_trace_fields, trace_fields

DEFAULT_LANES = 16
DEFAULT_PREFILL_BLOCK = 32  # prompt tokens per weight pass (engine parameter T)
BLOCK_ORDER = ("attention", "mlp")  # the Llama order; a graph may compute its blocks in the other order


@dataclass
class CompileResult:
    out_dir: Path
    program: Path
    blob: Path
    hls_dir: Path
    instructions: int
    blob_bytes: int
    seconds: float


@dataclass
class GraphModel:
    """What the graphs say the engine computes: weights and dimensions, and each layer's block order."""
    weights: GoldenWeights
    order: list  # per layer, the block kinds in execution order


def _one(values: dict, what: str, why: str):
    """The single value all graphs agree on. ``values``: file -> (value, node name); a graph that differs from the
    first is refused naming its node."""
    items = list(values.items())
    first_file, (first, _) = items[0]
    for f, (val, node) in items[1:]:
        if val != first:
            where = f"node {node}: " if node else ""
            raise pat.GraphRefused(f"{f.split()[0]}: {where}{what} {val} differs from {first} in "
                                   f"{first_file.split()[0]}; {why}")
    return first


def read_graphs(export_path, progress: bool = True) -> GraphModel:
    """Match every graph of an export (``embed.onnx``, ``layerNN.onnx``, ``lm_head.onnx``) and collect the
    engine's weights and dimensions from the matches."""
    from tqdm import tqdm

    d, manifest = read_manifest(export_path)
    files = [d / manifest["embed"]] + [d / f for f in manifest["layers"]] + [d / manifest["lm_head"]]
    pat.check_chain(files)
    emb = pat.match_embed(files[0])
    layers = [pat.match_layer(f) for f in tqdm(files[1:-1], desc="match graphs", disable=not progress)]
    head = pat.match_head(files[-1])
    if not layers:
        raise pat.GraphRefused(f"{d}: the export has no decoder-layer graphs")
    for i, m in enumerate(layers):
        if m.meta.get("accllm_layer", str(i)) != str(i):
            raise pat.GraphRefused(f"{m.file}: metadata says layer {m.meta['accllm_layer']}, listed as layer {i}")
    dims = _dims(emb, layers, head)
    linears, norms = [], []
    for m in layers:
        layer, layer_norms = _layer_weights(m, dims)
        linears.append(layer)
        norms.append(layer_norms)
    return GraphModel(_outer_weights(emb, head, dims, norms, linears), [[b.kind for b in m.blocks] for m in layers])


def _outer_weights(emb: pat.EmbedMatch, head: pat.HeadMatch, dims: Dims, norms: list, linears: list) -> GoldenWeights:
    h = head.lm_head
    lm_head = LinearInts(torch.from_numpy(h.codes), torch.from_numpy(h.zeros), torch.from_numpy(h.scales),
                         wbits=pat.HEAD_BITS)  # codes one byte each, as the layers' (the largest arrays held)
    return GoldenWeights(dims, torch.from_numpy(emb.embed.copy()), norms, torch.from_numpy(head.norm["weight"].copy()),
                         torch.from_numpy(emb.inv_freq.copy()), linears, lm_head=lm_head)


def _layer_weights(m: pat.LayerMatch, dims: Dims) -> tuple[dict, tuple]:
    """One matched layer's linears ``{role: LinearInts}`` and its (input, post-attention) RMSNorm weights."""
    layer = {}
    for b in m.blocks:
        if b.norm["weight"].shape != (dims.hidden,):
            raise pat.GraphRefused(f"{m.file}: node {b.norm['node']!r} (Mul): RMSNorm weight "
                                   f"{b.norm['weight'].shape}, expected [{dims.hidden}]")
        for role, lin in b.linears.items():
            if lin.shape != dims.linear_shape(role):
                raise pat.GraphRefused(f"{m.file}: node {lin.weight_node!r} (Quant): {role} weight {lin.shape}, "
                                       f"expected {dims.linear_shape(role)}")
            layer[role] = _linear_ints(m.file, lin, dims)
    return layer, tuple(torch.from_numpy(m.block(k).norm["weight"].copy()) for k in BLOCK_ORDER)


def _light(lin: pat.Linear) -> pat.Linear:
    """``lin`` without its arrays (same shapes, no memory): what :func:`_dims` checks."""
    return dataclasses.replace(lin, **{f: np.broadcast_to(np.uint8(0), getattr(lin, f).shape)
                                       for f in ("codes", "zeros", "scales")})


def _stub(m: pat.LayerMatch) -> pat.LayerMatch:
    """``m`` without its weight arrays: what :func:`_dims` checks across layers."""
    return dataclasses.replace(m, blocks=[dataclasses.replace(b, linears={r: _light(x) for r, x in b.linears.items()})
                                          for b in m.blocks])


@dataclass
class GraphStream:
    """An export read one decoder-layer graph at a time: ``weights`` holds the dimensions, embedding, head and
    final norm (no layers); :meth:`layers` yields each layer's ``(linears, norms, block kinds)`` in order, the
    previous one's arrays released, each checked against the layers before it as :func:`read_graphs` checks."""
    weights: GoldenWeights
    files: list
    emb: pat.EmbedMatch
    head: pat.HeadMatch
    first: pat.LayerMatch | None
    progress: bool = True

    def layers(self):
        from tqdm import tqdm

        stubs = []
        for i, f in enumerate(tqdm(self.files, desc="compile layers", disable=not self.progress)):
            m, self.first = (self.first, None) if i == 0 else (pat.match_layer(f), None)
            if m.meta.get("accllm_layer", str(i)) != str(i):
                raise pat.GraphRefused(f"{m.file}: metadata says layer {m.meta['accllm_layer']}, listed as layer {i}")
            stubs.append(_stub(m))
            dims = dataclasses.replace(_dims(self.emb, stubs, self.head), layers=self.weights.dims.layers)
            if dims != self.weights.dims:  # e.g. a later layer's intermediate size, which _dims takes from layer 0
                raise pat.GraphRefused(f"{m.file}: dimensions {dims} differ from {self.weights.dims}")
            linears, norms = _layer_weights(m, dims)
            kinds = [b.kind for b in m.blocks]
            del m
            yield linears, norms, kinds
            del linears, norms
            _release_freed_memory()


def _release_freed_memory() -> None:
    from accllm.quant.checkpoint import _release_freed_memory as release

    release()


def stream_graphs(export_path, progress: bool = True) -> GraphStream:
    """Match ``embed.onnx``, ``lm_head.onnx`` and the first layer graph (for the dimensions); the layers follow
    one at a time from :meth:`GraphStream.layers`, so memory holds one layer graph however many there are."""
    d, manifest = read_manifest(export_path)
    files = [d / manifest["embed"]] + [d / f for f in manifest["layers"]] + [d / manifest["lm_head"]]
    pat.check_chain(files)
    if not manifest["layers"]:
        raise pat.GraphRefused(f"{d}: the export has no decoder-layer graphs")
    emb, head = pat.match_embed(files[0]), pat.match_head(files[-1])
    first = pat.match_layer(files[1])
    dims = dataclasses.replace(_dims(emb, [_stub(first)], head), layers=len(manifest["layers"]))
    w = _outer_weights(emb, head, dims, [], [])
    emb = dataclasses.replace(emb, embed=np.broadcast_to(np.float32(0), emb.embed.shape))  # w holds the tables now
    head = dataclasses.replace(head, lm_head=_light(head.lm_head))
    return GraphStream(w, files[1:-1], emb, head, first, progress)


def _dims(emb: pat.EmbedMatch, layers: list, head: pat.HeadMatch) -> Dims:
    """The engine's dimensions: one value per setting, which every graph must agree on."""
    why = "the engine runs one configuration for all layers"
    atts = {m.file: m.block("attention").attention for m in layers}
    heads = _one({f: ((a.heads, a.kv_heads, a.head_dim), f"{a.node!r} (MatMul)") for f, a in atts.items()},
                 "heads / KV heads / head dim", why)
    sinks, window = _one({f: ((a.sinks, a.window), f"{a.mask_node!r} (Less)") for f, a in atts.items()},
                         "Λ (sinks, window)", "the engine's KV cache has one Λ layout for all layers")
    lins = {f"{m.file} {r}": lin for m in layers for b in m.blocks for r, lin in b.linears.items()}
    group = _one({k: (lin.group, f"{lin.weight_node!r} (Quant)") for k, lin in lins.items()}, "weight group size", why)
    sparse = _one({k: (lin.masked, f"{lin.weight_node!r} (Quant)") for k, lin in lins.items()},
                  "2:4 weight mask present", why)
    wbits = _one({k: (lin.wbits, f"{lin.weight_node!r} (Quant)") for k, lin in lins.items()},
                 "weight code width", "the engine image has one stream format for the decoder linears")
    norms = {f"{m.file} {b.kind}": (b.norm["eps"], f"{b.norm['node']!r} (Mul)") for m in layers for b in m.blocks}
    norms[head.file] = (head.norm["eps"], f"{head.norm['node']!r} (Mul)")
    eps = _one(norms, "RMSNorm eps", why)
    metas = {emb.file: emb.meta, **{m.file: m.meta for m in layers}, head.file: head.meta}
    positions = _one({f: (meta.get("accllm_positions"), None) for f, meta in metas.items()},
                     "metadata accllm_positions", why)
    if positions not in ("cache", "absolute"):
        raise pat.GraphRefused(f"{emb.file}: metadata accllm_positions={positions!r}, expected cache or absolute")
    vocab, hidden = emb.embed.shape
    if emb.inv_freq.shape != (heads[2] // 2,):
        raise pat.GraphRefused(f"{emb.file}: {emb.inv_freq.shape[0]} RoPE frequencies for heads of {heads[2]}")
    if head.lm_head.group != group:
        raise pat.GraphRefused(f"{head.file}: node {head.lm_head.weight_node!r} (Quant): LM head group size "
                               f"{head.lm_head.group}, the layers' is {group}; the engine runs one group size")
    if head.lm_head.shape != (vocab, hidden) or head.norm["weight"].shape != (hidden,):
        raise pat.GraphRefused(f"{head.file}: node {head.node!r} (MatMul): LM head {head.lm_head.shape} / final norm "
                               f"{head.norm['weight'].shape} do not fit a vocabulary of {vocab} and {hidden} channels")
    return Dims(vocab=vocab, hidden=hidden, layers=len(layers), heads=heads[0], kv_heads=heads[1], head_dim=heads[2],
                intermediate=layers[0].block("mlp").linears["gate_proj"].shape[0], eps=eps, group=group, sinks=sinks,
                window=window, sink_rotation=positions == "cache", sparse=sparse, wbits=wbits)


def _linear_ints(file: str, lin: pat.Linear, dims: Dims) -> LinearInts:
    out = LinearInts(torch.from_numpy(lin.codes), torch.from_numpy(lin.zeros), torch.from_numpy(lin.scales),
                     wbits=lin.wbits)
    if dims.sparse:
        try:
            vals, pos = core.sparse_from_dense(out.codes, out.zeros, dims.group, lin.wbits)
        except ValueError as e:
            raise pat.GraphRefused(f"{file}: node {lin.weight_node!r} (Quant): {e}") from None
        out.vals, out.pos = vals.to(torch.uint8), pos.to(torch.uint8)  # codes and positions fit a byte
    return out


def weights_from_export(export_path, progress: bool = True) -> GoldenWeights:
    """Everything the engine needs, read back from the exported graphs (what the compiler compiles)."""
    return read_graphs(export_path, progress).weights


def trace_offsets(dims: Dims) -> dict:
    """int32 offsets of one layer's trace fields, its ``_size``; ``head``: the head region's fields (relative to
    the region) and ``offset``: where the region starts in a one-token run (``layers * _size``; in a run of ``n``
    tokens ``n * layers * _size``, after the last token's layers)."""
    off, out = 0, {}
    for name, shape in trace_fields(dims):
        out[name] = off
        off += int(np.prod(shape))
    out["_size"] = off
    head, hoff = {}, 0
    for name, shape in head_trace_fields(dims):
        head[name] = hoff
        hoff += int(np.prod(shape))
    out["head"] = dict(head, _size=hoff, offset=dims.layers * off)
    return out


def build_program(w: GoldenWeights, lanes: int, order: list | None = None,
                  layers=None) -> tuple[list, blobfmt.BlobWriter]:
    """Lay out the blob and emit the instruction stream for one token; ``order``: each layer's block kinds in the
    order its graph computes them (default attention, then MLP). ``layers``: an iterable of ``(linears, norms,
    block kinds)`` per decoder layer when ``w`` does not hold them (:meth:`GraphStream.layers`: one at a time, each
    appended to the blob's spool as it comes)."""
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
    rope_off = bw.add("rope_table", nonlinear.rope_table(w.inv_freq.numpy()))  # cos/sin rows for every position
    tr = trace_offsets(d)
    mode = core.MODE_SPARSE if d.sparse else core.MODE_DENSE
    P = prog
    ins = [P.Instr(P.OP_EMBED, args=(P.BUF_X, embed_off))]
    io = {"q_proj": (P.BUF_H, P.BUF_Q, "attn_in_a"), "k_proj": (P.BUF_H, P.BUF_K, None), "v_proj": (P.BUF_H, P.BUF_V, None),
          "o_proj": (P.BUF_O, P.BUF_Y, "o_in_a"), "gate_proj": (P.BUF_H, P.BUF_G, "mlp_in_a"),
          "up_proj": (P.BUF_H, P.BUF_U, None), "down_proj": (P.BUF_G, P.BUF_Y, "down_in_a")}
    acc_field = {"q_proj": "q_acc", "k_proj": "k_acc", "v_proj": "v_acc", "o_proj": "o_acc", "gate_proj": "gate_acc",
                 "up_proj": "up_acc", "down_proj": "down_acc"}
    if layers is None:
        layers = zip(w.linears, w.norms, order or [BLOCK_ORDER] * d.layers)
    for i, (layer_linears, layer_norms, kinds) in enumerate(layers):
        offs = {}
        for name in LINEARS:
            lin = layer_linears[name]
            if lin.wbits != d.wbits:
                raise ValueError(f"layer {i} {name}: {lin.wbits}-bit codes, the model's decoder linears are {d.wbits}-bit")
            offs[name] = (bw.add(f"layers.{i}.{name}.stream", blobfmt.pack_linear_stream(lin, d.group, lanes, d.sparse)),
                          i * len(LINEARS) + LINEARS.index(name))  # its index in the engine image
        n_in = bw.add(f"layers.{i}.input_norm", layer_norms[0].numpy().astype(np.float32))
        n_post = bw.add(f"layers.{i}.post_norm", layer_norms[1].numpy().astype(np.float32))

        def lin_ins(name):
            src, dst, act = io[name]
            n, k = d.linear_shape(name)
            return P.linear(mode, i, src, dst, offs[name][0], offs[name][1], n, k,
                            tr[act] if act else P.NONE, tr[acc_field[name]], wbits=d.wbits)

        for kind in kinds:
            if kind == "attention":
                ins.append(P.Instr(P.OP_RMSNORM, 0, i, (P.BUF_X, P.BUF_H, n_in, d.hidden)))
                ins += [lin_ins("q_proj"), lin_ins("k_proj"), lin_ins("v_proj")]
                ins.append(P.Instr(P.OP_ATTENTION, 0, i, (P.BUF_Q, P.BUF_K, P.BUF_V, P.BUF_O, tr["k_code"], rope_off)))
                ins.append(lin_ins("o_proj"))
            else:
                ins.append(P.Instr(P.OP_RMSNORM, 0, i, (P.BUF_X, P.BUF_H, n_post, d.hidden)))
                ins += [lin_ins("gate_proj"), lin_ins("up_proj")]
                ins.append(P.Instr(P.OP_SILU_MUL, 0, i, (P.BUF_G, P.BUF_U, d.intermediate)))
                ins.append(lin_ins("down_proj"))
            ins.append(P.Instr(P.OP_ADD, 0, i, (P.BUF_X, P.BUF_Y, d.hidden)))
    head = w.lm_head
    if head is None or head.wbits != pat.HEAD_BITS:
        raise ValueError(f"the engine runs the LM head as a {pat.HEAD_BITS}-bit linear; these weights have "
                         f"{'none' if head is None else f'{head.wbits}-bit codes'}")
    head_off = bw.add("lm_head.stream", blobfmt.pack_linear_stream(head, d.group, lanes, False))
    ht = tr["head"]
    ins.append(P.Instr(P.OP_RMSNORM, 0, 0, (P.BUF_X, P.BUF_H, final_off, d.hidden)))
    # layer = layers: the kernel puts the head's trace fields right after the last token's layers (the head region)
    ins.append(P.lmhead(core.MODE_DENSE, head.wbits, d.layers, P.BUF_H, head_off, d.layers * len(LINEARS), d.vocab,
                        d.hidden, ht["head_in_a"], ht["head_acc"]))
    ins.append(P.Instr(P.OP_END))
    return ins, bw


def compile_export(export_path, out_dir, target: str = "kv260", lanes: int = DEFAULT_LANES,
                   progress: bool = True, prefill_block: int = DEFAULT_PREFILL_BLOCK,
                   topk: int | None = None) -> CompileResult:
    from accllm.hls import project
    from accllm.hls.engine_image import EngineImageWriter, quantised_head
    from accllm.quant.integrity import write_manifest

    from accllm.sim.boards import get_board

    board = get_board(target)  # the one board table; raises naming the known boards
    if not 1 <= prefill_block <= 1024:
        raise ValueError(f"prefill block must be 1..1024 tokens, got {prefill_block}")
    if topk is not None and not 1 <= topk <= 1024:
        raise ValueError(f"topk must be 1..1024 ids, got {topk}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = stream_graphs(export_path, progress)
    w = g.weights
    # the engine's memory image + blob_map.json (with the LM head's DENSE W4 section once the weights carry one)
    image = EngineImageWriter(out_dir, w.dims, board, lanes, head=quantised_head(w))

    def layers():  # one layer graph in memory at a time: into the blob's spool and the engine image, then freed
        for i, (linears, norms, kinds) in enumerate(g.layers()):
            image.add_layer(i, linears)
            yield linears, norms, kinds

    instrs, bw = build_program(w, lanes, layers=layers())
    image.close()
    engine = {"lanes": lanes, "prefill_block": prefill_block, "target": target, "part": board.part, "clock_ns": round(1000.0 / board.clock_mhz, 3),
              "topk": project.DEFAULT_TOPK if topk is None else topk}  # K of the on-chip top-K (contract 3)
    meta = {"dims": w.dims.to_json(), "engine": engine, "kv_bytes": w.dims.kv_layout().nbytes}
    blob_path = out_dir / "weights.blob"
    sha = bw.write(blob_path, meta)
    prog_path = out_dir / "program.bin"
    prog.write_program(prog_path, instrs, dict(meta, blob_sha256=sha, trace=trace_offsets(w.dims)))
    hls_dir = project.write_project(out_dir / "hls", w.dims, engine, trace_offsets(w.dims),
                                    sizes={"program": 32 * len(instrs), "blob": bw.size})
    write_manifest(out_dir)  # what the backends load is checked against it (accllm.hls.csim.COMPILED_FILES)
    return CompileResult(out_dir, prog_path, blob_path, hls_dir, len(instrs), bw.size, time.perf_counter() - t0)


# The compressed checkpoint travels export -> compile under this name, so that a build from the single-purpose
# commands carries its tokenizer and golden weights (`accllm run BUILD`).
CHECKPOINT_COPY = "checkpoint"


def _copy_checkpoint(src: Path, out: Path) -> Path | None:
    import shutil

    from accllm.quant.checkpoint import verify_checkpoint

    if not (Path(src) / "compression.json").is_file():
        return None
    verify_checkpoint(src)
    shutil.copytree(src, out / CHECKPOINT_COPY, dirs_exist_ok=True)
    return out / CHECKPOINT_COPY


def compile_command(a) -> int:
    from accllm.hls.export import read_manifest
    from accllm.quant.integrity import write_manifest

    r = compile_export(a.model, a.out, a.target, a.lanes, prefill_block=a.prefill_block, topk=a.topk)
    ckpt = _copy_checkpoint(read_manifest(a.model)[0] / CHECKPOINT_COPY, r.out_dir)
    write_manifest(r.out_dir)
    print(f"wrote {r.program} ({r.instructions} instructions), {r.blob} ({r.blob_bytes} payload bytes), "
          f"HLS project {r.hls_dir}{f', checkpoint {ckpt}' if ckpt else ''} in {r.seconds:.1f} s")
    return 0


def export_command(a) -> int:
    from accllm.hls.export import export_checkpoint

    out, _ = export_checkpoint(a.checkpoint, a.out, tokens=a.tokens)
    _copy_checkpoint(Path(a.checkpoint), out)
    print(f"wrote {out} (QONNX graphs: embed.onnx, one per decoder layer, lm_head.onnx; model.json, {CHECKPOINT_COPY}/)")
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
    p.add_argument("--prefill-block", type=int, default=DEFAULT_PREFILL_BLOCK,
                   help="prefill block T: prompt tokens multiplied per weight pass (on-chip buffers grow with T)")
    p.add_argument("--topk", type=int, default=None,
                   help="K of the on-chip top-K the engine returns per run (default 16; full logits only on request)")
    p.set_defaults(func=compile_command)
