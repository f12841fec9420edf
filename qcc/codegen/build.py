"""Build generated C for the host with cffi, cached by content hash.

The cache lives under ``$QCC_CACHE_DIR`` or ``~/.cache/qcc``; an entry's key hashes the
sources, the compiler flags and the qcc version, so a hit is always the same code. Each
build happens in a private temporary directory and is renamed into place, so two
processes building at once never see a half-written module.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import qcc
from qcc.codegen.render import RUNTIME_DIR, Sources
from qcc.errors import QccError

CFLAGS = ["-O2", "-std=c99", "-ffp-contract=off", "-fno-strict-aliasing"]


def cache_dir() -> Path:
    return Path(os.environ.get("QCC_CACHE_DIR") or Path.home() / ".cache" / "qcc")


def build(sources: Sources, name: str, extra_cflags: tuple[str, ...] = ()):
    """Compile and load the model; returns the cffi ``(ffi, lib)`` pair."""
    flags = CFLAGS + list(extra_cflags)
    rt = (RUNTIME_DIR / "qcc_rt.h").read_text()
    key = hashlib.sha256("\0".join([qcc.__version__, sources.c, sources.h, rt, " ".join(flags), name]).encode()).hexdigest()[:24]
    module = f"_qcc_{name}_{key}"
    final = cache_dir() / key
    so = next(final.glob(f"{module}*.so"), None) if final.exists() else None
    if so is None:
        so = _compile(sources, name, module, flags, final)
    spec = importlib.util.spec_from_file_location(module, so)
    mod = sys.modules.get(module) or importlib.util.module_from_spec(spec)
    if module not in sys.modules:
        spec.loader.exec_module(mod)
        sys.modules[module] = mod
    return mod.ffi, mod.lib


def _compile(sources: Sources, name: str, module: str, flags: list[str], final: Path) -> Path:
    import cffi

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        (tmp / f"{name}.c").write_text(sources.c)
        (tmp / f"{name}.h").write_text(sources.h)
        shutil.copy(RUNTIME_DIR / "qcc_rt.h", tmp / "qcc_rt.h")
        ffi = cffi.FFI()
        ffi.cdef(f"int {name}_run(const float *input, float *output, void *arena);")
        ffi.set_source(module, f'#include "{name}.h"', sources=[str(tmp / f"{name}.c")],
                       include_dirs=[str(tmp)], extra_compile_args=flags)
        try:
            ffi.compile(tmpdir=str(tmp), verbose=False)
        except Exception as e:
            raise QccError(f"the C compiler failed on the generated code: {str(e).splitlines()[0]}")
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; use its build
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists() and tmp != final:
            shutil.rmtree(tmp, ignore_errors=True)
    return next(final.glob(f"{module}*.so"))
