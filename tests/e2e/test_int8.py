"""int8 and narrower standard quantization (seed 001): QDQ and QOperator models made by
onnxruntime.quantization, and hand-built INT4/UINT4 (opset 21) and INT2/UINT2 (opset 25)
QDQ graphs, compiled and compared with onnxruntime running the same quantized graph."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from qcc import InferenceSession
from qcc.api import lower_model
from qcc.frontend.reference import run_reference


def float_cnn(rng):
    w1 = nh.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    b1 = nh.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1")
    w2 = nh.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32), "w2")
    b2 = nh.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b2")
    w3 = nh.from_array((rng.standard_normal((16 * 4 * 3, 10)) * 0.1).astype(np.float32), "w3")
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 0, 1, 0], strides=[2, 2]),
             h.make_node("Relu", ["c2"], ["r2"]), h.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[1, 1]),
             h.make_node("Flatten", ["p2"], ["f"]), h.make_node("MatMul", ["f", "w3"], ["y"])]
    g = h.make_graph(nodes, "float", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 7])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 10])], [w1, b1, w2, b2, w3])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("fmt,act,per_channel", [("QDQ", "QInt8", True), ("QDQ", "QUInt8", False),
                                                 ("QOperator", "QUInt8", True), ("QOperator", "QInt8", False)])
def test_onnxruntime_quantized_models(tmp_path, fmt, act, per_channel):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(float_cnn(rng), src)
    calib = [{"x": rng.standard_normal((1, 3, 8, 7)).astype(np.float32)} for _ in range(16)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt),
                    activation_type=getattr(QuantType, act), weight_type=QuantType.QInt8, per_channel=per_channel)
    feeds = {"x": rng.standard_normal((200, 3, 8, 7)).astype(np.float32)}
    got = InferenceSession(str(dst)).run(None, feeds)[0]
    want = run_reference(onnx.load(dst), feeds)[0]
    # every layer is integer; the output is (q - zp) * scale of an int8 tensor
    assert np.mean(got == want) >= 0.999, f"{np.sum(got != want)} outputs differ"
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max())) + float(np.abs(want).max()) / 64
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    _, low = lower_model(str(dst))
    assert [low.tensors[n.inputs[0]].dtype for n in low.nodes if n.op == "layer"] == ["i16"] * 3


QDQ_TYPES = {"INT4": (T.INT4, 21, -3), "UINT4": (T.UINT4, 21, 5), "INT2": (T.INT2, 25, -1), "UINT2": (T.UINT2, 25, 1)}


def narrow_qdq(name):
    """x -> Q/DQ (activations of the given type) -> Conv with DQ(int weights of that type) -> Q/DQ."""
    t, opset, zp = QDQ_TYPES[name]
    rng = np.random.default_rng(4)
    lo, hi = {T.INT4: (-8, 7), T.UINT4: (0, 15), T.INT2: (-2, 1), T.UINT2: (0, 3)}[t]
    w = rng.integers(lo, hi + 1, (6, 4, 3, 3))
    inits = [h.make_tensor("s", T.FLOAT, [], [0.25]), h.make_tensor("z", t, [], [zp]),
             h.make_tensor("wq", t, w.shape, w.reshape(-1).tolist()), h.make_tensor("ws", T.FLOAT, [6], [0.5] * 6),
             h.make_tensor("wz", t, [6], [zp] * 6), h.make_tensor("s2", T.FLOAT, [], [2.0])]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             h.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["c", "s2", "z"], ["cq"]), h.make_node("DequantizeLinear", ["cq", "s2", "z"], ["y"])]
    g = h.make_graph(nodes, "narrow", [h.make_tensor_value_info("x", T.FLOAT, ["N", 4, 5, 5])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 6, 5, 5])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=11 if opset >= 25 else 10)


@pytest.mark.parametrize("name", list(QDQ_TYPES))
def test_narrow_qdq_types(name):
    model = narrow_qdq(name)
    feeds = {"x": (np.random.default_rng(5).integers(-24, 24, (64, 4, 5, 5)) * 0.125).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)[0]
    try:
        want = run_reference(model, feeds)[0]
    except Exception as e:  # the installed onnxruntime may not run this type; qcc still must be exact
        pytest.skip(f"onnxruntime cannot run {name} QDQ: {str(e).splitlines()[0][:120]}")
    assert np.array_equal(got, want)
    _, low = lower_model(model)
    layer = next(n for n in low.nodes if n.op == "layer")
    assert low.tensors[layer.inputs[0]].quant.bits == {"INT4": 4, "UINT4": 4, "INT2": 2, "UINT2": 2}[name]
