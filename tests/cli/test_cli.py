"""The command line: exit codes, one-line errors for bad input, and the C bundle's contract."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcc.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "digits_w1a1.onnx"
INPUTS = ROOT / "examples" / "models" / "digits_inputs.npz"


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_usage_error_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert main(["compile"]) == 2


def test_check_and_inspect(capsys):
    code, out, _ = run(["check", MODEL, "--inputs", INPUTS], capsys)
    assert code == 0 and "argmax agreement 100.00% over 200 inputs: ok" in out
    code, out, _ = run(["inspect", MODEL], capsys)
    assert code == 0
    assert "layer/xnor" in out and "pm1" in out and "MACs" in out and "arena" in out


def test_check_fails_on_mismatch(capsys, monkeypatch):
    from qcc.frontend import reference

    real = reference.run_reference
    monkeypatch.setattr(reference, "run_reference", lambda m, f: [o + 1.0 for o in real(m, f)])
    code, out, _ = run(["check", MODEL, "--inputs", INPUTS], capsys)
    assert code == 1 and "MISMATCH" in out


def _gcc():
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")


def test_bundle_is_warning_free_freestanding_c(tmp_path, capsys):
    _gcc()
    code, out, err = run(["compile", MODEL, "-o", tmp_path], capsys)
    assert code == 0, err
    c = (tmp_path / "model.c").read_text()
    assert "/features/features.4/Conv" in c  # ONNX node names above the calls
    assert "#define MODEL_ARENA_SIZE" in (tmp_path / "model.h").read_text()
    subprocess.run(["gcc", "-std=c99", "-ffreestanding", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    "-c", "model.c", "-o", "model.o"], cwd=tmp_path, check=True)
    syms = subprocess.run(["nm", "-g", "--defined-only", "model.o"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert sorted(line.split()[-1] for line in syms.splitlines()) == ["model_cpu_supported", "model_run"]


def test_two_models_link_into_one_program(tmp_path, capsys):
    """Two bundles with different --name link together; a C main runs both on the same input
    and prints logits that match the Python session."""
    _gcc()
    for name in ("digits_a", "digits_b"):
        assert run(["compile", MODEL, "-o", tmp_path, "--name", name], capsys)[0] == 0
    x = np.load(INPUTS)["x"][0].reshape(-1)
    main_c = tmp_path / "main.c"
    main_c.write_text(
        '#include <stdio.h>\n#include "digits_a.h"\n#include "digits_b.h"\n'
        "static unsigned char arena[DIGITS_A_ARENA_SIZE > DIGITS_B_ARENA_SIZE ? DIGITS_A_ARENA_SIZE : DIGITS_B_ARENA_SIZE]"
        " __attribute__((aligned(DIGITS_A_ARENA_ALIGN)));\n"
        f"static const float input[DIGITS_A_INPUT_SIZE] = {{{', '.join(repr(float(v)) + 'f' for v in x)}}};\n"
        "int main(void) { float a[DIGITS_A_OUTPUT_SIZE], b[DIGITS_B_OUTPUT_SIZE];\n"
        "  if (digits_a_run(input, a, arena) || digits_b_run(input, b, arena)) return 1;\n"
        "  for (int i = 0; i < DIGITS_A_OUTPUT_SIZE; i++) printf(\"%.9g %.9g\\n\", a[i], b[i]);\n  return 0; }\n")
    subprocess.run(["gcc", "-std=c99", "-O2", "-ffp-contract=off", "main.c", "digits_a.c", "digits_b.c", "-o", "prog"],
                   cwd=tmp_path, check=True)
    lines = subprocess.run(["./prog"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split("\n")
    vals = np.array([[float(v) for v in ln.split()] for ln in lines if ln], np.float32)
    from qcc import InferenceSession

    want = InferenceSession(str(MODEL)).run(None, {"input": x.reshape(1, 1, 8, 8)})[0][0]
    assert np.array_equal(vals[:, 0], want) and np.array_equal(vals[:, 1], want)


def test_non_editable_install_ships_templates(tmp_path):
    """A wheel built from the tree, installed into a fresh directory, compiles a model."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("qcc-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, cwd=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("import qcc, sys; b = qcc.compile(sys.argv[1], sys.argv[2]); "
            "assert qcc.__file__.startswith(sys.argv[3]), qcc.__file__; print(b.arena_size)")
    subprocess.run([sys.executable, "-c", code, str(MODEL), str(tmp_path / "out"), str(target)],
                   check=True, cwd=tmp_path, env=env)
    assert (tmp_path / "out" / "model.c").exists()


def test_same_model_same_flags_byte_identical_c(tmp_path):
    """Compiling twice, in processes with different hash seeds, writes byte-identical files."""
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-m", "qcc.cli", "compile", str(MODEL), "-o", str(out), "--name", "digits"],
                       check=True, env=env, capture_output=True)
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0].keys() == {"digits.c", "digits.h", "qcc_rt.h"}
    assert outs[0] == outs[1]


def test_session_run_rejects_bad_feeds():
    """run() names the input and what it expected: missing, unknown, wrong dtype, wrong shape."""
    from qcc import InferenceSession, QccError

    s = InferenceSession(str(MODEL))
    x = np.load(INPUTS)["x"][:2]
    cases = [({}, "missing input 'input'"), ({"input": x, "other": x}, "unknown input"),
             ({"input": x.astype(np.float64)}, "dtype float64"), ({"input": x.reshape(2, 1, 4, 16)}, "has shape")]
    for feeds, msg in cases:
        with pytest.raises(QccError, match=msg):
            s.run(None, feeds)
    with pytest.raises(QccError, match="unknown output"):
        s.run(["nope"], {"input": x})


def test_compile_defaults_to_out_beside_setuptools_build(tmp_path, capsys, monkeypatch):
    """Without -o the bundle goes to ./out: `pip install .` leaves setuptools' build/ in a source
    tree, which compile would rightly refuse to overwrite."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build" / "lib").mkdir(parents=True)
    code, out, err = run(["compile", MODEL], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["model.c", "model.h", "qcc_rt.h"]
    assert os.listdir(tmp_path / "build") == ["lib"]
