"""Attributes of the IR's operators, one small frozen record each.

Two op sets share the IR:

* **model ops** keep ONNX names and ONNX semantics on NCHW tensors (``Conv``, ``Relu``,
  ``Quant``, ...), plus three of qcc's own that passes introduce: ``IntConv`` (the exact
  integer accumulator of a conv over quantized levels), ``Threshold`` (a per-channel
  staircase from an accumulator to levels) and ``Dequant`` (levels to real values);
* **kernel ops** (lower-case names) are what the generated C calls, on NHWC tensors with
  bit-packed storage where ``dtype == "bits"``; each maps onto one kernel family.

:mod:`qcc.ir.interp` gives the executable definition of every op.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcc.ir.quant import QuantSpec


@dataclass(frozen=True)
class ConvAttrs:
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    group: int = 1

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        kh = (self.kernel[0] - 1) * self.dilations[0] + 1
        kw = (self.kernel[1] - 1) * self.dilations[1] + 1
        oh = (h + self.pads[0] + self.pads[2] - kh) // self.strides[0] + 1
        ow = (w + self.pads[1] + self.pads[3] - kw) // self.strides[1] + 1
        return oh, ow


@dataclass(frozen=True)
class PoolAttrs:
    kind: str  # "max" | "avg"
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = False
    levels: QuantSpec | None = None  # kernel op on bit planes: how codes map to levels

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        def one(n, k, s, p0, p1):
            span = n + p0 + p1 - k
            o = (-(-span // s) if self.ceil_mode else span // s) + 1
            if self.ceil_mode and (o - 1) * s >= n + p0:  # last window must start inside
                o -= 1
            return o

        return (one(h, self.kernel[0], self.strides[0], self.pads[0], self.pads[2]),
                one(w, self.kernel[1], self.strides[1], self.pads[1], self.pads[3]))


@dataclass(frozen=True)
class QuantAttrs:
    """QONNX ``Quant``: ``q = round(clamp(x / scale + zero, lo, hi)) - zero``; ``y = q * scale``."""

    scale: np.ndarray = field(compare=False)
    zero: np.ndarray = field(compare=False)
    bits: int = 8
    signed: bool = True
    narrow: bool = False
    rounding: str = "ROUND"
    codes: bool = False  # output the levels q (as a tensor with a QuantSpec) instead of values
    clip: tuple[int, int] | None = None  # explicit integer range (QuantizeLinear's, zero point removed)

    @property
    def int_range(self) -> tuple[int, int]:
        """QONNX min_int / max_int of the code before the zero point is removed."""
        if self.clip is not None:
            return self.clip
        if self.signed:
            return -(1 << (self.bits - 1)) + int(self.narrow), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1 - int(self.narrow)

    def spec(self) -> QuantSpec | None:
        """The grid of the output ``s * (y - z)``, ``y`` in ``int_range``, if ``z`` is one value
        that is an integer (levels ``y - z``) or a half-integer, as for symmetric k-bit
        weights (levels ``2 * (y - z)``, step 2, scale ``s / 2``). Otherwise None: float only."""
        z = self.zero.reshape(-1)
        if z.size != 1:
            return None
        if self.bits == 1 and self.signed:
            return QuantSpec(-1, 1, 2, self.scale) if z[0] == 0 else None
        lo, hi = self.int_range
        for d in (1, 2):
            dz = float(z[0]) * d
            if dz == round(dz):
                return QuantSpec(d * lo - round(dz), d * hi - round(dz), d, (self.scale / np.float32(d)).astype(np.float32))
        return None


@dataclass(frozen=True)
class BipolarQuantAttrs:
    """QONNX ``BipolarQuant``: ``q = +1 if x >= 0 else -1``; ``y = q * scale``."""

    scale: np.ndarray = field(compare=False)
    codes: bool = False

    def spec(self) -> QuantSpec:
        return QuantSpec(-1, 1, 2, self.scale)


@dataclass(frozen=True)
class SignAttrs:
    """ONNX ``Sign`` is a quantizer too: levels ``{-1, 0, +1}`` (ternary; 0 stays 0)."""

    codes: bool = False

    def spec(self) -> QuantSpec:
        return QuantSpec(-1, 1, 1, np.float32(1))


@dataclass(frozen=True)
class MultiThresholdAttrs:
    """QONNX ``MultiThreshold``: ``n = #{j : x >= t[c, j]}``; ``y = out_scale * n + out_bias``."""

    thresholds: np.ndarray = field(compare=False)  # (C or 1, B)
    out_scale: float = 1.0
    out_bias: float = 0.0
    channels_last: bool = False
    codes: bool = False

    def spec(self) -> QuantSpec | None:
        """``out_scale * n + out_bias = s * q`` on an integer grid ``q``, if one exists.

        With ``b = out_bias / out_scale``: ``q = n + b`` when ``b`` is an integer, or
        ``q = 2n + 2b`` (step 2, ``s = out_scale / 2``) when ``2b`` is, as for bipolar
        outputs ``{-1, +1}``.
        """
        if self.out_scale <= 0:
            return None
        steps = self.thresholds.shape[1]
        for step in (1, 2):
            b = step * self.out_bias / self.out_scale
            if b == round(b):
                return QuantSpec(int(b), int(b) + step * steps, step, np.float32(self.out_scale / step))
        return None


@dataclass(frozen=True)
class TruncAttrs:
    """QONNX ``Trunc`` (v1 and v2): requantize to fewer bits; see :func:`qcc.ir.interp.trunc`."""

    scale: np.ndarray = field(compare=False)
    zero: np.ndarray = field(compare=False)
    in_bits: int
    out_bits: int
    out_scale: np.ndarray | None = field(default=None, compare=False)  # v2 only
    signed: bool = True
    narrow: bool = False
    rounding: str = "FLOOR"


@dataclass(frozen=True)
class ThresholdAttrs:
    """Levels from a per-channel staircase: ``q = lo + step * #{j : sign[c] * x >= thr[c, j]}``.

    ``thr`` rows are sorted ascending; unused steps hold a value no input reaches.
    """

    thr: np.ndarray = field(compare=False)  # (C, L), int64 for integer inputs, else float32
    sign: np.ndarray = field(compare=False)  # (C,) of +1 / -1
    spec: QuantSpec


# ---- kernel ops ------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerAttrs:
    """One lowered conv/gemm layer (``layer`` kernel op), NHWC in and out.

    ``acc[n, y, x, co] = sum over valid taps of in[...] * w[co, ky, kx, ci]`` (padding taps
    contribute 0), computed exactly on integer levels when ``x_spec`` is given (the input
    holds levels, as bit planes or int16), in float otherwise. Output transform: ``thr``
    given -> levels stored as ``out`` (``bits`` planes or ``i16``); else
    ``acc * mul[co] + bias[co]`` in float32.
    """

    conv: ConvAttrs
    weight: np.ndarray = field(compare=False)  # (C_out, kh, kw, C_in): levels (int8) or float32
    mul: np.ndarray | None = field(default=None, compare=False)
    bias: np.ndarray | None = field(default=None, compare=False)
    thr: ThresholdAttrs | None = None
    x_spec: QuantSpec | None = None
    w_spec: QuantSpec | None = None  # the weights' grid (``weight`` holds its levels)
    acc_offset: np.ndarray | None = field(default=None, compare=False)  # int, added to acc (affine output)
    out: str = "f32"  # f32 | bits | i16
    source: str = ""  # the ONNX nodes this layer came from, for comments

    @property
    def in_channels(self) -> int:
        return self.weight.shape[3] * self.conv.group

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True)
class EwStep:
    """One float32 op: ``add sub rsub mul div rdiv max min`` with a constant (``rsub`` and
    ``rdiv`` put the constant first); ``sign``; ``bipolar`` (``x >= 0 ? 1 : -1``); ``round``
    with a QONNX rounding ``mode``."""

    op: str
    const: np.ndarray | None = field(default=None, compare=False)  # scalar or per channel
    mode: str = ""


@dataclass(frozen=True)
class EwAttrs:
    """An elementwise float32 chain applied in order (``ew`` kernel op), channels last."""

    steps: tuple[EwStep, ...]
    source: str = ""


@dataclass(frozen=True)
class BinaryAttrs:
    """``y = a op b`` on two computed float tensors (``ew2`` kernel op); ``bcast`` names the
    operand that holds one value per sample ("a" or "b"), or "none" for equal shapes."""

    op: str  # add | sub | mul | div
    bcast: str = "none"


@dataclass(frozen=True)
class ConcatAttrs:
    """Channel concatenation (``concat`` kernel op), channels last: output channel offsets."""

    offsets: tuple[int, ...]


@dataclass(frozen=True)
class QuantizeAttrs:
    """Float values to levels, for a quantizer on a float tensor (``quantize`` kernel op).

    ``mode``: ``round`` (QONNX Quant: scale/zero/clamp/rounding), ``sign`` (bipolar),
    ``thresholds`` (per-channel thresholds on the float value, as MultiThreshold).
    ``src``: the input's layout, ``NHWC`` or ``NCHW`` (a graph input's transpose fused in,
    :mod:`qcc.passes.fuse_layouts`); the output is channels last either way.
    """

    mode: str
    spec: QuantSpec
    scale: np.ndarray | None = field(default=None, compare=False)
    zero: np.ndarray | None = field(default=None, compare=False)
    clamp: tuple[float, float] = (0.0, 0.0)
    rounding: str = "ROUND"
    thresholds: np.ndarray | None = field(default=None, compare=False)
    out: str = "f32"  # f32 (levels as floats) | bits | i16
    src: str = "NHWC"


@dataclass(frozen=True)
class UnpackAttrs:
    """Levels (bit planes or int16) to real values ``scale * q`` (``f32``) or int16 levels.
    ``dst``: the output's layout, ``NHWC`` or ``NCHW`` (a graph output's transpose fused in)."""

    spec: QuantSpec
    channels: int
    out: str = "f32"
    dst: str = "NHWC"


@dataclass(frozen=True)
class TransposeAttrs:
    perm: tuple[int, ...]


@dataclass(frozen=True)
class FlattenAttrs:
    axis: int = 1


@dataclass(frozen=True)
class ReshapeAttrs:
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SoftmaxAttrs:
    axis: int = -1


@dataclass(frozen=True)
class ClipAttrs:
    lo: float = float("-inf")
    hi: float = float("inf")


@dataclass(frozen=True)
class BatchNormAttrs:
    scale: np.ndarray = field(compare=False)
    bias: np.ndarray = field(compare=False)
    mean: np.ndarray = field(compare=False)
    var: np.ndarray = field(compare=False)
    eps: float = 1e-5

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``y = x * a + b`` per channel, in float32 as onnxruntime computes BatchNormalization."""
        inv_std = (np.float32(1) / np.sqrt(self.var + np.float32(self.eps))).astype(np.float32)
        a = (inv_std * self.scale).astype(np.float32)
        b = (self.bias - self.mean * a).astype(np.float32)
        return a, b

