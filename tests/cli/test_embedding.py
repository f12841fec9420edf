"""README's embedding guide: its C snippet, taken from between the marker comments, compiles
with gcc (-Werror) against a compiled model, links, runs on the committed test images, and
answers what qcc.InferenceSession answers."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import qcc

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "digits_w1a1.onnx"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- embedding-snippet:begin -->\s*```c\n(.*?)```\s*<!-- embedding-snippet:end -->", text, re.S)
    assert m, "README.md has no C snippet between the embedding-snippet markers"
    return m.group(1)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
@pytest.mark.parametrize("target", ["scalar", "native"])
def test_readme_snippet_compiles_links_and_classifies(tmp_path, target):
    qcc.compile(MODEL, tmp_path, target=target, name="digits")
    (tmp_path / "main.c").write_text(readme_snippet())
    cflags = ["gcc", "-std=c99", "-O2", "-ffp-contract=off"]
    for src in ("main.c", "digits.c"):  # the snippet and the model, both warning-free at -O2
        subprocess.run([*cflags, "-Wall", "-Wextra", "-Werror", "-c", src], cwd=tmp_path, check=True)
    subprocess.run(["gcc", "main.o", "digits.o", "-o", "app"], cwd=tmp_path, check=True)
    x = np.load(ROOT / "examples" / "models" / "digits_inputs.npz")["x"][:50].astype("<f4")
    r = subprocess.run([str(tmp_path / "app")], input=x.tobytes(), capture_output=True, check=True)
    got = [int(v) for v in r.stdout.split()]
    want = qcc.InferenceSession(MODEL, target=target).run(None, {"input": x})[0].argmax(1)
    assert got == want.tolist()
