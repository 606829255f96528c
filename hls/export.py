"""Export the compressed model to QONNX through Brevitas' exporter: the whole model the engine runs, as graphs.

Brevitas 0.13's QONNX manager has no handler for the two proxies the engine's quantisers use:
group-wise weights (its weight handler asserts per-tensor/per-channel shapes) and dynamic per-row
activations (int8 linear inputs, Q and P; 4-bit K and V). :class:`AccllmQONNXManager` is Brevitas'
``QONNXManager`` with two extra handlers that emit standard QONNX ``Quant`` nodes for them:

- group-wise weight ``W [N, K]``: ``Reshape -> Quant(scale [N, K/G, 1], zero point [N, K/G, 1], 2 or 4
  bits, unsigned) -> Reshape``; 2:4 pruned weights are exact zeros in ``W`` (no mask tensor; ``Quant(0) = 0``) and the
  layer graph's metadata ``accllm_sparsity`` says ``2:4``;
- dynamic activation: Brevitas' own scale / zero-point computation (traced: Abs, ReduceMax, Clip, Div,
  ...) feeding the ``scale`` and ``zeropt`` inputs of a ``Quant`` node.

The Λ KV cache is state held across calls, which ONNX does not model, so the model is a chain of graphs:

- ``embed.onnx``: ``(ids [1, T], position_ids [1, T]) -> (hidden [1, T, H], cos, sin [1, T, D])`` (embedding
  lookup and the RoPE tables from the inverse frequencies);
- ``layerNN.onnx``: one decoder layer in its prefill form (no cache), ``(hidden, cos, sin, position_ids) ->
  out``, for ``T <= sinks + window`` (so the "cache" position rule that re-rotates queries for sink keys never
  fires inside the graph: the graph's metadata ``accllm_positions`` states it);
- ``lm_head.onnx``: ``hidden -> logits`` (final RMSNorm and the LM head: a quantised linear, QONNX ``Quant`` nodes
  for its int8 input and its group-wise 4-bit weights, untied from the embedding).

``model.json`` lists the files in order; everything the compiler builds comes from the graphs
(:mod:`accllm.hls.onnx_patterns`).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

LAYER_FILE = "layer{:02d}.onnx"
EMBED_FILE, HEAD_FILE = "embed.onnx", "lm_head.onnx"
MANIFEST = "model.json"
EXPORT_FORMAT = "accllm-onnx-v2"
# Layer-graph metadata naming the weights' sparsity ("2:4"): the graph holds pruned weights as exact zeros, and the
# compiler runs the engine's SPARSE mode only where this says so (and the codes are 2:4).
SPARSITY_META = "accllm_sparsity"


def _manager():
    """Brevitas' QONNX manager plus handlers for group-wise weights and dynamic activations."""
    from brevitas.export.onnx.qonnx.function import BrevitasQuantOp
    from brevitas.export.onnx.qonnx.handler import BrevitasQuantProxyHandler
    from brevitas.export.onnx.qonnx.manager import QONNXManager
    from brevitas.proxy.groupwise_int_parameter_quant import GroupwiseWeightQuantProxyFromInjector
    from brevitas.proxy.runtime_quant import DynamicActQuantProxyFromInjector

    class GroupwiseWeightHandler(BrevitasQuantProxyHandler):
        handled_layer = GroupwiseWeightQuantProxyFromInjector

        def prepare_for_export(self, module):
            if module.is_quant_enabled:
                qw = module.tracked_module_list[0].quant_weight()
                self.symbolic_kwargs = {
                    "scale": qw.scale_.detach(), "zero_point": qw.zero_point_.detach(),
                    "bit_width": qw.bit_width.detach(), "narrow_range": module.is_narrow_range,
                    "signed": qw.signed, "rounding_mode": "ROUND"}
                self.group_size = module.group_size

        def symbolic_execution(self, x):
            k = self.symbolic_kwargs
            n, kin = x.shape
            xg = x.reshape(n, kin // self.group_size, self.group_size)
            q = self.export_op(BrevitasQuantOp, xg, *k.values())
            return q, k["scale"], k["zero_point"], k["bit_width"]

    class DynamicActHandler(BrevitasQuantProxyHandler):
        handled_layer = DynamicActQuantProxyFromInjector

        def prepare_for_export(self, module):
            if module.is_quant_enabled:
                self.tensor_quant = module.fused_activation_quant_proxy.tensor_quant
                self.symbolic_kwargs = {"narrow_range": module.is_narrow_range, "signed": module.is_signed,
                                        "rounding_mode": module.rounding_mode}

        def symbolic_execution(self, x):
            # Brevitas' own dynamic statistics give scale / zero point; only they reach the graph.
            _, scale, zero_point, bit_width = self.tensor_quant(x)
            k = self.symbolic_kwargs
            q = self.export_op(BrevitasQuantOp, x, scale, zero_point, bit_width, k["narrow_range"], k["signed"],
                               k["rounding_mode"])
            return q, scale, zero_point, bit_width

    class AccllmQONNXManager(QONNXManager):
        handlers = [GroupwiseWeightHandler, DynamicActHandler] + QONNXManager.handlers

    return AccllmQONNXManager


class DecoderLayerGraph(nn.Module):
    """One decoder layer in prefill form: ``(hidden [1,T,H], cos [1,T,D], sin [1,T,D], position_ids [1,T]) -> hidden``."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden, cos, sin, position_ids):
        out = self.layer(hidden, position_ids=position_ids, position_embeddings=(cos, sin))
        return out[0] if isinstance(out, tuple) else out


class EmbedGraph(nn.Module):
    """``(ids [1, T], position_ids [1, T]) -> (hidden, cos, sin)``: embedding lookup and RoPE tables."""

    def __init__(self, embed, inv_freq):
        super().__init__()
        self.embed = embed
        self.register_buffer("inv_freq", inv_freq.float().clone())

    def forward(self, ids, position_ids):
        f = position_ids.float().unsqueeze(-1) * self.inv_freq
        emb = torch.cat([f, f], dim=-1)
        return self.embed(ids), emb.cos(), emb.sin()


class HeadGraph(nn.Module):
    """``hidden -> logits``: final RMSNorm and the LM head."""

    def __init__(self, norm, lm_head):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, hidden):
        return self.lm_head(self.norm(hidden))


def layer_inputs(model, tokens: int, seed: int = 0):
    """Example inputs for one decoder layer graph: the embedding of random tokens and their RoPE tables."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=g)
    hidden = model.model.embed_tokens(ids).detach().float()
    pos = torch.arange(tokens)[None]
    cos, sin = model.model.rotary_emb(hidden, pos)
    return hidden, cos, sin, pos


def export_model(model, out_dir, tokens: int = 16, progress: bool = True, layers=None) -> Path:
    """Write ``embed.onnx``, ``layerNN.onnx`` (QONNX, one per decoder layer), ``lm_head.onnx`` and ``model.json``
    (the file list) to ``out_dir``. ``layers``: the decoder layers in order, when ``model`` does not hold them
    (an iterable that loads one at a time: ``accllm.quant.checkpoint.iter_compressed_layers``)."""
    from tqdm import tqdm

    from accllm.sim.golden import rope_inv_freq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = model.accllm_settings
    if s.lambda_attention and tokens > s.sinks + s.window:
        raise ValueError(f"export length {tokens} exceeds sinks + window = {s.sinks + s.window}")
    manager = _manager()
    # the layer graphs get onnxoptimizer's two passes in place (_save_graph): its round trip through serialised
    # copies would hold the layer's weights several times over
    layer_manager = type("LayerManager", (manager,), {"run_onnx_passes": False})
    _register_inplace_and()
    args = layer_inputs(model, tokens)
    files = []
    model.eval()
    props = {"accllm_positions": s.positions}
    with torch.no_grad():
        embed = EmbedGraph(model.model.embed_tokens, rope_inv_freq(model.config))
        torch.onnx.export(embed, (torch.zeros(1, tokens, dtype=torch.long), args[3]), str(out_dir / EMBED_FILE),
                          input_names=["ids", "position_ids"], output_names=["hidden", "cos", "sin"], dynamo=False)
        _annotate(out_dir / EMBED_FILE, props)
        layers = model.model.layers if layers is None else layers
        for i, layer in enumerate(tqdm(layers, desc="export", disable=not progress)):
            path = out_dir / LAYER_FILE.format(i)
            _check_graph_size(layer, path.name)
            with _pruned_as_zeros(layer) as sparse:
                graph = layer_manager.export(DecoderLayerGraph(layer), args=args, export_path=None, dynamo=False,
                                             input_names=["hidden", "cos", "sin", "position_ids"],
                                             output_names=["out"])
            _save_graph(graph, path, dict(props, accllm_layer=str(i), **({SPARSITY_META: "2:4"} if sparse else {})))
            del graph, layer
            files.append(path.name)
        # the head is a quantised linear like the layers' (int8 input, group-wise 4-bit weights): Quant nodes too
        manager.export(HeadGraph(model.model.norm, model.lm_head), args=(args[0],), export_path=str(out_dir / HEAD_FILE),
                       input_names=["hidden"], output_names=["logits"], dynamo=False)
        _annotate(out_dir / HEAD_FILE, props)
    manifest = {"format": EXPORT_FORMAT, "embed": EMBED_FILE, "layers": files, "lm_head": HEAD_FILE,
                "export_tokens": tokens}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out_dir


def export_checkpoint(checkpoint, out_dir, tokens: int = 16, progress: bool = True) -> tuple[Path, int]:
    """:func:`export_model` of a compressed checkpoint, its decoder layers loaded one at a time (peak memory: the
    embedding, the head and one layer): ``(out_dir, number of layers)``."""
    from accllm.quant.checkpoint import iter_compressed_layers, load_compressed

    model, _, _ = load_compressed(checkpoint, layers=[])
    n = 0

    def counted():
        nonlocal n
        for layer in iter_compressed_layers(checkpoint):
            n += 1
            yield layer
            del layer  # before the next one loads

    return export_model(model, out_dir, tokens, progress, layers=counted()), n


def _register_inplace_and() -> None:
    """Λ visibility (``accllm.quant.attention.visibility``) uses ``&=`` on bool masks; the TorchScript
    exporter has no symbolic for in-place ``aten::__iand_``, so map it to ONNX ``And``."""
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("aten::__iand_", lambda g, a, b: g.op("And", a, b), 9)


_PROTOBUF_LIMIT = 2**31 - 1


def _check_graph_size(layer, name: str) -> None:
    """A layer graph holds each weight as an fp32 initializer (2:4 pruned ones as zeros, no mask tensor); one ONNX
    graph cannot exceed protobuf's 2 GiB, so a layer that would is refused before the export spends its time."""
    weights = sum(p.numel() for p in layer.parameters()) * 4
    if weights > _PROTOBUF_LIMIT:
        raise ValueError(f"{name}: the layer graph would hold {weights / 2**30:.2f} GiB of fp32 weights, over "
                         "protobuf's 2 GiB limit for one ONNX graph")


@contextmanager
def _pruned_as_zeros(layer):
    """Export a 2:4 layer's weights with the pruned ones as exact zeros and no mask: QONNX ``Quant(0) = 0`` (the
    zero point is an integer, the scale and zero point are parameters), so ``Quant(W * mask)`` is the layer's
    ``Quant(W) * mask`` and the graph stays at 4 bytes a weight (an fp32 mask beside it doubled that: a Llama-2-7B
    layer went over protobuf's 2 GiB). The layer is given back as it was; yields whether it had masks."""
    held = []
    try:
        for mod in layer.modules():
            mask = mod._buffers.get("sparse_mask")
            if mask is None:
                continue
            del mod._buffers["sparse_mask"]  # the quantised linear multiplies by its mask only while it has one
            w = mod.weight.data
            pruned = ~mask.to(device=w.device, dtype=torch.bool)
            pruned &= w != 0  # pruning zeroes them already; training may not have
            if not pruned.any():
                pruned = None
            held.append((mod, mask, pruned, None if pruned is None else w[pruned].clone()))
            if pruned is not None:
                w[pruned] = 0
        yield bool(held)
    finally:
        for mod, mask, pruned, values in held:
            if pruned is not None:
                mod.weight.data[pruned] = values
            mod.register_buffer("sparse_mask", mask, persistent=False)


def _save_graph(m, path: Path, props: dict) -> None:
    """Finish an exported graph in memory and write it once: Brevitas' QONNX passes (``Constant`` nodes become
    initializers; initializers no node reads are dropped, with their graph inputs), metadata, checker."""
    import onnx

    g = m.graph
    nodes = list(g.node)
    for n in nodes:
        if n.op_type == "Constant" and [a.name for a in n.attribute] == ["value"]:
            t = g.initializer.add()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            g.node.remove(n)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in used]
    names = {t.name for t in unused}
    for t in unused:
        g.initializer.remove(t)
    for x in [x for x in g.input if x.name in names]:
        g.input.remove(x)
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _annotate(path: Path, props: dict) -> None:
    import onnx

    m = onnx.load(str(path))
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def read_manifest(path) -> tuple[Path, dict]:
    """``(export directory, manifest)`` from an export directory, its ``model.json`` or one of its ``.onnx``.
    The manifest only orders the graphs; what they compute is in the graphs."""
    p = Path(path)
    d = p if p.is_dir() else p.parent
    mf = d / MANIFEST
    if not mf.is_file():
        raise FileNotFoundError(f"{p}: no {MANIFEST} beside it; give the directory written by `accllm export`")
    manifest = json.loads(mf.read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{mf}: format {manifest.get('format')!r}, expected {EXPORT_FORMAT!r}")
    return d, manifest


def onnx_vs_torch(onnx_dir, model, layer: int, tokens: int = 16, seed: int = 1) -> tuple[float, float]:
    """Run exported ``layer`` with the qonnx executor and the torch layer on the same fresh inputs:
    returns (max abs difference, max abs torch output)."""
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    args = layer_inputs(model, tokens, seed=seed)  # other inputs than the export trace used
    with torch.no_grad():
        ref = DecoderLayerGraph(model.model.layers[layer])(*args).numpy()
    mw = ModelWrapper(str(Path(onnx_dir) / f"layer{layer:02d}.onnx")).transform(InferShapes())
    out = execute_onnx(mw, {n: a.numpy() for n, a in zip(["hidden", "cos", "sin", "position_ids"], args)})
    out = out[mw.graph.output[0].name]
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())


def run_chain(onnx_dir, ids):
    """Logits ``[T, V]`` of the exported chain (embed -> layers -> lm_head) run by the qonnx executor on ``ids``
    (as many as the graphs' length T) at positions 0..T-1: the reference the compiled engine is checked against."""
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    d, manifest = read_manifest(onnx_dir)

    def run(name, inputs):
        mw = ModelWrapper(str(d / name)).transform(InferShapes())
        return execute_onnx(mw, inputs)

    ids = np.asarray(ids, np.int64)[None]
    pos = np.arange(ids.shape[1], dtype=np.int64)[None]
    e = run(manifest["embed"], {"ids": ids, "position_ids": pos})
    x = e["hidden"]
    for name in manifest["layers"]:
        x = next(iter(run(name, {"hidden": x, "cos": e["cos"], "sin": e["sin"], "position_ids": pos}).values()))
    return run(manifest["lm_head"], {"hidden": x})["logits"][0]
