"""Graph structure (seed 3 of the issue): residual Add of quantized branches with different
scales, Concat along channels, depthwise (grouped) quantized conv, average pooling on
levels, global average pooling; and the runtime-scale ops XNOR-Net/HORQ use."""
import numpy as np
import pytest

import builders
from qcc import InferenceSession
from qcc.api import lower_model
from qcc.frontend.reference import run_reference


def residual_net():
    b = builders.Builder(21)
    x = b.quant("x", 2.0 ** -4, 8, signed=1)
    a = b.conv(x, b.int_weight((12, 3, 3, 3)), (3, 3), pads=(1, 1, 1, 1))
    a = b.quant(b.node("Relu", [b.batchnorm(a, 12)]), 2.0 ** -2, 4, signed=0)          # branch 1, scale 1/4
    c = b.conv(a, b.int_weight((12, 12, 3, 3), bits=2, scale=0.5), (3, 3), pads=(1, 1, 1, 1))
    c = b.quant(b.batchnorm(c, 12), 2.0 ** -1, 3, signed=1)                            # branch 2, scale 1/2
    r = b.quant(b.node("Add", [a, c]), 2.0 ** -2, 4, signed=0)                         # residual, requantized
    cat = b.node("Concat", [r, a], axis=1)                                              # 24 channels
    d = b.conv(b.quant(cat, 2.0 ** -2, 4, signed=0), b.int_weight((24, 1, 3, 3)), (3, 3), (2, 2), (1, 1, 1, 1),
               group=24)                                                                # depthwise, stride 2
    d = b.quant(b.node("Relu", [b.batchnorm(d, 24)]), 2.0 ** -1, 2, signed=0)
    p = b.node("AveragePool", [d], kernel_shape=[2, 2], strides=[1, 1])                # average of levels
    gap = b.node("GlobalAveragePool", [p])
    y = b.node("Gemm", [b.node("Flatten", [gap], axis=1), b.const(b.rng.standard_normal((5, 24))), b.const(np.zeros(5))],
               transB=1)
    return b.model({"x": [1, 3, 9, 9]}, {r: 4, d: 4, y: 2})


def test_residual_concat_depthwise_pools():
    model = residual_net()
    feeds = {"x": np.random.default_rng(0).uniform(-4, 4, (64, 3, 9, 9)).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)
    want = run_reference(model, feeds)
    assert np.array_equal(got[0], want[0])  # residual sum, requantized: float adds are op for op
    assert np.array_equal(got[1], want[1])  # depthwise int layer with folded thresholds
    np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-5)
    _, low = lower_model(model)
    ops = [n.op for n in low.nodes]
    assert "ew2" in ops and "concat" in ops
    dw = [n for n in low.nodes if n.op == "layer" and n.attrs.conv.group == 24]
    assert len(dw) == 1 and low.tensors[dw[0].inputs[0]].dtype == "i16"


def horq(order=2, seed=3):
    """HORQ input binarization as exported (Sign, Abs, ReduceMean, Mul, Sub), order K, feeding a
    conv with binary weights: x ~ sum_k beta_k * sign(R_k), beta_k = mean |R_k| per sample."""
    b = builders.Builder(seed)
    r, terms = "x", []
    for _ in range(order):
        h = b.node("Sign", [r])
        beta = b.node("ReduceMean", [b.node("Abs", [r])], axes=[1, 2, 3], keepdims=1)
        t = b.node("Mul", [beta, h])
        terms.append(t)
        r = b.node("Sub", [r, t])
    xhat = terms[0]
    for t in terms[1:]:
        xhat = b.node("Add", [xhat, t])
    y = b.conv(xhat, b.binary_weight((16, 8, 3, 3)), (3, 3), pads=(1, 1, 1, 1))
    return b.model({"x": [1, 8, 6, 6]}, {y: 4})


@pytest.mark.parametrize("order", [1, 2, 3])
def test_horq_orders_become_integer_convs(order):
    """K binarized inputs, K integer plane convs; only the beta combination is float."""
    model = horq(order)
    feeds = {"x": np.random.default_rng(order).standard_normal((16, 8, 6, 6)).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)[0]
    want = run_reference(model, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    _, low = lower_model(model)
    layers = [n for n in low.nodes if n.op == "layer"]
    assert len(layers) == order
    assert all(low.tensors[n.inputs[0]].dtype == "bits" and n.attrs.x_spec.levels == 3 for n in layers)


@pytest.mark.parametrize("opset", [17, 18])
def test_qcc_horq_function(opset):
    """qcc's model-local HORQ2 function: onnxruntime runs its body, qcc compiles 2 plane convs."""
    from onnx import helper as h

    from qcc.frontend.functions import DOMAIN, horq_function

    b = builders.Builder(8)
    xhat = b.node("HORQ2", ["x"], DOMAIN)
    y = b.conv(xhat, b.binary_weight((12, 8, 3, 3)), (3, 3), pads=(1, 1, 1, 1))
    model = b.model({"x": [1, 8, 5, 5]}, {y: 4})
    del model.opset_import[:]
    model.opset_import.extend([h.make_opsetid("", opset), h.make_opsetid(builders.Q, 1), h.make_opsetid(DOMAIN, 1)])
    model.functions.append(horq_function(2, opset))
    feeds = {"x": np.random.default_rng(4).standard_normal((16, 8, 5, 5)).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)[0]
    want = run_reference(model, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    _, low = lower_model(model)
    assert sum(n.op == "layer" for n in low.nodes) == 2
