"""Pruned channels (seed 6): zero weights, BatchNorm gamma = 0 and 0/1 channel masks make
channels constant; they are removed for real, with outputs equal to the unpruned oracle."""
import numpy as np

import builders
from qcc import InferenceSession
from qcc.api import lower_model
from qcc.cli import main
from qcc.frontend.reference import run_reference
from test_planes import _act


def pruned_cnn(seed=0):
    """int8 CNN with 2-bit activations: >= 50 % of the channels of two layers are pruned."""
    b = builders.Builder(seed)
    x = b.quant("x", 2.0 ** -4, 8, signed=1)
    # layer 1: 32 channels, 16 pruned by gamma = 0 with beta <= 0 (ReLU -> level 0)
    w1 = b.int_weight((32, 3, 3, 3))
    y = b.conv(x, w1, (3, 3), (1, 1), (1, 1, 1, 1))
    gamma = np.where(np.arange(32) % 2 == 0, 0.0, 1.0)
    beta = np.where(np.arange(32) % 2 == 0, 0.0, 0.25)  # pruned: scale and shift both gone
    y = b.batchnorm(y, 32, gamma=gamma, beta=beta)
    x = b.quant(b.node("Relu", [y]), 2.0 ** -1, 2, signed=0)
    # layer 2: 48 channels of which 30 have all-zero weights, and a 0/1 mask on 6 more
    wv = b.rng.uniform(-1, 1, (48, 32, 3, 3)).astype(np.float32)
    wv[:30] = 0.0
    w2 = b.quant(b.const(wv, "w"), 2.0 ** -1, 2, signed=1, narrow=1)
    y = b.conv(x, w2, (3, 3), (1, 1), (1, 1, 1, 1))
    mask = np.ones((1, 48, 1, 1), np.float32)
    mask[0, 30:36] = 0.0
    y = b.node("Mul", [y, b.const(mask)])
    x = _act(b, y, 48, "u2", None, None)
    pooled = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    # layer 3: 1x1 binary-weight conv reading the pruned channels
    w3 = b.binary_weight((20, 48, 1, 1))
    y = b.conv(pooled, w3, (1, 1))
    x = b.bipolar(b.batchnorm(y, 20, gamma=np.where(np.arange(20) < 12, 0.0, 1.0)))  # constant +-1 channels
    w4 = b.binary_weight((10, 20, 1, 1))
    out = b.conv(x, w4, (1, 1))
    return b.model({"x": [1, 3, 8, 8]}, {out: 4})


def test_pruned_channels_removed_and_outputs_equal(tmp_path, capsys):
    model = pruned_cnn()
    _, low = lower_model(model)
    _, full = lower_model(model, skip=("remove_dead_channels",))
    removed = low.meta["dead_channels"]
    assert sorted(removed.values()) == [(20, 8), (32, 16), (48, 12)]
    co = [n.attrs.weight.shape[0] for n in low.nodes if n.op == "layer"]
    assert co == [16, 12, 8, 10]
    from qcc.codegen.inspect import total_macs
    assert total_macs(low) < 0.5 * total_macs(full)

    feeds = {"x": np.random.default_rng(3).uniform(-4, 4, (64, 3, 8, 8)).astype(np.float32)}
    got = InferenceSession(model).run(None, feeds)
    want = run_reference(model, feeds)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)  # the 1x1 +-1 output layer is integer and exact as well

    path = tmp_path / "pruned.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dead channels removed" in out and "32 -> 16" in out and "MACs without dead-channel removal" in out
