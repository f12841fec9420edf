"""Evaluate everything that depends only on constants, keeping quantized weights as levels.

A quantizer applied to a constant (a weight quantized inside the graph, as Brevitas
exports them) becomes a constant of integer levels with its :class:`QuantSpec`, followed
by a ``Dequant`` node, so later passes can compute on the levels while every other
reader still sees the same float values: ``Dequant(q) = scale * q`` equals the
quantizer's output exactly (both are ``q * scale`` in float32). Only grids of at most
8 bits are kept as levels (32-bit bias quantizers fold to plain floats).

Layout-only ops (Transpose, Reshape, Flatten) on such levels move below the ``Dequant``
when the scale is one value for the whole tensor, or is per channel and the op is a
Transpose (the scale is transposed with the levels); any other consumer gets the decoded
float constant.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qcc.ir import interp
from qcc.ir.graph import Graph, Node
from qcc.passes.base import QUANTIZERS, PassResult, result

LAYOUT_OPS = ("Transpose", "Reshape", "Flatten")
MAX_LEVEL_BITS = 8


def fold_constants(graph: Graph) -> PassResult:
    tensors = dict(graph.tensors)
    levels: dict[str, str] = {}  # value tensor -> constant of levels it dequantizes
    nodes: list[Node] = []

    def const(name: str):
        if name in levels:
            return tensors[levels[name]].quant.decode(tensors[levels[name]].data)
        return tensors[name].data

    for n in graph.nodes:
        ins = [i for i in n.inputs if i]
        if not ins or not all(tensors[i].is_const or i in levels for i in ins):
            nodes.append(n)
            continue
        out = n.outputs[0]
        spec = n.attrs.spec() if n.op in QUANTIZERS else None
        if spec is not None and spec.bits <= MAX_LEVEL_BITS and n.inputs[0] not in levels:
            q = interp.run_node(n.with_(attrs=dataclasses.replace(n.attrs, codes=True)), {n.inputs[0]: const(n.inputs[0])})[0]
            _levels(tensors, nodes, levels, out, q, spec, n.name)
        elif n.op in LAYOUT_OPS and n.inputs[0] in levels and (spec := _moved_spec(n, tensors[levels[n.inputs[0]]])):
            q = interp.run_node(n, {n.inputs[0]: tensors[levels[n.inputs[0]]].data})[0]
            _levels(tensors, nodes, levels, out, q, spec, n.name)
        else:
            value = interp.run_node(n, {i: const(i) for i in ins})[0]
            tensors[out] = tensors[out].with_(data=value, shape=value.shape)
    return result(graph, graph.rewrite(_dequants_first(nodes, levels), tensors))


def _moved_spec(n: Node, src):
    """The grid after a layout op: a per-tensor scale is unchanged; a broadcastable
    per-channel scale follows a Transpose; anything else is decoded instead (None)."""
    spec = src.quant
    if not spec.per_channel:
        return spec
    if n.op == "Transpose" and spec.scale.ndim == src.data.ndim:
        return spec.with_scale(np.transpose(spec.scale, n.attrs.perm))
    return None


def _levels(tensors, nodes, levels, out, q, spec, name) -> None:
    qname = out + "__levels"
    tensors[qname] = tensors[out].with_(name=qname, dtype="i32", data=q.astype(np.int32), quant=spec, shape=q.shape)
    levels[out] = qname
    nodes.append(Node("Dequant", (qname,), (out,), spec, name))


def _dequants_first(nodes: list[Node], levels) -> list[Node]:
    """Dequant nodes of constants have no computed inputs: list them first (topological)."""
    head = [n for n in nodes if n.op == "Dequant" and n.outputs[0] in levels]
    return head + [n for n in nodes if n not in head]
