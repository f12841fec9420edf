"""The cffi build cache: two processes building the same model into one empty cache at once
both succeed, load the same module and compute the same outputs; a build that loses the race
uses the winner's entry."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "digits_w1a1.onnx"
INPUTS = ROOT / "examples" / "models" / "digits_inputs.npz"

WORKER = """
import os, sys, time
from pathlib import Path
import numpy as np
go, model, inputs, out = sys.argv[1:]
from qcc import InferenceSession
while not os.path.exists(go):  # start together
    time.sleep(0.001)
s = InferenceSession(model)
np.save(out, s.run(None, {"input": np.load(inputs)["x"][:50]})[0])
print("ok")
"""


def test_two_processes_build_one_model_into_an_empty_cache(tmp_path):
    cache = tmp_path / "cache"
    go = tmp_path / "go"
    env = dict(os.environ, QCC_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(go), str(MODEL), str(INPUTS), str(tmp_path / f"y{i}.npy")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    time.sleep(3)  # both have imported qcc and wait
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and out.strip() == "ok", err
        assert err == ""  # the compiler's output stays in the cache entry's log
    y0, y1 = np.load(tmp_path / "y0.npy"), np.load(tmp_path / "y1.npy")
    assert np.array_equal(y0, y1)
    from qcc import InferenceSession

    want = InferenceSession(str(MODEL)).run(None, {"input": np.load(INPUTS)["x"][:50]})[0]
    assert np.array_equal(y0, want)
    entries = sorted(os.listdir(cache))
    assert len(entries) == 1 and not entries[0].startswith(".")  # one entry, no temporary build left
    assert len(list((cache / entries[0]).glob("_qcc_model_*.so"))) == 1


def test_a_build_that_loses_the_race_uses_the_winner(tmp_path, monkeypatch):
    """_compile into an entry another process has just finished: the rename fails, the private
    build is removed, and the existing module is returned."""
    from qcc.api import lower_model
    from qcc.codegen import build
    from qcc.codegen.render import render

    monkeypatch.setenv("QCC_CACHE_DIR", str(tmp_path))
    src = render(lower_model(str(MODEL))[1], "model", "digits", isa="scalar")
    ffi, lib = build.build(src, "model")
    (entry,) = [p for p in tmp_path.iterdir()]
    so = next(entry.glob("_qcc_model_*.so"))
    stamp = so.stat().st_mtime_ns
    again = build._compile(src, "model", so.name.split(".")[0], build.CFLAGS, entry, False)
    assert again == so and so.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


def test_compiler_output_stays_in_the_log(tmp_path, monkeypatch, capfd):
    """A warning goes to the cache entry's compiler.log, not the terminal; a failing build is a
    one-line QccError naming the compiler's first error; threads building at once leave file
    descriptors 1 and 2 where they were."""
    from concurrent.futures import ThreadPoolExecutor

    import pytest

    from qcc import QccError
    from qcc.codegen import build
    from qcc.codegen.render import Sources

    monkeypatch.setenv("QCC_CACHE_DIR", str(tmp_path))
    h = "int {n}_run(const float *input, float *output, void *arena);\nint {n}_cpu_supported(void);\n"
    body = "int {n}_run(const float *input, float *output, void *arena) {{ int unused_{k}; (void)arena; " \
           "output[0] = input[0] + {k}; return 0; }}\nint {n}_cpu_supported(void) {{ return 1; }}\n"

    def one(k):
        n = f"m{k}"
        ffi, lib = build.build(Sources("#warning qcc-test-warning\n" + body.format(n=n, k=k), h.format(n=n)), n,
                               extra_cflags=("-Wall",))
        out = ffi.new("float[1]")
        assert getattr(lib, f"{n}_run")(ffi.new("float[1]", [1.5]), out, ffi.NULL) == 0
        return out[0]

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(one, range(3))) == [1.5, 2.5, 3.5]
    print("still on stdout")
    out, err = capfd.readouterr()
    assert out == "still on stdout\n" and "qcc-test-warning" not in err
    logs = [p.read_text() for p in tmp_path.glob("*/compiler.log")]
    assert len(logs) == 3 and all("qcc-test-warning" in t for t in logs)

    with pytest.raises(QccError, match="the C compiler failed") as e:
        build.build(Sources("int broken(void) { return }\n", h.format(n="bad")), "bad")
    assert "\n" not in str(e.value) and "error" in str(e.value)
    assert capfd.readouterr() == ("", "")
    assert not list(tmp_path.glob(".build-*"))  # the failed build's directory is gone
