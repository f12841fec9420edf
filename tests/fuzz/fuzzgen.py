"""Random valid quantized graphs for differential fuzzing of qcc against onnxruntime.

One integer seed gives one *spec* (:func:`random_spec`): a small JSON-able description of a
network (input, blocks, head, form). :func:`build` turns a spec into an ONNX model, either in
QONNX form (``Quant``/``BipolarQuant``/``MultiThreshold``, BatchNorm) or in QDQ form
(``QuantizeLinear``/``DequantizeLinear`` around float ops, as ``onnxruntime.quantization``
writes them), plus the inputs to feed and which outputs to compare exactly.

Every parameter is dyadic (scales, BatchNorm statistics with ``epsilon = 0`` and variances a
power of 4, biases), and weight magnitudes are bounded so that every accumulator, in any
summation order, stays below 2**24 units of its grid: the float32 graph that onnxruntime
runs is then *exact*, and qcc (which computes the integer layers in integers) must agree
with it bit for bit on every quantized tensor. Ties are made real, not just possible:

* BatchNorm means are set, layer by layer, to values the pre-BN accumulator really takes on
  the fed inputs (so BN outputs exactly 0 there: the threshold of a bipolar quantizer);
* MultiThreshold thresholds are values its input really takes;
* weights and inputs include codes + 0.5 (rounding ties of the weight and input quantizers);
* BatchNorm gammas include negative and zero values; some output channels are pruned (zero
  weights).

A spec is a dict so that the shrinker (:mod:`fuzz.shrink`) can edit it: drop blocks, halve
channels and sizes, lower bit widths. :func:`build` raises :class:`InvalidSpec` for a spec
whose shapes do not fit (the shrinker then tries another edit).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Q = "qonnx.custom_op.general"
ACC_LIMIT = 2 ** 23          # accumulator bound in grid units: float32 sums are exact below 2**24
MAC_BUDGET = 1_500_000       # per sample, keeps each case fast

# weight kinds: (bits, description); levels are what the quantizer produces
W_KINDS = ["pm1", "q1", "ter", "s2", "u2z", "s3", "k3", "s4", "k4", "i8"]
# activation kinds (QONNX form)
A_KINDS = ["pm1", "u1", "ter", "u2", "s2", "u4", "s4", "u8", "s8", "mt1", "mt2", "mt4"]
ROUNDINGS = ["ROUND", "HALF_UP", "HALF_DOWN", "FLOOR", "CEIL", "UP", "DOWN"]


class InvalidSpec(ValueError):
    """The spec does not describe a valid graph (shapes do not fit)."""


@dataclass
class Case:
    spec: dict
    model: onnx.ModelProto
    feeds: dict
    exact: list = field(default_factory=list)   # output names compared bit for bit
    approx: list = field(default_factory=list)  # float outputs: tolerance, argmax


# ------------------------------------------------------------------------------ random specs
def _small(rng, lo, hi, big_p=0.1, big_hi=None):
    """An integer biased towards small values, occasionally large (up to ``big_hi``)."""
    if big_hi is not None and rng.random() < big_p:
        return int(rng.integers(lo, big_hi + 1))
    return int(rng.integers(lo, hi + 1))


def _channels(rng):
    r = rng.random()
    if r < 0.45:
        return int(rng.integers(1, 17))
    if r < 0.85:
        return int(rng.choice([int(rng.integers(17, 80)), 63, 64, 65, 127, 128, 129]))
    return int(rng.integers(80, 301))


def _conv_params(rng, cin):
    k = [int(rng.choice([1, 1, 2, 3, 3, 3, 4, 5, 7]))] * 2
    if rng.random() < 0.15:
        k[1] = int(rng.integers(1, 8))
    stride = [int(rng.choice([1, 1, 1, 2, 2, 3]))] * 2
    if rng.random() < 0.1:
        stride[1] = int(rng.integers(1, 4))
    r = rng.random()
    if r < 0.3:
        pads = [0, 0, 0, 0]
    elif r < 0.7:
        pads = [k[0] // 2, k[1] // 2, k[0] // 2, k[1] // 2]
    else:  # asymmetric
        pads = [int(rng.integers(0, k[0])), int(rng.integers(0, k[1])), int(rng.integers(0, k[0])),
                int(rng.integers(0, k[1]))]
    cout = _channels(rng)
    group = 1
    r = rng.random()
    if r < 0.12 and cin > 1:
        group, cout = cin, cin * int(rng.choice([1, 1, 2]))  # depthwise
    elif r < 0.22:
        divs = [d for d in range(2, min(cin, 16) + 1) if cin % d == 0]
        if divs:
            group = int(rng.choice(divs))
            cout = group * max(1, cout // group)
    return {"k": k, "stride": stride, "pads": pads, "group": group, "cout": cout}


def _layer_quant(rng, form):
    if form == "qdq":
        return {"w": str(rng.choice(["i8", "i8", "i4", "i2"])), "a": str(rng.choice(["u8", "s8", "u8r", "u4", "s4"]))}
    return {"w": str(rng.choice(W_KINDS)), "a": str(rng.choice(A_KINDS)),
            "round": str(rng.choice(ROUNDINGS)) if rng.random() < 0.3 else "ROUND"}


def _affine(rng, form):
    """BatchNorm (QONNX form; sometimes QDQ), pruning and zero gamma."""
    bn = rng.random() < (0.75 if form == "qonnx" else 0.15)
    return {"bn": bn, "prune": float(rng.choice([0, 0, 0, 0.25, 0.5])),
            "gamma0": bool(bn and rng.random() < 0.3), "bias": bool(rng.random() < 0.4),
            "muladd": bool(form == "qonnx" and rng.random() < 0.2), "pc_scale": bool(form == "qonnx" and rng.random() < 0.15)}


def random_spec(seed: int) -> dict:
    """The spec of fuzz case ``seed`` (reproducible)."""
    for attempt in range(100):
        spec = _random_spec(seed, np.random.default_rng([seed, 0xF022, attempt]))
        try:
            shapes(spec)
            return spec
        except InvalidSpec:
            continue
    raise RuntimeError(f"no valid spec for seed {seed}")


def _random_spec(seed, rng) -> dict:
    form = "qdq" if rng.random() < 0.25 else "qonnx"
    conv_net = rng.random() < 0.7
    spec = {"seed": int(seed), "form": form, "blocks": [], "head": int(rng.choice([0, 1, 1, 1]))}
    if form == "qdq":
        spec["opset"] = 21
    if conv_net:
        c = _channels(rng) if rng.random() < 0.5 else int(rng.integers(1, 5))
        hw = _small(rng, 1, 12, 0.2, 40)
        w = hw if rng.random() < 0.8 else _small(rng, 1, 12, 0.2, 40)
        spec["input"] = [c, hw, w]
        n = int(rng.integers(1, 5))
        for _ in range(n):
            for _attempt in range(20):  # a block whose shapes fit the current input
                spec["blocks"].append(_random_block4(rng, form, c))
                try:
                    c = shapes(spec)[0][-1][0]
                    break
                except InvalidSpec:
                    spec["blocks"].pop()
        if rng.random() < 0.7:
            spec["blocks"].append({"op": "gpool", "kind": str(rng.choice(["avg", "max"])), "out": False}
                                  if rng.random() < 0.5 else {"op": "flatten"})
    else:
        spec["input"] = [_channels(rng) if rng.random() < 0.8 else int(rng.integers(1, 600))]
    if len(spec["input"]) == 1 or spec["blocks"] and spec["blocks"][-1]["op"] in ("gpool", "flatten"):
        for _ in range(int(rng.integers(0 if conv_net else 1, 3))):
            spec["blocks"].append({"op": "fc", "cout": _channels(rng), **_layer_quant(rng, form),
                                   **_affine(rng, form), "out": bool(rng.random() < 0.5),
                                   "mm": str(rng.choice(["gemm", "gemm", "matmul", "gemm_t", "alpha"]))})
    spec["in_bits"] = int(rng.choice([8, 8, 8, 4, 2, 1])) if form == "qonnx" else 8  # 1: bipolar (sign)
    if form == "qonnx" and rng.random() < 0.25:  # unsigned / narrow / zero-point input quantizers
        spec["in_q"] = {"signed": int(rng.random() < 0.5), "narrow": int(rng.random() < 0.3),
                        "zero": float(rng.choice([0.0, 1.0, -2.0, 0.5]))}
    if spec["head"] and rng.random() < 0.2:
        spec["softmax"] = True
    spec["classes"] = int(rng.integers(2, 12))
    spec["last_out"] = True
    _fit_budget(spec)
    return spec


def _random_block4(rng, form, cin):
    r = rng.random()
    if r < 0.55:
        return {"op": "conv", **_conv_params(rng, cin), **_layer_quant(rng, form), **_affine(rng, form),
                "out": bool(rng.random() < 0.5)}
    if r < 0.72:
        k = int(rng.choice([1, 2, 2, 3, 3]))
        s = int(rng.choice([1, 2, 2, 3]))
        p = [int(rng.integers(0, k)) for _ in range(4)] if rng.random() < 0.4 else [0, 0, 0, 0]
        kind = str(rng.choice(["max", "max", "avg"]))
        blk = {"op": "pool", "kind": kind, "k": [k, k], "stride": [s, s], "pads": p, "out": bool(rng.random() < 0.5),
               "ceil": int(rng.random() < 0.25), "cip": int(rng.random() < 0.3)}
        if kind == "avg":
            blk.update(_layer_quant(rng, form))
        return blk
    if r < 0.86:
        k = int(rng.choice([1, 3, 3, 5]))
        return {"op": "res", "k": [k, k], **_layer_quant(rng, form), **_affine(rng, form),
                "a2": _layer_quant(rng, form)["a"], "out": bool(rng.random() < 0.5)}
    p = _conv_params(rng, cin)
    p["group"] = 1
    return {"op": "concat", "k": p["k"], "stride": p["stride"], "pads": p["pads"],
            "couts": [_channels(rng) // 2 + 1, _channels(rng) // 2 + 1],
            "q": [_layer_quant(rng, form), _layer_quant(rng, form)], **_affine(rng, form),
            "same_q": bool(rng.random() < 0.5), "out": bool(rng.random() < 0.5)}


def _fit_budget(spec):
    """Halve the largest channel counts until the MACs per sample fit the budget."""
    for _ in range(40):
        try:
            macs = shapes(spec)[1]
        except InvalidSpec:
            return
        if macs <= MAC_BUDGET:
            return
        best = None
        for b in spec["blocks"]:
            for key in ("cout",):
                if key in b and b[key] > 1 and (best is None or b[key] > best[0][best[1]]):
                    best = (b, key)
        if best is None or best[0][best[1]] <= 1:
            if len(spec["input"]) == 3 and max(spec["input"][1:]) > 1:
                spec["input"][1] = max(1, spec["input"][1] // 2)
                spec["input"][2] = max(1, spec["input"][2] // 2)
                continue
            return
        b, key = best
        if b.get("group", 1) > 1 and b["group"] == b[key]:
            b["group"] = 1
        b[key] = max(1, b[key] // 2)
        if b.get("group", 1) > 1:
            b[key] = max(b["group"], b[key] - b[key] % b["group"])


# ------------------------------------------------------------------------------ shapes
def _out_size(n, k, s, p0, p1, ceil=False):
    span = n + p0 + p1 - k
    if span < 0:
        raise InvalidSpec(f"kernel {k} larger than padded input {n + p0 + p1}")
    return (-(-span // s) if ceil else span // s) + 1


def _conv_shape(shape, b, cout, group):
    c, h, w = shape
    if c % group or cout % group:
        raise InvalidSpec(f"group {group} does not divide {c} and {cout}")
    kh, kw = b["k"]
    if max(b["pads"][0], b["pads"][2]) >= kh or max(b["pads"][1], b["pads"][3]) >= kw:
        raise InvalidSpec("pads must be smaller than the kernel")
    oh = _out_size(h, kh, b["stride"][0], b["pads"][0], b["pads"][2])
    ow = _out_size(w, kw, b["stride"][1], b["pads"][1], b["pads"][3])
    macs = cout * oh * ow * (c // group) * kh * kw
    return (cout, oh, ow), macs


def shapes(spec):
    """Per block output shape and the total MACs; raises InvalidSpec."""
    shape = tuple(spec["input"])
    if any(d < 1 for d in shape):
        raise InvalidSpec("empty input")
    out, macs = [], 0
    for b in spec["blocks"]:
        op = b["op"]
        if op in ("conv", "res", "concat", "pool", "gpool") and len(shape) != 3:
            raise InvalidSpec(f"{op} needs a 4-D input")
        if op == "conv":
            shape, m = _conv_shape(shape, b, b["cout"], b["group"])
        elif op == "res":
            k = b["k"][0]
            if k % 2 == 0:
                raise InvalidSpec("residual conv kernel must be odd")
            b["pads"], b["stride"] = [k // 2] * 4, [1, 1]
            shape, m = _conv_shape(shape, b, shape[0], 1)
        elif op == "concat":
            s1, m1 = _conv_shape(shape, b, b["couts"][0], 1)
            s2, m2 = _conv_shape(shape, b, b["couts"][1], 1)
            shape, m = (s1[0] + s2[0],) + s1[1:], m1 + m2
        elif op == "pool":
            k, s, p = b["k"], b["stride"], b["pads"]
            if max(p) >= k[0]:
                raise InvalidSpec("pool pads must be smaller than the kernel")
            ceil = bool(b.get("ceil"))
            oh, ow = _out_size(shape[1], k[0], s[0], p[0], p[2], ceil), _out_size(shape[2], k[1], s[1], p[1], p[3], ceil)
            if ceil and ((oh - 1) * s[0] >= shape[1] + p[0] or (ow - 1) * s[1] >= shape[2] + p[1]):
                raise InvalidSpec("ceil_mode window starting in the end padding")
            shape = (shape[0], oh, ow)
            m = int(np.prod(shape)) * k[0] * k[1]
        elif op == "gpool":
            m, shape = int(np.prod(shape)), (shape[0],)
        elif op == "flatten":
            m, shape = 0, (int(np.prod(shape)),)
        elif op == "fc":
            if len(shape) != 1:
                raise InvalidSpec("fc needs a 2-D input")
            m, shape = shape[0] * b["cout"], (b["cout"],)
        else:
            raise InvalidSpec(f"unknown block {op}")
        macs += m
        out.append(shape)
    if spec.get("head"):
        macs += int(np.prod(shape)) * spec.get("classes", 10)
    return out, macs


# ------------------------------------------------------------------------------ building
class _G:
    """Node/initializer collector with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}{self.n}"

    def const(self, value, base="c", dtype=np.float32):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def tensor(self, value, etype, base="q"):
        name = self.name(base)
        v = np.asarray(value)
        self.inits.append(helper.make_tensor(name, etype, list(v.shape), v.reshape(-1).astype(np.int64).tolist()))
        return name

    def node(self, op, inputs, domain="", **attrs):
        out = self.name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), domain=domain, **attrs))
        return out


# weight kind -> (levels lo, hi, Quant parameters) ; the float weight is (code [+0.5]) * scale
def _w_levels(kind):
    return {"pm1": (-1, 1), "q1": (-1, 1), "ter": (-1, 1), "s2": (-2, 1), "u2z": (-1.5, 1.5), "s3": (-3, 3),
            "k3": (-3.5, 3.5), "s4": (-8, 7), "k4": (-7.5, 7.5), "i8": (-127, 127),
            "i4": (-8, 7), "i2": (-2, 1)}[kind]


# activation kind -> (max |code|, min code) for the accumulator bound
def _a_range(kind):
    return {"pm1": (1, -1), "u1": (1, 0), "ter": (1, -1), "u2": (3, 0), "s2": (2, -2), "u4": (15, 0), "s4": (8, -8),
            "u8": (255, 0), "s8": (128, -128), "mt1": (1, 0), "mt2": (3, 0), "mt4": (15, 0), "in8": (128, -128),
            "in4": (8, -8), "in2": (2, -2), "u8r": (255, 0)}[kind]


class _Builder:
    def __init__(self, spec, calib):
        self.spec, self.calib = spec, calib
        self.g = _G()
        self.form = spec["form"]
        self.bn_inputs = []   # (block index, tensor name) of each BatchNorm input, in order
        self.mt_inputs = []   # (key, tensor name, steps)
        self.exact, self.approx = [], []
        self.rank2 = set()

    def rng(self, i, part=0):
        return np.random.default_rng([self.spec["seed"], 7919, i + 1, part])

    # ---- weights
    def weight(self, rng, shape, kind, xmax):
        """A quantized weight of ``shape`` (first axis = output channels), its codes bounded so
        that sum |w| * xmax <= ACC_LIMIT per output channel; returns (tensor name, wmax code)."""
        lo, hi = _w_levels(kind)
        k = int(np.prod(shape[1:]))
        lim = max(1, min(int(max(abs(lo), abs(hi))), ACC_LIMIT // max(1, k * xmax)))
        codes = rng.integers(-lim, lim + 1, shape).astype(np.float64)
        if kind in ("u2z", "k3", "k4"):  # half-integer grids: codes +- 0.5
            codes = np.clip(codes + np.where(codes >= 0, 0.5, -0.5), lo, hi)
        if kind in ("pm1", "q1"):
            codes = np.where(codes >= 0, 1.0, -1.0) * rng.uniform(0.1, 1.0, shape)
        elif kind not in ("i4", "i2"):
            tie = rng.random(shape) < 0.1  # rounding ties of the weight quantizer
            codes = np.where(tie & (codes < hi) & (codes > lo), codes + 0.5 * np.sign(rng.random(shape) - 0.5), codes)
        prune = self._prune
        if prune is not None:
            codes[prune] = 0.0
            if kind in ("pm1", "q1", "u2z", "k3", "k4"):  # these grids have no zero: prune via BN gamma instead
                codes[prune] = 1.0 if kind in ("pm1", "q1") else 0.5
        cshape = (shape[0],) + (1,) * (len(shape) - 1)
        scale = (2.0 ** rng.integers(-4, 0, cshape)) if rng.random() < 0.7 else np.float32(2.0 ** -int(rng.integers(1, 4)))
        scale = np.asarray(scale, np.float32)
        if self.form == "qdq":
            etype = {"i8": TensorProto.INT8, "i4": TensorProto.INT4, "i2": TensorProto.INT8}[kind]
            q = np.round(codes).astype(np.int64)  # QDQ weights are integers already
            s = scale.reshape(-1) if scale.ndim else scale
            qn = self.g.tensor(q, etype, "wq")
            zp = self.g.tensor(np.zeros(s.shape, np.int64), etype, "wz")
            return self.g.node("DequantizeLinear", [qn, self.g.const(s, "ws"), zp], axis=0), scale
        w = self.g.const(codes * scale, "w")
        if kind == "pm1":
            return self.g.node("BipolarQuant", [w, self.g.const(scale)], Q), scale
        bits, signed, narrow, zero = {"q1": (1, 1, 0, 0.0), "ter": (2, 1, 1, 0.0), "s2": (2, 1, 0, 0.0),
                                      "u2z": (2, 0, 0, 1.5), "s3": (3, 1, 1, 0.0), "k3": (3, 0, 0, 3.5),
                                      "s4": (4, 1, 0, 0.0), "k4": (4, 0, 0, 7.5), "i8": (8, 1, 1, 0.0)}[kind]
        return self.quant(w, scale, bits, signed, narrow, zero), scale

    def quant(self, x, scale, bits, signed=1, narrow=0, zero=0.0, rounding="ROUND"):
        return self.g.node("Quant", [x, self.g.const(scale), self.g.const(zero), self.g.const(float(bits))], Q,
                           signed=signed, narrow=narrow, rounding_mode=rounding)

    # ---- activations
    def act(self, y, c, kind, rng, key, rounding="ROUND", rank=4, pc=False):
        """Quantize ``y`` (c channels) with activation ``kind``; returns (name, max |code|)."""
        if self.form == "qdq":
            return self.qdq(y, kind, rng)
        s = np.float32(2.0 ** -int(rng.integers(0, 4)))
        if pc and kind != "pm1" and not kind.startswith("mt"):  # one scale per channel
            s = (2.0 ** -rng.integers(0, 4, (1, c) + (1,) * (rank - 2))).astype(np.float32)
        if kind == "pm1":
            return self.g.node("BipolarQuant", [y, self.g.const(s)], Q), 1
        if kind.startswith("mt"):
            steps = {"mt1": 1, "mt2": 3, "mt4": 15}[kind]
            t = self.calib.get(key)
            if t is None or np.shape(t) != (c, steps):
                t = np.sort(rng.integers(-8, 9, (c, steps)) * 0.25, axis=1)
            self.mt_inputs.append((key, y, steps))
            dt = {1: "BINARY", 3: "UINT2", 15: "UINT4"}[steps]
            return self.g.node("MultiThreshold", [y, self.g.const(np.asarray(t, np.float32))], Q,
                               out_scale=float(2.0 ** -int(rng.integers(0, 3))), out_bias=float(rng.choice([0.0, 0.0, -1.0])),
                               out_dtype=dt), steps
        relu = kind.startswith("u") and rng.random() < 0.5
        if relu:
            y = self.g.node("Relu", [y])
        bits, signed, narrow = {"u1": (1, 0, 0), "ter": (2, 1, 1), "u2": (2, 0, 0), "s2": (2, 1, 0), "u4": (4, 0, 0),
                                "s4": (4, 1, 0), "u8": (8, 0, 0), "s8": (8, 1, 0)}[kind]
        return self.quant(y, s, bits, signed, narrow, 0.0, rounding), _a_range(kind)[0]

    def qdq(self, y, kind, rng):
        s = np.float32(2.0 ** -int(rng.integers(-1, 5)))
        if kind == "u8r":
            y = self.g.node("Relu", [y])
            kind = "u8"
        etype, lo, hi = {"u8": (TensorProto.UINT8, 0, 255), "s8": (TensorProto.INT8, -128, 127),
                         "u4": (TensorProto.UINT4, 0, 15), "s4": (TensorProto.INT4, -8, 7),
                         "in8": (TensorProto.INT8, -128, 127)}[kind]
        zp = int(rng.integers(lo, hi + 1)) if rng.random() < 0.5 else (0 if lo < 0 else int(rng.integers(0, (hi + 1) // 2)))
        z = self.g.tensor(np.asarray(zp), etype, "z")
        sc = self.g.const(s, "s")
        q = self.g.node("QuantizeLinear", [y, sc, z])
        return self.g.node("DequantizeLinear", [q, sc, z]), max(abs(lo - zp), abs(hi - zp))

    def affine(self, y, c, b, i, rng, rank):
        """Bias or BatchNorm between the accumulator and the activation quantizer."""
        if b.get("bn"):
            shape = (c,)
            g = 2.0 ** rng.integers(-2, 3, shape) * rng.choice([-1.0, 1.0], shape)
            if b.get("gamma0"):
                g[rng.random(shape) < 0.3] = 0.0
            mean = self.calib.get(f"bn{len(self.bn_inputs)}")
            if mean is None or np.shape(mean) != shape:
                mean = rng.integers(-8, 9, shape) * 0.25
            var = 4.0 ** rng.integers(-1, 3, shape)
            beta = rng.integers(-4, 5, shape) * 0.125
            self.bn_inputs.append(y)
            y = self.g.node("BatchNormalization", [y, self.g.const(g), self.g.const(beta), self.g.const(mean),
                                                   self.g.const(var)], epsilon=0.0)
        if b.get("muladd"):  # a per-channel scale (signs, zeros) and shift, as exported masks/scales are
            cs = (c,) + (1,) * (rank - 2)
            m = 2.0 ** rng.integers(-2, 2, cs) * rng.choice([-1.0, 1.0, 1.0], cs)
            m[rng.random(cs) < 0.1] = 0.0
            y = self.g.node("Mul", [y, self.g.const(m)])
            y = self.g.node("Add", [y, self.g.const(rng.integers(-4, 5, cs) * 0.25)])
        return y

    def bias(self, rng, c, b):
        if not b.get("bias"):
            return []
        return [self.g.const(rng.integers(-16, 17, c) * 0.125, "b")]

    # ---- blocks
    def conv(self, x, shape, xmax, b, i, cout, group, w_kind, a_kind, rounding, part=0, expose=True):
        rng = self.rng(i, part)
        cin = shape[0]
        self._prune = (rng.random(cout) < b.get("prune", 0)) if b.get("prune") else None
        w, _ = self.weight(rng, (cout, cin // group, *b["k"]), w_kind, xmax)
        y = self.g.node("Conv", [x, w] + self.bias(rng, cout, b), kernel_shape=list(b["k"]), strides=list(b["stride"]),
                        pads=list(b["pads"]), group=group)
        y = self.affine(y, cout, b, i, rng, 4)
        y, amax = self.act(y, cout, a_kind, rng, f"mt{i}_{part}", rounding, pc=b.get("pc_scale", False))
        if expose and b.get("out"):
            self.exact.append(y)
        return y, amax

    def build(self):
        spec = self.spec
        g = self.g
        out_shapes, _ = shapes(spec)
        rng = self.rng(-1)
        shape = tuple(spec["input"])
        self._prune = None
        if self.form == "qdq":
            x, xmax = self.qdq("x", "in8", rng)
        else:
            bits = spec.get("in_bits", 8)
            iq = spec.get("in_q", {"signed": 1, "narrow": 0, "zero": 0.0})
            if bits == 1:
                iq = {**iq, "signed": 1, "zero": 0.0}
            x = self.quant("x", np.float32(2.0 ** -4), bits, iq["signed"], iq["narrow"], iq["zero"])
            xmax = 2 ** bits + int(abs(iq["zero"])) + 1
        last = x
        for i, b in enumerate(spec["blocks"]):
            op = b["op"]
            q = b
            rnd = b.get("round", "ROUND")
            if op == "conv":
                x, xmax = self.conv(x, shape, xmax, b, i, b["cout"], b["group"], q["w"], q["a"], rnd)
            elif op == "res":
                br, bmax = self.conv(x, shape, xmax, b, i, shape[0], 1, q["w"], q["a"], rnd, expose=False)
                s = self.g.node("Add", [br, x])
                x, xmax = self.act(s, shape[0], b["a2"], self.rng(i, 9), f"mt{i}_res")
                if b.get("out"):
                    self.exact.append(x)
            elif op == "concat":
                parts = []
                m = 0
                for j in range(2):
                    qj = b["q"][0] if b.get("same_q") else b["q"][j]
                    br, bm = self.conv(x, shape, xmax, b, i, b["couts"][j], 1, qj["w"], qj["a"],
                                       qj.get("round", "ROUND"), part=j, expose=False)
                    parts.append(br)
                    m = max(m, bm)
                x = self.g.node("Concat", parts, axis=1)
                xmax = m
                if b.get("out"):
                    self.exact.append(x)
            elif op == "pool":
                attrs = dict(kernel_shape=list(b["k"]), strides=list(b["stride"]), pads=list(b["pads"]))
                if b.get("ceil"):
                    attrs["ceil_mode"] = 1
                if b["kind"] == "max":
                    x = self.g.node("MaxPool", [x], **attrs)
                else:
                    x = self.g.node("AveragePool", [x], count_include_pad=int(b.get("cip", 0)), **attrs)
                    x, xmax = self.act(x, shape[0], b["a"], self.rng(i, 3), f"mt{i}_avg", b.get("round", "ROUND"))
                if b.get("out"):
                    self.exact.append(x)
            elif op == "gpool":
                x = self.g.node("GlobalMaxPool" if b["kind"] == "max" else "GlobalAveragePool", [x])
                if b["kind"] == "avg":
                    x, xmax = self.act(x, shape[0], "s8" if self.form == "qonnx" else "s8", self.rng(i, 3), f"mt{i}_g")
                x = self.g.node("Flatten", [x], axis=1)
                if b.get("out"):
                    self.exact.append(x)
            elif op == "flatten":
                x = self.g.node("Flatten", [x], axis=1)
            elif op == "fc":
                rng = self.rng(i)
                self._prune = (rng.random(b["cout"]) < b.get("prune", 0)) if b.get("prune") else None
                w, _ = self.weight(rng, (b["cout"], shape[0]), q["w"], xmax)
                mm = b.get("mm", "gemm")
                if mm == "matmul":  # MatMul by the transposed quantized weight, bias as an Add
                    y = self.g.node("MatMul", [x, self.g.node("Transpose", [w], perm=[1, 0])])
                    bias = self.bias(rng, b["cout"], b)
                    if bias:
                        y = self.g.node("Add", [y, bias[0]])
                elif mm == "gemm_t":
                    y = self.g.node("Gemm", [x, self.g.node("Transpose", [w], perm=[1, 0])] + self.bias(rng, b["cout"], b))
                elif mm == "alpha":
                    y = self.g.node("Gemm", [x, w] + self.bias(rng, b["cout"], b), transB=1, alpha=0.5, beta=2.0)
                else:
                    y = self.g.node("Gemm", [x, w] + self.bias(rng, b["cout"], b), transB=1)
                y = self.affine(y, b["cout"], b, i, rng, 2)
                x, xmax = self.act(y, b["cout"], q["a"], rng, f"mt{i}_0", rnd, rank=2, pc=b.get("pc_scale", False))
                if b.get("out"):
                    self.exact.append(x)
            shape = out_shapes[i]
            last = x
            if len(shape) == 1:
                self.rank2.add(x)
        self._prune = None
        if spec.get("last_out") and last != "x" and last not in self.exact and spec["blocks"]:
            self.exact.append(last)
        if spec.get("head") and len(shape) == 1:
            rng = self.rng(1000)
            w, _ = self.weight(rng, (spec["classes"], shape[0]), "i8", xmax)
            logits = self.g.node("Gemm", [x, w, self.g.const(rng.integers(-8, 9, spec["classes"]) * 0.25, "b")],
                                 transB=1)
            if spec.get("softmax"):
                self.approx.append(logits)
                logits = self.g.node("Softmax", [logits], axis=1)
            self.approx.append(logits)
        if not self.exact and not self.approx:
            self.exact.append(x)
        rank = len(spec["input"]) + 1
        outs = []
        for o in dict.fromkeys(self.exact + self.approx):
            outs.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
        graph = helper.make_graph(g.nodes, f"fuzz{spec['seed']}",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *spec["input"]])],
                                  outs, g.inits)
        del rank
        if self.form == "qdq":
            opset = spec.get("opset", 21)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
        else:
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(Q, 1)],
                                      ir_version=8)
        # output shapes by inference, so every consumer (qcc, onnxruntime) sees typed outputs
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for o in model.graph.output:
            v = known.get(o.name)
            if v is not None and v.type.tensor_type.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") and j else "N" for j, d in enumerate(v.type.tensor_type.shape.dim)]
                o.CopyFrom(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, dims))
            else:
                r = 2 if o.name in self.approx or o.name in self.rank2 else len(spec["input"]) + 1
                o.CopyFrom(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, ["N"] + [f"{o.name}_d{j}" for j in range(1, r)]))
        return model


def feeds_for(spec, n):
    rng = np.random.default_rng([spec["seed"], 4242])
    shape = (n, *spec["input"])
    # multiples of 2**-5 in [-8, 8): ties of the 2**-4 input quantizer, and values beyond its range
    x = rng.integers(-256, 256, shape) * 2.0 ** -5
    if spec["form"] == "qdq":
        x = x * 2.0 ** int(rng.integers(0, 3))
    return {"x": x.astype(np.float32)}


def _uninit_model(spec, calib):
    b = _Builder(spec, calib)
    return b, b.build()


def build(spec: dict, samples: int = 24) -> Case:
    """The model of ``spec``, with BatchNorm means and MultiThreshold thresholds calibrated on
    the fed inputs (layer by layer, so every layer sees ties), its feeds and compared outputs."""
    spec = copy.deepcopy(spec)
    shapes(spec)  # raises InvalidSpec
    feeds = feeds_for(spec, samples)
    calib = {k: np.asarray(v, np.float32) for k, v in spec.get("calib", {}).items()}
    if "calib" not in spec:
        b, model = _uninit_model(spec, calib)
        # calibrate in graph order: each pass fixes one more quantity on the values it really sees
        order = _graph_order(b, model)
        for key in order:
            b, model = _uninit_model(spec, calib)
            name = dict([(f"bn{j}", t) for j, t in enumerate(b.bn_inputs)] + [(k, t) for k, t, _ in b.mt_inputs])[key]
            v = _probe(model, name, feeds)
            v = np.moveaxis(v, 1, -1).reshape(-1, v.shape[1])  # (values, C)
            srt = np.sort(v, axis=0)
            if key.startswith("bn"):
                calib[key] = srt[len(srt) // 2].astype(np.float32)
            else:
                steps = next(s for k, _, s in b.mt_inputs if k == key)
                idx = np.linspace(0, len(srt) - 1, steps + 2)[1:-1].astype(int)
                calib[key] = srt[idx].T.astype(np.float32).copy()
        spec["calib"] = {k: v.tolist() for k, v in calib.items()}
    b, model = _uninit_model(spec, calib)
    return Case(spec, model, feeds, list(dict.fromkeys(b.exact)), list(dict.fromkeys(b.approx)))


def _graph_order(b, model):
    where = {}
    for j, t in enumerate(b.bn_inputs):
        where[t] = f"bn{j}"
    for k, t, _ in b.mt_inputs:
        where[t] = k
    order = []
    for n in model.graph.node:
        for o in n.output:
            if o in where:
                order.append(where[o])
    return order


def _probe(model, name, feeds):
    from qcc.frontend.reference import run_reference
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return run_reference(m, feeds)[0]


def describe(spec: dict) -> str:
    """One line per block, for reports and regression files."""
    lines = [f"seed {spec['seed']} form {spec['form']} input {spec['input']} in_bits {spec.get('in_bits', 8)}"]
    for b in spec["blocks"]:
        lines.append("  " + json.dumps({k: v for k, v in b.items()}, sort_keys=True))
    if spec.get("head"):
        lines.append(f"  head gemm -> {spec['classes']} float logits")
    return "\n".join(lines)


def spec_json(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)
