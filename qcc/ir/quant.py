"""How the numbers in a quantized tensor are encoded.

Every quantizer qcc meets (QONNX ``Quant``/``BipolarQuant``/``MultiThreshold``, and the
weights they produce) yields values on an integer grid with a scale::

    value = scale[c] * q,    q in {lo, lo + step, ..., hi}

``q`` is the *level*: ``-1``/``+1`` for bipolar data (``step = 2``), ``0..3`` for an
unsigned 2-bit code, ``-128..127`` for int8. A zero point that is an integer is folded
into ``lo``/``hi``, so no offset is needed. ``scale`` is a scalar or one value per
channel. The grid maps onto bit planes (SEEDS.md, plane decomposition)::

    q = lo + step * code,   code = sum_p 2^p * b_p,   b_p in {0, 1}

A bipolar tensor is one plane whose bit 1 means ``+1``: ``q = 2b - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class QuantSpec:
    lo: int
    hi: int
    step: int = 1
    scale: np.ndarray = field(default_factory=lambda: np.float32(1.0), compare=False)
    """float32, shaped to broadcast against the tensor as QONNX gives it: ``()``,
    ``(C, 1, 1, 1)`` for conv weights, ``(1, C, 1, 1)`` or ``(C, 1, 1)`` for activations."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", np.asarray(self.scale, dtype=np.float32))
        assert self.hi >= self.lo and self.step >= 1 and (self.hi - self.lo) % self.step == 0

    @property
    def levels(self) -> int:
        return (self.hi - self.lo) // self.step + 1

    @property
    def bits(self) -> int:
        """Bit planes needed for a code: ceil(log2(levels))."""
        return max(1, int(self.levels - 1).bit_length())

    @property
    def bipolar(self) -> bool:
        return (self.lo, self.hi, self.step) == (-1, 1, 2)

    @property
    def max_abs(self) -> int:
        return max(abs(self.lo), abs(self.hi))

    def describe(self) -> str:
        if self.bipolar:
            return "pm1"
        sign = "i" if self.lo < 0 else "u"
        return f"{sign}{self.bits}"

    def channel_scale(self, channels: int) -> np.ndarray:
        """The scale as a float32 vector of one value per channel."""
        return np.broadcast_to(self.scale.reshape(-1), (channels,)).astype(np.float32)

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    def decode(self, q: np.ndarray) -> np.ndarray:
        """Real values, float32, of the levels ``q``."""
        return (np.asarray(q, dtype=np.float32) * self.scale).astype(np.float32)

    def with_scale(self, scale) -> "QuantSpec":
        return QuantSpec(self.lo, self.hi, self.step, scale)

    def to_code(self, q: np.ndarray) -> np.ndarray:
        """The unsigned code ``(q - lo) / step`` whose bits are the planes."""
        return ((np.asarray(q, dtype=np.int64) - self.lo) // self.step).astype(np.int64)
