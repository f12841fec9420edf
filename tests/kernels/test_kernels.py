"""Every C kernel variant against its numpy oracle (qcc.ir.kernels_ref), and the oracles against
independent maths.

Each case is a small lowered graph built by hand: a float NCHW input, the conversions a real
lowered graph has (transpose/reshape to NHWC, a sign quantizer to get packed bits), the kernel op
under test, and the way back to float NCHW. The graph is memory-planned, rendered, compiled with
cffi and run; the result is compared with ``qcc.ir.interp.run`` on the same graph.

Not only the graph output is compared: every intermediate tensor is kept alive to the end of the
run (a trailing ``reshape`` reading it, which generates no code) so that its arena bytes can be
read back after the call and compared with the oracle, bit for bit. That is how the packed
``bits`` tensors are checked word for word, unused tail bits included. Each module runs three
times on an arena pre-filled with 0x00, 0xA5 and 0xFF: results must not depend on stale arena
contents, nothing may be written outside the arena, the input must stay untouched.

Comparisons are exact (bits as uint64 words, floats by value, so -0.0 == +0.0) except where a
case states a tolerance: float convolutions and average pools on arbitrary (non-dyadic) floats,
whose summation order legitimately differs from the oracle's float64 sum, and softmax, whose exp
is a polynomial rather than libm's.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass, field
from decimal import (ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_DOWN, ROUND_HALF_EVEN,
                     ROUND_HALF_UP, ROUND_UP, Decimal)

import numpy as np
import pytest

from qcc.codegen import render as render_mod
from qcc.codegen.build import build
from qcc.codegen.kernels import KERNELS, KernelSpec
from qcc.codegen.render import RUNTIME_DIR, render
from qcc.ir import interp
from qcc.ir.graph import Graph, Node, Tensor
from qcc.ir.kernels_ref import pm1, unpack_bits, words
from qcc.ir.ops import (ConvAttrs, EwAttrs, EwStep, LayerAttrs, PoolAttrs, QuantizeAttrs,
                        ReshapeAttrs, SoftmaxAttrs, ThresholdAttrs, TransposeAttrs)
from qcc.ir.quant import QuantSpec
from qcc.passes.plan_memory import nbytes, plan_memory

F32 = np.float32
BIPOLAR = QuantSpec(-1, 1, 2)
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
CHANNELS = (1, 3, 63, 64, 65, 100, 128)
GUARD = 256  # bytes checked on each side of the arena
FILLS = (0x00, 0xA5, 0xFF)
MODEL = "k"


# =============================================================================== the harness

class Chain:
    """A lowered graph under construction: one float input, kernel ops appended in order."""

    def __init__(self, shape, layout: str = "NCHW"):
        self.tensors = {"x": Tensor("x", tuple(shape), "f32", layout=layout)}
        self.nodes: list[Node] = []
        self.cur = "x"

    @property
    def t(self) -> Tensor:
        return self.tensors[self.cur]

    def op(self, op: str, attrs, shape, dtype: str = "f32", layout: str = "NHWC", quant=None) -> "Chain":
        i = len(self.nodes)
        name = f"t{i}_{op}"
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape), dtype, quant=quant, layout=layout)
        self.nodes.append(Node(op, (self.cur,), (name,), attrs, f"n{i}_{op}"))
        self.cur = name
        return self

    def nhwc(self, force_transpose: bool = False) -> "Chain":
        n, c, h, w = self.t.shape
        if (c == 1 or h * w == 1) and not force_transpose:  # as the lowering does: no data movement
            return self.op("reshape", ReshapeAttrs((n, h, w, c)), (n, h, w, c))
        return self.op("transpose", TransposeAttrs(TO_NHWC), (n, h, w, c))

    def nchw(self, force_transpose: bool = False) -> "Chain":
        n, h, w, c = self.t.shape
        assert self.t.dtype == "f32"
        if (c == 1 or h * w == 1) and not force_transpose:
            return self.op("reshape", ReshapeAttrs((n, c, h, w)), (n, c, h, w), layout="NCHW")
        return self.op("transpose", TransposeAttrs(TO_NCHW), (n, c, h, w), layout="NCHW")

    def quantize(self, attrs: QuantizeAttrs) -> "Chain":
        return self.op("quantize", attrs, self.t.shape, "bits" if attrs.out_bits else "f32", self.t.layout, attrs.spec)

    def sign_bits(self) -> "Chain":
        return self.quantize(QuantizeAttrs("sign", BIPOLAR, out_bits=True))

    def unpack(self, scale=None) -> "Chain":
        assert self.t.dtype == "bits"
        c = self.t.shape[-1]
        scale = np.ones(c, F32) if scale is None else np.asarray(scale, F32)
        return self.op("unpack", scale, self.t.shape, layout=self.t.layout)

    def layer(self, attrs: LayerAttrs) -> "Chain":
        n, h, w, _ = self.t.shape
        oh, ow = attrs.conv.out_hw(h, w)
        assert oh >= 1 and ow >= 1
        dtype = "bits" if attrs.out_bits else "f32"
        quant = attrs.thr.spec if attrs.thr is not None else None
        return self.op("layer", attrs, (n, oh, ow, attrs.out_channels), dtype, "NHWC", quant)

    def pool(self, attrs: PoolAttrs) -> "Chain":
        n, h, w, c = self.t.shape
        oh, ow = attrs.out_hw(h, w)
        return self.op("pool", attrs, (n, oh, ow, c), self.t.dtype, "NHWC", self.t.quant)

    def ew(self, *steps: EwStep) -> "Chain":
        return self.op("ew", EwAttrs(tuple(steps), "test chain"), self.t.shape, layout=self.t.layout)

    def softmax(self) -> "Chain":
        return self.op("softmax", SoftmaxAttrs(-1), self.t.shape, layout=self.t.layout)

    def graph(self) -> Graph:
        """The graph, with every computed tensor kept alive to the end by a trailing reshape."""
        nodes, tensors = list(self.nodes), dict(self.tensors)
        for n in self.nodes:
            o = n.outputs[0]
            if n.op == "reshape" or o == self.cur:
                continue
            t = tensors[o]
            keep = o + "__keep"
            tensors[keep] = t.with_(name=keep)
            nodes.append(Node("reshape", (o,), (keep,), ReshapeAttrs(t.shape), f"keep_{o}"))
        return Graph(tuple(nodes), tensors, ("x",), (self.cur,), "kernel_test")


@dataclass
class Case:
    chain: Chain
    x: np.ndarray
    expect: dict = field(default_factory=dict)  # tensor -> values (levels for bits), from independent maths
    rtol: float = 0.0
    atol: float = 0.0
    expect_rtol: float = 0.0
    expect_atol: float = 0.0


def planned(case: Case) -> Graph:
    return plan_memory(case.chain.graph()).graph


def run_c(g: Graph, x: np.ndarray, cflags: tuple[str, ...] = ()) -> list[dict[str, np.ndarray]]:
    """Build and run ``g`` once per arena fill; each run's output and arena tensors, raw storage."""
    ffi, lib = build(render(g, MODEL), MODEL, cflags)
    run = getattr(lib, f"{MODEL}_run")
    size = g.meta["arena_size"]
    (out_name,) = g.outputs
    out_t = g.tensors[out_name]
    results = []
    for fill in FILLS:
        buf = np.full(size + 2 * GUARD + 64, fill, np.uint8)
        start = GUARD + (-(buf.ctypes.data + GUARD) % 64)
        arena = buf[start:start + size]
        ptr = ffi.cast("char *", ffi.from_buffer("char[]", buf)) + start
        inp = np.ascontiguousarray(x, F32).reshape(-1).copy()
        out = np.full(out_t.size, np.nan, F32)
        rc = run(ffi.from_buffer("float[]", inp), ffi.from_buffer("float[]", out), ptr)
        assert rc == 0, f"{MODEL}_run returned {rc}"
        assert (buf[:start] == fill).all(), "written before the arena"
        assert (buf[start + size:] == fill).all(), "written past the arena"
        assert np.array_equal(inp.view(np.uint32), np.ascontiguousarray(x, F32).reshape(-1).view(np.uint32)), \
            "the input buffer was modified"
        got = {"OUTPUT": out.reshape(out_t.shape)}
        for name, off in g.meta["arena"].items():
            t = g.tensors[name]
            if name.endswith("__keep"):
                continue
            raw = arena[off:off + nbytes(t)].copy()
            if t.dtype == "bits":
                got[name] = raw.view("<u8").reshape(t.shape[:-1] + (words(t.shape[-1]),))
            else:
                got[name] = raw.view(F32).reshape(t.shape)
        results.append(got)
    return results


def _compare(what: str, got: np.ndarray, ref: np.ndarray, t: Tensor, rtol: float, atol: float) -> None:
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if t.dtype == "bits":
        assert ref.dtype == np.uint64
        bad = np.argwhere(got != ref)
        assert bad.size == 0, (f"{what}: {len(bad)} packed words differ, first at {tuple(bad[0])}: "
                               f"C {int(got[tuple(bad[0])]):#018x} != oracle {int(ref[tuple(bad[0])]):#018x}")
        return
    ref = np.asarray(ref, F32)
    assert not np.isnan(got).any() or np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaN in C output"
    if rtol or atol:
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=what)
    else:
        np.testing.assert_array_equal(got, ref, err_msg=f"{what} (exact)")


def check(case: Case, cflags: tuple[str, ...] = ()) -> None:
    g = planned(case)
    env = interp.run(g, {"x": case.x}, keep_all=True)
    # the oracle itself: unused tail bits are zero, and it agrees with independent maths
    for name, t in g.tensors.items():
        if t.dtype == "bits" and name in env:
            c = t.shape[-1]
            tail = unpack_bits(env[name], words(c) * 64)[..., c:]
            assert not tail.any(), f"oracle: tail bits of '{name}' are not zero"
    for name, want in case.expect.items():
        t = g.tensors[name]
        have = pm1(env[name], t.shape[-1]) if t.dtype == "bits" else env[name]
        if case.expect_rtol or case.expect_atol:
            np.testing.assert_allclose(have, want, rtol=case.expect_rtol, atol=case.expect_atol,
                                       err_msg=f"oracle vs independent maths: {name}")
        else:
            np.testing.assert_array_equal(have, want, err_msg=f"oracle vs independent maths: {name}")
    runs = run_c(g, case.x, cflags)
    first = runs[0]
    for other, fill in zip(runs[1:], FILLS[1:]):
        for name in first:
            assert first[name].tobytes() == other[name].tobytes(), \
                f"'{name}' depends on the arena's previous contents (fill {fill:#x})"
    (out_name,) = g.outputs
    _compare("graph output", first.pop("OUTPUT"), env[out_name], g.tensors[out_name], case.rtol, case.atol)
    computed = {o for n in g.nodes if n.op != "reshape" for o in n.outputs}
    assert computed and computed <= set(first), f"tensors not read back: {sorted(computed - set(first))}"
    for name, got in first.items():
        _compare(f"tensor '{name}'", got, env[name], g.tensors[name], case.rtol, case.atol)


# ------------------------------------------------------------------------ independent maths

def naive_conv(x: np.ndarray, w: np.ndarray, k, s, pads, group: int = 1) -> np.ndarray:
    """NHWC conv by shifted slices (not windows/einsum as the oracle): x (N,H,W,C), w (Co,kh,kw,C/g)."""
    n, h, wd, c = x.shape
    co, kh, kw, cig = w.shape
    t, l, b, r = pads
    oh, ow = (h + t + b - kh) // s[0] + 1, (wd + l + r - kw) // s[1] + 1
    dt = np.int64 if x.dtype.kind in "iu" else np.float64
    xp = np.zeros((n, h + t + b, wd + l + r, c), dt)
    xp[:, t:t + h, l:l + wd, :] = x
    acc = np.zeros((n, oh, ow, co), dt)
    cog = co // group
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky:ky + s[0] * (oh - 1) + 1:s[0], kx:kx + s[1] * (ow - 1) + 1:s[1], :]
            for gi in range(group):
                acc[..., gi * cog:(gi + 1) * cog] += (
                    patch[..., gi * cig:(gi + 1) * cig] @ w[gi * cog:(gi + 1) * cog, ky, kx, :].astype(dt).T)
    return acc


def naive_pool(x: np.ndarray, a: PoolAttrs, oh: int, ow: int) -> np.ndarray:
    """NHWC pooling, one output pixel at a time, on float64 values."""
    n, h, w, c = x.shape
    t, l, b, r = a.pads
    y = np.zeros((n, oh, ow, c), np.float64)
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * a.strides[0] - t, ox * a.strides[1] - l
            rows = [i for i in range(y0, y0 + a.kernel[0]) if i < h + b]  # drop the ceil-mode overhang
            cols = [j for j in range(x0, x0 + a.kernel[1]) if j < w + r]
            vr, vc = [i for i in rows if 0 <= i < h], [j for j in cols if 0 <= j < w]
            win = x[:, vr][:, :, vc].astype(np.float64)
            if a.kind == "max":
                y[:, oy, ox] = win.max(axis=(1, 2))
            else:
                cnt = len(rows) * len(cols) if a.count_include_pad else len(vr) * len(vc)
                y[:, oy, ox] = win.sum(axis=(1, 2)) / cnt
    return y


def threshold_table(acc: np.ndarray, bound: int, steps: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel thresholds exercising every edge: values the accumulator reaches (sign +1 and
    -1), constant channels (-B: always, B+1: never, and +-2^40, which the C code clips to int32),
    and unused steps parked at B+1."""
    co = acc.shape[-1]
    thr = np.empty((co, steps), np.int64)
    sign = np.ones(co, np.int8)
    for c in range(co):
        vals = acc[..., c].reshape(-1).astype(np.int64)
        kind = c % 8
        s = -1 if kind in (1, 3, 5, 7) else 1
        if kind in (0, 1):
            t = rng.choice(s * vals, steps)
        elif kind in (2, 3):
            t = np.full(steps, -bound)
        elif kind == 4:
            t = np.full(steps, bound + 1)
        elif kind == 5:
            t = np.concatenate([rng.choice(s * vals, 1), np.full(steps - 1, bound + 1)])
        else:
            t = np.full(steps, (1 << 40) * (1 if kind == 6 else -1))
        thr[c], sign[c] = np.sort(t), s
    return thr, sign


OUT_SPECS = {"bits": (1, BIPOLAR, True), "levels": (3, QuantSpec(0, 3, 1), False),
             "levels_pm1": (1, BIPOLAR, False)}


def output_transform(out: str, acc: np.ndarray, bound: int, rng) -> tuple[dict, np.ndarray]:
    """LayerAttrs keywords for output transform ``out``, and the expected output values."""
    co = acc.shape[-1]
    if out in OUT_SPECS:
        steps, spec, bits = OUT_SPECS[out]
        thr, sign = threshold_table(acc, bound, steps, rng)
        n = ((acc * sign)[..., None] >= thr).sum(axis=-1)
        q = spec.lo + spec.step * n
        return dict(thr=ThresholdAttrs(thr, sign, spec), out_bits=bits), (q if bits else q.astype(F32))
    mul = rng.uniform(-2, 2, co).astype(F32) if out in ("f32_mul", "f32_mb") else None
    bias = rng.uniform(-3, 3, co).astype(F32) if out in ("f32_bias", "f32_mb") else None
    y = acc.astype(F32)
    if mul is not None:
        y = (y * mul).astype(F32)
    if bias is not None:
        y = (y + bias).astype(F32)
    return dict(mul=mul, bias=bias), y


# ===================================================================== binary layer (bgemm)

@dataclass(frozen=True)
class ConvCase:
    ci: int
    co: int
    hw: tuple[int, int] = (3, 3)
    k: tuple[int, int] = (3, 3)
    s: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    out: str = "f32_mb"  # f32 | f32_mul | f32_bias | f32_mb | bits | levels | levels_pm1
    n: int = 1
    group: int = 1
    data: str = "int"  # fconv only: int | float | quant | unpacked

    def __str__(self) -> str:
        s = (f"ci{self.ci}-co{self.co}-{self.hw[0]}x{self.hw[1]}-k{self.k[0]}x{self.k[1]}-s{self.s[0]}{self.s[1]}"
             f"-p{''.join(map(str, self.pads))}-{self.out}")
        if self.n != 1:
            s += f"-n{self.n}"
        if self.group != 1:
            s += f"-g{self.group}"
        return s if self.data == "int" else s + f"-{self.data}"


def _rot(seq, k):
    return seq[k:] + seq[:k]


BINARY_CASES = (
    # channel sweep: every in and every out channel count, under each output transform
    [ConvCase(ci, co, out=out) for out, r in (("f32_mb", 1), ("bits", 2), ("levels", 3))
     for ci, co in zip(CHANNELS, _rot(CHANNELS, r))]
    + [ConvCase(65, 65, out="bits"), ConvCase(100, 128, out="bits", k=(1, 1), pads=(0, 0, 0, 0)),
       ConvCase(64, 63, out="levels_pm1"), ConvCase(3, 100, out="f32"), ConvCase(128, 1, out="f32_mul"),
       ConvCase(63, 65, out="f32_bias")]
    # geometry: K tails, strides, symmetric/asymmetric pads, 1x1 and odd spatial sizes, batch
    + [
        ConvCase(65, 100, hw=(1, 1), k=(1, 1), pads=(0, 0, 0, 0), out="f32_mb"),
        ConvCase(64, 65, hw=(5, 5), k=(3, 3), out="bits"),
        ConvCase(3, 63, hw=(7, 7), k=(3, 3), s=(2, 2), out="levels"),
        ConvCase(100, 64, hw=(6, 5), k=(5, 5), pads=(2, 2, 2, 2), out="bits"),
        ConvCase(1, 128, hw=(9, 7), k=(5, 5), s=(2, 2), pads=(0, 0, 0, 0), out="f32_mb"),
        ConvCase(63, 3, hw=(7, 7), k=(7, 7), pads=(3, 3, 3, 3), out="levels"),
        ConvCase(128, 1, hw=(9, 8), k=(7, 7), s=(2, 2), pads=(0, 1, 2, 1), out="levels_pm1"),
        ConvCase(65, 65, hw=(4, 5), k=(1, 3), pads=(0, 1, 0, 1), out="bits"),
        ConvCase(3, 100, hw=(5, 3), k=(3, 1), s=(2, 1), pads=(1, 0, 1, 0), out="f32"),
        ConvCase(64, 64, hw=(6, 6), k=(2, 2), s=(2, 2), pads=(0, 0, 0, 0), out="bits"),
        ConvCase(65, 3, hw=(3, 3), k=(2, 2), pads=(0, 0, 1, 1), out="levels"),
        ConvCase(100, 65, hw=(1, 1), k=(3, 3), pads=(2, 2, 2, 2), out="bits"),
        ConvCase(1, 1, hw=(1, 1), k=(3, 3), pads=(1, 1, 1, 1), out="levels"),
        ConvCase(64, 100, hw=(7, 6), k=(5, 5), s=(2, 2), pads=(2, 0, 1, 2), out="bits"),
        ConvCase(3, 64, hw=(5, 5), k=(3, 3), s=(2, 2), pads=(0, 1, 2, 1), out="f32_mul", n=2),
        ConvCase(65, 63, hw=(3, 5), k=(1, 3), s=(1, 2), pads=(1, 1, 0, 0), out="bits", n=2),
        ConvCase(16, 16, hw=(17, 17), k=(16, 16), pads=(0, 0, 0, 0), out="levels"),  # 256 taps, the max
    ]
)


def binary_case(p: ConvCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    x = rng.standard_normal((p.n, p.ci, *p.hw)).astype(F32)
    x[rng.random(x.shape) < 0.1] = 0.0  # x == 0 quantizes to +1
    w = rng.choice(np.array([-1, 1], np.int32), size=(p.co, *p.k, p.ci))
    xq = np.where(x >= 0, 1, -1).astype(np.int64).transpose(TO_NHWC)
    acc = naive_conv(xq, w, p.k, p.s, p.pads)
    kw, want = output_transform(p.out, acc, p.k[0] * p.k[1] * p.ci, rng)
    chain = Chain(x.shape).nhwc().sign_bits().layer(LayerAttrs(ConvAttrs(p.k, p.s, p.pads), w, **kw))
    name = chain.cur
    if chain.t.dtype == "bits":
        chain.unpack()
    chain.nchw()
    return Case(chain, x, expect={name: want})


@pytest.mark.parametrize("p", BINARY_CASES, ids=str)
def test_binary_layer(p):
    check(binary_case(p))


def test_binary_layer_over_256_taps_is_refused():
    from qcc.errors import QccError
    w = np.ones((2, 17, 16, 3), np.int32)
    chain = Chain((1, 3, 17, 16)).nhwc().sign_bits().layer(LayerAttrs(ConvAttrs((17, 16)), w)).nchw()
    with pytest.raises(QccError, match="256 taps"):
        render(plan_memory(chain.graph()).graph, MODEL)


# =============================================================== float-input layer (fconv)

FCONV_CASES = (
    [ConvCase(ci, co, k=(1, 1), pads=(0, 0, 0, 0), out=out)
     for out, r in (("f32_mb", 1), ("bits", 2), ("levels", 3)) for ci, co in zip(CHANNELS, _rot(CHANNELS, r))]
    + [
        ConvCase(3, 65, hw=(5, 5), k=(3, 3), out="bits"),
        ConvCase(4, 5, hw=(7, 6), k=(5, 5), s=(2, 2), pads=(2, 2, 2, 2), out="f32"),
        ConvCase(3, 4, hw=(1, 1), k=(7, 7), pads=(3, 3, 3, 3), out="levels"),
        ConvCase(5, 3, hw=(4, 5), k=(1, 3), pads=(0, 1, 0, 1), out="f32_bias"),
        ConvCase(6, 7, hw=(6, 7), k=(3, 3), s=(2, 1), pads=(0, 1, 2, 1), out="levels_pm1", n=2),
        ConvCase(4, 6, hw=(5, 5), k=(3, 3), group=2, out="f32_mb"),
        ConvCase(6, 9, hw=(5, 4), k=(3, 3), s=(2, 2), pads=(0, 1, 2, 1), group=3, out="levels"),
        ConvCase(8, 8, hw=(5, 5), k=(3, 3), group=8, out="bits"),  # depthwise
        ConvCase(65, 130, hw=(3, 3), k=(1, 1), pads=(0, 0, 0, 0), group=65, out="bits"),
        # arbitrary floats: float32 summation order differs from the oracle's float64 sum
        ConvCase(5, 7, hw=(6, 5), k=(3, 3), out="f32_mb", data="float"),
        ConvCase(64, 3, hw=(5, 5), k=(5, 5), s=(2, 2), pads=(2, 1, 0, 2), out="f32", data="float", group=1),
        ConvCase(6, 4, hw=(4, 4), k=(3, 3), out="f32", group=2, data="float"),
        # the chains the lowering produces: quantized levels (round), and unpacked bits
        ConvCase(5, 6, hw=(5, 5), k=(3, 3), out="levels", data="quant"),
        ConvCase(70, 66, hw=(4, 4), k=(3, 3), s=(2, 2), out="bits", data="unpacked"),
    ]
)


def fconv_case(p: ConvCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (p.n, p.ci, *p.hw)
    conv = ConvAttrs(p.k, p.s, p.pads, group=p.group)
    wshape = (p.co, *p.k, p.ci // p.group)
    chain = Chain(shape).nhwc()
    if p.data == "float":
        x = rng.standard_normal(shape).astype(F32)
        w = rng.standard_normal(wshape).astype(F32)
        xin = x.astype(np.float64)
    elif p.data == "quant":  # round(x / 0.5) clamped to [-4, 3]: exact levels
        x = (rng.standard_normal(shape) * 2).astype(F32)
        w = rng.integers(-3, 4, wshape).astype(F32)
        xin = np.clip(np.round(x.astype(np.float64) / 0.5), -4, 3)
        chain.quantize(QuantizeAttrs("round", QuantSpec(-4, 3, 1, F32(0.5)), scale=np.array(0.5, F32),
                                     zero=np.array(0.0, F32), clamp=(-4.0, 3.0), rounding="ROUND"))
    elif p.data == "unpacked":
        x = rng.standard_normal(shape).astype(F32)
        w = rng.integers(-2, 3, wshape).astype(F32)
        xin = np.where(x >= 0, 1.0, -1.0)
        chain.sign_bits().unpack()
    else:
        x = rng.integers(-4, 5, shape).astype(F32)
        w = rng.integers(-3, 4, wshape).astype(F32)
        xin = x.astype(np.float64)
    acc = naive_conv(xin.transpose(TO_NHWC), w, p.k, p.s, p.pads, p.group)
    bound = int(np.abs(xin).max() * np.abs(w).reshape(p.co, -1).sum(axis=1).max())
    kw, want = output_transform(p.out, acc if p.data == "float" else acc.astype(np.int64), bound, rng)
    chain.layer(LayerAttrs(conv, w, **kw))
    name = chain.cur
    if chain.t.dtype == "bits":
        chain.unpack()
    chain.nchw()
    if p.data == "float":  # |error| <= ~n * eps * sum |x w|: tolerate relative to the largest terms
        scale = float(np.abs(xin).max() * np.abs(w).max() * p.k[0] * p.k[1] * p.ci / p.group)
        mul = np.abs(kw["mul"]).max() if kw.get("mul") is not None else 1.0
        return Case(chain, x, expect={name: want}, rtol=1e-5, atol=1e-6 * scale * mul,
                    expect_rtol=1e-6, expect_atol=1e-6 * scale * mul)
    return Case(chain, x, expect={name: want})


@pytest.mark.parametrize("p", FCONV_CASES, ids=str)
def test_float_layer(p):
    check(fconv_case(p))


# ===================================================================================== pool

@dataclass(frozen=True)
class PoolCase:
    kind: str
    bits: bool
    c: int
    hw: tuple[int, int]
    k: tuple[int, int]
    s: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil: bool = False
    cip: bool = False
    n: int = 1
    data: str = "dyadic"  # dyadic (exact sums) | float

    def __str__(self) -> str:
        s = (f"{self.kind}_{'bits' if self.bits else 'f32'}-c{self.c}-{self.hw[0]}x{self.hw[1]}-k{self.k[0]}x{self.k[1]}"
             f"-s{self.s[0]}{self.s[1]}-p{''.join(map(str, self.pads))}")
        s += "-ceil" if self.ceil else ""
        s += "-cip" if self.cip else ""
        s += f"-n{self.n}" if self.n != 1 else ""
        return s + ("-float" if self.data == "float" else "")


POOL_CASES = [
    PoolCase("max", True, 3, (6, 6), (2, 2), (2, 2)),
    PoolCase("max", True, 64, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
    PoolCase("max", True, 65, (7, 5), (2, 2), (2, 2), ceil=True),
    PoolCase("max", True, 100, (5, 5), (3, 3), (1, 1), (1, 1, 1, 1), n=2),
    PoolCase("max", True, 128, (5, 4), (2, 3), (2, 1), (0, 1, 1, 0), ceil=True),
    PoolCase("max", True, 1, (1, 1), (1, 1)),
    PoolCase("max", False, 5, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
    PoolCase("max", False, 3, (5, 5), (2, 2), (2, 2), (1, 1, 1, 1), ceil=True),  # last window must start inside
    PoolCase("max", False, 65, (8, 6), (3, 2), (2, 2), (1, 0, 1, 1), ceil=True, n=2),
    PoolCase("max", False, 1, (5, 5), (5, 5)),  # global
    PoolCase("avg", False, 4, (6, 6), (2, 2), (2, 2)),
    PoolCase("avg", False, 3, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1), cip=False),
    PoolCase("avg", False, 3, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1), cip=True),
    PoolCase("avg", False, 5, (8, 8), (3, 3), (2, 2), (1, 1, 1, 1), ceil=True, cip=True),  # pad counted, overhang not
    PoolCase("avg", False, 5, (8, 8), (3, 3), (2, 2), (1, 1, 1, 1), ceil=True, cip=False),
    PoolCase("avg", False, 64, (5, 7), (2, 3), (1, 2), (0, 1, 1, 2), cip=True, n=2),
    PoolCase("avg", False, 1, (3, 3), (3, 3)),
    PoolCase("avg", False, 7, (7, 6), (3, 3), (2, 2), (1, 1, 1, 1), ceil=True, cip=True, data="float"),
]


def pool_case(p: PoolCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (p.n, p.c, *p.hw)
    attrs = PoolAttrs(p.kind, p.k, p.s, p.pads, p.ceil, p.cip)
    oh, ow = attrs.out_hw(*p.hw)
    if p.data == "float":
        x = rng.standard_normal(shape).astype(F32)
    else:  # multiples of 1/8 in [-8, 8): every partial sum is exact in float32
        x = (rng.integers(-64, 64, shape) / 8).astype(F32)
    x[..., 0, 0] = -7.5  # a negative corner: padding must never win a max
    chain = Chain(shape).nhwc()
    if p.bits:
        chain.sign_bits()
        vals = np.where(x >= 0, 1.0, -1.0).transpose(TO_NHWC)
    else:
        vals = x.astype(np.float64).transpose(TO_NHWC)
    chain.pool(attrs)
    name = chain.cur
    want = naive_pool(vals, attrs, oh, ow)
    if p.bits:
        chain.unpack()
    chain.nchw()
    if p.data == "float":
        return Case(chain, x, expect={name: want}, rtol=1e-6, atol=1e-6, expect_rtol=1e-6, expect_atol=1e-7)
    return Case(chain, x, expect={name: want if p.bits else want.astype(F32)})


@pytest.mark.parametrize("p", POOL_CASES, ids=str)
def test_pool(p):
    check(pool_case(p))


# ================================================================================= quantize

ROUNDINGS = {"ROUND": ROUND_HALF_EVEN, "CEIL": ROUND_CEILING, "FLOOR": ROUND_FLOOR, "UP": ROUND_UP,
             "DOWN": ROUND_DOWN, "HALF_UP": ROUND_HALF_UP, "HALF_DOWN": ROUND_HALF_DOWN}


def decimal_round(v: np.ndarray, mode: str) -> np.ndarray:
    return np.array([float(Decimal(float(t)).to_integral_value(rounding=ROUNDINGS[mode])) for t in v.reshape(-1)]
                    ).reshape(v.shape)


@pytest.mark.parametrize("mode", list(ROUNDINGS))
def test_oracle_rounding_ties(mode):
    """interp.round_mode (QONNX's formulas) against Python's decimal rounding, on exact ties."""
    v = np.array([-3.5, -2.5, -1.5, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 3.5,
                  -2.0 ** -20, 2.0 ** -20, 1.5 + 2.0 ** -20, -1.5 - 2.0 ** -20], F32)
    np.testing.assert_array_equal(interp.round_mode(v, mode), decimal_round(v, mode))


@dataclass(frozen=True)
class QuantCase:
    mode: str  # round | sign | thresholds
    out: str  # f32 | bits
    c: int
    rounding: str = "ROUND"
    per_channel: bool = True
    hw: tuple[int, int] = (3, 4)
    n: int = 1

    def __str__(self) -> str:
        s = f"{self.mode}_{self.out}-c{self.c}"
        s += f"-{self.rounding}" if self.mode == "round" else ""
        s += "" if self.per_channel else "-shared"
        return s + (f"-n{self.n}" if self.n != 1 else "")


QUANT_CASES = (
    [QuantCase("round", "f32", 5, r) for r in ROUNDINGS]
    + [QuantCase("round", "f32", 65, "HALF_UP", per_channel=False), QuantCase("round", "f32", 1, "HALF_DOWN"),
       QuantCase("round", "bits", 3, "ROUND"), QuantCase("round", "bits", 100, "HALF_UP", per_channel=False),
       QuantCase("sign", "f32", 3), QuantCase("sign", "bits", 1), QuantCase("sign", "bits", 63),
       QuantCase("sign", "bits", 65, n=2), QuantCase("sign", "bits", 128), QuantCase("sign", "f32", 100, hw=(1, 1)),
       QuantCase("thresholds", "f32", 5), QuantCase("thresholds", "f32", 64, per_channel=False),
       QuantCase("thresholds", "bits", 65), QuantCase("thresholds", "bits", 3, per_channel=False)]
)


def quant_case(p: QuantCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (p.n, p.c, *p.hw)
    npar = p.c if p.per_channel else 1
    xs = (p.n, *p.hw, p.c)  # generated channels last, transposed to the NCHW input at the end
    if p.mode == "round":
        scale = rng.choice(np.array([0.25, 0.5, 1.0, 2.0], F32), npar)
        zero = rng.integers(-2, 3, npar).astype(F32) if p.out == "f32" else np.zeros(npar, F32)
        lo, hi = (-4.0, 3.0) if p.out == "f32" else (-1.0, 1.0)
        t = rng.integers(-14, 15, xs) / 2  # ties and integers in [-7, 7]
        t = np.where(rng.random(xs) < 0.3, rng.uniform(-6, 6, xs), t)  # and values between
        x = ((t - zero) * scale).astype(F32)
        x.reshape(-1, p.c)[0, :] = (np.float32(0.0) - zero) * scale  # exactly zero after the zero point
        spec = QuantSpec(int(lo - zero.max()), int(hi - zero.min()), 1, scale) if p.out == "f32" else BIPOLAR
        attrs = QuantizeAttrs("round", spec, scale=scale if npar > 1 else scale.reshape(()),
                              zero=zero if npar > 1 else zero.reshape(()), clamp=(lo, hi), rounding=p.rounding,
                              out_bits=p.out == "bits")
        v = ((x / scale).astype(F32) + zero).astype(F32)
        q = decimal_round(np.clip(v, lo, hi), p.rounding) - zero
        if p.out == "bits":  # a level above 0 is a set bit
            q = np.where(q > 0, 1, -1)
    elif p.mode == "sign":
        x = rng.standard_normal(xs).astype(F32)
        x[rng.random(xs) < 0.2] = 0.0
        x[rng.random(xs) < 0.1] = -0.0
        attrs = QuantizeAttrs("sign", BIPOLAR, out_bits=p.out == "bits")
        q = np.where(x >= 0, 1.0, -1.0)
    else:
        steps, spec = (1, BIPOLAR) if p.out == "bits" else (4, QuantSpec(-2, 2, 1))
        thr = np.sort(rng.uniform(-2, 2, (npar, steps)).astype(F32), axis=1)
        x = rng.uniform(-3, 3, xs).astype(F32)
        hit = rng.random(xs) < 0.4  # values exactly on a threshold count as reaching it
        x[hit] = np.broadcast_to(thr[:, 0], xs)[hit]
        attrs = QuantizeAttrs("thresholds", spec, thresholds=thr, out_bits=p.out == "bits")
        q = spec.lo + spec.step * (x[..., None] >= thr).sum(axis=-1)
    chain = Chain(shape).nhwc().quantize(attrs)
    name = chain.cur
    if chain.t.dtype == "bits":
        chain.unpack()
    chain.nchw()
    return Case(chain, np.ascontiguousarray(x.transpose(TO_NCHW)), expect={name: q if p.out == "bits" else q.astype(F32)})


@pytest.mark.parametrize("p", QUANT_CASES, ids=str)
def test_quantize(p):
    check(quant_case(p))


def test_quantize_round_follows_qonnx_float32_formula():
    """A value one ulp below 0.5 rounds *up* under HALF_UP: |x| + 0.5 rounds to 1.0 in float32, as in
    QONNX's numpy reference. The kernel and the oracle must agree on this, not on exact maths."""
    c = 3
    x = np.array([np.nextafter(F32(0.5), F32(0)), -np.nextafter(F32(0.5), F32(0)), np.nextafter(F32(1.5), F32(2))], F32)
    xs = np.tile(x, (1, 2, 2, 1))  # NHWC, channels = the three values
    for mode in ROUNDINGS:
        attrs = QuantizeAttrs("round", QuantSpec(-4, 3), scale=np.array(1.0, F32), zero=np.array(0.0, F32),
                              clamp=(-4.0, 3.0), rounding=mode)
        chain = Chain((1, c, 2, 2)).nhwc().quantize(attrs).nchw()
        check(Case(chain, np.ascontiguousarray(xs.transpose(TO_NCHW))))


@pytest.mark.parametrize("which", ["per_channel_scale-scalar_zero", "scalar_scale-per_channel_zero"])
def test_quantize_round_mixed_parameter_sizes(which):
    """Per-channel scale with a scalar zero point and the reverse (both broadcast in render)."""
    c = 4
    x = np.random.default_rng(0).uniform(-3, 3, (1, c, 3, 3)).astype(F32)
    if which.startswith("per_channel_scale"):
        scale, zero = np.array([0.5, 1, 2, 0.25], F32), np.array(0.0, F32)
    else:
        scale, zero = np.array(0.5, F32), np.array([0, 1, -1, 2], F32)
    attrs = QuantizeAttrs("round", QuantSpec(-6, 5, 1, scale), scale=scale, zero=zero, clamp=(-4.0, 3.0))
    check(Case(Chain(x.shape).nhwc().quantize(attrs).nchw(), x), cflags=("-O0",))


def test_quantize_round_signed_zero_bits():
    """Zero results carry the sign numpy/QONNX give them, bit for bit."""
    x = np.array([-0.3, 0.0, -0.2, 0.3], F32).reshape(1, 4, 1, 1)
    for mode in ("ROUND", "UP", "CEIL", "DOWN", "FLOOR", "HALF_UP", "HALF_DOWN"):
        attrs = QuantizeAttrs("round", QuantSpec(-4, 3), scale=np.array(1.0, F32), zero=np.array(0.0, F32),
                              clamp=(-4.0, 3.0), rounding=mode)
        g = planned(Case(Chain(x.shape).nhwc().quantize(attrs).nchw(), x))
        want = interp.run(g, {"x": x})[g.outputs[0]]
        got = run_c(g, x)[0]["OUTPUT"]
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"{mode}: C {got.ravel()} != oracle {want.ravel()}"


# =================================================================================== unpack

UNPACK_CASES = [1, 65, 130]


def unpack_case(c: int) -> Case:
    rng = np.random.default_rng(c)
    x = rng.standard_normal((2, c, 3, 2)).astype(F32)
    x[:, :, 0, 0] = 0.0  # +1
    scale = rng.uniform(-2, 2, c).astype(F32)
    chain = Chain(x.shape).nhwc().sign_bits().unpack(scale)
    name = chain.cur
    chain.nchw()
    want = np.where(x.transpose(TO_NHWC) >= 0, scale, -scale).astype(F32)
    return Case(chain, x, expect={name: want})


@pytest.mark.parametrize("c", UNPACK_CASES, ids=lambda c: f"c{c}")
def test_unpack(c):
    check(unpack_case(c))


# ======================================================================================= ew

@dataclass(frozen=True)
class EwCase:
    c: int
    per_channel: bool
    cut: int = 0  # drop this many trailing steps
    rank2: bool = False

    def __str__(self) -> str:
        return (f"c{self.c}-{'per_channel' if self.per_channel else 'scalar'}" + (f"-cut{self.cut}" if self.cut else "")
                + ("-rank2" if self.rank2 else ""))


EW_CASES = [EwCase(3, True), EwCase(3, False), EwCase(65, True), EwCase(1, True), EwCase(100, False),
            EwCase(3, True, cut=1), EwCase(64, False, cut=1), EwCase(10, True, rank2=True)]


def ew_steps(c: int, rng, per_channel: bool) -> list[EwStep]:
    def k(lo, hi):
        return rng.uniform(lo, hi, c).astype(F32) if per_channel else np.array(rng.uniform(lo, hi), F32)
    return [EwStep("add", k(-1, 1)), EwStep("mul", k(0.5, 2)), EwStep("sub", k(-1, 1)), EwStep("rsub", k(-2, 2)),
            EwStep("div", k(1, 3)), EwStep("max", k(-1, 0)), EwStep("min", k(0.5, 2)), EwStep("rdiv", k(1, 2)),
            EwStep("mul", np.array(-0.5, F32)), EwStep("sign")]


def ew_case(p: EwCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (3, p.c) if p.rank2 else (1, p.c, 4, 3)
    x = rng.standard_normal(shape).astype(F32)
    x.reshape(-1)[:2] = 0.0
    steps = ew_steps(p.c, rng, p.per_channel)
    steps = steps[:len(steps) - p.cut]  # without the final sign, the float values are checked too
    if p.rank2:
        chain = Chain(shape, "NC").ew(EwStep("max", np.array(0.0, F32)), EwStep("sign"))
        chain.ew(*steps)  # two ew kernels in one model
    else:
        chain = Chain(shape).nhwc().ew(*steps).nchw()
    return Case(chain, x)


@pytest.mark.parametrize("p", EW_CASES, ids=str)
def test_ew_chain(p):
    check(ew_case(p))


# ================================================================================== softmax

SOFTMAX_CASES = [(1, 10), (2, 100), (3, 1), (1, 3, 4, 5)]


def softmax_case(shape) -> Case:
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 4).astype(F32)
    x.reshape(-1)[0] = 80.0  # large logits must not overflow
    chain = Chain(shape, "NC" if len(shape) == 2 else "NCHW").softmax()
    return Case(chain, x, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("shape", SOFTMAX_CASES, ids=lambda s: "x".join(map(str, s)))
def test_softmax(shape):
    check(softmax_case(shape))


# ================================================================================ transpose

TRANSPOSE_CASES = [(1, 3, 4, 5), (2, 65, 3, 1), (1, 1, 5, 7), (2, 4, 1, 1), (1, 7, 1, 9)]


def transpose_case(shape) -> Case:
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(F32)
    chain = Chain(shape).nhwc(force_transpose=True)
    name = chain.cur
    chain.ew(EwStep("add", np.array(1.0, F32))).nchw(force_transpose=True)
    return Case(chain, x, expect={name: x.transpose(TO_NHWC)})


@pytest.mark.parametrize("shape", TRANSPOSE_CASES, ids=lambda s: "x".join(map(str, s)))
def test_transpose(shape):
    check(transpose_case(shape))


def test_transpose_output_nhwc():
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(F32)
    check(Case(Chain(x.shape).nhwc().ew(EwStep("mul", np.array(2.0, F32))), x))  # the NHWC tensor is the output


# ============================================================================ the variants

SUITES = [(binary_case, BINARY_CASES), (fconv_case, FCONV_CASES), (pool_case, POOL_CASES), (quant_case, QUANT_CASES),
          (unpack_case, UNPACK_CASES), (ew_case, EW_CASES), (softmax_case, SOFTMAX_CASES),
          (transpose_case, TRANSPOSE_CASES)]


def _kernels_of(source: str) -> set[str]:
    m = re.search(r"^ \* Kernels: (.*?)(?: \*/)?$", source, re.M)
    assert m, "rendered model.c lists no kernels"
    return {k.strip() for k in m.group(1).split(",") if k.strip()}


def test_every_declared_variant_is_exercised():
    """Every variant in KERNELS is called by at least one case of the suites above."""
    used: set[str] = set()
    for make, cases in SUITES:
        for p in cases:
            used |= _kernels_of(render(planned(make(p)), MODEL).c)
    declared = {k.name for k in KERNELS}
    assert not declared - used, f"variants never exercised: {sorted(declared - used)}"
    assert not {u for u in used if not u.startswith("qcc_ew_")} - declared, "a rendered kernel is not declared"


def _standalone(spec: KernelSpec) -> str:
    env = render_mod._env()
    body = env.get_template(spec.template).render(**spec.variables())
    return ('#include "qcc_rt.h"\n' + body +
            f"void (*const keep_{spec.name})(void) = (void (*)(void)){spec.name};\n")


EW_ALL = KernelSpec("ew", "f32_all", params=(
    ("source", "every step"),
    ("steps", tuple(EwStep(op, np.arange(3, dtype=F32) + 1 if i % 2 else np.array(1.5, F32))
                    for i, op in enumerate(("add", "sub", "rsub", "mul", "div", "rdiv", "max", "min")))
     + (EwStep("sign"),))))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
@pytest.mark.parametrize("spec", list(KERNELS) + [EW_ALL], ids=lambda k: k.name)
def test_variant_compiles_freestanding_without_warnings(spec, tmp_path):
    src = tmp_path / f"{spec.name}.c"
    src.write_text(_standalone(spec))
    r = subprocess.run(["gcc", "-std=c99", "-ffreestanding", "-Wall", "-Wextra", "-Werror", "-pedantic",
                        "-I", str(RUNTIME_DIR), "-c", str(src), "-o", str(tmp_path / "k.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_rendered_models_compile_without_warnings(tmp_path):
    """One generated model per suite compiles cleanly under strict flags."""
    for i, (make, cases) in enumerate(SUITES):
        src = render(planned(make(cases[-1])), MODEL)
        (tmp_path / f"{MODEL}.c").write_text(src.c)
        (tmp_path / f"{MODEL}.h").write_text(src.h)
        shutil.copy(RUNTIME_DIR / "qcc_rt.h", tmp_path / "qcc_rt.h")
        r = subprocess.run(["gcc", "-std=c99", "-ffreestanding", "-Wall", "-Wextra", "-Werror", "-c",
                            str(tmp_path / f"{MODEL}.c"), "-o", str(tmp_path / f"{MODEL}{i}.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
