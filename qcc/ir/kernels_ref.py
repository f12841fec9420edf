"""Numpy definitions of the kernel ops, on the storage the C kernels use.

These are the oracles of the kernel families: each C variant is tested against the
function here. They are written as plain maths (unpack, compute, pack), never mirroring
the C algorithm, so that a shared mistake is unlikely.

Storage of 4-D activations is NHWC, in one of three forms:

* ``f32``: float32 values (or levels, where a tensor's ``quant`` says so);
* ``i16``: integer levels ``q`` as int16;
* ``bits``: levels as bit planes. ``q = lo + step * code`` with ``code = sum_p 2^p b_p``;
  each plane is packed along channels into uint64 words, bit ``i`` of word ``j`` being
  channel ``64 * j + i``; a pixel holds its planes one after another, so the last axis
  has ``planes * ceil(C / 64)`` words. Unused tail bits are 0. A bipolar tensor is one
  plane whose bit 1 means +1.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.graph import Node, Tensor
from qcc.ir.interp import F32, conv2d, pool2d, round_mode
from qcc.ir.ops import ConvAttrs, PoolAttrs
from qcc.ir.quant import QuantSpec

WORD = 64
ROW_ALIGN = 4  # each plane's segment of an im2col or weight row is padded with zero words to 4 (256 bits)
STORAGE = {"f32": F32, "i16": np.int16, "bits": np.uint64}


def words(channels: int) -> int:
    return -(-channels // WORD)


def plane_words(taps: int, channels: int) -> int:
    """Words of one plane's segment of an im2col (or packed weight) row.

    Rows are plane-major bit streams: bit ``t * C + c`` of plane p's segment is channel c of
    tap t, so taps of fewer than 64 channels share words (no padding per tap), and the
    segment is zero padded to a multiple of ``ROW_ALIGN`` words."""
    n = -(-taps * channels // WORD)
    return -(-n // ROW_ALIGN) * ROW_ALIGN


# ---- packing: the one definition of the bit layout --------------------------------------

def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(..., C) of 0/1 -> (..., ceil(C/64)) uint64, bit i of word j = channel 64j+i."""
    c = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (words(c) * WORD,), np.uint8)
    padded[..., :c] = bits
    le = np.packbits(padded.reshape(bits.shape[:-1] + (-1, 8)), axis=-1, bitorder="little")
    return le.reshape(bits.shape[:-1] + (-1,)).view("<u8").reshape(bits.shape[:-1] + (words(c),))


def unpack_bits(packed: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: (..., W) uint64 -> (..., C) uint8 of 0/1."""
    b = np.unpackbits(packed.astype("<u8").view(np.uint8), axis=-1, bitorder="little")
    return b[..., :channels]


def pack_planes(codes: np.ndarray, planes: int) -> np.ndarray:
    """(..., C) codes -> (..., planes * words(C)): plane p holds bit p of every code."""
    codes = np.asarray(codes, np.int64)
    return np.concatenate([pack_bits(((codes >> p) & 1).astype(np.uint8)) for p in range(planes)], axis=-1)


def unpack_planes(packed: np.ndarray, channels: int, planes: int) -> np.ndarray:
    """Inverse of :func:`pack_planes`: the codes, int64."""
    wd = words(channels)
    return sum(unpack_bits(packed[..., p * wd:(p + 1) * wd], channels).astype(np.int64) << p for p in range(planes))


def levels(x: np.ndarray, spec: QuantSpec, channels: int) -> np.ndarray:
    """Integer levels (int64) held by a ``bits`` or ``i16`` (or f32 levels) tensor."""
    if x.dtype == np.uint64:
        return spec.lo + spec.step * unpack_planes(x, channels, spec.bits)
    return np.asarray(x).astype(np.int64)


def store(q: np.ndarray, spec: QuantSpec, out: str) -> np.ndarray:
    """Levels ``q`` in storage ``out``."""
    if out == "bits":
        return pack_planes(spec.to_code(q), spec.bits)
    return np.asarray(q).astype(STORAGE[out])


def pm1(packed: np.ndarray, channels: int) -> np.ndarray:
    """Bipolar levels (-1/+1, int64) of a one-plane bits tensor."""
    return 2 * unpack_bits(packed, channels).astype(np.int64) - 1


# ---- kernel ops --------------------------------------------------------------------------

def _nchw(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 3, 1, 2))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


def layer(n: Node, x: np.ndarray) -> np.ndarray:
    """Conv over NHWC input (levels or floats), weights (Co, kh, kw, Ci/g), fused output transform."""
    a = n.attrs
    w = np.transpose(a.weight, (0, 3, 1, 2))  # OIHW
    if a.x_spec is not None:
        acc = conv2d(_nchw(levels(x, a.x_spec, a.in_channels)), w.astype(np.int64), a.conv, np.int64)
    else:
        acc = conv2d(_nchw(x), w, a.conv, np.float64).astype(F32)
    acc = _nhwc(acc)
    if a.acc_offset is not None:
        acc = acc + a.acc_offset
    if a.thr is not None:
        t = a.thr
        n_steps = ((acc * t.sign)[..., None] >= t.thr.astype(acc.dtype)).sum(axis=-1)
        return store(t.spec.lo + t.spec.step * n_steps, t.spec, a.out)
    y = acc.astype(F32)
    if a.mul is not None:
        y = (y * a.mul).astype(F32)
    if a.bias is not None:
        y = (y + a.bias).astype(F32)
    return y


def pool(n: Node, x: np.ndarray) -> np.ndarray:
    a: PoolAttrs = n.attrs
    if x.dtype == np.uint64:  # the max of levels is the level of the max code (step > 0)
        spec = a.levels
        c = x.shape[-1] // spec.bits * WORD
        codes = unpack_planes(x, c, spec.bits)
        return pack_planes(_nhwc(pool2d(_nchw(codes), a)), spec.bits)
    return _nhwc(pool2d(_nchw(x), a)).astype(x.dtype)


def quantize(n: Node, x: np.ndarray) -> np.ndarray:
    """Float values (channels last, or NCHW with ``src``) to levels: QONNX Quant, bipolar sign,
    or thresholds."""
    a = n.attrs
    if a.src == "NCHW":
        x = _nhwc(x)
    if a.mode == "sign":
        scale, zero = (F32(1), F32(0)) if a.scale is None else (a.scale, a.zero)
        q = np.where(((x / scale).astype(F32) + zero).astype(F32) >= 0, 1, -1)
    elif a.mode == "ternary":
        q = np.sign(x).astype(np.int64)
    elif a.mode == "thresholds":
        q = a.spec.lo + a.spec.step * (x[..., None] >= a.thresholds).sum(axis=-1)
    else:
        y = ((x / a.scale).astype(F32) + a.zero).astype(F32)
        y = round_mode(np.clip(y, F32(a.clamp[0]), F32(a.clamp[1])).astype(F32), a.rounding)
        q = ((y - a.zero).astype(F32) * F32(a.spec.step)).astype(F32)
    return store(np.asarray(q), a.spec, a.out)


def unpack(n: Node, x: np.ndarray) -> np.ndarray:
    """Levels (bits or i16) to real values ``scale[c] * q`` (f32) or to i16 levels."""
    a = n.attrs
    q = levels(x, a.spec, a.channels)
    if a.out == "i16":
        return q.astype(np.int16)
    y = (q.astype(F32) * a.spec.channel_scale(a.channels)).astype(F32)
    return _nchw(y) if a.dst == "NCHW" else y


EW = {
    "add": lambda x, c: x + c, "sub": lambda x, c: x - c, "rsub": lambda x, c: c - x,
    "mul": lambda x, c: x * c, "div": lambda x, c: x / c, "rdiv": lambda x, c: c / x,
    "max": lambda x, c: np.maximum(x, c), "min": lambda x, c: np.minimum(x, c),
    "sign": lambda x, c: np.sign(x),
    "bipolar": lambda x, c: np.where(x >= 0, F32(1), F32(-1)),
    "abs": lambda x, c: np.abs(x),
}


def ew(n: Node, x: np.ndarray) -> np.ndarray:
    y = x.astype(F32)
    for s in n.attrs.steps:
        if s.op == "round":
            y = round_mode(y, s.mode)
        else:
            y = EW[s.op](y, None if s.const is None else s.const.astype(F32)).astype(F32)
    return y


def ew2(n: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two computed tensors, elementwise; one may hold one value per sample."""
    return EW[n.attrs.op](a.astype(F32), b.astype(F32)).astype(F32)


def mean(n: Node, x: np.ndarray) -> np.ndarray:
    """Mean of each sample over all its elements, keeping the dims."""
    return x.astype(np.float64).mean(axis=tuple(range(1, x.ndim)), keepdims=True).astype(F32)


def concat(n: Node, *xs: np.ndarray) -> np.ndarray:
    return np.concatenate([x.astype(F32) for x in xs], axis=-1)


def softmax(n: Node, x: np.ndarray) -> np.ndarray:
    e = np.exp((x - x.max(axis=-1, keepdims=True)).astype(F32)).astype(F32)
    return (e / e.sum(axis=-1, keepdims=True)).astype(F32)


def reshape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A view with another shape; for bits the last axis stays the packed words."""
    if x.dtype == np.uint64:  # the words of a pixel stay together
        shape = tuple(shape[:-1]) + (x.shape[-1],)
    return x.reshape((x.shape[0],) + tuple(shape[1:]))


OPS = {
    "layer": layer,
    "pool": pool,
    "quantize": quantize,
    "unpack": unpack,
    "ew": ew,
    "softmax": softmax,
    "ew2": ew2,
    "mean": mean,
    "concat": concat,
    "transpose": lambda n, x: np.ascontiguousarray(np.transpose(x, n.attrs.perm)),
    "reshape": lambda n, x: reshape(x, n.attrs.shape),
}


def to_values(t: Tensor, x: np.ndarray) -> np.ndarray:
    """Real values of a tensor in ONNX (NCHW) order, whatever its storage."""
    if t.quant is not None:
        x = levels(x, t.quant, t.shape[-1])
    v = t.quant.decode(x) if t.quant is not None else np.asarray(x, F32)
    return _nchw(v) if t.layout == "NHWC" else v


__all__ = ["ConvAttrs", "OPS", "levels", "pack_bits", "pack_planes", "plane_words", "pm1", "store", "to_values",
           "unpack_bits", "unpack_planes", "words"]
