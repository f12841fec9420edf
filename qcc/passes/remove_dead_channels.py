"""Channels that cannot change are removed for real.

After ``fold_thresholds`` a layer's output channel ``c`` is ``lo + step * n_c(acc)``
with ``n_c`` a staircase of the accumulator, and ``|acc| <= B_c``. When no threshold of
``c`` lies in ``(-B_c, B_c]`` the channel is the constant level ``k_c`` whatever the
input: pruned weights (all zero, so ``B_c = 0``), a BatchNorm ``gamma = 0``, or a 0/1
channel mask (a ``Mul``) before the quantizer all end here.

Such a channel is dropped from the producing conv (fewer outputs) and from every
consuming conv (fewer inputs). Its contribution to a consumer's accumulator is
``k_c * sum over valid taps of w[co, c]``: zero when ``k_c = 0``, and a constant when the
consumer has no padding, which becomes the consumer's integer accumulator offset (the
optional third input of ``IntConv``), so every later result is exactly what it was.
A consumer that got such an offset may lose dead channels of its own in turn: its
accumulator is then ``raw + off`` with ``|raw| <= B_c``, so the test runs on the thresholds
shifted by ``sign * off``. Channels whose constant would vary with position (``k_c != 0`` under padding) stay, and
so do all channels of a tensor that anything but convolutions reads (through max
pooling, which keeps a constant constant).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qcc.ir.graph import Graph, Node, Tensor
from qcc.passes.base import PassResult, result
from qcc.passes.fold_thresholds import _acc_bound

THROUGH = ("Pool",)  # max pooling: a constant channel stays that constant


def remove_dead_channels(graph: Graph) -> PassResult:
    g = graph
    changed = False
    for out in [n.outputs[0] for n in graph.nodes if n.op == "Threshold"]:
        new = _remove(g, g.producer(out))  # the node as rewritten so far
        if new is not None:
            g, changed = new, True
    if not changed:
        return PassResult(graph, False)
    removed = dict(graph.meta.get("dead_channels", {}))
    removed.update(g.meta.get("dead_channels", {}))
    return result(graph, g.replace(meta=dict(g.meta, dead_channels=removed)))


def _remove(g: Graph, t_node: Node) -> Graph | None:
    conv = g.producer(t_node.inputs[0])
    if conv is None or conv.op != "IntConv" or g.sole_consumer(conv.outputs[0]) is not t_node:
        return None
    if conv.attrs.group != 1:  # dropping outputs of a grouped conv would break its groups (co % group)
        return None
    thr, sign = t_node.attrs.thr, t_node.attrs.sign
    bound = _acc_bound(g, conv)[:, None]
    # |raw| <= B bounds the accumulator without its offset (acc = raw + off, an offset an earlier
    # removal gave this conv): sign * acc >= t  <=>  sign * raw >= t - sign * off
    raw_thr = thr
    if len(conv.inputs) > 2:
        raw_thr = thr - (sign.astype(np.int64) * g.const(conv.inputs[2]).astype(np.int64))[:, None]
    dead = np.all((raw_thr <= -bound) | (raw_thr > bound), axis=1)
    if not dead.any() or dead.all():
        return None
    spec = t_node.attrs.spec
    level = spec.lo + spec.step * (raw_thr <= -bound).sum(axis=1)  # the constant level of each dead channel
    # follow the levels to their readers: convs, possibly through max pooling
    path, readers, frontier = [t_node], [], [t_node.outputs[0]]
    while frontier:
        t = frontier.pop()
        if g.is_output(t):
            return None
        for r in g.consumers(t):
            if r.op in THROUGH and r.attrs.kind == "max":
                path.append(r)
                frontier.append(r.outputs[0])
            elif r.op == "IntConv" and r.inputs[0] == t and r.attrs.group == 1:
                readers.append(r)
            else:
                return None
    if any(any(r.attrs.pads) for r in readers):
        dead &= level == 0  # under padding only a zero level contributes the same everywhere
    if not dead.any():
        return None
    keep = ~dead
    tensors = dict(g.tensors)
    replace: dict[int, Node] = {}

    def shrink(name: str) -> None:
        t = tensors[name]
        tensors[name] = t.with_(shape=(t.shape[0], int(keep.sum())) + t.shape[2:])

    for c in conv.inputs[1:]:  # weights, and the accumulator offset if it has one
        tensors[c] = _const(tensors[c], tensors[c].data[keep])
    shrink(conv.outputs[0])
    replace[id(t_node)] = t_node.with_(attrs=dataclasses.replace(t_node.attrs, thr=thr[keep], sign=sign[keep]))
    for p in path:
        shrink(p.outputs[0])
    for r in readers:
        w = tensors[r.inputs[1]].data
        off = np.einsum("c,ocij->o", level[dead].astype(np.int64), w[:, dead].astype(np.int64))
        tensors[r.inputs[1]] = _const(tensors[r.inputs[1]], w[:, keep])
        if off.any():
            if len(r.inputs) > 2:
                off = off + tensors[r.inputs[2]].data
            name = r.outputs[0] + "_offset"
            tensors[name] = Tensor(name, off.shape, "i32", data=off.astype(np.int64))
            replace[id(r)] = r.with_(inputs=r.inputs[:2] + (name,))
    before, after = len(keep), int(keep.sum())
    meta = dict(g.meta, dead_channels={**g.meta.get("dead_channels", {}), conv.name: (before, after)})
    nodes = [replace.get(id(n), n) for n in g.nodes]
    return g.rewrite(nodes, tensors).replace(meta=meta)


def _const(t, data):
    return t.with_(data=np.ascontiguousarray(data), shape=data.shape)
