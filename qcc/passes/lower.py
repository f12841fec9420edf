"""Model ops to kernel ops: NHWC storage, bit packing, fused layers.

Every tensor gets a storage (see :mod:`qcc.ir.kernels_ref`): levels of at most
``PLANE_BITS`` bits are ``bits`` planes (channels packed 64 to a word), wider levels are
``i16``; values are ``f32``. 4-D tensors become NHWC: a graph input is transposed once on
entry and a 4-D output once on exit.

A layer is ``IntConv`` with its output transform fused:

* ``IntConv -> Threshold``: thresholds on the exact accumulator, written as packed bits
  (bipolar) or float levels; never a float round trip;
* ``IntConv -> Mul(m) [-> Add(b)]``: ``float(acc) * m[c] + b[c]`` for a float reader.

A layer on planes costs (input planes x weight planes) popcount passes over K bits; when
that exceeds ``MAX_PLANE_PAIRS`` (or the conv is grouped) the input is widened to
``i16`` and the int32 kernel runs on levels instead. Both are exact. A plain float
``Conv`` runs the float kernel on values. Chains of elementwise float ops become one
``ew`` kernel; max pooling on levels is a max of codes (an OR for one plane).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node, Tensor
from qcc.ir.ops import (BinaryAttrs, ConcatAttrs, EwAttrs, EwStep, LayerAttrs, PoolAttrs, QuantAttrs,
                        QuantizeAttrs, ReshapeAttrs, TransposeAttrs, UnpackAttrs)
from qcc.ir.quant import QuantSpec
from qcc.passes.base import PassResult, prune

PLANE_BITS = 2
MAX_PLANE_PAIRS = 4
INT32_MAX = (1 << 31) - 1


def storage(spec: QuantSpec) -> str:
    """Where levels of this grid live: bit planes when narrow, int16 otherwise."""
    return "bits" if spec.bits <= PLANE_BITS else "i16"
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def lower(graph: Graph) -> PassResult:
    low = _Lowering(graph)
    for n in graph.nodes:
        if n.name + "|" + n.outputs[0] in low.fused:
            continue
        handler = _HANDLERS.get(n.op)
        if handler is None:
            raise QccError(f"op '{n.op}' has no kernel yet; supported after lowering: {', '.join(sorted(_HANDLERS))}",
                           node=n.name, op=n.op)
        handler(low, n)
    outs = [low.output(o) for o in graph.outputs]
    g = Graph(tuple(low.nodes), low.tensors, graph.inputs, tuple(outs), graph.name, dict(graph.meta))
    return PassResult(prune(g), True)


class _Lowering:
    def __init__(self, graph: Graph):
        self.g = graph
        self.nodes: list[Node] = []
        self.tensors: dict[str, Tensor] = {}
        self.phys: dict[str, str] = {}
        self.fused: set[str] = set()
        self.taken: set[str] = set()
        for name in graph.inputs:
            t = graph.tensors[name]
            self.tensors[name] = t
            self.phys[name] = self.to_nhwc(name, t, name) if len(t.shape) == 4 else name

    # ---- tensors ------------------------------------------------------------------------
    def new(self, base: str, shape, dtype="f32", quant=None, layout="") -> str:
        name, i = base, 0
        while name in self.tensors:
            i += 1
            name = f"{base}_{i}"
        self.tensors[name] = Tensor(name, tuple(shape), dtype, quant=quant, layout=layout)
        return name

    def emit(self, op: str, inputs, out: str, attrs, name: str) -> str:
        self.nodes.append(Node(op, tuple(inputs), (out,), attrs, name))
        return out

    def to_nhwc(self, name: str, t: Tensor, node_name: str) -> str:
        n, c, h, w = t.shape
        out = self.new(name + "__nhwc", (n, h, w, c), layout="NHWC")
        if c == 1 or h * w == 1:
            return self.emit("reshape", [name], out, ReshapeAttrs((n, h, w, c)), node_name)
        return self.emit("transpose", [name], out, TransposeAttrs(TO_NHWC), node_name)

    def spec_for(self, ir_name: str) -> QuantSpec:
        q = self.g.tensors[ir_name].quant
        return q.with_scale(q.scale.reshape(-1) if q.per_channel else q.scale.reshape(()))

    def phys_shape(self, ir_name: str) -> tuple[int, ...]:
        s = self.g.tensors[ir_name].shape
        return (s[0], s[2], s[3], s[1]) if len(s) == 4 else s

    def layout(self, ir_name: str) -> str:
        return "NHWC" if len(self.g.tensors[ir_name].shape) == 4 else "NC"

    # ---- storage conversions ---------------------------------------------------------
    def values(self, ir_name: str, node_name: str) -> str:
        """A float32 tensor of real values for IR tensor ``ir_name``."""
        p = self.phys[ir_name]
        t = self.tensors[p]
        if t.quant is None:
            return p
        out = self.new(ir_name + "__values", t.shape, layout=t.layout)
        if t.dtype == "f32":  # levels held as floats
            return self.emit("ew", [p], out, EwAttrs((EwStep("mul", _vec(t.quant.scale)),), node_name), node_name)
        return self.emit("unpack", [p], out, UnpackAttrs(t.quant, t.shape[-1]), node_name)

    def int_levels(self, p: str, node_name: str) -> str:
        """The levels of bits tensor ``p`` as int16."""
        t = self.tensors[p]
        if t.dtype != "bits":
            return p
        out = self.new(p + "__i16", t.shape, "i16", t.quant, t.layout)
        return self.emit("unpack", [p], out, UnpackAttrs(t.quant, t.shape[-1], "i16"), node_name)

    def output(self, ir_name: str) -> str:
        p = self.values(ir_name, ir_name)
        t = self.tensors[p]
        if t.layout == "NHWC":
            n, h, w, c = t.shape
            out = self.new(ir_name + "__nchw", (n, c, h, w), layout="NCHW")
            op, attrs = ("reshape", ReshapeAttrs((n, c, h, w))) if c == 1 or h * w == 1 else ("transpose", TransposeAttrs(TO_NCHW))
            p = self.emit(op, [p], out, attrs, ir_name)
        return p


def _vec(a) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return a.reshape(-1) if a.size > 1 else a.reshape(())


# ---- handlers ---------------------------------------------------------------------------

def _quantizer(low: _Lowering, n: Node) -> None:
    """Levels for a layer (``quantize`` kernel), or values for float readers (``ew`` chain)."""
    a = n.attrs
    if not a.codes and n.op != "MultiThreshold":
        return _elementwise(low, n)
    x = low.values(n.inputs[0], n.name)
    if not a.codes:  # MultiThreshold values: the count n, then out_scale * n + out_bias as QONNX does
        _check_thresholds_layout(low, n)
        t = low.tensors[x]
        count = low.new(n.outputs[0] + "__count", t.shape, layout=t.layout)
        low.emit("quantize", [x], count, QuantizeAttrs("thresholds", QuantSpec(0, a.thresholds.shape[1]),
                                                       thresholds=a.thresholds.astype(np.float32)), n.name)
        out = low.new(n.outputs[0], t.shape, layout=t.layout)
        steps = (EwStep("mul", np.float32(a.out_scale)), EwStep("add", np.float32(a.out_bias)))
        low.phys[n.outputs[0]] = low.emit("ew", [count], out, EwAttrs(steps, n.name), n.name)
        return
    spec = low.spec_for(n.outputs[0])
    if n.op == "BipolarQuant":
        attrs = QuantizeAttrs("sign", spec, scale=np.float32(1), zero=np.float32(0))
    elif n.op == "Sign":
        attrs = QuantizeAttrs("ternary", spec)
    elif n.op == "Quant" and a.bits == 1 and a.signed:  # QONNX: bipolar on x / scale + zero
        attrs = QuantizeAttrs("sign", spec, scale=_vec(a.scale), zero=_vec(a.zero))
    elif n.op == "MultiThreshold":
        _check_thresholds_layout(low, n)
        attrs = QuantizeAttrs("thresholds", spec, thresholds=a.thresholds.astype(np.float32))
    else:
        attrs = QuantizeAttrs("round", spec, scale=_vec(a.scale), zero=_vec(a.zero),
                              clamp=tuple(float(v) for v in a.int_range), rounding=a.rounding)
    kind = storage(spec)
    attrs = dataclasses.replace(attrs, out=kind)
    out = low.new(n.outputs[0], low.phys_shape(n.outputs[0]), kind, spec, low.layout(n.outputs[0]))
    low.phys[n.outputs[0]] = low.emit("quantize", [x], out, attrs, n.name)


def _check_thresholds_layout(low: _Lowering, n: Node) -> None:
    if n.attrs.channels_last and len(low.g.tensors[n.inputs[0]].shape) == 4 and n.attrs.thresholds.shape[0] > 1:
        raise QccError("per-channel thresholds with data_layout NHWC on a 4-D tensor are not supported; "
                       "qcc's 4-D tensors are NCHW in the graph (use data_layout NCHW)", node=n.name, op=n.op)


def _intconv(low: _Lowering, n: Node) -> None:
    g = low.g
    acc = n.outputs[0]
    w_t = g.tensors[n.inputs[1]]
    wl = np.transpose(w_t.data, (0, 2, 3, 1)).astype(np.int32)  # (Co, kh, kw, Ci/g)
    x_spec = g.tensors[n.inputs[0]].quant
    offset = g.const(n.inputs[2]).astype(np.int64) if len(n.inputs) > 2 else None
    bound = int((x_spec.max_abs * np.abs(wl).reshape(wl.shape[0], -1).sum(axis=1)
                 + (0 if offset is None else np.abs(offset))).max())
    if bound > INT32_MAX:
        raise QccError(f"the accumulator can reach {bound}, beyond int32", node=n.name, op="Conv")
    xp = low.phys[n.inputs[0]]
    planes = low.tensors[xp].dtype == "bits" and x_spec.bits * w_t.quant.bits <= MAX_PLANE_PAIRS and n.attrs.group == 1
    if not planes:
        xp = low.int_levels(xp, n.name)
    readers = g.consumers(acc)
    if not readers or g.is_output(acc):
        raise QccError("an integer accumulator must feed thresholds or one scale Mul", node=n.name, op="Conv")
    for reader in readers:  # one layer call per reader (e.g. two staircases of one accumulator)
        _layer_for(low, n, reader, wl, w_t.quant, xp, offset)


def _layer_for(low: _Lowering, n: Node, reader: Node, wl, w_spec, xp: str, offset) -> None:
    g = low.g
    mul = bias = thr = None
    out_name, out, spec = None, "f32", None
    if reader.op == "Threshold":
        thr = reader.attrs
        if offset is not None:  # sign * (acc + off) >= t  <=>  sign * acc >= t - sign * off
            thr = dataclasses.replace(thr, thr=thr.thr - (thr.sign * offset)[:, None])
            offset = None
        spec = low.spec_for(reader.outputs[0])
        out = storage(spec)
        out_name = reader.outputs[0]
        low.fused.add(reader.name + "|" + reader.outputs[0])
    elif reader.op == "Mul" and g.tensors[reader.inputs[1]].is_const:
        mul = g.const(reader.inputs[1]).reshape(-1).astype(np.float32)
        out_name = reader.outputs[0]
        low.fused.add(reader.name + "|" + out_name)
        add = g.sole_consumer(out_name)
        if add is not None and add.op == "Add" and g.tensors[add.inputs[1]].is_const:
            bias = np.broadcast_to(g.const(add.inputs[1]).reshape(-1), mul.shape).astype(np.float32)
            out_name = add.outputs[0]
            low.fused.add(add.name + "|" + out_name)
    else:
        raise QccError("an integer accumulator must feed thresholds or one scale Mul", node=n.name, op="Conv")
    attrs = LayerAttrs(n.attrs, wl, mul=mul, bias=bias, thr=thr, x_spec=low.tensors[xp].quant,
                       w_spec=w_spec, out=out, acc_offset=offset, source=n.name)
    y = low.new(out_name, low.phys_shape(out_name), out, spec, "NHWC")
    low.phys[out_name] = low.emit("layer", [xp], y, attrs, n.name)


def _conv(low: _Lowering, n: Node) -> None:
    g = low.g
    w = _const_value(g, n.inputs[1], n)
    bias = _const_value(g, n.inputs[2], n).reshape(-1) if len(n.inputs) > 2 and n.inputs[2] else None
    attrs = LayerAttrs(n.attrs, np.transpose(w, (0, 2, 3, 1)).astype(np.float32), bias=bias, source=n.name)
    out = low.new(n.outputs[0], low.phys_shape(n.outputs[0]), layout="NHWC")
    low.phys[n.outputs[0]] = low.emit("layer", [low.values(n.inputs[0], n.name)], out, attrs, n.name)


def _const_value(g: Graph, name: str, n: Node) -> np.ndarray:
    if g.tensors[name].is_const:
        return g.const(name).astype(np.float32)
    p = g.producer(name)
    if p is not None and p.op == "Dequant" and g.tensors[p.inputs[0]].is_const:
        return p.attrs.decode(g.const(p.inputs[0]))
    raise QccError(f"weight '{name}' must be a constant", node=n.name, op=n.op)


def _pool(low: _Lowering, n: Node) -> None:
    a: PoolAttrs = n.attrs
    p = low.phys[n.inputs[0]]
    t = low.tensors[p]
    if a.kind != "max":  # an average of levels is no level: pool the values
        p = low.values(n.inputs[0], n.name)
        t = low.tensors[p]
    if t.dtype == "bits":
        a = dataclasses.replace(a, levels=t.quant)
    out = low.new(n.outputs[0], low.phys_shape(n.outputs[0]), t.dtype, t.quant, "NHWC")
    low.phys[n.outputs[0]] = low.emit("pool", [p], out, a, n.name)


def _dequant(low: _Lowering, n: Node) -> None:
    if low.g.tensors[n.inputs[0]].is_const:
        return  # quantized weights: their readers decode them at compile time (_const_value)
    low.phys[n.outputs[0]] = low.values(n.inputs[0], n.name)


def _reshape(low: _Lowering, n: Node) -> None:
    src, dst = low.g.tensors[n.inputs[0]].shape, low.g.tensors[n.outputs[0]].shape
    p = low.phys[n.inputs[0]]
    spatial = (len(src) == 4 and src[2] * src[3] > 1) or (len(dst) == 4 and dst[2] * dst[3] > 1)
    if spatial:
        if len(dst) == 4:
            raise QccError(f"reshape {list(src)} -> {list(dst)} into spatial dims has no kernel yet", node=n.name, op=n.op)
        p = _to_nchw(low, low.values(n.inputs[0], n.name), n.name)
    t = low.tensors[p]
    shape = low.phys_shape(n.outputs[0])
    quant = t.quant
    out = low.new(n.outputs[0], shape, t.dtype, quant, low.layout(n.outputs[0]))
    low.phys[n.outputs[0]] = low.emit("reshape", [p], out, ReshapeAttrs(shape), n.name)


def _to_nchw(low: _Lowering, p: str, name: str) -> str:
    n_, h, w, c = low.tensors[p].shape
    out = low.new(p + "__nchw", (n_, c, h, w), layout="NCHW")
    return low.emit("transpose", [p], out, TransposeAttrs(TO_NCHW), name)


EW_OPS = {"Add": ("add", "add"), "Sub": ("sub", "rsub"), "Mul": ("mul", "mul"), "Div": ("div", "rdiv")}


def _steps(g: Graph, n: Node) -> list[EwStep]:
    if n.op == "BatchNormalization":
        a, b = n.attrs.affine()
        return [EwStep("mul", _vec(a)), EwStep("add", _vec(b))]
    if n.op == "Relu":
        return [EwStep("max", np.float32(0))]
    if n.op == "Clip":
        return [EwStep("max", np.float32(n.attrs.lo)), EwStep("min", np.float32(n.attrs.hi))]
    if n.op == "Sign":
        return [EwStep("sign")]
    if n.op == "Abs":
        return [EwStep("abs")]
    if n.op in _QUANT_STEPS:
        return _QUANT_STEPS[n.op](n.attrs)
    first_const = g.tensors[n.inputs[0]].is_const
    c = g.const(n.inputs[0] if first_const else n.inputs[1])
    rank = len(g.tensors[n.outputs[0]].shape)
    full = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for k, d in enumerate(full) if k != 1):
        raise QccError(f"constant of shape {list(c.shape)} varies along more than the channel axis; "
                       f"only scalars and per-channel constants are supported", node=n.name, op=n.op)
    return [EwStep(EW_OPS[n.op][1 if first_const else 0], _vec(c))]


def _quant_steps(a) -> list[EwStep]:
    """QONNX Quant on values, op by op: x / s + z, clamp, round, (y - z) * s."""
    pre = [EwStep("div", _vec(a.scale)), EwStep("add", _vec(a.zero))]
    post = [EwStep("sub", _vec(a.zero)), EwStep("mul", _vec(a.scale))]
    if a.bits == 1 and a.signed:
        return pre + [EwStep("bipolar")] + post
    lo, hi = a.int_range
    return pre + [EwStep("min", np.float32(hi)), EwStep("max", np.float32(lo)), EwStep("round", mode=a.rounding)] + post


def _trunc_steps(a) -> list[EwStep]:
    """QONNX Trunc v1 / v2 on values, in the order of the reference implementation."""
    steps = [EwStep("div", _vec(a.scale)), EwStep("add", _vec(a.zero)), EwStep("round", mode="ROUND")]
    if a.out_scale is None:
        return steps + [EwStep("div", np.float32(2.0 ** (a.in_bits - a.out_bits))), EwStep("round", mode=a.rounding),
                        EwStep("sub", _vec(a.zero)), EwStep("mul", _vec(a.scale))]
    tscale = (np.float32(2) ** np.round(np.log2((a.out_scale / a.scale).astype(np.float32)))).astype(np.float32)
    lo, hi = QuantAttrs(a.scale, a.zero, a.out_bits, a.signed, a.narrow).int_range
    return steps + [EwStep("div", _vec(tscale)), EwStep("min", np.float32(hi)), EwStep("max", np.float32(lo)),
                    EwStep("round", mode=a.rounding), EwStep("sub", _vec((a.zero / tscale).astype(np.float32))),
                    EwStep("mul", _vec(a.out_scale))]


_QUANT_STEPS = {
    "Quant": _quant_steps,
    "BipolarQuant": lambda a: [EwStep("bipolar"), EwStep("mul", _vec(a.scale))],
    "Trunc": _trunc_steps,
}


def _binary(low: _Lowering, n: Node) -> None:
    """Two computed operands: ``ew2``, one of them possibly one value per sample."""
    a, b = (low.values(i, n.name) for i in n.inputs)
    sa, sb = low.tensors[a].shape, low.tensors[b].shape
    bcast = "none" if sa == sb else ("a" if all(d == 1 for d in sa[1:]) else "b")
    t = low.tensors[b if bcast == "a" else a]
    out = low.new(n.outputs[0], t.shape, layout=t.layout)
    low.phys[n.outputs[0]] = low.emit("ew2", [a, b], out, BinaryAttrs(EW_OPS[n.op][0], bcast), n.name)


def _reduce_mean(low: _Lowering, n: Node) -> None:
    x = low.values(n.inputs[0], n.name)
    t = low.tensors[x]
    out = low.new(n.outputs[0], (t.shape[0],) + (1,) * (len(t.shape) - 1), layout=t.layout)
    low.phys[n.outputs[0]] = low.emit("mean", [x], out, None, n.name)


def _concat(low: _Lowering, n: Node) -> None:
    xs = [low.values(i, n.name) for i in n.inputs]
    channels = [low.tensors[x].shape[-1] for x in xs]
    t = low.tensors[xs[0]]
    out = low.new(n.outputs[0], t.shape[:-1] + (sum(channels),), layout=t.layout)
    offsets = tuple(int(o) for o in np.cumsum([0] + channels[:-1]))
    low.phys[n.outputs[0]] = low.emit("concat", xs, out, ConcatAttrs(offsets), n.name)


def _elementwise(low: _Lowering, n: Node) -> None:
    g = low.g
    computed = [i for i in n.inputs if i and not g.tensors[i].is_const]
    if len(computed) == 2:
        return _binary(low, n)
    x = computed[0]
    p = low.values(x, n.name)
    steps = _steps(g, n)
    prev = low.nodes[-1] if low.nodes else None
    t = low.tensors[p]
    if prev is not None and prev.op == "ew" and prev.outputs[0] == p and g.sole_consumer(x) is not None:
        low.nodes[-1] = prev.with_(attrs=EwAttrs(prev.attrs.steps + tuple(steps), prev.attrs.source + ", " + n.name))
        low.phys[n.outputs[0]] = p
        return
    out = low.new(n.outputs[0], t.shape, layout=t.layout)
    low.phys[n.outputs[0]] = low.emit("ew", [p], out, EwAttrs(tuple(steps), n.name), n.name)


def _softmax(low: _Lowering, n: Node) -> None:
    p = low.values(n.inputs[0], n.name)
    if low.tensors[p].layout == "NHWC":
        p = _to_nchw(low, p, n.name)
    t = low.tensors[p]
    out = low.new(n.outputs[0], t.shape, layout=t.layout)
    low.phys[n.outputs[0]] = low.emit("softmax", [p], out, n.attrs, n.name)


_HANDLERS = {
    "Quant": _quantizer, "BipolarQuant": _quantizer, "MultiThreshold": _quantizer, "Sign": _quantizer,
    "IntConv": _intconv, "Conv": _conv, "Pool": _pool, "Dequant": _dequant,
    "Flatten": _reshape, "Reshape": _reshape, "Transpose": _reshape,
    "BatchNormalization": _elementwise, "Relu": _elementwise, "Clip": _elementwise,
    "Add": _elementwise, "Sub": _elementwise, "Mul": _elementwise, "Div": _elementwise,
    "Softmax": _softmax, "Trunc": _elementwise, "Abs": _elementwise,
    "ReduceMean": _reduce_mean, "Concat": _concat,
}
