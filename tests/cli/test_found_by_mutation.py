"""Regressions found by mutating valid models (tests/data/bad/ holds the ones that must be
refused): these must compile and agree with onnxruntime."""
import numpy as np
import pytest

import builders
from qcc import InferenceSession
from qcc.frontend import reference


def _gemm_model(w_shape, trans_b, scale_shape, flatten_from=None):
    b = builders.Builder(0)
    x = b.quant("x", 2.0 ** -4, 4)
    if flatten_from:
        x = b.node("Flatten", [x], axis=1)
    w = b.rng.uniform(-1, 1, w_shape).astype(np.float32)
    scale = 2.0 ** b.rng.integers(-3, 1, scale_shape)
    y = b.node("Gemm", [x, b.quant(b.const(w), scale, 4, narrow=1)], transB=trans_b)
    return b.model({"x": flatten_from or [1, 6]}, {y: 2})


@pytest.mark.parametrize("scale_shape", [(6,), (1, 6), (5, 6), (5, 1), (1,)])
@pytest.mark.parametrize("flatten_from", [None, [1, 2, 3, 1]])
def test_gemm_weight_scales_along_any_axis(scale_shape, flatten_from):
    """A Gemm (transB=1) weight of shape (5, 6) quantized with one scale per input feature
    (shape (6,)) crashed gemm_to_conv, which took any vector scale for one per output."""
    m = _gemm_model((5, 6), 1, scale_shape, flatten_from)
    s = InferenceSession(m)
    x = np.random.default_rng(1).standard_normal([16, *s.get_inputs()[0].shape[1:]]).astype(np.float32)
    got = s.run(None, {"x": x})[0]
    want = reference.run_reference(m, {"x": x})[0]
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.array_equal(got.argmax(1), want.argmax(1))
