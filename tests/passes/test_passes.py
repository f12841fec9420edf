"""Each pass: the interpreter gives the same answer before and after it, the structural
effect is asserted, and a graph the pass must leave alone is left alone."""
import numpy as np
import onnx.parser
import pytest

import builders
from qcc.frontend.onnx import import_model
from qcc.ir import interp
from qcc.passes.fold_constants import fold_constants
from qcc.passes.fold_thresholds import fold_thresholds
from qcc.passes.gemm_to_conv import gemm_to_conv
from qcc.passes.integer_conv import integer_conv
from qcc.passes.lower import lower
from qcc.passes.plan_memory import plan_memory

FLOAT_ONLY = """
<ir_version: 8, opset_import: ["" : 13]>
float_net (float[N, 4] x) => (float[N, 3] y) <float[3, 4] w = {1,2,3,4,5,6,7,8,9,10,11,12}, float[3] b = {1,0,-1}> {
    h = Gemm <transB = 1> (x, w, b)
    y = Relu (h)
}
"""


def _ops(g):
    return [n.op for n in g.nodes]


def _same(before, after, feeds, exact=True):
    a, b = interp.run(before, feeds), interp.run(after, feeds)
    for (ka, va), (kb, vb) in zip(a.items(), b.items()):
        va, vb = np.asarray(va, np.float32), np.asarray(vb, np.float32).reshape(np.shape(va))
        if exact:
            assert np.array_equal(va, vb), ka
        else:
            np.testing.assert_allclose(va, vb, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def mlp():
    g = import_model(builders.w1a1_mlp(3, 40, (70, 65)))
    feeds = {"x": np.random.default_rng(0).uniform(-4, 4, (64, 40)).astype(np.float32)}
    return g, feeds


def test_fold_constants_keeps_weight_levels(mlp):
    g, feeds = mlp
    r = fold_constants(g)
    assert r.changed
    assert "BipolarQuant" in _ops(g) and _ops(r.graph).count("Dequant") == 3  # 2 binary + 1 int8 weight
    lv = [r.graph.tensors[n.inputs[0]] for n in r.graph.nodes if n.op == "Dequant"]
    assert all(t.is_const and t.quant is not None for t in lv)
    assert sum(t.quant.bipolar for t in lv) == 2
    _same(g, r.graph, feeds)


def test_gemm_to_conv(mlp):
    g, feeds = mlp
    g1 = fold_constants(g).graph
    r = gemm_to_conv(g1)
    assert "Gemm" not in _ops(r.graph) and _ops(r.graph).count("Conv") == 3
    _same(g1, r.graph, feeds)


def test_integer_conv_and_fold_thresholds(mlp):
    g, feeds = mlp
    g2 = gemm_to_conv(fold_constants(g).graph).graph
    r3 = integer_conv(g2)
    assert _ops(r3.graph).count("IntConv") == 3 and "Conv" not in _ops(r3.graph)
    _same(g2, r3.graph, feeds)  # dyadic data: exact
    r4 = fold_thresholds(r3.graph)
    ops = _ops(r4.graph)
    assert ops.count("Threshold") == 2 and "BatchNormalization" not in ops and "BipolarQuant" not in ops
    _same(r3.graph, r4.graph, feeds)


def test_fold_thresholds_negative_and_zero_gamma():
    """gamma < 0 flips the comparison (sign -1); gamma = 0 gives a constant channel."""
    gam = np.array([-1.0, 0.0, 0.5, -0.25] * 5)
    model = builders.w1a1_mlp(4, 30, (20,), gamma=[gam])
    g = integer_conv(gemm_to_conv(fold_constants(import_model(model)).graph).graph).graph
    r = fold_thresholds(g)
    thr = next(n for n in r.graph.nodes if n.op == "Threshold").attrs
    assert np.all(thr.sign[gam < 0] == -1) and np.all(thr.sign[gam > 0] == 1)
    bound = 30  # |acc| <= K for +-1 x +-1
    const = thr.thr[gam == 0, 0]
    assert np.all((const <= -bound) | (const > bound))
    feeds = {"x": np.random.default_rng(1).uniform(-4, 4, (64, 30)).astype(np.float32)}
    _same(g, r.graph, feeds)


def test_lower_and_plan_memory(mlp):
    g, feeds = mlp
    g4 = fold_thresholds(integer_conv(gemm_to_conv(fold_constants(g).graph).graph).graph).graph
    low = lower(g4).graph
    assert {n.op for n in low.nodes} <= {"quantize", "layer", "unpack", "reshape", "transpose", "ew", "pool"}
    layers = [n for n in low.nodes if n.op == "layer"]
    # int8 input x pm1 weights: int16 kernel; pm1 x pm1: bits; pm1 x int8 weights (8 plane pairs): int16
    assert [low.tensors[n.inputs[0]].dtype for n in layers] == ["i16", "bits", "i16"]
    assert [n.attrs.out for n in layers] == ["bits", "bits", "f32"]
    _same(g4, low, feeds)
    planned = plan_memory(low).graph
    arena = planned.meta["arena"]
    assert planned.meta["arena_size"] >= max(arena.values())
    _same(low, planned, feeds)


def test_float_graph_left_alone():
    g = import_model(onnx.parser.parse_model(FLOAT_ONLY))
    r = fold_constants(g)
    assert not r.changed
    assert not integer_conv(gemm_to_conv(r.graph).graph).changed
    assert not fold_thresholds(r.graph).changed
    feeds = {"x": np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)}
    g2 = gemm_to_conv(r.graph).graph
    _same(g, lower(g2).graph, feeds, exact=False)
