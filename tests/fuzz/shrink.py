"""Shrink a failing fuzz spec to a minimal one that still fails the same way, and save it as a
regression file (``regressions/<name>.onnx`` plus ``<name>.json`` with the spec, the compared
outputs and what went wrong).

Greedy: try edits that make the graph smaller (drop the head or a block, turn a residual or
concat block into a plain conv, halve or zero channel counts and spatial sizes, smaller
kernels, stride 1, no pads, no groups, simpler quantizers, no BatchNorm/bias/pruning) and keep
the first edit under which the case still fails with the same status; repeat until no edit
helps or the budget of tries is spent.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx

from fuzz import fuzzgen, runner

REGRESSIONS = Path(__file__).resolve().parent / "regressions"


def _edits(spec):
    """Candidate specs, each one edit smaller than ``spec`` (most aggressive first)."""
    def variant(fn):
        s = copy.deepcopy(spec)
        s.pop("calib", None)
        if fn(s) is False:
            return None
        return s

    out = []
    if spec.get("head"):
        out.append(variant(lambda s: s.update(head=0)))
    n = len(spec["blocks"])
    for i in reversed(range(n)):
        out.append(variant(lambda s, i=i: s["blocks"].pop(i)))
    for i, b in enumerate(spec["blocks"]):
        if b["op"] == "res":
            out.append(variant(lambda s, i=i: s["blocks"].__setitem__(i, {
                **{k: v for k, v in s["blocks"][i].items() if k != "a2"}, "op": "conv", "group": 1,
                "cout": None})))
        if b["op"] == "concat":
            def to_conv(s, i=i):
                b = s["blocks"][i]
                s["blocks"][i] = {**{k: v for k, v in b.items() if k not in ("couts", "q", "same_q")}, **b["q"][0],
                                  "op": "conv", "group": 1, "cout": b["couts"][0]}
            out.append(variant(to_conv))
    # sizes
    inp = spec["input"]
    for j, d in enumerate(inp):
        for v in sorted({1, d // 2, d - 1}):
            if 1 <= v < d:
                out.append(variant(lambda s, j=j, v=v: s["input"].__setitem__(j, v)))
    for i, b in enumerate(spec["blocks"]):
        for key in ("cout",):
            if b.get(key) and b[key] > 1:
                g = b.get("group", 1)
                for v in sorted({1, b[key] // 2, b[key] - 1}):
                    if v >= 1 and v % g == 0:
                        out.append(variant(lambda s, i=i, v=v: s["blocks"][i].__setitem__("cout", v)))
                if g > 1:
                    out.append(variant(lambda s, i=i: s["blocks"][i].update(group=1)))
        if b.get("couts"):
            for j in (0, 1):
                for v in sorted({1, b["couts"][j] // 2}):
                    if v < b["couts"][j]:
                        out.append(variant(lambda s, i=i, j=j, v=v: s["blocks"][i]["couts"].__setitem__(j, v)))
        if "k" in b:
            for j in (0, 1):
                if b["k"][j] > 1:
                    def smaller_k(s, i=i, j=j):
                        bb = s["blocks"][i]
                        step = 2 if bb["op"] == "res" else 1
                        bb["k"][j] -= step
                        bb["pads"][j] = min(bb["pads"][j], bb["k"][j] - 1)
                        bb["pads"][j + 2] = min(bb["pads"][j + 2], bb["k"][j] - 1)
                    out.append(variant(smaller_k))
        if "stride" in b and b["op"] != "res":
            for j in (0, 1):
                if b["stride"][j] > 1:
                    out.append(variant(lambda s, i=i, j=j: s["blocks"][i]["stride"].__setitem__(j, 1)))
        if "pads" in b and b["op"] != "res" and any(b["pads"]):
            out.append(variant(lambda s, i=i: s["blocks"][i].update(pads=[0, 0, 0, 0])))
            for j in range(4):
                if b["pads"][j]:
                    out.append(variant(lambda s, i=i, j=j: s["blocks"][i]["pads"].__setitem__(j, 0)))
        for key, simple in (("bn", False), ("bias", False), ("prune", 0.0), ("gamma0", False), ("round", "ROUND"),
                            ("out", False), ("cip", 0), ("same_q", True), ("muladd", False), ("pc_scale", False),
                            ("mm", "gemm"), ("ceil", 0)):
            if key in b and b[key] != simple:
                out.append(variant(lambda s, i=i, key=key, simple=simple: s["blocks"][i].__setitem__(key, simple)))
        simple_w = ["i8"] if spec["form"] == "qdq" else ["pm1", "ter", "i8"]
        simple_a = ["u8", "s8"] if spec["form"] == "qdq" else ["pm1", "u2", "s8"]
        for key, simple in (("w", simple_w), ("a", simple_a), ("a2", simple_a)):
            if key in b:
                rank = simple.index(b[key]) if b[key] in simple else len(simple)
                for v in simple[:rank]:  # only towards simpler kinds, so shrinking terminates
                    if True:
                        out.append(variant(lambda s, i=i, key=key, v=v: s["blocks"][i].__setitem__(key, v)))
    if spec.get("classes", 2) > 2:
        out.append(variant(lambda s: s.update(classes=2)))
    if spec.get("softmax"):
        out.append(variant(lambda s: s.pop("softmax")))
    if spec.get("in_q"):
        out.append(variant(lambda s: s.pop("in_q")))
    if spec.get("in_bits", 8) != 8:
        out.append(variant(lambda s: s.update(in_bits=8)))
    return [s for s in out if s is not None]


def _valid(spec):
    for b in spec["blocks"]:
        if b["op"] == "conv" and b.get("cout") is None:  # residual turned conv keeps its channels
            pass
    try:
        _fix_res(spec)
        fuzzgen.shapes(spec)
        return True
    except fuzzgen.InvalidSpec:
        return False


def _fix_res(spec):
    shape = list(spec["input"])
    for b in spec["blocks"]:
        if b["op"] == "conv" and b.get("cout") is None:
            b["cout"] = shape[0]
        try:
            out = fuzzgen.shapes({**spec, "blocks": spec["blocks"][:spec["blocks"].index(b) + 1]})[0][-1]
        except fuzzgen.InvalidSpec:
            return
        shape = list(out)


def same_failure(a: runner.Outcome, b: runner.Outcome) -> bool:
    if a.status != b.status:
        return False
    if a.status == "crash":
        return a.detail.split(":")[0] == b.detail.split(":")[0]
    return True


def shrink(spec: dict, outcome: runner.Outcome, max_tries: int = 120, log=print, **kw) -> tuple[dict, runner.Outcome]:
    """The smallest spec found that fails like ``outcome``, and its outcome."""
    best, best_out = spec, outcome
    tries = 0
    improved = True
    while improved and tries < max_tries:
        improved = False
        for cand in _edits(best):
            if not _valid(cand):
                continue
            tries += 1
            out = runner.run_isolated(cand, **kw)
            if same_failure(out, outcome):
                best, best_out = out.spec or cand, out
                log(f"  shrunk ({tries} tries): {fuzzgen.shapes(best)[1]} MACs, {len(best['blocks'])} blocks")
                improved = True
                break
            if tries >= max_tries:
                break
    return best, best_out


def save(spec: dict, outcome: runner.Outcome, name: str | None = None, directory: Path = REGRESSIONS,
         note: str = "") -> Path:
    """Write ``<name>.onnx`` and ``<name>.json`` for the failing spec; returns the .onnx path."""
    directory.mkdir(parents=True, exist_ok=True)
    case = fuzzgen.build(spec)
    name = name or f"seed{spec['seed']}_{outcome.status}"
    path = directory / f"{name}.onnx"
    onnx.save(case.model, path)
    meta = {"seed": spec["seed"], "status": outcome.status, "detail": outcome.detail, "note": note,
            "description": fuzzgen.describe(case.spec).splitlines(), "exact": case.exact, "approx": case.approx,
            "samples": len(case.feeds["x"]), "spec": case.spec}
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return path
