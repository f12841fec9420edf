"""Build generated C for the host with cffi, cached by content hash.

The cache lives under ``$QCC_CACHE_DIR`` or ``~/.cache/qcc``; an entry's key hashes the
sources, the compiler flags and the qcc version, so a hit is always the same code. Each
build happens in a private temporary directory and is renamed into place, so two
processes building at once never see a half-written module.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import qcc
from qcc.codegen.render import RUNTIME_DIR, Sources
from qcc.errors import QccError

# after Python's own compile flags, which include -fwrapv: the C never relies on signed overflow
# (it is built for firmware without that flag), and with it GCC optimizes the kernels' index
# arithmetic less (an int8 conv layer took 7 % longer)
CFLAGS = ["-O2", "-std=c99", "-ffp-contract=off", "-fno-strict-aliasing", "-fno-wrapv"]


AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "avx512_vnni"}  # /proc/cpuinfo's names


def host_isa() -> str:
    """The best kernel ISA this machine runs: ``neon`` on aarch64 (NEON is part of Armv8-A),
    else the x86 ISA of /proc/cpuinfo's flags (``x86_isa``); the build checks CPUID again at
    run time."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "neon"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return "scalar"
    return x86_isa(set(flags.split()))


def x86_isa(flags: set[str]) -> str:
    """``avx512`` with AVX2 and AVX-512 F/BW/VL/VPOPCNTDQ/VNNI, ``avx2`` with AVX2 and POPCNT, else
    ``scalar``."""
    if not {"avx2", "popcnt"} <= flags:
        return "scalar"
    return "avx512" if AVX512 <= flags else "avx2"


def cache_dir() -> Path:
    return Path(os.environ.get("QCC_CACHE_DIR") or Path.home() / ".cache" / "qcc")


PROFILE_HARNESS = """
#include <time.h>
#define QCC_PROFILE_CALLS 4096
static double {name}_profile_ns[QCC_PROFILE_CALLS];
static struct timespec {name}_profile_t0;
void {name}_profile_mark(int call, int end) {{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (!end) {{ {name}_profile_t0 = t; return; }}
    if (call < QCC_PROFILE_CALLS)
        {name}_profile_ns[call] += (t.tv_sec - {name}_profile_t0.tv_sec) * 1e9 + (t.tv_nsec - {name}_profile_t0.tv_nsec);
}}
void {name}_profile_read(double *out, int n) {{
    for (int i = 0; i < n && i < QCC_PROFILE_CALLS; i++) {{ out[i] = {name}_profile_ns[i]; {name}_profile_ns[i] = 0; }}
}}
"""


def _cdef(name: str, profile: bool) -> str:
    """What Python sees of the library. The run's buffers are void pointers, so that a numpy
    array goes in as ``ffi.from_buffer(a)``, without a type for cffi to check (75 ns less a
    buffer, on calls of a few microseconds)."""
    return (f"int {name}_run(const void *input, void *output, void *arena);\nint {name}_cpu_supported(void);\n"
            + (f"void {name}_profile_read(double *out, int n);\n" if profile else ""))


def build(sources: Sources, name: str, extra_cflags: tuple[str, ...] = (), profile: bool = False):
    """Compile and load the model; returns the cffi ``(ffi, lib)`` pair. With ``profile``, the
    library also has ``<name>_profile_read(double *ns, int n)`` (nanoseconds per kernel call
    since the last read, for a source rendered with ``profile=True``)."""
    flags = CFLAGS + list(extra_cflags)
    rt = (RUNTIME_DIR / "qcc_rt.h").read_text()
    key = hashlib.sha256("\0".join([qcc.__version__, sources.c, sources.h, rt, " ".join(flags), name,
                                     _cdef(name, profile)]).encode()).hexdigest()[:24]
    module = f"_qcc_{name}_{key}"
    final = cache_dir() / key
    so = next(final.glob(f"{module}*.so"), None) if final.exists() else None
    if so is None:
        so = _compile(sources, name, module, flags, final, profile)
    spec = importlib.util.spec_from_file_location(module, so)
    mod = sys.modules.get(module) or importlib.util.module_from_spec(spec)
    if module not in sys.modules:
        spec.loader.exec_module(mod)
        sys.modules[module] = mod
    return mod.ffi, mod.lib


_OUTPUT_LOCK = threading.Lock()  # file descriptors 1 and 2 are per process: one redirection at a time


@contextlib.contextmanager
def _captured_output(log: Path):
    """Send what the C compiler prints (to file descriptors 1 and 2) to ``log``, so that a
    build adds nothing to the program's output; the log stays in the cache entry."""
    with _OUTPUT_LOCK:
        with _redirected(log):
            yield log


@contextlib.contextmanager
def _redirected(log: Path):
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "wb") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield log
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def _compile(sources: Sources, name: str, module: str, flags: list[str], final: Path, profile: bool) -> Path:
    import cffi

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        for fname, text in sources.files(name).items():
            (tmp / fname).write_text(text)
        ffi = cffi.FFI()
        ffi.cdef(_cdef(name, profile))
        harness = f'#include "{name}.h"\n' + (PROFILE_HARNESS.format(name=name) if profile else "")
        ffi.set_source(module, harness, sources=[str(tmp / f"{name}.c")],
                       include_dirs=[str(tmp)], extra_compile_args=flags)
        with _captured_output(tmp / "compiler.log") as log:
            try:
                ffi.compile(tmpdir=str(tmp), verbose=False)
                error = None
            except Exception as e:
                error = str(e).splitlines()[0] if str(e) else type(e).__name__
        if error is not None:
            first = next((ln.strip() for ln in log.read_text(errors="replace").splitlines() if "error" in ln), "")
            raise QccError(f"the C compiler failed on the generated code: {error}" + (f" ({first})" if first else ""))
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; use its build
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists() and tmp != final:
            shutil.rmtree(tmp, ignore_errors=True)
    return next(final.glob(f"{module}*.so"))
