"""Pattern matching of the exported QONNX graphs onto the engine's units (the way FINN and hls4ml lower a graph).

Every node of a graph must belong to one matched pattern; anything else is refused with :class:`GraphRefused`
(a one-line ``ValueError`` naming the file, the node and its op). A decoder-layer graph is walked from its output
back to its ``hidden`` input through residual ``Add`` nodes; each residual adds one block computed from the
stream it adds to:

==================  ==========================================================================================
pattern             graph form (identity ``Cast`` nodes are transparent)
==================  ==========================================================================================
residual            ``Add(stream, block(stream))``
RMSNorm             ``Mul(Mul(x, Div(1, Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), eps)))), weight[H])``
quantised linear    ``MatMul(Quant_int8(x), Transpose(Slice(Flatten(Mul?(Quant_w(W[N,K/G,G], s, z, bits), mask)))))``
                    (2:4: the mask, or pruned weights as zeros in ``W`` and metadata ``accllm_sparsity`` ``2:4``)
                    with the activation ``Quant``'s scale computed from ``x`` by Brevitas' per-row statistics
RoPE                ``Add(Mul(x, Unsqueeze(cos)), Mul(Concat(Neg(Slice(x, D/2:D)), Slice(x, 0:D/2)), Unsqueeze(sin)))``
                    on ``x = Transpose(Reshape(linear, [1, T, -1, D]))``
attention           ``MatMul(Quant_int8(Mul(Softmax(Where(Λ mask, -inf, Mul(MatMul(Quant_int8(RoPE q),
                    gqa(Quant_uint4(RoPE k))), scaling))), gqa(s_v))), Round(gqa(Quant_uint4(v)) / gqa(s_v)))``
Λ mask              ``And(And(k <= q, k >= 0), Or(k < sinks, q - k < window))`` on ``position_ids``
SiLU·mul            ``Mul(Mul(g, Sigmoid(g)), u)``
==================  ==========================================================================================

The model-level graphs: ``embed.onnx`` (``Gather(embed[V, H], ids)``; RoPE tables ``Cos/Sin(Concat(f, f))`` with
``f = position_ids * inv_freq[D/2]``) and ``lm_head.onnx`` (RMSNorm, then ``MatMul(h, lm_head^T [H, V])``).
Constant sub-graphs (``Shape`` of a static shape, arithmetic on constants) are evaluated by onnx's reference
evaluator and count as constants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accllm.hls.export import SPARSITY_META
from accllm.sim.weight_stream import HEAD_WBITS
from accllm.sim.weight_stream import WEIGHT_BITS  # decoder linears' code widths (2 or 4, one per model)

ACT_BITS, KV_BITS = 8, 4  # what the integer core takes
HEAD_BITS = HEAD_WBITS  # the LM head's weights: the core's W4 mode


class GraphRefused(ValueError):
    """A graph the engine cannot compute: names the file, the node and its op."""


# ------------------------------------------------------------------ the graph, indexed

_BIG_INITIALIZER = 1 << 20  # bytes


class View:
    """One ONNX graph after qonnx's shape inference: producers, constants (initializers and folded constant
    sub-graphs), and which pattern claimed each node."""

    def __init__(self, path):
        import onnx
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.transformation.infer_shapes import InferShapes

        self.path = Path(path)
        self.file = self.path.name
        if not self.path.is_file():
            raise FileNotFoundError(f"graph {self.path} is missing from the export")
        try:
            model = onnx.load(str(self.path))
            # Large initializers (weights, masks) move into numpy arrays and leave the graph before shape
            # inference, which copies the graph several times over; their dims stay, which is all it reads.
            big = {}
            for t in model.graph.initializer:
                if t.HasField("raw_data") and len(t.raw_data) > _BIG_INITIALIZER:
                    big[t.name] = onnx.numpy_helper.to_array(t)
                    t.ClearField("raw_data")
            self.mw = ModelWrapper(model).transform(InferShapes())
            del model
        except Exception as e:  # noqa: BLE001 - any reader/shape-inference failure is a bad graph
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise GraphRefused(f"{self.file}: not a graph qonnx can read and shape-infer: {why}") from None
        g = self.mw.graph
        self.nodes = list(g.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consts = {i.name: big[i.name] if i.name in big else onnx.numpy_helper.to_array(i) for i in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.consts]
        self.outputs = [o.name for o in g.output]
        self.meta = {p.key: p.value for p in self.mw.model.metadata_props}
        self._types = {vi.name: vi.type.tensor_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
        self.claimed: dict[str, str] = {}
        self._fold()

    def _fold(self) -> None:
        from onnx.reference import ReferenceEvaluator

        for n in self.nodes:
            if n.domain not in ("", "ai.onnx"):
                continue
            if n.op_type == "Shape":
                shape = self.shape(n.input[0])
                if shape is None or any(not isinstance(s, int) or s < 0 for s in shape):
                    continue
                value = np.array(shape, np.int64)
            elif all(i == "" or i in self.consts for i in n.input) and len(n.output) == 1:
                ins = {i: self.consts[i] for i in n.input if i}
                value = ReferenceEvaluator(n).run(None, ins)[0]
            else:
                continue
            self.consts[n.output[0]] = np.asarray(value)
            self.claimed[n.name] = "constant"

    def shape(self, t: str):
        tt = self._types.get(t)
        return None if tt is None or not tt.HasField("shape") else [d.dim_value for d in tt.shape.dim]

    def is_identity_cast(self, n) -> bool:
        if n.op_type != "Cast":
            return False
        from onnx import helper
        from qonnx.util.basic import get_by_name

        to = helper.get_attribute_value(get_by_name(n.attribute, "to"))
        tt = self._types.get(n.input[0])
        return tt is not None and tt.elem_type == to

    def canon(self, t: str) -> tuple[str, list]:
        """``t`` with identity casts skipped, and the casts skipped."""
        casts = []
        while (n := self.producer.get(t)) is not None and self.is_identity_cast(n):
            casts.append(n)
            t = n.input[0]
        return t, casts

    def source(self, t: str) -> str:
        """``t`` through layout ops (Transpose, Reshape, Unsqueeze, identity Cast) back to where it is computed."""
        while True:
            t, _ = self.canon(t)
            n = self.producer.get(t)
            if n is None or n.op_type not in ("Transpose", "Reshape", "Unsqueeze"):
                return t
            t = n.input[0]

    def refuse(self, node, why: str):
        raise GraphRefused(f"{self.file}: node {node.name!r} ({node.op_type}): {why}")

    def describe(self, t: str) -> str:
        n = self.producer.get(t)
        if n is not None:
            return f"node {n.name!r} ({n.op_type})"
        if t in self.consts:
            return f"constant {t!r}"
        return f"graph input {t!r}" if t in self.inputs else f"tensor {t!r}"


# ------------------------------------------------------------------ a small pattern language

@dataclass(frozen=True)
class Op:
    """A node of type ``op`` whose inputs match ``ins`` (both orders tried when ``comm``); ``attrs`` are checked;
    ``tag`` binds the node's output tensor."""
    op: str
    ins: tuple = ()
    attrs: tuple = ()
    comm: bool = False
    tag: str | None = None


@dataclass(frozen=True)
class C:
    """A constant (initializer or folded), equal to ``value`` unless it is None; ``tag`` binds its value.
    ``C("")`` is an absent optional input."""
    value: object = None
    tag: str | None = None


@dataclass(frozen=True)
class T:
    """Any tensor, bound to ``tag``; a second use must be the same tensor (``loose``: the same up to layout ops)."""
    tag: str
    loose: bool = False


EMPTY = C("")


class Mismatch(Exception):
    def __init__(self, tensor: str, expected: str, node=None):
        super().__init__(expected)
        self.tensor, self.expected, self.node = tensor, expected, node


# ONNX / QONNX defaults of the attributes the patterns check
ATTR_DEFAULTS = {("Gather", "axis"): 0, ("ReduceMean", "keepdims"): 1, ("Softmax", "axis"): -1,
                 ("Flatten", "axis"): 1, ("Quant", "narrow"): 0, ("Quant", "rounding_mode"): "ROUND"}


def _attr(n, name):
    from onnx import helper

    for a in n.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return None


def match(v: View, p, t: str, b: dict) -> dict:
    """Match pattern ``p`` at tensor ``t``; returns the bindings extended (``_nodes``: the nodes matched)."""
    if isinstance(p, T):
        t, casts = v.canon(t)
        if casts:
            b = {**b, "_nodes": b.get("_nodes", []) + casts}
        if p.tag in b:
            same = v.source(t) == v.source(b[p.tag]) if p.loose else t == b[p.tag]
            if not same:
                raise Mismatch(t, f"the tensor bound as {p.tag} ({v.describe(b[p.tag])})", v.producer.get(t))
            return b
        return {**b, p.tag: t}
    if isinstance(p, C):
        if p.value == "":
            if t:
                raise Mismatch(t, "no input", v.producer.get(t))
            return b
        t = v.canon(t)[0]
        val = v.consts.get(t)
        if val is None:
            raise Mismatch(t, "a constant", v.producer.get(t))
        if p.value is not None:
            want = np.asarray(p.value, dtype=np.float64)
            got = np.asarray(val, dtype=np.float64)
            if got.size != want.size or not np.allclose(got.reshape(-1), want.reshape(-1), rtol=1e-6, atol=0):
                raise Mismatch(t, f"the constant {p.value}, got {got.reshape(-1)[:4].tolist()}", v.producer.get(t))
        return {**b, p.tag: val} if p.tag else b
    t, casts = v.canon(t)
    n = v.producer.get(t)
    if n is None or v.claimed.get(n.name) == "constant":
        raise Mismatch(t, f"a {p.op} node, found {v.describe(t)}", n)
    if n.op_type != p.op:
        raise Mismatch(t, f"{p.op}", n)
    for name, want in p.attrs:
        got = _attr(n, name)
        got = ATTR_DEFAULTS.get((p.op, name)) if got is None else got
        if got != want and not (isinstance(want, (list, tuple)) and list(got or []) == list(want)):
            raise Mismatch(t, f"{p.op} with {name}={want} (got {got})", n)
    ins = list(n.input)
    while len(ins) > len(p.ins) and ins[-1] == "":
        ins.pop()
    if len(ins) != len(p.ins):
        raise Mismatch(t, f"{p.op} with {len(p.ins)} inputs", n)
    err = None
    for order in ([ins, ins[::-1]] if p.comm else [ins]):
        try:
            b2 = {**b, "_nodes": b.get("_nodes", []) + casts + [n]}
            for pi, ti in zip(p.ins, order):
                b2 = match(v, pi, ti, b2)
            return {**b2, p.tag: n.output[0]} if p.tag else b2
        except Mismatch as e:
            err = err or e
    raise err


def apply(v: View, p, t: str, unit: str, anchor=None, b: dict | None = None) -> dict:
    """:func:`match`, claiming the matched nodes for ``unit``; a mismatch is refused naming the node found."""
    try:
        b = match(v, p, t, dict(b or {}))
    except Mismatch as e:
        where = f" (at {anchor.name!r})" if anchor is not None and e.node is not anchor else ""
        if e.node is not None:
            v.refuse(e.node, f"the {unit} pattern{where} expects {e.expected} here")
        n = anchor or v.producer.get(t)
        raise GraphRefused(f"{v.file}: node {n.name!r} ({n.op_type}): the {unit} pattern{where} expects "
                           f"{e.expected} at {v.describe(e.tensor)}") from None
    for n in b.get("_nodes", []):
        v.claimed.setdefault(n.name, unit)
    return b


# ------------------------------------------------------------------ the patterns

def _clamped_scale(a, qmax: str) -> Op:
    """Brevitas' scale restriction: sign(a) * clamp(|a|, min) / qmax."""
    sign = Op("Where", (Op("GreaterOrEqual", (a, C(0.0))), C(1.0), C(-1.0)))
    clamped = Op("Clip", (Op("Abs", (a,)), C(tag="scale_min"), EMPTY))
    return Op("Div", (Op("Mul", (sign, clamped), comm=True), C(tag=qmax)))


def _view(x) -> Op:
    return Op("Reshape", (x, C()))


# Per-row symmetric int8: absmax over the row.
_ABSMAX = Op("ReduceMax", (Op("Abs", (_view(T("x", True)),)), C([1])))
SYM_SCALE = _view(_clamped_scale(Op("Abs", (Op("Abs", (_ABSMAX,)),)), "qmax"))
# Per-row asymmetric uint4: range max - min(min, 0); zero point round(|min| / scale) clamped to [0, qmax].
_KV_MIN = Op("Clip", (Op("ReduceMin", (_view(T("stats_in")), C([1]))), EMPTY, C(0.0)), tag="kv_min")
_KV_MAX = Op("ReduceMax", (_view(T("stats_in")), C([1])))
_KV_RANGE = Op("Abs", (Op("Abs", (Op("Abs", (Op("Sub", (_KV_MAX, _KV_MIN)),)),)),))
ASYM_SCALE = _view(_clamped_scale(_KV_RANGE, "qmax"))
_ZR = Op("Round", (Op("Add", (Op("Div", (Op("Abs", (_view(T("kv_min")),)), T("scale"))), C(0.0)), comm=True),))
_ZC = Op("Where", (Op("Greater", (_ZR, C(tag="zmax"))), C(tag="zmax2"), _ZR))
ASYM_ZERO = Op("Where", (Op("Less", (_ZC, C(0.0))), C(0.0), _ZC))


def quant(v: View, t: str, unit: str, bits: int, signed: bool, anchor=None) -> dict:
    """A dynamic activation ``Quant`` at ``t``: checks its width and signedness against the engine's, and that its
    scale (and zero point) are Brevitas' per-row statistics of its own input. Returns ``x`` (the float input)."""
    from accllm.quant.checkpoint import ACT_MIN_SCALE

    b = apply(v, Op("Quant", (T("x"), T("scale"), T("zero"), C(tag="bits")),
                    (("narrow", 0), ("rounding_mode", "ROUND"))), t, unit, anchor)
    qn = v.producer[v.canon(t)[0]]
    got_bits, got_signed = int(np.asarray(b["bits"]).reshape(-1)[0]), _attr(qn, "signed")
    if got_bits != bits or bool(got_signed) != signed:
        v.refuse(qn, f"{'' if got_signed else 'u'}int{got_bits} {unit}: the engine takes "
                     f"{'int' if signed else 'uint'}{bits} here")
    qmax = 2 ** (bits - 1) if signed else 2 ** bits - 1
    x = b["x"]
    if signed:
        s = apply(v, SYM_SCALE, b["scale"], f"{unit} scale", qn, {"x": x})
        apply(v, C(0.0), b["zero"], f"{unit} zero point", qn)
    else:
        s = apply(v, ASYM_SCALE, b["scale"], f"{unit} scale", qn)
        stats_in = s["stats_in"]
        if v.source(stats_in) != v.source(x):
            v.refuse(qn, f"{unit}: the scale is computed from another tensor than the one quantised")
        z = apply(v, ASYM_ZERO, b["zero"], f"{unit} zero point", qn, {"kv_min": s["kv_min"], "scale": b["scale"]})
        if float(np.asarray(z["zmax"])) != qmax or float(np.asarray(z["zmax2"])) != qmax:
            v.refuse(qn, f"{unit}: zero point clamped to {z['zmax']}, the engine's uint{bits} clamps to {qmax}")
    if float(np.asarray(s["qmax"])) != qmax:
        v.refuse(qn, f"{unit}: scale divisor {s['qmax']} does not belong to a {bits}-bit quantiser ({qmax})")
    if not np.isclose(float(np.asarray(s["scale_min"])), ACT_MIN_SCALE, rtol=1e-6):
        v.refuse(qn, f"{unit}: minimum scale {s['scale_min']}, the engine's quantisers use {ACT_MIN_SCALE}")
    xs, ss = v.shape(x), v.shape(b["scale"])
    axis = -1 if signed else -2  # int8: per row; uint4 K/V (quantised transposed): per token and head
    want = None if xs is None else [1 if i == len(xs) + axis else n for i, n in enumerate(xs)]
    if want is None or ss is None or len(ss) != len(want) or any(w > 0 and s != w for s, w in zip(ss, want)) \
            or ss[axis] != 1:
        v.refuse(qn, f"{unit}: scale of shape {ss} for input {xs}; the engine quantises with one scale per "
                     f"{'row' if signed else 'token and head'}")
    return {"x": x, "node": qn, "scale": b["scale"], "stats_in": s.get("stats_in")}


_WQ = Op("Quant", (C(tag="w"), C(tag="w_scale"), C(tag="w_zero"), C(tag="w_bits")), (("rounding_mode", "ROUND"),),
         tag="wq")


def _w_layout(q) -> Op:
    """[N, K/G, G] -> [K, N]: the MatMul's weight operand."""
    flat = Op("Flatten", (q,), (("axis", 1),))
    return Op("Transpose", (Op("Slice", (flat, C(tag="s0"), C(tag="s1"), C(tag="s2"))),), (("perm", [1, 0]),))


W_MASKED = _w_layout(Op("Mul", (_WQ, C(tag="mask")), comm=True))  # 2:4 pruned
W_PLAIN = _w_layout(_WQ)


@dataclass
class Linear:
    node: str  # the MatMul
    weight_node: str
    x: str  # float input (quantised to int8 per row by the engine)
    out: str
    codes: np.ndarray  # uint8 [N, K]
    zeros: np.ndarray  # uint8 [N, K/G]
    scales: np.ndarray  # float32 [N, K/G]
    group: int
    masked: bool
    wbits: int = 2  # code width (the Quant node's bit width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape


def linear(v: View, t: str, wbits: int | tuple = WEIGHT_BITS, unit: str = "quantised linear") -> Linear:
    """The quantised linear whose MatMul produces ``t``; its weights must be unsigned ``wbits``-bit codes (one of
    ``wbits`` when a tuple)."""
    from qonnx.custom_op.general.quant import quant as qonnx_quant

    mm = v.producer.get(v.canon(t)[0])
    if mm is None or mm.op_type != "MatMul":
        raise Mismatch(t, "MatMul", mm)
    v.claimed[mm.name] = unit
    a = quant(v, mm.input[0], f"{unit} input", ACT_BITS, True, mm)
    wq_t = v.canon(mm.input[1])[0]
    try:
        b = match(v, W_MASKED, wq_t, {})
    except Mismatch:
        b = apply(v, W_PLAIN, wq_t, f"{unit} weight", mm)
    for n in b["_nodes"]:
        v.claimed.setdefault(n.name, unit)
    wq = v.producer[b["wq"]]
    bits = int(np.asarray(b["w_bits"]).reshape(-1)[0])
    allowed = (wbits,) if isinstance(wbits, int) else tuple(wbits)
    if bits not in allowed or _attr(wq, "signed") != 0 or _attr(wq, "narrow") != 0:
        v.refuse(wq, f"{bits}-bit {'signed' if _attr(wq, 'signed') else 'unsigned'} weights: the engine's cores "
                     f"take unsigned {' or '.join(map(str, allowed))}-bit weights with a zero point for the {unit}")
    w, scale, zp = b["w"], b["w_scale"], b["w_zero"]
    if w.ndim != 3 or scale.shape != (w.shape[0], w.shape[1], 1) or zp.shape != scale.shape:
        v.refuse(wq, f"weight/scale/zero point shapes {w.shape}/{scale.shape}/{zp.shape} are not group-wise "
                     "[N, K/G, G] / [N, K/G, 1]")
    n_out, ng, g = w.shape
    k = ng * g
    if [int(np.asarray(b[s]).reshape(-1)[0]) for s in ("s0", "s1", "s2")] != [0, k, 1]:
        v.refuse(v.producer[v.producer[wq_t].input[0]], f"the weight slice must keep all {k} inputs")
    deq = qonnx_quant(w, scale, zp, np.asarray(b["w_bits"]), signed=0, narrow=0, rounding_mode="ROUND")
    if "mask" in b:
        mask = b["mask"]
        if mask.shape != w.shape or not np.isin(mask, (0.0, 1.0)).all():
            v.refuse(wq, "the weight mask must be 0/1 per weight")
        deq = deq * mask
    sparsity = v.meta.get(SPARSITY_META)  # the export's 2:4 form: pruned weights are zeros in W, no mask
    if sparsity not in (None, "2:4"):
        v.refuse(wq, f"metadata {SPARSITY_META}={sparsity!r}: the engine's sparse mode is 2:4")
    codes = np.rint(deq / scale + zp)
    if codes.min() < 0 or codes.max() > 255:
        v.refuse(wq, f"weight codes in [{codes.min():g}, {codes.max():g}] do not fit 8 bits")
    codes = codes.astype(np.uint8).reshape(n_out, k)  # one byte a code: the largest array the compiler holds
    zeros = np.rint(zp).astype(np.uint8).reshape(n_out, ng)
    if not np.array_equal(zeros, zp.reshape(n_out, ng)):
        v.refuse(wq, "zero points must be integers")
    return Linear(mm.name, wq.name, a["x"], mm.output[0], codes, zeros, scale.reshape(n_out, ng).astype(np.float32),
                  g, "mask" in b or sparsity == "2:4", bits)


_INV_RMS = Op("Div", (C(1.0), Op("Sqrt", (Op("Add", (
    Op("ReduceMean", (Op("Pow", (T("x"), C(2.0))), C([-1])), (("keepdims", 1),)), C(tag="eps")), comm=True),))))
RMSNORM = Op("Mul", (Op("Mul", (T("x"), _INV_RMS), comm=True), C(tag="weight")), comm=True)


def rmsnorm(v: View, t: str, unit: str = "RMSNorm") -> dict:
    b = apply(v, RMSNORM, t, unit)
    w = np.asarray(b["weight"], np.float32)
    if w.ndim != 1:
        v.refuse(v.producer[v.canon(t)[0]], f"RMSNorm weight of shape {w.shape}, expected one value per channel")
    # eps is stored as float32; its shortest decimal is the value the model was configured with
    eps = float(str(np.float32(np.asarray(b["eps"]).reshape(-1)[0])))  # str: numpy 2 repr names the type
    return {"x": b["x"], "weight": w, "eps": eps, "out": t, "node": v.producer[v.canon(t)[0]].name}


def _heads(x) -> Op:
    return Op("Transpose", (Op("Reshape", (x, C(tag="head_shape"))),), (("perm", [0, 2, 1, 3]),))


ROPE = Op("Add", (
    Op("Mul", (_heads(T("lin")), Op("Unsqueeze", (T("cos"), C([1])))), comm=True),
    Op("Mul", (Op("Concat", (Op("Neg", (Op("Slice", (_heads(T("lin")), C(tag="h0"), C(tag="h1"), C([-1]))),)),
                             Op("Slice", (_heads(T("lin")), C([0]), C(tag="h2"), C([-1])))), (("axis", -1),)),
               Op("Unsqueeze", (T("sin"), C([1])))), comm=True)), comm=True)


def rope(v: View, t: str, unit: str) -> dict:
    b = apply(v, ROPE, t, unit)
    d = int(np.asarray(b["head_shape"]).reshape(-1)[-1])
    halves = [int(np.asarray(b[k]).reshape(-1)[0]) for k in ("h0", "h1", "h2")]
    if halves != [d // 2, d, d // 2] and halves != [d // 2, np.iinfo(np.int64).max, d // 2]:
        v.refuse(v.producer[v.canon(t)[0]], f"{unit}: rotate_half slices {halves} do not halve a head of {d}")
    for k in ("cos", "sin"):
        if b[k] != k or k not in v.inputs:
            v.refuse(v.producer[v.canon(t)[0]], f"{unit}: the {k} table must be the graph input {k!r}")
    return {"lin": b["lin"], "head_dim": d}


def _gqa(x, tag) -> Op:
    """Repeat KV heads for the query heads that share them."""
    return Op("Reshape", (Op("Tile", (Op("Unsqueeze", (x, C([2]))), C(tag=tag))), C()))


def _swap(x) -> Op:
    """Swap the last two axes."""
    return Op("Transpose", (x,), (("perm", [0, 1, 3, 2]),))


QK = Op("MatMul", (T("q_quant"), _swap(_gqa(_swap(T("k_quant")), "k_reps"))))
POS = Op("Gather", (T("position_ids"), C(0)), (("axis", 0),))
QPOS, KPOS = Op("Unsqueeze", (POS, C([1]))), Op("Unsqueeze", (POS, C([0])))
CAUSAL = Op("And", (Op("LessOrEqual", (KPOS, QPOS)), Op("GreaterOrEqual", (KPOS, C(0)))), comm=True)
IN_WINDOW = Op("Less", (Op("Sub", (QPOS, KPOS)), C(tag="window")), tag="window_cmp")
LAMBDA = Op("And", (CAUSAL, Op("Or", (Op("Less", (KPOS, C(tag="sinks"))), IN_WINDOW), comm=True)), comm=True)
SCALED = Op("Mul", (QK, C(tag="scaling")), comm=True, tag="score_mul")
SCORES = Op("Where", (Op("Not", (T("visible"),)), C(float("-inf")), SCALED))
# V's per-token scale folded into the probabilities before their int8 quantiser (the engine's PV mode)
PROBS = Op("Mul", (Op("Softmax", (SCORES,), (("axis", -1),), tag="softmax"),
                   _swap(_gqa(_swap(T("v_scale")), "s_reps"))), comm=True)
V_INT = Op("Round", (Op("Div", (_gqa(_swap(T("v_quant")), "v_reps"), _gqa(_swap(T("v_scale")), "s_reps2"))),))
ATTN_OUT = Op("Reshape", (Op("Transpose", (Op("MatMul", (T("p_quant"), V_INT), tag="pv"),), (("perm", [0, 2, 1, 3]),)),
                          C()))


@dataclass
class Attention:
    node: str  # the PV MatMul
    q: str  # q / k / v linear outputs
    k: str
    v: str
    heads: int
    kv_heads: int
    head_dim: int
    sinks: int
    window: int
    mask_node: str  # the Λ mask's window comparison


def attention(v: View, t: str) -> Attention:
    """The Λ attention whose output (``[1, T, heads * D]``, before o_proj) is ``t``."""
    unit = "attention"
    a = apply(v, ATTN_OUT, t, unit)
    pv = v.producer[a["pv"]]
    p = quant(v, a["p_quant"], "attention probabilities", ACT_BITS, True, pv)
    vq = quant(v, a["v_quant"], "V cache", KV_BITS, False, pv)
    if v.canon(a["v_scale"])[0] != v.canon(vq["scale"])[0]:
        v.refuse(pv, "attention: V is not rescaled by the scale of its own quantiser")
    b = apply(v, PROBS, p["x"], unit, pv, {"v_scale": a["v_scale"]})
    sm = v.producer[b["softmax"]]
    q = quant(v, b["q_quant"], "attention query", ACT_BITS, True, sm)
    k = quant(v, b["k_quant"], "K cache", KV_BITS, False, sm)
    mask = apply(v, LAMBDA, b["visible"], "Λ mask", sm)
    if mask["position_ids"] != "position_ids":
        v.refuse(sm, "the Λ mask must be computed from the graph input position_ids")
    qr = rope(v, q["x"], "RoPE (query)")
    kt = apply(v, Op("Transpose", (T("rot"),), (("perm", [0, 1, 3, 2]),)), k["x"], "K layout", sm)
    if v.canon(k["stats_in"])[0] != kt["rot"]:
        v.refuse(sm, "K cache: its scale is not computed per token and head of the rotated key")
    kr = rope(v, kt["rot"], "RoPE (key)")
    vl = apply(v, Op("Transpose", (Op("Reshape", (T("lin"), C(tag="head_shape"))),), (("perm", [0, 2, 3, 1]),)),
               vq["x"], "V layout", pv)
    apply(v, _heads(T("lin")), vq["stats_in"], "V layout", pv, {"lin": vl["lin"]})
    d = qr["head_dim"]
    if kr["head_dim"] != d or int(np.asarray(vl["head_shape"]).reshape(-1)[-1]) != d:
        v.refuse(pv, "attention: query, key and value heads differ in size")
    n_q, n_kv, n_v = (v.shape(x)[-1] for x in (qr["lin"], kr["lin"], vl["lin"]))
    if n_q % d or n_kv % d or n_v != n_kv or (n_q // d) % (n_kv // d):
        v.refuse(pv, f"attention: {n_q} query / {n_kv} key / {n_v} value channels do not split into heads of {d}")
    heads, kv_heads = n_q // d, n_kv // d
    groups = heads // kv_heads
    for key, bb in (("k_reps", b), ("s_reps", b), ("v_reps", a), ("s_reps2", a)):
        reps = [int(r) for r in np.asarray(bb[key]).reshape(-1)]
        if reps != [1, 1, groups, 1, 1]:
            v.refuse(pv, f"attention: KV heads repeated {reps}, expected {groups} query heads per KV head")
    scaling = float(np.asarray(b["scaling"]).reshape(-1)[0])
    if np.float32(scaling) != np.float32(d ** -0.5):
        v.refuse(v.producer[b["score_mul"]], f"attention score scale {scaling}: the engine scales by "
                                             f"1/sqrt(head_dim) = {d ** -0.5:.6g}")
    sinks, window = (int(np.asarray(mask[key]).reshape(-1)[0]) for key in ("sinks", "window"))
    if sinks < 0 or window <= 0:
        v.refuse(v.producer[b["visible"]], f"Λ mask with {sinks} sinks and a window of {window}")
    window_node = v.producer[mask["window_cmp"]].name
    return Attention(pv.name, qr["lin"], kr["lin"], vl["lin"], heads, kv_heads, d, sinks, window, window_node)


SILU_MUL = Op("Mul", (Op("Mul", (T("g"), Op("Sigmoid", (T("g"),))), comm=True), T("u")), comm=True)


# ------------------------------------------------------------------ a decoder layer

@dataclass
class Block:
    kind: str  # "attention" | "mlp"
    norm: dict  # RMSNorm: weight, eps
    linears: dict  # role -> Linear
    attention: Attention | None = None
    residual: str = ""  # the residual Add node


@dataclass
class LayerMatch:
    file: str
    blocks: list  # in execution order
    meta: dict = field(default_factory=dict)

    def block(self, kind: str) -> Block:
        return next(b for b in self.blocks if b.kind == kind)


def _block(v: View, add, y: str, stream: str) -> Block:
    """The block ``y`` that residual ``add`` adds to ``stream``: attention (o_proj of Λ attention) or MLP
    (down_proj of SiLU·mul)."""
    out = linear(v, y)
    x = out.x
    if not _is_attention_out(v, x):
        b = apply(v, SILU_MUL, x, "SiLU·mul", v.producer[v.canon(y)[0]])
        gate, up = linear(v, b["g"]), linear(v, b["u"])
        lins = {"gate_proj": gate, "up_proj": up, "down_proj": out}
        kind, att = "mlp", None
    else:
        att = attention(v, x)
        lins = {"q_proj": linear(v, att.q), "k_proj": linear(v, att.k), "v_proj": linear(v, att.v), "o_proj": out}
        kind = "attention"
    ins = {v.canon(lin.x)[0] for r, lin in lins.items() if r not in ("o_proj", "down_proj")}
    if len(ins) != 1:
        v.refuse(add, f"the {kind} block's linears read different tensors {sorted(ins)}")
    norm = rmsnorm(v, ins.pop(), f"RMSNorm ({kind})")
    if v.canon(norm["x"])[0] != v.canon(stream)[0]:
        v.refuse(add, f"residual: the {kind} block is computed from {v.describe(norm['x'])}, not from the stream it "
                      f"is added to ({v.describe(stream)})")
    return Block(kind, norm, lins, att, add.name)


def _is_attention_out(v: View, x: str) -> bool:
    n = v.producer.get(v.canon(x)[0])
    return n is not None and n.op_type == "Reshape"


def match_layer(path) -> LayerMatch:
    """Match one decoder-layer graph; every node must be claimed by a pattern."""
    v = View(path)
    for name in ("hidden", "cos", "sin", "position_ids"):
        if name not in v.inputs:
            raise GraphRefused(f"{v.file}: a decoder layer takes inputs hidden, cos, sin, position_ids; "
                               f"{name!r} is missing (inputs: {v.inputs})")
    if len(v.outputs) != 1:
        raise GraphRefused(f"{v.file}: a decoder layer has one output, found {v.outputs}")
    t, blocks = v.outputs[0], []
    while v.canon(t)[0] != "hidden":
        add = v.producer.get(v.canon(t)[0])
        if add is None:
            raise GraphRefused(f"{v.file}: the output is not computed from the input hidden ({v.describe(t)})")
        if add.op_type != "Add":
            v.refuse(add, "the engine's residual is stream + block(stream) (ADD); expected an Add here")
        v.claimed[add.name] = "residual"
        ins = [v.canon(i)[0] for i in add.input]
        kinds = [getattr(v.producer.get(i), "op_type", None) for i in ins]
        if "MatMul" not in kinds:
            v.refuse(add, "residual: neither input is a linear block's output")
        y = ins[kinds.index("MatMul")]
        stream = ins[1 - kinds.index("MatMul")] if kinds.count("MatMul") == 1 else ins[0]
        if kinds.count("MatMul") == 2:
            v.refuse(add, "residual: both inputs are linear outputs; one must be the residual stream")
        try:
            blocks.insert(0, _block(v, add, y, stream))
        except Mismatch as e:
            if e.node is not None:
                v.refuse(e.node, f"expected {e.expected} (block added by residual {add.name!r})")
            v.refuse(add, f"expected {e.expected} at {v.describe(e.tensor)}")
        t = stream
    kinds = [b.kind for b in blocks]
    if sorted(kinds) != ["attention", "mlp"]:
        raise GraphRefused(f"{v.file}: a decoder layer is one attention block and one MLP block, found {kinds or 'none'}")
    _check_all_claimed(v)
    return LayerMatch(v.file, blocks, v.meta)


def _check_all_claimed(v: View) -> None:
    for n in v.nodes:
        if n.name not in v.claimed:
            v.refuse(n, "matches no pattern the engine implements")


# ------------------------------------------------------------------ model-level graphs

_FREQS = Op("Concat", (Op("Mul", (Op("Unsqueeze", (Op("Cast", (T("position_ids"),), (("to", 1),)), C([-1]))),
                                  C(tag="inv_freq")), comm=True, tag="f"),) * 2, (("axis", -1),))


@dataclass
class EmbedMatch:
    file: str
    embed: np.ndarray  # float32 [V, H]
    inv_freq: np.ndarray  # float32 [D/2]
    meta: dict


def match_embed(path) -> EmbedMatch:
    """``embed.onnx``: ``(ids, position_ids) -> (hidden, cos, sin)``."""
    v = View(path)
    outs = {o: o for o in v.outputs}
    if set(v.inputs) != {"ids", "position_ids"} or set(outs) != {"hidden", "cos", "sin"}:
        raise GraphRefused(f"{v.file}: the embedding graph maps (ids, position_ids) to (hidden, cos, sin); "
                           f"it has inputs {v.inputs} and outputs {v.outputs}")
    e = apply(v, Op("Gather", (C(tag="embed"), T("ids")), (("axis", 0),)), "hidden", "embedding")
    if e["ids"] != "ids":
        v.refuse(v.producer["hidden"], "the embedding must look up the graph input ids")
    freqs = {}
    for fn, out in (("Cos", "cos"), ("Sin", "sin")):
        b = apply(v, Op(fn, (_FREQS,)), out, "RoPE table")
        if b["position_ids"] != "position_ids":
            v.refuse(v.producer[out], "RoPE angles must come from the graph input position_ids")
        freqs[out] = np.asarray(b["inv_freq"], np.float32).reshape(-1)
    if not np.array_equal(freqs["cos"], freqs["sin"]):
        v.refuse(v.producer["sin"], "cos and sin tables use different frequencies")
    _check_all_claimed(v)
    emb = np.asarray(e["embed"], np.float32)
    if emb.ndim != 2:
        v.refuse(v.producer["hidden"], f"embedding table of shape {emb.shape}, expected [vocab, hidden]")
    return EmbedMatch(v.file, emb, freqs["cos"], v.meta)


@dataclass
class HeadMatch:
    file: str
    node: str  # the LM head's MatMul
    norm: dict
    lm_head: Linear  # [V, H], DENSE HEAD_BITS-bit codes
    meta: dict


def match_head(path) -> HeadMatch:
    """``lm_head.onnx``: ``hidden -> logits`` (final RMSNorm, then the LM head: a quantised linear, int8 input and
    dense group-wise ``HEAD_BITS``-bit weights)."""
    v = View(path)
    if v.inputs != ["hidden"] or v.outputs != ["logits"]:
        raise GraphRefused(f"{v.file}: the LM head graph maps hidden to logits; it has inputs {v.inputs} "
                           f"and outputs {v.outputs}")
    unit = "LM head"
    try:
        head = linear(v, "logits", HEAD_BITS, unit)
    except Mismatch as e:
        n = e.node or v.producer.get(v.canon("logits")[0])
        if n is None:
            raise GraphRefused(f"{v.file}: the {unit} expects {e.expected} at {v.describe(e.tensor)}") from None
        v.refuse(n, f"the {unit} is a quantised linear (int8 input, {HEAD_BITS}-bit group-wise weights); "
                    f"expected {e.expected} here")
    if head.masked:
        v.refuse(next(n for n in v.nodes if n.name == head.weight_node), f"the {unit} is dense; its weights carry "
                                                                            "a 2:4 mask")
    norm = rmsnorm(v, head.x, "RMSNorm (final)")
    if v.canon(norm["x"])[0] != "hidden":
        v.refuse(v.producer[v.canon(head.x)[0]], "the final RMSNorm must read the graph input hidden")
    _check_all_claimed(v)
    return HeadMatch(v.file, head.node, norm, head, v.meta)


def check_chain(files: list) -> None:
    """Each graph's outputs feed the next one's inputs (names, shapes, element types); a break is refused naming
    the node that makes the output."""
    import onnx

    def sig(x) -> str:
        tt = x.type.tensor_type
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
        return f"{[d.dim_value for d in tt.shape.dim]} {dtype}"

    def io(path):
        g = onnx.load(str(path), load_external_data=False).graph
        inits = {i.name for i in g.initializer}
        producer = {o: n for n in g.node for o in n.output}
        return ({x.name: sig(x) for x in g.input if x.name not in inits}, {x.name: sig(x) for x in g.output}, producer)

    names = [Path(f).name for f in files]
    _, embed_out, embed_prod = io(files[0])
    prev = ("hidden", embed_out.get("hidden"), embed_prod.get("hidden"), names[0])
    for path, name in zip(files[1:], names[1:]):
        ins, outs, producer = io(path)
        for t in ("cos", "sin"):
            if t in ins and ins[t] != embed_out.get(t):
                raise GraphRefused(f"{name}: input {t!r} {ins[t]} is not what {names[0]} makes: {embed_out.get(t)}")
        if "hidden" not in ins or ins["hidden"] != prev[1]:
            n = prev[2]
            who = f"node {n.name!r} ({n.op_type})" if n is not None else f"input {prev[0]!r}"
            raise GraphRefused(f"{prev[3]}: {who} makes output {prev[0]!r} {prev[1]}, which does not feed "
                               f"{name}'s input 'hidden' {ins.get('hidden')}")
        if len(outs) != 1:
            raise GraphRefused(f"{name}: one output expected, found {list(outs)}")
        out = next(iter(outs))
        prev = (out, outs[out], producer.get(out), name)
