"""The cortex-m target: the generated C builds for a Cortex-M4 with arm-none-eabi-gcc without a
warning and without 64-bit helper calls, and the firmware example (examples/firmware/) runs
the compiled models under qemu-system-arm (mps2-an386) with the same outputs as the host.

Outputs are compared bit for bit with the host's scalar build (the same C: IEEE single
precision, no contraction, no libm on either side) and with the host's native (AVX2) build
wherever the output is computed from an integer accumulator; float outputs of float layers
are compared with the native build within the host's tolerance (its kernels sum in another
order). Skipped, with the reason, only where arm-none-eabi-gcc or qemu-system-arm is absent.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import builders
import qcc
from qcc.api import lower_model
from qcc.codegen.targets import TARGETS
from qcc.frontend.reference import run_reference

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"
EXAMPLES = ("digits_w1a1", "digits_w1a2", "digits_w2a2")
CM = TARGETS["cortex-m"]
STRICT = ("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror")
# What the generated code may call on a Cortex-M4: single-precision float helpers (soft float),
# 32-bit integer division, memcpy/memset. Not: 64-bit division or shifts (__aeabi_ldivmod,
# __aeabi_uldivmod, __aeabi_l*), 64-bit float conversions (__aeabi_f2lz, __aeabi_l2f), doubles
# (__aeabi_d*), or libgcc's table popcount (__popcountdi2).
ALLOWED = re.compile(r"__aeabi_(f(add|sub|mul|div|cmp\w*|2iz|2uiz)|i2f|ui2f|u?idiv(mod)?)|mem(cpy|set|move)")


def _load_firmware_module():
    spec = importlib.util.spec_from_file_location("firmware_build", ROOT / "examples" / "firmware" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fw = _load_firmware_module()
needs_cc = pytest.mark.skipif(shutil.which(CM.cc) is None, reason=f"{CM.cc} is not installed (CI installs gcc-arm-none-eabi)")
needs_fw = pytest.mark.skipif(bool(fw.missing_tools()),
                              reason=f"{', '.join(fw.missing_tools())} not installed (CI installs gcc-arm-none-eabi, "
                                     "libnewlib-arm-none-eabi, qemu-system-arm)")


# ---- the generated C on a Cortex-M4 ---------------------------------------------------------

def _cnn_planes(case):
    import test_planes

    b, flat, pooled = test_planes.cnn(test_planes.CNN_CASES[case])
    x = np.zeros((1, 3, 8, 8), np.float32)
    numel = int(np.prod(run_reference(b.model({"x": [1, 3, 8, 8]}, {pooled: 4}), {"x": x})[0].shape[1:]))
    logits = b.node("Gemm", [flat, b.int_weight((5, numel)), b.const(np.zeros(5))], transB=1)
    return b.model({"x": [1, 3, 8, 8]}, {pooled: 4, logits: 2})


def _cnn_w1a1(case):
    import test_w1a1

    kw = test_w1a1.CNN_CASES[case]
    b, flat, pooled = builders.w1a1_cnn(seed=5, **kw)
    x = np.zeros((1, kw["c_in"], *kw["hw"]), np.float32)
    numel = int(np.prod(run_reference(b.model({"x": [1, kw["c_in"], *kw["hw"]]}, {pooled: 4}), {"x": x})[0].shape[1:]))
    bits, logits = builders.finish_cnn(b, flat, numel)
    return b.model({"x": [1, kw["c_in"], *kw["hw"]]}, {bits: 2, logits: 2})


def e2e_models() -> dict:
    """The example models and the end-to-end tests' networks (every method, layer kind and op)."""
    import test_float
    import test_planes
    import test_structure
    import test_w1a1

    models = {m: MODELS / f"{m}.onnx" for m in EXAMPLES}
    models["w1a1-mlp"] = builders.w1a1_mlp()
    models.update({f"w1a1-cnn-{c}": (_cnn_w1a1, c) for c in test_w1a1.CNN_CASES})
    models.update({f"mlp-{c}": test_planes.mlp(layers) for c, layers in test_planes.MLP_CASES.items()})
    models.update({f"cnn-{c}": (_cnn_planes, c) for c in test_planes.CNN_CASES})
    models["residual-concat-depthwise"] = test_structure.residual_net()
    models["horq-2"] = test_structure.horq(2)
    models["float-cnn"] = test_float.float_cnn(1, 1)
    models["quantized-values-trunc"] = test_float.quantized_values_net(True)
    return {k: (v[0](v[1]) if isinstance(v, tuple) else v) for k, v in models.items()}


def _build_object(c_file: Path, float_abi: str) -> list[str]:
    """Compile for the Cortex-M4 with every warning an error; the object's undefined symbols."""
    obj = c_file.with_suffix(f".{float_abi}.o")
    r = subprocess.run([CM.cc, *CM.cflags, *fw.FLOAT_ABI[float_abi], *STRICT, "-c", str(c_file), "-o", str(obj)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), f"{c_file.name} ({float_abi} float):\n{r.stderr}"
    nm = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True, check=True)
    return [line.split()[-1] for line in nm.stdout.splitlines() if line.strip()]


@needs_cc
@pytest.mark.skipif(shutil.which("arm-none-eabi-nm") is None, reason="arm-none-eabi-nm is not installed")
def test_cortex_m_c_builds_without_warnings_or_64_bit_helpers(tmp_path):
    models = e2e_models()
    files = []
    for key, model in models.items():
        name = re.sub(r"\W", "_", key)
        files.append(qcc.compile(model, tmp_path / name, target="cortex-m", name=name).c)
    jobs = [(f, abi) for f in files for abi in ("soft", "hard")]
    with ThreadPoolExecutor(2) as pool:
        undefined = dict(zip(jobs, pool.map(lambda j: _build_object(*j), jobs)))
    for (f, abi), syms in undefined.items():
        bad = [s for s in syms if not ALLOWED.fullmatch(s)]
        assert not bad, f"{f.name} ({abi} float) calls {bad}"
    hard = {s for (f, abi), syms in undefined.items() if abi == "hard" for s in syms}
    assert not any(s.startswith("__aeabi_f") for s in hard), "with the FPU, floats need no helpers"
    # soft float really links the helpers, so the allow-list above is exercised
    assert any(s.startswith("__aeabi_f") for (f, abi), syms in undefined.items() if abi == "soft" for s in syms)


@needs_cc
@pytest.mark.skipif(shutil.which("arm-none-eabi-nm") is None, reason="arm-none-eabi-nm is not installed")
def test_soft_float_threshold_count_calls_no_float_helper(tmp_path):
    """Built soft float, the threshold count (the integer layers' output transform) searches and
    calls no float helper; forced to its float guess it does (so the check can fail)."""
    from qcc.codegen.render import RUNTIME_DIR

    src = tmp_path / "count.c"
    src.write_text('#include "qcc_rt.h"\n'
                   "int32_t count(const qcc_thresholds *t, int32_t co, int32_t acc) { return qcc_threshold_count(t, co, acc); }\n")

    def helpers(*flags):
        obj = tmp_path / "count.o"
        subprocess.run([CM.cc, *CM.cflags, *fw.FLOAT_ABI["soft"], *STRICT, *flags, "-I", str(RUNTIME_DIR), "-c", str(src),
                        "-o", str(obj)], check=True, capture_output=True, text=True)
        nm = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout
        return [ln.split()[-1] for ln in nm.splitlines() if "__aeabi_" in ln]

    assert helpers() == []
    assert {"__aeabi_ui2f", "__aeabi_fmul"} <= set(helpers("-DQCC_FLOAT_GUESS=1"))


def test_cortex_m_target_renders_the_scalar_kernels(tmp_path):
    b = qcc.compile(MODELS / "digits_w1a1.onnx", tmp_path, target="cortex-m", name="digits")
    text = b.c.read_text()
    assert "__scalar" in text and "__avx2" not in text and "__neon" not in text
    assert CM.isa == "scalar" and not CM.hosted and CM.size == "arm-none-eabi-size"


# ---- the firmware under qemu-system-arm -------------------------------------------------------

def _final_layers_integer(model) -> bool:
    """Whether every model output comes from an integer accumulator or integer levels
    (so the host's kernels give the same bits in any order), not from a float layer."""
    _, low = lower_model(model)
    producer = {o: n for n in low.nodes for o in n.outputs}
    for out in low.outputs:
        n = producer.get(out)
        while n is not None and n.op in ("reshape", "transpose", "unpack"):
            n = producer.get(n.inputs[0])
        if n is None or n.op != "layer" or n.attrs.w_spec is None:
            return False
    return True


def _run_on_firmware(model, tmp_path, name, x, float_abi="hard"):
    elf = fw.build_firmware(model, tmp_path / name, inputs={"x": x}, samples=len(x), name=name, float_abi=float_abi)
    text = fw.run_firmware(elf, timeout=60)
    instructions = fw.parse_instructions(text)
    assert len(instructions) == len(x) and min(instructions) > 0
    return fw.parse_outputs(text), fw.parse_sizes(text)


def _host(model, x, target):
    sess = qcc.InferenceSession(model, target=target)
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    return np.concatenate([o.reshape(len(x), -1) for o in outs], axis=1)


@needs_fw
@pytest.mark.parametrize("model", EXAMPLES)
def test_firmware_matches_host_bit_for_bit(model, tmp_path):
    path = MODELS / f"{model}.onnx"
    x = np.load(MODELS / "digits_inputs.npz")["x"][:4]
    got, sizes = _run_on_firmware(path, tmp_path, model, x)
    assert got.shape == (4, 10)
    assert _final_layers_integer(path)  # the logits are an integer accumulator x scale + bias
    for target in ("native", "scalar"):
        want = _host(path, x, target)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"firmware != host {target}"
    # the sizes it prints come from the linker and agree with the compiled model
    _, low = lower_model(path)
    assert sizes["arena"] == low.meta["arena_size"]
    assert sizes["bss"] >= sizes["arena"]
    assert 0 < sizes["stack_used"] < sizes["stack"]
    # qcc's estimate (gcc -fstack-usage, hard float as here) against the stack the run really used
    from qcc.codegen.size import object_sections
    from qcc.codegen.render import render
    src = render(low, model, "", isa="scalar")
    hard = dataclasses.replace(CM, cflags=CM.cflags + fw.FLOAT_ABI["hard"])
    estimate = object_sections(src.c, src.h, model, hard)[0].stack
    assert estimate <= sizes["stack_used"] <= estimate + 512  # + main, the startup and semihosting frames
    assert 0 < sizes["model_code"] and sizes["model_code"] + sizes["model_constants"] < sizes["flash"]
    assert sizes["ram"] >= sizes["data"] + sizes["bss"] + sizes["stack"]
    elf = tmp_path / model / "fw.elf"
    nm = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    weights = [ln.split() for ln in nm.splitlines() if re.search(r" [rR] L\d+_weight$", ln)]
    assert weights, "the weights are read-only data (flash)"
    assert all(int(addr, 16) < 0x00400000 for addr, _, _ in weights), "the weights are in flash, below 4 MiB"
    arena = [ln.split() for ln in nm.splitlines() if ln.endswith(" arena")]
    assert len(arena) == 1 and arena[0][1] in "bB" and int(arena[0][0], 16) >= 0x20000000, "the arena is in RAM (.bss)"
    assert int(arena[0][0], 16) % 64 == 0


@needs_fw
def test_firmware_soft_float_and_several_outputs(tmp_path):
    """A network with several outputs (a requantized residual sum, a depthwise int layer, float
    logits from a float Gemm), built with software floats: integer outputs equal the host's bits;
    every output equals the host's scalar build bit for bit; float logits match native within
    the host's tolerance."""
    import test_structure

    model = test_structure.residual_net()
    x = np.random.default_rng(0).uniform(-4, 4, (3, 3, 9, 9)).astype(np.float32)
    got, _ = _run_on_firmware(model, tmp_path, "resnet", x, float_abi="soft")
    scalar, native = _host(model, x, "scalar"), _host(model, x, "native")
    assert np.array_equal(got.view(np.uint32), scalar.view(np.uint32))
    n_int = 9 * 9 * 12 + 5 * 5 * 24  # the residual sum r and the depthwise output d come first
    assert np.array_equal(got[:, :n_int], native[:, :n_int])
    np.testing.assert_allclose(got[:, n_int:], native[:, n_int:], rtol=1e-4, atol=1e-5)
    want = run_reference(model, {"x": x})
    assert np.array_equal(got[:, :9 * 9 * 12], want[0].reshape(3, -1))


def _float_cnn():
    import test_float
    return test_float.float_cnn(1, 1)  # float convs, average and max pools, Clip, Mul/Sub, softmax (qcc_expf)


def _quantized_values():
    import test_float
    return test_float.quantized_values_net(True)  # HALF_UP and FLOOR rounding, Trunc, MultiThreshold values


def _horq():
    import test_structure
    return test_structure.horq(2)  # runtime-scaled sums of ternary-plane convs


@needs_fw
@pytest.mark.parametrize("build", [_float_cnn, _quantized_values, _horq], ids=["float-cnn", "quantized-values", "horq-2"])
def test_firmware_float_paths_match_host_scalar_bit_for_bit(build, tmp_path):
    """Float layers and float ops on the Cortex-M4's FPU give the host scalar build's bits (same C,
    IEEE single precision, no contraction, no libm), and match native within its tolerance."""
    model = build()
    sess = qcc.InferenceSession(model, target="scalar")
    shape = [3, *sess.get_inputs()[0].shape[1:]]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 2
    got, _ = _run_on_firmware(model, tmp_path, "net", x)
    assert np.array_equal(got.view(np.uint32), _host(model, x, "scalar").view(np.uint32))
    np.testing.assert_allclose(got, _host(model, x, "native"), rtol=1e-4, atol=1e-5)
