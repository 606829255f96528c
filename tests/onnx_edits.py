"""Edits of exported graphs, as a user would make them with the onnx API (for the ONNX-contract tests)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def copy_export(src, dst) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint"))
    return Path(dst)


def edit(path, fn) -> None:
    """Load graph ``path``, apply ``fn(model)``, save it back."""
    m = onnx.load(str(path))
    fn(m)
    onnx.save(m, str(path))


def node(m, name):
    for n in m.graph.node:
        if n.name == name:
            return n
    raise KeyError(f"no node {name!r}")


def set_op(name, op):
    def fn(m):
        node(m, name).op_type = op
        del node(m, name).attribute[:]
    return fn


def const(m, name):
    """Value of an initializer, or of a tensor computed from initializers only."""
    from onnx.reference import ReferenceEvaluator

    for i in m.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    n = next((n for n in m.graph.node if name in n.output), None)
    if n is None:
        raise KeyError(f"no initializer {name!r}")
    return ReferenceEvaluator(n).run(None, {i: const(m, i) for i in n.input if i})[list(n.output).index(name)]


def set_input_const(name, index, value):
    """Feed input ``index`` of node ``name`` from a fresh initializer ``value`` (other readers keep theirs)."""
    def fn(m):
        n = node(m, name)
        old = const(m, n.input[index])
        new = f"{name}/edited_{index}"
        arr = np.asarray(value, old.dtype).reshape(old.shape)
        m.graph.initializer.append(numpy_helper.from_array(arr, new))
        n.input[index] = new
    return fn


def scale_input_const(name, index, factor):
    """Multiply constant input ``index`` of node ``name`` (None: its one initializer input) by ``factor``."""
    def fn(m):
        n = node(m, name)
        inits = {i.name for i in m.graph.initializer}
        i = index if index is not None else next(k for k, t in enumerate(n.input) if t in inits)
        set_input_const(name, i, const(m, n.input[i]) * factor)(m)
    return fn


def remove_node(name):
    """Drop node ``name``; its readers read its first input instead."""
    def fn(m):
        n = node(m, name)
        for r in m.graph.node:
            for i, t in enumerate(r.input):
                if t == n.output[0]:
                    r.input[i] = n.input[0]
        m.graph.node.remove(n)
    return fn


def rewire(name, index, tensor):
    def fn(m):
        node(m, name).input[index] = tensor
    return fn


def topo_sort(m) -> None:
    made = {i.name for i in m.graph.input} | {i.name for i in m.graph.initializer} | {""}
    todo, done = list(m.graph.node), []
    while todo:
        ready = [n for n in todo if all(i in made for i in n.input)]
        assert ready, "graph has a cycle"
        for n in ready:
            done.append(n)
            todo.remove(n)
            made.update(n.output)
    del m.graph.node[:]
    m.graph.node.extend(done)


def mlp_first(m) -> None:
    """Reorder a decoder layer's residual blocks: MLP on the layer input, then attention on its result."""
    a_cast, m_cast = node(m, "/layer/input_layernorm/Cast"), node(m, "/layer/post_attention_layernorm/Cast")
    a_add, m_add = node(m, "/layer/Add"), node(m, "/layer/Add_1")
    mlp_out = "/layer/mlp_residual_output"
    a_cast.input[0], m_cast.input[0] = mlp_out, "hidden"
    m_add.output[0], a_add.output[0] = mlp_out, m.graph.output[0].name
    topo_sort(m)


def set_lambda(onnx_dir, sinks: int, window: int) -> None:
    """The Λ constants (the mask's Less comparisons) of every layer graph."""
    for p in sorted(Path(onnx_dir).glob("layer*.onnx")):
        edit(p, lambda m: (set_input_const("/layer/self_attn/Less", 1, sinks)(m),
                           set_input_const("/layer/self_attn/Less_1", 1, window)(m)))


def _weight_and_mask(m, proj):
    """The weight Quant of ``proj``, its (W, scale, zero point) and the kept weights (0/1): the export writes 2:4
    pruned weights as zeros in W (metadata ``accllm_sparsity``), no mask tensor."""
    parent = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    q = node(m, f"/layer/{parent}/{proj}/weight_quant/export_handler/Quant")
    w = const(m, q.input[0])
    return q, w, const(m, q.input[1]), const(m, q.input[2]), (w != 0).astype(w.dtype)


def unprune_one(proj):
    """Give one pruned weight of ``proj`` a value other than zero."""
    def fn(m):
        q, w, s, z, mask = _weight_and_mask(m, proj)
        nonzero = (np.rint(w * mask / s + z) != z).reshape(-1, 4)  # quads of the 2:4 pattern
        quad = int(np.argmax(nonzero.sum(1) == 2))  # two kept weights off the zero point: a third breaks 2:4
        i = np.unravel_index(quad * 4 + int(np.argmin(nonzero[quad])), mask.shape)
        code = 1.0 if z[i[0], i[1], 0] != 1 else 2.0
        w = w.copy()
        w[i] = (code - z[i[0], i[1], 0]) * s[i[0], i[1], 0]
        set_input_const(q.name, 0, w)(m)
    return fn


def set_metadata(key, value):
    """Set (``value`` None: remove) one metadata entry of the graph."""
    def fn(m):
        kept = [(p.key, p.value) for p in m.metadata_props if p.key != key]
        del m.metadata_props[:]
        for k, v in kept + ([(key, value)] if value is not None else []):
            m.metadata_props.add(key=k, value=v)
    return fn


def bump_code(proj):
    """Move one kept weight of ``proj`` to the neighbouring 2-bit code."""
    def fn(m):
        q, w, s, z, mask = _weight_and_mask(m, proj)
        i = np.unravel_index(int(np.argmax(mask)), mask.shape)
        code = np.rint(w[i] / s[i[0], i[1], 0] + z[i[0], i[1], 0])
        w = w.copy()
        w[i] += (1 if code < 3 else -1) * s[i[0], i[1], 0]
        set_input_const(q.name, 0, w)(m)
    return fn


def add_node(op, inputs, name):
    """A node whose output nobody reads (a graph still computes the same output)."""
    def fn(m):
        m.graph.node.append(onnx.helper.make_node(op, list(inputs), [f"{name}_out"], name=name))
    return fn
