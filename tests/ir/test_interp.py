"""The interpreter on imported graphs against onnxruntime on the oracle graph: exact on the
dyadic quantized graphs (every intermediate tensor), close on float graphs."""
import numpy as np

import builders
from qcc.frontend.onnx import import_model
from qcc.frontend.reference import expose_all, run_reference
from qcc.ir import interp
from test_float import float_cnn


def test_quantized_mlp_every_tensor_exact():
    model = builders.w1a1_mlp(2, 60, (65, 30))
    feeds = {"x": np.random.default_rng(0).uniform(-4, 4, (32, 60)).astype(np.float32)}
    full = expose_all(model)
    want = dict(zip([o.name for o in full.graph.output], run_reference(full, feeds)))
    env = interp.run(import_model(model), feeds, keep_all=True)
    shared = [k for k in want if k in env]
    assert len(shared) >= 10
    for k in shared:
        assert np.array_equal(np.asarray(env[k], np.float32), want[k]), k


def test_float_graph_close():
    model = float_cnn(1, 1)
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 3, 13, 11)).astype(np.float32)}
    got = interp.run(import_model(model), feeds)
    for g, w in zip(got.values(), run_reference(model, feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
