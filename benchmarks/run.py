"""Run ``qcc bench`` (in-process, through :mod:`qcc.bench`) on every benchmark model and write
``benchmarks/results.md`` (and ``results.json`` with every number).

    python benchmarks/run.py            # full: every model, up to 500 timed calls per engine (~3-10 min)
    python benchmarks/run.py --quick    # a subset with few calls (~1-2 min): a smoke run
    python benchmarks/run.py --only CNV # models whose name contains a string
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402  (benchmarks/models.py)

from qcc import bench  # noqa: E402

QUICK_LAYERS = ("conv3x3 128@16x16", "fc 1024x1024")
QUICK_PRECISIONS = ("w1a1", "w1a2", "w8a8")
QUICK_NETWORKS = ("CNV w1a1", "ResNet-8ish w2a2")
LAYER_BREAKDOWN = ("CNV w1a1",)  # networks whose per-layer table goes into results.md
EFFICIENCY = ("w1a1", "w1a2", "w2a2")  # single layers profiled for their fraction of the popcount ceiling
MIN_K_BITS = 1152  # the efficiency goal applies to layers with K >= 1152 bits


def select(quick: bool, only: str | None) -> list[tuple[str, str, object]]:
    """(group, name, model) for the run."""
    out = []
    for name, m in models.layer_models().items():
        prec = name.rsplit(" ", 1)[1]
        if quick and not (name.startswith(QUICK_LAYERS) and prec in QUICK_PRECISIONS):
            continue
        out.append((f"single layers, {prec}", name, m))
    for name, m in models.network_models().items():
        if quick and name not in QUICK_NETWORKS:
            continue
        out.append(("networks", name, m))
    return [t for t in out if not only or only.lower() in t[1].lower()]


def _us(v) -> str:
    return bench.fmt_us(v, "n/a")


_x = bench.fmt_ratio


def _kb(b: int) -> str:
    return f"{b / 1024:,.1f} KiB" if b < 1 << 20 else f"{b / (1 << 20):,.2f} MiB"


def markdown(results: list[dict], mode: str, seconds: float) -> str:
    first = results[0]
    m = first["machine"]
    meth = first["method"]
    lines = ["# qcc benchmark results", "",
             f"Machine: {m['cpu']}, {m['cpus']} cpus ({m['machine']}); qcc ISA `{m['qcc_isa']}`; onnxruntime "
             f"{m['onnxruntime']} with {m['threads']} intra-op thread, `ORT_ENABLE_ALL`; Python {m['python']}.",
             f"Mode: {mode}: {meth['warmup']} warm-up calls, then up to {meth['runs']} timed calls per engine in "
             f"{meth['rounds']} alternating rounds (at most {meth['max_seconds']:g} s per engine); batch 1; "
             f"whole run {seconds / 60:.1f} min. Times are medians of `session.run` calls in microseconds "
             "(p10-p90 in results.json).",
             "",
             "Speedups are ORT median / qcc median: above 1 qcc is faster. *ORT fp32* runs the float twin "
             "(weights dequantized, activation quantizers removed), *ORT int8* the float twin quantized by "
             "`onnxruntime.quantization.quantize_static` (QDQ, u8 activations, per-channel s8 weights). "
             "qcc's time includes the model's input quantizer (every single-layer model quantizes its float "
             "input first) and the Python/cffi call. *weights qcc* are the layer weights as the benchmarked "
             "bundle stores them (its ISA's layout), *fp32* the float twin's initializers.", ""]
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["group"], []).append(r)
    for group, rows in groups.items():
        lines += [f"## {group}", "",
                  "| model | qcc us | ORT fp32 us | ORT int8 us | ORT fp32 / qcc | ORT int8 / qcc | weights qcc / fp32 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            e, ratio, w = r["engines"], r["ratios"], r["weights"]
            wt = f"{_kb(w['qcc_compiled_bytes'])} / {_kb(w.get('fp32_twin_bytes', w['fp32_layer_weight_bytes']))}"
            lines.append(f"| {r['name']} | {_us(e['qcc'].get('median_us'))} | {_us(e['ort_fp32'].get('median_us'))} | "
                         f"{_us(e['ort_int8'].get('median_us'))} | {_x(ratio['ort_fp32/qcc'])} | "
                         f"{_x(ratio['ort_int8/qcc'])} | {wt} |")
        lines.append("")
        for r in rows:
            for key, e in r["engines"].items():
                if not e["available"]:
                    lines.append(f"- {r['name']}: {e['label']} unavailable: {e['reason']}")
        if any(not e["available"] for r in rows for e in r["engines"].values()):
            lines.append("")
    eff = [(r, L) for r in results if r["group"].startswith("single") for L in r.get("layers", [])
           if "ceiling_fraction" in L]
    if eff:
        ceiling = next(r["popcount_ceiling_gbit_macs_per_s"] for r, _ in eff)
        lines += ["## Bit-plane layers against the popcount ceiling", "",
                  f"The bare XNOR-popcount tile (the kernels' own inner loop, operands in L1) reaches "
                  f"{ceiling:.0f} G bit-MACs/s in this run. Each layer kernel's bit-MACs (MACs x plane pairs) per "
                  f"second, from the profiling build (im2col and output transform included), as a fraction of it; "
                  f"the goal is >= 70 % for K >= {MIN_K_BITS} bits.", "",
                  "| model | kernel | K bits | G bit-MACs/s | of ceiling |", "|---|---|---:|---:|---:|"]
        for r, L in eff:
            mark = "" if L["k_bits"] >= MIN_K_BITS else " (K below goal range)"
            lines.append(f"| {r['name']} | {L['kernel']} | {L['k_bits']:,} | {L['gbit_macs_per_s']:.0f} | "
                         f"{L['ceiling_fraction']:.0%}{mark} |")
        lines.append("")
    for r in results:
        if r.get("layers") and r["name"] in LAYER_BREAKDOWN:
            lines += [f"## Per layer: {r['name']} (qcc profiling build, per call)", "",
                      "| node | kernel | share | us |", "|---|---|---:|---:|"]
            for L in r["layers"]:
                lines.append(f"| `{L['name']}` | {L['kernel']} | {L['share']:.1%} | {_us(L['us'])} |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a subset with few timed calls")
    p.add_argument("--only", help="only models whose name contains this")
    p.add_argument("--out", default=str(HERE / "results.md"))
    p.add_argument("--json", default=None, help="default: results.json next to --out")
    p.add_argument("--target", default="native")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    runs, warmup, max_seconds = (20, 3, 1.0) if args.quick else (500, 20, 5.0)
    chosen = select(args.quick, args.only)
    if not chosen:
        print("no model matches", file=sys.stderr)
        return 2
    start = time.monotonic()
    results = []
    for i, (group, name, model) in enumerate(chosen):
        t0 = time.monotonic()
        profile = name in LAYER_BREAKDOWN or (group.startswith("single") and name.endswith(EFFICIENCY))
        r = bench.run_bench(model, target=args.target, threads=args.threads, runs=runs, warmup=warmup,
                            max_seconds=max_seconds, layers=profile, quiet=not sys.stderr.isatty())
        r.update(group=group, name=name, model=name)
        results.append(r)
        e = r["engines"]
        print(f"[{i + 1}/{len(chosen)}] {name}: qcc {_us(e['qcc'].get('median_us'))} us, "
              f"ORT fp32 {_us(e['ort_fp32'].get('median_us'))} us ({_x(r['ratios']['ort_fp32/qcc'])}), "
              f"ORT int8 {_us(e['ort_int8'].get('median_us'))} us ({_x(r['ratios']['ort_int8/qcc'])}) "
              f"[{time.monotonic() - t0:.0f} s]", flush=True)
        del model
        gc.collect()
    seconds = time.monotonic() - start
    mode = "quick" if args.quick else "full"
    out = Path(args.out)
    out.write_text(markdown(results, mode, seconds) + "\n")
    js = Path(args.json) if args.json else out.with_suffix(".json")
    js.write_text(json.dumps({"mode": mode, "seconds": seconds, "results": results}, indent=1) + "\n")
    print(f"wrote {out} and {js} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
