"""Regenerate the hostile and malformed model corpus in this directory.

    python tests/data/bad/make_corpus.py          # rewrite every file and cases.json
    python tests/data/bad/make_corpus.py --check  # exit 1 if a committed file differs

Every case is one file (an .onnx model, or an empty/text file, a directory, an .npz of
inputs) plus one entry in ``cases.json``: the qcc commands that must refuse it with exit
code 2 and a fragment of the one-line message they must print. Models are built with
``onnx.helper`` from a small valid QONNX network (``_base``) with one thing broken, so
each file is a few hundred bytes and reviewable with ``qcc inspect``-style tools. The
tests read the committed files, not this script.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
Q = "qonnx.custom_op.general"
ALL = ["compile", "check", "inspect"]
DIGITS = "examples/models/digits_w1a1.onnx"  # a valid model, for the bad-inputs cases


def _init(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _model(nodes, inits, inputs=None, outputs=None, opset=13, domains=(Q,)):
    inputs = inputs if inputs is not None else [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])]
    outputs = outputs if outputs is not None else [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])]
    g = helper.make_graph(nodes, "bad", inputs, outputs, inits)
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    m = helper.make_model(g, opset_imports=ops, ir_version=8, producer_name="qcc-bad-corpus")
    return m


def _base(w=None, conv_attrs=None, scale=0.125, wscale=0.5, bits=4.0, w_shape=(4, 3, 3, 3), rounding="ROUND",
          in_shape=(1, 3, 6, 6), thresholds=None):
    """x -> Quant(bits) -> Conv(BipolarQuant W) -> [MultiThreshold] -> GlobalAveragePool -> Flatten -> y."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, w_shape).astype(np.float32) if w is None else np.asarray(w, np.float32)
    inits = [_init("x_scale", scale), _init("x_zero", 0.0), _init("x_bits", bits),
             _init("W", w), _init("w_scale", wscale)]
    nodes = [
        helper.make_node("Quant", ["x", "x_scale", "x_zero", "x_bits"], ["xq"], name="quant_x", domain=Q,
                         signed=1, narrow=0, rounding_mode=rounding),
        helper.make_node("BipolarQuant", ["W", "w_scale"], ["Wq"], name="quant_w", domain=Q),
        helper.make_node("Conv", ["xq", "Wq"], ["c"], name="conv", kernel_shape=list(w.shape[2:]),
                         pads=[1, 1, 1, 1], **(conv_attrs or {})),
    ]
    last = "c"
    if thresholds is not None:
        inits.append(_init("thr", thresholds))
        nodes.append(helper.make_node("MultiThreshold", ["c", "thr"], ["t"], name="threshold", domain=Q,
                                      out_scale=1.0, out_bias=0.0))
        last = "t"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["y"], name="flatten", axis=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))]
    return nodes, inits, inputs


def base_model(**kw):
    nodes, inits, inputs = _base(**kw)
    return _model(nodes, inits, inputs)


def _with_node(model, index, **attrs):
    n = model.graph.node[index]
    for k, v in attrs.items():
        for a in list(n.attribute):
            if a.name == k:
                n.attribute.remove(a)
        n.attribute.append(helper.make_attribute(k, v))
    return model


def _replace_init(model, name, value):
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(_init(name, value))
    return model


def _drop_init(model, name):
    for t in list(model.graph.initializer):
        if t.name == name:
            model.graph.initializer.remove(t)
    return model


def qdq_model(w_scale=None, w_axis=0, x_scale=0.05, x_zero=128):
    """x -> QuantizeLinear(uint8) -> DequantizeLinear -> Conv(DequantizeLinear(int8 W, per channel)) -> y."""
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w_scale = np.full(4, 0.01, np.float32) if w_scale is None else np.asarray(w_scale, np.float32)
    inits = [_init("xs", x_scale), _init("xz", x_zero, np.uint8), _init("W", w, np.int8), _init("ws", w_scale),
             _init("wz", np.zeros(w_scale.shape, np.int8), np.int8)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quantize_x"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dequantize_x"),
             helper.make_node("DequantizeLinear", ["W", "ws", "wz"], ["Wd"], name="dequantize_w", axis=w_axis),
             helper.make_node("Conv", ["xd", "Wd"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["y"], name="flatten", axis=1)]
    return _model(nodes, inits, domains=())


def _shape_model(dims):
    """x (the given dims, written raw so invalid values survive) -> Relu -> y."""
    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    vi.type.tensor_type.shape.ClearField("dim")
    for d in dims:
        vi.type.tensor_type.shape.dim.add().dim_value = d
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [], [vi], domains=())


def _npz(**arrays) -> bytes:
    """np.savez's format with fixed timestamps, so the bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(name + ".npy", date_time=(2020, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


# ---- the cases: file -> (contents, commands, expected fragment, extra) ------------------------------------

def cases():
    c = {}

    def add(file, data, expect, commands=ALL, what="", **extra):
        c[file] = dict(data=data, expect=expect, commands=commands, what=what, **extra)

    good = base_model().SerializeToString()
    add("truncated.onnx", good[:len(good) // 2], "not a valid ONNX protobuf", what="protobuf cut in half")
    add("empty.onnx", b"", "empty file", what="zero bytes")
    add("text.onnx", b"this is not an onnx model, just some text\n" * 4, "not an ONNX file",
        what="a text file with an .onnx name")
    add("directory.onnx", "dir", "is a directory", what="a directory where a model file is expected")
    add("missing.onnx", None, "no such file", what="the path does not exist (never committed)")

    m = base_model()  # conv reads 'p' (the pool's output) and the pool reads 'c': a cycle
    m.graph.node[2].input[0] = "p"
    add("cycle.onnx", m.SerializeToString(), "the graph has a cycle", what="conv -> pool -> conv")

    m = base_model()
    m.graph.node[2].input[0] = "nowhere"
    add("dangling_input.onnx", m.SerializeToString(), "input 'nowhere' is not produced by any node",
        what="conv reads a tensor nothing produces")

    add("missing_initializer.onnx", _drop_init(base_model(), "w_scale").SerializeToString(),
        "missing initializer", what="BipolarQuant scale has no initializer")

    m = _drop_init(base_model(), "W")
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3, 3, 3]))
    add("weight_is_graph_input.onnx", m.SerializeToString(), "if 'W' is a weight, an initializer",
        what="conv weight [4, 3, 3, 3] declared as a graph input without an initializer")
    m = _drop_init(base_model(w_shape=(1, 3, 3, 3)), "W")
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 3, 3, 3]))
    add("weight_is_graph_input_1.onnx", m.SerializeToString(), "must be a constant",
        what="conv weight [1, 3, 3, 3] declared as a graph input without an initializer")

    add("conv_weight_channels.onnx", base_model(w_shape=(4, 5, 3, 3)).SerializeToString(), "takes 5 input channels, the input 'xq' has 3",
        what="conv weight has 5 input channels, the input has 3")

    add("kernel_shape_mismatch.onnx", _with_node(base_model(), 2, kernel_shape=[5, 5]).SerializeToString(),
        "kernel_shape [5, 5] disagrees with the weight's shape [4, 3, 3, 3]", what="kernel_shape [5, 5] but a 3x3 weight")

    add("zero_dim.onnx", _shape_model([1, 0, 8, 8]).SerializeToString(), "dimension 1 is 0",
        what="input dims [1, 0, 8, 8]")
    add("negative_dim.onnx", _shape_model([1, -3, 8, 8]).SerializeToString(), "dimension 1 is -3",
        what="input dims [1, -3, 8, 8]")
    add("overflow_dims.onnx", _shape_model([1, 2 ** 40, 2 ** 40, 2 ** 40]).SerializeToString(), "has 1.33e+36 elements, above the limit of 1 GiB",
        what="input dims whose product overflows int64")
    add("huge_input.onnx", _shape_model([1, 64, 8192, 8192]).SerializeToString(), "(16 GiB as float32), above the limit of 1 GiB",
        what="a 16 GiB input tensor, refused under the default 1 GiB limit")
    add("huge_pads.onnx", _with_node(base_model(), 2, pads=[2 ** 20] * 4).SerializeToString(), "output 'c' of shape [1, 4, 2097156, 2097156]",
        what="conv pads of 2**20: a 16 TiB output")
    add("arena_limit.onnx", good, "the arena needs",
        what="a valid model whose 832-byte arena exceeds --max-arena 700", args=["--max-arena", "700"])

    m = base_model()
    m.graph.node[3].op_type = "Tanh"
    add("unsupported_op.onnx", m.SerializeToString(), "op 'Tanh' is not supported; supported:",
        what="Tanh in place of the pool")
    m = base_model()
    m.graph.node[3].domain = "com.example.custom"
    m.opset_import.append(helper.make_opsetid("com.example.custom", 1))
    add("unsupported_domain.onnx", m.SerializeToString(), "domain 'com.example.custom' is not supported",
        what="the pool in a custom domain")
    add("conv_dilations.onnx", _with_node(base_model(), 2, dilations=[2, 2]).SerializeToString(),
        "only dilation 1", what="Conv dilations [2, 2]")
    m = _with_node(base_model(), 2, auto_pad="SAME_LOWER")
    [m.graph.node[2].attribute.remove(a) for a in list(m.graph.node[2].attribute) if a.name == "pads"]
    add("conv_auto_pad_same_lower.onnx", m.SerializeToString(), "auto_pad=SAME_LOWER is not supported",
        what="Conv auto_pad SAME_LOWER")
    add("conv_stride_0.onnx", _with_node(base_model(), 2, strides=[0, 0]).SerializeToString(), "strides [0, 0] are not supported; strides must be two integers >= 1",
        what="Conv strides [0, 0]")
    add("conv_group_3_of_4.onnx", _with_node(base_model(), 2, group=3).SerializeToString(), "group 3 does not divide the weight's 4 output channels",
        what="Conv group 3: does not divide 4 output channels")
    add("quant_rounding_mode.onnx", base_model(rounding="STOCHASTIC").SerializeToString(),
        "rounding_mode=STOCHASTIC is not supported", what="Quant rounding_mode STOCHASTIC")
    m = base_model()
    m.graph.node[0].attribute.append(helper.make_attribute("frobnicate", 1))
    add("quant_unknown_attribute.onnx", m.SerializeToString(), "attribute(s) ['frobnicate'] not supported; supported: ['narrow', 'rounding_mode', 'signed']",
        what="Quant with an attribute QONNX does not define")

    w = np.random.default_rng(0).uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    w_nan, w_inf = w.copy(), w.copy()
    w_nan[1, 2, 0, 1] = np.nan
    w_inf[3, 0, 2, 2] = -np.inf
    add("nan_weight.onnx", base_model(w=w_nan).SerializeToString(), "initializer 'W' (input 0) contains NaN", what="a NaN in the conv weight")
    add("inf_weight.onnx", base_model(w=w_inf).SerializeToString(), "initializer 'W' (input 0) contains Inf", what="-Inf in the conv weight")
    add("nan_scale.onnx", base_model(scale=np.nan).SerializeToString(), "initializer 'x_scale' (input 1) contains NaN", what="Quant scale NaN")
    add("inf_scale.onnx", base_model(wscale=np.inf).SerializeToString(), "initializer 'w_scale' (input 1) contains Inf", what="BipolarQuant scale Inf")
    thr = np.tile(np.array([[-2.0, 0.0, 2.0]], np.float32), (4, 1))
    t_nan, t_inf = thr.copy(), thr.copy()
    t_nan[2, 1] = np.nan
    t_inf[0, 2] = np.inf
    add("nan_threshold.onnx", base_model(thresholds=t_nan).SerializeToString(), "node 'threshold' (MultiThreshold): initializer 'thr' (input 1) contains NaN",
        what="a NaN MultiThreshold threshold")
    add("inf_threshold.onnx", base_model(thresholds=t_inf).SerializeToString(), "node 'threshold' (MultiThreshold): initializer 'thr' (input 1) contains Inf",
        what="an Inf MultiThreshold threshold")
    add("zero_scale.onnx", base_model(scale=0.0).SerializeToString(), "scale must be finite and > 0",
        what="Quant scale 0")
    add("huge_scale.onnx", base_model(scale=1e30).SerializeToString(), "scale 1e+30 is outside the supported range",
        what="Quant scale 1e30 (a mutant with such a scale compiled and disagreed with onnxruntime)")
    add("negative_scale.onnx", base_model(wscale=-0.5).SerializeToString(), "scale must be finite and > 0",
        what="BipolarQuant scale -0.5")
    add("bitwidth_0.onnx", base_model(bits=0.0).SerializeToString(), "bit width 0 is not supported; supported: 1..",
        what="Quant bit width 0")
    add("bitwidth_33.onnx", base_model(bits=33.0).SerializeToString(), "bit width 33 is not supported; supported: 1..",
        what="Quant bit width 33")
    add("bitwidth_fraction.onnx", base_model(bits=2.5).SerializeToString(), "must be one integer",
        what="Quant bit width 2.5")

    m = base_model()
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    add("int64_input.onnx", m.SerializeToString(), "only float32 inputs are supported", what="an int64 model input")

    m = base_model()
    t = m.graph.initializer[3]  # W's data in a file next to the model
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "432")):
        e = t.external_data.add()
        e.key, e.value = k, v
    add("external_data.onnx", m.SerializeToString(), "external data", what="a weight whose data points outside")

    m = base_model()
    m.opset_import[0].version = 6
    add("opset_too_old.onnx", m.SerializeToString(), "opset 6 is too old", what="opset 6")

    m = base_model()
    m.graph.node[4].output[0] = "c"  # flatten writes the conv's output again
    add("not_ssa.onnx", m.SerializeToString(), "single static assignment (SSA)", what="two nodes write one tensor")

    m = base_model()
    m.graph.initializer.append(_init("bias", np.zeros(5)))
    m.graph.node[2].input.append("bias")
    add("conv_bias_size.onnx", m.SerializeToString(), "bias of shape [5]; expected [4]",
        what="a 5-element bias for 4 output channels")
    m = base_model()
    for k in ("g", "b", "mu", "var"):
        m.graph.initializer.append(_init(k, np.ones(4 if k != "mu" else 3)))
    m.graph.node.insert(3, helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["bn"], name="bn"))
    m.graph.node[4].input[0] = "bn"
    add("batchnorm_param_size.onnx", m.SerializeToString(), "'mean' has shape [3] for an input of 4 channels",
        what="BatchNormalization mean with 3 values for 4 channels")
    t = _init("W", np.zeros((4, 3, 3, 3)))
    t.raw_data = t.raw_data[:10]
    m = base_model()
    m.graph.initializer[3].CopyFrom(t)
    add("initializer_short_data.onnx", m.SerializeToString(), "raw_data size (10 bytes) is too small",
        what="W declares 108 floats but holds 10 bytes")

    add("qdq_zero_scale.onnx", qdq_model(x_scale=0.0).SerializeToString(), "scale must be finite and > 0, got 0",
        what="QuantizeLinear scale 0")
    add("qdq_per_axis_mismatch.onnx", qdq_model(w_scale=np.full(3, 0.01)).SerializeToString(),
        "3 scales or zero points for axis 0 of a tensor of shape [4, 3, 3, 3]",
        what="DequantizeLinear with 3 per-axis scales for a weight of 4 output channels (a numpy error)")
    add("qdq_axis_out_of_range.onnx", qdq_model(w_axis=5).SerializeToString(), "for axis 5 of a tensor of shape [4, 3, 3, 3]",
        what="DequantizeLinear per-axis scales on axis 5 of a rank-4 weight")

    # found by mutating the base model: each was a crash, an internal error or a wrong answer
    add("fixed_batch_2.onnx", base_model(in_shape=(2, 3, 6, 6)).SerializeToString(), "fixed batch dimension of 2",
        what="input dims [2, 3, 6, 6]: the session wrote 2 samples into a 1-sample buffer (heap corruption)")
    add("flatten_merges_batch.onnx", _with_node(base_model(), 4, axis=3).SerializeToString(),
        "its first dimension is not the batch", commands=["check"],
        what="Flatten axis 3 gives [4, 1]: compiles (the C is consistent), but run() wrote past its buffer")
    m = _with_node(base_model(), 4, axis=0)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    add("flatten_axis_0_dynamic_batch.onnx", m.SerializeToString(), "Flatten axis 0 merges the (dynamic) batch",
        what="Flatten axis 0 with a dynamic batch: onnxruntime mixes the samples, qcc ran them one by one")
    add("flatten_axis_out_of_range.onnx", _with_node(base_model(), 4, axis=7).SerializeToString(),
        "axis 7 is out of range", what="Flatten axis 7 on a rank-4 tensor (was compiled)")
    add("multithreshold_rows.onnx", base_model(thresholds=np.zeros((3, 3))).SerializeToString(),
        "thresholds have 3 rows for an input of 4 channels", what="3 threshold rows for 4 channels (internal error)")
    m = base_model()
    _replace_init(m, "x_zero", 1e30)
    add("zero_point_huge.onnx", m.SerializeToString(), "zero point 1e+30 is outside the 4-bit range",
        what="Quant zero point 1e30 (OverflowError in fold_thresholds)")
    m = base_model()
    m.graph.node[4].input[0] = "Wq"
    add("output_is_constant.onnx", m.SerializeToString(), "computed from constants only",
        what="the output is Flatten(quantized weight) (internal error in lower)")
    m = base_model()
    m.graph.initializer.append(_init("lo", np.zeros(4)))
    m.graph.node.insert(3, helper.make_node("Clip", ["c", "lo"], ["cc"], name="clip"))
    m.graph.node[4].input[0] = "cc"
    add("clip_min_per_channel.onnx", m.SerializeToString(), "'min' must be one value",
        what="Clip with a 4-element min (TypeError)")

    m = base_model()
    m.graph.node.insert(3, helper.make_node("Transpose", ["c"], ["ct"], name="transpose", perm=[1, 0]))
    m.graph.node[4].input[0] = "ct"
    add("transpose_bad_perm.onnx", m.SerializeToString(), "perm [1, 0] is not a permutation of the 4 axes",
        what="Transpose perm [1, 0] on a rank-4 tensor (IndexError)")

    m = base_model()
    _replace_init(m, "x_scale", np.full((3, 1, 1, 1), 0.125))
    add("quant_scale_grows_input.onnx", m.SerializeToString(), "does not broadcast onto the input",
        what="Quant scale of shape [3, 1, 1, 1] on a [1, 3, 6, 6] input (grew the batch; internal error)")

    m = base_model()
    _replace_init(m, "x_scale", np.full(6, 0.125))
    add("quant_scale_per_column.onnx", m.SerializeToString(), "varies along axis 3",
        what="an activation Quant with one scale per column (axis 3): fold_thresholds crashed")

    # inputs given to `qcc check --inputs`, for a valid model: wrong shape, non-numeric, not an npz
    x = np.zeros((2, 1, 8, 9), np.float32)
    add("wrong_shape_inputs.npz", _npz(input=x), "has shape [2, 1, 8, 9]; expected ['batch', 1, 8, 8]",
        commands=["check"], what="inputs of shape [2, 1, 8, 9] for a [batch, 1, 8, 8] model",
        argv=["check", DIGITS, "--inputs", "{file}"])
    add("string_inputs.npz", _npz(input=np.array([["a", "b"]])), "cannot be converted to float32",
        commands=["check"], what="an array of strings as the input", argv=["check", DIGITS, "--inputs", "{file}"])
    add("empty_batch_inputs.npz", _npz(input=np.zeros((0, 1, 8, 8), np.float32)), "empty batch",
        commands=["check"], what="zero samples", argv=["check", DIGITS, "--inputs", "{file}"])
    add("not_an_npz.npz", b"PK\x03\x04 broken zip", "cannot read inputs", commands=["check"],
        what="a broken zip as --inputs", argv=["check", DIGITS, "--inputs", "{file}"])
    return c


def write(check: bool = False) -> int:
    bad = 0
    manifest = []
    for file, case in cases().items():
        path = HERE / file
        data = case.pop("data")
        if data == "dir":
            want = {"README": b"A directory named like a model: qcc must refuse it.\n"}
            if check:
                bad += not (path.is_dir() and all((path / k).read_bytes() == v for k, v in want.items()))
            else:
                path.mkdir(exist_ok=True)
                for k, v in want.items():
                    (path / k).write_bytes(v)
        elif data is None:
            bad += path.exists() if check else 0
        elif check:
            bad += not (path.is_file() and path.read_bytes() == data)
            if bad:
                print(f"differs: {file}", file=sys.stderr)
        else:
            path.write_bytes(data)
        manifest.append({"file": file, **case})
    text = json.dumps({"cases": manifest}, indent=1) + "\n"
    if check:
        bad += (HERE / "cases.json").read_text() != text
    else:
        (HERE / "cases.json").write_text(text)
    return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    sys.exit(write(ap.parse_args().check))
