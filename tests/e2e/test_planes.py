"""Every seed method through the plane decomposition, end to end against onnxruntime.

Networks are built with each method's exact QONNX structure (activation and weight
quantizers of SEEDS.md), dyadic parameters and BatchNorm means placed on values the
accumulators really take, so quantizer inputs land exactly on thresholds and .5 ties.
The last hidden activation is a model output and must match bit for bit; logits within
1e-4 relative with identical argmax."""
import numpy as np
import pytest

import builders
from qcc import InferenceSession
from qcc.api import lower_model
from qcc.frontend.reference import run_reference
from test_w1a1 import N, _bn_inputs, _compare

WEIGHTS = {
    "pm1": lambda b, shape: b.binary_weight(shape),                                        # BWN / XNOR-Net
    "ter": lambda b, shape: b.int_weight(shape, bits=2, scale=2.0 ** -1),                  # TWN: narrow 2-bit = {-1,0,1}
    "s2": lambda b, shape: b.quant(b.const(b.rng.uniform(-1, 1, shape), "w"), 2.0 ** -1, 2, signed=1, narrow=0),
    "k3": lambda b, shape: b.quant(b.const(b.rng.uniform(-1, 1, shape), "w"), 2.0 ** -2, 3, signed=0, zero=3.5),
    "k4": lambda b, shape: b.quant(b.const(b.rng.uniform(-1, 1, shape), "w"), 2.0 ** -3, 4, signed=0, zero=7.5),
    "i8": lambda b, shape: b.int_weight(shape),
}


def _act(b, y, c, kind, mean, thresholds):
    y = b.batchnorm(y, c, mean=mean)
    if kind == "pm1":
        return b.bipolar(y)
    if kind == "u2":  # HWGQ: BN -> quantized ReLU, uniform 2-bit
        return b.quant(b.node("Relu", [y]), 2.0 ** -1, 2, signed=0)
    if kind == "s2":
        return b.quant(y, 2.0 ** -1, 2, signed=1)
    if kind == "u4":
        return b.quant(b.node("Relu", [y]), 2.0 ** -2, 4, signed=0, rounding="HALF_UP")
    if kind == "mt":  # Quantization Networks: learned non-uniform thresholds, uniform levels
        t = thresholds if thresholds is not None else np.sort(b.rng.integers(-8, 8, (c, 3)) * 0.25, axis=1)
        return b.node("MultiThreshold", [y, b.const(t)], builders.Q, out_scale=0.5, out_bias=0.0, out_dtype="UINT2")
    raise KeyError(kind)


def mlp(layers, k=48, seed=0, means=None, thresholds=None, classes=7):
    """Quant(8) input -> [Gemm(weights) -> BN -> activation] per layer -> int8 Gemm."""
    b = builders.Builder(seed)
    x = b.quant("x", 2.0 ** -4, 8, signed=1)
    c_in = k
    for i, (wk, ak, c) in enumerate(layers):
        y = b.node("Gemm", [x, WEIGHTS[wk](b, (c, c_in))], transB=1)
        x = _act(b, y, c, ak, None if means is None else means[i], None if thresholds is None else thresholds[i])
        c_in = c
    logits = b.node("Gemm", [x, b.int_weight((classes, c_in)), b.const(b.rng.integers(-8, 8, classes) * 0.25)],
                    transB=1)
    return b.model({"x": [1, k]}, {x: 2, logits: 2})


def cnn(layers, c0=3, hw=(8, 8), seed=0, means=None, thresholds=None, classes=5):
    """Quant(8) -> [Conv 3x3 (pads 1, then asymmetric) -> BN -> act] -> MaxPool on levels -> Flatten -> Gemm."""
    b = builders.Builder(seed)
    x = b.quant("x", 2.0 ** -4, 8, signed=1)
    c_in = c0
    pads = [(1, 1, 1, 1), (0, 1, 2, 1), (2, 2, 2, 2)]
    for i, (wk, ak, c) in enumerate(layers):
        y = b.conv(x, WEIGHTS[wk](b, (c, c_in, 3, 3)), (3, 3), (1, 1), pads[i % 3])
        x = _act(b, y, c, ak, None if means is None else means[i], None if thresholds is None else thresholds[i])
        c_in = c
    pooled = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    flat = b.node("Flatten", [pooled], axis=1)
    return b, flat, pooled


def _calibrate(build, feeds, layers):
    """BN means and MultiThreshold thresholds on values the network really produces."""
    pre = _bn_inputs(build(None, None), feeds)
    means = [np.sort(np.moveaxis(v, 1, -1).reshape(-1, v.shape[1]), axis=0)[len(v) // 2] for v in pre]
    model = build(means, None)
    thresholds = None
    if any(ak == "mt" for _, ak, _ in layers):
        from qcc.frontend.reference import expose_all
        full = expose_all(model)
        outs = dict(zip([o.name for o in full.graph.output], run_reference(full, feeds)))
        bn_outs = [n.output[0] for n in model.graph.node if n.op_type == "BatchNormalization"]
        thresholds = []
        for name in bn_outs:
            v = np.sort(np.moveaxis(outs[name], 1, -1).reshape(-1, outs[name].shape[1]), axis=0)
            thresholds.append(v[[len(v) // 4, len(v) // 2, 3 * len(v) // 4]].T.copy())
        model = build(means, thresholds)
    return model


def _ties(model, feeds) -> int:
    """Quantizer inputs exactly on a rounding tie (.5) or a threshold (0 for BipolarQuant)."""
    from onnx import numpy_helper

    from qcc.frontend.reference import expose_all
    full = expose_all(model)
    outs = dict(zip([o.name for o in full.graph.output], run_reference(full, feeds)))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    hits = 0
    for n in model.graph.node:
        v = outs.get(n.input[0])
        if v is None:
            continue
        if n.op_type == "Quant":
            r = v / init[n.input[1]]
            hits += int(np.sum(r - np.floor(r) == 0.5))
        elif n.op_type == "BipolarQuant":
            hits += int(np.sum(v == 0))
        elif n.op_type == "MultiThreshold":
            vc = np.moveaxis(v, 1, -1)[..., None]  # (..., C, 1) against thresholds (C, steps)
            hits += int(np.sum(vc == init[n.input[1]]))
    return hits


MLP_CASES = {
    "w1a2-hwgq": [("pm1", "u2", 65), ("pm1", "u2", 64)],
    "w2a2-signed": [("s2", "u2", 100), ("s2", "s2", 63)],
    "w2a2-ternary": [("ter", "u2", 65), ("ter", "u2", 130)],
    "ternary-x-pm1": [("ter", "pm1", 70), ("ter", "pm1", 33)],
    "mul2q-k3": [("k3", "u2", 64), ("k3", "pm1", 40)],
    "mul2q-k4": [("k4", "u4", 50), ("k4", "u2", 20)],
    "qnet-multithreshold": [("ter", "mt", 66), ("pm1", "mt", 31)],
    "mixed-per-layer": [("pm1", "pm1", 64), ("s2", "u2", 65), ("k4", "u4", 32), ("i8", "pm1", 20)],
}


@pytest.mark.parametrize("case", list(MLP_CASES))
def test_mlp_methods(case, tmp_path):
    layers = MLP_CASES[case]
    rng = np.random.default_rng(1)
    feeds = {"x": rng.uniform(-4, 4, (N, 48)).astype(np.float32)}
    model = _calibrate(lambda m, t: mlp(layers, means=m, thresholds=t), feeds, layers)
    assert _ties(model, feeds) > 0, "the test must exercise exact ties"
    _compare(model, feeds, tmp_path, bits=False)


CNN_CASES = {
    "w1a2-hwgq": [("i8", "u2", 16), ("pm1", "u2", 65)],
    "w2a2-signed": [("i8", "u2", 16), ("s2", "s2", 64)],
    "w2a2-ternary": [("i8", "s2", 3), ("ter", "u2", 100), ("ter", "u2", 63)],
    "qnet-multithreshold": [("i8", "mt", 16), ("ter", "mt", 33)],
}


@pytest.mark.parametrize("case", list(CNN_CASES))
def test_cnn_methods(case, tmp_path):
    layers = CNN_CASES[case]
    rng = np.random.default_rng(2)
    feeds = {"x": rng.uniform(-4, 4, (64, 3, 8, 8)).astype(np.float32)}

    def build(means, thresholds):
        b, flat, pooled = cnn(layers, means=means, thresholds=thresholds)
        numel = int(np.prod(run_reference(b.model({"x": [1, 3, 8, 8]}, {pooled: 4}), {"x": feeds["x"][:1]})[0].shape[1:]))
        logits = b.node("Gemm", [flat, b.int_weight((5, numel)), b.const(np.zeros(5))], transB=1)
        return b.model({"x": [1, 3, 8, 8]}, {pooled: 4, logits: 2})

    model = _calibrate(build, feeds, layers)
    assert _ties(model, feeds) > 0, "the test must exercise exact ties"
    _compare(model, feeds, tmp_path, bits=False)


def test_planes_are_used():
    """The lowering picks bit-plane kernels for narrow operands, int16 for wide ones."""
    def inputs(case):
        _, low = lower_model(mlp(MLP_CASES[case]))
        return [low.tensors[n.inputs[0]] for n in low.nodes if n.op == "layer"]

    # int8 x pm1; pm1 x 2-bit (2 plane pairs); 2-bit x 4-bit (8 pairs: int16); 4-bit x int8; pm1 x int8
    assert [t.dtype for t in inputs("mixed-per-layer")] == ["i16", "bits", "i16", "i16", "i16"]
    hwgq = inputs("w1a2-hwgq")
    assert [t.dtype for t in hwgq] == ["i16", "bits", "i16"] and hwgq[1].quant.bits == 2


def alq_mlp(bases=2, seed=0):
    """ALQ: each hidden weight is sum_i alpha_i * B_i, binary bases with arbitrary (per output
    channel) coefficients; 2-bit activations."""
    b = builders.Builder(seed)
    x = b.quant("x", 2.0 ** -4, 8, signed=1)
    c_in = 48
    for c in (40, 24):
        terms = []
        for i in range(bases):
            alpha = b.const(b.rng.uniform(0.1, 1.0, (c, 1)) / 2 ** i)
            terms.append(b.node("Mul", [alpha, b.bipolar(b.const(b.rng.uniform(-1, 1, (c, c_in)), "w"))]))
        w = terms[0]
        for t in terms[1:]:
            w = b.node("Add", [w, t])
        y = b.node("Gemm", [x, w], transB=1)
        x = _act(b, y, c, "u2", None, None)
        c_in = c
    logits = b.node("Gemm", [x, b.int_weight((7, c_in)), b.const(np.zeros(7))], transB=1)
    return b.model({"x": [1, 48]}, {logits: 2})


@pytest.mark.parametrize("bases", [2, 3])
def test_alq_multi_basis_weights(bases):
    model = alq_mlp(bases)
    feeds = {"x": np.random.default_rng(6).uniform(-4, 4, (N, 48)).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)[0]
    want = run_reference(model, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    _, low = lower_model(model)
    layers = [n for n in low.nodes if n.op == "layer"]
    binary = [n for n in layers if n.attrs.w_spec is not None and n.attrs.w_spec.bipolar]
    assert len(binary) == 2 * bases  # every basis of both hidden layers is a popcount layer


def hwgq_nonuniform(seed=0):
    """HWGQ with a first gap other than the step: levels {0, beta - delta, beta, beta + delta}
    as delta * u + (beta - 2 delta) * m, with u = 2-bit code and m = [u >= 1] (two
    MultiThresholds on the same BatchNorm output), feeding a binary-weight layer."""
    b = builders.Builder(seed)
    x = b.quant("x", 2.0 ** -4, 8, signed=1)
    y = b.node("Gemm", [x, b.int_weight((40, 48))], transB=1)
    y = b.batchnorm(y, 40)
    t = np.sort(b.rng.integers(0, 12, (40, 3)) * 0.25, axis=1)
    u = b.node("MultiThreshold", [y, b.const(t)], builders.Q, out_scale=1.0, out_dtype="UINT2")
    m = b.node("MultiThreshold", [y, b.const(t[:, :1])], builders.Q, out_scale=1.0, out_dtype="BINARY")
    beta, delta = 0.75, 0.5  # levels 0, 0.25, 0.75, 1.25
    v = b.node("Add", [b.node("Mul", [u, b.const(delta)]), b.node("Mul", [m, b.const(beta - 2 * delta)])])
    z = b.node("Gemm", [v, b.binary_weight((24, 40))], transB=1)
    logits = b.node("Gemm", [z, b.const(b.rng.standard_normal((7, 24))), b.const(np.zeros(7))], transB=1)
    return b.model({"x": [1, 48]}, {v: 2, logits: 2})


def test_hwgq_nonuniform_levels():
    model = hwgq_nonuniform()
    feeds = {"x": np.random.default_rng(7).uniform(-4, 4, (N, 48)).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)
    want = run_reference(model, feeds)
    assert np.array_equal(got[0], want[0])
    assert set(np.unique(got[0])) == {0.0, 0.25, 0.75, 1.25}
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4 * np.abs(want[1]).max())
    _, low = lower_model(model)
    binary = [n for n in low.nodes if n.op == "layer" and n.attrs.w_spec is not None and n.attrs.w_spec.bipolar]
    assert len(binary) == 2 and sorted(n.attrs.x_spec.bits for n in binary) == [1, 2]
