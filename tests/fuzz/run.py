"""Differential fuzzing of qcc against onnxruntime, for long runs.

    python tests/fuzz/run.py --count 1000 --seed 0 [--jobs 2] [--sanitize] [--target native]

Generates ``--count`` random graphs (seeds ``--seed`` ...), compiles each with qcc and compares
it with onnxruntime on the oracle graph (see ``runner.py``), prints the counts (generated,
compiled, compared, mismatched, crashed, refused with a histogram of reasons) and shrinks every
failure to a minimal graph saved under ``tests/fuzz/regressions/`` (``--no-save`` to skip).
With ``--sanitize`` the generated C is built with ``-fsanitize=address,undefined`` and run as
a standalone program instead of through cffi.
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "e2e")]

from fuzz import fuzzgen, runner, shrink  # noqa: E402

_ARGS = None


def _one(seed):
    spec = fuzzgen.random_spec(seed)
    kw = {"target": _ARGS.target}
    if _ARGS.sanitize:
        kw["runner"] = runner.program_runner()
    t = time.time()
    out = runner.run_isolated(spec, **kw)
    return seed, out, time.time() - t


def summarize(outcomes) -> dict:
    counts = collections.Counter(o.status for o in outcomes)
    refused = collections.Counter(runner.reason(o.detail) for o in outcomes if o.status == "refused")
    return {"generated": len(outcomes), "compiled": sum(o.compiled for o in outcomes),
            "compared": counts["ok"] + counts["mismatch"], "ok": counts["ok"], "mismatched": counts["mismatch"],
            "crashed": counts["crash"], "refused": counts["refused"], "invalid": counts["invalid"],
            "refused_reasons": dict(refused.most_common())}


def main(argv=None) -> int:
    global _ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--target", default="native")
    ap.add_argument("--sanitize", action="store_true", help="ASan+UBSan standalone builds instead of cffi")
    ap.add_argument("--no-save", action="store_true", help="do not shrink and save failures")
    ap.add_argument("--max-shrink", type=int, default=20, help="shrink at most this many failures")
    ap.add_argument("--regressions", default=str(shrink.REGRESSIONS))
    ap.add_argument("-v", "--verbose", action="store_true")
    _ARGS = args = ap.parse_args(argv)
    os.environ.setdefault("QCC_CACHE_DIR", tempfile.mkdtemp(prefix="qcc-fuzz-cache-"))

    seeds = range(args.seed, args.seed + args.count)
    outcomes, failures = [], []
    t0 = time.time()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.jobs) as pool:
        for i, (seed, out, dt) in enumerate(pool.imap_unordered(_one, seeds), 1):
            outcomes.append(out)
            if out.failed:
                failures.append((seed, out))
            if args.verbose or out.status not in ("ok", "refused"):
                print(f"[{i}/{args.count}] seed {seed}: {out.status} ({dt:.1f} s) {out.detail[:240]}", flush=True)
            elif i % 50 == 0:
                print(f"[{i}/{args.count}] {time.time() - t0:.0f} s", flush=True)
    s = summarize(outcomes)
    print(f"\nfuzz: seeds {args.seed}..{args.seed + args.count - 1}, target {args.target}"
          f"{' (sanitized)' if args.sanitize else ''}, {time.time() - t0:.0f} s")
    for k in ("generated", "compiled", "compared", "ok", "mismatched", "crashed", "refused", "invalid"):
        print(f"  {k:>10}: {s[k]}")
    for r, n in s["refused_reasons"].items():
        print(f"  refused {n:4d} x {r}")
    for o in outcomes:
        if o.status == "invalid":
            print(f"  invalid: seed {o.spec['seed'] if o.spec else '?'}: {o.detail[:200]}")
    if failures and not args.no_save:
        kw = {"target": args.target}
        if args.sanitize:
            kw["runner"] = runner.program_runner()
        for seed, out in sorted(failures, key=lambda f: f[0])[:args.max_shrink]:
            print(f"\nshrinking seed {seed}: {out.status}: {out.detail[:200]}", flush=True)
            again = runner.run_isolated(out.spec, **kw)
            if not shrink.same_failure(again, out):
                print(f"  not reproducible (now {again.status}): the working tree changed, or the failure is"
                      f" nondeterministic; not saved", flush=True)
                continue
            small, small_out = shrink.shrink(out.spec, out, **kw)
            path = shrink.save(small, small_out, directory=Path(args.regressions),
                               note="found by tests/fuzz/run.py" + (" --sanitize" if args.sanitize else ""))
            print(f"  saved {path}\n" + fuzzgen.describe(small) + f"\n  {small_out.status}: {small_out.detail[:300]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
