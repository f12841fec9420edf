"""``qcc bench`` and the float / QDQ twins it compares against (no timing assertions)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import onnx
import onnxruntime as ort

from qcc.cli import main
from qcc.frontend.reference import QONNX_DOMAINS, run_reference
from qcc.frontend.twins import float_twin, qdq_twin

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "digits_w1a1.onnx"
INPUTS = ROOT / "examples" / "models" / "digits_inputs.npz"


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_bench_digits_json_and_layers(tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["bench", str(MODEL), "--runs", "5", "--warmup", "1", "--json", str(out), "--layers", "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "ORT fp32 / qcc" in stdout and "per layer" in stdout
    result = json.loads(out.read_text())
    engines = result["engines"]
    assert set(engines) == {"qcc", "ort_fp32", "ort_int8"}
    for name in ("qcc", "ort_fp32"):
        assert engines[name]["available"] and engines[name]["runs"] == 5
        assert engines[name]["p10_us"] <= engines[name]["median_us"] <= engines[name]["p90_us"]
    assert engines["ort_int8"]["available"] or engines["ort_int8"]["reason"]
    assert result["ratios"]["ort_fp32/qcc"] > 0
    assert set(result["ratios"]) == {"ort_fp32/qcc", "ort_int8/qcc"}
    assert result["machine"]["qcc_isa"] and result["machine"]["onnxruntime"] == ort.__version__
    assert 0 < result["weights"]["qcc_compiled_bytes"] < result["weights"]["fp32_twin_bytes"]
    names = {n.name for n in onnx.load(MODEL).graph.node}
    layers = result["layers"]
    assert layers and all(L["name"] in names for L in layers)
    assert {"/features/features.4/Conv", "/classifier/classifier.4/Gemm"} <= {L["name"] for L in layers}
    assert abs(sum(L["share"] for L in layers) - 1.0) < 1e-6
    assert all(L["us"] >= 0 for L in layers)


def test_bench_layers_name_the_variant_each_call_runs():
    """The per-layer rows name the kernel variant render chose for each call, by its rules: the
    1-channel first conv of digits_w2a2 runs k-major on scalar and avx2 (too few channels for the
    AVX2 dot-product conv) and by VNNI dot products on avx512; its int8 classifier by dot products
    wherever x86 has them, the direct int16 conv on scalar; its 2-bit layers on the plane GEMMs."""
    from qcc.bench import _layers
    from qcc.codegen.build import host_isa
    from qcc.codegen.kernels import RUNS

    model = ROOT / "examples" / "models" / "digits_w2a2.onnx"
    feeds = {"input": np.load(INPUTS)["x"][:1]}
    want = {"scalar": ("ikconv scalar", "iconv scalar", "pgemm scalar"), "avx2": ("ikconv avx2", "dconv avx2", "pgemm avx2"),
            "avx512": ("dconv avx512", "dconv avx512", "pgemm avx512")}
    for isa in [i for i in ("scalar", "avx2", "avx512") if i in RUNS[host_isa()]]:
        rows = {L["name"]: L for L in _layers(model, isa, feeds, runs=1, warmup=0)}
        first, last, plane = want[isa]
        assert rows["/features/features.1/Conv"]["variant"] == first
        assert rows["/classifier/classifier.4/Gemm"]["variant"] == last
        assert rows["/features/features.4/Conv"]["variant"] == plane
        assert rows["/features/features.4/Conv"]["kernel"] == f"layer/planes ({plane})"
        assert all(L["variant"].split(" ")[1] in RUNS[isa] for L in rows.values() if L["variant"])


def test_bench_given_inputs_no_int8(capsys):
    code = main(["bench", str(MODEL), "--runs", "3", "--warmup", "0", "--inputs", str(INPUTS), "--no-int8", "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "first sample of digits_inputs.npz" in stdout and "unavailable" in stdout


def test_float_twin_of_digits_runs_without_qonnx_ops():
    model = onnx.load(MODEL)
    twin = float_twin(model)
    onnx.checker.check_model(twin)
    assert not [n for n in twin.graph.node if n.domain in QONNX_DOMAINS or n.domain not in ("", "ai.onnx")]
    assert [o.domain for o in twin.opset_import] == [""] and twin.ir_version <= 10
    assert len(twin.graph.node) < len(model.graph.node)
    assert not {i.name for i in twin.graph.input} & {t.name for t in twin.graph.initializer}
    x = np.load(INPUTS)["x"][:20]
    got = _session(twin).run(None, {"input": x})[0]
    want = run_reference(model, {"input": x})[0]
    assert got.shape == want.shape == (20, 10) and np.all(np.isfinite(got))


def test_float_twin_weights_are_dequantized():
    twin = float_twin(onnx.load(MODEL))
    inits = {tuple(t.dims): onnx.numpy_helper.to_array(t) for t in twin.graph.initializer}
    binary = inits[(32, 16, 3, 3)]  # BipolarQuant weights with scale 1: exactly +-1
    assert set(np.unique(binary)) == {-1.0, 1.0}


def test_float_twin_of_qdq_and_qoperator_models(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from test_int8 import float_cnn

    rng = np.random.default_rng(0)
    src = tmp_path / "float.onnx"
    onnx.save(float_cnn(rng), src)
    calib = [{"x": rng.standard_normal((1, 3, 8, 7)).astype(np.float32)} for _ in range(8)]
    x = {"x": rng.standard_normal((10, 3, 8, 7)).astype(np.float32)}
    want = _session(onnx.load(src)).run(None, x)[0]
    for fmt in ("QDQ", "QOperator"):
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calib)

            def get_next(self):
                return next(self.it, None)

        dst = tmp_path / f"{fmt}.onnx"
        quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt),
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        twin = float_twin(str(dst))
        ops = [n.op_type for n in twin.graph.node]
        assert ops == ["Conv", "Relu", "Conv", "Relu", "MaxPool", "Flatten", "MatMul"], ops
        got = _session(twin).run(None, x)[0]  # the float network again, up to weight rounding
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_qdq_twin_has_qdq_nodes_and_runs():
    twin = float_twin(onnx.load(MODEL))
    q = qdq_twin(twin, samples=4)
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    out = _session(q).run(None, {"input": np.load(INPUTS)["x"][:1]})[0]
    assert out.shape == (1, 10)


def test_bench_bad_model_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model\n" * 10)
    code = main(["bench", str(bad), "--runs", "1", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("qcc: error: ") and "Traceback" not in err


def test_bench_png_without_matplotlib_is_one_line(tmp_path, capsys):
    if importlib.util.find_spec("matplotlib") is None:
        code = main(["bench", str(MODEL), "--png", str(tmp_path / "c.png"), "--quiet"])
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and "matplotlib" in err
    else:
        code = main(["bench", str(MODEL), "--runs", "2", "--warmup", "0", "--no-int8", "--layers",
                     "--png", str(tmp_path / "c.png"), "--quiet"])
        assert code == 0 and (tmp_path / "c.png").stat().st_size > 0


def test_popcount_ceiling_of_each_isa_this_cpu_runs():
    """qcc bench's ceiling compiles and runs the ISA's own GEMM tile (avx2: the table tile,
    avx512: the vpopcntq tile), on every x86 ISA this CPU runs, its counts checked against numpy
    (popcount_ceiling raises otherwise); portable ISAs have none."""
    from qcc.bench import CEILING_TILES, popcount_ceiling
    from qcc.codegen.build import host_isa
    from qcc.codegen.kernels import RUNS

    assert popcount_ceiling("scalar") is None and popcount_ceiling("neon") is None
    for isa in CEILING_TILES.keys() & set(RUNS[host_isa()]):
        rate = popcount_ceiling(isa, seconds=0.05)
        assert rate > 1e9 and popcount_ceiling(isa) == rate  # bit-MACs per second, measured once


def test_popcount_ceiling_refuses_a_tile_that_miscounts(monkeypatch):
    """The ceiling's count check can fail: told to expect one count less, it raises rather than
    time a tile whose counts are wrong."""
    import dataclasses

    import qcc.bench as bench
    from qcc.codegen.build import host_isa
    from qcc.codegen.kernels import RUNS

    isa = next((i for i in RUNS[host_isa()] if i in bench.CEILING_TILES), None)
    if isa is None:
        pytest.skip("this CPU runs no SIMD popcount tile")
    tile = bench.CEILING_TILES[isa]
    monkeypatch.setitem(bench.CEILING_TILES, isa, dataclasses.replace(tile, expect=lambda r, w: tile.expect(r, w) - 1))
    monkeypatch.setattr(bench, "_ceiling_cache", {})
    with pytest.raises(RuntimeError, match="miscounts"):
        bench.popcount_ceiling(isa, seconds=0.01)


def test_bench_weights_are_the_benchmarked_bundles():
    """qcc bench's weight bytes are those of the bundle it times, in its ISA's layout: what
    ``qcc inspect --size`` measures for that target (on avx512, unpadded bit rows in blocks of
    8 channels and int8 layers as bytes, so fewer bytes than the scalar bundle for digits)."""
    from qcc.api import lower_model
    from qcc.bench import run_bench
    from qcc.codegen.size import target_size
    from qcc.codegen.targets import TARGETS
    _, low = lower_model(str(MODEL))
    got = {}
    for target in ("scalar", "native"):
        result = run_bench(str(MODEL), target=target, runs=2, warmup=0, rounds=1, int8=False)
        got[target] = result["weights"]["qcc_compiled_bytes"], result["machine"]["qcc_isa"]
        assert got[target][0] == target_size(low, TARGETS[target]).weight_bytes, target
    if got["native"][1] == "avx512":
        assert got["native"][0] < got["scalar"][0], got
