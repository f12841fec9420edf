"""Every C kernel variant against its numpy oracle (qcc.ir.kernels_ref), and the oracles against
independent maths.

Each case is a small lowered graph built by hand: a float NCHW input, the conversions a real
lowered graph has (transpose/reshape to NHWC, a quantizer to get levels as bit planes or int16,
an unpack to widen planes to int16), the kernel op under test, and the way back to float NCHW
(an unpack of levels to values, a transpose). The graph is memory-planned, rendered, compiled
with cffi and run; the result is compared with ``qcc.ir.interp.run`` on the same graph.

Not only the graph output is compared: every intermediate tensor is kept alive to the end of the
run (a trailing ``reshape`` reading it, which generates no code) so that its arena bytes can be
read back after the call and compared with the oracle, bit for bit. That is how the ``bits``
tensors are checked word for word, every plane and the unused tail bits included, and ``i16``
tensors value for value. Each module runs three times on an arena pre-filled with 0x00, 0xA5 and
0xFF: results must not depend on stale arena contents, nothing may be written outside the arena,
the input must stay untouched. The arena is laid out again for the tests (``apart``, host and
NEON runs alike) with a checked gap after every buffer, so a kernel writing past its own tensor
or im2col scratch fails even where the bytes it hits belong to no one.

The oracle itself is checked against independent maths wherever a case can state it: levels
from the quantizer computed by hand (inputs are built so that the expected level is known), a
conv of integer levels by shifted slices, pooling one window at a time, Python's ``decimal``
rounding. Levels of a ``bits`` tensor are read back through a bit-layout helper that is itself
checked against a naive bit loop (``test_oracle_plane_layout``).

Cross-ISA variants (NEON, aarch64) cannot be loaded by cffi: each suite's cases are merged into
one graph, built as a standalone program for the neon target and run once under qemu-aarch64,
with the same comparisons on the outputs and on every arena tensor (``test_neon_variants``).

Comparisons are exact (bits as uint64 words, int16 exactly, floats by value, so -0.0 == +0.0)
except where a case states a tolerance: float convolutions and average pools on arbitrary
(non-dyadic) floats, whose summation order legitimately differs from the oracle's float64 sum,
and softmax, whose exp is a polynomial rather than libm's.
"""
from __future__ import annotations

import dataclasses
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
from qcc.codegen.build import build, host_isa
from qcc.codegen.kernels import EW_ISAS, KMAJOR_MAX_C, KERNELS, RUNS, KernelSpec, variants
from qcc.codegen.render import RUNTIME_DIR, render
from qcc.ir import interp
from qcc.ir.graph import Graph, Node, Tensor
from qcc.ir.kernels_ref import levels, pack_planes, unpack_bits, unpack_planes, words
from qcc.ir.ops import (BinaryAttrs, ConcatAttrs, ConvAttrs, EwAttrs, EwStep, LayerAttrs, PoolAttrs,
                        QuantizeAttrs, ReshapeAttrs, SoftmaxAttrs, ThresholdAttrs, TransposeAttrs, UnpackAttrs)
from qcc.ir.quant import QuantSpec
from qcc.passes.plan_memory import ALIGN, nbytes, plan_memory, scratch_bytes

F32 = np.float32
BIPOLAR = QuantSpec(-1, 1, 2)
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
CHANNELS = (1, 3, 63, 64, 65, 100, 128)
GUARD = 256  # bytes checked on each side of the arena
FILLS = (0x00, 0xA5, 0xFF)
MODEL = "k"

# Level grids q = lo + step * code used for inputs, weights and pooled tensors.
GRIDS = {
    "pm1": BIPOLAR,                   # {-1, +1}: one plane, bit 1 = +1
    "u1": QuantSpec(0, 1, 1),         # {0, 1}
    "n1": QuantSpec(-1, 0, 1),        # {-1, 0}: one plane, lo != 0
    "t": QuantSpec(-1, 1, 1),         # ternary: two planes, code 3 unused
    "u2": QuantSpec(0, 3, 1),         # unsigned 2-bit
    "i2": QuantSpec(-2, 1, 1),        # signed 2-bit
    "o2": QuantSpec(-3, 3, 2),        # {-3, -1, 1, 3}: two planes, step 2
    "u3": QuantSpec(0, 7, 1),         # three planes (kernels allow it; the lowering widens to i16)
    "u4": QuantSpec(0, 15, 1),        # int16 storage
    "i8": QuantSpec(-128, 127, 1),    # int16 storage
    "u8": QuantSpec(0, 255, 1),       # int16 storage
    "w8": QuantSpec(-127, 127, 1),    # narrow int8 weights
    "i9": QuantSpec(-256, 255, 1),    # beyond int8 (the VNNI dot-product conv refuses it)
    "u9": QuantSpec(0, 511, 1),
    "i15": QuantSpec(-16384, 16383, 1),  # the widest span the AVX2 dot-product conv takes (hi - lo = 32767)
}


def storage(spec: QuantSpec) -> str:
    """The lowering's policy: levels of at most 2 bits are bit planes, wider ones int16."""
    return "bits" if spec.bits <= 2 else "i16"


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

    def op(self, op: str, attrs, shape, dtype: str = "f32", layout: str = "NHWC", quant=None,
           inputs: tuple[str, ...] | None = None) -> "Chain":
        """Append a node reading ``inputs`` (default: the current tensor); its output becomes current."""
        i = len(self.nodes)
        name = f"t{i}_{op}"
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape), dtype, quant=quant, layout=layout)
        self.nodes.append(Node(op, tuple(inputs or (self.cur,)), (name,), attrs, f"n{i}_{op}"))
        self.cur = name
        return self

    def at(self, name: str) -> "Chain":
        """Continue from an earlier tensor (branches)."""
        assert name in self.tensors
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
        return self.op("quantize", attrs, self.t.shape, attrs.out, self.t.layout, attrs.spec)

    def sign_bits(self) -> "Chain":
        return self.quantize(QuantizeAttrs("sign", BIPOLAR, out="bits"))

    def unpack(self, scale=None, out: str = "f32") -> "Chain":
        """Levels (bits or i16) to values ``scale[c] * q`` (f32) or to i16 levels."""
        t = self.t
        assert t.dtype in ("bits", "i16") and t.quant is not None
        spec = t.quant if scale is None else t.quant.with_scale(np.asarray(scale, F32))
        return self.op("unpack", UnpackAttrs(spec, t.shape[-1], out), t.shape, out, t.layout,
                       t.quant if out == "i16" else None)

    def values(self, q, rng, expect: dict) -> "Chain":
        """Levels ``q`` (the current tensor) to float values with a per-channel scale, stating them."""
        if self.t.dtype == "f32":
            return self
        c = self.t.shape[-1]
        scale = rng.uniform(-2, 2, c).astype(F32)
        self.unpack(scale)
        expect[self.cur] = (np.asarray(q).astype(F32) * scale).astype(F32)
        return self

    def layer(self, attrs: LayerAttrs) -> "Chain":
        n, h, w, _ = self.t.shape
        oh, ow = attrs.conv.out_hw(h, w)
        assert oh >= 1 and ow >= 1
        quant = attrs.thr.spec if attrs.thr is not None else None
        return self.op("layer", attrs, (n, oh, ow, attrs.out_channels), attrs.out, "NHWC", quant)

    def pool(self, attrs: PoolAttrs) -> "Chain":
        n, h, w, c = self.t.shape
        oh, ow = attrs.out_hw(h, w)
        if self.t.dtype == "bits":
            attrs = dataclasses.replace(attrs, levels=self.t.quant)
        return self.op("pool", attrs, (n, oh, ow, c), self.t.dtype, "NHWC", self.t.quant)

    def ew(self, *steps: EwStep) -> "Chain":
        return self.op("ew", EwAttrs(tuple(steps), "test chain"), self.t.shape, layout=self.t.layout)

    def softmax(self) -> "Chain":
        return self.op("softmax", SoftmaxAttrs(-1), self.t.shape, layout=self.t.layout)

    def mean(self) -> "Chain":
        t = self.t
        return self.op("mean", None, (t.shape[0],) + (1,) * (len(t.shape) - 1), layout=t.layout)

    def ew2(self, a: str, b: str, op: str) -> "Chain":
        """``a op b``; the one of them with one value per sample is broadcast, as the lowering does."""
        sa, sb = self.tensors[a].shape, self.tensors[b].shape
        bcast = "none" if sa == sb else ("a" if all(d == 1 for d in sa[1:]) else "b")
        t = self.tensors[b if bcast == "a" else a]
        return self.op("ew2", BinaryAttrs(op, bcast), t.shape, layout=t.layout, inputs=(a, b))

    def concat(self, names: list[str]) -> "Chain":
        chans = [self.tensors[x].shape[-1] for x in names]
        t = self.tensors[names[0]]
        offsets = tuple(int(o) for o in np.cumsum([0] + chans[:-1]))
        return self.op("concat", ConcatAttrs(offsets), t.shape[:-1] + (sum(chans),), layout=t.layout,
                       inputs=tuple(names))

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
    expect: dict = field(default_factory=dict)  # tensor -> values (levels for bits/i16), from independent maths
    rtol: float = 0.0
    atol: float = 0.0
    expect_rtol: float = 0.0
    expect_atol: float = 0.0


def planned(case: Case) -> Graph:
    return plan_memory(case.chain.graph()).graph


def storage_shape(t: Tensor) -> tuple[int, ...]:
    """Shape of a tensor's storage: bits hold planes * words(C) uint64 per pixel."""
    if t.dtype == "bits":
        return t.shape[:-1] + (t.quant.bits * words(t.shape[-1]),)
    return t.shape


def apart(g: Graph) -> tuple[Graph, list[tuple[int, int]]]:
    """``g`` with its arena laid out again, every buffer (tensor or im2col scratch) on its own with
    at least ALIGN bytes between buffers; and those gaps, (start, end) byte ranges no kernel may
    write. The test graphs keep every tensor live to the end, so no buffer shares memory anyway;
    apart, a write past a buffer lands in a gap, where it is seen, instead of in a neighbour that
    may be written later."""
    root, gaps = g.meta["arena_root"], [(0, ALIGN)]

    def place(nb: int) -> int:  # the next buffer's offset, and the gap after it
        at = gaps[-1][1]
        gaps.append((at + nb, -(-(at + nb) // ALIGN) * ALIGN + ALIGN))
        return at
    offset = {r: place(nbytes(g.tensors[r])) for r in dict.fromkeys(root[n] for n in g.meta["arena"])}
    scratch = {i: (place(scratch_bytes(g, g.nodes[i])), nb) for i, (_, nb) in g.meta["scratch"].items()}
    arena = {n: offset[root[n]] for n in g.meta["arena"]}
    return g.replace(meta=dict(g.meta, arena=arena, scratch=scratch, arena_size=gaps[-1][1])), gaps


def run_c(g: Graph, x: np.ndarray, cflags: tuple[str, ...] = (), isa: str = "scalar") -> list[dict[str, np.ndarray]]:
    """Build and run ``g`` (its buffers apart) once per arena fill; each run's output and arena
    tensors, raw storage."""
    g, gaps = apart(g)
    ffi, lib = build(render(g, MODEL, isa=isa), MODEL, cflags)
    run = getattr(lib, f"{MODEL}_run")
    size = g.meta["arena_size"]
    out_size = sum(g.tensors[o].size for o in g.outputs)  # several outputs: concatenated, flat
    results = []
    for fill in FILLS:
        buf = np.full(size + 2 * GUARD + 64, fill, np.uint8)
        start = GUARD + (-(buf.ctypes.data + GUARD) % 64)
        arena = buf[start:start + size]
        ptr = ffi.cast("char *", ffi.from_buffer("char[]", buf)) + start
        inp = np.ascontiguousarray(x, F32).reshape(-1).copy()
        out = np.full(out_size, np.nan, F32)
        rc = run(ffi.from_buffer("float[]", inp), ffi.from_buffer("float[]", out), ptr)
        assert rc == 0, f"{MODEL}_run returned {rc}"
        assert (buf[:start] == fill).all(), "written before the arena"
        assert (buf[start + size:] == fill).all(), "written past the arena"
        for a, b in gaps:
            assert (arena[a:b] == fill).all(), f"written between buffers, at arena bytes {a}..{b}"
        assert np.array_equal(inp.view(np.uint32), np.ascontiguousarray(x, F32).reshape(-1).view(np.uint32)), \
            "the input buffer was modified"
        got = {"OUTPUT": out.reshape(g.tensors[g.outputs[0]].shape) if len(g.outputs) == 1 else out}
        for name, at in g.meta["in_output"].items():  # graph outputs computed in the output buffer
            got[name] = out[at:at + g.tensors[name].size].reshape(storage_shape(g.tensors[name])).copy()
        for name, off in g.meta["arena"].items():
            t = g.tensors[name]
            if name.endswith("__keep"):
                continue
            raw = arena[off:off + nbytes(t)].copy()
            dt = {"bits": "<u8", "i16": "<i2", "f32": F32}[t.dtype]
            got[name] = raw.view(dt).reshape(storage_shape(t))
        results.append(got)
    return results


def _compare(what: str, got: np.ndarray, ref: np.ndarray, t: Tensor, rtol: float, atol: float) -> None:
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if t.dtype == "bits":
        assert ref.dtype == np.uint64, f"{what}: oracle dtype {ref.dtype}"
        bad = np.argwhere(got != ref)
        assert bad.size == 0, (f"{what}: {len(bad)} packed words differ, first at {tuple(bad[0])}: "
                               f"C {int(got[tuple(bad[0])]):#018x} != oracle {int(ref[tuple(bad[0])]):#018x}")
        return
    if t.dtype == "i16":
        assert ref.dtype == np.int16, f"{what}: oracle dtype {ref.dtype}"
        np.testing.assert_array_equal(got, ref, err_msg=f"{what} (int16 levels)")
        return
    ref = np.asarray(ref, F32)
    assert not np.isnan(got).any() or np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaN in C output"
    if rtol or atol:
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=what)
    else:
        np.testing.assert_array_equal(got, ref, err_msg=f"{what} (exact)")


def check(case: Case, cflags: tuple[str, ...] = (), isa: str = "scalar") -> None:
    g = planned(case)
    env = interp.run(g, {"x": case.x}, keep_all=True)
    # the oracle itself: storage shapes and dtypes, unused tail bits zero in every plane, and it
    # agrees with independent maths
    for name, t in g.tensors.items():
        if name not in env or name == "x":
            continue
        v = env[name]
        assert v.shape == storage_shape(t), f"oracle: '{name}' has shape {v.shape}, storage {storage_shape(t)}"
        assert v.dtype == {"bits": np.uint64, "i16": np.int16, "f32": F32}[t.dtype], \
            f"oracle: '{name}' is {v.dtype} for {t.dtype} storage"
        if t.dtype == "bits":
            c, wd = t.shape[-1], words(t.shape[-1])
            tail = unpack_bits(v.reshape(v.shape[:-1] + (t.quant.bits, wd)), wd * 64)[..., c:]
            assert not tail.any(), f"oracle: tail bits of '{name}' are not zero"
    for name, want in case.expect.items():
        t = g.tensors[name]
        have = levels(env[name], t.quant, t.shape[-1]) if t.dtype == "bits" else env[name]
        if case.expect_rtol or case.expect_atol:
            np.testing.assert_allclose(have, want, rtol=case.expect_rtol, atol=case.expect_atol,
                                       err_msg=f"oracle vs independent maths: {name}")
        else:
            np.testing.assert_array_equal(have, want, err_msg=f"oracle vs independent maths: {name}")
    runs = run_c(g, case.x, cflags, isa)
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


def naive_planes(codes: np.ndarray, planes: int) -> np.ndarray:
    """The documented bit layout, one bit at a time: plane p of pixel holds bit p of each code,
    channel c at bit c % 64 of word c // 64 of that plane; planes follow each other."""
    lead, c = codes.shape[:-1], codes.shape[-1]
    wd = words(c)
    out = np.zeros(lead + (planes * wd,), np.uint64)
    for idx in np.ndindex(*lead):
        for ch in range(c):
            for p in range(planes):
                if (int(codes[idx + (ch,)]) >> p) & 1:
                    out[idx + (p * wd + ch // 64,)] |= np.uint64(1 << (ch % 64))
    return out


def grid_input(spec: QuantSpec, shape, rng, mode: str = "", corner_lo: bool = False, extreme: bool = False):
    """A float NCHW input, the quantizer (its ``out`` still to set) that maps it onto ``spec``, and
    the levels (NHWC, int64) that quantizer must give, known by construction:

    * sign (bipolar): ``x >= 0`` is +1 (zeros included);
    * round (step 1): ``x = (t + f) * scale[c]`` with ``t`` an integer up to two beyond the grid,
      ``f`` in {0, +-1/4} (never a tie), any integer zero point: the level is ``clip(t, lo, hi)``;
    * thresholds: ``x = lo + step * (k + f)``, thresholds half way between levels: the level is
      ``lo + step * clip(k, 0, L - 1)``.

    ``corner_lo`` puts the lowest level at pixel (0, 0); ``extreme`` uses only the ends of the grid
    (bipolar: the first sample is all +1; round: the first half of the channels is all hi).
    """
    c = shape[1]
    mode = mode or ("sign" if spec.bipolar else "round" if spec.step == 1 else "thresholds")
    nlev = spec.levels
    if mode == "sign":
        assert spec.bipolar
        x = rng.standard_normal(shape).astype(F32)
        x[rng.random(shape) < 0.1] = 0.0
        if extreme:  # signed zeros, and a first sample all +1: XOR with an all -1 weight row is all ones
            x[rng.random(shape) < 0.1] = -0.0
            x[0] = np.abs(x[0])
        if corner_lo:
            x[..., 0, 0] = -1.0
        q = np.where(x >= 0, 1, -1)
        attrs = QuantizeAttrs("sign", spec)
    elif mode == "round":
        assert spec.step == 1
        scale = rng.choice(np.array([0.25, 0.5, 1.0, 2.0], F32), c)
        zero = int(rng.integers(-2, 3))
        if extreme:  # the first half of the channels all hi: every row has long runs of the top code
            t = rng.choice(np.array([spec.lo - 2, spec.lo, spec.hi, spec.hi + 2]), shape)
            t[:, :max(1, c // 2)] = spec.hi
        else:
            t = rng.integers(spec.lo - 2, spec.hi + 3, shape)
        f = rng.choice(np.array([0.0, 0.25, -0.25]), shape)
        if corner_lo:
            t[..., 0, 0], f[..., 0, 0] = spec.lo - 1, 0.0
        x = ((t + f) * scale[:, None, None]).astype(F32)
        q = np.clip(t, spec.lo, spec.hi)
        attrs = QuantizeAttrs("round", spec, scale=scale, zero=np.array(zero, F32),
                              clamp=(float(spec.lo + zero), float(spec.hi + zero)))
    else:
        k = rng.choice(np.array([-1, nlev]), shape) if extreme else rng.integers(-1, nlev + 1, shape)
        f = rng.choice(np.array([0.0, 0.25, -0.25]), shape)
        if corner_lo:
            k[..., 0, 0] = 0
        x = (spec.lo + spec.step * (k + f)).astype(F32)
        thr = (spec.lo + spec.step * (np.arange(nlev - 1) + 0.5)).astype(F32)
        q = spec.lo + spec.step * np.clip(k, 0, nlev - 1)
        attrs = QuantizeAttrs("thresholds", spec, thresholds=np.tile(thr, (c, 1)))
    return x, np.ascontiguousarray(q.astype(np.int64).transpose(TO_NHWC)), attrs


def grid_weights(spec: QuantSpec, shape, rng) -> np.ndarray:
    """Weight levels on ``spec`` (Co, kh, kw, Ci/g); output channel 0 all ``hi``, channel 1 all ``lo``."""
    codes = rng.integers(0, spec.levels, shape)
    if shape[0] >= 2:
        codes[0], codes[1] = spec.levels - 1, 0
    return (spec.lo + spec.step * codes).astype(np.int32)


def threshold_table(acc: np.ndarray, bound: int, steps: int, rng, even: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel thresholds exercising every edge: values the accumulator reaches (sign +1 and
    -1), constant channels (-B: always, B+1: never, and +-2^40, which the C code clips to int32),
    and unused steps parked at B+1. With many steps (8-bit outputs), channels of kind 0 are spaced
    nearly evenly over the accumulator's range, as a folded uniform quantizer's are: the C search
    guesses from the mean spacing there (and steps far from its guess on the other kinds).
    ``even``: a requantizer's thresholds, ceil(t0 + j * spacing) over the accumulator's range
    (sign +1 and -1), some moved by one (as float32 folds do), with constant channels (kinds 2
    to 4): render.py proves its guess the count or one less."""
    co = acc.shape[-1]
    thr = np.empty((co, steps), np.int64)
    sign = np.ones(co, np.int8)
    for c in range(co):
        vals = acc[..., c].reshape(-1).astype(np.int64)
        kind = c % 8
        s = -1 if kind in (1, 3, 5, 7) else 1
        if even and kind not in (2, 3, 4):
            lo, hi = int((s * vals).min()), int((s * vals).max())
            spacing = max(1.0, (hi - lo) / steps * rng.uniform(0.8, 1.1))
            t = np.ceil(lo + rng.uniform(0, spacing) + spacing * np.arange(steps)).astype(np.int64)
            t[1:-1] -= (rng.random(steps - 2) < 0.05) & (np.diff(t)[:-1] > 1)  # float32 rounding
        elif kind == 0 and steps >= 16:
            lo, hi = int(vals.min()), int(vals.max())
            t = lo + (hi - lo + 1) * np.arange(steps) // steps + rng.integers(0, 2, steps)
        elif kind in (0, 1):
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


# Threshold outputs: name -> (storage, grid). Thresholds count L - 1 steps of the grid.
OUT_LEVELS = {
    "pm1": ("bits", BIPOLAR),
    "u1": ("bits", QuantSpec(0, 1, 1)),
    "u2": ("bits", QuantSpec(0, 3, 1)),
    "i2": ("bits", QuantSpec(-2, 1, 1)),
    "o2": ("bits", QuantSpec(-3, 3, 2)),
    "i16": ("i16", QuantSpec(-4, 4, 1)),
    "i16s": ("i16", QuantSpec(-100, 100, 25)),
    "i16w": ("i16", QuantSpec(-128, 127, 1)),  # 255 thresholds: the guessed search (qcc_threshold_count)
    "i16q": ("i16", QuantSpec(-128, 127, 1)),  # 255 evenly spaced: the guess and one probe, no search
}
F32_OUTS = ("f32", "f32_mul", "f32_bias", "f32_mb")


def output_transform(out: str, acc: np.ndarray, bound: int, rng) -> tuple[dict, np.ndarray]:
    """LayerAttrs keywords for output transform ``out``, and the expected output (levels or values)."""
    co = acc.shape[-1]
    if out in OUT_LEVELS:
        kind, spec = OUT_LEVELS[out]
        thr, sign = threshold_table(acc, bound, spec.levels - 1, rng, even=out == "i16q")
        n = ((acc * sign)[..., None] >= thr).sum(axis=-1)
        return dict(thr=ThresholdAttrs(thr, sign, spec), out=kind), spec.lo + spec.step * n
    assert out in F32_OUTS + ("f32_off",), out
    mul = rng.uniform(-2, 2, co).astype(F32) if out in ("f32_mul", "f32_mb", "f32_off") else None
    bias = rng.uniform(-3, 3, co).astype(F32) if out in ("f32_bias", "f32_mb", "f32_off") else None
    off = rng.integers(-1000, 1001, co).astype(np.int32) if out == "f32_off" else None  # integer accumulators only
    y = (acc if off is None else acc + off).astype(F32)
    if mul is not None:
        y = (y * mul).astype(F32)
    if bias is not None:
        y = (y + bias).astype(F32)
    return dict(mul=mul, bias=bias, acc_offset=off, out="f32"), y


def test_threshold_guesses_need_one_probe_where_claimed():
    """render's guess of the threshold count, k = (int32_t)((float)(s - thr[0] + off) * f), as the
    C computes it (render_mod.threshold_guess), against the count itself for every s at the ends
    of every segment between thresholds (the guess and the count are both monotone, so that
    covers every s): where render says one probe is enough, k + (s >= thr[k]) is the count.
    Evenly spaced thresholds (ceil(t0 + j * spacing), spacing 2 to 10^5: accumulators up to
    about 2^25), one of them moved by one (as float32 folds do), are; uneven ones are not, and
    keep the mean spacing's guess."""
    rng = np.random.default_rng(5)
    for spacing in (2.0, 3.7, 17.3, 251.9, 1e4 + 0.3, 123456.789):
        t0 = rng.uniform(-1e6, 1e6, 6)
        sp = spacing * rng.uniform(1, 1.5, 6)
        thr = np.ceil(t0[:, None] + np.arange(255) * sp[:, None]).astype(np.int64)
        thr[1, 100] -= 1  # float32 rounding
        thr[5] = np.sort(rng.integers(-5000, 5000, 255))  # uneven: searched
        for rows, probe in ((thr[:5], True), (thr, False)):
            off, f, got = render_mod._threshold_guesses(rows)
            assert got == probe, f"spacing {spacing}"
            assert off.dtype == np.int32 and f.dtype == np.float32
            for c, t in enumerate(rows):
                s = np.unique(np.concatenate([t[1:] - 1, t[:-1]]))
                want = (s[:, None] >= t).sum(axis=1)
                k = render_mod.threshold_guess(s - t[0], np.int64(off[c]), f[c:c + 1])[1]
                if probe:
                    assert 0 <= off[c] and t[-1] - t[0] + off[c] < 1 << 31  # d + off is an int32
                    np.testing.assert_array_equal(k + (s >= t[np.minimum(k, len(t) - 1)]), want, err_msg=f"{spacing} {c}")
                    assert (k <= len(t) - 1).all()
    flat = np.array([[-7] * 255, [9] * 255])  # one distinct threshold: never guessed
    assert render_mod._threshold_guesses(np.vstack([flat, thr[:1]]))[2]


def test_probe_windows_decide_the_count_outside():
    """render's probe window [lo, hi) per channel, against the count for every s inside the
    thresholds (thr[0] <= s < thr[n-1]; spans up to 2^20, so every s is tried): where the guess's
    fraction x - k is below lo the count is k, from hi on it is k + 1. The window is narrow where
    the thresholds are evenly spaced up to a rounding: under one percent of the outputs need the
    probe at spacings of hundreds and more."""
    rng = np.random.default_rng(11)
    for spacing in (2.0, 3.7, 17.3, 251.9, 4111.7):
        t0 = rng.uniform(-1e6, 1e6, 5)
        thr = np.ceil(t0[:, None] + np.arange(255) * (spacing * rng.uniform(1, 1.5, 5))[:, None]).astype(np.int64)
        thr[1, 100] -= 1  # float32 rounding
        thr[2, 7] += 1
        thr[3, 0] = thr[3, 1] - 1  # a first step of one
        off, f, probe = render_mod._threshold_guesses(thr)
        assert probe, spacing
        window = render_mod._probe_windows(thr, off, f)
        for c, t in enumerate(thr):
            s = np.arange(t[0], t[-1], dtype=np.int64)
            x, k = render_mod.threshold_guess(s - t[0], np.int64(off[c]), f[c:c + 1])
            frac = x - k.astype(F32)
            want = (s[:, None] >= t).sum(axis=1)
            stay, up = frac < window[0, c], frac >= window[1, c]
            assert not (stay & up).any()
            np.testing.assert_array_equal(want[stay], k[stay], err_msg=f"{spacing} {c}")
            np.testing.assert_array_equal(want[up], k[up] + 1, err_msg=f"{spacing} {c}")
            if spacing > 100:  # evenly spaced: the probe is rare
                assert (~stay & ~up).mean() < 0.01, (spacing, c, (~stay & ~up).mean())


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_requantizer_thresholds_render_one_probe(isa):
    """The layer cases with a requantizer's thresholds (i16q) render the guess with one probe, so
    the layer tests above run it in every variant's output transform; the uneven ones (i16w) do not."""
    cases = [p for p in DCONV_CASES + ICONV_ALL + list(BGEMM_CASES) if p.out in ("i16q", "i16w")]
    for p in cases:
        src = render(planned(layer_case(p)), MODEL, isa=isa).c
        assert re.findall(r"probe, flips \*/\n.*?, (\d), \d\};", src, re.S) == ["1" if p.out == "i16q" else "0"], p


def test_oracle_plane_layout():
    """pack_planes / unpack_planes / levels against the bit layout written out one bit at a time."""
    rng = np.random.default_rng(7)
    for c in (1, 63, 64, 65, 130):
        for spec in (BIPOLAR, GRIDS["t"], GRIDS["i2"], GRIDS["o2"], GRIDS["u3"]):
            codes = rng.integers(0, spec.levels, (2, 3, c))
            packed = pack_planes(codes, spec.bits)
            np.testing.assert_array_equal(packed, naive_planes(codes, spec.bits), err_msg=f"{spec} c{c}")
            np.testing.assert_array_equal(unpack_planes(packed, c, spec.bits), codes)
            np.testing.assert_array_equal(levels(packed, spec, c), spec.lo + spec.step * codes)


# ================================================================================== layers

@dataclass(frozen=True)
class ConvCase:
    x: str  # grid of the input levels (GRIDS), or "f32" for float values
    w: str  # grid of the weight levels (GRIDS), or "f32"
    ci: int
    co: int
    hw: tuple[int, int] = (3, 3)
    k: tuple[int, int] = (3, 3)
    s: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    out: str = "f32_mb"  # F32_OUTS, "f32_off" (affine with an integer accumulator offset) or OUT_LEVELS
    n: int = 1
    group: int = 1
    data: str = ""  # f32 input: int | float | quant | unpacked; levels input: "" | extreme
    feed: str = ""  # levels input: "" (quantized into its storage) | "bits" | "i16" (bits widened by unpack)

    def __str__(self) -> str:
        s = (f"{self.x}x{self.w}-ci{self.ci}-co{self.co}-{self.hw[0]}x{self.hw[1]}-k{self.k[0]}x{self.k[1]}"
             f"-s{self.s[0]}{self.s[1]}-p{''.join(map(str, self.pads))}-{self.out}")
        s += f"-n{self.n}" if self.n != 1 else ""
        s += f"-g{self.group}" if self.group != 1 else ""
        s += f"-{self.data}" if self.data else ""
        return s + (f"-via_{self.feed}" if self.feed else "")


def _rot(seq, k):
    return seq[k:] + seq[:k]


def _sweep(make, rotations, outs):
    """Every in and every out channel count, paired by rotations of CHANNELS, outputs cycled."""
    cases = []
    for j, r in enumerate(rotations):
        for i, (ci, co) in enumerate(zip(CHANNELS, _rot(CHANNELS, r))):
            cases.append(make(ci, co, outs[(i + 3 * r) % len(outs)], i + len(CHANNELS) * j))
    return cases


def layer_case(p: ConvCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (p.n, p.ci, *p.hw)
    conv = ConvAttrs(p.k, p.s, p.pads, group=p.group)
    cig = p.ci // p.group
    wshape = (p.co, *p.k, cig)
    chain = Chain(shape).nhwc()
    expect: dict = {}
    float_tol = None
    if p.x == "f32":  # fconv: float values in, float weights, affine output only
        assert p.w == "f32" and p.out in F32_OUTS
        if p.data == "float":
            x = rng.standard_normal(shape).astype(F32)
            w = rng.standard_normal(wshape).astype(F32)
            xin = x.astype(np.float64).transpose(TO_NHWC)
            float_tol = float(np.abs(xin).max() * np.abs(w).max() * p.k[0] * p.k[1] * cig)
        elif p.data == "quant":  # levels held as floats: round(x / 0.5) clamped to [-4, 3]
            spec = QuantSpec(-4, 3, 1, F32(0.5))
            x, xin, qa = grid_input(spec, shape, rng)
            chain.quantize(dataclasses.replace(qa, out="f32"))
            expect[chain.cur] = xin.astype(F32)
            w = rng.integers(-3, 4, wshape).astype(F32)
        elif p.data == "unpacked":  # 2-bit planes unpacked to values (power-of-two scales: exact sums)
            x, q, qa = grid_input(GRIDS["u2"], shape, rng)
            scale = rng.choice(np.array([0.25, 0.5, 1.0, 2.0], F32), p.ci)
            chain.quantize(dataclasses.replace(qa, out="bits")).unpack(scale)
            xin = q * scale.astype(np.float64)
            expect[chain.cur] = xin.astype(F32)
            w = rng.integers(-2, 3, wshape).astype(F32)
        else:
            assert p.data == "int"
            x = rng.integers(-4, 5, shape).astype(F32)
            w = rng.integers(-3, 4, wshape).astype(F32)
            xin = x.astype(np.float64).transpose(TO_NHWC)
        kw: dict = {}
        bound = 0
    else:
        xs, ws = GRIDS[p.x], GRIDS[p.w]
        x, q, qa = grid_input(xs, shape, rng, extreme=p.data == "extreme")
        chain.quantize(dataclasses.replace(qa, out="bits" if p.feed else storage(xs)))
        expect[chain.cur] = q
        if p.feed == "i16":
            assert chain.t.dtype == "bits"
            chain.unpack(out="i16")
            expect[chain.cur] = q
        assert p.feed != "bits" or chain.t.dtype == "bits"
        w = grid_weights(ws, wshape, rng)
        xin = q
        kw = dict(x_spec=xs, w_spec=ws)
        bound = xs.max_abs * ws.max_abs * p.k[0] * p.k[1] * cig
        assert bound < 1 << 31
    acc = naive_conv(xin, w, p.k, p.s, p.pads, p.group)
    tk, want = output_transform(p.out, acc, bound, rng)
    chain.layer(LayerAttrs(conv, w, **kw, **tk, source="test layer"))
    expect[chain.cur] = want
    chain.values(want, rng, expect).nchw()
    if float_tol is not None:  # |error| <= ~n * eps * sum |x w|: tolerate relative to the largest terms
        mul = np.abs(tk["mul"]).max() if tk.get("mul") is not None else 1.0
        return Case(chain, x, expect=expect, rtol=1e-5, atol=1e-6 * float_tol * mul,
                    expect_rtol=1e-6, expect_atol=1e-6 * float_tol * mul)
    return Case(chain, x, expect=expect)


# ---------------------------------------------------------------- binary XNOR layer (bgemm)

BGEMM_OUTS = ("f32_mb", "pm1", "u2", "i16", "f32_mul", "i2", "f32_bias", "o2", "i16s", "f32", "u1", "f32_off")

BGEMM_CASES = (
    _sweep(lambda ci, co, out, i: ConvCase("pm1", "pm1", ci, co, out=out), (1, 2, 3), BGEMM_OUTS)
    + [ConvCase("pm1", "pm1", 65, 65, out="pm1"), ConvCase("pm1", "pm1", 100, 128, out="u2", k=(1, 1), pads=(0, 0, 0, 0))]
    # geometry: K tails, strides, symmetric/asymmetric pads, 1x1 and odd spatial sizes, batch
    + [
        ConvCase("pm1", "pm1", 65, 100, hw=(1, 1), k=(1, 1), pads=(0, 0, 0, 0), out="f32_mb"),
        ConvCase("pm1", "pm1", 64, 65, hw=(5, 5), k=(3, 3), out="pm1"),
        ConvCase("pm1", "pm1", 3, 63, hw=(7, 7), k=(3, 3), s=(2, 2), out="i16"),
        ConvCase("pm1", "pm1", 100, 64, hw=(6, 5), k=(5, 5), pads=(2, 2, 2, 2), out="u2"),
        ConvCase("pm1", "pm1", 1, 128, hw=(9, 7), k=(5, 5), s=(2, 2), pads=(0, 0, 0, 0), out="f32_mb"),
        ConvCase("pm1", "pm1", 63, 3, hw=(7, 7), k=(7, 7), pads=(3, 3, 3, 3), out="i16s"),
        ConvCase("pm1", "pm1", 128, 1, hw=(9, 8), k=(7, 7), s=(2, 2), pads=(0, 1, 2, 1), out="i2"),
        ConvCase("pm1", "pm1", 65, 65, hw=(4, 5), k=(1, 3), pads=(0, 1, 0, 1), out="pm1"),
        ConvCase("pm1", "pm1", 65, 67, hw=(4, 4), k=(3, 3), out="i16w"),
        ConvCase("pm1", "pm1", 65, 70, hw=(4, 4), k=(3, 3), out="i16q"),
        # all-ones XORs (channel 1's weights are all -1) over long rows: the byte counts must be
        # widened in time; AVX2's tiles for few rows over 2 segments of the rows' index (9 rows of
        # 1152 row bytes; 1 row of 1024), and 3 segments (9 rows of 1600)
        ConvCase("pm1", "pm1", 1024, 8, hw=(3, 3), k=(3, 3), out="f32", data="extreme"),
        ConvCase("pm1", "pm1", 8192, 4, hw=(1, 1), k=(1, 1), pads=(0, 0, 0, 0), out="f32", data="extreme"),
        ConvCase("pm1", "pm1", 512, 9, hw=(3, 3), k=(5, 5), pads=(2, 2, 2, 2), out="pm1"),
        ConvCase("pm1", "pm1", 3, 100, hw=(5, 3), k=(3, 1), s=(2, 1), pads=(1, 0, 1, 0), out="f32"),
        ConvCase("pm1", "pm1", 64, 64, hw=(6, 6), k=(2, 2), s=(2, 2), pads=(0, 0, 0, 0), out="o2"),
        ConvCase("pm1", "pm1", 65, 3, hw=(3, 3), k=(2, 2), pads=(0, 0, 1, 1), out="i16"),
        ConvCase("pm1", "pm1", 100, 65, hw=(1, 1), k=(3, 3), pads=(2, 2, 2, 2), out="pm1"),
        ConvCase("pm1", "pm1", 1, 1, hw=(1, 1), k=(3, 3), pads=(1, 1, 1, 1), out="u2"),
        ConvCase("pm1", "pm1", 64, 100, hw=(7, 6), k=(5, 5), s=(2, 2), pads=(2, 0, 1, 2), out="pm1"),
        ConvCase("pm1", "pm1", 3, 64, hw=(5, 5), k=(3, 3), s=(2, 2), pads=(0, 1, 2, 1), out="f32_mul", n=2),
        ConvCase("pm1", "pm1", 65, 63, hw=(3, 5), k=(1, 3), s=(1, 2), pads=(1, 1, 0, 0), out="u1", n=2),
        ConvCase("pm1", "pm1", 16, 16, hw=(17, 17), k=(16, 16), pads=(0, 0, 0, 0), out="i16"),  # 256 taps, the max
        # AVX2 tiles for many rows (lut_tile, from 64 rows on: 128, 64 or 32 channels, as many as
        # the buffer holds, 2, 4 or 8 rows a tile): all-ones XORs over 576 nibble steps (the byte
        # counts widened every 63), 64 + 11 channels (21 padded columns); rows of 576 bytes, the
        # longest (64 channels at most: 64 + 32, all-ones again); 75 rows (the last tile repeats
        # the last row) over blocks of 128; 128 + 104 channels over 81 rows; 288 row bytes, the
        # most for blocks of 128; rows 16 bytes too long for the buffer (64 rows by the tiles for
        # few rows), and 16 rows of 576 bytes
        ConvCase("pm1", "pm1", 256, 75, hw=(8, 8), k=(3, 3), out="f32", data="extreme"),
        ConvCase("pm1", "pm1", 512, 64, hw=(8, 8), k=(3, 3), out="pm1"),
        ConvCase("pm1", "pm1", 512, 96, hw=(8, 8), k=(3, 3), out="f32", data="extreme"),
        ConvCase("pm1", "pm1", 64, 256, hw=(5, 5), k=(3, 3), s=(1, 1), out="u2", n=3),
        ConvCase("pm1", "pm1", 128, 232, hw=(9, 9), k=(3, 3), out="i16"),
        ConvCase("pm1", "pm1", 256, 128, hw=(8, 8), k=(3, 3), out="f32", data="extreme"),
        ConvCase("pm1", "pm1", 520, 64, hw=(8, 8), k=(3, 3), out="i16"),
        ConvCase("pm1", "pm1", 512, 96, hw=(4, 4), k=(3, 3), out="f32", data="extreme"),
        # AVX2 tiles for few rows (lut_rows, below 64 rows: 4, 2 or 1 a tile; one row takes 128
        # channels a step, more rows 64): 15 rows (4 + 4 + 4 + 2 + 1) over 100 channels (64 + 36,
        # padded columns); 3 rows of all-ones XORs over 1152 row bytes (2 segments of the index,
        # counts widened every 31 bytes); one row over 129 channels (128 + 1); the batch-1 FC
        ConvCase("pm1", "pm1", 130, 100, hw=(3, 5), k=(3, 3), out="u2"),
        ConvCase("pm1", "pm1", 1024, 40, hw=(1, 3), k=(3, 3), pads=(1, 1, 1, 1), out="f32", data="extreme"),
        ConvCase("pm1", "pm1", 300, 129, hw=(3, 3), k=(3, 3), pads=(0, 0, 0, 0), out="pm1"),
        ConvCase("pm1", "pm1", 1024, 1024, hw=(1, 1), k=(1, 1), pads=(0, 0, 0, 0), out="f32"),
    ]
)


HOST_ISAS = list(RUNS[host_isa()])  # x86 ISAs run here as far as this CPU goes (avx512 runs avx2 too)
NEON = "neon"
CROSS_ISAS = (NEON,)  # variants checked through build_program / run_program under qemu, not cffi


def check_on(isa: str, case: Case) -> None:
    """``check`` with the ISA's variants, skipped where this CPU does not run them."""
    if isa not in HOST_ISAS:
        pytest.skip(f"this CPU does not run {isa}")
    check(case, isa=isa)
ISAS = {family: sorted({k.isa for k in KERNELS if k.family == family}) for family in {k.family for k in KERNELS}}


def host_param(family: str) -> list[str]:
    """The family's ISAs checked here through cffi; cross ISAs (neon) run under qemu (test_neon_variants)."""
    return [isa for isa in ISAS[family] if isa not in CROSS_ISAS]


@pytest.mark.parametrize("isa", host_param("bgemm"))
@pytest.mark.parametrize("p", BGEMM_CASES, ids=str)
def test_bgemm_layer(p, isa):
    """Every variant of the family (scalar, and the SIMD ones this CPU runs) against the oracle."""
    check_on(isa, layer_case(p))


@pytest.mark.parametrize("xw", [("pm1", "pm1"), ("u2", "t")], ids=lambda xw: "x".join(xw))
def test_plane_layer_over_256_taps_is_refused(xw):
    from qcc.errors import QccError
    xs, ws = GRIDS[xw[0]], GRIDS[xw[1]]
    w = np.full((2, 17, 16, 3), ws.hi, np.int32)
    chain = Chain((1, 3, 17, 16)).nhwc()
    chain.quantize(QuantizeAttrs("round", xs, scale=np.array(1.0, F32), zero=np.array(0.0, F32),
                                 clamp=(float(xs.lo), float(xs.hi)), out="bits") if xs.step == 1
                   else QuantizeAttrs("sign", xs, out="bits"))
    chain.layer(LayerAttrs(ConvAttrs((17, 16)), w, x_spec=xs, w_spec=ws)).nchw()
    with pytest.raises(QccError, match="256 taps"):
        render(plan_memory(chain.graph()).graph, MODEL)


# ------------------------------------------------------------------ bit-plane layer (pgemm)

# (input grid, weight grid): planes x planes <= 4, lo != 0 on either or both sides, step 2 on either
PGEMM_PAIRS = (("u2", "t"), ("i2", "i2"), ("t", "u1"), ("pm1", "t"), ("u1", "pm1"), ("i2", "pm1"),
               ("pm1", "u1"), ("o2", "i2"), ("u1", "o2"), ("t", "n1"), ("n1", "u2"), ("u2", "u2"), ("pm1", "i2"),
               ("t", "o2"))
PGEMM_OUTS = ("f32_mb", "u2", "i16", "pm1", "f32_mul", "i2", "i16s", "u1", "f32_bias", "o2", "f32", "f32_off")

PGEMM_CASES = (
    _sweep(lambda ci, co, out, i: ConvCase(*PGEMM_PAIRS[i % len(PGEMM_PAIRS)], ci, co, out=out), (1, 2), PGEMM_OUTS)
    + [
        ConvCase("u2", "t", 65, 100, hw=(1, 1), k=(1, 1), pads=(0, 0, 0, 0), out="i16"),
        ConvCase("i2", "i2", 64, 65, hw=(5, 5), k=(3, 3), out="u2"),
        ConvCase("u2", "t", 64, 66, hw=(4, 4), k=(3, 3), out="i16w"),
        # AVX2: 81 rows; 9 rows of 800 row bytes (2 segments of the index), 2 weight planes
        ConvCase("u2", "pm1", 65, 17, hw=(9, 9), k=(3, 3), out="u2"),
        ConvCase("u2", "i2", 256, 9, hw=(3, 3), k=(5, 5), pads=(2, 2, 2, 2), out="f32_mb"),
        ConvCase("pm1", "t", 3, 63, hw=(7, 7), k=(3, 3), s=(2, 2), pads=(0, 1, 2, 1), out="f32_mb"),
        ConvCase("t", "u1", 100, 64, hw=(6, 5), k=(5, 5), pads=(2, 2, 2, 2), out="pm1"),
        ConvCase("o2", "i2", 63, 3, hw=(7, 7), k=(7, 7), pads=(3, 3, 3, 3), out="i16s"),
        ConvCase("u1", "o2", 128, 1, hw=(9, 8), k=(7, 7), s=(2, 2), pads=(0, 1, 2, 1), out="f32"),
        ConvCase("i2", "pm1", 65, 65, hw=(4, 5), k=(1, 3), pads=(0, 1, 0, 1), out="i2"),
        ConvCase("t", "o2", 63, 64, hw=(5, 6), k=(3, 3), s=(2, 1), pads=(2, 0, 0, 1), out="u1"),
        ConvCase("n1", "u2", 3, 100, hw=(5, 3), k=(3, 1), s=(2, 1), pads=(1, 0, 1, 0), out="u2"),
        ConvCase("t", "n1", 100, 65, hw=(1, 1), k=(3, 3), pads=(2, 2, 2, 2), out="f32_mb"),
        ConvCase("pm1", "u1", 1, 1, hw=(1, 1), k=(3, 3), pads=(1, 1, 1, 1), out="i16"),
        ConvCase("u2", "u2", 64, 100, hw=(7, 6), k=(5, 5), s=(2, 2), pads=(2, 0, 1, 2), out="o2", n=2),
        ConvCase("i2", "t", 65, 63, hw=(3, 5), k=(1, 3), s=(1, 2), pads=(1, 1, 0, 0), out="f32_mul", n=2),
        ConvCase("i2", "i2", 128, 128, hw=(4, 4), k=(3, 3), out="i16", data="extreme"),
        ConvCase("t", "i2", 16, 4, hw=(17, 17), k=(16, 16), pads=(0, 0, 0, 0), out="u1"),  # 256 taps, the max
        ConvCase("u3", "t", 65, 5, hw=(4, 4), k=(3, 3), out="i16", feed="bits"),  # 3 planes: beyond the lowering's policy
        # AVX2 tiles for many rows (from 64 rows on; a 2-bit row's table sums both planes): w1a2 at
        # its largest entries (12 a step, widened every 21), 64 + 11 channels; 2 x 2 planes over 75
        # rows; 2 weight planes of 288 row bytes, the most the buffer holds for 64 channels (64 +
        # 32); one input plane (4 a step, widened every 63: 256 channels of ones) in a block of
        # 128; 3 input planes, a pass with both planes' table and one with one; 16 rows of 2 weight
        # planes of 576 bytes (the tiles for few rows)
        ConvCase("u2", "pm1", 256, 75, hw=(8, 8), k=(3, 3), out="f32", data="extreme"),
        ConvCase("u2", "i2", 256, 64, hw=(5, 5), k=(3, 3), out="u2", n=3),
        ConvCase("u2", "i2", 256, 96, hw=(8, 8), k=(3, 3), out="i16", data="extreme"),
        ConvCase("u1", "pm1", 512, 128, hw=(8, 8), k=(1, 1), pads=(0, 0, 0, 0), out="i16", data="extreme"),
        ConvCase("u3", "t", 100, 64, hw=(8, 8), k=(3, 3), out="i16", feed="bits"),
        ConvCase("u2", "i2", 512, 96, hw=(4, 4), k=(3, 3), out="i16", data="extreme"),
        # AVX2 tiles for few rows: 2-bit rows at the table's largest entries (24 a row byte,
        # widened every 10) over 2 segments of the index, 9 rows, 2 weight planes; one input plane,
        # one row, 97 channels; 3 input planes (two passes), 4 rows
        ConvCase("u2", "i2", 1024, 40, hw=(3, 3), k=(3, 3), out="f32", data="extreme"),
        ConvCase("u1", "pm1", 200, 97, hw=(1, 1), k=(1, 1), pads=(0, 0, 0, 0), out="u2", data="extreme"),
        ConvCase("u3", "t", 70, 33, hw=(2, 2), k=(3, 3), out="i16", feed="bits"),
    ]
)


@pytest.mark.parametrize("isa", host_param("pgemm"))
@pytest.mark.parametrize("p", PGEMM_CASES, ids=str)
def test_pgemm_layer(p, isa):
    check_on(isa, layer_case(p))


def _table_cases(n: int, seed: int, few: bool = False) -> list[ConvCase]:
    """Random layers for the AVX2 table tiles: at least 64 output pixels and 32 channels, any
    input channels, kernel, stride and pads, binary or on planes (both input planes' codes in
    one table), so that blocks of 128, 64 and 32 channels, padded columns, odd row counts and
    rows of any length meet; with ``few``, 1 to 63 output pixels and any channels (the tiles
    for few rows)."""
    rng = np.random.default_rng(seed)
    pairs = [("pm1", "pm1"), ("pm1", "pm1"), ("u2", "pm1"), ("u2", "i2"), ("i2", "t"), ("u1", "o2"), ("t", "pm1")]
    outs = ("f32", "pm1", "u2", "i16")
    cases = []
    for i in range(n):
        x, w = pairs[int(rng.integers(len(pairs)))]
        k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        s = (int(rng.integers(1, 3)), 1)
        pads = tuple(int(rng.integers(0, kk)) for kk in (k[0], k[1], k[0], k[1]))
        if few:  # output rows oh * ow <= 63, with the pads counted
            oh, ow = int(rng.integers(1, 8)), int(rng.integers(1, 10))
            hw = (max((oh - 1) * s[0] + k[0] - pads[0] - pads[2], 1), max(ow - 1 + k[1] - pads[1] - pads[3], 1))
        else:
            hw = (int(rng.integers(8, 12)) * s[0] + k[0], int(rng.integers(8, 12)) + k[1])
        cases.append(ConvCase(x, w, int(rng.integers(1, 300)), int(rng.integers(1 if few else 32, 300)), hw=hw, k=k, s=s,
                              pads=(pads[0], pads[1], pads[2], pads[3]), out=outs[i % len(outs)]))
    return cases


@pytest.mark.parametrize("p", _table_cases(10, 2026) + _table_cases(10, 2027, few=True), ids=str)
def test_table_tiles_on_random_layers(p):
    """The AVX2 bit-plane GEMMs on random layers that their table tiles take, against the oracle."""
    check_on("avx2", layer_case(p))


def test_avx512_plane_gemm_leaves_unlisted_plane_counts_to_avx2():
    """The avx512 plane GEMM has a tile for each (input, weight) plane count the lowering makes;
    a layer with others (3 input planes here) is rendered with the AVX2 variant instead."""
    three = next(p for p in PGEMM_CASES if p.x == "u3")
    two = next(p for p in PGEMM_CASES if (GRIDS[p.x].bits, GRIDS[p.w].bits) == (2, 2))
    for p, isa in ((three, "avx2"), (two, "avx512")):
        ks = {k for k in _kernels_of(render(planned(layer_case(p)), MODEL, isa="avx512").c) if k.startswith("qcc_pgemm_")}
        assert len(ks) == 1 and ks.pop().endswith(f"__{isa}"), p


# -------------------------------------------------------------- int16-level layer (iconv)

ICONV_ALL = [
    ConvCase("i8", "w8", 3, 5, out="f32_mb"),
    ConvCase("i8", "w8", 64, 65, hw=(4, 4), out="i16"),
    ConvCase("i8", "w8", 64, 67, hw=(4, 4), out="i16w"),
    ConvCase("i8", "w8", 64, 70, hw=(4, 4), out="i16q"),
    ConvCase("i8", "w8", 8, 12, hw=(4, 4), group=2, out="i16w"),
    ConvCase("i8", "w8", 65, 3, hw=(5, 4), k=(3, 3), s=(2, 2), pads=(0, 1, 2, 1), out="pm1"),
    ConvCase("i8", "w8", 4, 6, hw=(5, 5), group=2, out="u2"),
    ConvCase("i8", "w8", 6, 9, hw=(5, 4), s=(2, 2), pads=(0, 1, 2, 1), group=3, out="f32"),
    ConvCase("i8", "w8", 8, 8, hw=(5, 5), group=8, out="i16s"),  # depthwise
    ConvCase("i8", "w8", 65, 130, hw=(3, 3), k=(1, 1), pads=(0, 0, 0, 0), group=65, out="i2"),  # depthwise x2
    ConvCase("i8", "w8", 100, 1, hw=(1, 1), out="f32_bias", n=2),
    # 65 channels per group: a block of 4 output channels straddles a 64-bit word of the planes
    ConvCase("i8", "w8", 130, 130, hw=(3, 3), group=2, out="pm1"),
    ConvCase("i8", "w8", 20, 130, hw=(3, 3), group=2, out="u2"),
    ConvCase("u4", "w8", 3, 4, hw=(7, 6), k=(5, 5), s=(2, 2), pads=(2, 0, 1, 2), out="u1"),
    ConvCase("i8", "w8", 512, 2, hw=(3, 3), out="f32_off", data="extreme"),  # |acc| up to 7.5e7 > 2^24
    # the lowering's widening: bit planes unpacked to int16 for grouped or wide-pair layers
    ConvCase("u2", "w8", 5, 7, hw=(4, 4), out="f32_mul", feed="i16", n=2),
    ConvCase("pm1", "t", 6, 6, hw=(5, 5), group=3, out="pm1", feed="i16"),
    ConvCase("i2", "i8", 128, 64, hw=(3, 3), group=2, out="i16", feed="i16"),
    # first layers: few input channels, run along output channels (ikconv, k-major weights)
    ConvCase("i8", "w8", 3, 64, hw=(9, 8), k=(7, 7), s=(2, 2), pads=(3, 3, 3, 3), out="pm1"),
    ConvCase("i8", "w8", 1, 33, hw=(6, 6), out="u2"),
    ConvCase("i8", "w8", 3, 20, hw=(5, 5), out="i16w"),
    ConvCase("i8", "w8", 15, 100, hw=(4, 4), out="i16", n=2),
    ConvCase("i8", "w8", 3, 7, hw=(5, 5), k=(1, 1), pads=(0, 0, 0, 0), out="f32_off", data="extreme"),
]


def _kmajor(p: ConvCase) -> bool:
    """Mirrors render's choice: an int16 layer with few input channels runs k-major (ikconv)."""
    return p.group == 1 and p.ci < KMAJOR_MAX_C and (p.x not in ("pm1", "u2", "i2", "u1", "t") or p.feed == "i16")


ICONV_CASES = [p for p in ICONV_ALL if not _kmajor(p)]
IKCONV_CASES = [p for p in ICONV_ALL if _kmajor(p)]


@pytest.mark.parametrize("isa", host_param("ikconv"))
@pytest.mark.parametrize("p", IKCONV_CASES, ids=str)
def test_ikconv_layer(p, isa):
    check_on(isa, layer_case(p))


@pytest.mark.parametrize("isa", host_param("iconv"))
@pytest.mark.parametrize("p", ICONV_CASES, ids=str)
def test_iconv_layer(p, isa):
    check_on(isa, layer_case(p))


@pytest.mark.parametrize("p", [p for p in ICONV_ALL if p.out in ("i16q", "i16w")], ids=str)
def test_threshold_count_without_the_float_guess(p):
    """A soft-float build (QCC_FLOAT_GUESS 0, which __SOFTFP__ selects) searches an 8-bit output's
    255 thresholds instead of starting from the float guess: the oracle's levels all the same."""
    check(layer_case(p), cflags=("-DQCC_FLOAT_GUESS=0",))


# ------------------------------------ integer layer by dot products (dconv: AVX-512 VNNI, AVX2 int16)

DCONV_CASES = [
    ConvCase("i8", "i8", 64, 65, hw=(4, 4), out="i16w"),  # weights -128 too; 255 thresholds; 16 rows: tiles 6, 6, 4
    ConvCase("u8", "w8", 64, 100, hw=(5, 5), out="f32_mb"),  # lo 0 (padding byte 0); 25 rows: a 1-row tile
    ConvCase("i8", "w8", 3, 33, hw=(9, 8), k=(7, 7), s=(2, 2), pads=(3, 3, 3, 3), out="pm1"),  # K 147: not 4k
    ConvCase("i8", "w8", 1, 17, hw=(6, 6), out="u2"),
    ConvCase("i8", "i8", 65, 3, hw=(5, 4), k=(3, 3), s=(2, 2), pads=(0, 1, 2, 1), out="i2"),
    ConvCase("u4", "w8", 3, 4, hw=(7, 6), k=(5, 5), s=(2, 2), pads=(2, 0, 1, 2), out="u1", n=2),
    ConvCase("o2", "w8", 20, 40, hw=(4, 6), k=(3, 5), pads=(1, 2, 1, 2), out="f32", feed="i16"),  # lo -3, step 2
    ConvCase("i8", "w8", 100, 1, hw=(1, 1), out="f32_bias", n=2),
    ConvCase("i8", "w8", 64, 67, hw=(4, 4), out="i16q"),  # a requantizer: the exact guess, 8 + 8 + 8 + 8 + 3 channels
    ConvCase("i8", "w8", 1026, 64, hw=(1, 1), k=(1, 1), pads=(0, 0, 0, 0), out="i16s"),  # 1 row, odd K/4: two chains
    ConvCase("i8", "w8", 512, 2, hw=(3, 3), out="f32_off", data="extreme"),  # |acc| up to 7.5e7 > 2^24
    ConvCase("u8", "i8", 1200, 3, hw=(3, 3), out="i16", data="extreme"),  # K 10800
    # bands: rows of 102 x 64 bytes, 8 output rows a band (3 bands), stride 2, batch, window rows of kw * c
    # levels not a multiple of 4
    ConvCase("i8", "w8", 64, 40, hw=(20, 100), out="i16q", n=2),
    ConvCase("u8", "w8", 62, 33, hw=(23, 130), s=(2, 2), pads=(1, 0, 2, 1), out="f32_mb"),
    ConvCase("i8", "i8", 3, 8, hw=(40, 30), k=(3, 7), pads=(1, 3, 1, 3), out="i16w"),
    ConvCase("i8", "w8", 32, 64, hw=(7, 7), k=(1, 1), s=(2, 2), pads=(0, 0, 0, 0), out="i16s"),
    ConvCase("i8", "w8", 16, 96, hw=(3, 3), pads=(0, 0, 0, 0), out="f32_mul", n=3),
    ConvCase("i8", "w8", 5, 6, hw=(2, 2), k=(1, 1), pads=(1, 1, 1, 1), out="f32_mb"),  # windows all padding
    ConvCase("i8", "w8", 7, 9, hw=(2, 3), k=(5, 5), pads=(2, 2, 2, 2), out="u2"),  # padding on both sides of a row
    # beyond the VNNI conv's bytes (AVX2's int16 conv): weights past int8, levels past a byte, the
    # widest span (hi - lo = 32767) with 17 channels (odd window rows of 51 levels: the last pair reads
    # into the next pixel, and at the band's end into its slack)
    ConvCase("i2", "i9", 16, 20, hw=(5, 5), out="i16w", feed="i16"),
    ConvCase("u9", "w8", 33, 17, hw=(6, 7), s=(2, 2), pads=(1, 0, 2, 1), out="f32_mb", n=2),
    ConvCase("i15", "i9", 17, 16, hw=(4, 5), out="f32_off", data="extreme"),
    ConvCase("u9", "i9", 40, 12, hw=(7, 3), k=(1, 3), pads=(0, 1, 0, 1), out="u2"),
]


def _dot_fits(p: ConvCase, spec: KernelSpec) -> bool:
    """Mirrors render's choice (``_fits_dot``) for the grids above: group 1, at least min_c input
    channels, input levels u = q - lo within 0 .. umax (lo <= 0), weights of wbits, kh input rows
    (padded as far as the windows reach, 4 bytes a group of levels) within the band on the stack."""
    xs, ws, wmax = GRIDS[p.x], GRIDS[p.w], 1 << (spec.param("wbits") - 1)
    (kh, kw), w, (pl, pr), gs = p.k, p.hw[1], (p.pads[1], p.pads[3]), spec.param("group")
    ow = (w + pl + pr - kw) // p.s[1] + 1
    row = (pl + w + max(0, (ow - 1) * p.s[1] + kw - pl - w)) * p.ci * 4 // gs
    return (p.group == 1 and p.ci >= spec.param("min_c", 0) and xs.lo <= 0 and max(xs.hi, 0) - xs.lo <= spec.param("umax")
            and -wmax <= ws.lo and ws.hi < wmax and kh * row <= spec.param("band_bytes"))


def _dot(p: ConvCase, isa: str) -> str | None:
    """The ISA of the dot-product conv that takes p under ``isa`` (best first), or None."""
    return next((k.isa for k in variants("dconv", None, isa, out="f32") if _dot_fits(p, k)), None)


def _int_family(p: ConvCase, isa: str) -> str:
    """Mirrors render's choice among the integer conv families under ``isa``."""
    return "dconv" if _dot(p, isa) else "ikconv" if _kmajor(p) else "iconv"


@pytest.mark.parametrize("p, isa", [(p, isa) for isa in host_param("dconv") for p in DCONV_CASES if _dot(p, isa) == isa],
                         ids=str)
def test_dconv_layer(p, isa):
    check_on(isa, layer_case(p))


def test_dconv_cases_reach_each_variant():
    """Every case is some ISA's dot-product conv; the AVX2 one leaves few input channels (and what
    fits VNNI's bytes, under avx512) to the others."""
    assert all(_dot(p, "avx512") for p in DCONV_CASES)
    assert {p.ci for p in DCONV_CASES if _dot(p, "avx2")} >= {16, 17, 1026}
    assert not [p for p in DCONV_CASES if _dot(p, "avx2") and p.ci < KMAJOR_MAX_C]


@pytest.mark.parametrize("p, family", [
    (ConvCase("i8", "w8", 512, 8, hw=(3, 45), out="i16"), "iconv"),  # 3 input rows of 47 x 512 bytes exceed the band
    (ConvCase("i8", "w8", 8, 12, hw=(4, 4), group=2, out="i16w"), "iconv"),
    (ConvCase("i2", "i9", 16, 8, hw=(3, 3), out="f32", feed="i16"), "dconv"),  # weights beyond int8: AVX2's int16 conv
    (ConvCase("u9", "w8", 16, 8, hw=(3, 3), out="f32"), "dconv"),  # levels span more than a byte
    (ConvCase("u9", "w8", 8, 8, hw=(3, 3), out="f32"), "ikconv"),  # and few input channels
], ids=str)
def test_dconv_leaves_other_int_layers_to_avx2(p, family):
    """Layers the VNNI dot-product conv cannot take exactly are rendered with the AVX2 kernels under
    avx512 (its int16 dot-product conv where that fits), and still agree with the oracle where
    this CPU runs avx512."""
    assert _dot(p, "avx512") in (None, "avx2") and _int_family(p, "avx512") == family
    ks = {k for k in _kernels_of(render(planned(layer_case(p)), MODEL, isa="avx512").c) if re.match(r"qcc_(i\w*|d)conv_", k)}
    assert len(ks) == 1, ks
    k = ks.pop()
    assert k.startswith(f"qcc_{family}_") and k.endswith("__avx2"), k
    check_on("avx512", layer_case(p))


# ----------------------------------------------------------------- float layer (fconv)

FCONV_ALL = (
    _sweep(lambda ci, co, out, i: ConvCase("f32", "f32", ci, co, k=(1, 1), pads=(0, 0, 0, 0), out=out, data="int"),
           (1,), F32_OUTS)
    + [
        ConvCase("f32", "f32", 4, 5, hw=(7, 6), k=(5, 5), s=(2, 2), pads=(2, 2, 2, 2), out="f32", data="int"),
        ConvCase("f32", "f32", 3, 4, hw=(1, 1), k=(7, 7), pads=(3, 3, 3, 3), out="f32_mb", data="int"),
        ConvCase("f32", "f32", 5, 3, hw=(4, 5), k=(1, 3), pads=(0, 1, 0, 1), out="f32_bias", data="int"),
        ConvCase("f32", "f32", 4, 6, hw=(5, 5), group=2, out="f32_mb", data="int"),
        ConvCase("f32", "f32", 6, 9, hw=(5, 4), s=(2, 2), pads=(0, 1, 2, 1), group=3, out="f32_mul", data="int", n=2),
        ConvCase("f32", "f32", 8, 8, hw=(5, 5), group=8, out="f32", data="int"),  # depthwise
        ConvCase("f32", "f32", 65, 130, hw=(3, 3), k=(1, 1), pads=(0, 0, 0, 0), group=65, out="f32_mb", data="int"),
        # arbitrary floats: float32 summation order differs from the oracle's float64 sum
        ConvCase("f32", "f32", 5, 7, hw=(6, 5), out="f32_mb", data="float"),
        ConvCase("f32", "f32", 64, 3, hw=(5, 5), k=(5, 5), s=(2, 2), pads=(2, 1, 0, 2), out="f32", data="float"),
        ConvCase("f32", "f32", 6, 4, hw=(4, 4), out="f32", group=2, data="float"),
        # levels held as floats (quantize out f32), and unpacked planes
        ConvCase("f32", "f32", 5, 6, hw=(5, 5), out="f32_mb", data="quant"),
        ConvCase("f32", "f32", 70, 66, hw=(4, 4), s=(2, 2), out="f32_bias", data="unpacked"),
    ]
)


FCONV_CASES = [p for p in FCONV_ALL if p.group > 1]  # grouped float convs: the direct kernel
FKCONV_CASES = [p for p in FCONV_ALL if p.group == 1]  # the rest run k-major


@pytest.mark.parametrize("p", FCONV_CASES, ids=str)
def test_fconv_layer(p):
    check(layer_case(p))


@pytest.mark.parametrize("isa", host_param("fkconv"))
@pytest.mark.parametrize("p", FKCONV_CASES, ids=str)
def test_fkconv_layer(p, isa):
    check_on(isa, layer_case(p))


# ------------------------------------------------------------------- layers feeding layers

def test_layer_chain():
    """Output planes and int16 levels of one layer are the next layer's input: bgemm -> u2 planes ->
    pgemm -> i2 planes -> max pool -> unpack to i16 -> grouped iconv -> values."""
    rng = np.random.default_rng(11)
    ci, h = 70, 6
    x = rng.standard_normal((1, ci, h, h)).astype(F32)
    chain = Chain(x.shape).nhwc().sign_bits()
    q = np.where(x >= 0, 1, -1).astype(np.int64).transpose(TO_NHWC)
    expect = {chain.cur: q}
    layers = [("pm1", "pm1", 66, ConvAttrs((3, 3), pads=(1, 1, 1, 1)), "u2"),
              ("u2", "t", 64, ConvAttrs((3, 3), (2, 2), (0, 1, 1, 0)), "i2"),
              ("i2", "w8", 6, ConvAttrs((2, 2), pads=(0, 0, 1, 1), group=2), "f32_mb")]
    for xs, ws, co, conv, out in layers:
        if xs == "i2":
            a = PoolAttrs("max", (2, 2), (1, 1), (1, 1, 0, 0))
            chain.pool(a)
            q = naive_pool(q, a, *a.out_hw(q.shape[1], q.shape[2])).astype(np.int64)
            expect[chain.cur] = q
            chain.unpack(out="i16")
            expect[chain.cur] = q
        w = grid_weights(GRIDS[ws], (co, *conv.kernel, q.shape[-1] // conv.group), rng)
        acc = naive_conv(q, w, conv.kernel, conv.strides, conv.pads, conv.group)
        bound = GRIDS[xs].max_abs * GRIDS[ws].max_abs * w[0].size
        tk, q = output_transform(out, acc, bound, rng)
        chain.layer(LayerAttrs(conv, w, x_spec=GRIDS[xs], w_spec=GRIDS[ws], **tk))
        expect[chain.cur] = q
    chain.nchw()
    check(Case(chain, x, expect=expect))


# ===================================================================================== pool

@dataclass(frozen=True)
class PoolCase:
    kind: str
    src: str  # a grid of GRIDS (levels, in their storage) or "f32"
    c: int
    hw: tuple[int, int]
    k: tuple[int, int]
    s: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil: bool = False
    cip: bool = False
    n: int = 1
    data: str = "dyadic"  # f32 only: dyadic (exact sums) | float

    def __str__(self) -> str:
        s = (f"{self.kind}_{self.src}-c{self.c}-{self.hw[0]}x{self.hw[1]}-k{self.k[0]}x{self.k[1]}"
             f"-s{self.s[0]}{self.s[1]}-p{''.join(map(str, self.pads))}")
        s += "-ceil" if self.ceil else ""
        s += "-cip" if self.cip else ""
        s += f"-n{self.n}" if self.n != 1 else ""
        return s + ("-float" if self.data == "float" else "")


POOL_CASES = [
    # one plane: OR of words
    PoolCase("max", "pm1", 3, (6, 6), (2, 2), (2, 2)),
    PoolCase("max", "pm1", 64, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
    PoolCase("max", "u1", 65, (7, 5), (2, 2), (2, 2), ceil=True),
    PoolCase("max", "pm1", 100, (5, 5), (3, 3), (1, 1), (1, 1, 1, 1), n=2),
    PoolCase("max", "n1", 128, (5, 4), (2, 3), (2, 1), (0, 1, 1, 0), ceil=True),
    PoolCase("max", "pm1", 1, (1, 1), (1, 1)),
    # two planes: max of codes
    PoolCase("max", "u2", 3, (6, 6), (2, 2), (2, 2)),
    PoolCase("max", "i2", 65, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
    PoolCase("max", "u2", 130, (5, 4), (2, 3), (2, 1), (0, 1, 1, 0), ceil=True, n=2),
    PoolCase("max", "t", 64, (5, 5), (5, 5)),  # global
    PoolCase("max", "o2", 1, (4, 5), (3, 2), (1, 2), (1, 0, 1, 1), ceil=True),
    # int16 levels
    PoolCase("max", "i8", 5, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
    PoolCase("max", "i8", 65, (8, 6), (3, 2), (2, 2), (1, 0, 1, 1), ceil=True, n=2),
    PoolCase("max", "u4", 1, (5, 5), (5, 5)),
    # floats
    PoolCase("max", "f32", 5, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1)),
    PoolCase("max", "f32", 3, (5, 5), (2, 2), (2, 2), (1, 1, 1, 1), ceil=True),  # last window must start inside
    PoolCase("max", "f32", 65, (8, 6), (3, 2), (2, 2), (1, 0, 1, 1), ceil=True, n=2),
    PoolCase("max", "f32", 1, (5, 5), (5, 5)),  # global
    PoolCase("avg", "f32", 4, (6, 6), (2, 2), (2, 2)),
    PoolCase("avg", "f32", 3, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1), cip=False),
    PoolCase("avg", "f32", 3, (7, 7), (3, 3), (2, 2), (1, 1, 1, 1), cip=True),
    PoolCase("avg", "f32", 5, (8, 8), (3, 3), (2, 2), (1, 1, 1, 1), ceil=True, cip=True),  # pad counted, overhang not
    PoolCase("avg", "f32", 5, (8, 8), (3, 3), (2, 2), (1, 1, 1, 1), ceil=True, cip=False),
    PoolCase("avg", "f32", 64, (5, 7), (2, 3), (1, 2), (0, 1, 1, 2), cip=True, n=2),
    PoolCase("avg", "f32", 1, (3, 3), (3, 3)),
    PoolCase("avg", "f32", 7, (7, 6), (3, 3), (2, 2), (1, 1, 1, 1), ceil=True, cip=True, data="float"),
]


def pool_case(p: PoolCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (p.n, p.c, *p.hw)
    attrs = PoolAttrs(p.kind, p.k, p.s, p.pads, p.ceil, p.cip)
    oh, ow = attrs.out_hw(*p.hw)
    chain = Chain(shape).nhwc()
    expect: dict = {}
    if p.src == "f32":
        if p.data == "float":
            x = rng.standard_normal(shape).astype(F32)
        else:  # multiples of 1/8 in [-8, 8): every partial sum is exact in float32
            x = (rng.integers(-64, 64, shape) / 8).astype(F32)
        x[..., 0, 0] = -7.5  # a negative corner: padding must never win a max
        vals = x.astype(np.float64).transpose(TO_NHWC)
    else:
        spec = GRIDS[p.src]
        x, vals, qa = grid_input(spec, shape, rng, corner_lo=True)  # the lowest level in a corner
        chain.quantize(dataclasses.replace(qa, out=storage(spec)))
        expect[chain.cur] = vals
    chain.pool(attrs)
    want = naive_pool(vals, attrs, oh, ow)
    if p.data == "float":
        expect[chain.cur] = want
        return Case(chain.nchw(), x, expect=expect, rtol=1e-6, atol=1e-6, expect_rtol=1e-6, expect_atol=1e-7)
    want = want.astype(np.int64) if p.src != "f32" else want.astype(F32)  # dyadic: the float32 sum is exact
    expect[chain.cur] = want
    chain.values(want, rng, expect).nchw()
    return Case(chain, x, expect=expect)


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
    mode: str  # round | sign | ternary | thresholds
    out: str  # f32 | bits | i16
    c: int
    spec: str = ""  # grid of the levels (GRIDS or OUT_LEVELS name); round f32/i16: from the zero points
    rounding: str = "ROUND"
    per_channel: bool = True
    hw: tuple[int, int] = (3, 4)
    n: int = 1
    scaled: bool = False  # sign: with a (per-channel) scale and zero point, as a 1-bit signed Quant
    half: bool = False  # round: a half-integer zero point, levels 2 * (y - z) on a step-2 grid

    def __str__(self) -> str:
        s = f"{self.mode}_{self.out}" + (f"_{self.spec}" if self.spec else "") + f"-c{self.c}"
        s += f"-{self.rounding}" if self.mode == "round" else ""
        s += "" if self.per_channel else "-shared"
        s += "-scaled" if self.scaled else ""
        s += "-half_zero" if self.half else ""
        return s + (f"-n{self.n}" if self.n != 1 else "")


QUANT_CASES = (
    [QuantCase("round", "f32", 5, rounding=r) for r in ROUNDINGS]
    + [QuantCase("round", "f32", 65, rounding="HALF_UP", per_channel=False),
       QuantCase("round", "f32", 1, rounding="HALF_DOWN"),
       QuantCase("round", "bits", 3, "u2", "ROUND"), QuantCase("round", "bits", 100, "i2", "HALF_UP", per_channel=False),
       QuantCase("round", "bits", 65, "t", "UP"), QuantCase("round", "bits", 64, "u1", "FLOOR", n=2),
       QuantCase("round", "bits", 130, "n1", "CEIL", per_channel=False),
       QuantCase("round", "i16", 5, "", "HALF_DOWN"), QuantCase("round", "i16", 65, "", "DOWN", per_channel=False),
       # one scale, few channels (an RGB input): AVX2 runs the tensor as one flat row
       QuantCase("round", "i16", 3, "", "ROUND", per_channel=False), QuantCase("round", "i16", 5, "", per_channel=False, n=2),
       QuantCase("round", "bits", 65, "o2", "HALF_UP", half=True), QuantCase("round", "i16", 5, "", half=True),
       QuantCase("round", "f32", 64, "", "FLOOR", per_channel=False, half=True),
       QuantCase("ternary", "f32", 5), QuantCase("ternary", "bits", 65, n=2), QuantCase("ternary", "i16", 3),
       QuantCase("sign", "f32", 3), QuantCase("sign", "bits", 1), QuantCase("sign", "bits", 63),
       QuantCase("sign", "bits", 65, n=2), QuantCase("sign", "bits", 128), QuantCase("sign", "f32", 100, hw=(1, 1)),
       QuantCase("sign", "bits", 70, scaled=True), QuantCase("sign", "i16", 5, scaled=True, per_channel=False),
       QuantCase("thresholds", "f32", 5, "i16"), QuantCase("thresholds", "f32", 64, "u2", per_channel=False),
       QuantCase("thresholds", "bits", 65, "pm1"), QuantCase("thresholds", "bits", 3, "pm1", per_channel=False),
       QuantCase("thresholds", "bits", 100, "u2"), QuantCase("thresholds", "bits", 64, "o2", per_channel=False),
       QuantCase("thresholds", "i16", 5, "i16s"), QuantCase("thresholds", "i16", 129, "i16", per_channel=False)]
)


def _qspec(name: str) -> QuantSpec:
    return GRIDS[name] if name in GRIDS else OUT_LEVELS[name][1]


def quant_case(p: QuantCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (p.n, p.c, *p.hw)
    npar = p.c if p.per_channel else 1
    xs = (p.n, *p.hw, p.c)  # generated channels last, transposed to the NCHW input at the end
    if p.mode == "round":
        scale = rng.choice(np.array([0.25, 0.5, 1.0, 2.0], F32), npar)
        if p.half:  # QONNX Quant with a half-integer zero point: the levels 2 * (y - z) are odd
            zh = {"bits": 1.5, "i16": 0.5, "f32": -0.5}[p.out]
            zero = np.full(npar, zh, F32)
            lo, hi = {"bits": (0.0, 3.0), "i16": (-8.0, 7.0), "f32": (-4.0, 3.0)}[p.out]
            spec = QuantSpec(int(2 * (lo - zh)), int(2 * (hi - zh)), 2, scale)
            assert p.out != "bits" or spec == _qspec(p.spec)
        elif p.out == "bits":  # one zero point (repeated per channel) so the levels stay on one grid
            spec = _qspec(p.spec)
            zero = np.full(npar, rng.integers(-2, 3), F32)
            lo, hi = float(spec.lo + zero[0]), float(spec.hi + zero[0])
        else:
            zero = rng.integers(-2, 3, npar).astype(F32)
            lo, hi = (-4.0, 3.0) if p.out == "f32" else (-128.0, 127.0)
            spec = QuantSpec(int(lo - zero.max()), int(hi - zero.min()), 1, scale)
        t = rng.integers(2 * int(lo) - 6, 2 * int(hi) + 7, xs) / 2  # ties and integers, beyond the clamp range
        t = np.where(rng.random(xs) < 0.3, rng.uniform(lo - 2, hi + 2, xs), t)  # and values between
        x = ((t - zero) * scale).astype(F32)
        x.reshape(-1, p.c)[0, :] = (np.float32(0.0) - zero) * scale  # exactly zero after the zero point
        attrs = QuantizeAttrs("round", spec, scale=scale if npar > 1 else scale.reshape(()),
                              zero=zero if npar > 1 else zero.reshape(()), clamp=(lo, hi), rounding=p.rounding,
                              out=p.out)
        v = ((x / scale).astype(F32) + zero).astype(F32)
        q = (decimal_round(np.clip(v, lo, hi), p.rounding) - zero) * spec.step
    elif p.mode == "sign":
        x = rng.standard_normal(xs).astype(F32)
        x[rng.random(xs) < 0.2] = 0.0
        x[rng.random(xs) < 0.1] = -0.0
        if p.scaled:
            scale = rng.uniform(0.1, 3, npar).astype(F32)
            attrs = QuantizeAttrs("sign", BIPOLAR, scale=scale if npar > 1 else scale.reshape(()),
                                  zero=np.zeros(npar, F32) if npar > 1 else np.array(0.0, F32), out=p.out)
        else:
            attrs = QuantizeAttrs("sign", BIPOLAR, out=p.out)
        q = np.where(x >= 0, 1.0, -1.0)  # -0.0 and +0.0 are +1; a positive scale keeps the sign
    elif p.mode == "ternary":  # ONNX Sign: both zeros are 0, the smallest subnormals are not
        x = rng.standard_normal(xs).astype(F32)
        x[rng.random(xs) < 0.2] = 0.0
        x[rng.random(xs) < 0.1] = -0.0
        tiny = rng.random(xs) < 0.05
        x[tiny] = np.where(rng.random(xs) < 0.5, 1, -1)[tiny] * np.float32(1e-45)
        attrs = QuantizeAttrs("ternary", GRIDS["t"], out=p.out)
        q = np.where(x > 0, 1.0, np.where(x < 0, -1.0, 0.0))
    else:
        spec = _qspec(p.spec)
        steps = spec.levels - 1
        thr = rng.uniform(-2, 2, (npar, steps)).astype(F32)
        if steps > 2:  # a repeated threshold counts twice
            thr[:, 1] = thr[:, 0]
        x = rng.uniform(-3, 3, xs).astype(F32)
        for j in range(steps):  # values exactly on a threshold count as reaching it
            hit = rng.random(xs) < 0.4 / steps
            x[hit] = np.broadcast_to(thr[:, j], xs)[hit]
        x.reshape(-1)[:2] = np.nan  # NaN reaches no threshold
        thr = rng.permuted(thr, axis=1)  # MultiThreshold's thresholds need not be in order
        attrs = QuantizeAttrs("thresholds", spec, thresholds=thr, out=p.out)
        q = spec.lo + spec.step * (x[..., None] >= thr).sum(axis=-1)
    chain = Chain(shape).nhwc().quantize(attrs)
    name = chain.cur
    expect = {name: q.astype(np.int64) if p.out != "f32" else q.astype(F32)}
    rng2 = np.random.default_rng(1)
    chain.values(q, rng2, expect).nchw()
    return Case(chain, np.ascontiguousarray(x.transpose(TO_NCHW)), expect=expect)


@pytest.mark.parametrize("isa", host_param("quantize"))
@pytest.mark.parametrize("p", QUANT_CASES, ids=str)
def test_quantize(p, isa):
    check_on(isa, quant_case(p))


def test_quantize_round_follows_qonnx_float32_formula():
    """A value one ulp below 0.5 rounds *up* under HALF_UP: |x| + 0.5 rounds to 1.0 in float32, as in
    QONNX's numpy reference. The kernel and the oracle must agree on this, not on exact maths."""
    c = 3
    x = np.array([np.nextafter(F32(0.5), F32(0)), -np.nextafter(F32(0.5), F32(0)), np.nextafter(F32(1.5), F32(2))], F32)
    xs = np.tile(x, (1, 2, 2, 1))  # NHWC, channels = the three values
    for mode in ROUNDINGS:
        for out in ("f32", "i16"):
            attrs = QuantizeAttrs("round", QuantSpec(-4, 3), scale=np.array(1.0, F32), zero=np.array(0.0, F32),
                                  clamp=(-4.0, 3.0), rounding=mode, out=out)
            chain = Chain((1, c, 2, 2)).nhwc().quantize(attrs)
            if out == "i16":
                chain.unpack()
            check(Case(chain.nchw(), np.ascontiguousarray(xs.transpose(TO_NCHW))))


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

@dataclass(frozen=True)
class UnpackCase:
    src: str  # grid (GRIDS): bits when at most 2 planes, else i16
    out: str  # f32 | i16
    c: int
    per_channel: bool = True

    def __str__(self) -> str:
        return f"{self.src}_{self.out}-c{self.c}" + ("" if self.per_channel else "-shared")


UNPACK_CASES = [
    UnpackCase("pm1", "f32", 1), UnpackCase("pm1", "f32", 65), UnpackCase("pm1", "f32", 130, per_channel=False),
    UnpackCase("u2", "f32", 65), UnpackCase("i2", "f32", 130, per_channel=False), UnpackCase("t", "f32", 3),
    UnpackCase("o2", "f32", 64),
    UnpackCase("u2", "i16", 100), UnpackCase("pm1", "i16", 64), UnpackCase("i2", "i16", 1), UnpackCase("n1", "i16", 65),
    UnpackCase("i8", "f32", 5), UnpackCase("i8", "f32", 128, per_channel=False),
]


def unpack_case(p: UnpackCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    spec = GRIDS[p.src]
    x, q, qa = grid_input(spec, (2, p.c, 3, 2), rng)
    chain = Chain(x.shape).nhwc().quantize(dataclasses.replace(qa, out=storage(spec)))
    expect = {chain.cur: q}
    if p.out == "i16":
        chain.unpack(out="i16")
        expect[chain.cur] = q
    scale = rng.uniform(-2, 2, p.c if p.per_channel else ()).astype(F32)
    chain.unpack(scale)
    expect[chain.cur] = (q.astype(F32) * scale).astype(F32)
    return Case(chain.nchw(), x, expect=expect)


@pytest.mark.parametrize("p", UNPACK_CASES, ids=str)
def test_unpack(p):
    check(unpack_case(p))


# ============================================================ layouts fused at the graph's edges

@dataclass(frozen=True)
class LayoutCase:
    """A sign quantizer reading NCHW (``pm1``), or a round quantizer (a GRIDS name) to planes after
    a transpose, or to int16 levels reading NCHW (``i16``); then an unpack writing NCHW
    (qcc.passes.fuse_layouts' two rewrites)."""
    spec: str
    c: int
    hw: tuple[int, int] = (3, 5)
    n: int = 1
    scaled: bool = False
    store: str = "bits"
    rounding: str = "ROUND"  # of an i16 quantizer: ROUND or FLOOR

    def __str__(self) -> str:
        return (f"{self.spec}-c{self.c}-{self.hw[0]}x{self.hw[1]}-n{self.n}" + ("-scaled" if self.scaled else "")
                + ("" if self.store == "bits" else f"-{self.store}") + ("" if self.rounding == "ROUND" else f"-{self.rounding}"))


LAYOUT_CASES = [
    LayoutCase("pm1", 1), LayoutCase("pm1", 8, (4, 4)), LayoutCase("pm1", 64, (8, 8)),
    LayoutCase("pm1", 65, (3, 5), n=2), LayoutCase("pm1", 130, (4, 6), scaled=True),
    LayoutCase("pm1", 16, (9, 9), n=2, scaled=True), LayoutCase("pm1", 3, (1, 9)),
    LayoutCase("u2", 24, (4, 4)), LayoutCase("i2", 65, (3, 8), n=2), LayoutCase("o2", 8, (5, 5)),
    # int16 levels: 8 x 8 blocks and both tails, batch, one scale or one per channel
    LayoutCase("u8", 64, (8, 8), store="i16"), LayoutCase("i8", 67, (5, 11), n=2, store="i16"),
    LayoutCase("i8", 3, (9, 9), store="i16"), LayoutCase("u4", 16, (1, 7), store="i16"),
    LayoutCase("i2", 24, (4, 6), n=3, store="i16"), LayoutCase("i8", 17, (8, 9), store="i16", rounding="FLOOR"),
]


def layout_case(p: LayoutCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    n, c, (h, w) = p.n, p.c, p.hw
    if p.spec == "pm1":
        x = rng.standard_normal((n, c, h, w)).astype(F32)
        x[rng.random(x.shape) < 0.2] = 0.0
        x[rng.random(x.shape) < 0.1] = -0.0
        kw = dict(scale=rng.uniform(0.1, 3, c).astype(F32), zero=np.zeros(c, F32)) if p.scaled else {}
        spec = BIPOLAR
        chain = Chain(x.shape).op("quantize", QuantizeAttrs("sign", spec, out="bits", src="NCHW", **kw), (n, h, w, c),
                                  "bits", "NHWC", spec)
        q = np.where(x >= 0, 1, -1).transpose(TO_NHWC)  # -0.0 is +1; a positive scale keeps the sign
    elif p.store == "i16":
        spec = GRIDS[p.spec]
        x, q, qa = grid_input(spec, (n, c, h, w), rng)
        qa = dataclasses.replace(qa, out="i16", src="NCHW", rounding=p.rounding)
        chain = Chain(x.shape).op("quantize", qa, (n, h, w, c), "i16", "NHWC", spec)
        if p.rounding == "FLOOR":  # x / scale = t + f exactly (scale a power of two): clamp, then floor
            t = x.astype(np.float64) / qa.scale[:, None, None]
            q = np.clip(np.floor(t), spec.lo, spec.hi).astype(np.int64).transpose(TO_NHWC)
    else:
        spec = GRIDS[p.spec]
        x, q, qa = grid_input(spec, (n, c, h, w), rng)
        chain = Chain(x.shape).nhwc(force_transpose=True).quantize(dataclasses.replace(qa, out="bits"))
    expect = {chain.cur: q}
    scale = rng.uniform(-2, 2, c).astype(F32)
    chain.op("unpack", UnpackAttrs(spec.with_scale(scale), c, "f32", dst="NCHW"), (n, c, h, w), "f32", "NCHW")
    expect[chain.cur] = (q.astype(F32) * scale).astype(F32).transpose(TO_NCHW)
    return Case(chain, x, expect=expect)


@pytest.mark.parametrize("isa", host_param("quantize"))
@pytest.mark.parametrize("p", LAYOUT_CASES, ids=str)
def test_layouts_fused(p, isa):
    check_on(isa, layout_case(p))


def test_fuse_layouts_rewrites_the_edges_of_a_binary_layer():
    """A w1a1 conv from a float NCHW input to a float NCHW output keeps no transpose, and the
    compiled model equals onnxruntime exactly (bipolar levels times a power-of-two scale)."""
    import builders
    from qcc import InferenceSession
    from qcc.api import lower_model
    from qcc.frontend.reference import run_reference
    b = builders.Builder(5)
    y = b.conv(b.bipolar("x"), b.binary_weight((70, 65, 3, 3)), (3, 3), pads=(1, 1, 1, 1))
    y = b.bipolar(b.batchnorm(y, 70), 0.5)
    model = b.model({"x": [1, 65, 9, 9]}, {y: 4})
    _, low = lower_model(model)
    ops = [(nd.op, getattr(nd.attrs, "src", None) or getattr(nd.attrs, "dst", None)) for nd in low.nodes]
    assert ("quantize", "NCHW") in ops and ("unpack", "NCHW") in ops and not any(o == "transpose" for o, _ in ops)
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 65, 9, 9)).astype(F32)}
    np.testing.assert_array_equal(InferenceSession(model).run(None, feeds)[0], run_reference(model, feeds)[0])


def test_fuse_layouts_rewrites_the_edges_of_an_int8_layer():
    """A w8a8 conv (8-bit Quant input and output, BN between) from a float NCHW input to a float
    NCHW output keeps no transpose: the quantizer reads NCHW into int16 levels and the unpack
    writes NCHW; the compiled model equals the reference exactly on every target the host runs."""
    import builders
    from qcc import InferenceSession
    from qcc.api import lower_model
    from qcc.frontend.reference import run_reference
    b = builders.Builder(6)
    x = b.quant("x", np.float32(2.0 ** -4), 8)
    y = b.conv(x, b.int_weight((40, 19, 3, 3)), (3, 3), pads=(1, 1, 1, 1))
    y = b.quant(b.batchnorm(y, 40), np.float32(2.0 ** -3), 8)
    model = b.model({"x": [1, 19, 11, 17]}, {y: 4})
    _, low = lower_model(model)
    ops = [(nd.op, getattr(nd.attrs, "src", None) or getattr(nd.attrs, "dst", None)) for nd in low.nodes]
    assert ("quantize", "NCHW") in ops and ("unpack", "NCHW") in ops and not any(o == "transpose" for o, _ in ops)
    feeds = {"x": (np.random.default_rng(3).standard_normal((2, 19, 11, 17)) * 4).astype(F32)}
    want = run_reference(model, feeds)[0]
    for target in ("scalar", "native"):
        np.testing.assert_array_equal(InferenceSession(model, target=target).run(None, feeds)[0], want, err_msg=target)


# ======================================================================================= ew

@dataclass(frozen=True)
class EwCase:
    c: int
    per_channel: bool
    cut: int = 0  # drop this many trailing steps
    rank2: bool = False
    rounding: str = "ROUND"
    last: str = "sign"  # sign | bipolar
    nan: bool = False  # NaN inputs through abs/max/min/sign/bipolar (no rounding: NaN has no integer)

    def __str__(self) -> str:
        s = f"c{self.c}-{'per_channel' if self.per_channel else 'scalar'}-{self.rounding}-{self.last}"
        return (s + (f"-cut{self.cut}" if self.cut else "") + ("-rank2" if self.rank2 else "")
                + ("-nan" if self.nan else ""))


EW_CASES = [EwCase(3, True), EwCase(3, False, rounding="HALF_UP", last="bipolar"),
            EwCase(65, True, rounding="FLOOR"), EwCase(1, True, rounding="CEIL", last="bipolar"),
            EwCase(100, False, rounding="UP"), EwCase(3, True, cut=1, rounding="DOWN"),
            EwCase(64, False, cut=1, rounding="HALF_DOWN"), EwCase(10, True, rank2=True, last="bipolar"),
            EwCase(5, True, nan=True), EwCase(7, False, nan=True, last="bipolar")]


def ew_steps(p: EwCase, rng) -> list[EwStep]:
    c = p.c

    def k(lo, hi):
        return rng.uniform(lo, hi, c).astype(F32) if p.per_channel else np.array(rng.uniform(lo, hi), F32)
    if p.nan:
        return [EwStep("abs"), EwStep("max", k(-1, 0)), EwStep("add", k(-1, 1)), EwStep("min", k(0.5, 2)),
                EwStep("mul", k(0.5, 2)), EwStep(p.last)]
    return [EwStep("add", k(-1, 1)), EwStep("mul", k(0.5, 4)), EwStep("round", mode=p.rounding), EwStep("sub", k(-1, 1)),
            EwStep("abs"), EwStep("rsub", k(-2, 2)), EwStep("div", k(1, 3)), EwStep("max", k(-1, 0)), EwStep("min", k(0.5, 2)),
            EwStep("rdiv", k(1, 2)), EwStep("mul", np.array(-0.5, F32)), EwStep("mul", k(1, 4)),
            EwStep("round", mode="HALF_DOWN" if p.rounding == "ROUND" else "ROUND"), EwStep(p.last)]


def ew_case(p: EwCase) -> Case:
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (3, p.c) if p.rank2 else (1, p.c, 4, 3)
    x = rng.standard_normal(shape).astype(F32)
    x.reshape(-1)[:2] = 0.0
    if p.nan:
        x[rng.random(shape) < 0.3] = np.nan
    steps = ew_steps(p, rng)
    steps = steps[:len(steps) - p.cut]  # without the final sign, the float values are checked too
    if p.rank2:
        chain = Chain(shape, "NC").ew(EwStep("max", np.array(0.0, F32)), EwStep("sign"))
        chain.ew(*steps)  # two ew kernels in one model
    else:
        chain = Chain(shape).nhwc().ew(*steps).nchw()
    return Case(chain, x)


@pytest.mark.parametrize("isa", EW_ISAS)
@pytest.mark.parametrize("p", EW_CASES, ids=str)
def test_ew_chain(p, isa):
    case = ew_case(p)
    check_on(isa, case)
    if p.nan:  # NaN kept by abs, max/min and sign, -1 from bipolar: the oracle says so too
        g = planned(case)
        y = interp.run(g, {"x": case.x})[g.outputs[0]].transpose(TO_NHWC)
        nan = np.isnan(case.x.transpose(TO_NHWC))
        assert nan.any()
        if p.last == "sign":
            assert np.isnan(y[nan]).all()
        else:
            assert (y[nan] == -1).all()


# the values where the round modes differ: ties, signed zeros, the edges of float32's integers
EW_TIES = np.array([-4.5, -3.5, -2.5, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, 3.5, -0.3, 0.3, -0.7, 0.7, -1e-30, 1e-30,
                    2 ** 23 - 0.5, -(2 ** 23 - 0.5), 2 ** 23 + 2, -(2 ** 24), 1e30, -1e30, np.inf, -np.inf], F32)


@pytest.mark.parametrize("isa", EW_ISAS)
@pytest.mark.parametrize("mode", list(render_mod.ROUNDING), ids=str)
def test_ew_round_modes_at_ties_and_zeros(mode, isa):
    """Each round mode alone (then * -1) on the values where the modes differ, in vectors and in
    the tail (25 values: 3 vectors and 1): the C output's float bits, the signs of zeros
    included (which an equality check of floats ignores), are the oracle's."""
    if isa not in HOST_ISAS:
        pytest.skip(f"this CPU does not run {isa}")
    x = EW_TIES.reshape(1, 25, 1, 1)
    case = Case(Chain(x.shape).nhwc().ew(EwStep("round", mode=mode), EwStep("mul", np.array(-1.0, F32))).nchw(), x)
    check(case, isa=isa)
    g = planned(case)
    want = np.asarray(interp.run(g, {"x": x})[g.outputs[0]], F32)
    got = run_c(g, x, (), isa)[0]["OUTPUT"]
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    zero = want == 0
    assert zero.sum() >= 2
    if mode in ("ROUND", "FLOOR", "CEIL", "DOWN"):  # these keep the sign of a zero result: both occur
        assert np.signbit(want[zero]).any() and not np.signbit(want[zero]).all()


ROUND_VALUES = np.array([-3.5, -2.5, -1.5, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 3.5,
                         -2.0 ** -20, 2.0 ** -20, 1.5 + 2.0 ** -20, -1.5 - 2.0 ** -20, 2.0 ** 22 + 0.5,
                         -(2.0 ** 22) - 1.5, 12345.75, -0.3, 0.3], F32)
# |v| >= 2^23: every float32 is an integer, but QONNX's HALF_UP / HALF_DOWN formulas add +-0.5 in
# float32 and may move by one (2^23 + 1 -> 2^23 + 2 under HALF_UP); C and oracle follow the formula
ROUND_LARGE = np.array([2.0 ** 23 + 1, -(2.0 ** 23) - 1, 1e10, -3e12], F32)


def _bitwise(case: Case, what: str) -> None:
    """The graph output of C and oracle, bit for bit (signed zeros included)."""
    g = planned(case)
    want = interp.run(g, {"x": case.x})[g.outputs[0]]
    got = run_c(g, case.x)[0]["OUTPUT"]
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{what}: C {got.ravel()[bad]} != oracle {want.ravel()[bad]} for x = {case.x.ravel()[bad]}"


@pytest.mark.parametrize("mode", list(ROUNDINGS))
def test_ew_round(mode):
    """The round step on ties, signed zero results and large values: oracle = decimal rounding by
    value below 2^23, C = oracle bit for bit everywhere."""
    v = np.concatenate([ROUND_VALUES, ROUND_LARGE])
    x = v.reshape(1, v.size, 1, 1)
    chain = Chain(x.shape).nhwc().ew(EwStep("round", mode=mode))
    name = chain.cur
    chain.nchw()
    case = Case(chain, x)
    check(case)
    g = planned(case)
    y = interp.run(g, {"x": x}, keep_all=True)[name].reshape(-1)
    n = ROUND_VALUES.size
    np.testing.assert_array_equal(y[:n], decimal_round(ROUND_VALUES, mode), err_msg="oracle vs decimal rounding")
    _bitwise(case, mode)


@pytest.mark.parametrize("step", ["abs", "bipolar", "ROUND", "CEIL", "FLOOR", "DOWN", "sign", "UP", "HALF_UP", "HALF_DOWN"])
def test_ew_negative_zero(step):
    """-0.0 (and +-0.3, whose rounding may give -0.0) through the steps, C = oracle bit for bit."""
    x = np.array([-0.0, 0.0, -0.3, 0.3], F32).reshape(1, 4, 1, 1)
    s = EwStep(step) if step in ("abs", "bipolar", "sign") else EwStep("round", mode=step)
    _bitwise(Case(Chain(x.shape).nhwc().ew(s).nchw(), x), step)


@pytest.mark.parametrize("which", ["add_scalar", "mul_scalar", "sub_channel", "mul_channel"])
def test_negative_zero_constants(which):
    """Constants equal to -0.0 keep their sign in the C source (x + -0.0 keeps -0.0, x * -0.0 flips signs)."""
    x = np.array([-0.0, 0.0, -0.3, 0.3, 1.0], F32).reshape(1, 5, 1, 1)
    op, kind = which.split("_")
    k = np.array(-0.0, F32) if kind == "scalar" else np.array([-0.0, 0.0, -0.0, 1.0, -0.0], F32)
    _bitwise(Case(Chain(x.shape).nhwc().ew(EwStep(op, k)).nchw(), x), which)


# ============================================================ two-operand ew, mean, concat

@dataclass(frozen=True)
class Ew2Case:
    op: str  # add | sub | mul | div
    c: int
    hw: tuple[int, int] = (3, 4)
    n: int = 1
    rank2: bool = False

    def __str__(self) -> str:
        return f"{self.op}-c{self.c}" + ("-rank2" if self.rank2 else f"-{self.hw[0]}x{self.hw[1]}") + \
            (f"-n{self.n}" if self.n != 1 else "")


EW2_CASES = [Ew2Case("add", 5), Ew2Case("sub", 65, (2, 3), n=2), Ew2Case("mul", 1, (5, 5)),
             Ew2Case("div", 64, (1, 1), n=3), Ew2Case("div", 10, rank2=True, n=2), Ew2Case("sub", 7, rank2=True)]


def ew2_case(p: Ew2Case) -> Case:
    """Two branches of the input, one reduced to a per-sample mean, combined three ways:
    ``a op b`` (equal shapes), ``mean op y`` (a broadcast) and ``y op mean`` (b broadcast).
    Inputs are multiples of 1/8 so the mean's float32 sum is exact and every result is one
    correctly rounded float op: comparisons are exact."""
    rng = np.random.default_rng(zlib.crc32(str(p).encode()))
    shape = (p.n, p.c) if p.rank2 else (p.n, p.c, *p.hw)
    x = (rng.integers(-64, 65, shape) / 8).astype(F32)
    chain = Chain(shape, "NC") if p.rank2 else Chain(shape).nhwc()
    src = chain.cur
    xv = x if p.rank2 else x.transpose(TO_NHWC)
    k = rng.uniform(0.5, 2, p.c).astype(F32)
    a = chain.ew(EwStep("mul", k), EwStep("add", np.array(0.375, F32))).cur
    av = ((xv * k).astype(F32) + F32(0.375)).astype(F32)
    b = chain.at(src).ew(EwStep("abs"), EwStep("add", np.array(0.5, F32))).cur  # >= 0.5: a safe divisor
    bv = (np.abs(xv) + F32(0.5)).astype(F32)
    m = chain.at(b).mean().cur
    mv = bv.astype(np.float64).reshape(p.n, -1).mean(axis=1).astype(F32).reshape((p.n,) + (1,) * (len(shape) - 1))
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[p.op]
    y1 = chain.ew2(a, b, p.op).cur
    y1v = fn(av, bv).astype(F32)
    y2 = chain.ew2(m, y1, p.op).cur
    y3 = chain.ew2(y2, m, p.op).cur
    y2v = fn(mv, y1v).astype(F32)
    expect = {a: av, b: bv, m: mv, y1: y1v, y2: y2v, y3: fn(y2v, mv).astype(F32)}
    if not p.rank2:
        chain.nchw()
    return Case(chain, x, expect=expect)


@pytest.mark.parametrize("p", EW2_CASES, ids=str)
def test_ew2_mean(p):
    check(ew2_case(p))


CONCAT_CASES = [(65, 3, (3, 4), 1), (1, 64, (2, 2), 2), (100, 130, (1, 1), 1)]


def concat_case(p) -> Case:
    """Channel concatenation of four computed tensors (the input, a 1x1 conv of it, the conv
    again, an ew of the input) at offsets that straddle 64-channel boundaries."""
    c, co, hw, n = p
    rng = np.random.default_rng(c * 1000 + co)
    x = rng.standard_normal((n, c, *hw)).astype(F32)
    chain = Chain(x.shape).nhwc()
    src = chain.cur
    w = rng.integers(-3, 4, (co, 1, 1, c)).astype(F32)
    conv = chain.layer(LayerAttrs(ConvAttrs((1, 1)), w)).cur
    e = chain.at(src).ew(EwStep("mul", np.array(-2.0, F32))).cur
    parts = [conv, src, conv, e]
    chain.concat(parts)
    name = chain.cur
    chain.nchw()
    xv = x.transpose(TO_NHWC)
    cv = np.einsum("nhwc,oc->nhwo", xv.astype(np.float64), w[:, 0, 0, :].astype(np.float64)).astype(F32)
    want = np.concatenate([cv, xv, cv, (xv * F32(-2)).astype(F32)], axis=-1)
    return Case(chain, x, expect={name: want}, rtol=1e-6, atol=1e-5, expect_rtol=1e-6, expect_atol=1e-5)


@pytest.mark.parametrize("p", CONCAT_CASES, ids=lambda p: f"c{p[0]}-co{p[1]}-{p[2][0]}x{p[2][1]}-n{p[3]}")
def test_concat(p):
    check(concat_case(p))


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

SUITES = [(layer_case, BGEMM_CASES), (layer_case, PGEMM_CASES), (layer_case, ICONV_CASES), (layer_case, IKCONV_CASES),
          (layer_case, DCONV_CASES), (layer_case, FCONV_CASES), (layer_case, FKCONV_CASES),
          (pool_case, POOL_CASES), (quant_case, QUANT_CASES), (unpack_case, UNPACK_CASES), (ew_case, EW_CASES),
          (ew2_case, EW2_CASES), (concat_case, CONCAT_CASES), (softmax_case, SOFTMAX_CASES),
          (transpose_case, TRANSPOSE_CASES), (layout_case, LAYOUT_CASES)]

# What each suite must exercise: every case of a layer suite runs that suite's kernel family
# (rendered for each of the family's ISAs; the layout suite for the quantizer's), the integer
# suites the family render picks on that ISA (_int_family: the AVX2 dot-product conv takes group-1
# layers of the iconv suite too).
INT_FAMILIES = ("iconv", "ikconv", "dconv")
SUITE_FAMILY = {id(BGEMM_CASES): "bgemm", id(PGEMM_CASES): "pgemm", id(ICONV_CASES): "iconv",
                id(IKCONV_CASES): "ikconv", id(DCONV_CASES): "dconv", id(FCONV_CASES): "fconv", id(FKCONV_CASES): "fkconv",
                id(LAYOUT_CASES): "quantize"}


def _kernels_of(source: str) -> set[str]:
    m = re.search(r"^ \* Kernels \(\w+\): (.*?)(?: \*/)?$", source, re.M)
    assert m, "rendered model.c lists no kernels"
    return {k.strip() for k in m.group(1).split(",") if k.strip()}


def test_every_declared_variant_is_exercised():
    """Every variant in KERNELS is called by at least one case of the suites above, and each layer
    case runs the family its suite is named for."""
    used: set[str] = set()
    for make, cases in SUITES:
        family = SUITE_FAMILY.get(id(cases))
        graphs = {}  # one graph per case, rendered for each ISA
        for p, isa in [(p, isa) for p in cases for isa in ISAS.get(family, ["scalar"])]:
            g = graphs.setdefault(id(p), planned(make(p)))
            ks = _kernels_of(render(g, MODEL, isa=isa).c)
            if family:
                want = _int_family(p, isa) if family in INT_FAMILIES else family
                assert any(k.startswith(f"qcc_{want}_") for k in ks), f"{p}: runs {sorted(ks)}, not {want}"
                assert not [k for k in ks if re.match(r"qcc_(bgemm|pgemm|iconv|ikconv|dconv|fconv|fkconv)_", k)
                            and not k.startswith(f"qcc_{want}_")], f"{p}: runs another layer family: {sorted(ks)}"
            used |= ks
    declared = {k.name for k in KERNELS}
    assert not declared - used, f"variants never exercised: {sorted(declared - used)}"
    assert not {u for u in used if not u.startswith("qcc_ew_")} - declared, "a rendered kernel is not declared"


def _standalone(spec: KernelSpec) -> str:
    env = render_mod.environment()
    body = env.get_template(spec.template).render(**spec.variables())
    simd = {"avx2": "#include <immintrin.h>\n", "avx512": "#include <immintrin.h>\n",
            "neon": "#include <arm_neon.h>\n"}.get(spec.isa, "")
    return ('#include "qcc_rt.h"\n' + simd + body +
            f"void (*const keep_{spec.name})(void) = (void (*)(void)){spec.name};\n")


EW_ALL = KernelSpec("ew", "f32_all", params=(
    ("rounding", render_mod.ROUNDING),
    ("source", "every step"),
    ("steps", tuple(EwStep(op, np.arange(3, dtype=F32) + 1 if i % 2 else np.array(1.5, F32))
                    for i, op in enumerate(("add", "sub", "rsub", "mul", "div", "rdiv", "max", "min")))
     + (EwStep("sign"), EwStep("bipolar"), EwStep("abs")) + tuple(EwStep("round", mode=m) for m in render_mod.ROUNDING))))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
@pytest.mark.parametrize("spec", list(KERNELS) + [dataclasses.replace(EW_ALL, isa=isa) for isa in EW_ISAS],
                         ids=lambda k: k.name)
def test_variant_compiles_freestanding_without_warnings(spec, tmp_path):
    cc = {"neon": "aarch64-linux-gnu-gcc"}.get(spec.isa, "gcc")  # cross variants: the target's compiler
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    src = tmp_path / f"{spec.name}.c"
    src.write_text(_standalone(spec))
    r = subprocess.run([cc, "-std=c99", "-ffreestanding", "-Wall", "-Wextra", "-Werror", "-pedantic",
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


# ================================================================ NEON (aarch64, under qemu)
#
# cffi cannot load aarch64 code, so the NEON variants run as standalone programs: the cases of a
# suite are merged into one graph (case i's tensors prefixed "c<i>_", its input the i-th model
# input, its output the i-th model output), rendered for neon, cross-built with the neon target's
# compiler (qcc.codegen.program.build_program) and run once under qemu-aarch64; the harness writes
# the outputs and the arena after the run. Every computed tensor of every case is kept alive to
# the end of the merged graph, so, as on the host, the graph outputs and every intermediate tensor
# (bits word for word with the tail bits, int16 exactly, floats within the case's tolerance) are
# compared with the numpy oracle run on the same merged graph. Families without a NEON variant
# run their scalar kernels, compiled for aarch64. The arena is pre-filled with 0xA5 (one fill).
# The same merged graph built for the host (scalar C, cffi) must give the same bytes, floats too.



def merged(cases: list[Case]) -> Graph:
    """One graph computing every case side by side, each case's tensors kept alive to the end."""
    tensors: dict[str, Tensor] = {}
    nodes: list[Node] = []
    keeps: list[Node] = []
    inputs, outputs = [], []
    for i, case in enumerate(cases):
        ch = case.chain

        def ren(n, i=i):
            return f"c{i}_{n}"
        for name, t in ch.tensors.items():
            tensors[ren(name)] = t.with_(name=ren(name))
        for n in ch.nodes:
            nodes.append(Node(n.op, tuple(map(ren, n.inputs)), tuple(map(ren, n.outputs)), n.attrs, ren(n.name)))
            o = n.outputs[0]
            if n.op != "reshape" and o != ch.cur:
                keep = ren(o) + "__keep"
                tensors[keep] = tensors[ren(o)].with_(name=keep)
                keeps.append(Node("reshape", (ren(o),), (keep,), ReshapeAttrs(ch.tensors[o].shape), f"keep_{ren(o)}"))
        inputs.append(ren("x"))
        outputs.append(ren(ch.cur))
    return Graph(tuple(nodes + keeps), tensors, tuple(inputs), tuple(outputs), "neon_batch")


def run_neon(cases: list[Case], work) -> None:
    """The cases as one merged graph, built for neon and run under qemu, against the oracle."""
    from qcc.codegen.program import build_program, run_program
    from qcc.codegen.targets import TARGETS
    target = TARGETS[NEON]
    missing = target.missing()
    if missing:
        pytest.skip(f"the neon target needs {', '.join(missing)}")
    g, gaps = apart(plan_memory(merged(cases)).graph)
    feeds = {f"c{i}_x": np.asarray(c.x, F32) for i, c in enumerate(cases)}
    env = interp.run(g, feeds, keep_all=True)
    src = render(g, MODEL, isa=NEON)
    exe = build_program(src, MODEL, target, work, extra_cflags=("-Werror",))  # and without a warning
    x = np.concatenate([feeds[n].reshape(-1) for n in g.inputs])[None]
    out_size = sum(g.tensors[o].size for o in g.outputs)
    arena_file = work / "arena.bin"
    y = run_program(exe, target, x, out_size, arena=arena_file, timeout=300)[0]
    arena = np.frombuffer(arena_file.read_bytes(), np.uint8)
    assert arena.size == g.meta["arena_size"], f"arena dump {arena.size} bytes, arena {g.meta['arena_size']}"
    for a, b in gaps:  # the harness fills the arena with 0xA5 before the run
        assert (arena[a:b] == 0xA5).all(), f"written between buffers, at arena bytes {a}..{b}"
    off, checked = 0, set()
    for i, (case, o) in enumerate(zip(cases, g.outputs)):
        t = g.tensors[o]
        _compare(f"case {i}: graph output", y[off:off + t.size].reshape(t.shape), env[o], t, case.rtol, case.atol)
        off += t.size
    for name, at in g.meta["arena"].items():
        if name.endswith("__keep"):
            continue
        t = g.tensors[name]
        i = int(name[1:name.index("_")])
        got = arena[at:at + nbytes(t)].view({"bits": "<u8", "i16": "<i2", "f32": F32}[t.dtype]).reshape(storage_shape(t))
        _compare(f"case {i} ({cases[i].chain.nodes[0].name}...): tensor '{name}'", got, env[name], t,
                 cases[i].rtol, cases[i].atol)
        checked.add(name)
    computed = {o for n in g.nodes if n.op != "reshape" for o in n.outputs}
    assert computed <= checked | set(g.outputs) | set(g.meta["in_output"]), \
        f"tensors not read back: {sorted(computed - checked)[:5]}"
    ks = _kernels_of(src.c)
    assert any(k.endswith("__neon") for k in ks) or not any(k.isa == NEON for k in KERNELS), sorted(ks)
    # x86 and aarch64 give the same bits: the host's scalar build of the same graph (the reference C;
    # the host's SIMD variants are held to the oracle by the tests above), every output and arena
    # byte of the tensors, floats included (no FMA, no libm, the same op order)
    host = run_c(g, x[0], isa="scalar")[0]
    bad = np.flatnonzero(host["OUTPUT"].reshape(-1).view(np.uint32) != y.view(np.uint32))
    if bad.size:
        i = int(np.searchsorted(np.cumsum([g.tensors[o].size for o in g.outputs]), bad[0], side="right"))
        raise AssertionError(f"case {i}: {bad.size} output floats differ between aarch64 and x86, e.g. "
                             f"{y[bad[0]]!r} != {host['OUTPUT'].reshape(-1)[bad[0]]!r}")
    for name in checked:
        at = g.meta["arena"][name]
        assert host[name].tobytes() == arena[at:at + nbytes(g.tensors[name])].tobytes(), \
            f"tensor '{name}': aarch64 bytes != x86 bytes"


def neon_quant_formula_cases() -> list[Case]:
    """Values one ulp off ties under every rounding mode, eight channels (the NEON lanes, not the
    scalar tail), to int16 levels and to bit planes: kernel and oracle follow QONNX's float32
    formulas (|x| + 0.5 in float32, not exact maths)."""
    h = np.nextafter(F32(0.5), F32(0))
    v = np.array([h, -h, np.nextafter(F32(1.5), F32(2)), 2.5, -2.5, -0.5, 0.5, -1.5], F32)
    xs = np.ascontiguousarray(np.tile(v, (1, 2, 2, 1)).transpose(TO_NCHW))
    cases = []
    for mode in ROUNDINGS:
        for out, spec, zero in (("i16", QuantSpec(-4, 3), 0.0), ("bits", GRIDS["u2"], 1.0)):
            attrs = QuantizeAttrs("round", spec, scale=np.array(1.0, F32), zero=np.array(zero, F32),
                                  clamp=(float(spec.lo + zero), float(spec.hi + zero)), rounding=mode, out=out)
            chain = Chain(xs.shape).nhwc().quantize(attrs)
            chain.unpack()
            cases.append(Case(chain.nchw(), xs))
    return cases


NEON_SUITES = {
    "bgemm": [(layer_case, BGEMM_CASES)],
    "pgemm": [(layer_case, PGEMM_CASES)],
    "iconv": [(layer_case, ICONV_CASES), (layer_case, IKCONV_CASES), (layer_case, DCONV_CASES)],
    "fconv": [(layer_case, FCONV_CASES), (layer_case, FKCONV_CASES)],
    "quantize": [(quant_case, QUANT_CASES), (None, neon_quant_formula_cases), (layout_case, LAYOUT_CASES)],
    "other": [(pool_case, POOL_CASES), (unpack_case, UNPACK_CASES), (ew_case, EW_CASES), (ew2_case, EW2_CASES),
              (concat_case, CONCAT_CASES), (softmax_case, SOFTMAX_CASES), (transpose_case, TRANSPOSE_CASES)],
}


def test_neon_suites_cover_every_suite():
    """The NEON runs take every case of every suite the host runs (so the coverage test's neon
    renders are the programs that run)."""
    listed = {id(cases) for parts in NEON_SUITES.values() for _, cases in parts}
    assert {id(cases) for _, cases in SUITES} <= listed


@pytest.mark.parametrize("suite", list(NEON_SUITES))
def test_neon_variants(suite, tmp_path):
    """Every case of the suite, in one aarch64 program under qemu, against the oracle."""
    cases = [c for make, cs in NEON_SUITES[suite] for c in (cs() if make is None else [make(p) for p in cs])]
    run_neon(cases, tmp_path)
