"""Numpy definitions of the kernel ops, on the storage the C kernels use.

These are the oracles of the kernel families: each C variant is tested against the
function here. They are written as plain maths (unpack, compute, pack), never mirroring
the C algorithm, so that a shared mistake is unlikely.

Storage: 4-D activations are NHWC. A ``bits`` tensor holds bipolar levels (+1 as bit 1,
-1 as bit 0) packed along channels: uint64 words, bit ``i`` of word ``j`` is channel
``64 * j + i``, shape (N, H, W, ceil(C / 64)); unused tail bits are 0.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.graph import Node, Tensor
from qcc.ir.interp import F32, conv2d, pool2d, round_mode
from qcc.ir.ops import ConvAttrs, PoolAttrs

WORD = 64


def words(channels: int) -> int:
    return -(-channels // WORD)


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


def pm1(packed: np.ndarray, channels: int) -> np.ndarray:
    """Bipolar levels (-1/+1, int64) of a bits tensor."""
    return 2 * unpack_bits(packed, channels).astype(np.int64) - 1


# ---- kernel ops --------------------------------------------------------------------------

def _nchw(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 3, 1, 2))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


def layer(n: Node, x: np.ndarray) -> np.ndarray:
    """Conv over NHWC input (bits or float), weights (Co, kh, kw, Ci), fused output transform."""
    a = n.attrs
    w = np.transpose(a.weight, (0, 3, 1, 2))  # OIHW
    ci = w.shape[1] * a.conv.group
    if x.dtype == np.uint64:
        acc = conv2d(_nchw(pm1(x, ci)), w.astype(np.int64), a.conv, np.int64)
    else:
        acc = conv2d(_nchw(x), w, a.conv, np.float64).astype(F32)
    acc = _nhwc(acc)
    if a.thr is not None:
        t = a.thr
        n_steps = ((acc * t.sign)[..., None] >= t.thr.astype(acc.dtype)).sum(axis=-1)
        q = t.spec.lo + t.spec.step * n_steps
        return pack_bits(((q + 1) // 2).astype(np.uint8)) if n.attrs.out_bits else q.astype(F32)
    y = acc.astype(F32)
    if a.mul is not None:
        y = (y * a.mul).astype(F32)
    if a.bias is not None:
        y = (y + a.bias).astype(F32)
    return y


def pool(n: Node, x: np.ndarray) -> np.ndarray:
    a: PoolAttrs = n.attrs
    if x.dtype == np.uint64:  # max of bipolar levels = OR of their bits
        c = x.shape[-1] * WORD
        q = pool2d(_nchw(unpack_bits(x, c).astype(np.int32)), a)
        return pack_bits(_nhwc(q).astype(np.uint8))
    return _nhwc(pool2d(_nchw(x), a)).astype(F32)


def quantize(n: Node, x: np.ndarray) -> np.ndarray:
    """Float values (channels last) to levels: QONNX Quant, bipolar sign, or thresholds."""
    a = n.attrs
    if a.mode == "sign":
        scale, zero = (F32(1), F32(0)) if a.scale is None else (a.scale, a.zero)
        q = np.where(((x / scale).astype(F32) + zero).astype(F32) >= 0, 1, -1)
    elif a.mode == "thresholds":
        q = a.spec.lo + a.spec.step * (x[..., None] >= a.thresholds).sum(axis=-1)
    else:
        y = ((x / a.scale).astype(F32) + a.zero).astype(F32)
        y = round_mode(np.clip(y, F32(a.clamp[0]), F32(a.clamp[1])).astype(F32), a.rounding)
        q = (y - a.zero).astype(F32)
    if a.out_bits:
        return pack_bits(((np.asarray(q) + 1) // 2).astype(np.uint8))
    return np.asarray(q).astype(F32)


def unpack(n: Node, x: np.ndarray) -> np.ndarray:
    """Bits to float: ``scale[c] * (+1 or -1)``."""
    scale = n.attrs
    return (pm1(x, scale.size).astype(F32) * scale).astype(F32)


EW = {
    "add": lambda x, c: x + c, "sub": lambda x, c: x - c, "rsub": lambda x, c: c - x,
    "mul": lambda x, c: x * c, "div": lambda x, c: x / c, "rdiv": lambda x, c: c / x,
    "max": lambda x, c: np.maximum(x, c), "min": lambda x, c: np.minimum(x, c),
    "sign": lambda x, c: np.sign(x),
    "bipolar": lambda x, c: np.where(x >= 0, F32(1), F32(-1)),
}


def ew(n: Node, x: np.ndarray) -> np.ndarray:
    y = x.astype(F32)
    for s in n.attrs.steps:
        if s.op == "round":
            y = round_mode(y, s.mode)
        else:
            y = EW[s.op](y, None if s.const is None else s.const.astype(F32)).astype(F32)
    return y


def softmax(n: Node, x: np.ndarray) -> np.ndarray:
    e = np.exp((x - x.max(axis=-1, keepdims=True)).astype(F32)).astype(F32)
    return (e / e.sum(axis=-1, keepdims=True)).astype(F32)


def reshape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A view with another shape; for bits the last axis stays the packed words."""
    if x.dtype == np.uint64:
        shape = tuple(shape[:-1]) + (x.shape[-1],)
    return x.reshape((x.shape[0],) + tuple(shape[1:]))


OPS = {
    "layer": layer,
    "pool": pool,
    "quantize": quantize,
    "unpack": unpack,
    "ew": ew,
    "softmax": softmax,
    "transpose": lambda n, x: np.ascontiguousarray(np.transpose(x, n.attrs.perm)),
    "reshape": lambda n, x: reshape(x, n.attrs.shape),
}


def to_values(t: Tensor, x: np.ndarray) -> np.ndarray:
    """Real values of a tensor in ONNX (NCHW) order, whatever its storage."""
    if t.dtype == "bits":
        x = pm1(x, t.shape[-1])
    v = t.quant.decode(x) if t.quant is not None else np.asarray(x, F32)
    return _nchw(v) if t.layout == "NHWC" else v


__all__ = ["ConvAttrs", "OPS", "pack_bits", "unpack_bits", "pm1", "to_values", "words"]
