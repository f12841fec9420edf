"""The neon target end to end: every example model and a set of the end-to-end tests' networks
compiled for aarch64 (NEON kernels where a family has them, the scalar C elsewhere), cross-built
with the harness (qcc.codegen.program.build_program) and run under qemu-aarch64, against the
x86 host's InferenceSession on the same inputs.

Every quantized activation of a model is made a model output (the outputs of its activation
quantizers: Quant, BipolarQuant, MultiThreshold, Sign, DequantizeLinear), so integer layers are
compared where they are computed, not only through the logits. Outputs are compared:

* with the host's native build (AVX2 here), bit for bit wherever the output is levels or comes
  from an integer accumulator; float outputs of float layers within the host's tolerance
  (1e-4 relative, as the float end-to-end tests), with the same argmax;
* where a model has such float outputs, also with the host's scalar build, bit for bit, every
  output (the same C semantics on both: IEEE single precision, no contraction, no libm).

A slice of fuzz graphs (tests/fuzz, when present) runs on neon through the fuzzer's own check
against onnxruntime, and its exact outputs must equal the host's native build bit for bit.

Skipped, with the reason, only where aarch64-linux-gnu-gcc or qemu-aarch64 is absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import builders
from qcc import InferenceSession
from qcc.api import lower_model
from qcc.codegen.program import build_program, run_program
from qcc.codegen.render import render
from qcc.codegen.targets import TARGETS
from qcc.frontend.reference import run_reference

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"
EXAMPLES = ("digits_w1a1", "digits_w1a2", "digits_w2a2")
NEON = TARGETS["neon"]
QUANTIZERS = {"Quant", "IntQuant", "BipolarQuant", "MultiThreshold", "Sign", "DequantizeLinear"}
N = 32  # samples per model, one program run

pytestmark = pytest.mark.skipif(bool(NEON.missing()), reason=f"the neon target needs {', '.join(NEON.missing())} "
                                                              "(CI installs gcc-aarch64-linux-gnu and qemu-user)")


def expose_activations(model: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs also list the output of every activation quantizer (one
    whose data input is computed, not a weight), shaped as onnxruntime computes it."""
    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                         for o in n.output}
    listed = {o.name for o in model.graph.output}
    names = list(dict.fromkeys(n.output[0] for n in model.graph.node if n.op_type in QUANTIZERS
                               and n.input[0] not in consts and n.output[0] not in listed))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names)
    shapes = [v.shape for v in run_reference(probe, {model.graph.input[0].name: x[:1]})[len(listed):]]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", *s[1:]]) for t, s in zip(names, shapes))
    return out


def _cnn_w1a1(kw):
    b, flat, pooled = builders.w1a1_cnn(seed=5, **kw)
    shape = [1, kw["c_in"], *kw["hw"]]
    numel = int(np.prod(run_reference(b.model({"x": shape}, {pooled: 4}), {"x": np.zeros(shape, np.float32)})[0].shape[1:]))
    bits, logits = builders.finish_cnn(b, flat, numel)
    return b.model({"x": shape}, {bits: 2, logits: 2})


def _cnn_planes(layers):
    import test_planes

    b, flat, pooled = test_planes.cnn(layers)
    numel = int(np.prod(run_reference(b.model({"x": [1, 3, 8, 8]}, {pooled: 4}),
                                      {"x": np.zeros((1, 3, 8, 8), np.float32)})[0].shape[1:]))
    logits = b.node("Gemm", [flat, b.int_weight((5, numel)), b.const(np.zeros(5))], transB=1)
    return b.model({"x": [1, 3, 8, 8]}, {pooled: 4, logits: 2})


def _models() -> dict:
    """name -> (model factory, input factory); the e2e networks cover every NEON kernel family."""
    import test_float
    import test_int8
    import test_planes
    import test_structure
    import test_w1a1

    def uniform(shape, lo=-4.0, hi=4.0, seed=0):
        return lambda: np.random.default_rng(seed).uniform(lo, hi, (N, *shape)).astype(np.float32)

    digits = lambda: np.load(MODELS / "digits_inputs.npz")["x"][:N].astype(np.float32)  # noqa: E731
    m = {e: ((lambda e=e: onnx.load(MODELS / f"{e}.onnx")), digits, True) for e in EXAMPLES}
    m["digits_w1a1-as-shipped"] = ((lambda: onnx.load(MODELS / "digits_w1a1.onnx")), digits, False)  # logits only
    m["w1a1-mlp"] = (builders.w1a1_mlp, uniform([100]), True)
    for case in ("7x7-s2", "1x1-and-5x5"):
        kw = test_w1a1.CNN_CASES[case]
        m[f"w1a1-cnn-{case}"] = ((lambda kw=kw: _cnn_w1a1(kw)), uniform([kw["c_in"], *kw["hw"]]), True)
    for case in ("mixed-per-layer", "mul2q-k3", "qnet-multithreshold", "ternary-x-pm1", "w2a2-signed"):
        layers = test_planes.MLP_CASES[case]
        m[f"mlp-{case}"] = ((lambda layers=layers: test_planes.mlp(layers)), uniform([48]), True)
    for case in ("w1a2-hwgq", "w2a2-ternary", "qnet-multithreshold"):
        layers = test_planes.CNN_CASES[case]
        m[f"cnn-{case}"] = ((lambda layers=layers: _cnn_planes(layers)), uniform([3, 8, 8]), True)
    m["residual-concat-depthwise"] = (test_structure.residual_net, uniform([3, 9, 9]), True)
    m["horq-2"] = ((lambda: test_structure.horq(2)), uniform([8, 6, 6], seed=1), True)
    m["float-cnn"] = ((lambda: test_float.float_cnn(1, 1)), uniform([3, 13, 11], -2, 2), True)
    m["quantized-values-trunc"] = ((lambda: test_float.quantized_values_net(True)),
                                   lambda: (np.random.default_rng(2).integers(-16, 48, (N, 4, 8, 8)) * 2.0 ** -4)
                                   .astype(np.float32), True)
    m["qdq-int4"] = ((lambda: test_int8.narrow_qdq("INT4")),
                     lambda: (np.random.default_rng(5).integers(-24, 24, (N, 4, 5, 5)) * 0.125).astype(np.float32), True)
    return m


MODEL_CASES = _models()


def _integer_outputs(low) -> list[bool]:
    """Per output of the lowered graph: whether it is levels or an integer accumulator's affine
    (any correct kernel gives the same bits), rather than a float layer's or float op's result."""
    producer = {o: n for n in low.nodes for o in n.outputs}
    flags = []
    for out in low.outputs:
        n = producer.get(out)
        while n is not None and n.op in ("reshape", "transpose"):
            n = producer.get(n.inputs[0])
        flags.append(n is not None and (n.op in ("unpack", "quantize")
                                        or (n.op == "layer" and n.attrs.w_spec is not None)))
    return flags


def _host(model, x, target: str) -> tuple[list[np.ndarray], str]:
    sess = InferenceSession(model, target=target)
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    return [o.reshape(len(x), -1) for o in outs], sess.isa


@pytest.mark.parametrize("key", list(MODEL_CASES))
def test_neon_matches_host(key, tmp_path):
    make_model, make_x, expose = MODEL_CASES[key]
    x = make_x()
    model = make_model()
    if expose:
        model = expose_activations(model, x)
    _, low = lower_model(model)
    src = render(low, "model", key, isa="neon")
    used = [k for k in src.c.split("*/", 1)[0].split("Kernels (neon): ", 1)[1].split(", ") if k.endswith("__neon")]
    assert used, f"{key}: no NEON kernel in the program"
    exe = build_program(src, "model", NEON, tmp_path, extra_cflags=("-Werror",))  # -Wall -Wextra: no warning
    sizes = [low.tensors[o].size for o in low.outputs]
    y = run_program(exe, NEON, x, sum(sizes), timeout=300)
    got = np.split(y, np.cumsum(sizes)[:-1], axis=1)
    native, isa = _host(model, x, "native")
    exact = _integer_outputs(low)
    names = list(low.meta.get("output_names", {})) or list(low.outputs)
    assert len(got) == len(native) == len(exact) == len(names)
    for name, g, n, e in zip(names, got, native, exact):
        if e:
            assert g.tobytes() == n.tobytes(), \
                f"{key} '{name}': aarch64 != x86 {isa} in {np.sum(g.view(np.uint32) != n.view(np.uint32))} values"
        else:
            np.testing.assert_allclose(g, n, rtol=1e-4, atol=1e-5, err_msg=f"{key} '{name}' vs x86 {isa}")
    if not all(exact):  # float outputs: the same C on x86 gives the same bits
        scalar, _ = _host(model, x, "scalar")
        for name, g, s in zip(names, got, scalar):
            assert g.tobytes() == s.tobytes(), \
                f"{key} '{name}': aarch64 != x86 scalar in {np.sum(g.view(np.uint32) != s.view(np.uint32))} values"
    # the logits (the first output) classify alike
    assert np.array_equal(got[0].argmax(axis=1), native[0].argmax(axis=1))


# ---- a slice of fuzz graphs (tests/fuzz), when the fuzzer is present -----------------------------

FUZZ_SEEDS, FUZZ_CHUNKS = 7000, 2
FUZZ_PER_CHUNK = 3


def _neon_runner(case, target_name):
    """A ``runner`` for the fuzzer's ``run_case``: the graph built for neon and run under qemu; its
    outputs must also equal the x86 host's native build's bit for bit on the fuzzer's exact outputs."""
    import tempfile

    _, low = lower_model(case.model)
    src = render(low, "model", isa="neon")
    names = list(low.meta.get("output_names", {})) or list(low.outputs)
    shapes = [low.tensors[o].shape[1:] for o in low.outputs]
    sizes = [int(np.prod(s)) for s in shapes]
    x = case.feeds["x"]
    with tempfile.TemporaryDirectory(prefix="qcc-neon-fuzz-") as work:
        exe = build_program(src, "model", NEON, Path(work))
        y = run_program(exe, NEON, x.reshape(len(x), -1), sum(sizes), timeout=300)
    got = dict(zip(names, (v.reshape((len(x), *s)) for v, s in zip(np.split(y, np.cumsum(sizes)[:-1], axis=1), shapes))))
    sess = InferenceSession(case.model)
    host = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, case.feeds)))
    for name in case.exact:
        assert got[name].tobytes() == host[name].tobytes(), f"exact output {name}: aarch64 != x86 {sess.isa}"
    return [got[o.name] for o in case.model.graph.output]


@pytest.mark.parametrize("chunk", range(FUZZ_CHUNKS))
def test_neon_fuzz_slice(chunk):
    """Fuzz graphs on neon against onnxruntime exactly as the fuzzer checks the host (quantized
    outputs bit for bit, float outputs within its tolerance) and against the host's native build."""
    fuzzgen = pytest.importorskip("fuzz.fuzzgen", reason="the fuzzer (tests/fuzz) is not present")
    runner = pytest.importorskip("fuzz.runner", reason="the fuzzer (tests/fuzz) is not present")
    seeds = range(FUZZ_SEEDS + chunk * FUZZ_PER_CHUNK, FUZZ_SEEDS + (chunk + 1) * FUZZ_PER_CHUNK)
    outcomes = [runner.run_case(fuzzgen.random_spec(s), target="neon", runner=_neon_runner) for s in seeds]
    bad = [f"seed {s}: {o.status}: {o.detail}" for s, o in zip(seeds, outcomes) if o.status in ("mismatch", "crash", "invalid")]
    assert not bad, "\n".join(bad)
    assert sum(o.status == "ok" for o in outcomes) >= len(outcomes) // 2, [o.detail for o in outcomes]
