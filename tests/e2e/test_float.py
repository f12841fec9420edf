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
