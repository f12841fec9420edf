"""End to end: QONNX w1a1 graphs and the committed Brevitas model, compiled to C, run
through InferenceSession, against onnxruntime on the oracle graph.

Bit activations must match exactly (each test model exposes its last binary activation as
an output); logits within 1e-4 relative, with identical argmax on every input."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from qcc import InferenceSession
from qcc.codegen.render import RUNTIME_DIR
from qcc.frontend.reference import expose_all, run_reference

ROOT = Path(__file__).resolve().parents[2]
N = 128


def _bn_inputs(model, feeds):
    """Pre-BatchNorm tensors of the model on feeds, from onnxruntime."""
    names = [n.input[0] for n in model.graph.node if n.op_type == "BatchNormalization"]
    full = expose_all(model)
    outs = run_reference(full, feeds)
    by_name = dict(zip([o.name for o in full.graph.output], outs))
    return [by_name[n] for n in names]


def _tie_means(model, feeds):
    """Per channel, a value the pre-BN tensor really takes, so BN outputs exactly 0 there."""
    means = []
    for v in _bn_inputs(model, feeds):
        v = np.moveaxis(v, 1, -1).reshape(-1, v.shape[1])
        means.append(np.sort(v, axis=0)[len(v) // 2])
    return means


def assert_freestanding_c(session, tmp_dir):
    """The generated C compiles warning-free as freestanding C99."""
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")
    (tmp_dir / "model.c").write_text(session.sources.c)
    (tmp_dir / "model.h").write_text(session.sources.h)
    shutil.copy(RUNTIME_DIR / "qcc_rt.h", tmp_dir / "qcc_rt.h")
    subprocess.run(["gcc", "-std=c99", "-ffreestanding", "-Wall", "-Wextra", "-Werror", "-c", "model.c"],
                   cwd=tmp_dir, check=True)


def _compare(model, feeds, tmp_dir, bits=True):
    """First output: quantized activations, exact; second: logits, 1e-4 relative, same argmax."""
    session = InferenceSession(model)
    assert_freestanding_c(session, tmp_dir)
    got = session.run(None, feeds)
    want = run_reference(model, feeds)
    bits_got, logits_got = got
    bits_want, logits_want = [np.asarray(w).reshape(g.shape) for w, g in zip(want, got)]
    assert np.array_equal(bits_got, bits_want), f"{np.sum(bits_got != bits_want)} quantized activations differ"
    assert len(np.unique(bits_got)) > 1
    if bits:
        assert set(np.unique(bits_got)) <= {-1.0, 1.0}
    tol = 1e-4 * max(1.0, float(np.abs(logits_want).max()))
    assert np.abs(logits_got - logits_want).max() <= tol
    assert np.array_equal(logits_got.argmax(1), logits_want.argmax(1))
    return session


@pytest.mark.parametrize("seed,k,hidden", [(0, 100, (65, 130)), (1, 64, (64, 63)), (2, 3, (128, 1)), (3, 300, (100,))])
def test_mlp_with_ties(seed, k, hidden, tmp_path):
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.uniform(-4, 4, (N, k)).astype(np.float32)}
    means = _tie_means(builders.w1a1_mlp(seed, k, hidden), feeds)
    model = builders.w1a1_mlp(seed, k, hidden, means=means)
    ties = sum(int(np.sum(v == m)) for v, m in zip(_bn_inputs(model, feeds), means))
    assert ties > 0, "the test must exercise exact ties"
    _compare(model, feeds, tmp_path)


def test_mlp_negative_and_zero_gamma(tmp_path):
    rng = np.random.default_rng(7)
    hidden = (70, 40)
    gammas = [np.where(np.arange(h) % 3 == 0, -1.0, np.where(np.arange(h) % 3 == 1, 0.0, 0.5)) for h in hidden]
    model = builders.w1a1_mlp(7, 50, hidden, gamma=gammas)
    _compare(model, {"x": rng.uniform(-4, 4, (N, 50)).astype(np.float32)}, tmp_path)


def test_one_bit_signed_quant_input_is_bipolar(tmp_path):
    """QONNX Quant(bitwidth=1, signed=1) is sign(x / scale + zero), not a clamp to {-1, 0}."""
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (N, 40)).astype(np.float32)
    x[:, :5] = 0.0  # x / scale == 0 -> +1
    _compare(builders.w1a1_mlp(9, 40, (33,), input_bits=1), {"x": x}, tmp_path)


CNN_CASES = {
    "3x3-s1s2-asym": dict(c_in=3, hw=(9, 9), chans=(16, 65), strides=(1, 2), pads=((1, 1, 1, 1), (0, 1, 2, 1))),
    "1x1-and-5x5": dict(c_in=1, hw=(8, 8), chans=(64, 100), strides=(1, 1), pads=((0, 0, 0, 0), (2, 2, 2, 2)),
                        kernels=((1, 1), (5, 5))),
    "7x7-s2": dict(c_in=3, hw=(16, 16), chans=(63, 128), strides=(2, 1), pads=((3, 3, 3, 3), (1, 1, 1, 1)),
                   kernels=((7, 7), (3, 3))),
}


@pytest.mark.parametrize("case", list(CNN_CASES))
def test_cnn_with_ties(case, tmp_path):
    kw = CNN_CASES[case]
    rng = np.random.default_rng(11)
    feeds = {"x": rng.uniform(-4, 4, (N, kw["c_in"]) + kw["hw"]).astype(np.float32)}

    def build(means=None):
        b, flat, pooled = builders.w1a1_cnn(seed=5, means=None if means is None else means[:2], **kw)
        m0 = b.model({"x": [1, kw["c_in"], *kw["hw"]]}, {pooled: 4})
        numel = int(np.prod(run_reference(m0, {"x": feeds["x"][:1]})[0].shape[1:]))
        bits, logits = builders.finish_cnn(b, flat, numel, mean=None if means is None else means[2])
        return b.model({"x": [1, kw["c_in"], *kw["hw"]]}, {bits: 2, logits: 2})

    means = _tie_means(build(), feeds)
    model = build(means)
    ties = sum(int(np.sum(v == np.asarray(m).reshape((1, -1) + (1,) * (v.ndim - 2))))
               for v, m in zip(_bn_inputs(model, feeds), means))
    assert ties > 0
    _compare(model, feeds, tmp_path)


@pytest.mark.parametrize("bits", ["w1a1", "w1a2", "w2a2"])
def test_brevitas_digits_model(tmp_path, bits):
    """The committed Brevitas exports (examples/train_digits.py): w1a1, w1a2 (2-bit unsigned
    activations, learned scales), w2a2 (2-bit signed weights, per-channel scales)."""
    path = ROOT / "examples" / "models" / f"digits_{bits}.onnx"
    data = np.load(ROOT / "examples" / "models" / "digits_inputs.npz")
    feeds = {"input": data["x"]}
    session = InferenceSession(str(path))
    assert_freestanding_c(session, tmp_path)
    assert [a.name for a in session.get_inputs()] == ["input"]
    assert [a.name for a in session.get_outputs()] == ["logits"]
    got = session.run(None, feeds)[0]
    want = run_reference(onnx.load(path), feeds)[0]
    assert len(got) >= 100
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert np.mean(got.argmax(1) == data["y"]) > 0.85  # the trained model really classifies
