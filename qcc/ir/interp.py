"""The numpy interpreter: the executable definition of every IR op.

Model ops follow ONNX/QONNX semantics in float32, one correctly rounded IEEE operation
per ONNX operation, so that they agree with onnxruntime bit for bit wherever the ONNX
op order is fixed. Convolutions are the exception the ONNX standard leaves open (the
summation order); here they accumulate in float64 and round once, so a conv over values
on a quantized grid is exact. Tensors that hold levels (``codes``) are integer arrays.

Kernel ops (lower-case) are defined in :mod:`qcc.ir.kernels_ref` on their packed NHWC
storage; this module dispatches to them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qcc.errors import QccError
from qcc.ir.graph import Graph, Node
from qcc.ir.ops import (ConvAttrs, MultiThresholdAttrs, PoolAttrs, QuantAttrs, ThresholdAttrs,
                        TruncAttrs)

F32 = np.float32


# ---- shared numerics -----------------------------------------------------------------

def round_mode(x: np.ndarray, mode: str) -> np.ndarray:
    """QONNX rounding modes (ROUND is half to even, like np.round and ONNX Round)."""
    a = np.abs(x)
    fns = {
        "ROUND": np.round, "CEIL": np.ceil, "FLOOR": np.floor, "DOWN": np.trunc,
        "UP": lambda v: np.sign(v) * np.ceil(a),
        "HALF_UP": lambda v: np.sign(v) * np.floor(a + F32(0.5)),
        "HALF_DOWN": lambda v: np.sign(v) * np.ceil(a - F32(0.5)),
    }
    return fns[mode](x).astype(x.dtype)


def _channel(v: np.ndarray, ndim: int, axis: int = 1) -> np.ndarray:
    """Broadcast a per-channel vector (or scalar) along ``axis`` of an ndim tensor."""
    v = np.asarray(v)
    if v.size <= 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def windows(x: np.ndarray, kernel, strides, pads, fill, extra=(0, 0)) -> np.ndarray:
    """Sliding windows of an NCHW tensor: (N, C, OH, OW, kh, kw), padded with ``fill``.

    ``extra`` adds bottom/right padding (ceil-mode pooling)."""
    t, l, b, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b + extra[0]), (l, r + extra[1])), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, tuple(kernel), axis=(2, 3))
    return win[:, :, ::strides[0], ::strides[1]]


def conv2d(x: np.ndarray, w: np.ndarray, a: ConvAttrs, acc=np.float64) -> np.ndarray:
    """NCHW conv with zero padding, accumulated in ``acc`` (float64 or int64)."""
    n, c = x.shape[:2]
    co = w.shape[0]
    oh, ow = a.out_hw(x.shape[2], x.shape[3])
    win = windows(x.astype(acc), a.kernel, a.strides, a.pads, 0)[:, :, :oh, :ow]
    g = a.group
    win = win.reshape(n, g, c // g, oh, ow, *a.kernel)
    wg = w.astype(acc).reshape(g, co // g, c // g, *a.kernel)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    return out.reshape(n, co, oh, ow)


def pool2d(x: np.ndarray, a: PoolAttrs) -> np.ndarray:
    oh, ow = a.out_hw(x.shape[2], x.shape[3])
    need_h = (oh - 1) * a.strides[0] + a.kernel[0] - (x.shape[2] + a.pads[0] + a.pads[2])
    need_w = (ow - 1) * a.strides[1] + a.kernel[1] - (x.shape[3] + a.pads[1] + a.pads[3])
    extra = (max(0, need_h), max(0, need_w))
    if a.kind == "max":
        fill = np.iinfo(x.dtype).min if x.dtype.kind == "i" else -np.inf
        win = windows(x, a.kernel, a.strides, a.pads, fill, extra)[:, :, :oh, :ow]
        return win.max(axis=(4, 5))
    win = windows(x.astype(np.float64), a.kernel, a.strides, a.pads, 0, extra)[:, :, :oh, :ow]
    ones = np.ones((1, 1) + x.shape[2:], np.float64)
    if a.count_include_pad:  # padded taps count, the ceil-mode overhang does not
        ones = np.pad(ones, ((0, 0), (0, 0), (a.pads[0], a.pads[2]), (a.pads[1], a.pads[3])), constant_values=1)
        cnt = windows(ones, a.kernel, a.strides, (0, 0, 0, 0), 0, extra)
    else:
        cnt = windows(ones, a.kernel, a.strides, a.pads, 0, extra)
    cnt = cnt[:, :, :oh, :ow].sum(axis=(4, 5))
    return (win.sum(axis=(4, 5)) / cnt).astype(F32)


# ---- QONNX quantizers ----------------------------------------------------------------

def quant(x: np.ndarray, a: QuantAttrs) -> np.ndarray:
    """QONNX Quant / IntQuant; returns the levels ``q`` if ``a.codes`` else the values."""
    scale, zero = a.scale, a.zero  # broadcast as given, as QONNX does
    y = ((x / scale).astype(F32) + zero).astype(F32)
    if a.bits == 1 and a.signed:
        y = np.where(y >= 0, F32(1), F32(-1))
    else:
        lo, hi = a.int_range
        y = round_mode(np.clip(y, F32(lo), F32(hi)).astype(F32), a.rounding)
    y = (y - zero).astype(F32)
    if a.codes:  # levels d * (y - z): d = 2 for a half-integer zero point
        return (y * (1 if a.bits == 1 and a.signed else a.spec().step)).astype(np.int32)
    return (y * scale).astype(F32)


def bipolar_quant(x: np.ndarray, scale: np.ndarray, codes: bool) -> np.ndarray:
    q = np.where(x >= 0, F32(1), F32(-1))
    return q.astype(np.int32) if codes else (q * scale).astype(F32)


def multithreshold(x: np.ndarray, a: MultiThresholdAttrs) -> np.ndarray:
    xm = x if a.channels_last else np.moveaxis(x, 1, -1)
    n = (xm[..., None] >= a.thresholds).sum(axis=-1)
    if not a.channels_last:
        n = np.moveaxis(n, -1, 1)
    if a.codes:
        spec = a.spec()
        return (spec.lo + spec.step * n).astype(np.int32)
    return (F32(a.out_scale) * n.astype(F32) + F32(a.out_bias)).astype(F32)


def trunc(x: np.ndarray, a: TruncAttrs) -> np.ndarray:
    """QONNX Trunc, v1 (shift by in_bits - out_bits) and v2 (output scale, clamp)."""
    scale, zero = a.scale, a.zero
    y = np.round(((x / scale).astype(F32) + zero).astype(F32))
    if a.out_scale is None:
        y = round_mode((y / F32(2.0 ** (a.in_bits - a.out_bits))).astype(F32), a.rounding)
        return ((y - zero).astype(F32) * scale).astype(F32)
    tscale = (F32(2) ** np.round(np.log2((a.out_scale / a.scale).astype(F32)))).astype(F32)
    y = (y / tscale).astype(F32)
    lo, hi = QuantAttrs(a.scale, a.zero, a.out_bits, a.signed, a.narrow).int_range
    y = round_mode(np.clip(y, F32(lo), F32(hi)).astype(F32), a.rounding)
    return ((y - (zero / tscale).astype(F32)).astype(F32) * a.out_scale).astype(F32)


def threshold(x: np.ndarray, a: ThresholdAttrs, channel_axis: int = 1) -> np.ndarray:
    """Levels ``lo + step * #{j : sign[c] * x >= thr[c, j]}``."""
    xm = np.moveaxis(x, channel_axis, -1)
    signed = xm * a.sign.astype(xm.dtype)
    n = (signed[..., None] >= a.thr.astype(signed.dtype)).sum(axis=-1)
    return np.moveaxis(a.spec.lo + a.spec.step * n, -1, channel_axis).astype(np.int32)


# ---- the op table ---------------------------------------------------------------------

def _gemm(n: Node, x, w, b=None):
    y = (x.astype(np.float64) @ w.astype(np.float64).T).astype(F32)
    return y if b is None else (y + b).astype(F32)


def _conv(n: Node, x, w, b=None):
    y = conv2d(x, w, n.attrs).astype(F32)
    return y if b is None else (y + _channel(b, 4)).astype(F32)


def _batchnorm(n: Node, x):
    a, b = n.attrs.affine()
    return (x * _channel(a, x.ndim) + _channel(b, x.ndim)).astype(F32)


def _flatten(n: Node, x):
    ax = n.attrs.axis % max(x.ndim, 1)
    return x.reshape(int(np.prod(x.shape[:ax], dtype=np.int64)), -1)


def _reshape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reshape with axis 0 as the batch: a graph bound to batch 1 runs on any batch."""
    if shape and x.shape and shape[0] != x.shape[0]:
        return x.reshape((x.shape[0],) + tuple(shape[1:]))
    return x.reshape(shape)


def _softmax(n: Node, x):
    e = np.exp((x - x.max(axis=-1, keepdims=True)).astype(F32))
    return (e / e.sum(axis=-1, keepdims=True)).astype(F32)


def _arith(fn):
    def run(n: Node, a, b):
        return fn(np.asarray(a, F32), np.asarray(b, F32)).astype(F32)
    return run


MODEL_OPS: dict[str, Callable] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "IntConv": lambda n, x, w, off=None: conv2d(x, w, n.attrs, np.int64) + (0 if off is None else off.reshape(1, -1, 1, 1)),
    "BatchNormalization": _batchnorm,
    "Relu": lambda n, x: np.maximum(x, F32(0)).astype(F32),
    "Sign": lambda n, x: np.sign(x).astype(np.int32 if n.attrs.codes else F32),
    "Abs": lambda n, x: np.abs(x).astype(F32),
    "ReduceMean": lambda n, x: x.astype(np.float64).mean(axis=tuple(range(1, x.ndim)), keepdims=True).astype(F32),
    "Concat": lambda n, *xs: np.concatenate(xs, axis=1),
    "Clip": lambda n, x: np.clip(x, F32(n.attrs.lo), F32(n.attrs.hi)).astype(F32),
    "Pool": lambda n, x: pool2d(x, n.attrs),
    "Flatten": _flatten,
    "Reshape": lambda n, x: _reshape(x, n.attrs.shape),
    "Transpose": lambda n, x: np.transpose(x, n.attrs.perm),
    "Softmax": _softmax,
    "Add": _arith(np.add), "Sub": _arith(np.subtract), "Mul": _arith(np.multiply), "Div": _arith(np.divide),
    "Quant": lambda n, x: quant(x, n.attrs),
    "BipolarQuant": lambda n, x: bipolar_quant(x, n.attrs.scale, n.attrs.codes),
    "MultiThreshold": lambda n, x: multithreshold(x, n.attrs),
    "Trunc": lambda n, x: trunc(x, n.attrs),
    "Threshold": lambda n, x: threshold(x, n.attrs),
    "Dequant": lambda n, x: n.attrs.decode(x),
}


def _kernel_ops() -> dict[str, Callable]:
    from qcc.ir import kernels_ref  # kernel ops live beside their packed layouts
    return kernels_ref.OPS


def run_node(node: Node, env: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Execute one node on the values in ``env``; returns its outputs."""
    fn = MODEL_OPS.get(node.op) or _kernel_ops().get(node.op)
    if fn is None:
        raise QccError(f"the interpreter has no definition for op '{node.op}'", node=node.name, op=node.op)
    with np.errstate(all="ignore"):
        out = fn(node, *[env[i] if i else None for i in node.inputs])
    return list(out) if isinstance(out, tuple) else [out]


def run(graph: Graph, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``feeds`` (graph inputs by name); returns the outputs (or all tensors)."""
    env = {name: t.data for name, t in graph.tensors.items() if t.is_const}
    for name in graph.inputs:
        env[name] = np.asarray(feeds[name], dtype=F32)
    for node in graph.nodes:
        env.update(zip(node.outputs, run_node(node, env)))
    if keep_all:
        return env
    return {name: env[name] for name in graph.outputs}


def values(graph: Graph, env: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The real values of tensor ``name`` in NCHW order, decoding levels and layouts."""
    from qcc.ir import kernels_ref
    return kernels_ref.to_values(graph.tensors[name], env[name])
