"""Standalone programs: a bundle plus the runtime's test harness (``runtime/main.c.j2``), built
with a target's C compiler and run on this machine, natively or under an emulator.

This is how qcc's C is checked where cffi cannot load it: cross targets under qemu, and host
builds with sanitizers or under valgrind. The harness reads float32 samples from a file and
writes the outputs (:func:`run_program`), so any runner that can execute a program will do.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

import qcc
from qcc.codegen.render import Sources, environment
from qcc.codegen.targets import Target
from qcc.errors import QccError

HARNESS_CFLAGS = ("-O2", "-std=c99", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall", "-Wextra")


def write_bundle(sources: Sources, name: str, out: Path, harness: bool = False) -> list[Path]:
    """Write ``<name>.c``, ``<name>.h``, ``qcc_rt.h`` (and ``<name>_main.c``) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = sources.files(name)
    if harness:
        files[f"{name}_main.c"] = environment().get_template("main.c.j2").render(
            name=name, NAME=name.upper(), version=qcc.__version__)
    for fname, text in files.items():
        (out / fname).write_text(text)
    return [out / f for f in files]


def build_program(sources: Sources, name: str, target: Target, work: Path,
                  extra_cflags: tuple[str, ...] = ()) -> Path:
    """Compile the bundle and its harness for ``target`` in directory ``work``; the program's path."""
    if not target.hosted:
        raise QccError(f"target '{target.name}' is bare metal: the harness needs an OS (see examples/firmware/)")
    missing = target.missing()
    if missing:
        raise QccError(f"target '{target.name}' needs {', '.join(missing)}, which this machine does not have")
    files = write_bundle(sources, name, Path(work), harness=True)
    exe = Path(work) / name
    cmd = [target.cc, *HARNESS_CFLAGS, *target.cflags, *extra_cflags, "-I", str(work),
           str(files[0]), str(files[-1]), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:300])
        raise QccError(f"{target.cc} failed on the generated code: {first}")
    return exe


def run_program(exe: Path, target: Target, x: np.ndarray, output_size: int,
                wrapper: tuple[str, ...] = (), timeout: float = 600, arena: Path | None = None) -> np.ndarray:
    """Run the harness on float32 samples ``x`` (one per row, flattened); outputs, one row each.
    ``wrapper`` prefixes the command (valgrind, say); the target's emulator comes after it.
    With ``arena``, the harness writes the arena's bytes after each sample to that file."""
    x = np.ascontiguousarray(x, dtype="<f4").reshape(len(x), -1)
    work = Path(exe).parent
    fin, fout = work / "in.bin", work / "out.bin"
    fin.write_bytes(x.tobytes())
    r = subprocess.run([*wrapper, *target.runner, str(exe), str(fin), str(fout), *([str(arena)] if arena else [])],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise QccError(f"{exe.name} failed with status {r.returncode}: {r.stderr.strip()[-500:]}")
    y = np.frombuffer(fout.read_bytes(), dtype="<f4")
    if y.size != len(x) * output_size:
        raise QccError(f"{exe.name} wrote {y.size} floats; expected {len(x) * output_size}")
    return y.reshape(len(x), output_size).astype(np.float32)
