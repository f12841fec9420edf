"""Every graph the fuzzer once got wrong, shrunk and saved in ``regressions/`` (``<name>.onnx``
plus ``<name>.json``: the spec, the compared outputs, what went wrong and where it was fixed),
compiled and compared with onnxruntime on the oracle graph. The inputs are regenerated from
the saved spec (``fuzzgen.feeds_for``), so the saved model is what is tested, not a rebuild."""
import json
from pathlib import Path

import onnx
import pytest

from fuzz import fuzzgen, runner

DIR = Path(__file__).resolve().parent / "regressions"
FILES = sorted(DIR.glob("*.onnx"))


def test_there_are_regressions():
    assert FILES, f"no regression files in {DIR}"
    for f in FILES:
        assert f.with_suffix(".json").exists(), f"{f.name} has no .json description"
        assert f.stat().st_size < 200_000, f"{f.name} is not a minimal graph"


@pytest.mark.parametrize("target", ["native", "scalar"])
@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_regression(path, target):
    meta = json.loads(path.with_suffix(".json").read_text())
    model = onnx.load(path)
    case = fuzzgen.Case(meta["spec"], model, fuzzgen.feeds_for(meta["spec"], meta["samples"]),
                        meta["exact"], meta["approx"])
    assert case.exact or case.approx
    out = runner.isolated(runner.check_case, case, target=target)
    assert out.status == "ok", f"{path.name}: {out.status}: {out.detail}"
