"""Run one fuzz case: compile with qcc, run onnxruntime on the oracle graph, compare.

Outcomes (``Outcome.status``):

* ``ok``: compiled and every compared output agrees;
* ``refused``: qcc raised :class:`QccError` for the (valid) graph; ``detail`` is the reason;
* ``mismatch``: an exactly-compared (quantized) output differs, a float output is out of
  tolerance, or the argmax of the logits differs;
* ``crash``: qcc raised anything other than ``QccError`` (or the C did not build/run);
* ``invalid``: the generator made a graph onnxruntime rejects (a generator bug, never qcc's).

Comparison: quantized activations bit for bit; float logits within
``1e-4 * max(1, max|ref|)`` (the tolerance of the end-to-end tests: the only float op after
the exact integer accumulator is the final scale and bias), with identical argmax.
"""
from __future__ import annotations

import re
import traceback
from dataclasses import dataclass

import numpy as np

from fuzz import fuzzgen

RTOL = 1e-4


@dataclass
class Outcome:
    status: str
    detail: str = ""
    spec: dict | None = None
    compiled: bool = False  # qcc produced a program that ran (whatever its results)

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "crash")


def reason(msg: str) -> str:
    """A refusal message without node names and numbers, for the histogram."""
    msg = re.sub(r"node '[^']*'", "node", msg)
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"-?\d+(\.\d+)?", "N", msg)
    return msg[:160]


def compare(names, got, want, exact, approx) -> str | None:
    """None if the outputs agree, else a one-line description of the first difference."""
    by_got, by_want = dict(zip(names, got)), dict(zip(names, want))
    for n in exact:
        g, w = by_got[n], np.asarray(by_want[n]).reshape(by_got[n].shape)
        if not np.array_equal(g, w):
            bad = np.argwhere(g != w)
            i = tuple(bad[0])
            return f"exact output {n}: {len(bad)}/{g.size} differ, first at {list(i)}: qcc {g[i]!r} onnxruntime {w[i]!r}"
    for n in approx:
        g, w = by_got[n], np.asarray(by_want[n]).reshape(by_got[n].shape)
        tol = RTOL * max(1.0, float(np.abs(w).max()))
        err = float(np.abs(g - w).max())
        if not err <= tol:
            return f"float output {n}: max error {err:.3g} > tolerance {tol:.3g}"
        if g.ndim == 2 and g.shape[1] > 1:
            # argmax must agree except where the reference has a tie within the tolerance
            top2 = np.sort(w, axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > 2 * tol
            if not np.array_equal(g.argmax(1)[clear], w.argmax(1)[clear]):
                return f"float output {n}: argmax differs"
    return None


def run_case(spec: dict, target: str = "native", samples: int = 24, runner=None) -> Outcome:
    """Build, compile and compare one spec. ``runner(case, target) -> list of outputs`` replaces
    the InferenceSession (e.g. a sanitized standalone program)."""
    try:
        case = fuzzgen.build(spec, samples)
    except fuzzgen.InvalidSpec as e:
        return Outcome("invalid", f"spec: {e}", spec)
    except Exception as e:  # onnxruntime rejected the generated graph during calibration
        return Outcome("invalid", f"generator: {type(e).__name__}: {str(e).splitlines()[0][:200]}", spec)
    return check_case(case, target, runner)


def check_case(case, target: str = "native", runner=None) -> Outcome:
    """Compile ``case.model`` (or run ``runner``) and compare with onnxruntime on the oracle."""
    from qcc import InferenceSession
    from qcc.errors import QccError
    from qcc.frontend.reference import run_reference

    spec = case.spec
    try:
        want = run_reference(case.model, case.feeds)
    except Exception as e:
        return Outcome("invalid", f"onnxruntime: {type(e).__name__}: {str(e).splitlines()[0][:200]}", spec)
    names = [o.name for o in case.model.graph.output]
    try:
        if runner is None:
            got = InferenceSession(case.model, target=target).run(None, case.feeds)
        else:
            got = runner(case, target)
    except QccError as e:
        if "failed with status" in str(e) or "returned status" in str(e):
            return Outcome("crash", f"QccError: {e}", spec, True)
        if "failed on the generated code" in str(e):
            return Outcome("crash", f"QccError: {e}", spec)
        return Outcome("refused", str(e), spec)
    except Exception as e:
        tb = traceback.format_exc().strip().splitlines()
        where = next((ln.strip() for ln in reversed(tb) if ln.strip().startswith("File") and "/qcc/" in ln), "")
        return Outcome("crash", f"{type(e).__name__}: {str(e)[:300]} [{where}]", spec)
    diff = compare(names, got, want, case.exact, case.approx)
    if diff:
        return Outcome("mismatch", diff, spec, True)
    return Outcome("ok", "", spec, True)


def run_isolated(spec: dict, timeout: float = 300, **kw) -> Outcome:
    """:func:`run_case` in a forked child, so a crash of the compiled C (a signal) or a hang is
    an outcome, not the end of the run."""
    return isolated(run_case, spec, timeout=timeout, **kw)


def isolated(fn, spec, *args, timeout: float = 300, **kw) -> Outcome:
    """``fn(spec, *args, **kw)`` (returning an Outcome) in a forked child."""
    import os
    import pickle
    import select
    import signal

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            out = fn(spec, *args, **kw)
        except BaseException as e:  # noqa: BLE001 - report anything
            out = Outcome("crash", f"{type(e).__name__}: {e}", spec)
        data = pickle.dumps(out)
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        ready, _, _ = select.select([f], [], [], timeout)
        if ready:
            chunks.append(f.read())
    if not ready:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if data:
        return pickle.loads(data)
    if not ready:
        return Outcome("crash", f"timeout after {timeout:.0f} s", spec)
    if os.WIFSIGNALED(status):
        return Outcome("crash", f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}", spec, True)
    return Outcome("crash", f"child exited with status {os.WEXITSTATUS(status)} and no result", spec)


SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g")


def program_runner(extra_cflags=SANITIZE_FLAGS, wrapper=(), cflags_env=None):
    """A ``runner`` for :func:`run_case` that builds the generated C with the standalone harness
    (``qcc.codegen.program``), e.g. with sanitizers or under valgrind, and runs it on the feeds;
    outputs in graph-output order, shaped as ``InferenceSession`` returns them."""
    def run(case, target_name):
        import tempfile
        from pathlib import Path

        from qcc.api import isa_for, lower_model
        from qcc.codegen.program import build_program, run_program
        from qcc.codegen.render import render
        from qcc.codegen.targets import target

        _, low = lower_model(case.model)
        src = render(low, "model", isa=isa_for(target_name, run_here=True))
        tgt = target(target_name)
        out_names = list(low.meta.get("output_names", {})) or list(low.outputs)
        shapes = [low.tensors[o].shape[1:] for o in low.outputs]
        sizes = [int(np.prod(s)) for s in shapes]
        with tempfile.TemporaryDirectory(prefix="qcc-fuzz-") as work:
            exe = build_program(src, "model", tgt, Path(work), tuple(extra_cflags))
            x = case.feeds["x"]
            y = run_program(exe, tgt, x.reshape(len(x), -1), sum(sizes), wrapper=tuple(wrapper))
        res, off = {}, 0
        for n, s, size in zip(out_names, shapes, sizes):
            res[n] = y[:, off:off + size].reshape((len(x), *s))
            off += size
        return [res[o.name] for o in case.model.graph.output]
    return run
