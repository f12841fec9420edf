"""ONNX / QONNX models into qcc's IR; the only module that reads ONNX protobufs.

The importer checks the model with onnx's checker and shape inference, binds a dynamic
batch dimension, turns initializers and ``Constant`` nodes into constant tensors (an
input that has an initializer is a constant with a default, as Brevitas exports them),
and converts each node through one table, ``CONVERTERS``. Quantizer parameters (scale,
zero point, bit width) must be constants; they become attributes. Shapes are derived by
running each converted node through the IR interpreter on zeros, so shape rules are
written once, in :mod:`qcc.ir.interp`.

Anything the table does not cover raises :class:`QccError` with the node, the op and
what is supported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from qcc.errors import QccError
from qcc.frontend import functions
from qcc.ir import interp
from qcc.ir.graph import Graph, Node, Tensor
from qcc.ir.ops import (BatchNormAttrs, BipolarQuantAttrs, ClipAttrs, ConvAttrs, FlattenAttrs,
                        MultiThresholdAttrs, PoolAttrs, QuantAttrs, ReshapeAttrs, SignAttrs, SoftmaxAttrs,
                        TransposeAttrs, TruncAttrs)
from qcc.passes.plan_memory import MAX_TENSOR_BYTES

QONNX_DOMAINS = ("onnx.brevitas", "qonnx.custom_op.general", "finn.custom_op.general")
STANDARD_DOMAINS = ("", "ai.onnx")
MAX_MODEL_BYTES = 2 << 30


def human_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def check_size(what: str, shape, limit: int, node=None, op=None) -> None:
    """Refuse a float32 tensor of ``shape`` larger than ``limit`` bytes, before it is allocated.
    Works in Python integers, so dims whose product overflows int64 are caught too."""
    count = 1
    for d in shape:
        count *= int(d)
    if 4 * count > limit:
        size = f"{count:.3g} elements" if count >= 1 << 62 else f"{count} elements ({human_bytes(4 * count)} as float32)"
        raise QccError(f"{what} of shape {[int(d) for d in shape]} has {size}, above the limit of {human_bytes(limit)} "
                       f"(raise it with --max-arena or QCC_MAX_ARENA)", node=node, op=op)


def load_model(source) -> onnx.ModelProto:
    """Read a model from a path, bytes or a ModelProto, with one-line errors for bad files."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "<bytes>"
    else:
        where = os.fspath(source)
        if not os.path.exists(where):
            raise QccError(f"{where}: no such file")
        if os.path.isdir(where):
            raise QccError(f"{where}: is a directory, expected an .onnx file")
        if os.path.getsize(where) > MAX_MODEL_BYTES:
            raise QccError(f"{where}: larger than 2 GiB; external-data models are not supported")
        with open(where, "rb") as f:
            data = f.read()
    if not data:
        raise QccError(f"{where}: empty file, expected an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise QccError(f"{where}: not a valid ONNX protobuf ({type(e).__name__}); truncated or not an ONNX file?")
    if not model.graph.node and not model.graph.output:
        raise QccError(f"{where}: parses as protobuf but holds no ONNX graph; not an ONNX file?")
    return model


def _check(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise QccError(f"the ONNX checker rejects the model: {str(e).splitlines()[0]}")
    try:
        model = functions.inline(model)
    except Exception as e:
        raise QccError(f"cannot inline the model's local functions: {str(e).splitlines()[0]}")
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
    except Exception as e:
        raise QccError(f"ONNX shape inference fails: {str(e).splitlines()[0]}")


# ---- the conversion context -----------------------------------------------------------

@dataclass
class _Ctx:
    """Conversion state: constants, aliases, emitted IR nodes, and example values (zeros)
    of every computed tensor, from which shapes are read."""

    consts: dict[str, np.ndarray]
    example: dict[str, np.ndarray]
    max_bytes: int = MAX_TENSOR_BYTES
    dynamic_batch: bool = False  # some input's first dimension is symbolic (bound to the batch)
    alias: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    extra_consts: dict[str, np.ndarray] = field(default_factory=dict)
    derived: set[str] = field(default_factory=set)  # computed from constants only
    qparams: dict[str, tuple] = field(default_factory=dict)  # integer tensors: (scale, zero point)
    elem_type: dict[str, int] = field(default_factory=dict)  # ONNX element type of constants

    def name(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def const(self, node, index: int, what: str, required: bool = True) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            if required:
                raise QccError(f"missing input '{what}'", node=node.name, op=node.op_type)
            return None
        t = self.name(node.input[index])
        if t in self.consts:
            return self.consts[t]
        if t in self.extra_consts:
            return self.extra_consts[t]
        if t in self.derived:
            return self.example[t]
        raise QccError(f"input '{what}' ({t}) must be a constant (an initializer)", node=node.name, op=node.op_type)

    def emit(self, op: str, node, inputs, attrs=None, outputs=None, name=None) -> None:
        ins = tuple(self.name(i) if i else "" for i in inputs)
        outs = tuple(outputs or node.output[:1])
        self.nodes.append(Node(op, ins, outs, attrs, name or node.name))
        self.infer_last()
        if ins and ins[0] in self.qparams and (op in ("Flatten", "Reshape", "Transpose")
                                               or (op == "Pool" and attrs.kind == "max")):
            self.qparams[outs[0]] = self.qparams[ins[0]]  # an integer tensor moved or max-pooled

    def shape(self, t: str) -> tuple[int, ...]:
        t = self.name(t)
        if t in self.consts:
            return tuple(self.consts[t].shape)
        if t in self.extra_consts:
            return tuple(self.extra_consts[t].shape)
        if t not in self.example:
            raise QccError(f"tensor '{t}' is used before it is produced (graph not topologically sorted, a cycle, or a dangling input)")
        return tuple(self.example[t].shape)

    def is_const(self, t: str) -> bool:
        t = self.name(t)
        return t in self.consts or t in self.extra_consts or t in self.derived

    def infer_last(self) -> None:
        n = self.nodes[-1]
        env = {}
        for i in n.inputs:
            if not i:
                continue
            if i in self.consts:
                env[i] = self.consts[i]
            elif i in self.extra_consts:
                env[i] = self.extra_consts[i]
            elif i in self.example:
                env[i] = self.example[i]
            else:
                raise QccError(f"input '{i}' is never produced (a cycle or a dangling input)", node=n.name, op=n.op)
        bound = _output_shape_bound(n, env)
        if bound is not None:
            check_size(f"output '{n.outputs[0]}'", bound, self.max_bytes, node=n.name, op=n.op)
        computed = not all(self.is_const(i) for i in n.inputs if i)
        if n.op in ("Conv", "Pool") and computed and bound is not None:
            # only the shape of a computed tensor is read, never its values: skip the arithmetic
            # (numpy im2col of a large layer would cost seconds and gigabytes here)
            self.example[n.outputs[0]] = np.zeros(bound, np.float32)
            return
        try:
            outs = interp.run_node(n, env)
        except QccError:
            raise
        except Exception as e:
            raise QccError(f"cannot be evaluated on its input shapes "
                           f"{[list(env[i].shape) for i in n.inputs if i]}: {e}", node=n.name, op=n.op)
        for o, v in zip(n.outputs, outs):
            check_size(f"output '{o}'", np.shape(v), self.max_bytes, node=n.name, op=n.op)
        self.example.update(zip(n.outputs, outs))
        if all(self.is_const(i) for i in n.inputs if i):
            self.derived.update(n.outputs)


def _output_shape_bound(n: Node, env: dict) -> tuple[int, ...] | None:
    """The output shape of the ops whose output can be much larger than their inputs, computed
    without running them (so that huge pads or many concatenated copies are refused first)."""
    shapes = [np.shape(env[i]) if i else () for i in n.inputs]
    if n.op in ("Conv", "Pool") and len(shapes[0]) == 4:
        oh, ow = n.attrs.out_hw(shapes[0][2], shapes[0][3])
        channels = shapes[1][0] if n.op == "Conv" and len(shapes) > 1 and shapes[1] else shapes[0][1]
        return (shapes[0][0], channels, oh, ow)
    if n.op == "Concat":
        return (sum(int(np.prod(s, dtype=object)) for s in shapes),)
    if n.op in ("Add", "Sub", "Mul", "Div"):
        try:
            return np.broadcast_shapes(*shapes)
        except ValueError:
            return None  # the interpreter says why
    return None


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _refuse(node, what: str):
    raise QccError(what, node=node.name, op=node.op_type)


def _only(node, a: dict, allowed: set[str]) -> None:
    extra = sorted(set(a) - allowed)
    if extra:
        _refuse(node, f"attribute(s) {extra} not supported; supported: {sorted(allowed)}")


def _pads2d(node, a: dict) -> tuple[int, int, int, int]:
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        _refuse(node, f"auto_pad={auto} is not supported; give explicit pads (NOTSET) or VALID")
    p = list(a.get("pads", [0, 0, 0, 0]))
    if len(p) != 4:
        _refuse(node, f"only 2-D spatial ops are supported (pads has {len(p)} entries)")
    if min(p) < 0:
        _refuse(node, f"negative pads {p} are not supported")
    return (p[0], p[1], p[2], p[3])


def _constant_weight(ctx: _Ctx, node, index: int = 1) -> None:
    if len(node.input) > index and node.input[index] and not ctx.is_const(node.input[index]):
        _refuse(node, f"weight '{node.input[index]}' must be a constant (an initializer, or computed from "
                      f"initializers only, e.g. a quantized weight); it is computed from a graph input")


def _conv(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    _only(node, a, {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"})
    _constant_weight(ctx, node)
    w_shape = ctx.shape(node.input[1])
    if len(w_shape) != 4:
        _refuse(node, f"only 2-D convolutions are supported (weight rank {len(w_shape)})")
    kernel = tuple(a.get("kernel_shape", w_shape[2:]))
    dil = tuple(a.get("dilations", (1, 1)))
    if dil != (1, 1):
        _refuse(node, f"dilations={list(dil)} are not supported; only dilation 1")
    group = int(a.get("group", 1))
    strides = tuple(a.get("strides", (1, 1)))
    x_shape = ctx.shape(node.input[0])
    if len(x_shape) != 4:
        _refuse(node, f"only 2-D convolutions of NCHW inputs are supported (input shape {list(x_shape)})")
    if kernel != tuple(w_shape[2:]):
        _refuse(node, f"kernel_shape {list(kernel)} disagrees with the weight's shape {list(w_shape)}")
    if len(strides) != 2 or min(strides) < 1:
        _refuse(node, f"strides {list(strides)} are not supported; strides must be two integers >= 1")
    if group < 1 or w_shape[0] % group:
        _refuse(node, f"group {group} does not divide the weight's {w_shape[0]} output channels")
    if w_shape[1] * group != x_shape[1]:
        _refuse(node, f"the weight of shape {list(w_shape)} (group {group}) takes {w_shape[1] * group} input channels, "
                      f"the input '{node.input[0]}' has {x_shape[1]} (shape {list(x_shape)})")
    if len(node.input) > 2 and node.input[2] and ctx.shape(node.input[2]) != (w_shape[0],):
        _refuse(node, f"bias of shape {list(ctx.shape(node.input[2]))}; expected [{w_shape[0]}] (one per output channel)")
    attrs = ConvAttrs(kernel=kernel, strides=strides, pads=_pads2d(node, a), dilations=dil, group=group)
    _nonempty(node, attrs, x_shape)
    ctx.emit("Conv", node, list(node.input[:3]), attrs)


def _nonempty(node, attrs, x_shape) -> None:
    oh, ow = attrs.out_hw(x_shape[2], x_shape[3])
    if oh < 1 or ow < 1:
        _refuse(node, f"the output would be empty ({oh}x{ow}): input {x_shape[2]}x{x_shape[3]}, "
                      f"kernel {list(attrs.kernel)}, pads {list(attrs.pads)}, strides {list(attrs.strides)}")


def _gemm(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    _only(node, a, {"alpha", "beta", "transA", "transB"})
    if a.get("transA", 0):
        _refuse(node, "transA=1 is not supported; only transA=0")
    _constant_weight(ctx, node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    w = node.input[1]
    if not a.get("transB", 0):
        w = _transpose_weight(ctx, node, w)
    inputs = [node.input[0], w]
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node, 2, "C")
        if beta != 1.0:
            c = (c * np.float32(beta)).astype(np.float32)
        inputs.append(_new_const(ctx, node.name + "_C", c))
    out = node.output[0]
    if alpha != 1.0:  # alpha * (A B) + beta * C: alpha scales the product only, not the bias
        raw = node.output[0] + "_noalpha"
        ctx.emit("Gemm", node, inputs[:2], None, outputs=[raw])
        scaled = out if len(inputs) == 2 else node.output[0] + "_alpha_ab"
        ctx.emit("Mul", node, [raw, _new_const(ctx, node.name + "_alpha", np.float32(alpha))], outputs=[scaled])
        if len(inputs) > 2:
            ctx.emit("Add", node, [scaled, inputs[2]], outputs=[out])
    else:
        ctx.emit("Gemm", node, inputs)


def _matmul(ctx: _Ctx, node) -> None:
    if len(ctx.shape(node.input[0])) != 2 or len(ctx.shape(node.input[1])) != 2:
        _refuse(node, "only MatMul of a 2-D activation by a 2-D constant weight is supported")
    _constant_weight(ctx, node)
    ctx.emit("Gemm", node, [node.input[0], _transpose_weight(ctx, node, node.input[1])])


def _transpose_weight(ctx: _Ctx, node, w: str) -> str:
    t = w + "_T"
    ctx.emit("Transpose", node, [w], TransposeAttrs((1, 0)), outputs=[t], name=node.name + "_wT")
    return t


def _new_const(ctx: _Ctx, name: str, value) -> str:
    ctx.extra_consts[name] = np.asarray(value, dtype=np.float32)
    return name


def _batchnorm(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    _only(node, a, {"epsilon", "momentum", "training_mode", "spatial"})
    if a.get("training_mode", 0):
        _refuse(node, "training_mode=1 is not supported; export the model in eval mode")
    if len(node.output) > 1 and any(node.output[1:]):
        _refuse(node, "running-statistics outputs are not supported; export in eval mode")
    vals = [ctx.const(node, i, n).astype(np.float32) for i, n in enumerate(("scale", "B", "mean", "var"), 1)]
    x_shape = ctx.shape(node.input[0])
    channels = x_shape[1] if len(x_shape) > 1 else 1
    for what, v in zip(("scale", "B", "mean", "var"), vals):
        if v.shape != (channels,):
            _refuse(node, f"'{what}' has shape {list(v.shape)} for an input of {channels} channels "
                          f"(shape {list(x_shape)}); expected [{channels}]")
    ctx.emit("BatchNormalization", node, node.input[:1], BatchNormAttrs(*vals, eps=float(a.get("epsilon", 1e-5))))


def _clip(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    lo = ctx.const(node, 1, "min", required=False)
    hi = ctx.const(node, 2, "max", required=False)
    for what, v in (("min", lo), ("max", hi)):
        if v is not None and np.size(v) != 1:
            _refuse(node, f"'{what}' must be one value, got shape {list(np.shape(v))}")
    lo = float(a.get("min", -np.inf)) if lo is None else float(np.reshape(lo, -1)[0])
    hi = float(a.get("max", np.inf)) if hi is None else float(np.reshape(hi, -1)[0])
    ctx.emit("Clip", node, node.input[:1], ClipAttrs(lo, hi))


def _pool(kind: str):
    def convert(ctx: _Ctx, node) -> None:
        a = _attrs(node)
        _only(node, a, {"kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad",
                        "auto_pad", "dilations", "storage_order"})
        if len(node.output) > 1 and node.output[1]:
            _refuse(node, "the Indices output is not supported")
        if tuple(a.get("dilations", (1, 1))) != (1, 1):
            _refuse(node, "dilated pooling is not supported")
        k = tuple(a["kernel_shape"])
        strides = tuple(a.get("strides", (1, 1)))
        x_shape = ctx.shape(node.input[0])
        if len(k) != 2 or len(x_shape) != 4:
            _refuse(node, f"only 2-D pooling of NCHW inputs is supported (kernel {list(k)}, input {list(x_shape)})")
        if min(k) < 1 or len(strides) != 2 or min(strides) < 1:
            _refuse(node, f"kernel_shape {list(k)} and strides {list(strides)} must be two integers >= 1")
        attrs = PoolAttrs(kind, k, strides, _pads2d(node, a),
                          bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))
        _nonempty(node, attrs, x_shape)
        ctx.emit("Pool", node, node.input[:1], attrs)
    return convert


def _global_pool(kind: str):
    def convert(ctx: _Ctx, node) -> None:
        shape = ctx.shape(node.input[0])
        if len(shape) != 4:
            _refuse(node, "only 4-D (NCHW) inputs are supported")
        ctx.emit("Pool", node, node.input[:1], PoolAttrs(kind, (shape[2], shape[3]), (1, 1)))
    return convert


def _flatten(ctx: _Ctx, node) -> None:
    axis = int(_attrs(node).get("axis", 1))
    rank = len(ctx.shape(node.input[0]))
    if not -rank <= axis <= rank:
        _refuse(node, f"axis {axis} is out of range for an input of rank {rank}; supported: {-rank}..{rank}")
    if axis % (rank + 1) == 0 and ctx.dynamic_batch:
        _refuse(node, "Flatten axis 0 merges the (dynamic) batch into the features, so samples would not be "
                      "independent; supported: axis >= 1")
    ctx.emit("Flatten", node, node.input[:1], FlattenAttrs(axis))


def _reshape(ctx: _Ctx, node) -> None:
    shape = ctx.const(node, 1, "shape")
    if shape.ndim != 1:
        _refuse(node, f"the target shape must be a 1-D constant, got shape {list(shape.shape)}")
    target = [int(v) for v in shape]
    in_shape = ctx.shape(node.input[0])
    if _attrs(node).get("allowzero", 0) and 0 in target:
        _refuse(node, "allowzero=1 with a 0 in the shape is not supported")
    out = [in_shape[i] if v == 0 else v for i, v in enumerate(target)]
    if -1 in out:
        known = int(np.prod([v for v in out if v != -1]))
        out[out.index(-1)] = int(np.prod(in_shape)) // max(known, 1)
    if int(np.prod(out)) != int(np.prod(in_shape)):
        _refuse(node, f"cannot reshape {list(in_shape)} to {target}")
    ctx.emit("Reshape", node, node.input[:1], ReshapeAttrs(tuple(out)))


def _transpose(ctx: _Ctx, node) -> None:
    shape = ctx.shape(node.input[0])
    perm = tuple(_attrs(node).get("perm", tuple(reversed(range(len(shape))))))
    if sorted(perm) != list(range(len(shape))):
        _refuse(node, f"perm {list(perm)} is not a permutation of the {len(shape)} axes of the input (shape {list(shape)})")
    moved = [d for d in perm if shape[d] != 1]
    if moved != sorted(moved) and not ctx.is_const(node.input[0]):
        _refuse(node, f"Transpose perm={list(perm)} moves data; only transposes that leave the memory "
                      f"order unchanged (permuting size-1 axes) are supported")
    ctx.emit("Transpose", node, node.input[:1], TransposeAttrs(perm))


def _softmax(ctx: _Ctx, node) -> None:
    axis = int(_attrs(node).get("axis", -1))
    rank = len(ctx.shape(node.input[0]))
    if rank == 0 or axis % rank != rank - 1:
        _refuse(node, f"Softmax over axis {axis} is not supported; only the last axis")
    ctx.emit("Softmax", node, node.input[:1], SoftmaxAttrs(-1))


def _per_sample(shape) -> bool:
    return all(d == 1 for d in shape[1:])


def _binary(op: str):
    def convert(ctx: _Ctx, node) -> None:
        a, b = node.input[:2]
        if not (ctx.is_const(a) or ctx.is_const(b)):
            sa, sb = ctx.shape(a), ctx.shape(b)
            if sa != sb and not (len(sa) == len(sb) and (_per_sample(sa) or _per_sample(sb))):
                _refuse(node, f"{op} of computed tensors of shapes {list(sa)} and {list(sb)}: only equal shapes "
                              f"or one value per sample (e.g. a ReduceMean with keepdims) are supported")
        ctx.emit(op, node, [a, b])
    return convert


def _reduce_mean(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    rank = len(ctx.shape(node.input[0]))
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.const(node, 1, "axes").tolist()
    axes = sorted(int(x) % rank for x in (axes if axes is not None else range(rank)))
    if axes != list(range(1, rank)) or not a.get("keepdims", 1):
        _refuse(node, f"ReduceMean over axes {axes} (keepdims={a.get('keepdims', 1)}) is not supported; "
                      f"only the mean over all non-batch axes with keepdims=1 (XNOR-Net / HORQ scales)")
    ctx.emit("ReduceMean", node, node.input[:1])


def _concat(ctx: _Ctx, node) -> None:
    rank = len(ctx.shape(node.input[0]))
    axis = int(_attrs(node).get("axis", 1)) % rank
    if axis != 1 or any(ctx.is_const(i) for i in node.input):
        _refuse(node, f"Concat along axis {axis} (or of constants) is not supported; only channels (axis 1) of computed tensors")
    ctx.emit("Concat", node, list(node.input))


def _unary(op: str):
    def convert(ctx: _Ctx, node) -> None:
        ctx.emit(op, node, node.input[:1])
    return convert


def _sign(ctx: _Ctx, node) -> None:
    ctx.emit("Sign", node, node.input[:1], SignAttrs())


def _alias(ctx: _Ctx, node) -> None:
    ctx.alias[node.output[0]] = ctx.name(node.input[0])


def _scalar_int(ctx, node, i, what) -> int:
    v = ctx.const(node, i, what)
    if v.size != 1 or float(v.reshape(-1)[0]) != int(v.reshape(-1)[0]):
        _refuse(node, f"'{what}' must be one integer, got {v.reshape(-1)[:4].tolist()}")
    return int(v.reshape(-1)[0])


def _str(a: dict, key: str, default: str) -> str:
    v = a.get(key, default)
    return (v.decode() if isinstance(v, bytes) else str(v)).upper()


ROUNDING_MODES = ("ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN")


def _rounding(node, a: dict, default: str) -> str:
    mode = _str(a, "rounding_mode", default)
    if mode not in ROUNDING_MODES:
        _refuse(node, f"rounding_mode={mode} is not supported; supported: {list(ROUNDING_MODES)}")
    return "ROUND" if mode == "HALF_EVEN" else mode


MAX_QUANT_BITS = 16
SCALE_EXP = 48  # scales are in 2^-48..2^48


def _quant(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    _only(node, a, {"signed", "narrow", "rounding_mode"})
    bits = _scalar_int(ctx, node, 3, "bitwidth")
    if not 1 <= bits <= MAX_QUANT_BITS:
        _refuse(node, f"bit width {bits} is not supported; supported: 1..{MAX_QUANT_BITS}")
    attrs = QuantAttrs(scale=ctx.const(node, 1, "scale").astype(np.float32),
                       zero=ctx.const(node, 2, "zeropt").astype(np.float32), bits=bits,
                       signed=bool(a.get("signed", 1)), narrow=bool(a.get("narrow", 0)),
                       rounding=_rounding(node, a, "ROUND"))
    _check_scale(node, attrs.scale)
    _check_zero(node, attrs.zero, bits)
    _same_shape(ctx, node, {"scale": attrs.scale, "zeropt": attrs.zero})
    ctx.emit("Quant", node, node.input[:1], attrs)


def _check_scale(node, scale: np.ndarray) -> None:
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        bad = scale.reshape(-1)[~(np.isfinite(scale.reshape(-1)) & (scale.reshape(-1) > 0))]
        _refuse(node, f"scale must be finite and > 0, got {float(bad[0])}")
    if np.any(scale < 2.0 ** -SCALE_EXP) or np.any(scale > 2.0 ** SCALE_EXP):
        bad = scale.reshape(-1)[np.argmax(np.abs(np.log2(scale.reshape(-1))))]
        _refuse(node, f"scale {float(bad):g} is outside the supported range 2^-{SCALE_EXP}..2^{SCALE_EXP} "
                      f"(products of such scales and levels would overflow float32)")


def _same_shape(ctx: _Ctx, node, params: dict) -> None:
    """Quantizer parameters broadcast onto the input; they must not change its shape."""
    x_shape = ctx.shape(node.input[0])
    for what, v in params.items():
        try:
            ok = np.broadcast_shapes(x_shape, np.shape(v)) == tuple(x_shape)
        except ValueError:
            ok = False
        if not ok:
            _refuse(node, f"'{what}' of shape {list(np.shape(v))} does not broadcast onto the input of shape "
                          f"{list(x_shape)} (supported: one value, or one per channel, that keep the input's shape)")
        full = (1,) * (len(x_shape) - np.ndim(v)) + tuple(np.shape(v))
        varying = [k for k, d in enumerate(full) if d != 1 and k != 1]
        if varying and not ctx.is_const(node.input[0]):  # weights may vary along any axis
            _refuse(node, f"'{what}' of shape {list(np.shape(v))} varies along axis {varying[0]} of the input of shape "
                          f"{list(x_shape)}; supported on activations: one value, or one per channel (axis 1)")


def _check_zero(node, zero: np.ndarray, bits: int) -> None:
    if zero.size and float(np.max(np.abs(zero))) > 2.0 ** bits:
        _refuse(node, f"zero point {float(zero.reshape(-1)[np.argmax(np.abs(zero))]):g} is outside the {bits}-bit range; "
                      f"supported: |zeropt| <= 2^{bits}")


def _bipolar(ctx: _Ctx, node) -> None:
    _only(node, _attrs(node), set())
    scale = ctx.const(node, 1, "scale").astype(np.float32)
    _check_scale(node, scale)
    _same_shape(ctx, node, {"scale": scale})
    ctx.emit("BipolarQuant", node, node.input[:1], BipolarQuantAttrs(scale))


def _multithreshold(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    _only(node, a, {"out_dtype", "out_scale", "out_bias", "data_layout"})
    thr = ctx.const(node, 1, "thresholds").astype(np.float32)
    if thr.ndim != 2:
        _refuse(node, f"thresholds must be 2-D (C, steps), got shape {list(thr.shape)}")
    if np.any(np.isnan(thr)):
        _refuse(node, "thresholds contain NaN")
    layout = _str(a, "data_layout", "NCHW")
    x_shape = ctx.shape(node.input[0])
    channels = x_shape[-1 if layout.endswith("C") else 1] if len(x_shape) > 1 else 1
    if thr.shape[0] not in (1, channels):
        _refuse(node, f"thresholds have {thr.shape[0]} rows for an input of {channels} channels "
                      f"(shape {list(x_shape)}, {layout}); supported: one row, or one per channel")
    attrs = MultiThresholdAttrs(thr, float(a.get("out_scale", 1.0)), float(a.get("out_bias", 0.0)),
                                channels_last=layout.endswith("C"))
    ctx.emit("MultiThreshold", node, node.input[:1], attrs)


def _trunc(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    v2 = len(node.input) >= 6
    attrs = TruncAttrs(scale=ctx.const(node, 1, "scale").astype(np.float32),
                       zero=ctx.const(node, 2, "zeropt").astype(np.float32),
                       in_bits=_scalar_int(ctx, node, 3, "input_bit_width"),
                       out_bits=_scalar_int(ctx, node, 5 if v2 else 4, "output_bit_width"),
                       out_scale=ctx.const(node, 4, "output_scale").astype(np.float32) if v2 else None,
                       signed=bool(a.get("signed", 1)), narrow=bool(a.get("narrow", 0)),
                       rounding=_rounding(node, a, "FLOOR"))
    for what, bits in (("input_bit_width", attrs.in_bits), ("output_bit_width", attrs.out_bits)):
        if not 1 <= bits <= (64 if what.startswith("input") else MAX_QUANT_BITS):
            _refuse(node, f"{what} {bits} is not supported; supported: 1..{64 if what.startswith('input') else MAX_QUANT_BITS}")
    _check_scale(node, attrs.scale)
    _check_zero(node, attrs.zero, attrs.in_bits)
    _same_shape(ctx, node, {"scale": attrs.scale, "zeropt": attrs.zero})
    if attrs.out_scale is not None:
        _check_scale(node, attrs.out_scale)
    ctx.emit("Trunc", node, node.input[:1], attrs)


# ---- standard quantization (QDQ and QLinear ops, as onnxruntime.quantization writes them) ----
#
# An integer tensor between QuantizeLinear and its readers is represented by its real
# value ``(q - zp) * scale``: every reader (DequantizeLinear, QLinearConv, QLinearMatMul)
# must use the producer's own scale and zero point, which is checked. QuantizeLinear is
# ``q = saturate(round(x / scale) + zp)``; with the zero point moved into the clip range
# it is the QONNX Quant ``clip(round(x / scale), qmin - zp, qmax - zp) * scale``.

QDQ_RANGES = {
    onnx.TensorProto.INT8: (-128, 127, 8), onnx.TensorProto.UINT8: (0, 255, 8),
    onnx.TensorProto.INT16: (-32768, 32767, 16), onnx.TensorProto.UINT16: (0, 65535, 16),
    onnx.TensorProto.INT4: (-8, 7, 4), onnx.TensorProto.UINT4: (0, 15, 4),
    onnx.TensorProto.INT2: (-2, 1, 2), onnx.TensorProto.UINT2: (0, 3, 2),
}


def _qdq_type(ctx: _Ctx, node, zp_index: int) -> int:
    a = _attrs(node)
    if zp_index < len(node.input) and node.input[zp_index]:
        t = ctx.elem_type.get(ctx.name(node.input[zp_index]))
    else:
        t = a.get("output_dtype") or onnx.TensorProto.UINT8
    if t not in QDQ_RANGES:
        names = ", ".join(onnx.TensorProto.DataType.Name(k) for k in QDQ_RANGES)
        _refuse(node, f"quantized type {onnx.TensorProto.DataType.Name(t) if t else '?'} is not supported; supported: {names}")
    return t


def _per_axis(ctx: _Ctx, node, v: np.ndarray, axis: int, x_shape: tuple[int, ...]) -> np.ndarray:
    """A scale or zero point, shaped to broadcast along ``axis`` of a tensor of shape ``x_shape``."""
    v = np.asarray(v)
    if v.size <= 1:
        return v.reshape(())
    if v.ndim != 1:
        _refuse(node, "blocked quantization (block_size) is not supported; use per-tensor or per-axis")
    rank = len(x_shape)
    if not -rank <= axis < rank or x_shape[axis] != v.size:
        _refuse(node, f"{v.size} scales or zero points for axis {axis} of a tensor of shape {list(x_shape)}; "
                      f"per-axis parameters need one value per element of that axis")
    shape = [1] * rank
    shape[axis % rank] = v.size
    return v.reshape(shape)


def _qparams(ctx: _Ctx, node, x: str, si: int, zi: int, axis: int):
    """(scale, zero point, (qmin, qmax, bits)) of a Q/DQ-style node, broadcastable to ``x``."""
    if _attrs(node).get("block_size", 0):
        _refuse(node, "blocked quantization (block_size) is not supported")
    x_shape = ctx.shape(x)
    scale = _per_axis(ctx, node, ctx.const(node, si, "scale").astype(np.float32), axis, x_shape)
    _check_scale(node, scale)
    zp = ctx.const(node, zi, "zero_point", required=False)
    zp = np.zeros((), np.int64) if zp is None else _per_axis(ctx, node, zp.astype(np.int64), axis, x_shape)
    return scale, zp, QDQ_RANGES[_qdq_type(ctx, node, zi)]


def _quant_levels(ctx: _Ctx, node, x: str, out: str, scale, zp, qrange) -> None:
    """QuantizeLinear as an IR Quant whose output is the real value of the integer tensor."""
    qmin, qmax, bits = qrange
    if np.asarray(zp).size > 1 and np.unique(zp).size > 1:
        _refuse(node, "a per-channel zero point on activations is not supported; use one zero point")
    z = int(np.asarray(zp).reshape(-1)[0])
    attrs = QuantAttrs(scale=scale, zero=np.zeros((), np.float32), bits=bits, signed=qmin < 0,
                       clip=(qmin - z, qmax - z))
    ctx.emit("Quant", node, [x], attrs, outputs=[out])
    ctx.qparams[out] = (scale, zp)


def _quantize_linear(ctx: _Ctx, node) -> None:
    a = _attrs(node)
    if not a.get("saturate", 1):
        _refuse(node, "saturate=0 is not supported")
    scale, zp, qrange = _qparams(ctx, node, node.input[0], 1, 2, int(a.get("axis", 1)))
    _quant_levels(ctx, node, node.input[0], node.output[0], scale, zp, qrange)


def _same_qparams(ctx: _Ctx, node, x: str, scale, zp) -> None:
    have = ctx.qparams.get(ctx.name(x))
    if have is None or not (np.array_equal(have[0], scale) and np.array_equal(have[1], zp)):
        _refuse(node, f"reads '{x}' with a scale or zero point other than the one it was quantized with; "
                      f"only matching QuantizeLinear/DequantizeLinear pairs are supported")


def _dequantize_linear(ctx: _Ctx, node) -> None:
    x = node.input[0]
    axis = int(_attrs(node).get("axis", 1))
    if ctx.is_const(x) and ctx.elem_type.get(ctx.name(x)) not in QDQ_RANGES:  # e.g. an int32 bias
        w = ctx.const(node, 0, "x").astype(np.float64)
        scale = _per_axis(ctx, node, ctx.const(node, 1, "scale").astype(np.float32), axis, w.shape)
        zp = ctx.const(node, 2, "zero_point", required=False)
        zp = 0 if zp is None else _per_axis(ctx, node, zp.astype(np.float64), axis, w.shape)
        ctx.extra_consts[node.output[0]] = ((w - zp).astype(np.float32) * scale).astype(np.float32)
        return
    if ctx.is_const(x):  # quantized weights: the float values, re-quantized so their levels are known
        w = ctx.const(node, 0, "x").astype(np.int64)
        scale, zp, (qmin, qmax, bits) = _qparams(ctx, node, x, 1, 2, axis)
        values = ((w - zp).astype(np.float32) * scale).astype(np.float32)
        name = _new_const(ctx, node.output[0] + "_values", values)
        zmin, zmax = int(np.min(zp)), int(np.max(zp))
        attrs = QuantAttrs(scale=np.broadcast_to(scale, np.broadcast_shapes(scale.shape, np.shape(zp))).astype(np.float32),
                           zero=np.zeros((), np.float32), bits=bits, signed=True, clip=(qmin - zmax, qmax - zmin))
        ctx.emit("Quant", node, [name], attrs)
        return
    scale, zp, _ = _qparams(ctx, node, x, 1, 2, axis)
    _same_qparams(ctx, node, x, scale, zp)
    ctx.alias[node.output[0]] = ctx.name(x)


def _qlinear(op: str):
    """QLinearConv / QLinearMatMul: dequantize, the float op, QuantizeLinear of the result."""
    def convert(ctx: _Ctx, node) -> None:
        conv = op == "Conv"
        x = node.input[0]
        xs, xz, _ = _qparams(ctx, node, x, 1, 2, 1)
        _same_qparams(ctx, node, x, xs, xz)
        w_axis = 0 if conv else 1
        wnode = onnx.helper.make_node("DequantizeLinear", [node.input[3], node.input[4], node.input[5]],
                                      [node.output[0] + "_w"], name=(node.name or node.output[0]) + "_w", axis=w_axis)
        _dequantize_linear(ctx, wnode)
        inputs = [x, wnode.output[0]]
        if conv and len(node.input) > 8 and node.input[8]:  # int32 bias, scale x_scale * w_scale
            ws = ctx.const(node, 4, "w_scale").astype(np.float32).reshape(-1)
            b = (ctx.const(node, 8, "B").astype(np.float32) * (xs.reshape(-1)[0] * ws)).astype(np.float32)
            inputs.append(_new_const(ctx, node.output[0] + "_bias", b))
        y = node.output[0] + "_float"
        float_node = onnx.helper.make_node(op, inputs, [y], name=node.name,
                                           **({k: v for k, v in _attrs(node).items()} if conv else {}))
        (_conv if conv else _matmul)(ctx, float_node)
        ys, yz, qrange = _qparams(ctx, node, y, 6, 7, 1)
        _quant_levels(ctx, node, y, node.output[0], ys, yz, qrange)
    return convert


STANDARD: dict[str, Callable] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "BatchNormalization": _batchnorm,
    "Relu": _unary("Relu"), "Sign": _sign, "Abs": _unary("Abs"), "Clip": _clip,
    "ReduceMean": _reduce_mean, "Concat": _concat,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool("avg"), "GlobalMaxPool": _global_pool("max"),
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Softmax": _softmax,
    "Add": _binary("Add"), "Sub": _binary("Sub"), "Mul": _binary("Mul"), "Div": _binary("Div"),
    "Identity": _alias, "Dropout": _alias,
    "QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear,
    "QLinearConv": _qlinear("Conv"), "QLinearMatMul": _qlinear("MatMul"),
}
QONNX: dict[str, Callable] = {
    "Quant": _quant, "IntQuant": _quant, "BipolarQuant": _bipolar,
    "MultiThreshold": _multithreshold, "Trunc": _trunc,
}


_CONSTANT_KINDS = {"value_int": (np.int64, onnx.TensorProto.INT64), "value_ints": (np.int64, onnx.TensorProto.INT64),
                   "value_float": (np.float32, onnx.TensorProto.FLOAT),
                   "value_floats": (np.float32, onnx.TensorProto.FLOAT)}


def _constant(n) -> tuple[np.ndarray, int]:
    a = _attrs(n)
    if "value" in a:
        return numpy_helper.to_array(a["value"]), a["value"].data_type
    for key, (dtype, etype) in _CONSTANT_KINDS.items():
        if key in a:
            return np.asarray(a[key], dtype), etype
    _refuse(n, f"Constant with attribute(s) {sorted(a)} is not supported; supported: value, {', '.join(_CONSTANT_KINDS)}")


def _dims(vi, batch: int, where: str) -> tuple[int, ...]:
    t = vi.type.tensor_type
    if vi.type.WhichOneof("value") != "tensor_type":
        raise QccError(f"{where} '{vi.name}' is not a tensor")
    dims = []
    for i, d in enumerate(t.shape.dim):
        if i == 0 and d.HasField("dim_value") and d.dim_value > 1 and d.dim_value != batch:
            raise QccError(f"{where} '{vi.name}' has a fixed batch dimension of {d.dim_value}; qcc compiles batch "
                           f"{batch} (the first dimension of every input is the batch): give the model a dynamic "
                           f"or unit batch dimension (or, if '{vi.name}' is a weight, an initializer)")
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_value"):
            raise QccError(f"{where} '{vi.name}' dimension {i} is {d.dim_value}; dimensions must be >= 1 "
                           f"(only the batch dimension may be dynamic)")
        elif i == 0:
            dims.append(batch)  # dynamic batch: bind it
        else:
            raise QccError(f"{where} '{vi.name}' has a dynamic dimension {i} ('{d.dim_param}'); "
                           f"only the batch dimension may be dynamic")
    return tuple(dims)


def _node_label(n) -> str:
    return n.name or (n.output[0] if n.output else n.op_type)


def _check_structure(model: onnx.ModelProto, batch: int, max_bytes: int) -> None:
    """What must be refused before the ONNX checker and shape inference see the model: inputs
    too large (or with dims that overflow), external data, dangling inputs and cycles."""
    g = model.graph
    inits = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    for vi in g.input:
        if vi.name not in inits and vi.type.WhichOneof("value") == "tensor_type":
            check_size(f"input '{vi.name}'", _dims(vi, batch, "input"), max_bytes)
    for t in g.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            where = next((e.value for e in t.external_data if e.key == "location"), "?")
            raise QccError(f"initializer '{t.name}' keeps its data in an external file ('{where}'); "
                           f"external data is not supported, save the model as one file")
    producer = {o: n for n in g.node for o in n.output if o}
    known = inits | {vi.name for vi in g.input}
    for n in g.node:
        for k, i in enumerate(n.input):
            if i and i not in producer and i not in known:
                kind = "a dangling input" if k == 0 else "a missing initializer or a dangling input"
                raise QccError(f"input '{i}' is not produced by any node and is neither a graph input nor an "
                               f"initializer ({kind})", node=n.name, op=n.op_type)
    # cycles: repeatedly remove nodes whose inputs are all available; what is left has a cycle
    deps = {id(n): {i for i in n.input if i and i in producer and i not in known} for n in g.node}
    ready = set(known)
    left = list(g.node)
    while True:
        now = {id(n) for n in left if deps[id(n)] <= ready}
        if not now:
            break
        ready.update(o for n in left if id(n) in now for o in n.output)
        left = [n for n in left if id(n) not in now]
    if left:
        n, path = left[0], []
        while id(n) not in {id(m) for m in path}:  # every left node reads a tensor of another left node
            path.append(n)
            n = producer[next(i for i in sorted(deps[id(n)]) if i not in ready)]
        path = path[[id(m) for m in path].index(id(n)):]
        cycle = path + [n]
        raise QccError(f"the graph has a cycle: {' -> '.join(repr(_node_label(m)) for m in cycle)}; "
                       f"an ONNX graph must be acyclic")


def import_model(source, batch: int = 1, max_bytes: int | None = None) -> Graph:
    """Convert an ONNX/QONNX model (path, bytes or ModelProto) into an IR graph.

    ``max_bytes`` (default 1 GiB) bounds every tensor as float32: shapes are derived by running
    the graph on zeros, so a larger tensor is refused before anything is allocated."""
    max_bytes = MAX_TENSOR_BYTES if max_bytes is None else int(max_bytes)
    model = load_model(source)
    _check_structure(model, batch, max_bytes)
    model = _check(model)
    g = model.graph
    for op in model.opset_import:
        if op.domain in STANDARD_DOMAINS and op.version < 7:
            raise QccError(f"opset {op.version} is too old; qcc supports ONNX opset 7 and newer")
    consts: dict[str, np.ndarray] = {}
    etypes: dict[str, int] = {}
    for init in g.initializer:
        etypes[init.name] = init.data_type
        try:
            consts[init.name] = numpy_helper.to_array(init)
        except Exception as e:
            raise QccError(f"initializer '{init.name}' cannot be read: {e}")
    for n in g.node:
        if n.op_type == "Constant" and n.domain in STANDARD_DOMAINS:
            consts[n.output[0]], etypes[n.output[0]] = _constant(n)
    for name, arr in consts.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = "NaN" if np.any(np.isnan(arr)) else "Inf"
            user = next((n for n in g.node if name in n.input), None)
            role = f" (input {list(user.input).index(name)})" if user is not None else ""
            raise QccError(f"initializer '{name}'{role} contains {bad}; weights, scales and thresholds must be finite",
                           node=user.name if user is not None else None, op=user.op_type if user is not None else None)

    inputs = [vi for vi in g.input if vi.name not in consts]
    if not inputs:
        raise QccError("the model has no inputs (every graph input has an initializer)")
    example = {}
    for vi in inputs:
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise QccError(f"input '{vi.name}' has type "
                           f"{onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}; only float32 inputs are supported")
        example[vi.name] = np.zeros(_dims(vi, batch, "input"), np.float32)

    dynamic = any(vi.type.tensor_type.shape.dim and not vi.type.tensor_type.shape.dim[0].HasField("dim_value")
                  for vi in inputs)
    ctx = _Ctx(consts, example, max_bytes=max_bytes, dynamic_batch=dynamic, elem_type=etypes)
    for n in g.node:
        if n.op_type == "Constant" and n.domain in STANDARD_DOMAINS:
            continue
        table = STANDARD if n.domain in STANDARD_DOMAINS else QONNX if n.domain in QONNX_DOMAINS else None
        if table is None:
            raise QccError(f"domain '{n.domain}' is not supported; supported: the standard ONNX domain and "
                           f"QONNX ({', '.join(QONNX_DOMAINS)})", node=n.name, op=n.op_type)
        convert = table.get(n.op_type)
        if convert is None:
            raise QccError(f"op '{n.op_type}' is not supported; supported: {', '.join(sorted(table))}",
                           node=n.name, op=n.op_type)
        for i in n.input:
            if i and ctx.name(i) not in consts and ctx.name(i) not in ctx.extra_consts and ctx.name(i) not in ctx.example:
                raise QccError(f"input '{i}' is never produced before this node (cycle, unsorted graph or dangling input)",
                               node=n.name, op=n.op_type)
        convert(ctx, n)

    outputs = []
    for vi in g.output:
        name = ctx.name(vi.name)
        if name not in ctx.example:
            raise QccError(f"output '{vi.name}' is a constant or is never produced")
        if name in ctx.derived:
            raise QccError(f"output '{vi.name}' is computed from constants only; every output must depend on an input")
        outputs.append(name)

    tensors: dict[str, Tensor] = {}
    for name, arr in ctx.example.items():
        tensors[name] = Tensor(name, tuple(arr.shape), "f32", layout=_layout(arr.ndim))
    for name, arr in {**consts, **ctx.extra_consts}.items():
        tensors[name] = Tensor(name, tuple(arr.shape), "f32", data=np.asarray(arr))
    names = {vi.name: ctx.name(vi.name) for vi in g.output}
    graph = Graph(tuple(ctx.nodes), tensors, tuple(vi.name for vi in inputs), tuple(outputs),
                  meta={"source": model.graph.name or "model", "output_names": names,
                        "producer": f"{model.producer_name} {model.producer_version}".strip()})
    return graph.rewrite(graph.nodes)


def _layout(rank: int) -> str:
    return {2: "NC", 4: "NCHW"}.get(rank, "")
