"""Float layers and float ops compiled to C, against onnxruntime (tolerance: float sums
are ordered differently, 1e-4 relative)."""
import numpy as np
import pytest

import builders
from qcc import InferenceSession
from qcc.frontend.reference import run_reference


def float_cnn(ceil_mode=0, include_pad=0):
    b = builders.Builder(3)
    w1 = b.const(b.rng.standard_normal((8, 3, 3, 3)) * 0.3)
    y = b.conv("x", w1, (3, 3), (2, 2), (1, 0, 1, 2), bias=b.rng.standard_normal(8))
    y = b.node("Relu", [b.batchnorm(y, 8)])
    y = b.node("AveragePool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=ceil_mode,
               count_include_pad=include_pad)
    y = b.node("Clip", [y, b.const(-0.5), b.const(2.0)])
    y = b.node("Mul", [y, b.const(b.rng.standard_normal((8, 1, 1)))])
    y = b.node("Sub", [b.const(0.25), y])
    mp = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
    g = b.node("GlobalAveragePool", [mp])
    f = b.node("Flatten", [g], axis=1)
    logits = b.node("Gemm", [f, b.const(b.rng.standard_normal((5, 8))), b.const(b.rng.standard_normal(5))], transB=1)
    prob = b.node("Softmax", [logits], axis=1)
    return b.model({"x": [1, 3, 13, 11]}, {prob: 2, mp: 4})


@pytest.mark.parametrize("ceil_mode,include_pad", [(0, 0), (1, 1), (1, 0)])
def test_float_cnn(ceil_mode, include_pad):
    model = float_cnn(ceil_mode, include_pad)
    feeds = {"x": np.random.default_rng(0).standard_normal((16, 3, 13, 11)).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)
    want = run_reference(model, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert np.array_equal(got[0].argmax(1), want[0].argmax(1))


def quantized_values_net(trunc_v2=False):
    """Quantizers whose values feed float ops: Relu -> Quant(4, unsigned) -> AveragePool ->
    Trunc -> MultiThreshold (values) -> BipolarQuant (values) -> Gemm."""
    b = builders.Builder(5)
    x = b.node("Relu", ["x"])
    q = b.quant(x, 2.0 ** -2, 4, signed=0, rounding="HALF_UP")
    a = b.node("AveragePool", [q], kernel_shape=[2, 2], strides=[2, 2])
    if trunc_v2:
        t = b.node("Trunc", [a, b.const(2.0 ** -4), b.const(0.0), b.const(8.0), b.const(2.0 ** -2), b.const(4.0)],
                   builders.Q, rounding_mode="FLOOR", signed=0, narrow=0)
    else:
        t = b.node("Trunc", [a, b.const(2.0 ** -4), b.const(0.0), b.const(8.0), b.const(6.0)], builders.Q,
                   rounding_mode="FLOOR")
    m = b.node("MultiThreshold", [t, b.const(np.sort(b.rng.integers(0, 8, (4, 3)) * 0.25, axis=1))], builders.Q,
               out_scale=0.5, out_bias=-0.75, out_dtype="INT4")
    s = b.bipolar(b.node("Sub", [m, b.const(0.25)]), 0.5)
    f = b.node("Flatten", [s], axis=1)
    y = b.node("Gemm", [f, b.const(b.rng.standard_normal((6, 4 * 4 * 4))), b.const(np.zeros(6))], transB=1)
    return b.model({"x": [1, 4, 8, 8]}, {y: 2, m: 4, t: 4})


@pytest.mark.parametrize("trunc_v2", [False, True])
def test_quantizer_values_and_trunc(trunc_v2):
    model = quantized_values_net(trunc_v2)
    feeds = {"x": (np.random.default_rng(2).integers(-16, 48, (32, 4, 8, 8)) * 2.0 ** -4).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)
    want = run_reference(model, feeds)
    for g, w in zip(got[1:], want[1:]):  # quantized intermediates: exact
        assert np.array_equal(g, w)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
