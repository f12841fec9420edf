"""Convolutions over quantized operands become exact integer accumulations.

With activations ``x = s_x * q_x`` (one scale for the tensor) and weights
``w[c] = s_w[c] * q_w[c]`` (one scale per output channel or one for all)::

    conv(x, w)[c] = s_x * s_w[c] * sum(q_x * q_w[c]) = m[c] * acc[c]

so ``Conv`` becomes ``IntConv`` on the levels, whose result ``acc`` is an exact integer,
followed by ``Mul(acc, m)`` (and the bias ``Add``). Zero padding stays exact: a padded
tap is the level 0, whatever the grid (a bipolar tensor pads with 0, not -1 or +1).

The activation's levels are found by walking up from the conv through ops that commute
with the grid map ``q -> s * q`` for ``s > 0`` (max pooling, reshapes, flatten) to a
quantizer with a known grid; that quantizer and the walk are rewritten to carry levels
(``codes``), and readers that still need real values get a ``Dequant``.

Left alone: a float operand, a per-channel activation scale (it cannot leave the sum),
or an activation scale that is not positive.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qcc.ir.graph import Graph, Node, Tensor
from qcc.passes.base import QUANTIZERS, PassResult, result

LEVEL_PRESERVING = ("Flatten", "Reshape", "Transpose")


def integer_conv(graph: Graph) -> PassResult:
    tensors = dict(graph.tensors)
    replace: dict[str, list[Node]] = {}  # node name -> nodes emitted instead
    coded: dict[str, str] = {}  # value tensor -> its levels twin
    for n in graph.nodes:
        if n.op != "Conv":
            continue
        w_levels = _weight_levels(graph, n.inputs[1])
        path = _activation_path(graph, n.inputs[0])
        if w_levels is None or path is None:
            continue
        q_node = path[0]
        spec_x = q_node.attrs.spec()
        for p in path:  # the quantizer and the walk now carry levels
            out = p.outputs[0]
            if out in coded:
                continue
            twin = out + "__levels"
            coded[out] = twin
            tensors[twin] = tensors[out].with_(name=twin, dtype="i32", quant=spec_x)
            attrs = dataclasses.replace(p.attrs, codes=True) if p is q_node else p.attrs
            ins = p.inputs if p is q_node else (coded[p.inputs[0]],) + p.inputs[1:]
            replace.setdefault(p.name + out, []).append(Node(p.op, ins, (twin,), attrs, p.name))
        wq = tensors[w_levels]
        acc = n.outputs[0] + "__acc"
        co = wq.shape[0]
        tensors[acc] = tensors[n.outputs[0]].with_(name=acc, dtype="i32")
        m = (spec_x.scale.reshape(-1)[0] * np.broadcast_to(wq.quant.scale.reshape(-1), (co,))).astype(np.float32)
        mname = acc + "_scale"
        tensors[mname] = Tensor(mname, (1, co, 1, 1), data=m.reshape(1, co, 1, 1))
        new = [Node("IntConv", (coded[n.inputs[0]], w_levels), (acc,), n.attrs, n.name)]
        if len(n.inputs) > 2 and n.inputs[2]:
            scaled = n.outputs[0] + "__scaled"
            tensors[scaled] = tensors[n.outputs[0]].with_(name=scaled)
            bname = scaled + "_bias"
            tensors[bname] = Tensor(bname, (1, co, 1, 1), data=graph.const(n.inputs[2]).reshape(1, co, 1, 1).astype(np.float32))
            new += [Node("Mul", (acc, mname), (scaled,), None, n.name + "_scale"),
                    Node("Add", (scaled, bname), n.outputs, None, n.name + "_bias")]
        else:
            new.append(Node("Mul", (acc, mname), n.outputs, None, n.name + "_scale"))
        replace[n.name + n.outputs[0]] = new

    if not replace:
        return PassResult(graph, False)
    nodes: list[Node] = []
    for n in graph.nodes:
        key = n.name + n.outputs[0]
        if key in replace:
            nodes.extend(replace[key])
            if n.op != "Conv":  # the value output may still have float readers
                out = n.outputs[0]
                nodes.append(Node("Dequant", (coded[out],), (out,), tensors[coded[out]].quant, n.name + "_dequant"))
        else:
            nodes.append(n)
    return result(graph, graph.rewrite(nodes, tensors))


def _weight_levels(graph: Graph, w: str) -> str | None:
    p = graph.producer(w)
    if p is None or p.op != "Dequant" or not graph.tensors[p.inputs[0]].is_const:
        return None
    spec = graph.tensors[p.inputs[0]].quant
    scale = spec.scale
    if spec.per_channel and scale.reshape(-1).size != graph.tensors[w].shape[0]:
        return None
    if spec.per_channel and scale.shape[0] != scale.size:  # must vary along axis 0 only
        return None
    return p.inputs[0]


def _activation_path(graph: Graph, x: str) -> list[Node] | None:
    """Nodes from the quantizer to ``x`` (quantizer first), if ``x`` is on a known grid."""
    path: list[Node] = []
    while True:
        p = graph.producer(x)
        if p is None:
            return None
        path.insert(0, p)
        if p.op in QUANTIZERS:
            spec = p.attrs.spec()
            if spec is None or spec.per_channel or not float(spec.scale.reshape(-1)[0]) > 0:
                return None
            return path
        if not (p.op in LEVEL_PRESERVING or (p.op == "Pool" and p.attrs.kind == "max")):
            return None
        x = p.inputs[0]
