"""Gemm as convolution, so that one layer kind serves both.

``Gemm(Flatten(x), W) + b`` with ``x`` of shape (N, C, H, W) and ``W`` of shape
(M, C*H*W) equals ``Conv(x, W.reshape(M, C, H, W)) + b`` with a kernel covering the whole
input and no padding: ONNX Flatten orders features as (C, H, W) in C order, which is the
order of the conv weight's last three axes. The (N, M, 1, 1) result is flattened back.
A Gemm on a plain 2-D input is a 1x1 conv on (N, K, 1, 1).

The weight must be a constant (plain or levels behind a ``Dequant``); a per-output-channel
scale of shape (M, 1) becomes (M, 1, 1, 1). Gemms with a computed weight are left alone.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.graph import Graph, Node
from qcc.ir.ops import ConvAttrs, FlattenAttrs, ReshapeAttrs
from qcc.passes.base import PassResult, result


def gemm_to_conv(graph: Graph) -> PassResult:
    tensors = dict(graph.tensors)
    nodes: list[Node] = []
    taken: set[str] = set()
    for n in graph.nodes:
        if n.op != "Gemm" or not _const_weight(graph, n.inputs[1]):
            nodes.append(n)
            continue
        x, w = n.inputs[0], n.inputs[1]
        m, k = tensors[w].shape
        src = graph.producer(x)
        if src is not None and src.op == "Flatten" and src.attrs.axis == 1 and len(tensors[src.inputs[0]].shape) == 4:
            x4 = src.inputs[0]
        else:
            x4 = graph.fresh_name(x + "_4d", taken)
            nb = tensors[x].shape[0]
            tensors[x4] = tensors[x].with_(name=x4, shape=(nb, k, 1, 1), layout="NCHW")
            nodes.append(Node("Reshape", (x,), (x4,), ReshapeAttrs((nb, k, 1, 1)), n.name + "_to4d"))
        _, c, h, wd = tensors[x4].shape
        w4 = _reshape_weight(graph, tensors, nodes, w, (m, c, h, wd), taken, n.name)
        y4 = graph.fresh_name(n.outputs[0] + "_4d", taken)
        tensors[y4] = tensors[n.outputs[0]].with_(name=y4, shape=(tensors[x4].shape[0], m, 1, 1), layout="NCHW")
        bias = (n.inputs[2],) if len(n.inputs) > 2 and n.inputs[2] else ()
        if bias:
            b = graph.const(bias[0])
            bname = graph.fresh_name(bias[0] + "_vec", taken)
            tensors[bname] = tensors[bias[0]].with_(name=bname, data=np.broadcast_to(b, (1, m)).reshape(m).copy(), shape=(m,))
            bias = (bname,)
        nodes.append(Node("Conv", (x4, w4) + bias, (y4,), ConvAttrs(kernel=(h, wd)), n.name))
        nodes.append(Node("Flatten", (y4,), n.outputs, FlattenAttrs(1), n.name + "_flat"))
    return result(graph, graph.rewrite(nodes, tensors))


def _const_weight(graph: Graph, w: str) -> bool:
    p = graph.producer(w)
    return graph.tensors[w].is_const or (p is not None and p.op == "Dequant" and graph.tensors[p.inputs[0]].is_const)


def _reshape_weight(graph, tensors, nodes, w, shape, taken, name) -> str:
    out = graph.fresh_name(w + "_conv", taken)
    p = graph.producer(w)
    if graph.tensors[w].is_const:
        tensors[out] = tensors[w].with_(name=out, data=graph.const(w).reshape(shape), shape=shape)
        return out
    lv = tensors[p.inputs[0]]
    spec = lv.quant
    scale = spec.scale
    if scale.size > 1 and scale.shape != (shape[0], 1):
        full = np.broadcast_to(scale, lv.data.shape)
        if not np.all(full == full[:, :1]):  # scales along K (the input features): a float weight
            tensors[out] = tensors[w].with_(name=out, data=spec.decode(lv.data).reshape(shape), shape=shape, quant=None)
            return out
        scale = full[:, :1]
    scale = scale.reshape(scale.shape + (1,) * (4 - scale.ndim)) if scale.ndim else scale
    qname = out + "__levels"
    tensors[qname] = lv.with_(name=qname, data=lv.data.reshape(shape), shape=shape, quant=spec.with_scale(scale))
    tensors[out] = tensors[w].with_(name=out, shape=shape)
    nodes.insert(0, Node("Dequant", (qname,), (out,), tensors[qname].quant, p.name))
    return out
