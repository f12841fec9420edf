"""Lowered graph -> ``<name>.c`` and ``<name>.h`` through Jinja2 templates.

Each kernel op becomes one call of a kernel variant (:mod:`qcc.codegen.kernels`) with its
constants as ``static const`` arrays (they land in flash) and its geometry as a
``static const`` struct; the arena offsets come from ``plan_memory``. Floats are written
as C99 hex literals, so the C constants are the float32 values bit for bit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

import qcc
from qcc.codegen.kernels import EW_ISAS, KERNEL_DIR, KMAJOR_MAX_C, MAX_K, MAX_K2, MAX_TAPS, RUNS, KernelSpec, find, variants
from qcc.errors import QccError
from qcc.ir.graph import Graph, Node
from qcc.ir.kernels_ref import pack_bits, plane_words, words

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
F32 = np.float32
SIMD_MAX_THRESHOLDS = 15  # up to 4-bit outputs, SIMD output transforms compare all thresholds (thr_by_level)
GUESS_MIN_THRESHOLDS = SIMD_MAX_THRESHOLDS + 1  # from here on, the count starts from a guess (_threshold_guesses)
SIMD_ISAS = ("avx2", "avx512", "neon")  # ISAs whose output transforms read the thresholds level-major (thr_by_level)
X86_ISAS = ("avx2", "avx512")  # ISAs whose output transforms probe only inside the guess's probe window
CTYPES = {"f32": "float", "i16": "int16_t", "bits": "uint64_t"}
ROUNDING = {"ROUND": "QCC_ROUND", "CEIL": "QCC_CEIL", "FLOOR": "QCC_FLOOR", "UP": "QCC_UP",
            "DOWN": "QCC_DOWN", "HALF_UP": "QCC_HALF_UP", "HALF_DOWN": "QCC_HALF_DOWN"}


def cfloat(v) -> str:
    f = float(np.float32(v))
    if not np.isfinite(f):
        raise QccError(f"non-finite constant {f} cannot be emitted")
    if f == 0.0 and np.signbit(f):  # int(-0.0) is 0: keep the sign (x + -0.0 and x * -0.0 depend on it)
        return "-0.0f"
    return f"{f.hex()}f" if f != int(f) or abs(f) >= 1 << 24 else f"{int(f)}.0f"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([str(KERNEL_DIR), str(RUNTIME_DIR)]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["cfloat"] = cfloat
    return env


@dataclass
class Array:
    name: str
    ctype: str
    values: list[str]
    comment: str = ""


@dataclass
class Call:
    comment: str
    lines: list[str]


@dataclass
class Unit:
    """Everything model.c needs, gathered from the graph."""

    name: str
    isa: str = "scalar"
    arrays: list[Array] = field(default_factory=list)
    structs: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    kernels: dict[str, KernelSpec] = field(default_factory=dict)

    def array(self, name: str, ctype: str, data: np.ndarray, comment: str = "") -> str:
        flat = np.asarray(data).reshape(-1)
        if ctype == "float":
            vals = [cfloat(v) for v in flat]
        elif ctype == "uint64_t":
            vals = [f"0x{int(v):016x}u" for v in flat]
        else:
            vals = [str(int(v)) for v in flat]
        self.arrays.append(Array(name, ctype, vals or ["0"], comment))
        return name

    def use(self, spec: KernelSpec) -> str:
        self.kernels[spec.name] = spec
        return spec.name

    def kernel(self, key: tuple[str, str]) -> str:
        """The variant of (family, operands) for this unit's ISA, else the scalar one."""
        return self.use(find(*key, isa=self.isa))


def c_ident(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", s)
    return s if re.match(r"[A-Za-z_]", s) else "_" + s


# ---- pointers ------------------------------------------------------------------------

class _Ptr:
    def __init__(self, graph: Graph):
        self.g = graph
        self.arena = graph.meta["arena"]
        self.root = graph.meta["arena_root"]
        self.in_off = {}
        off = 0
        for name in graph.inputs:
            self.in_off[name] = off
            off += graph.tensors[name].size

    def __call__(self, name: str, const: bool = False) -> str:
        t = self.g.tensors[name]
        ctype = CTYPES[t.dtype]
        q = "const " if const else ""
        r = self.root[name]
        if r in self.in_off:
            return f"(const float *)(input + {self.in_off[r]})" if ctype == "float" else "input"
        if name in self.g.meta["in_output"]:  # a graph output, computed in place (plan_memory)
            return f"({q}float *)(output + {self.g.meta['in_output'][name]})"
        return f"({q}{ctype} *)(A + {self.arena[name]})"


# ---- one emitter per kernel op ----------------------------------------------------------

def _rows(shape) -> int:
    return int(np.prod(shape[:-1]))


def _transpose(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    x, y = p.g.tensors[n.inputs[0]], p.g.tensors[n.outputs[0]]
    to_nhwc = n.attrs.perm == (0, 2, 3, 1)
    nb, c, h, w = x.shape if to_nhwc else y.shape
    fn = u.kernel(("transpose", "nchw2nhwc_f32" if to_nhwc else "nhwc2nchw_f32"))
    return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, {nb}, {c}, {h}, {w});"]


def _quantize(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    a = n.attrs
    x = p.g.tensors[n.inputs[0]]
    c = x.shape[-1]
    mode = {"round": "round", "sign": "sign", "ternary": "ternary", "thresholds": "thr"}[a.mode]
    pre = f"L{i}"
    s_, z_ = (np.asarray(v if v is not None else d, np.float32).reshape(-1) for v, d in ((a.scale, 1.0), (a.zero, 0.0)))
    nparam = max(s_.size, z_.size)  # one value each, or one per channel
    scale = u.array(f"{pre}_scale", "float", np.broadcast_to(s_, (nparam,)))
    zero = u.array(f"{pre}_zero", "float", np.broadcast_to(z_, (nparam,)))
    if a.src == "NCHW":  # sign to bits or round to int16, reading the graph input in its own layout (fuse_layouts)
        nb, c, h, w = x.shape
        fn = u.kernel(("quantize", f"{mode}_{a.out}_nchw"))
        rnd = f", {cfloat(a.clamp[0])}, {cfloat(a.clamp[1])}, {ROUNDING[a.rounding]}, {a.spec.step}" if mode == "round" else ""
        return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, {nb}, {h * w}, {c}, {scale}, {zero}, {nparam}{rnd});"]
    fn = u.kernel(("quantize", f"{mode}_{a.out}"))
    nthr = 0
    thr = "NULL"
    if a.mode == "thresholds":
        # sorted per channel: the count #{j : x >= thr[j]} does not depend on their order, and in
        # order the kernel finds it by bisection (NaN thresholds, never reached, sort last)
        t = np.sort(np.asarray(a.thresholds, np.float32), axis=1)
        nparam, nthr = t.shape
        thr = u.array(f"{pre}_thr", "float", t, "thresholds per channel, ascending")
    return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, {_rows(x.shape)}, {c}, {scale}, {zero}, {nparam}, "
            f"{cfloat(a.clamp[0])}, {cfloat(a.clamp[1])}, {ROUNDING[a.rounding]}, {thr}, {nthr}, {a.spec.lo}, {a.spec.step}, "
            f"{a.spec.bits});"]


def _geom(u: Unit, i: int, n: Node, x, y) -> str:
    a = n.attrs.conv
    nb, h, w, c = x.shape
    _, oh, ow, co = y.shape
    planes = x.quant.bits if x.dtype == "bits" else 1
    name = f"L{i}_geom"
    u.structs.append(f"static const qcc_conv_geom {name} = {{ /* n, h, w, c, oh, ow, co, kh, kw, sh, sw, pt, pl, group, planes */\n"
                     f"    {nb}, {h}, {w}, {c}, {oh}, {ow}, {co}, {a.kernel[0]}, {a.kernel[1]}, "
                     f"{a.strides[0]}, {a.strides[1]}, {a.pads[0]}, {a.pads[1]}, {a.group}, {planes}}};")
    return name


def _transform(u: Unit, pre: str, a) -> str:
    """The layer's output transform as a static const struct; returns its name."""
    if a.thr is None:
        mul = u.array(f"{pre}_mul", "float", a.mul) if a.mul is not None else "NULL"
        bias = u.array(f"{pre}_bias", "float", a.bias) if a.bias is not None else "NULL"
        off = (u.array(f"{pre}_off", "int32_t", a.acc_offset, "accumulator offset of removed constant channels")
               if a.acc_offset is not None else "NULL")
        u.structs.append(f"static const qcc_affine {pre}_out = {{ {mul}, {bias}, {off} }};")
    else:
        t = a.thr
        clipped = np.clip(t.thr, -(1 << 31), (1 << 31) - 1)
        thr = u.array(f"{pre}_thr", "int32_t", clipped, f"thresholds [{t.thr.shape[0]}][{t.thr.shape[1]}] on the accumulator")
        sign = u.array(f"{pre}_sign", "int8_t", t.sign)
        by_level = "NULL"
        if u.isa in SIMD_ISAS and t.thr.shape[1] <= SIMD_MAX_THRESHOLDS:  # compared for 4 channels at once
            by_level = u.array(f"{pre}_thr_by_level", "int32_t", clipped.T,
                               "the thresholds level-major, for the SIMD output transform")
        guess, probe = "NULL, NULL, NULL, NULL", False
        if t.thr.shape[1] >= GUESS_MIN_THRESHOLDS:
            off, f, probe = _threshold_guesses(clipped)
            guess = ", ".join([
                u.array(f"{pre}_guess_off", "int32_t", off, "the threshold count's first guess, (float)(d + off) * f"),
                u.array(f"{pre}_guess_f", "float", f),
                u.array(f"{pre}_ends", "int32_t", clipped[:, [0, -1]].T, "first and last thresholds [2][co]")
                if u.isa in SIMD_ISAS else "NULL",  # the scalar count reads thr[co][0] and thr[co][n-1]
                u.array(f"{pre}_probe_window", "float", _probe_windows(clipped, off, f),
                        "the guess's fractions that need the probe, [lo, hi) [2][co]")
                if probe and u.isa in X86_ISAS else "NULL"])  # read by the x86 output transforms
        u.structs.append(f"static const qcc_thresholds {pre}_out = {{ /* thr, sign, nthr, lo, step, planes, by level, "
                         f"guess off, f, ends, probe window, probe, flips */\n    {thr}, {sign}, {t.thr.shape[1]}, {t.spec.lo}, "
                         f"{t.spec.step}, {t.spec.bits}, {by_level}, {guess}, {probe:d}, {int((t.sign < 0).any())}}};")
    return f"&{pre}_out"


def _threshold_counts(thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel, every d = s - thr[0] inside the thresholds (0 <= d < D_{n-1}, D_j = thr[j] -
    thr[0]) at which the count #{j : d >= D_j} changes or is about to: D_j and D_j - 1. Returns
    (d, count there, whether inside), each (co, 2n)."""
    d = thr - thr[:, :1]
    span = d[:, -1:]
    at = np.stack([np.searchsorted(row, row, side="right") for row in d])      # count(D_j)
    before = np.stack([np.searchsorted(row, row, side="left") for row in d])   # count(D_j - 1)
    return (np.concatenate([d, d - 1], axis=1), np.concatenate([at, before], axis=1),
            np.concatenate([d < span, d >= 1], axis=1))


def threshold_guess(d: np.ndarray, off: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The guess of the count as every variant computes it, (x, k): x = (float)(d + off) * f in
    float32, k = (int32_t)x (d + off >= 0: the truncation is a floor)."""
    x = (d + off).astype(F32) * f.astype(F32)
    return x, x.astype(np.int64)


def _threshold_guesses(thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The first guess of the threshold count for many thresholds (qcc_threshold_count), per
    channel: for thr[0] <= s < thr[n-1], count(s) = #{j : s >= thr[j]} is guessed as
    ``k = (int32_t)((float)(d + off) * f)``, d = s - thr[0], in float32; and whether, in every
    channel, k is the count or one less, so that ``k + (s >= thr[k])`` is the count with no
    search (probe). Returns (off int32, f float32, probe).

    Derivation. k is nondecreasing in d (a rounding is monotone, and so are the product by f > 0
    and the truncation), and so is the count, a step function; so count - 1 <= k <= count holds
    everywhere iff it holds at the ends of every step, d = D_j and D_j - 1 (_threshold_counts).
    In exact arithmetic, with u = 1/f, that is (count - 1) u <= d + off < (count + 1) u at each:
    off in [L(u), H(u)), and H - L is concave in u (a minimum of lines minus a maximum of lines).
    A ternary search finds the u that maximizes it, off is the integer midway and f = 1/u in
    float32; then the float32 guess itself is checked at every end (exactly, as the C computes
    it), with f and off nudged by an ulp or one where the rounding needs it. The slack of one level
    is what folded float32 quantizers need: their thresholds are evenly spaced only up to a
    rounding here and there. The offset is an integer so that the guess is one rounded product
    (no add for a compiler to fuse). A layer with a channel that does not fit (uneven thresholds,
    or steps finer than about 1.3 accumulator units) is searched, from the mean spacing's guess:
    off 0, f = (n - 1) / D_{n-1}, k kept in [1, n - 1]."""
    co, n = thr.shape
    thr = thr.astype(np.int64)
    p, c, ok = _threshold_counts(thr)
    span = (thr[:, -1] - thr[:, 0]).astype(np.float64)
    pf, cf = p.astype(np.float64), c.astype(np.float64)

    def bounds(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.where(ok, (cf - 1) * u[:, None] - pf, -np.inf).max(axis=1),
                np.where(ok, (cf + 1) * u[:, None] - pf, np.inf).min(axis=1))

    mean = np.maximum(span, 1) / (n - 1)
    a, b = mean / 2, mean * 2
    for _ in range(80):  # the bracket shrinks to (2/3)^80 of its width
        m1, m2 = a + (b - a) / 3, b - (b - a) / 3
        up = np.subtract(*bounds(m1)[::-1]) < np.subtract(*bounds(m2)[::-1])
        a, b = np.where(up, m1, a), np.where(up, b, m2)
    u = (a + b) / 2
    lo, hi = (np.where(span > 0, v, 0) for v in bounds(u))  # infinite where no d is inside
    off0, f0 = np.floor((lo + hi) / 2), (1 / u).astype(F32)
    off, f, good = off0.copy(), f0.copy(), span == 0  # one distinct threshold: no s is inside
    for do in (0, 1, -1):
        for ulps in (0, 1, -1, 2, -2):
            fc = f0
            for _ in range(abs(ulps)):
                fc = np.nextafter(fc, F32(np.inf) if ulps > 0 else F32(0))
            oc = off0 + do
            valid = (oc >= 0) & (oc + span < 2 ** 31)  # d + off is an int32
            k = threshold_guess(np.where(ok, p, 0), np.where(valid, oc, 0).astype(np.int64)[:, None], fc[:, None])[1]
            fits = valid & np.where(ok, (k >= c - 1) & (k <= c), True).all(axis=1) & ~good
            off, f, good = np.where(fits, oc, off), np.where(fits, fc, f), good | fits
    if good.all():
        return np.where(span == 0, 0, off).astype(np.int32), np.where(span == 0, F32(0), f).astype(F32), True
    return np.zeros(co, np.int32), ((n - 1) / np.maximum(span, 1)).astype(F32), False


def _probe_windows(thr: np.ndarray, off: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Where the probe of a proved guess (_threshold_guesses) is needed at all: per channel, the
    window [lo, hi) of the guess's fraction x - k (exact in float32) outside which the count is
    known without reading thr[k]: k where x - k < lo, k + 1 where x - k >= hi. Returns (2, co)
    float32: lo, then hi.

    Derivation. Where the guess is k, the count is k + (d >= D_k) (it is k or k + 1), and x - k
    is nondecreasing in d. The d < D_k with guess k end at D_k - 1, if its guess is k (a guess
    there is at most k): hi is just above the largest such fraction over all k. The d >= D_k with
    guess k start at D_k, if its guess is k (at least k): lo is the least such fraction. For
    evenly spaced thresholds the two differ by about their rounding (a few units of d, of a
    spacing of hundreds), so most vectors of outputs need no probe; an exact line leaves none."""
    thr = thr.astype(np.int64)
    d = thr - thr[:, :1]
    j = np.arange(thr.shape[1])[None, :]

    def fraction(dd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, k = threshold_guess(dd, off.astype(np.int64)[:, None], f[:, None])  # d - 1 < 0: masked below
        return x - k.astype(F32), k

    (fb, kb), (fa, ka) = fraction(d - 1), fraction(d)
    below, above = (d >= 1) & (kb == j), (d < d[:, -1:]) & (ka == j)
    hi = np.where(below.any(axis=1), np.nextafter(np.where(below, fb, F32(-1)).max(axis=1), F32(2)), F32(0))
    lo = np.minimum(np.where(above, fa, F32(2)).min(axis=1), F32(1))
    return np.stack([lo, hi]).astype(F32)


def _weight_rows(codes: np.ndarray, planes: int, ps: int) -> np.ndarray:
    """Weight codes (co, kh, kw, ci) as im2col-style rows: (co, planes, ps) words, plane-major,
    each plane one bit stream over (tap, channel), zero padded to ``ps`` words."""
    co = codes.shape[0]
    flat = codes.reshape(co, -1)  # bit t * C + c = channel c of tap t
    segs = [pack_bits(((flat >> q) & 1).astype(np.uint8)) for q in range(planes)]
    return np.stack([np.pad(sg, ((0, 0), (0, ps - sg.shape[1]))) for sg in segs], axis=1)


def _column_blocks(rows: np.ndarray, b: int) -> np.ndarray:
    """Weight rows (co, planes, nw) interleaved by blocks of b columns: (co/b, planes, nw, b),
    the last block padded with zero columns, so that word k of a block's b columns is one vector."""
    co, planes, nw = rows.shape
    padded = np.zeros((-(-co // b) * b, planes, nw), rows.dtype)
    padded[:co] = rows
    return padded.reshape(-1, b, planes, nw).transpose(0, 2, 3, 1)


def _layer(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    a = n.attrs
    x, y = p.g.tensors[n.inputs[0]], p.g.tensors[n.outputs[0]]
    geom = _geom(u, i, n, x, y)
    pre = f"L{i}"
    out = _transform(u, pre, a)
    yp = p(n.outputs[0])
    co, kh, kw, cig = a.weight.shape
    if x.dtype == "bits":
        if kh * kw > MAX_TAPS:
            raise QccError(f"kernel {kh}x{kw} is larger than the bit-plane kernels support ({MAX_TAPS} taps)", node=n.name)
        scratch_off, _ = p.g.meta["scratch"][i]
        col = f"(uint64_t *)(A + {scratch_off})"
        im2col = u.kernel(("im2col", "b64"))
        ps = plane_words(kh * kw, cig)
        im2col_call = f"{im2col}({p(n.inputs[0], True)}, {col}, &{geom}, {ps});"
        codes = a.w_spec.to_code(a.weight)  # (co, kh, kw, ci)
        wplanes = a.w_spec.bits
        binary = a.x_spec.bipolar and a.w_spec.bipolar
        key = ("bgemm", f"pm1xpm1_{a.out}") if binary else ("pgemm", f"planes_{a.out}")
        # the first variant along the ISA's fallbacks that takes these plane counts (the avx512
        # plane GEMM has tiles for the counts the lowering makes: a widened test layer may have more)
        spec = next(s for s in variants(*key, isa=u.isa)
                    if (a.x_spec.bits, wplanes) in s.param("plane_pairs", ((a.x_spec.bits, wplanes),)))
        gemm = u.use(spec)
        rows = _weight_rows(codes, wplanes, ps)
        if spec.param("cblock"):
            b, nb = spec.param("cblock"), 8 * words(kh * kw * cig)
            wt = u.array(f"{pre}_weight", "uint8_t", _column_blocks(rows.view(np.uint8)[:, :, :nb], b),
                         f"weight codes: [{-(-co // b)} blocks of {b} channels][{wplanes} planes][{nb} bytes of "
                         f"{kh}x{kw} taps x {cig} channels as bits][{b} channels]")
        elif spec.param("wblock"):
            b, nw = spec.param("wblock"), words(kh * kw * cig)
            wt = u.array(f"{pre}_weight", "uint64_t", _column_blocks(rows[:, :, :nw], b),
                         f"weight codes: [{-(-co // b)} blocks of {b} channels][{wplanes} planes][{nw} words of "
                         f"{kh}x{kw} taps x {cig} channels as bits][{b} channels]")
        else:
            wt = u.array(f"{pre}_weight", "uint64_t", rows,
                         f"weight codes: [{co}][{wplanes} planes][{kh}x{kw} taps x {cig} channels as bits, {ps} words]")
        if binary:
            wp = u.array(f"{pre}_wpop", "uint16_t", codes.sum(axis=3).reshape(co, kh * kw).T,
                         "+1 weights per tap, tap-major [taps][co], for the padding correction")
            return [im2col_call, f"{gemm}({col}, {wt}, {wp}, &{geom}, {ps}, {out}, {yp});"]
        cwtap = codes.sum(axis=3).reshape(co, kh * kw)
        cws = u.array(f"{pre}_cwsum", "int32_t", cwtap.sum(axis=1), "sum of weight codes per output channel")
        cwt = u.array(f"{pre}_cwtap", "int32_t", cwtap.T,
                      "sum of weight codes per tap, tap-major [taps][co], for the padding correction")
        xs, ws = a.x_spec, a.w_spec
        return [im2col_call, f"{gemm}({col}, {wt}, {cws}, {cwt}, {xs.lo}, {xs.step}, {ws.lo}, {ws.step}, {wplanes}, "
                             f"&{geom}, {ps}, {out}, {yp});"]
    dot = next((s for s in variants("dconv", None, u.isa, out=a.out) if x.dtype == "i16" and _fits_dot(a, s, x.shape, y.shape)),
               None)
    if dot:
        gs, nb = dot.param("group"), dot.nr  # a window row's kw x ci levels padded to groups of gs
        rq, co_pad = -(-kw * cig // gs), -(-co // nb) * nb
        kq = kh * rq
        wk = np.zeros((kh, rq * gs, co_pad), np.int64)
        wk[:, :kw * cig, :co] = a.weight.transpose(1, 2, 3, 0).reshape(kh, kw * cig, co)
        # blocks of nb channels, each contiguous: a tile streams its weights in order
        wt = u.array(f"{pre}_weight", f"int{dot.param('wbits')}_t", wk.reshape(kq, gs, co_pad // nb, nb).transpose(2, 0, 3, 1),
                     f"weight levels k-major [{co_pad // nb} blocks][{kh} window rows x {rq} groups of (kx, ci)]"
                     f"[{nb} channels][{gs}]")
        acc0 = u.array(f"{pre}_acc0", "int32_t", a.x_spec.lo * wk.sum(axis=(0, 1)),
                       "input lo x the sum of the weights, per output channel: where the accumulators start")
        return [f"{u.use(dot)}({p(n.inputs[0], True)}, {wt}, {acc0}, &{geom}, {kq}, {a.x_spec.lo}, {out}, {yp});"]
    if x.dtype == "i16" and a.conv.group == 1 and cig < KMAJOR_MAX_C and -(-kh * kw * cig // 2) <= MAX_K2:
        k2 = -(-kh * kw * cig // 2)  # few input channels (first layers): run along output channels
        co_pad = -(-co // 8) * 8
        wk = np.zeros((2 * k2, co_pad), np.int64)
        wk[:kh * kw * cig, :co] = a.weight.reshape(co, -1).T
        wt = u.array(f"{pre}_weight", "int16_t", wk.reshape(k2, 2, co_pad).transpose(0, 2, 1),
                     f"weight levels k-major [{k2} pairs of (ky, kx, ci)][{co_pad}][2]")
        fn = u.kernel(("ikconv", f"i16_{a.out}"))
        return [f"{fn}({p(n.inputs[0], True)}, {wt}, &{geom}, {k2}, {co_pad}, {out}, {yp});"]
    if x.dtype == "i16":
        wt = u.array(f"{pre}_weight", "int16_t", a.weight, f"weight levels [{co}][{kh}][{kw}][{cig}]")
        fn = u.kernel(("iconv", f"i16_{a.out}"))
        return [f"{fn}({p(n.inputs[0], True)}, {wt}, &{geom}, {out}, {yp});"]
    if a.conv.group == 1 and kh * kw * cig <= MAX_K:  # k-major: runs along the output channels
        k, co_pad = kh * kw * cig, -(-co // 8) * 8
        wk = np.zeros((k, co_pad), np.float32)
        wk[:, :co] = a.weight.reshape(co, -1).T
        wt = u.array(f"{pre}_weight", "float", wk, f"weights k-major [{k} = ({kh}, {kw}, {cig})][{co_pad}]")
        fn = u.kernel(("fkconv", "f32_f32"))
        return [f"{fn}({p(n.inputs[0], True)}, {wt}, &{geom}, {k}, {co_pad}, {out}, {yp});"]
    wt = u.array(f"{pre}_weight", "float", a.weight, f"weights [{co}][{kh}][{kw}][{cig}]")
    fn = u.kernel(("fconv", "f32_f32"))
    return [f"{fn}({p(n.inputs[0], True)}, {wt}, &{geom}, {out}, {yp});"]


def _dconv_band_row(x_shape, y_shape, a, group: int) -> int:
    """Bytes of one input row in the dot-product conv's band (dconv): the padded width (as far
    as the windows reach) times the channels, each level 4 // group bytes."""
    _, _, w, c = x_shape
    ow, kw, sw, pl = y_shape[2], a.conv.kernel[1], a.conv.strides[1], a.conv.pads[1]
    return (pl + w + max(0, (ow - 1) * sw + kw - pl - w)) * c * (4 // group)


def _fits_dot(a, spec: KernelSpec, x_shape, y_shape) -> bool:
    """Whether the dot-product conv ``spec`` (dconv) takes this layer: group 1, at least its min_c
    input channels, input levels u = q - lo within its 0 .. umax (the padding level 0 included),
    weights of its wbits, and the kh input rows of one output row within its band on the stack."""
    lo, hi, wmax = a.x_spec.lo, a.x_spec.hi, 1 << (spec.param("wbits") - 1)
    return (a.conv.group == 1 and a.weight.shape[3] >= spec.param("min_c", 0) and lo <= 0
            and max(hi, 0) - lo <= spec.param("umax") and -wmax <= a.weight.min() and a.weight.max() < wmax
            and a.conv.kernel[0] * _dconv_band_row(x_shape, y_shape, a, spec.param("group")) <= spec.param("band_bytes"))


def _pool(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    a = n.attrs
    x, y = p.g.tensors[n.inputs[0]], p.g.tensors[n.outputs[0]]
    planes = a.levels.bits if x.dtype == "bits" else 1
    storage = ("bits" if planes == 1 else "planes") if x.dtype == "bits" else x.dtype
    fn = u.kernel(("pool", f"{a.kind}_{storage}"))
    nb, h, w, c = x.shape
    _, oh, ow, _ = y.shape
    name = f"L{i}_geom"
    u.structs.append(f"static const qcc_pool_geom {name} = {{ /* n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, pb, pr, count_include_pad */\n"
                     f"    {nb}, {h}, {w}, {c}, {oh}, {ow}, {a.kernel[0]}, {a.kernel[1]}, {a.strides[0]}, {a.strides[1]}, "
                     f"{a.pads[0]}, {a.pads[1]}, {a.pads[2]}, {a.pads[3]}, {int(a.count_include_pad)}}};")
    return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, &{name}, {planes});"]


def _unpack(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    a = n.attrs
    x = p.g.tensors[n.inputs[0]]
    scale = u.array(f"L{i}_scale", "float", a.spec.channel_scale(a.channels)) if a.out == "f32" else "NULL"
    if a.dst == "NCHW":  # writing the graph output in its own layout (fuse_layouts)
        nb, h, w, c = x.shape
        fn = u.kernel(("unpack", f"{x.dtype}_{a.out}_nchw"))
        return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, {nb}, {h * w}, {c}, {a.spec.bits}, {a.spec.lo}, "
                f"{a.spec.step}, {scale});"]
    fn = u.kernel(("unpack", f"{x.dtype}_{a.out}"))
    return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, {_rows(x.shape)}, {a.channels}, {a.spec.bits}, "
            f"{a.spec.lo}, {a.spec.step}, {scale});"]


def _ew(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    x = p.g.tensors[n.inputs[0]]
    spec = KernelSpec("ew", f"f32_L{i}", next(isa for isa in RUNS[u.isa] if isa in EW_ISAS),
                      params=(("rounding", ROUNDING), ("source", n.attrs.source), ("steps", n.attrs.steps)))
    fn = u.use(spec)
    consts = [u.array(f"L{i}_k{j}", "float", s.const) for j, s in
              enumerate(s for s in n.attrs.steps if s.const is not None and s.const.size > 1)]
    extra = "".join(", " + c for c in consts)
    return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, {_rows(x.shape)}, {x.shape[-1]}{extra});"]


def _softmax(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    x = p.g.tensors[n.inputs[0]]
    fn = u.kernel(("softmax", "f32"))
    return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, {_rows(x.shape)}, {x.shape[-1]});"]


def _ew2(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    y = p.g.tensors[n.outputs[0]]
    fn = u.kernel(("ew2", f"{n.attrs.op}_{n.attrs.bcast}_f32"))
    return [f"{fn}({p(n.inputs[0], True)}, {p(n.inputs[1], True)}, {p(n.outputs[0])}, {y.shape[0]}, {y.size // y.shape[0]});"]


def _mean(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    x = p.g.tensors[n.inputs[0]]
    fn = u.kernel(("mean", "f32"))
    return [f"{fn}({p(n.inputs[0], True)}, {p(n.outputs[0])}, {x.shape[0]}, {x.size // x.shape[0]});"]


def _concat(u: Unit, p: _Ptr, i: int, n: Node) -> list[str]:
    y = p.g.tensors[n.outputs[0]]
    fn = u.kernel(("concat", "f32"))
    return [f"{fn}({p(x, True)}, {p(n.outputs[0])}, {_rows(y.shape)}, {p.g.tensors[x].shape[-1]}, {y.shape[-1]}, {off});"
            for x, off in zip(n.inputs, n.attrs.offsets)]


EMITTERS = {"transpose": _transpose, "quantize": _quantize, "layer": _layer, "pool": _pool,
            "unpack": _unpack, "ew": _ew, "softmax": _softmax, "ew2": _ew2, "mean": _mean, "concat": _concat}


def _describe(n: Node, g: Graph) -> str:
    x, y = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
    s = f"{n.name or n.op}: {n.op} {x.dtype}{list(x.shape)} -> {y.dtype}{list(y.shape)}"
    if n.op == "layer":
        a = n.attrs.conv
        s += f", kernel {a.kernel[0]}x{a.kernel[1]}, strides {a.strides[0]}x{a.strides[1]}, pads {','.join(map(str, a.pads))}"
    if n.op == "pool":
        a = n.attrs
        s += f", {a.kind} {a.kernel[0]}x{a.kernel[1]}, strides {a.strides[0]}x{a.strides[1]}"
    return s.replace("*/", "* /")


@dataclass(frozen=True)
class Sources:
    c: str
    h: str
    variants: tuple[str, ...] = ()  # per kernel call, in the profile's order: the variant it runs ("dconv avx512")

    def files(self, name: str) -> dict[str, str]:
        """The bundle, file name -> text: ``<name>.c``, ``<name>.h`` and the runtime ``qcc_rt.h``."""
        return {f"{name}.c": self.c, f"{name}.h": self.h, "qcc_rt.h": (RUNTIME_DIR / "qcc_rt.h").read_text()}


def render(graph: Graph, name: str = "model", source: str = "", isa: str = "scalar",
           profile: bool = False) -> Sources:
    """C sources of the lowered, memory-planned ``graph``; every public symbol starts with ``name``.

    ``isa`` picks kernel variants (scalar where a family has none for it). ``profile``
    brackets every kernel call with ``<name>_profile_mark(call, 0/1)``, which the host
    build defines (:mod:`qcc.codegen.build`)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise QccError(f"--name '{name}' is not a C identifier")
    u = Unit(name, isa)
    ptr = _Ptr(graph)
    for i, n in enumerate(graph.nodes):
        if n.op == "reshape":
            continue
        u.calls.append(Call(_describe(n, graph), EMITTERS[n.op](u, ptr, i, n)))
    outputs = []  # (name, offset, size, the source of its copy, or None: computed in place)
    off = 0
    for o in graph.outputs:
        t = graph.tensors[o]
        outputs.append((o, off, t.size, None if graph.meta["in_output"].get(o) == off else ptr(o, True)))
        off += t.size
    env = environment()
    kernels = [env.get_template(k.template).render(**k.variables()) for k in u.kernels.values()]
    inputs = [(i, graph.tensors[i]) for i in graph.inputs]
    onames = graph.meta.get("output_names", {})
    ctx = dict(name=name, NAME=name.upper(), version=qcc.__version__, source=source or graph.meta.get("source", ""),
               unit=u, kernels=kernels, arena_size=graph.meta["arena_size"], align=64,
               inputs=[(n_, t.shape, t.size, ptr.in_off[n_]) for n_, t in inputs],
               outputs=[(list(onames)[k] if k < len(onames) else o, graph.tensors[o].shape, size, off_, src)
                        for k, (o, off_, size, src) in enumerate(outputs)],
               input_size=sum(t.size for _, t in inputs), output_size=off, c_ident=c_ident, profile=profile, isa=isa)
    return Sources(env.get_template("model.c.j2").render(**ctx), env.get_template("model.h.j2").render(**ctx),
                   tuple(_variant(u, c.lines) for c in u.calls))


def _variant(u: Unit, lines: list[str]) -> str:
    """The kernel variant a call runs, "family isa": the last kernel its lines call (a layer's GEMM,
    after its im2col); "" for a call of none (an output copied in place)."""
    names = [m for line in lines for m in re.findall(r"\b(qcc_\w+)\(", line) if m in u.kernels]
    return f"{u.kernels[names[-1]].family} {u.kernels[names[-1]].isa}" if names else ""
