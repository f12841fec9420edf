"""Twins of a quantized model for speed comparisons with onnxruntime (``qcc bench``).

* :func:`float_twin`: the same network in float32, which plain onnxruntime runs — weight
  quantizers evaluated into float initializers (the dequantized weights), activation
  quantizers removed, ``QLinearConv``/``QLinearMatMul`` turned back into ``Conv``/``MatMul``.
  It is a *different network* (no activation quantization), used only as the fp32 baseline.
* :func:`qdq_twin`: the float twin quantized by ``onnxruntime.quantization.quantize_static``
  (QDQ, uint8 activations, int8 per-channel weights): what onnxruntime's int8 path runs.

Neither is an oracle; the oracle is :mod:`qcc.frontend.reference`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcc.errors import QccError
from qcc.frontend import functions
from qcc.frontend.onnx import load_model
from qcc.frontend.reference import QONNX_DOMAINS, to_reference

__all__ = ["QUANTIZER_OPS", "float_twin", "qdq_twin", "calibration_feeds"]

QUANTIZER_OPS = frozenset({"Quant", "IntQuant", "BipolarQuant", "MultiThreshold", "Trunc"})
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_STANDARD = frozenset({"", "ai.onnx"})
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})
_INT_TYPES = frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
                        TensorProto.INT32, TensorProto.INT4, TensorProto.UINT4}
                       | {getattr(TensorProto, t) for t in ("INT2", "UINT2") if hasattr(TensorProto, t)})
_QMIN = {TensorProto.UINT8: 0, TensorProto.INT8: -128, TensorProto.UINT16: 0, TensorProto.INT16: -32768,
         TensorProto.UINT4: 0, TensorProto.INT4: -8}
_QMIN.update({getattr(TensorProto, t): v for t, v in (("UINT2", 0), ("INT2", -2)) if hasattr(TensorProto, t)})
_KEEPS_SIGN = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
                         "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Concat", "Relu"})
_MAX_IR = 10
_MIN_QUANT_OPSET = 13  # per-channel QDQ needs opset 13


def _is_quantizer(node: onnx.NodeProto) -> bool:
    return node.op_type in QUANTIZER_OPS and node.domain in QONNX_DOMAINS


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in node.attribute)


def _constant_nodes(graph: onnx.GraphProto) -> list[int]:
    """Indices of the nodes computed only from initializers and constant nodes."""
    const = {t.name for t in graph.initializer}
    idx = []
    for i, node in enumerate(graph.node):
        if node.op_type in _NONDETERMINISTIC or _has_subgraph(node):
            continue
        if node.domain not in _STANDARD and not (node.domain in QONNX_DOMAINS and node.op_type in QUANTIZER_OPS):
            continue
        if all(not name or name in const for name in node.input):
            idx.append(i)
            const.update(o for o in node.output if o)
    return idx


def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], names: list[str]) -> dict[str, np.ndarray]:
    """Run the constant subgraph ``nodes`` (QONNX ops through the reference rewrite) and return
    the tensors ``names``."""
    import onnxruntime as ort

    g = model.graph
    sub = helper.make_graph(list(nodes), "constants", [],
                            [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in names],
                            list(g.initializer))
    m = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    ref = to_reference(m)
    inferred = onnx.shape_inference.infer_shapes(ref, strict_mode=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.output)}
    for o in ref.graph.output:
        if types.get(o.name):
            o.type.tensor_type.elem_type = types[o.name]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(ref.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {})))


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int = 0) -> np.ndarray:
    """(q - zero) * scale, per tensor or per ``axis``, in float32 as DequantizeLinear."""
    q = q.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    zero = np.zeros_like(scale) if zero is None else np.asarray(zero).astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


class _Twin:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.alias: dict[str, str] = {}
        self.nonneg: set[str] = set()  # tensors known >= 0 (after a ReLU, through pools and reshapes)
        self.init_types = {t.name: t.data_type for t in self.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: dict[str, np.ndarray] = {}
        self.taken = {n for node in self.graph.node for n in (*node.input, *node.output, node.name)}
        self.taken |= set(self.consts)

    def fresh(self, base: str) -> str:
        k = 0
        while (name := f"{base}_{k}") in self.taken:
            k += 1
        self.taken.add(name)
        return name

    def const_value(self, name: str, node: onnx.NodeProto, what: str) -> np.ndarray:
        name = self.resolve(name)
        if name not in self.consts:
            raise QccError(f"float twin: {what} is not a constant", node=node.name or node.output[0], op=node.op_type)
        return self.consts[name]

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.consts[name] = value
        self.new_inits[name] = value
        return name

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def qlinear_operand(self, node, value_i: int, scale_i: int, zero_i: int, axis: int, what: str) -> str:
        """The float operand of a QLinear op: dequantized if constant, else the (float) activation."""
        name = self.resolve(node.input[value_i])
        if name not in self.consts:
            return name
        scale = self.const_value(node.input[scale_i], node, f"{what} scale")
        zero = self.const_value(node.input[zero_i], node, f"{what} zero point") if len(node.input) > zero_i and node.input[zero_i] else None
        return self.add_const(f"{node.name or node.output[0]}/{what}_float", _dequantize(self.consts[name], scale, zero, axis))

    def convert(self, node: onnx.NodeProto) -> None:
        node_id = node.name or node.output[0]
        if _is_quantizer(node) or (node.op_type in _QDQ_OPS and node.domain in _STANDARD):
            # an activation quantizer: removed, but a clamp at zero stays as a ReLU (onnxruntime.quantization
            # folds ReLUs into the following QuantizeLinear; an unsigned Quant clamps too)
            src = self.resolve(node.input[0])
            if self.clamps_at_zero(node) and src not in self.nonneg:
                self.emit(helper.make_node("Relu", [src], [node.output[0]], name=self.fresh(f"{node_id}/Relu")))
            else:
                self.alias[node.output[0]] = src
            return
        if node.op_type == "QLinearConv" and node.domain in _STANDARD:
            x = self.qlinear_operand(node, 0, 1, 2, 1, "x")
            w = self.qlinear_operand(node, 3, 4, 5, 0, "weight")
            ins = [x, w]
            if len(node.input) > 8 and node.input[8]:
                b = self.const_value(node.input[8], node, "bias")
                xs = np.asarray(self.const_value(node.input[1], node, "x scale"), np.float32)
                ws = np.asarray(self.const_value(node.input[4], node, "weight scale"), np.float32)
                ins.append(self.add_const(f"{node_id}/bias_float", (b.astype(np.float32) * xs * ws).astype(np.float32)))
            conv = helper.make_node("Conv", ins, [node.output[0]], name=node.name)
            conv.attribute.extend(node.attribute)
            self.emit_relu_if_clamped(conv, node)
            return
        if node.op_type == "QLinearMatMul" and node.domain in _STANDARD:
            a = self.qlinear_operand(node, 0, 1, 2, 0, "a")
            b = self.qlinear_operand(node, 3, 4, 5, 1, "b")
            self.emit_relu_if_clamped(helper.make_node("MatMul", [a, b], [node.output[0]], name=node.name), node)
            return
        if node.domain not in _STANDARD or node.op_type in ("ConvInteger", "MatMulInteger"):
            raise QccError(f"float twin: op '{node.op_type}' (domain '{node.domain or 'ai.onnx'}') has no float "
                           "equivalent here; supported: QONNX quantizers, QuantizeLinear/DequantizeLinear, "
                           "QLinearConv, QLinearMatMul and standard float ops", node=node_id, op=node.op_type)
        out = onnx.NodeProto()
        out.CopyFrom(node)
        out.domain = ""
        for i, name in enumerate(out.input):
            if name:
                out.input[i] = self.resolve(name)
        self.emit(out)

    def emit(self, node: onnx.NodeProto) -> None:
        self.nodes.append(node)
        data = [i for i in node.input[:1 if node.op_type != "Concat" else None] if i]
        if node.op_type == "Relu" or (node.op_type in _KEEPS_SIGN and data and all(i in self.nonneg for i in data)):
            self.nonneg.update(node.output)

    def emit_relu_if_clamped(self, op: onnx.NodeProto, qnode: onnx.NodeProto) -> None:
        """``op`` (the float form of a QLinear op), followed by a ReLU when the quantized output
        clamps at zero."""
        if not self.clamps_at_zero(qnode, zero_i=7):
            self.emit(op)
            return
        out = op.output[0]
        op.output[0] = self.fresh(f"{out}/float")
        self.emit(op)
        self.emit(helper.make_node("Relu", [op.output[0]], [out], name=self.fresh(f"{qnode.name or out}/Relu")))

    def clamps_at_zero(self, node: onnx.NodeProto, zero_i: int = 2) -> bool:
        """Whether the quantizer's smallest level is exactly 0 (a ReLU): unsigned QONNX ``Quant``
        with zero point 0, or a QuantizeLinear / QLinear output whose zero point is the type's
        minimum (onnxruntime.quantization folds a ReLU into such a quantizer)."""
        try:
            if node.op_type in ("Quant", "IntQuant") and node.domain in QONNX_DOMAINS:
                signed = next((a.i for a in node.attribute if a.name == "signed"), 1)
                return not signed and not np.any(np.asarray(self.consts[self.resolve(node.input[2])]))
            if node.op_type not in ("QuantizeLinear", "QLinearConv", "QLinearMatMul") or node.domain not in _STANDARD:
                return False
            if len(node.input) <= zero_i or not node.input[zero_i]:
                out_type = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
                return out_type in (0, TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT4)
            name = self.resolve(node.input[zero_i])
            zero = np.asarray(self.consts[name])
            dtype = self.init_types.get(name) or helper.np_dtype_to_tensor_dtype(zero.dtype)
            return dtype in _QMIN and bool(np.all(zero.astype(np.int64) == _QMIN[dtype]))
        except (KeyError, TypeError, ValueError):
            return False


def float_twin(model) -> onnx.ModelProto:
    """The float32 network of a quantized model (path, bytes or ModelProto), which plain
    onnxruntime runs:

    * every node computed only from constants (weight quantizers: QONNX ``Quant``/``BipolarQuant``/...
      or ``DequantizeLinear`` of integer initializers, and what they feed) is evaluated once (QONNX
      ops through :func:`qcc.frontend.reference.to_reference`) into float initializers;
    * activation quantizers (QONNX quantizers, ``QuantizeLinear``, ``DequantizeLinear`` on
      non-constant data) are removed, except that a quantizer whose lowest level is 0 on an input
      not already non-negative becomes a ``Relu`` (that clamp is the ReLU onnxruntime.quantization
      folded away, or the one an unsigned ``Quant`` implies);
    * ``QLinearConv``/``QLinearMatMul`` become ``Conv``/``MatMul`` on dequantized weights and bias;
    * initializers are no longer graph inputs, the only opset is the standard one, IR <= 10.
    """
    src = load_model(model)
    try:
        m = functions.inline(src)
    except Exception as e:
        raise QccError(f"float twin: cannot inline the model's local functions: {str(e).splitlines()[0]}")
    g = m.graph
    const_idx = _constant_nodes(g)
    const_set = set(const_idx)
    # constant tensors used by the rest of the graph: evaluate them once into initializers
    used = {name for i, n in enumerate(g.node) if i not in const_set for name in n.input if name}
    used |= {o.name for o in g.output}
    init_names = {t.name for t in g.initializer}
    frontier = [o for i in const_idx for o in g.node[i].output if o and o in used and o not in init_names]
    values = _evaluate(m, [g.node[i] for i in const_idx], frontier) if frontier else {}

    twin = _Twin(m)
    twin.consts.update(values)
    twin.new_inits.update(values)
    for i, node in enumerate(g.node):
        if i not in const_set:
            twin.convert(node)

    nodes = twin.nodes
    inputs = {i.name for i in g.input if i.name not in init_names}
    out_names = {o.name for o in g.output}
    produced = {o for n in nodes for o in n.output}
    renamed: dict[str, str] = {}
    for o in g.output:  # an output that was a quantizer's: rename its source, or copy it
        src_name = twin.resolve(o.name)
        src_name = renamed.get(src_name, src_name)
        if src_name == o.name:
            continue
        if src_name in produced and src_name not in out_names:
            for n in nodes:
                for names in (n.input, n.output):
                    for i, name in enumerate(names):
                        if name == src_name:
                            names[i] = o.name
            renamed[src_name] = o.name
            produced.add(o.name)
        else:
            nodes.append(helper.make_node("Identity", [src_name], [o.name], name=twin.fresh(f"{o.name}/Identity")))
    referenced = {n for node in nodes for n in node.input if n} | {o.name for o in g.output}
    inits = [t for t in g.initializer if t.name in referenced and t.name not in twin.new_inits]
    inits += [numpy_helper.from_array(np.asarray(v), k) for k, v in twin.new_inits.items() if k in referenced]
    outputs = []
    for o in g.output:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(o)
        if vi.type.tensor_type.elem_type in _INT_TYPES:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
        outputs.append(vi)
    graph = helper.make_graph(nodes, g.name or "float_twin", [i for i in g.input if i.name in inputs], outputs, inits)
    version = max((o.version for o in m.opset_import if o.domain in _STANDARD), default=_MIN_QUANT_OPSET)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)], producer_name="qcc float twin")
    out.ir_version = max(min(m.ir_version or _MAX_IR, _MAX_IR), helper.find_min_ir_version_for(out.opset_import))
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:
        raise QccError(f"float twin: the rewritten model is not valid ONNX: {str(e).splitlines()[0]}")
    return out


def calibration_feeds(model: onnx.ModelProto, samples: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``samples`` random-normal batch-1 feeds for the graph inputs of ``model``."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    shapes = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if any(d is None for d in dims[1:]):
            raise QccError(f"input '{vi.name}' has a symbolic dimension besides the batch; pass inputs explicitly")
        shapes[vi.name] = [1, *dims[1:]]
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(samples)]


def qdq_twin(float_model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]] | dict | None = None,
             samples: int = 16, seed: int = 0) -> onnx.ModelProto:
    """``float_model`` statically quantized by onnxruntime (QDQ, uint8 activations, per-channel
    int8 weights), calibrated on ``calibration`` (a list of feeds, or a dict of arrays whose first
    axis is split into batch-1 samples; default ``samples`` random-normal feeds). Raises
    :class:`QccError` with the reason when onnxruntime cannot quantize the model."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if calibration is None:
        calibration = calibration_feeds(float_model, samples, seed)
    elif isinstance(calibration, dict):
        n = min(len(v) for v in calibration.values())
        calibration = [{k: np.asarray(v[i:i + 1], np.float32) for k, v in calibration.items()} for i in range(n)]
    feeds = list(calibration)

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    version = max((o.version for o in model.opset_import if o.domain in _STANDARD), default=0)
    if version < _MIN_QUANT_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, _MIN_QUANT_OPSET)
        except Exception as e:
            raise QccError(f"int8 twin: cannot convert opset {version} to {_MIN_QUANT_OPSET}: {str(e).splitlines()[0]}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory(prefix="qcc-qdq-") as tmp, _quiet_logging():
        src, pre, dst = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "qdq.onnx"))
        onnx.save(model, src)
        try:  # onnxruntime's recommended pre-processing (shape inference, BN folded into Conv)
            from onnxruntime.quantization.shape_inference import quant_pre_process
            quant_pre_process(src, pre)
            src = pre
        except Exception:  # optional: quantize the model as it is
            pass
        try:
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True)
            return onnx.load(dst)
        except Exception as e:  # onnxruntime.quantization raises anything from its graph rewriting
            msg = " ".join(str(e).split())[:300] or type(e).__name__
            raise QccError(f"onnxruntime.quantization.quantize_static failed: {type(e).__name__}: {msg}")


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime.quantization warns through the root logger (pre-processing advice, axes)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
