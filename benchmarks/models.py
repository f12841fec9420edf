"""A small, self-contained QONNX graph builder for the benchmark models (not used by tests).

Parameters are random but realistic enough that no channel is constant (qcc removes dead
channels, which would make a benchmark flatter than it is): BatchNorm statistics follow the
variance of the layer's accumulator, and activation scales cover the normalized range.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QONNX = "qonnx.custom_op.general"


@dataclass(frozen=True)
class Precision:
    """Bits of the weights (1 = bipolar) and of the activations (1 = bipolar, else unsigned
    after a ReLU); ``input_bits`` of the layer's own input quantizer (1 = bipolar, signed 8,
    else unsigned)."""

    name: str
    w: int
    a: int


PRECISIONS = {p.name: p for p in (Precision("w1a1", 1, 1), Precision("w1a2", 1, 2), Precision("w2a2", 2, 2),
                                  Precision("w8a8", 8, 8))}


class Net:
    def __init__(self, name: str, seed: int = 0):
        self.name, self.rng = name, np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count: dict[str, int] = {}

    # ---- plumbing -------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        k = self.count[base] = self.count.get(base, -1) + 1
        return f"{base}_{k}"

    def const(self, value, base: str = "c") -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], scope: str, domain: str = "", **attrs) -> str:
        name = f"{scope}/{op}"
        while any(n.name == name for n in self.nodes):
            name = self.fresh(f"{scope}/{op}")
        out = f"{name}_output"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, domain=domain, **attrs))
        return out

    # ---- quantizers -----------------------------------------------------------------------
    def quant(self, x: str, scope: str, scale, bits: int, signed: bool, narrow: bool = False) -> str:
        return self.node("Quant", [x, self.const(scale, "scale"), self.const(0.0, "zero"), self.const(float(bits), "bits")],
                         scope, QONNX, signed=int(signed), narrow=int(narrow), rounding_mode="ROUND")

    def bipolar(self, x: str, scope: str, scale=1.0) -> str:
        return self.node("BipolarQuant", [x, self.const(scale, "scale")], scope, QONNX)

    def input_quant(self, x: str, bits: int, scope: str = "input_quant") -> str:
        """The quantizer of a float N(0, 1) input: bipolar, 2-bit unsigned or 8-bit signed."""
        if bits == 1:
            return self.bipolar(x, scope)
        if bits == 8:
            return self.quant(x, scope, 2.0 ** -5, 8, signed=True)
        return self.quant(x, scope, 0.5, bits, signed=False)

    def weight(self, shape: tuple[int, ...], bits: int, scope: str) -> str:
        """Quantized weights ``W`` (float initializer -> quantizer) with per-output-channel scales."""
        w = self.rng.standard_normal(shape).astype(np.float32) * np.float32(1 / np.sqrt(np.prod(shape[1:])))
        cshape = (shape[0],) + (1,) * (len(shape) - 1)
        absmax = np.abs(w).reshape(shape[0], -1).max(1).reshape(cshape)
        if bits == 1:
            return self.bipolar(self.const(w, "weight"), f"{scope}/weight_quant",
                                np.abs(w).reshape(shape[0], -1).mean(1).reshape(cshape).astype(np.float32))
        qmax = 2 ** (bits - 1) - 1
        narrow = bits > 2  # 2-bit: levels -2..1 as Brevitas exports w2; wider: symmetric narrow range
        return self.quant(self.const(w, "weight"), f"{scope}/weight_quant", (absmax / max(qmax, 1)).astype(np.float32),
                          bits, signed=True, narrow=narrow)

    # ---- layers ---------------------------------------------------------------------------
    @staticmethod
    def _level_power(bits: int) -> float:
        """E[x^2] of an activation with ``bits`` (for the BatchNorm statistics)."""
        return {1: 1.0, 2: 0.5 ** 2 * 2.0, 8: 1.0}.get(bits, 1.0)

    def batchnorm(self, x: str, c: int, fan_in: int, in_bits: int, w_scale: float, scope: str) -> str:
        var = np.full(c, fan_in * self._level_power(in_bits) * w_scale ** 2, np.float32)
        mean = (self.rng.standard_normal(c) * np.sqrt(var) * 0.1).astype(np.float32)
        gamma = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = (self.rng.standard_normal(c) * 0.2 + 0.5).astype(np.float32)
        return self.node("BatchNormalization", [x, self.const(gamma, "bn_gamma"), self.const(beta, "bn_beta"),
                                                self.const(mean, "bn_mean"), self.const(var, "bn_var")],
                         scope, epsilon=1e-5)

    def activation(self, x: str, bits: int, scope: str) -> str:
        """BipolarQuant (1 bit) or ReLU + unsigned Quant (``bits``) of a normalized tensor."""
        if bits == 1:
            return self.bipolar(x, f"{scope}/act_quant")
        x = self.node("Relu", [x], scope)
        scale = 0.5 if bits == 2 else 4.0 / (2 ** bits - 1)
        return self.quant(x, f"{scope}/act_quant", scale, bits, signed=False)

    def _w_scale(self, bits: int, fan_in: int) -> float:
        # the weight magnitude after quantization, about 1/sqrt(fan_in) (bipolar: its mean |w|)
        return float(np.sqrt(2 / np.pi) / np.sqrt(fan_in)) if bits == 1 else float(1 / np.sqrt(fan_in))

    def conv(self, x: str, cin: int, cout: int, w_bits: int, in_bits: int, scope: str, k: int = 3,
             stride: int = 1, pad: int = 1) -> str:
        """Conv(quantized weights) -> BatchNorm (not yet the activation)."""
        w = self.weight((cout, cin, k, k), w_bits, scope)
        y = self.node("Conv", [x, w], scope, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        return self.batchnorm(y, cout, cin * k * k, in_bits, self._w_scale(w_bits, cin * k * k), f"{scope}/bn")

    def fc(self, x: str, cin: int, cout: int, w_bits: int, in_bits: int, scope: str, bn: bool = True) -> str:
        """Gemm(x, W^T) with quantized weights, then BatchNorm (or a bias when ``bn`` is False)."""
        w = self.weight((cout, cin), w_bits, scope)
        if not bn:
            return self.node("Gemm", [x, w, self.const(self.rng.standard_normal(cout) * 0.1, "bias")], scope, transB=1)
        y = self.node("Gemm", [x, w], scope, transB=1)
        return self.batchnorm(y, cout, cin, in_bits, self._w_scale(w_bits, cin), f"{scope}/bn")

    def model(self, inputs: dict[str, list[int]], outputs: dict[str, int]) -> onnx.ModelProto:
        """``inputs``: name -> shape (dim 0 becomes a dynamic batch); ``outputs``: name -> rank."""
        g = helper.make_graph(self.nodes, self.name,
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", *v[1:]]) for k, v in inputs.items()],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [f"{o}_d{i}" for i in range(r)])
                               for o, r in outputs.items()], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)],
                              ir_version=8, producer_name="qcc benchmarks")
        return onnx.shape_inference.infer_shapes(m)


# ---- single layers ---------------------------------------------------------------------------
CONV_SHAPES = [(64, 32), (128, 16), (256, 8), (512, 8), (512, 4)]  # (channels, height = width)
FC_SHAPE = (1024, 1024)


def conv_layer(channels: int, hw: int, prec: Precision, seed: int = 0) -> onnx.ModelProto:
    """Input quantizer -> 3x3 conv (stride 1, pad 1) C->C -> BN -> activation quantizer."""
    net = Net(f"conv{channels}_{hw}x{hw}_{prec.name}", seed)
    x = net.input_quant("x", prec.a)
    y = net.activation(net.conv(x, channels, channels, prec.w, prec.a, "conv"), prec.a, "conv")
    return net.model({"x": [1, channels, hw, hw]}, {y: 4})


def fc_layer(cin: int, cout: int, prec: Precision, seed: int = 0) -> onnx.ModelProto:
    """Input quantizer -> fully connected cin->cout (batch 1) -> BN -> activation quantizer."""
    net = Net(f"fc{cin}x{cout}_{prec.name}", seed)
    x = net.input_quant("x", prec.a)
    y = net.activation(net.fc(x, cin, cout, prec.w, prec.a, "fc"), prec.a, "fc")
    return net.model({"x": [1, cin]}, {y: 2})


def layer_models() -> dict[str, onnx.ModelProto]:
    """Every single-layer model: name -> model, conv shapes then FC, each in every precision."""
    out = {}
    for prec in PRECISIONS.values():
        for c, hw in CONV_SHAPES:
            out[f"conv3x3 {c}@{hw}x{hw} {prec.name}"] = conv_layer(c, hw, prec)
        out[f"fc {FC_SHAPE[0]}x{FC_SHAPE[1]} {prec.name}"] = fc_layer(*FC_SHAPE, prec)
    return out


# ---- whole networks --------------------------------------------------------------------------
def cnv(prec: Precision, seed: int = 0) -> onnx.ModelProto:
    """FINN's CNV at 32x32x3: 8-bit input quantizer; 3x3 convs (no padding) 64, 64, pool, 128, 128,
    pool, 256, 256; FC 512, 512, 10. First and last layers have 8-bit weights, the rest ``prec``."""
    net = Net(f"cnv_{prec.name}", seed)
    x = net.input_quant("x", 8)
    cin, in_bits = 3, 8
    for i, c in enumerate((64, 64, "pool", 128, 128, "pool", 256, 256)):
        if c == "pool":
            x = net.node("MaxPool", [x], f"features.{i}", kernel_shape=[2, 2], strides=[2, 2])
            continue
        w_bits = 8 if i == 0 else prec.w
        x = net.activation(net.conv(x, cin, c, w_bits, in_bits, f"features.{i}", pad=0), prec.a, f"features.{i}")
        cin, in_bits = c, prec.a
    x = net.node("Flatten", [x], "classifier", axis=1)  # 256 x 1 x 1
    for i, c in enumerate((512, 512)):
        x = net.activation(net.fc(x, cin, c, prec.w, prec.a, f"classifier.{i}"), prec.a, f"classifier.{i}")
        cin = c
    logits = net.fc(x, cin, 10, 8, prec.a, "classifier.2", bn=False)
    return net.model({"x": [1, 3, 32, 32]}, {logits: 2})


def resnet(seed: int = 0, a_bits: int = 2, w_bits: int = 2) -> onnx.ModelProto:
    """A small residual net at 32x32x3 with 2-bit activations and weights: 8-bit stem conv 3->32;
    a residual block at 32 channels; a stride-2 conv to 64 channels at 16x16; a residual block at
    64 channels; global average pool; FC 64->10 with 8-bit weights. Each block adds two
    quantized tensors (the block input and its quantized branch) and quantizes the sum again."""
    net = Net(f"resnet_w{w_bits}a{a_bits}", seed)
    x = net.input_quant("x", 8)
    x = net.activation(net.conv(x, 3, 32, 8, 8, "stem"), a_bits, "stem")

    def block(x: str, c: int, scope: str) -> str:
        y = net.activation(net.conv(x, c, c, w_bits, a_bits, f"{scope}.conv1"), a_bits, f"{scope}.conv1")
        y = net.activation(net.conv(y, c, c, w_bits, a_bits, f"{scope}.conv2"), a_bits, f"{scope}.conv2")
        s = net.node("Add", [x, y], scope)
        return net.quant(s, f"{scope}/add_quant", 0.5, a_bits, signed=False)

    x = block(x, 32, "block1")
    x = net.activation(net.conv(x, 32, 64, w_bits, a_bits, "down", stride=2), a_bits, "down")
    x = block(x, 64, "block2")
    x = net.node("GlobalAveragePool", [x], "pool")
    x = net.node("Flatten", [x], "pool", axis=1)
    logits = net.fc(x, 64, 10, 8, a_bits, "fc", bn=False)
    return net.model({"x": [1, 3, 32, 32]}, {logits: 2})


def network_models() -> dict[str, onnx.ModelProto]:
    return {"CNV w1a1": cnv(PRECISIONS["w1a1"]), "CNV w1a2": cnv(PRECISIONS["w1a2"]),
            "ResNet-8ish w2a2": resnet()}


def main(argv=None) -> int:
    """``python benchmarks/models.py OUT_DIR [--only TEXT]``: save the models as .onnx files
    (for ``qcc bench OUT_DIR/cnv_w1a1.onnx`` and friends)."""
    import argparse
    import os
    import re

    p = argparse.ArgumentParser(description="write the benchmark models as .onnx files")
    p.add_argument("out_dir")
    p.add_argument("--only", help="only models whose name contains this")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, m in {**layer_models(), **network_models()}.items():
        if args.only and args.only.lower() not in name.lower():
            continue
        path = os.path.join(args.out_dir, re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".onnx")
        onnx.save(m, path)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
