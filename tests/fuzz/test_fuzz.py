"""Differential fuzzing: random valid quantized graphs (QONNX and QDQ), compiled by qcc and
compared with onnxruntime on the oracle graph (quantized outputs bit for bit, float logits
within tolerance with the same argmax). See ``fuzzgen.py`` and ``runner.py``.

The default suite runs a bounded slice (``CHUNKS`` x ``PER_CHUNK`` seeds, chunked so pytest-xdist
balances); ``QCC_FUZZ_LONG=1`` adds a longer slice (marked ``slow``). ``python tests/fuzz/run.py --count 1000`` is the long
mode with shrinking."""
import collections
import os

import numpy as np
import pytest

from fuzz import fuzzgen, runner

CHUNKS, PER_CHUNK = 16, 10
SLOW_CHUNKS = 40


def _check_chunk(seeds, **kw):
    outcomes = [runner.run_isolated(fuzzgen.random_spec(s), **kw) for s in seeds]
    bad = [f"seed {o.spec['seed'] if o.spec else '?'}: {o.status}: {o.detail}" for o in outcomes
           if o.status in ("mismatch", "crash", "invalid")]
    assert not bad, "fuzz failures (reproduce: python tests/fuzz/run.py --seed S --count 1):\n" + "\n".join(bad)
    counts = collections.Counter(o.status for o in outcomes)
    # refusals are allowed (recorded with their reason) but must stay rare
    assert counts["ok"] >= len(seeds) // 2, f"too many refusals: {[o.detail for o in outcomes if o.status == 'refused']}"


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzz_slice(chunk):
    _check_chunk(range(chunk * PER_CHUNK, (chunk + 1) * PER_CHUNK))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QCC_FUZZ_LONG"), reason="longer fuzz slice: set QCC_FUZZ_LONG=1 "
                    "(or run tests/fuzz/run.py --count 1000)")
@pytest.mark.parametrize("chunk", range(CHUNKS, CHUNKS + SLOW_CHUNKS))
def test_fuzz_long(chunk):
    _check_chunk(range(chunk * PER_CHUNK, (chunk + 1) * PER_CHUNK))


def test_specs_are_reproducible_and_cover_the_space():
    """One seed, one graph; and the slice covers what the fuzzer claims to cover."""
    assert fuzzgen.spec_json(fuzzgen.random_spec(7)) == fuzzgen.spec_json(fuzzgen.random_spec(7))
    a, b = fuzzgen.build(fuzzgen.random_spec(7)), fuzzgen.build(fuzzgen.random_spec(7))
    assert a.model.SerializeToString() == b.model.SerializeToString()
    specs = [fuzzgen.random_spec(s) for s in range(CHUNKS * PER_CHUNK)]
    blocks = [b for s in specs for b in s["blocks"]]
    ops = collections.Counter(b["op"] for b in blocks)
    assert all(ops[k] > 0 for k in ("conv", "pool", "gpool", "res", "concat", "fc")), ops
    convs = [b for b in blocks if b["op"] == "conv"]
    assert {b["k"][0] for b in convs} >= {1, 3, 5, 7} and {b["stride"][0] for b in convs} >= {1, 2, 3}
    assert any(b["group"] > 1 and b["group"] == b["cout"] for b in convs)  # depthwise
    assert any(b["pads"][0] != b["pads"][2] or b["pads"][1] != b["pads"][3] for b in convs)  # asymmetric
    assert {s["form"] for s in specs} == {"qonnx", "qdq"}
    assert {b["w"] for b in blocks if "w" in b} >= set(fuzzgen.W_KINDS)
    assert {b["a"] for b in blocks if "a" in b} >= set(fuzzgen.A_KINDS)
    chans = {b.get("cout") for b in blocks} - {None}
    assert max(chans) > 128 and any(c % 64 for c in chans if c > 64)
    assert any(b.get("gamma0") for b in blocks) and any(b.get("prune") for b in blocks)
    assert max(max(s["input"][1:]) for s in specs if len(s["input"]) == 3) > 20
    assert any(s["in_bits"] == 1 and len(s["input"]) == 3 for s in specs)  # a bipolar NCHW input (fuse_layouts)


def test_ties_are_real():
    """Calibrated BatchNorm means and MultiThreshold thresholds put quantizer inputs exactly on
    thresholds: count the exact hits on the fed inputs for a few graphs."""
    from onnx import numpy_helper

    from qcc.frontend.reference import expose_all, run_reference
    hits = 0
    specs = [sp for sp in map(fuzzgen.random_spec, range(20)) if sp["form"] == "qonnx"]
    for spec in specs[:12]:
        case = fuzzgen.build(spec)
        full = expose_all(case.model)
        outs = dict(zip([o.name for o in full.graph.output], run_reference(full, case.feeds)))
        init = {i.name: numpy_helper.to_array(i) for i in case.model.graph.initializer}
        for n in case.model.graph.node:
            if n.input[0] not in outs:  # a quantized weight
                continue
            if n.op_type == "BipolarQuant":
                hits += int(np.sum(outs[n.input[0]] == 0))
            elif n.op_type == "MultiThreshold":
                v = np.moveaxis(outs[n.input[0]], 1, -1)[..., None]
                hits += int(np.sum(v == init[n.input[1]]))
            elif n.op_type == "Quant":
                r = outs[n.input[0]] / init[n.input[1]]
                hits += int(np.sum(r - np.floor(r) == 0.5))
    assert hits > 100


def test_comparison_catches_differences():
    """The comparison is not vacuous: a changed quantized value or a wrong argmax fails it."""
    w = [np.array([[1.0, -1.0], [1.0, 1.0]], np.float32), np.array([[0.0, 5.0], [2.0, 1.0]], np.float32)]
    assert runner.compare(["q", "y"], [w[0].copy(), w[1].copy()], w, ["q"], ["y"]) is None
    g = w[0].copy()
    g[1, 1] = -1.0
    assert "exact output q" in runner.compare(["q", "y"], [g, w[1]], w, ["q"], ["y"])
    y = w[1].copy()
    y[0] = [6.0, 5.0]
    assert runner.compare(["q", "y"], [w[0], y], w, ["q"], ["y"]) is not None
