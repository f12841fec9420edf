"""The oracle (qcc.frontend.reference) must reproduce the QONNX numpy semantics bit for bit.

The expected values come from a direct numpy transcription of the QONNX reference formulas
below (qonnx itself is not a dependency); the graphs are rewritten with ``to_reference`` and run
in onnxruntime, and results are compared as uint32 bit patterns (so -0.0 != +0.0).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcc.errors import QccError
from qcc.frontend.reference import expose_all, reference_session, run_reference, to_reference

QONNX = "qonnx.custom_op.general"
MODES = ["ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN"]
SIGN_NARROW = [(1, 0), (1, 1), (0, 0), (0, 1)]
f32 = np.float32


# ----------------------------------------------------------------------------- numpy QONNX spec
def np_min_int(signed, narrow, bw):
    if signed and narrow:
        return -(2 ** (bw - 1)) + 1
    if signed:
        return -(2 ** (bw - 1))
    return 0 * bw


def np_max_int(signed, narrow, bw):
    if not signed and not narrow:
        return (2**bw) - 1
    if not signed and narrow:
        return (2**bw) - 2
    return (2 ** (bw - 1)) - 1


NP_ROUND = {
    "ROUND": np.round,
    "HALF_EVEN": np.round,
    "CEIL": np.ceil,
    "FLOOR": np.floor,
    "UP": lambda x: np.sign(x) * np.ceil(np.abs(x)),
    "DOWN": np.trunc,  # np.fix
    "HALF_UP": lambda x: np.sign(x) * np.floor(np.abs(x) + 0.5),
    "HALF_DOWN": lambda x: np.sign(x) * np.ceil(np.abs(x) - 0.5),
}


def np_clamp(y, signed, narrow, bw):
    lo, hi = np_min_int(signed, narrow, bw), np_max_int(signed, narrow, bw)
    y = np.where(y > hi, hi.astype(y.dtype), y)
    return np.where(y < lo, lo.astype(y.dtype), y)


def np_quant(x, scale, zeropt, bitwidth, signed, narrow, mode):
    bitwidth = np.asarray(bitwidth, f32)
    y = x / scale
    y = y + zeropt
    if bitwidth == 1 and signed:
        ones = np.ones(y.shape, y.dtype)
        y = np.where(y >= 0.0, ones, -ones)
    else:
        y = NP_ROUND[mode.upper()](np_clamp(y, signed, narrow, bitwidth))
    return (y - zeropt) * scale


def np_bipolar_quant(x, scale):
    ones = np.ones(x.shape, x.dtype)
    return np.where(x >= 0.0, ones, -ones) * scale


def np_multithreshold(v, thresholds, out_scale=1.0, out_bias=0.0, channels_last=False):
    vm = v if channels_last else np.moveaxis(v, 1, -1)
    ret = np.count_nonzero(np.expand_dims(vm, -1) >= thresholds, axis=-1).astype(v.dtype)
    if not channels_last:
        ret = np.moveaxis(ret, -1, 1)
    return out_scale * ret + out_bias


def np_trunc_v1(x, scale, zeropt, in_bw, out_bw, mode):
    y = np.round(x / scale + zeropt)
    y = y / 2.0 ** (np.asarray(in_bw, f32) - np.asarray(out_bw, f32))
    y = NP_ROUND[mode](y)
    return (y - zeropt) * scale


def np_trunc_v2(x, scale, zeropt, in_bw, out_scale, out_bw, signed, narrow, mode):
    y = np.round(x / scale + zeropt)
    trunc_scale = 2 ** np.round(np.log2(out_scale / scale))
    y = y / trunc_scale
    y = NP_ROUND[mode](np_clamp(y, signed, narrow, np.asarray(out_bw, f32)))
    return (y - zeropt / trunc_scale) * out_scale


# ----------------------------------------------------------------------------- helpers
def make_model(nodes, inputs, outputs, inits, *, domain=QONNX, opset=13, inits_as_inputs=True):
    """A float32 model; ``inputs`` maps name -> shape, ``outputs`` is a list of names (shape
    unknown) or a name -> shape dict, ``inits`` maps name -> array."""
    outputs = outputs if isinstance(outputs, dict) else dict.fromkeys(outputs)
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    graph_inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()]
    if inits_as_inputs:  # as Brevitas exports them
        graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in tensors]
    graph_outputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in outputs.items()]
    graph = helper.make_graph(nodes, "g", graph_inputs, graph_outputs, tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(domain, 1)],
                             ir_version=10)


def qnode(op, inputs, output, domain=QONNX, **attrs):
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", domain=domain, **attrs)


def assert_bits(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.float32, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    bad = (got.view(np.uint32) != want.view(np.uint32)) & ~(np.isnan(got) & np.isnan(want))  # any NaN is a NaN
    assert not bad.any(), f"{bad.sum()} bit mismatches, e.g. got {got[bad][:6]} want {want[bad][:6]}"


SPECIALS = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 1e30, -1e30, np.inf, -np.inf, np.nan], f32)


# ----------------------------------------------------------------------------- Quant
@pytest.mark.parametrize("bw", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("signed,narrow", SIGN_NARROW)
@pytest.mark.parametrize("mode", MODES[:-1] + ["half_down"])  # rounding_mode is case-insensitive
def test_quant_matches_qonnx(mode, signed, narrow, bw):
    rng = np.random.default_rng(1000 * bw + 10 * signed + narrow)
    span = 2**bw + 2
    grid = np.arange(-span, span + 0.5, 0.5, dtype=f32)  # integers and exact ties k + 0.5, past the clamp range
    # A: per-tensor power-of-two scale -> y = x/s + z hits every grid point exactly
    s_a, z_a = f32(0.25), f32(0.0 if signed else 2.0)
    x_a = np.concatenate([(grid - z_a) * s_a, SPECIALS, rng.normal(0, span * s_a, 64).astype(f32)])
    # B: per-channel power-of-two scales and nonzero zero points, NCHW, ties per channel
    s_b = np.array([0.5, 0.125, 2.0], f32).reshape(3, 1, 1)
    z_b = np.array([0.0, 1.0, -2.0], f32).reshape(3, 1, 1)
    x_b = np.concatenate([(rng.choice(grid, (2, 3, 4, 5)) - z_b) * s_b,
                          rng.normal(0, span, (1, 3, 4, 5)).astype(f32) * s_b])
    # C: per-channel arbitrary scales/zero points; x = fl(k * s) makes x / s land within an ulp
    # of an integer, where Div and a Mul by 1/s round differently (CEIL/FLOOR tell them apart)
    s_c = rng.uniform(0.01, 0.3, (3, 1, 1)).astype(f32)
    z_c = rng.integers(-2, 3, (3, 1, 1)).astype(f32)
    x_c = np.concatenate([rng.integers(-span, span + 1, (4, 3, 4, 5)).astype(f32) * s_c,
                          rng.normal(0, span * 0.2, (2, 3, 4, 5)).astype(f32)])
    assert np.any(np.mod(grid, 1) == 0.5) and np.any(np.mod(x_b / s_b + z_b, 1) == 0.5)  # ties present

    inits = {"s_a": s_a, "z_a": z_a, "s_b": s_b, "z_b": z_b, "s_c": s_c, "z_c": z_c, "bw": f32(bw)}
    attrs = dict(signed=signed, narrow=narrow, rounding_mode=mode)
    nodes = [qnode("Quant", [f"x_{k}", f"s_{k}", f"z_{k}", "bw"], f"y_{k}", **attrs) for k in "abc"]
    model = make_model(nodes, {"x_a": x_a.shape, "x_b": x_b.shape, "x_c": x_c.shape}, ["y_a", "y_b", "y_c"], inits)
    got = run_reference(model, {"x_a": x_a, "x_b": x_b, "x_c": x_c})
    for out, (x, s, z) in zip(got, [(x_a, s_a, z_a), (x_b, s_b, z_b), (x_c, s_c, z_c)]):
        assert_bits(out, np_quant(x, s, z, bw, signed, narrow, mode))


def test_quant_known_values():
    """Spot checks independent of the numpy transcription: half-even ties, clamp, bipolar."""
    x = np.array([-2.5, -1.5, -0.5, -0.0, 0.5, 1.5, 2.5, 9.0, -9.0], f32)
    cases = [  # (signed, narrow, bw, mode, expected)
        (1, 0, 4, "ROUND", [-2, -2, -0.0, 0, 0, 2, 2, 7, -8]),
        (1, 1, 4, "HALF_UP", [-3, -2, -1, 0, 1, 2, 3, 7, -7]),
        (1, 0, 4, "DOWN", [-2, -1, -0.0, 0, 0, 1, 2, 7, -8]),
        (1, 0, 4, "UP", [-3, -2, -1, 0, 1, 2, 3, 7, -8]),
        (0, 0, 2, "CEIL", [0, 0, 0, 0, 1, 2, 3, 3, 0]),
        (1, 0, 1, "ROUND", [-1, -1, -1, 1, 1, 1, 1, 1, -1]),
        (0, 0, 1, "ROUND", [0, 0, 0, 0, 0, 1, 1, 1, 0]),
    ]
    for signed, narrow, bw, mode, want in cases:
        node = qnode("Quant", ["x", "s", "z", "bw"], "y", signed=signed, narrow=narrow, rounding_mode=mode)
        model = make_model([node], {"x": [9]}, ["y"], {"s": f32(1.0), "z": f32(0.0), "bw": f32(bw)})
        (got,) = run_reference(model, {"x": x})
        assert_bits(got, np.array(want, f32))


@pytest.mark.parametrize("domain,op", [("onnx.brevitas", "Quant"), ("finn.custom_op.general", "Quant"),
                                       (QONNX, "IntQuant")])
def test_quant_domains_constant_node_bitwidth_and_runtime_scale(domain, op):
    rng = np.random.default_rng(7)
    x = rng.normal(0, 2, (4, 6)).astype(f32)
    scale = rng.uniform(0.1, 0.5, (1, 6)).astype(f32)
    nodes = [helper.make_node("Constant", [], ["bw"], value_float=3.0),
             qnode(op, ["x", "scale", "z", "bw"], "y", domain=domain, signed=1, narrow=1, rounding_mode="round")]
    model = make_model(nodes, {"x": x.shape, "scale": scale.shape}, ["y"], {"z": f32(0)}, domain=domain)
    (got,) = run_reference(model, {"x": x, "scale": scale})
    assert_bits(got, np_quant(x, scale, f32(0), 3, 1, 1, "ROUND"))


# ----------------------------------------------------------------------------- BipolarQuant
def test_bipolar_quant():
    rng = np.random.default_rng(3)
    x4 = rng.normal(0, 1, (2, 3, 4, 4)).astype(f32)
    x4.flat[:len(SPECIALS)] = SPECIALS
    x2 = np.concatenate([SPECIALS, rng.normal(0, 1, 16 - len(SPECIALS)).astype(f32)]).reshape(2, 8)
    s4 = np.array([0.5, 1.0, 0.37], f32).reshape(3, 1, 1)
    nodes = [qnode("BipolarQuant", ["x4", "s4"], "y4"), qnode("BipolarQuant", ["x2", "s2"], "y2")]
    model = make_model(nodes, {"x4": x4.shape, "x2": x2.shape}, ["y4", "y2"], {"s4": s4, "s2": f32(0.75)})
    y4, y2 = run_reference(model, {"x4": x4, "x2": x2})
    assert_bits(y4, np_bipolar_quant(x4, s4))
    assert_bits(y2, np_bipolar_quant(x2, f32(0.75)))
    assert y2[0, 0] == 0.75 and y2[0, 1] == 0.75  # +0.0 and -0.0 both map to +scale


# ----------------------------------------------------------------------------- MultiThreshold
@pytest.mark.parametrize("shape,layout", [((2, 3, 4, 5), "NCHW"), ((2, 4, 5, 3), "NHWC"), ((6, 3), "NCHW"),
                                          ((6, 3), "NC"), ((2, 3, 7), "NCW")])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("out_scale,out_bias", [(1.0, 0.0), (0.5, -1.5)])
def test_multithreshold(shape, layout, shared, out_scale, out_bias):
    rng = np.random.default_rng(len(shape) * 10 + shared)
    channels_last = layout.endswith("C")
    channels = shape[-1] if channels_last else shape[1]
    thresholds = np.sort(rng.integers(-12, 12, (1 if shared else channels, 7)) * 0.25, axis=1).astype(f32)
    v = rng.normal(0, 1.5, shape).astype(f32)
    mask = rng.random(shape) < 0.5  # half the values sit exactly on a threshold of their channel
    axis = len(shape) - 1 if channels_last else 1
    chan = np.arange(channels).reshape([channels if d == axis else 1 for d in range(len(shape))])
    row = np.zeros(shape, int) if shared else np.broadcast_to(chan, shape)
    on = thresholds[row, rng.integers(0, 7, shape)]  # a threshold of the element's own channel
    v = np.where(mask, on, v).astype(f32)
    v.flat[:len(SPECIALS)] = SPECIALS
    attrs = dict(out_dtype="UINT3", data_layout=layout)
    if (out_scale, out_bias) != (1.0, 0.0):
        attrs.update(out_scale=out_scale, out_bias=out_bias)
    model = make_model([qnode("MultiThreshold", ["v", "thr"], "y", **attrs)], {"v": shape}, ["y"], {"thr": thresholds})
    (got,) = run_reference(model, {"v": v})
    want = np_multithreshold(v, thresholds, out_scale, out_bias, channels_last)
    assert_bits(got, want)
    assert np.isin(v, thresholds).mean() > 0.25  # ">=" on exact equality is exercised


def test_multithreshold_equality_counts():
    thr = np.array([[-1.0, 0.0, 1.0]], f32)
    v = np.array([[-1.0, -0.5, 0.0, -0.0, 1.0, 2.0]], f32)
    model = make_model([qnode("MultiThreshold", ["v", "thr"], "y", data_layout="NC")], {"v": v.shape}, ["y"],
                       {"thr": thr})
    (got,) = run_reference(model, {"v": v})
    assert_bits(got, np.array([[1, 1, 2, 2, 3, 3]], f32))


# ----------------------------------------------------------------------------- Trunc
def trunc_input(rng, scale, zeropt):
    t = np.concatenate([np.arange(-300, 301), np.arange(-40, 40) + 0.5]).astype(f32)  # ties at both roundings
    return np.concatenate([(t - zeropt) * scale, SPECIALS, rng.normal(0, 60, 50).astype(f32) * scale]).astype(f32)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("zeropt", [0.0, 2.0])
def test_trunc_v1(mode, zeropt):
    rng = np.random.default_rng(11)
    scale, z = f32(0.5), f32(zeropt)
    x = trunc_input(rng, scale, z)
    inits = {"s": scale, "z": z, "ibw": f32(8), "obw": f32(4)}
    node = qnode("Trunc", ["x", "s", "z", "ibw", "obw"], "y", rounding_mode=mode)
    (got,) = run_reference(make_model([node], {"x": x.shape}, ["y"], inits), {"x": x})
    assert_bits(got, np_trunc_v1(x, scale, z, f32(8), f32(4), mode))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("signed,narrow", SIGN_NARROW)
@pytest.mark.parametrize("zeropt", [0.0, 2.0])
def test_trunc_v2(mode, signed, narrow, zeropt):
    rng = np.random.default_rng(12)
    scale, z = f32(0.5), f32(zeropt)
    x = trunc_input(rng, scale, z)
    xc = rng.normal(0, 40, (2, 3, 2, 2)).astype(f32)
    sc = np.array([0.5, 0.25, 1.0], f32).reshape(3, 1, 1)
    osc = np.array([4.0, 4.0, 7.3], f32).reshape(3, 1, 1)  # 7.3 / 1.0 -> trunc scale 2**round(log2(7.3)) = 8
    inits = {"s": scale, "z": z, "ibw": f32(8), "os": f32(8.0), "obw": f32(4), "sc": sc, "osc": osc}
    attrs = dict(rounding_mode=mode, signed=signed, narrow=narrow)
    nodes = [qnode("Trunc", ["x", "s", "z", "ibw", "os", "obw"], "y", **attrs),
             qnode("Trunc", ["xc", "sc", "z", "ibw", "osc", "obw"], "yc", **attrs)]
    y, yc = run_reference(make_model(nodes, {"x": x.shape, "xc": xc.shape}, ["y", "yc"], inits), {"x": x, "xc": xc})
    assert_bits(y, np_trunc_v2(x, scale, z, f32(8), f32(8.0), f32(4), signed, narrow, mode))
    assert_bits(yc, np_trunc_v2(xc, sc, z, f32(8), osc, f32(4), signed, narrow, mode))


def test_trunc_default_rounding_is_floor():
    x = np.array([-17.0, -16.0, 15.0, 16.0, 24.0], f32)
    node = qnode("Trunc", ["x", "s", "z", "ibw", "obw"], "y")
    model = make_model([node], {"x": [5]}, ["y"], {"s": f32(1), "z": f32(0), "ibw": f32(8), "obw": f32(4)})
    (got,) = run_reference(model, {"x": x})
    assert_bits(got, np.array([-2, -1, 0, 1, 1], f32))


# ----------------------------------------------------------------------------- model-level behaviour
def small_qonnx_model(**kw):
    """x -> Quant -> Relu -> MultiThreshold(NCHW) -> BipolarQuant."""
    nodes = [qnode("Quant", ["x", "s", "z", "bw"], "q", signed=1, narrow=0, rounding_mode="ROUND"),
             helper.make_node("Relu", ["q"], ["r"], name="relu"),
             qnode("MultiThreshold", ["r", "thr"], "m", out_scale=2.0, out_bias=-3.0),
             qnode("BipolarQuant", ["m", "bs"], "y")]
    inits = {"s": f32(0.25), "z": f32(0), "bw": f32(4), "bs": f32(0.5),
             "thr": np.array([[0.0, 0.5, 1.0], [0.25, 0.5, 0.75]], f32)}
    return make_model(nodes, {"x": [2, 2, 3, 3]}, {"y": [2, 2, 3, 3]}, inits, **kw)


def test_structure_inputs_opsets_names():
    model = small_qonnx_model()
    before = model.SerializeToString()
    ref = to_reference(model)
    assert model.SerializeToString() == before  # input untouched
    assert [i.name for i in ref.graph.input] == ["x"]  # initializers no longer listed as inputs
    assert [(o.domain, o.version) for o in ref.opset_import] == [("", 13)]
    assert ref.ir_version == 10
    assert all(n.domain == "" for n in ref.graph.node)
    for n in ref.graph.node:  # traceable names
        assert n.name == "relu" or n.name.split("/")[0] in {"Quant_q", "MultiThreshold_m", "BipolarQuant_y"}
    onnx.checker.check_model(ref, full_check=True)
    x = np.random.default_rng(0).normal(0, 1, (2, 2, 3, 3)).astype(f32)
    q = np_quant(x, f32(0.25), f32(0), 4, 1, 0, "ROUND")
    thr = np.array([[0.0, 0.5, 1.0], [0.25, 0.5, 0.75]], f32)
    want = np_bipolar_quant(np_multithreshold(np.maximum(q, f32(0)), thr, 2.0, -3.0), f32(0.5))
    (got,) = run_reference(model, {"x": x})
    assert_bits(got, want)


def test_old_opset_is_converted():
    model = small_qonnx_model(opset=11)
    model.graph.node.append(helper.make_node("Unsqueeze", ["y"], ["u"], name="unsq", axes=[0]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("u", TensorProto.FLOAT, None))
    ref = to_reference(model)
    assert [(o.domain, o.version) for o in ref.opset_import] == [("", 13)]
    (got,) = run_reference(model, {"x": np.ones((2, 2, 3, 3), f32)})
    assert got.shape == (1, 2, 2, 3, 3)


def test_too_new_opset_is_lowered_for_onnxruntime():
    ref = to_reference(small_qonnx_model(opset=26))
    assert [(o.domain, o.version) for o in ref.opset_import] == [("", 25)]
    assert ref.ir_version == helper.find_min_ir_version_for(ref.opset_import) <= 13
    (got,) = run_reference(small_qonnx_model(opset=26), {"x": np.ones((2, 2, 3, 3), f32)})
    assert got.shape == (2, 2, 3, 3)


def test_expose_all_intermediates():
    model = expose_all(small_qonnx_model())
    names = [o.name for o in model.graph.output]
    assert names == ["y", "q", "r", "m"]
    x = np.random.default_rng(1).normal(0, 1, (2, 2, 3, 3)).astype(f32)
    y, q, r, m = run_reference(model, {"x": x})
    assert_bits(q, np_quant(x, f32(0.25), f32(0), 4, 1, 0, "ROUND"))
    assert_bits(r, np.maximum(q, f32(0)))
    # on a reference model every internal tensor (incl. bool/int64 ones) becomes an output too
    ref_all = expose_all(to_reference(small_qonnx_model()))
    outs = dict(zip([o.name for o in ref_all.graph.output], run_reference(ref_all, {"x": x})))
    assert len(outs) == len(ref_all.graph.node) and outs["q"].dtype == np.float32
    assert any(v.dtype == np.bool_ for v in outs.values())
    assert_bits(outs["m"], m)


def test_session_options():
    sess = reference_session(small_qonnx_model(), threads=2)
    opts = sess.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_unknown_custom_op_is_rejected():
    node = qnode("FooQuant", ["x", "s"], "y")
    model = make_model([node], {"x": [3]}, ["y"], {"s": f32(1)})
    with pytest.raises(QccError) as err:
        to_reference(model)
    msg = str(err.value)
    assert "FooQuant_y" in msg and "FooQuant" in msg and QONNX in msg
    for op in ("Quant", "BipolarQuant", "MultiThreshold", "Trunc"):
        assert op in msg
    other = make_model([helper.make_node("Bar", ["x"], ["y"], name="bar", domain="com.example")], {"x": [3]}, ["y"],
                       {}, domain="com.example")
    with pytest.raises(QccError, match="bar.*com.example"):
        to_reference(other)


def test_non_constant_parameters_are_rejected():
    node = qnode("Quant", ["x", "s", "z", "bw"], "y", signed=1, narrow=0)
    model = make_model([node], {"x": [3], "bw": []}, ["y"], {"s": f32(1), "z": f32(0)})
    with pytest.raises(QccError, match="Quant_y.*bit width input 'bw' must be a constant"):
        to_reference(model)
    node = qnode("Trunc", ["x", "s", "z", "ibw", "os", "obw"], "t")
    model = make_model([node], {"x": [3], "os": []}, ["t"], {"s": f32(1), "z": f32(0), "ibw": f32(8), "obw": f32(4)})
    with pytest.raises(QccError, match="Trunc_t.*output scale"):
        to_reference(model)


@pytest.mark.parametrize("bw,attrs,match", [(2.5, {}, "integer"),
                                           (4.0, {"rounding_mode": "STOCHASTIC"}, "rounding_mode")])
def test_bad_quant_attributes_are_rejected(bw, attrs, match):
    node = qnode("Quant", ["x", "s", "z", "bw"], "y", signed=1, narrow=0, **attrs)
    model = make_model([node], {"x": [3]}, ["y"], {"s": f32(1), "z": f32(0), "bw": f32(bw)})
    with pytest.raises(QccError, match=match):
        to_reference(model)


def test_qonnx_op_inside_subgraph_is_rejected():
    body = helper.make_graph([qnode("BipolarQuant", ["x", "s"], "b")], "body", [],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=body, else_branch=body)
    model = make_model([node], {"x": [3]}, ["y"], {"s": f32(1), "c": np.array(True)})
    with pytest.raises(QccError, match="branch.*BipolarQuant.*subgraph"):
        to_reference(model)
