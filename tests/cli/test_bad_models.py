"""The hostile and malformed corpus (tests/data/bad/, cases.json): every case exits 2 with one
line naming the problem, for every command it applies to; huge shapes are refused before
anything large is allocated."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcc.cli import main

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "data" / "bad"
CASES = json.loads((BAD / "cases.json").read_text())["cases"]
HUGE = ("overflow_dims.onnx", "huge_input.onnx", "huge_pads.onnx")


def _argv(case, command, tmp_path):
    path = BAD / case["file"]
    if "argv" in case:
        return [str(ROOT / a) if a.endswith(".onnx") else a.replace("{file}", str(path)) for a in case["argv"]]
    extra = ["-o", str(tmp_path / "out")] if command == "compile" else []
    return [command, str(path), *case.get("args", []), *extra]


@pytest.mark.parametrize("case,command", [(c, cmd) for c in CASES for cmd in c["commands"]],
                         ids=[f"{c['file']}-{cmd}" for c in CASES for cmd in c["commands"]])
def test_bad_input_exits_2_with_one_line(case, command, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("QCC_MAX_ARENA", raising=False)
    code = main(_argv(case, command, tmp_path))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("qcc: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert case["expect"] in err, err
    if command == "compile":
        assert not (tmp_path / "out").exists()  # nothing written, not even the directory


def test_manifest_lists_every_file_once():
    on_disk = {p.name for p in BAD.iterdir()} - {"cases.json", "make_corpus.py", "__pycache__"}
    listed = [c["file"] for c in CASES]
    assert len(listed) == len(set(listed))
    assert on_disk == set(listed) - {"missing.onnx"}
    assert not (BAD / "missing.onnx").exists() and (BAD / "directory.onnx").is_dir()
    for c in CASES:
        assert c["expect"] and c["what"] and set(c["commands"]) <= {"compile", "check", "inspect"}


def test_corpus_is_what_the_generator_writes():
    """The committed files are reproducible from make_corpus.py (byte for byte)."""
    r = subprocess.run([sys.executable, str(BAD / "make_corpus.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_corpus_base_model_is_valid(capsys):
    """The corpus breaks one thing in a model qcc takes: unbroken, it checks against onnxruntime."""
    code = main(["check", str(BAD / "arena_limit.onnx"), "--samples", "20"])
    out, err = capsys.readouterr()
    assert code == 0 and "argmax agreement 100.00% over 20 inputs: ok" in out, err


@pytest.mark.parametrize("name", HUGE)
def test_huge_shapes_are_refused_before_they_are_computed(name, monkeypatch):
    """The importer derives shapes by running nodes on zeros; a huge tensor must be refused before
    its node runs (and a huge input before its zeros exist)."""
    from qcc import QccError
    from qcc.frontend.onnx import import_model
    from qcc.ir import interp

    ran = []
    real = interp.run_node
    monkeypatch.setattr(interp, "run_node", lambda n, env: ran.append(n.name) or real(n, env))
    with pytest.raises(QccError, match="above the limit of 1 GiB") as e:
        import_model(str(BAD / name))
    assert "\n" not in str(e.value)
    assert "conv" not in ran and len(ran) <= 2  # at most the two small quantizers ran


def test_huge_shapes_need_no_memory():
    """Under a 3 GiB address-space limit (the refused tensors are 16 GiB and more), every huge
    case still exits 2 with its message, quickly."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from qcc.cli import main; sys.exit(main(sys.argv[1:]))")
    for name in HUGE:
        r = subprocess.run([sys.executable, "-c", code, "inspect", str(BAD / name)], capture_output=True, text=True,
                           timeout=120, env={k: v for k, v in os.environ.items() if k != "QCC_MAX_ARENA"})
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "above the limit" in r.stderr, r.stderr


def test_max_arena_from_flag_and_environment(capsys, monkeypatch):
    model = str(BAD / "arena_limit.onnx")  # a valid model with an 832-byte arena
    from qcc.api import lower_model

    arena = lower_model(model)[1].meta["arena_size"]
    assert main(["inspect", model, "--max-arena", str(arena)]) == 0
    assert main(["inspect", model, "--max-arena", str(arena - 1)]) == 2
    assert f"the arena needs {arena} bytes" in capsys.readouterr().err
    monkeypatch.setenv("QCC_MAX_ARENA", "700")
    assert main(["inspect", model]) == 2
    assert "above the limit of 700 bytes" in capsys.readouterr().err
    assert main(["inspect", model, "--max-arena", "1M"]) == 0  # the flag wins over the environment
    capsys.readouterr()
    assert main(["inspect", model, "--max-arena", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid size 'lots'" in err


def test_parse_bytes():
    from qcc import QccError
    from qcc.api import parse_bytes

    assert [parse_bytes(s) for s in ("4096", "64K", "64KiB", "1.5M", "2g", "1GB")] == \
        [4096, 65536, 65536, 3 << 19, 2 << 30, 1 << 30]
    for bad in ("0", "-1K", "", "K", "12Q"):
        with pytest.raises(QccError):
            parse_bytes(bad)


def test_run_refuses_bad_feeds_in_one_line():
    """InferenceSession.run: wrong shape, dtype, rank or an empty batch is a one-line QccError."""
    from qcc import InferenceSession, QccError

    s = InferenceSession(str(BAD / "arena_limit.onnx"))
    x = np.zeros((2, 3, 6, 6), np.float32)
    assert s.run(None, {"x": x})[0].shape == (2, 4)
    cases = [(x.astype(np.int64), "has dtype int64; expected float32"),
             (x.astype(np.float16), "has dtype float16; expected float32"),
             (x[:, :2], r"has shape \[2, 2, 6, 6\]; expected \['batch', 3, 6, 6\]"),
             (x[0], r"has shape \[3, 6, 6\]"), (x[:0], "empty batch")]
    for feed, msg in cases:
        with pytest.raises(QccError, match=msg) as e:
            s.run(None, {"x": feed})
        assert "\n" not in str(e.value)
