"""The generated C under AddressSanitizer + UndefinedBehaviorSanitizer, and under valgrind memcheck.

A slice of fuzz graphs is rendered for the host (``native`` and ``scalar`` kernels), built as a
standalone program (``qcc.codegen.program``) with ``-fsanitize=address,undefined
-fno-sanitize-recover=all -g`` and run on the fuzz inputs: any sanitizer report aborts the
program (a failure), and its outputs must agree with onnxruntime on the oracle graph exactly as
the cffi-built module's do (see ``runner.compare``).

Valgrind: the shipped example models and a few fuzz graphs, built with
``-DQCC_HARNESS_NO_FILL`` so the arena is left uninitialised and memcheck flags any read of
arena bytes the model did not write first (``--error-exitcode``); skipped without valgrind.
"""
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from fuzz import fuzzgen, runner

ROOT = Path(__file__).resolve().parents[2]
SEEDS, PER_CHUNK = 5000, 5
CHUNKS = 3


def _need_gcc():
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")


def _sanitizer_works(tmp_path):
    """ASan needs its runtime library; skip cleanly where gcc cannot link it."""
    import subprocess
    src = tmp_path / "t.c"
    src.write_text("int main(void) { return 0; }\n")
    r = subprocess.run(["gcc", "-fsanitize=address,undefined", str(src), "-o", str(tmp_path / "t")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"gcc cannot build with -fsanitize=address,undefined: {r.stderr.strip()[:200]}")


@pytest.mark.parametrize("target", ["native", "scalar"])
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_sanitized_fuzz_slice(target, chunk, tmp_path):
    _need_gcc()
    _sanitizer_works(tmp_path)
    run = runner.program_runner(runner.SANITIZE_FLAGS)
    bad, compared = [], 0
    for seed in range(SEEDS + chunk * PER_CHUNK, SEEDS + (chunk + 1) * PER_CHUNK):
        out = runner.run_case(fuzzgen.random_spec(seed), target=target, runner=run)
        compared += out.status == "ok"
        if out.status in ("mismatch", "crash", "invalid"):
            bad.append(f"seed {seed}: {out.status}: {out.detail}")
    assert not bad, "\n".join(bad)
    assert compared >= PER_CHUNK // 2


def test_sanitizer_reports_fail_the_run(tmp_path):
    """The sanitized build really aborts on an out-of-bounds access (the mode can fail)."""
    _need_gcc()
    _sanitizer_works(tmp_path)
    from qcc.api import lower_model
    from qcc.codegen.program import build_program, run_program
    from qcc.codegen.render import render
    from qcc.codegen.targets import target
    from qcc.errors import QccError

    case = fuzzgen.build(fuzzgen.random_spec(SEEDS))
    _, low = lower_model(case.model)
    src = render(low, "model", isa="scalar")
    # the same model, but its entry point writes past the output buffer (the harness allocates one spare float)
    bad_c = src.c.replace("int model_run(", "static int model_run_inner(", 1)
    assert bad_c != src.c
    n_out = sum(int(np.prod(low.tensors[o].shape[1:])) for o in low.outputs)
    bad_c += ("\nint model_run(const float *input, float *output, void *arena) {\n"
              f"    output[{n_out + 1}] = 0.0f;\n    return model_run_inner(input, output, arena);\n}}\n")
    exe = build_program(src.__class__(**{**src.__dict__, "c": bad_c}), "model", target("scalar"), tmp_path,
                        runner.SANITIZE_FLAGS)
    with pytest.raises(QccError, match="failed with status"):
        run_program(exe, target("scalar"), case.feeds["x"][:1], n_out)


def _valgrind_run(model, x, tmp_path, isa="scalar"):
    from qcc.api import lower_model
    from qcc.codegen.program import build_program, run_program
    from qcc.codegen.render import render
    from qcc.codegen.targets import target

    # valgrind emulates no AVX-512 (its CPUID reports none, so an avx512 bundle refuses to run):
    # on such a host, native runs the AVX2 kernels here; the ASan/UBSan slice runs avx512's
    isa = "avx2" if isa == "avx512" else isa
    _, low = lower_model(model)
    src = render(low, "model", isa=isa)
    exe = build_program(src, "model", target("scalar" if isa == "scalar" else "native"), tmp_path,
                        ("-g", "-O1", "-DQCC_HARNESS_NO_FILL"))
    n_out = sum(int(np.prod(low.tensors[o].shape[1:])) for o in low.outputs)
    return run_program(exe, target("scalar"), x.reshape(len(x), -1), n_out,
                       wrapper=("valgrind", "--error-exitcode=99", "-q"), timeout=600)


VALGRIND_MODELS = sorted((ROOT / "examples" / "models").glob("*.onnx"))


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
@pytest.mark.parametrize("isa", ["scalar", "native"])
@pytest.mark.parametrize("path", VALGRIND_MODELS, ids=[p.stem for p in VALGRIND_MODELS])
def test_valgrind_examples(path, isa, tmp_path):
    from qcc.api import isa_for
    from qcc.frontend.reference import run_reference

    x = np.load(ROOT / "examples" / "models" / "digits_inputs.npz")["x"][:3].astype(np.float32)
    model = onnx.load(path)
    got = _valgrind_run(model, x, tmp_path, isa_for(isa))
    want = run_reference(model, {model.graph.input[0].name: x})[0]
    assert got.shape == (len(x), want[0].size)
    want = want.reshape(got.shape)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
@pytest.mark.parametrize("seed", [SEEDS + 1, SEEDS + 2, SEEDS + 3])
def test_valgrind_fuzz_graphs(seed, tmp_path):
    def run(case, target_name):
        from qcc.api import isa_for
        x = case.feeds["x"][:2]
        y = _valgrind_run(case.model, x, tmp_path, isa_for(target_name))
        # split the concatenated outputs as program_runner does
        from qcc.api import lower_model
        _, low = lower_model(case.model)
        names = list(low.meta.get("output_names", {})) or list(low.outputs)
        res, off = {}, 0
        for n, o in zip(names, low.outputs):
            s = low.tensors[o].shape[1:]
            size = int(np.prod(s))
            res[n] = y[:, off:off + size].reshape((len(x), *s))
            off += size
        return [res[o.name] for o in case.model.graph.output]

    spec = fuzzgen.random_spec(seed)
    out = runner.run_case(spec, samples=2, runner=run)
    assert out.status in ("ok", "refused"), f"{out.status}: {out.detail}"


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_valgrind_flags_uninitialised_arena_reads(tmp_path):
    """The valgrind mode can fail: a model that reads arena bytes it never wrote is reported
    (with -DQCC_HARNESS_NO_FILL the arena is uninitialised malloc memory)."""
    from qcc.api import lower_model
    from qcc.codegen.program import build_program, run_program
    from qcc.codegen.render import render
    from qcc.codegen.targets import target
    from qcc.errors import QccError

    case = fuzzgen.build(fuzzgen.random_spec(SEEDS), samples=1)
    _, low = lower_model(case.model)
    src = render(low, "model", isa="scalar")
    bad_c = src.c.replace("int model_run(", "static int model_run_inner(", 1)
    bad_c += ("\nint model_run(const float *input, float *output, void *arena) {\n"
              "    const float stale = *(const float *)arena;\n"
              "    const int r = model_run_inner(input, output, arena);\n"
              "    output[0] += stale * 0.0f;\n    return r;\n}\n")
    exe = build_program(src.__class__(**{**src.__dict__, "c": bad_c}), "model", target("scalar"), tmp_path,
                        ("-g", "-O1", "-DQCC_HARNESS_NO_FILL"))
    n_out = sum(int(np.prod(low.tensors[o].shape[1:])) for o in low.outputs)
    with pytest.raises(QccError, match="status 99"):
        run_program(exe, target("scalar"), case.feeds["x"], n_out, wrapper=("valgrind", "--error-exitcode=99", "-q"))
