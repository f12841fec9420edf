"""The x86 kernels check the CPU at run time: ``<name>_cpu_supported()`` reads CPUID (AVX2,
POPCNT, OS-saved YMM state; for avx512 also AVX-512 F/BW/VL/VPOPCNTDQ and OS-saved ZMM state).
A bundle built for avx2 refuses to run on a CPU without AVX2, and one built for avx512 on a CPU
with AVX2 alone (shown by running the static harness under qemu-x86_64 emulating older and
newer CPUs: its newest, "max", has AVX2 but no AVX-512), and ``InferenceSession(target="native")``
steps down to the next ISA (avx512, avx2, scalar) when the check fails."""
import shutil
import subprocess

import numpy as np
import pytest

import qcc.api
from qcc import InferenceSession
from qcc.api import lower_model
from qcc.codegen.program import build_program, run_program
from qcc.codegen.render import render
from qcc.codegen.targets import TARGETS
from qcc.errors import QccError

MODEL = "examples/models/digits_w1a1.onnx"


def _inputs(n=8):
    d = np.load("examples/models/digits_inputs.npz")
    return d[d.files[0]][:n].astype(np.float32)


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 (qemu-user) is not installed")
def test_avx2_bundle_checks_the_cpu(tmp_path):
    _, low = lower_model(MODEL)
    exe = build_program(render(low, "model", isa="avx2"), "model", TARGETS["avx2"], tmp_path, extra_cflags=("-static",))
    x = _inputs()
    old = subprocess.run(["qemu-x86_64", "-cpu", "Nehalem", str(exe), "/dev/null", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert old.returncode == 3 and "this CPU cannot run these kernels" in old.stderr
    host = InferenceSession(MODEL, target="scalar")
    want = host.run(None, {host.get_inputs()[0].name: x})[0]
    got = run_program(exe, TARGETS["avx2"], x, want[0].size, wrapper=("qemu-x86_64", "-cpu", "max"))
    np.testing.assert_array_equal(got, want.reshape(len(x), -1))


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 (qemu-user) is not installed")
def test_avx512_bundle_checks_the_cpu(tmp_path):
    _, low = lower_model(MODEL)
    exe = build_program(render(low, "model", isa="avx512"), "model", TARGETS["avx512"], tmp_path, extra_cflags=("-static",))
    r = subprocess.run(["qemu-x86_64", "-cpu", "max", str(exe), "/dev/null", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 3 and "this CPU cannot run these kernels" in r.stderr


class _NoCpu:
    """A built library whose CPU check says no (as on a CPU without the ISA)."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        return (lambda: 0) if name.endswith("_cpu_supported") else getattr(self._lib, name)


def test_native_session_falls_back_to_scalar(monkeypatch):
    real_build = qcc.api.build

    def build(sources, name, **kw):
        ffi, lib = real_build(sources, name, **kw)
        return ffi, (_NoCpu(lib) if "immintrin.h" in sources.c else lib)

    monkeypatch.setattr(qcc.api, "host_isa", lambda: "avx2")
    monkeypatch.setattr(qcc.api, "build", build)
    s = InferenceSession(MODEL, target="native")
    assert s.isa == "scalar" and "immintrin.h" not in s.sources.c
    x = _inputs()
    ref = InferenceSession(MODEL, target="scalar")
    feed = {ref.get_inputs()[0].name: x}
    np.testing.assert_array_equal(s.run(None, feed)[0], ref.run(None, feed)[0])
    with pytest.raises(QccError, match="cannot run on this CPU"):
        InferenceSession(MODEL, target="avx2")


def test_native_session_steps_down_from_avx512_to_avx2(monkeypatch):
    real_build = qcc.api.build
    built = []

    def build(sources, name, **kw):
        ffi, lib = real_build(sources, name, **kw)
        built.append(sources.c)
        return ffi, (_NoCpu(lib) if "__avx512" in sources.c else lib)

    monkeypatch.setattr(qcc.api, "host_isa", lambda: "avx512")
    monkeypatch.setattr(qcc.api, "build", build)
    s = InferenceSession(MODEL, target="native")
    assert s.isa == "avx2" and len(built) == 2 and "__avx512" in built[0] and "__avx2" in s.sources.c
    assert "__avx512" not in s.sources.c
    x = _inputs()
    ref = InferenceSession(MODEL, target="scalar")
    feed = {ref.get_inputs()[0].name: x}
    np.testing.assert_array_equal(s.run(None, feed)[0], ref.run(None, feed)[0])


def test_x86_isa_from_cpu_flags():
    from qcc.codegen.build import x86_isa
    zen3 = {"sse4_2", "popcnt", "avx", "avx2", "fma", "bmi2"}
    skylake_x = zen3 | {"avx512f", "avx512bw", "avx512vl", "avx512cd", "avx512dq"}  # no VPOPCNTDQ
    zen4 = skylake_x | {"avx512_vpopcntdq", "avx512_vnni", "avx512_bitalg"}
    knights_mill = skylake_x | {"avx512_vpopcntdq"}  # no VNNI
    assert [x86_isa(f) for f in (set(), {"sse4_2", "popcnt"}, zen3, skylake_x, zen4, zen4 - {"avx512vl"},
                                 knights_mill)] == ["scalar", "scalar", "avx2", "avx2", "avx512", "avx2", "avx2"]


def test_host_isa_on_arm_is_neon(monkeypatch):
    import platform

    from qcc.codegen.build import host_isa
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert host_isa() == "neon"
