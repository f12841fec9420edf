"""QONNX graphs built in tests, with dyadic parameters so that every float op is exact and
ties are real ties (power-of-two scales, BatchNorm with epsilon 0 and var a power of 4)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Q = "qonnx.custom_op.general"


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value, base="c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op, inputs, domain="", **attrs) -> str:
        out = self.name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), domain=domain, **attrs))
        return out

    # ---- quantizers ---------------------------------------------------------------------
    def quant(self, x, scale, bits, signed=1, narrow=0, zero=0.0, rounding="ROUND") -> str:
        return self.node("Quant", [x, self.const(scale), self.const(zero), self.const(bits)], Q,
                         signed=signed, narrow=narrow, rounding_mode=rounding)

    def bipolar(self, x, scale=1.0) -> str:
        return self.node("BipolarQuant", [x, self.const(scale)], Q)

    def binary_weight(self, shape, per_channel=True) -> str:
        w = self.rng.uniform(-1, 1, shape).astype(np.float32)
        scale = 2.0 ** self.rng.integers(-3, 1, (shape[0],) + (1,) * (len(shape) - 1)) if per_channel else 1.0
        return self.bipolar(self.const(w, "w"), np.asarray(scale, np.float32))

    def int_weight(self, shape, bits=8, scale=2.0 ** -6) -> str:
        w = self.rng.uniform(-1, 1, shape).astype(np.float32)
        return self.quant(self.const(w, "w"), scale, bits, signed=1, narrow=1)

    # ---- layers -------------------------------------------------------------------------
    def conv(self, x, w, kernel, strides=(1, 1), pads=(0, 0, 0, 0), bias=None, group=1) -> str:
        ins = [x, w] + ([self.const(bias)] if bias is not None else [])
        return self.node("Conv", ins, kernel_shape=list(kernel), strides=list(strides), pads=list(pads), group=group)

    def batchnorm(self, x, c, gamma=None, mean=None, beta=None) -> str:
        g = 2.0 ** self.rng.integers(-2, 3, c) * self.rng.choice([-1.0, 1.0], c)  # negative gamma too
        mu = self.rng.integers(-8, 9, c) * 0.25
        g = g if gamma is None else np.asarray(gamma, np.float32)
        mu = mu if mean is None else np.asarray(mean, np.float32)
        var = 4.0 ** self.rng.integers(-1, 3, c)
        beta = self.rng.integers(-4, 5, c) * 0.125 if beta is None else np.asarray(beta, np.float32)
        return self.node("BatchNormalization", [x, self.const(g), self.const(beta), self.const(mu), self.const(var)],
                         epsilon=0.0)

    def model(self, inputs: dict[str, list], outputs: dict[str, int]) -> onnx.ModelProto:
        """``inputs``: name -> shape (dim 0 becomes a dynamic batch); ``outputs``: name -> rank."""
        g = helper.make_graph(self.nodes, "test",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", *v[1:]]) for k, v in inputs.items()],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [f"{o}_d{i}" for i in range(r)])
                               for o, r in outputs.items()],
                              self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(Q, 1)],
                              ir_version=8)
        return m


def w1a1_mlp(seed=0, k=100, hidden=(65, 130), classes=10, gamma=None, means=None, input_bits=8):
    """Quant(8) input -> [binary Gemm -> BN -> BipolarQuant] x len(hidden) -> int8 Gemm.

    Outputs: the last binary activation (exact test of the bit layers) and the logits."""
    b = Builder(seed)
    x = b.quant("x", 2.0 ** -4, input_bits, signed=1)  # 1-bit signed Quant is bipolar in QONNX
    c_in = k
    for i, h in enumerate(hidden):
        w = b.binary_weight((h, c_in))
        y = b.node("Gemm", [x, w], transB=1) if i % 2 == 0 else b.node("MatMul", [x, b.node("Transpose", [w], perm=[1, 0])])
        y = b.batchnorm(y, h, gamma=None if gamma is None else gamma[i], mean=None if means is None else means[i])
        x = b.bipolar(y)
        c_in = h
    logits = b.node("Gemm", [x, b.int_weight((classes, c_in)), b.const(b.rng.integers(-8, 8, classes) * 0.25)], transB=1)
    return b.model({"x": [1, k]}, {x: 2, logits: 2})


def w1a1_cnn(seed=0, c_in=3, hw=(9, 9), chans=(16, 65), strides=(1, 2), pads=((1, 1, 1, 1), (0, 1, 2, 1)),
             kernels=((3, 3), (3, 3)), classes=10, means=None):
    """Quant(8) -> Conv(8-bit weights) -> BN -> Bipolar -> [binary Conv -> BN -> Bipolar] -> MaxPool
    -> Flatten -> binary Gemm -> BN -> Bipolar -> int8 Gemm. Outputs: last bits, logits."""
    b = Builder(seed)
    x = b.quant("x", 2.0 ** -4, 8, signed=1)
    w = b.int_weight((chans[0], c_in) + kernels[0])
    y = b.conv(x, w, kernels[0], (strides[0],) * 2, pads[0])
    x = b.bipolar(b.batchnorm(y, chans[0], mean=None if means is None else means[0]))
    w = b.binary_weight((chans[1], chans[0]) + kernels[1])
    y = b.conv(x, w, kernels[1], (strides[1],) * 2, pads[1])
    x = b.bipolar(b.batchnorm(y, chans[1], mean=None if means is None else means[1]))
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    flat = b.node("Flatten", [x], axis=1)
    return b, flat, x


def finish_cnn(b, flat, feat_numel, hidden=64, classes=10, mean=None):
    w = b.binary_weight((hidden, feat_numel))
    y = b.node("Gemm", [flat, w], transB=1)
    bits = b.bipolar(b.batchnorm(y, hidden, mean=mean))
    logits = b.node("Gemm", [bits, b.int_weight((classes, hidden)), b.const(b.rng.integers(-8, 8, classes) * 0.25)],
                    transB=1)
    return bits, logits
