"""qcc compile -o DIR: the bundle appears whole or not at all, other bundles in DIR are kept,
and a directory holding files qcc did not write is refused unless --force (which then leaves
those files alone)."""
import os
from pathlib import Path

import pytest

from qcc import api
from qcc.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "digits_w1a1.onnx"
SMALL = ROOT / "tests" / "data" / "bad" / "arena_limit.onnx"  # a valid model (refused only under --max-arena 700)


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() if p.is_file() else "dir" for p in sorted(d.iterdir())} if d.exists() else None


def _crash_after_first_file(monkeypatch):
    """Make the bundle writer die after one file is written, as a crash (or a full disk) would."""
    real = api._write_files

    def partial(where, files):
        first = dict(list(files.items())[:1])
        real(where, first)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(api, "_write_files", partial)


def test_new_directory_appears_whole_or_not_at_all(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sub" / "bundle"
    _crash_after_first_file(monkeypatch)
    code, _, err = run(["compile", MODEL, "-o", out], capsys)
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err
    assert not out.exists()
    assert os.listdir(tmp_path / "sub") == []  # no temporary directory left behind
    monkeypatch.undo()
    assert run(["compile", MODEL, "-o", out], capsys)[0] == 0
    assert sorted(os.listdir(out)) == ["model.c", "model.h", "qcc_rt.h"]
    assert sorted(os.listdir(tmp_path / "sub")) == ["bundle"]


def test_crash_while_replacing_leaves_the_old_bundle(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bundle"
    assert run(["compile", SMALL, "-o", out], capsys)[0] == 0
    before = snapshot(out)
    _crash_after_first_file(monkeypatch)
    assert run(["compile", MODEL, "-o", out], capsys)[0] == 2
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["bundle"]


def test_failed_swap_puts_the_old_bundle_back(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bundle"
    assert run(["compile", SMALL, "-o", out], capsys)[0] == 0
    before = snapshot(out)
    real = os.rename

    def rename(src, dst):  # moving the old bundle aside works, moving the new one in fails
        if Path(src).name.startswith(".bundle.qcc-") and Path(dst) == out:
            raise OSError(5, "Input/output error")
        return real(src, dst)
    monkeypatch.setattr(os, "rename", rename)
    code, _, err = run(["compile", MODEL, "-o", out], capsys)
    assert code == 2 and "Input/output error" in err
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["bundle"]


def test_qcc_bundle_is_replaced_and_other_bundles_kept(tmp_path, capsys):
    assert run(["compile", SMALL, "-o", tmp_path / "b", "--name", "small"], capsys)[0] == 0
    assert run(["compile", MODEL, "-o", tmp_path / "b", "--name", "digits"], capsys)[0] == 0
    both = snapshot(tmp_path / "b")
    assert sorted(both) == ["digits.c", "digits.h", "qcc_rt.h", "small.c", "small.h"]
    stale = tmp_path / "b" / "small.c"
    stale.write_text(stale.read_text() + "/* stale */\n")  # still marked as qcc's
    assert run(["compile", SMALL, "-o", tmp_path / "b", "--name", "small"], capsys)[0] == 0
    assert snapshot(tmp_path / "b") == both
    assert sorted(os.listdir(tmp_path)) == ["b"]


@pytest.mark.parametrize("foreign", ["model.c", "notes.txt", "subdir/"])
def test_foreign_files_are_refused_without_force(tmp_path, capsys, foreign):
    out = tmp_path / "b"
    assert run(["compile", SMALL, "-o", out], capsys)[0] == 0
    if foreign.endswith("/"):
        (out / foreign).mkdir()
    else:
        (out / foreign).write_text("mine\n")
    before = snapshot(out)
    code, _, err = run(["compile", MODEL, "-o", out], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds files qcc did not write" in err and foreign.rstrip("/") in err and "--force" in err
    assert snapshot(out) == before


def test_force_replaces_only_the_bundle(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "model.c").write_text("my own code\n")
    (out / "main.c").write_text("int main(void) { return 0; }\n")
    (out / "data").mkdir()
    (out / "data" / "x.bin").write_bytes(b"\0\1")
    code, stdout, err = run(["compile", MODEL, "-o", out, "--force"], capsys)
    assert code == 0, err
    assert "--force" in stdout and "replacing model.c that qcc did not write" in stdout
    assert "left 2 other file(s) alone" in stdout
    assert (out / "main.c").read_text() == "int main(void) { return 0; }\n"
    assert (out / "data" / "x.bin").read_bytes() == b"\0\1"
    assert api.GENERATED_MARK in (out / "model.c").read_text()[:400]
    assert sorted(os.listdir(out)) == ["data", "main.c", "model.c", "model.h", "qcc_rt.h"]
    # the bundle is the same as one written into a fresh directory
    assert run(["compile", MODEL, "-o", tmp_path / "fresh"], capsys)[0] == 0
    assert {k: v for k, v in snapshot(out).items() if k.startswith(("model", "qcc"))} == snapshot(tmp_path / "fresh")


def test_force_crash_keeps_each_file_whole(tmp_path, capsys, monkeypatch):
    """Under --force the files are replaced one by one: a failure before the replacements
    leaves every old file as it was and no temporary file behind."""
    out = tmp_path / "b"
    out.mkdir()
    (out / "model.c").write_text("my own code\n")
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert run(["compile", MODEL, "-o", out, "--force"], capsys)[0] == 2
    monkeypatch.setattr(os, "replace", real)
    assert snapshot(out) == {"model.c": b"my own code\n"}


def test_output_path_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = run(["compile", SMALL, "-o", tmp_path / "f"], capsys)
    assert code == 2 and "exists and is not a directory" in err and (tmp_path / "f").read_text() == "x"


def test_bundle_files_have_ordinary_permissions(tmp_path, capsys):
    assert run(["compile", SMALL, "-o", tmp_path / "b"], capsys)[0] == 0
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "b" / "model.c").stat().st_mode & 0o777 == 0o666 & ~mask
