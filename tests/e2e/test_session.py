"""InferenceSession.run's calling convention (onnxruntime's): output selection and order,
batches, input layouts, independent result arrays, and its error messages. The values are
checked against onnxruntime through the reference runner."""
import numpy as np
import onnx
import pytest

from qcc import InferenceSession, QccError
from qcc.frontend.reference import run_reference
from test_structure import residual_net


@pytest.fixture(scope="module")
def net():
    model = residual_net()
    return model, InferenceSession(model)


def _feeds(batch, seed=0):
    return {"x": np.random.default_rng(seed).uniform(-4, 4, (batch, 3, 9, 9)).astype(np.float32)}


def _same(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("batch", [1, 3])
def test_selected_outputs_in_the_requested_order(net, batch):
    model, sess = net
    names = [o.name for o in sess.get_outputs()]
    feeds = _feeds(batch)
    want = dict(zip(names, run_reference(model, feeds)))
    for pick in (None, names[::-1], [names[2]], [names[1], names[1]]):
        got = sess.run(pick, feeds)
        chosen = pick or names
        assert len(got) == len(chosen)
        for n, g in zip(chosen, got):
            assert g.shape == want[n].shape and g.dtype == np.float32 and g.flags.c_contiguous
            _same(g, want[n])


def test_results_are_independent_arrays(net):
    _, sess = net
    names = [o.name for o in sess.get_outputs()]
    a = sess.run([names[0], names[0], names[1]], _feeds(1))
    keep = [x.copy() for x in a]
    a[0][...] = 123.0
    np.testing.assert_array_equal(a[1], keep[1])  # the same output asked twice: two arrays
    np.testing.assert_array_equal(a[2], keep[2])
    b = sess.run(None, _feeds(1))  # a later call does not write into earlier results
    np.testing.assert_array_equal(a[1], keep[1])
    assert not any(np.shares_memory(x, y) for x in a[1:] for y in b)


def test_non_contiguous_and_batched_inputs_equal_sample_by_sample(net):
    _, sess = net
    x = _feeds(4, seed=1)["x"]
    strided = np.asfortranarray(x)
    assert not strided.flags.c_contiguous
    whole = sess.run(None, {"x": strided})
    for i in range(4):
        one = sess.run(None, {"x": x[i:i + 1]})
        for w, o in zip(whole, one):
            np.testing.assert_array_equal(w[i:i + 1], o)


@pytest.mark.parametrize("feeds, fragment", [
    ({}, "missing input 'x'"),
    ({"x": np.zeros((1, 3, 9, 9), np.float32), "y": np.zeros(1, np.float32)}, "unknown input(s) ['y']"),
    ({"x": np.zeros((1, 3, 9, 9))}, "dtype float64; expected float32"),
    ({"x": np.zeros((1, 3, 9, 8), np.float32)}, "has shape [1, 3, 9, 8]"),
    ({"x": np.zeros((3, 9, 9), np.float32)}, "has shape [3, 9, 9]"),
    ({"x": np.zeros((0, 3, 9, 9), np.float32)}, "empty batch"),
])
def test_bad_feeds_are_named(net, feeds, fragment):
    with pytest.raises(QccError) as e:
        net[1].run(None, feeds)
    assert fragment in str(e.value)


def test_unknown_output_is_named(net):
    with pytest.raises(QccError, match="unknown output 'nope'"):
        net[1].run(["nope"], _feeds(1))


def test_list_input_is_accepted_when_float32(net):
    model, sess = net
    x = _feeds(1)["x"]
    with pytest.raises(QccError, match="dtype float64"):
        sess.run(None, {"x": x.tolist()})  # a nested list is float64, as in onnxruntime
    got = sess.run(None, {"x": np.asarray(x.tolist(), np.float32)})
    for g, w in zip(got, run_reference(model, {"x": x})):
        _same(g, w)


def test_outputs_written_in_place_or_copied():
    """Computed outputs are written by their kernels straight into the output buffer (no arena,
    no copy), each at its offset; the same tensor as a second output, and an input passed
    through, are copied. All equal onnxruntime."""
    import builders
    from qcc.api import lower_model
    from qcc.codegen.render import render
    b = builders.Builder(9)
    y = b.node("Gemm", [b.bipolar("x"), b.binary_weight((12, 30))], transB=1)
    y = b.bipolar(b.batchnorm(y, 12), 0.5)
    z = b.node("Gemm", [b.bipolar("x"), b.binary_weight((7, 30))], transB=1)
    model = b.model({"x": [1, 30]}, {y: 2, z: 2, b.node("Identity", [y]): 2, b.node("Identity", ["x"]): 2})
    _, low = lower_model(model)
    root = [low.meta["arena_root"][o] for o in low.outputs]
    assert root[0] == root[2] != "x" and root[3] == "x"
    assert [low.meta["in_output"][r] for r in root[:2]] == [0, 12] and not set(root[:2]) & set(low.meta["arena"])
    c = render(low, "model").c
    assert c.count("memcpy(output + ") == 2, "only the repeated and the passed-through outputs are copied"
    feeds = {"x": np.random.default_rng(4).standard_normal((3, 30)).astype(np.float32)}
    for got, want in zip(InferenceSession(model).run(None, feeds), run_reference(model, feeds)):
        np.testing.assert_array_equal(got, want)


def test_one_input_one_output_batch_one_takes_the_short_path_and_agrees():
    """A batch-1, C-contiguous float32 feed of a one-input, one-output model skips the general
    checks and copies; it gives what onnxruntime gives, like every other way to feed it."""
    model = "examples/models/digits_w1a1.onnx"
    sess = InferenceSession(model)
    assert sess._single is not None
    name = sess.get_inputs()[0].name
    xs = np.load("examples/models/digits_inputs.npz")
    x = xs[xs.files[0]][:1].astype(np.float32)
    want = run_reference(onnx.load(model), {name: x})[0]
    readonly = x.copy()
    readonly.setflags(write=False)
    firsts = []
    for feed in (x, readonly, np.asfortranarray(x), x.astype(np.float64).astype(np.float32), list(x)):
        got = sess.run(None, {name: np.asarray(feed, np.float32) if isinstance(feed, list) else feed})
        assert len(got) == 1 and got[0].shape == want.shape and got[0].dtype == np.float32
        _same(got[0], want)
        firsts.append(got[0])
    assert not any(np.shares_memory(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:])
    np.testing.assert_array_equal(sess.run([sess.get_outputs()[0].name], {name: x})[0], firsts[0])
    with pytest.raises(QccError, match="dtype float64"):
        sess.run(None, {name: x.astype(np.float64)})
    with pytest.raises(QccError, match="shape"):
        sess.run(None, {name: x[:, :-1]})
