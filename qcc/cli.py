"""``qcc compile | check | inspect | bench``: a thin layer that parses flags and calls the API.

Exit codes: 0 ok, 1 check failed, 2 bad input or usage. Errors are one line, never a
traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from qcc.codegen.targets import TARGETS
from qcc.errors import QccError


def _compile(args) -> int:
    from qcc import api

    b = api.compile(args.model, args.out, target=args.target, name=args.name, force=args.force,
                    max_arena=args.max_arena)
    for note in b.notes:
        print(f"qcc: {note}")
    print(f"wrote {b.c}, {b.h}, {b.runtime} (arena {b.arena_size} bytes)")
    print(_size_line(args, b.lowered))
    return 0


def _inputs(args, session) -> dict[str, np.ndarray]:
    specs = session.get_inputs()
    if args.inputs:
        try:
            data = np.load(args.inputs)
        except Exception as e:
            raise QccError(f"{args.inputs}: cannot read inputs ({type(e).__name__}); expected an .npz file")
        feeds = {}
        for i, s in enumerate(specs):
            key = s.name if s.name in data.files else (data.files[i] if len(specs) == 1 or i < len(data.files) else None)
            if key is None:
                raise QccError(f"{args.inputs}: no array for input '{s.name}' (has {data.files})")
            try:
                feeds[s.name] = np.asarray(data[key], np.float32)
            except (ValueError, TypeError) as e:
                raise QccError(f"{args.inputs}: array '{key}' (dtype {data[key].dtype}) cannot be converted to float32 "
                               f"for input '{s.name}': {' '.join(str(e).split())}")
        return feeds
    rng = np.random.default_rng(args.seed)
    return {s.name: rng.standard_normal([args.samples, *s.shape[1:]]).astype(np.float32) for s in specs}


def _check(args) -> int:
    from qcc import api
    from qcc.frontend import reference
    from qcc.frontend.onnx import load_model

    session = api.InferenceSession(args.model, target=args.target, max_arena=args.max_arena)
    feeds = _inputs(args, session)
    got = session.run(None, feeds)
    want = reference.run_reference(load_model(args.model), feeds)
    ok = True
    for spec, g, w in zip(session.get_outputs(), got, want):
        w = np.asarray(w, np.float32).reshape(g.shape)
        err = float(np.max(np.abs(g - w))) if g.size else 0.0
        tol = args.rtol * max(1.0, float(np.max(np.abs(w)))) if w.size else 0.0
        agree = float(np.mean(g.reshape(len(g), -1).argmax(1) == w.reshape(len(w), -1).argmax(1)))
        good = err <= tol and agree == 1.0
        ok &= good
        print(f"{spec.name}: max abs error {err:.3g} (tolerance {tol:.3g}), argmax agreement {agree:.2%} "
              f"over {len(g)} inputs: {'ok' if good else 'MISMATCH'}")
    return 0 if ok else 1


def _inspect(args) -> int:
    from qcc import api
    from qcc.codegen.inspect import layer_table

    graph, low = api.lower_model(args.model, max_arena=args.max_arena)
    unpruned = (api.lower_model(args.model, skip=("remove_dead_channels",), max_arena=args.max_arena)[1]
                if low.meta.get("dead_channels") else None)
    print(layer_table(graph, low, unpruned))
    if args.size:
        print()
        print(_size_report(args.model, low, [args.target] if args.target else None).format())
    return 0


def _size_report(model, low, targets, name="model"):
    from qcc.codegen.size import size_report

    fp32, note = None, ""
    try:  # the fp32 twin's initializers, for scale; the report stands without them, and says why
        from onnx import numpy_helper

        from qcc.frontend.twins import float_twin
        fp32 = int(sum(numpy_helper.to_array(t).nbytes for t in float_twin(model).graph.initializer))
    except Exception as e:  # noqa: BLE001 (any failure of the twin is reported, not raised)
        note = f"the float twin failed: {type(e).__name__}: {str(e)[:200]}"
    return size_report(low, targets, name=name, source=os.path.basename(os.fspath(model)), fp32_model_bytes=fp32,
                       fp32_model_note=note)


def _size_line(args, low) -> str:
    """``qcc compile``'s last line: the bundle's object size for its target, weights and arena ratios."""
    from qcc.codegen.size import summary_line

    try:
        return summary_line(_size_report(args.model, low, [args.target], args.name))
    except QccError as e:
        return f"size: not measured: {e}"


def _bench(args) -> int:
    from qcc import bench

    if args.png:
        bench.require_matplotlib()  # fail before the long run
    result = bench.run_bench(args.model, target=args.target, threads=args.threads, runs=args.runs,
                             warmup=args.warmup, max_seconds=args.max_seconds, rounds=args.rounds,
                             inputs=args.inputs, seed=args.seed, layers=args.layers, int8=not args.no_int8,
                             calibration_samples=args.calibration_samples, quiet=args.quiet)
    print(bench.report(result))
    if args.json:
        bench.write_json(result, args.json)
    if args.png:
        bench.write_png(result, args.png)
    return 0


def _max_arena(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-arena", metavar="BYTES",
                   help="refuse models whose arena, or any tensor as float32, exceeds this (e.g. 64K, 512M; "
                        "default $QCC_MAX_ARENA or 1G)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcc", description="Compile quantized ONNX models of low-bit networks into C.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="write the C bundle (<name>.c, <name>.h, qcc_rt.h)")
    c.add_argument("model")
    c.add_argument("-o", "--out", default="out", help="output directory (default: out)")
    c.add_argument("--name", default="model", help="prefix of every public C symbol (default: model)")
    c.add_argument("--target", default="native",
                   help="; ".join(f"{t.name}: {t.help}" for t in TARGETS.values()) + " (default: native)")
    c.add_argument("--force", action="store_true",
                   help="write into a directory holding files qcc did not write (only the bundle's files are replaced)")
    _max_arena(c)
    c.set_defaults(fn=_compile)

    k = sub.add_parser("check", help="compile for the host and compare with onnxruntime (exit 1 on mismatch)")
    k.add_argument("model")
    k.add_argument("--inputs", help=".npz with one array per model input (by name, or in order)")
    k.add_argument("--samples", type=int, default=100, help="random inputs when --inputs is not given")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--rtol", type=float, default=1e-4, help="tolerance relative to max(1, max |reference|)")
    k.add_argument("--target", default="native")
    _max_arena(k)
    k.set_defaults(fn=_check)

    i = sub.add_parser("inspect", help="per-layer table: op, shapes, bits, MACs, bytes, arena")
    i.add_argument("model")
    _max_arena(i)
    i.add_argument("--size", action="store_true",
                   help="also the compiled object's text/rodata/data/bss per target (with the target's size tool), "
                        "weights vs fp32 and arena vs all activations")
    i.add_argument("--target", choices=list(TARGETS), help="with --size: only this target (default: all but native)")
    i.set_defaults(fn=_inspect)

    b = sub.add_parser("bench", help="time qcc against onnxruntime fp32 and int8 twins (ratios, one process)")
    b.add_argument("model")
    b.add_argument("--target", default="native")
    b.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    b.add_argument("--runs", type=int, default=200, help="timed calls per engine (default 200)")
    b.add_argument("--warmup", type=int, default=10, help="untimed calls per engine first (default 10)")
    b.add_argument("--max-seconds", type=float, default=10.0, help="time budget per engine (default 10)")
    b.add_argument("--rounds", type=int, default=5, help="alternating rounds over the engines (default 5)")
    b.add_argument("--inputs", help=".npz: the first sample of each array (by name, or in order); default random")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--calibration-samples", type=int, default=16, help="inputs calibrating the int8 twin")
    b.add_argument("--no-int8", action="store_true", help="skip the onnxruntime int8 (QDQ twin) engine")
    b.add_argument("--layers", action="store_true", help="per-layer times from a profiling build")
    b.add_argument("--json", help="write every number to this JSON file")
    b.add_argument("--png", help="write a bar chart (needs matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    b.set_defaults(fn=_bench)
    return p


def main(argv=None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and 2
    try:
        return args.fn(args)
    except QccError as e:
        print(f"qcc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qcc: interrupted", file=sys.stderr)
        return 2
    except MemoryError:
        print("qcc: error: out of memory", file=sys.stderr)
        return 2
    except Exception as e:  # a bug in qcc: still one line, never a traceback (QCC_DEBUG=1 shows it)
        if os.environ.get("QCC_DEBUG"):
            raise
        print(f"qcc: internal error: {type(e).__name__}: {' '.join(str(e).split())}; "
              f"please report this model (QCC_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
