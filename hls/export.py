"""Export the compressed model to QONNX through Brevitas' exporter, one decoder layer per graph.

Brevitas 0.13's QONNX manager has no handler for the two proxies the engine's quantisers use:
group-wise weights (its weight handler asserts per-tensor/per-channel shapes) and dynamic per-row
activations (int8 linear inputs, Q and P; 4-bit K and V). :class:`AccllmQONNXManager` is Brevitas'
``QONNXManager`` with two extra handlers that emit standard QONNX ``Quant`` nodes for them:

- group-wise weight ``W [N, K]``: ``Reshape -> Quant(scale [N, K/G, 1], zero point [N, K/G, 1], 2 bits,
  unsigned) -> Reshape``;
- dynamic activation: Brevitas' own scale / zero-point computation (traced: Abs, ReduceMax, Clip, Div,
  ...) feeding the ``scale`` and ``zeropt`` inputs of a ``Quant`` node.

The whole LLM is not exported as one graph: the Λ KV cache is state held across calls, which ONNX does
not model. Each decoder layer is exported in its prefill form (no cache) with inputs
``hidden [1, T, H]``, ``cos``/``sin [1, T, D]`` and the Λ visibility ``mask [T, T]`` (bool), for
``T <= sinks + window`` (so the "cache" position rule that re-rotates queries for sink keys never fires
inside the graph; the compiler takes that rule from the graph metadata). Model-level tensors
(embedding, final norm) and settings travel as metadata and a side ``model.json``/``extras.safetensors``
beside the layer graphs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

LAYER_FILE = "layer{:02d}.onnx"
MANIFEST = "model.json"
EXTRAS = "extras.safetensors"
EXPORT_FORMAT = "accllm-onnx-v1"


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


def layer_inputs(model, tokens: int, seed: int = 0):
    """Example inputs for one decoder layer graph: the embedding of random tokens and their RoPE tables."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=g)
    hidden = model.model.embed_tokens(ids).detach().float()
    pos = torch.arange(tokens)[None]
    cos, sin = model.model.rotary_emb(hidden, pos)
    return hidden, cos, sin, pos


def export_model(model, out_dir, tokens: int = 16, progress: bool = True) -> Path:
    """Write ``layerNN.onnx`` (QONNX, one per decoder layer), ``extras.safetensors`` (embedding, final norm,
    RoPE inverse frequencies) and ``model.json`` (dimensions, compression settings, file list) to ``out_dir``."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from accllm.sim.golden import dims_from, rope_inv_freq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = model.accllm_settings
    dims = dims_from(model.config, s)
    if tokens > dims.slots:
        raise ValueError(f"export length {tokens} exceeds sinks + window = {dims.slots}")
    manager = _manager()
    _register_inplace_and()
    args = layer_inputs(model, tokens)
    files = []
    model.eval()
    for i, layer in enumerate(tqdm(model.model.layers, desc="export", disable=not progress)):
        path = out_dir / LAYER_FILE.format(i)
        with torch.no_grad():
            manager.export(DecoderLayerGraph(layer), args=args, export_path=str(path), dynamo=False,
                           input_names=["hidden", "cos", "sin", "position_ids"], output_names=["out"])
        _annotate(path, {"accllm_layer": str(i), "accllm_dims": json.dumps(dims.to_json())})
        files.append(path.name)
    extras = {"embed": model.model.embed_tokens.weight.detach().float().cpu().contiguous(),
              "final_norm": model.model.norm.weight.detach().float().cpu().contiguous(),
              "inv_freq": rope_inv_freq(model.config)}
    save_file(extras, str(out_dir / EXTRAS))
    manifest = {"format": EXPORT_FORMAT, "dims": dims.to_json(), "settings": s.to_json(), "layers": files,
                "extras": EXTRAS, "export_tokens": tokens}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out_dir


def _register_inplace_and() -> None:
    """Λ visibility (``accllm.quant.attention.visibility``) uses ``&=`` on bool masks; the TorchScript
    exporter has no symbolic for in-place ``aten::__iand_``, so map it to ONNX ``And``."""
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("aten::__iand_", lambda g, a, b: g.op("And", a, b), 9)


def _annotate(path: Path, props: dict) -> None:
    import onnx

    m = onnx.load(str(path))
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def read_manifest(path) -> tuple[Path, dict]:
    """``(export directory, manifest)`` from an export directory, its ``model.json`` or one of its ``.onnx``."""
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
