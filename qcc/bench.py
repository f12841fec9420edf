"""``qcc bench``: qcc against onnxruntime on one model, in one process, as ratios.

Three engines run the same batch-1 input:

* ``qcc``: :class:`qcc.InferenceSession` of the quantized model (its time includes the input
  quantizer and the Python/cffi call);
* ``ort_fp32``: onnxruntime on the float twin (:func:`qcc.frontend.twins.float_twin`: weights
  dequantized, activation quantizers removed);
* ``ort_int8``: onnxruntime on the QDQ twin (:func:`qcc.frontend.twins.qdq_twin`: the float
  twin quantized by ``onnxruntime.quantization.quantize_static``), or unavailable with a reason.

onnxruntime sessions use ``ORT_ENABLE_ALL`` (a speed comparison, not the oracle), sequential
execution, ``threads`` intra-op threads and one inter-op thread. Each engine gets ``warmup``
untimed calls, then ``runs`` timed calls (``time.perf_counter`` around each call) split over
``rounds`` rounds that alternate the engines, so slow drift of a shared machine hits all of
them alike; each engine stops early after ``max_seconds`` of timed calls. Statistics are over
all samples: median, p10, p90. Ratios are ``ORT median / qcc median`` (> 1: qcc is faster).
"""
from __future__ import annotations

import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from qcc.errors import QccError

__all__ = ["ENGINES", "Engine", "measure", "stats", "machine_info", "load_inputs", "run_bench", "report",
           "write_json", "write_png"]

ENGINES = {"qcc": "qcc", "ort_fp32": "onnxruntime fp32 (float twin)", "ort_int8": "onnxruntime int8 (QDQ twin)"}
QUANTIZER_NOTE = ("qcc's time includes quantizing the float input (the model's input quantizer) and the "
                  "Python/cffi call; the float twin has no quantizers")


@dataclass
class Engine:
    name: str
    label: str
    fn: Callable[[], object] | None = None
    reason: str | None = None  # why the engine is unavailable
    samples: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- measurement
def stats(samples: list[float]) -> dict:
    """Median, p10, p90, mean and min of ``samples`` (seconds), in microseconds."""
    a = np.asarray(samples, np.float64) * 1e6
    if not a.size:
        return {"runs": 0}
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return {"runs": int(a.size), "median_us": float(med), "p10_us": float(p10), "p90_us": float(p90),
            "mean_us": float(a.mean()), "min_us": float(a.min())}


class _Progress:
    """A one-line ``\\r`` counter on stderr (only when it is a terminal and not quiet)."""

    def __init__(self, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self.last > 0.1:
            self.last = now
            self.stream.write(f"\r\033[K{text}")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def measure(engines: list[Engine], runs: int = 200, warmup: int = 10, max_seconds: float = 10.0,
            rounds: int = 5, progress: _Progress | None = None) -> list[Engine]:
    """Time every available engine: ``warmup`` untimed calls each, then ``rounds`` rounds that
    each time every engine for ``runs / rounds`` calls (an engine stops after ``max_seconds``
    of timed calls in all). Fills ``engine.samples`` (seconds) and returns ``engines``."""
    live = [e for e in engines if e.fn is not None]
    progress = progress or _Progress(False)
    for e in live:
        for i in range(warmup):
            progress.show(f"qcc bench: warm-up {e.name} {i + 1}/{warmup}")
            e.fn()
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    spent = {e.name: 0.0 for e in live}
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r, n in enumerate(per_round):
            for e in live:
                budget = max_seconds * (r + 1) / rounds  # the cumulative budget so far: even rounds
                fn, out = e.fn, e.samples
                for i in range(n):
                    if spent[e.name] >= budget:
                        break
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    out.append(dt)
                    spent[e.name] += dt
                    progress.show(f"qcc bench: round {r + 1}/{rounds} {e.name} {len(out)}/{runs}")
    finally:
        if gc_was:
            gc.enable()
        progress.done()
    return engines


# ----------------------------------------------------------------------------- set-up
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(isa: str | None = None, threads: int = 1) -> dict:
    import onnxruntime as ort

    return {"cpu": _cpu_model(), "cpus": os.cpu_count(), "machine": platform.machine(), "qcc_isa": isa,
            "onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "threads": threads}


def load_inputs(specs, inputs=None, seed: int = 0) -> tuple[dict[str, np.ndarray], str, dict | None]:
    """Batch-1 feeds for the inputs ``specs`` (NodeArgs): the first sample of each array of an
    .npz (by name, else in order), a dict of arrays, or random normal (seeded). Returns the
    feeds, where they come from, and all samples of the given arrays (None when random)."""
    if inputs is None:
        rng = np.random.default_rng(seed)
        return {s.name: rng.standard_normal([1, *s.shape[1:]]).astype(np.float32) for s in specs}, \
            f"random normal, seed {seed}", None
    if isinstance(inputs, dict):
        data, where = inputs, "<dict>"
        files = list(inputs)
    else:
        where = os.fspath(inputs)
        try:
            data = np.load(where)
            files = list(data.files)
        except Exception as e:
            raise QccError(f"{where}: cannot read inputs ({type(e).__name__}); expected an .npz file")
    feeds, every = {}, {}
    for i, s in enumerate(specs):
        key = s.name if s.name in files else (files[i] if i < len(files) else None)
        if key is None:
            raise QccError(f"{where}: no array for input '{s.name}' (has {files})")
        a = np.asarray(data[key])
        if a.ndim != len(s.shape) or tuple(a.shape[1:]) != tuple(s.shape[1:]) or not len(a):
            raise QccError(f"{where}: array '{key}' has shape {list(a.shape)}; expected {s.shape}")
        feeds[s.name] = np.ascontiguousarray(a[:1], np.float32)
        every[s.name] = a
    return feeds, f"first sample of {os.path.basename(where)}", every


def _random_feeds(specs, samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{s.name: rng.standard_normal([1, *s.shape[1:]]).astype(np.float32) for s in specs} for _ in range(samples)]


def _ort_session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (f"{type(e).__name__}: {text}" if not isinstance(e, QccError) else text)[:300]


def _ort_engine(name: str, make_model, threads: int, feeds) -> tuple[Engine, object]:
    """An onnxruntime engine, or an unavailable one with the reason (never raises)."""
    try:
        model = make_model()
        sess = _ort_session(model, threads)
        sess.run(None, feeds)  # fails here rather than in the timing loop
        return Engine(name, ENGINES[name], fn=lambda: sess.run(None, feeds)), model
    except Exception as e:
        return Engine(name, ENGINES[name], reason=_one_line(e)), None


def _weight_bytes(session, twin) -> dict:
    """The layer weights as the benchmarked bundle stores them (its ISA's layout), their fp32
    size, and every initializer of the float twin."""
    from qcc.codegen.inspect import layer_info
    from qcc.codegen.size import weight_bytes

    fp32 = sum(layer_info(n, session.lowered.tensors).fp32_bytes for n in session.lowered.nodes if n.op == "layer")
    out = {"qcc_compiled_bytes": weight_bytes(session.sources.c), "fp32_layer_weight_bytes": fp32}
    if twin is not None:
        from onnx import numpy_helper
        out["fp32_twin_bytes"] = int(sum(numpy_helper.to_array(t).nbytes for t in twin.graph.initializer))
    return out


# ----------------------------------------------------------------------------- the ceiling
def _pop(a: np.ndarray) -> int:
    return int(np.unpackbits(a.view(np.uint8)).sum())


@dataclass(frozen=True)
class _Tile:
    """An ISA's bit-plane GEMM tile, as the ceiling calls it: `rows` rows by `cols` columns of
    `words` 64-bit words each (qcc_ceiling_row, qcc_ceiling_w), every operand in L1."""
    template: str   # renders the tile's functions, named qcc_ceiling_*
    rows: int
    cols: int
    words: int
    prepare: str    # C run once before the loop
    call: str       # C statement: one call of the tile, adding two of its counts to `sum`
    target: str     # the C target attribute
    expect: Callable[[np.ndarray, np.ndarray], int]  # those two counts, from the row and weight words


CEILING_TILES = {
    # the table tile: 2 rows x 128 columns of 12 words (its split weights 24 KiB), the weights
    # stored split by blocks of 32 columns (wc) as a layer's are
    "avx2": _Tile('{% import "popcount_avx2.c.j2" as p %}{{ p.lut_index("qcc_ceiling", "xor") }}'
                  '{{ p.lut_tile("qcc_ceiling", "xor") }}', 2, 128, 12,
                  "static uint8_t wc[4 * 96 * 32], ws[4 * 64 * 96] __attribute__((aligned(32))); static uint16_t ix[2][2 * 96];"
                  " for (int k = 0; k < 128; k++) for (int b = 0; b < 96; b++)"
                  " wc[(k / 32 * 96 + b) * 32 + k % 32] = ((const uint8_t *)qcc_ceiling_w)[k * 96 + b];"
                  " qcc_ceiling_lsplit(wc, 96 * 32, 96, 4, ws);"
                  " qcc_ceiling_lindex(qcc_ceiling_row, 12, 1, 96, ix[0]); qcc_ceiling_lindex(qcc_ceiling_row + 12, 12, 1, 96, ix[1]);",
                  "{ int32_t acc[256] = {0}; qcc_ceiling_ltile(4, ix[0], 2 * 96, 192, ws, &qcc_lut_xor[0][0], 63, 0, acc);"
                  " sum += acc[0] + acc[255]; }", "avx2,popcnt",
                  lambda r, w: _pop(r[:12] ^ w[:12]) + _pop(r[12:] ^ w[127 * 12:])),
    # the vpopcntq tile: 1 row x 8 columns interleaved word by word, of 64 words
    "avx512": _Tile('{% import "popcount_avx512.c.j2" as p %}{{ p.ptile("qcc_ceiling", 1, 1, "xor") }}', 1, 8, 64, "",
                    "{ int32_t raw[8]; _mm256_storeu_si256((__m256i *)raw, _mm512_cvtepi64_epi32("
                    "qcc_ceiling_ptile1x1(qcc_ceiling_row, 64, qcc_ceiling_w, 64))); sum += raw[0] + raw[7]; }",
                    "avx2,popcnt,avx512f,avx512bw,avx512vl,avx512vpopcntdq",
                    lambda r, w: _pop(r ^ w[0::8]) + _pop(r ^ w[7::8])),
}
_ceiling_cache: dict[str, float] = {}
_ROW_MUL, _W_MUL = 0x9e3779b97f4a7c15, 0xc2b2ae3d27d4eb4f  # the operands: word i is MUL * (i + 1), (i + 7)


def popcount_ceiling(isa: str, seconds: float = 0.3) -> float | None:
    """Bit-MACs per second of the bare XNOR-popcount microkernel on L1-resident operands.

    It is the bit-plane GEMMs' own inner tile for the ISA (avx2: popcount_avx2.c.j2's table
    tile, 2 rows x 128 columns, the weights split and the rows' index bytes made beforehand;
    avx512: popcount_avx512.c.j2's vpopcntq tile, 1 row x 8 interleaved columns), called in a
    loop with nothing else: the most a binary layer can reach here. Its counts are checked once
    against numpy. Measured once per process; None for ISAs without a SIMD tile."""
    tile = CEILING_TILES.get(isa)
    if tile is None:
        return None
    if isa in _ceiling_cache:
        return _ceiling_cache[isa]
    import cffi

    from qcc.codegen.build import CFLAGS, cache_dir
    from qcc.codegen.render import RUNTIME_DIR, environment

    nrow, nw = tile.rows * tile.words, tile.cols * tile.words
    source = f"""
#include "qcc_rt.h"
#include <immintrin.h>
{environment().from_string(tile.template).render()}
static uint64_t qcc_ceiling_row[{nrow}], qcc_ceiling_w[{nw}];
__attribute__((target("{tile.target}")))
int64_t qcc_ceiling_run(int64_t reps) {{
    int64_t sum = 0;
    for (int i = 0; i < {nrow}; i++) qcc_ceiling_row[i] = {_ROW_MUL:#x}ULL * (uint64_t)(i + 1);
    for (int i = 0; i < {nw}; i++) qcc_ceiling_w[i] = {_W_MUL:#x}ULL * (uint64_t)(i + 7);
    {tile.prepare}
    for (int64_t r = 0; r < reps; r++) {{
        {tile.call}
        __asm__ volatile("" ::: "memory");  /* every call runs (memory may have changed), yet calls stay
                                               independent, as a layer's rows are */
    }}
    return sum;
}}
"""
    ffi = cffi.FFI()
    ffi.cdef("int64_t qcc_ceiling_run(int64_t reps);")
    import hashlib
    module = "_qcc_ceiling_" + hashlib.sha256(source.encode()).hexdigest()[:16]
    tmp = cache_dir() / module
    tmp.mkdir(parents=True, exist_ok=True)
    ffi.set_source(module, source, include_dirs=[str(RUNTIME_DIR)], extra_compile_args=CFLAGS)
    so = ffi.compile(tmpdir=str(tmp), verbose=False)
    import importlib.util
    spec = importlib.util.spec_from_file_location(module, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = np.arange(1, nrow + 1, dtype=np.uint64) * np.uint64(_ROW_MUL)
    w = np.arange(7, nw + 7, dtype=np.uint64) * np.uint64(_W_MUL)
    if mod.lib.qcc_ceiling_run(1) != tile.expect(row, w):
        raise RuntimeError(f"the {isa} popcount ceiling's tile miscounts")
    bits_per_call = tile.rows * tile.cols * tile.words * 64
    reps = 1000
    mod.lib.qcc_ceiling_run(reps)  # warm up
    while True:
        t0 = time.perf_counter()
        mod.lib.qcc_ceiling_run(reps)
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            break
        reps *= 4
    best = max(reps * bits_per_call / _timed(mod.lib.qcc_ceiling_run, reps) for _ in range(3))
    _ceiling_cache[isa] = best
    return best


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _layers(model, target: str, feeds, runs: int, warmup: int) -> list[dict]:
    """Per-kernel-call times of a profiling build, per call; bit-plane layers also get their
    rate as a fraction of the bare popcount ceiling measured in the same process."""
    from qcc import InferenceSession
    from qcc.codegen.inspect import layer_info

    sess = InferenceSession(model, target=target, profile=True)
    for _ in range(warmup):
        sess.run(None, feeds)
    sess.layer_times()  # drop the warm-up
    runs = max(1, runs)
    for _ in range(runs):
        sess.run(None, feeds)
    times = sess.layer_times()
    total = sum(t for _, t in times) or 1.0
    ceiling = popcount_ceiling(sess.isa)
    rows = []
    for (n, t), variant in zip(times, sess.sources.variants):
        kernel = n.op
        row = {"name": n.name, "op": n.op, "variant": variant, "us": t / runs * 1e6, "share": t / total}
        if n.op == "layer":
            info = layer_info(n, sess.lowered.tensors)
            kernel = f"layer/{info.kind}"
            bm = info.bit_macs
            if bm and t > 0:
                co, kh, kw, cig = n.attrs.weight.shape
                row.update(bit_macs=bm, k_bits=kh * kw * cig, gbit_macs_per_s=bm / (t / runs) / 1e9)
                if ceiling:
                    row["ceiling_fraction"] = bm / (t / runs) / ceiling
        family, _, isa = variant.partition(" ")
        row["kernel"] = kernel if not variant else f"{kernel} ({isa})" if family == n.op else f"{kernel} ({variant})"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the benchmark
def run_bench(model, target: str = "native", threads: int = 1, runs: int = 200, warmup: int = 10,
              max_seconds: float = 10.0, rounds: int = 5, inputs=None, seed: int = 0, layers: bool = False,
              int8: bool = True, calibration_samples: int = 16, quiet: bool = True, progress_stream=None) -> dict:
    """Benchmark ``model`` (path or ModelProto); returns a JSON-ready dict (see ``report``)."""
    from qcc import InferenceSession
    from qcc.frontend import twins
    from qcc.frontend.onnx import load_model

    if runs < 1 or warmup < 0 or threads < 1 or max_seconds <= 0 or rounds < 1:
        raise QccError("--runs, --threads and --rounds must be >= 1, --warmup >= 0, --max-seconds > 0")
    progress = _Progress(not quiet, progress_stream)
    progress.show("qcc bench: compiling with qcc", force=True)
    proto = load_model(model)
    session = InferenceSession(proto, target=target)
    feeds, source, given = load_inputs(session.get_inputs(), inputs, seed)
    session.run(None, feeds)
    qcc = Engine("qcc", f"qcc ({session.isa})", fn=lambda: session.run(None, feeds))

    progress.show("qcc bench: float twin", force=True)
    fp32, twin = _ort_engine("ort_fp32", lambda: twins.float_twin(proto), threads, feeds)
    if not int8:
        q8 = Engine("ort_int8", ENGINES["ort_int8"], reason="disabled (--no-int8)")
    elif twin is None:
        q8 = Engine("ort_int8", ENGINES["ort_int8"], reason=f"no float twin: {fp32.reason}")
    else:
        progress.show("qcc bench: QDQ twin (onnxruntime.quantization)", force=True)
        n = min(calibration_samples, min(len(a) for a in given.values())) if given else 0
        if n:  # calibrate on the given samples
            calib = [{k: np.asarray(a[i:i + 1], np.float32) for k, a in given.items()} for i in range(n)]
        else:
            calib = _random_feeds(session.get_inputs(), calibration_samples, seed + 1)
        q8, _ = _ort_engine("ort_int8", lambda: twins.qdq_twin(twin, calib), threads, feeds)

    engines = measure([qcc, fp32, q8], runs=runs, warmup=warmup, max_seconds=max_seconds, rounds=rounds,
                      progress=progress)
    result = {
        "model": os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<model>",
        "inputs": {k: list(v.shape) for k, v in feeds.items()},
        "input_source": source,
        "machine": machine_info(session.isa, threads),
        "method": {"warmup": warmup, "runs": runs, "rounds": rounds, "max_seconds": max_seconds,
                   "timer": "time.perf_counter around each run() call", "batch": 1,
                   "ort_graph_optimization": "ORT_ENABLE_ALL", "target": target},
        "engines": {},
        "ratios": {},
        "weights": _weight_bytes(session, twin),
        "notes": [QUANTIZER_NOTE],
    }
    for e in engines:
        entry = {"label": e.label, "available": e.fn is not None}
        if e.fn is None:
            entry["reason"] = e.reason
        else:
            entry.update(stats(e.samples))
        result["engines"][e.name] = entry
    q = result["engines"]["qcc"].get("median_us")
    for name in ("ort_fp32", "ort_int8"):
        other = result["engines"][name].get("median_us")
        result["ratios"][f"{name}/qcc"] = other / q if other and q else None
    if layers:
        progress.show("qcc bench: profiling build (--layers)", force=True)
        result["layers"] = _layers(proto, target, feeds, min(runs, 200), warmup)
        ceiling = popcount_ceiling(session.isa)
        if ceiling:
            result["popcount_ceiling_gbit_macs_per_s"] = ceiling / 1e9
        progress.done()
    return result


# ----------------------------------------------------------------------------- output
def fmt_us(v, missing: str = "-") -> str:
    """Microseconds for a table: one decimal below 1000."""
    if v is None:
        return missing
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def fmt_ratio(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def report(result: dict) -> str:
    """The human-readable report of a :func:`run_bench` result."""
    m = result["machine"]
    shapes = ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in result["inputs"].items())
    lines = [f"model: {result['model']}",
             f"input: {shapes} ({result['input_source']}), batch 1",
             f"machine: {m['cpu']}, {m['cpus']} cpus; qcc isa {m['qcc_isa']}; onnxruntime {m['onnxruntime']}, "
             f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}, ORT_ENABLE_ALL",
             f"method: {result['method']['warmup']} warm-up, then up to {result['method']['runs']} timed calls "
             f"per engine in {result['method']['rounds']} alternating rounds (<= {result['method']['max_seconds']:g} s each)",
             ""]
    rows = [("engine", "median us", "p10 us", "p90 us", "runs")]
    for e in result["engines"].values():
        if e["available"]:
            rows.append((e["label"], fmt_us(e["median_us"]), fmt_us(e["p10_us"]), fmt_us(e["p90_us"]), str(e["runs"])))
        else:
            rows.append((e["label"], "unavailable", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip())
    for e in result["engines"].values():
        if not e["available"]:
            lines.append(f"  {e['label']}: unavailable: {e['reason']}")
    r = result["ratios"]
    lines += ["", f"speedup (ORT median / qcc median, > 1: qcc faster): ORT fp32 / qcc = {fmt_ratio(r['ort_fp32/qcc'])}, "
                  f"ORT int8 / qcc = {fmt_ratio(r['ort_int8/qcc'])}"]
    w = result["weights"]
    line = f"weights: qcc {w['qcc_compiled_bytes']:,} bytes as its {result['machine']['qcc_isa']} bundle stores them"
    if "fp32_twin_bytes" in w:
        ratio = w["fp32_twin_bytes"] / w["qcc_compiled_bytes"] if w["qcc_compiled_bytes"] else 0.0
        line += f" vs fp32 twin {w['fp32_twin_bytes']:,} bytes ({ratio:.1f}x smaller)"
    line += f"; the same layer weights in fp32: {w['fp32_layer_weight_bytes']:,} bytes"
    lines.append(line)
    lines += [f"note: {n}" for n in result["notes"]]
    if "layers" in result:
        lines += ["", "per layer (profiling build, per call):"]
        rows = [("node", "kernel", "share", "us", "of ceiling")]
        for L in result["layers"]:
            eff = f"{L['ceiling_fraction']:.0%}" if "ceiling_fraction" in L else ""
            rows.append((L["name"], L["kernel"], f"{L['share']:.1%}", fmt_us(L["us"]), eff))
        total = sum(L["us"] for L in result["layers"])
        rows.append(("total (kernels only)", "", "100.0%", fmt_us(total), ""))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            lines.append(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2].rjust(widths[2])}  "
                         f"{r[3].rjust(widths[3])}  {r[4].rjust(widths[4])}".rstrip())
        if "popcount_ceiling_gbit_macs_per_s" in result:
            lines.append(f"ceiling: the bare XNOR-popcount tile reaches {result['popcount_ceiling_gbit_macs_per_s']:.0f} "
                         f"G bit-MACs/s here; 'of ceiling' is each bit-plane layer's bit-MACs (x plane pairs) per second "
                         f"as a fraction of it")
    return "\n".join(lines)


def write_json(result: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


def require_matplotlib():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise QccError("--png needs matplotlib, which is not installed (pip install 'qcc[bench]' or pip install matplotlib)")
    return plt


def write_png(result: dict, path) -> None:
    """A bar chart of the median time per engine (p10..p90 whiskers), and the per-layer times
    when the result has them."""
    plt = require_matplotlib()
    engines = [e for e in result["engines"].values() if e["available"]]
    has_layers = bool(result.get("layers"))
    fig, axes = plt.subplots(1, 2 if has_layers else 1, figsize=(12 if has_layers else 6, 4), squeeze=False)
    ax = axes[0][0]
    med = [e["median_us"] for e in engines]
    err = [[m - e["p10_us"] for m, e in zip(med, engines)], [e["p90_us"] - m for m, e in zip(med, engines)]]
    ax.bar([e["label"].replace(" (", "\n(") for e in engines], med, yerr=err, capsize=4,
           color=["tab:green", "tab:blue", "tab:orange"][:len(engines)])
    ax.set_ylabel("median time per call (us), p10..p90")
    ax.set_title(os.path.basename(result["model"]))
    if has_layers:
        ax2 = axes[0][1]
        rows = result["layers"]
        ax2.barh([f"{r['name'][-32:]} ({r['kernel']})" for r in rows][::-1], [r["us"] for r in rows][::-1])
        ax2.set_xlabel("us per call (profiling build)")
        ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
