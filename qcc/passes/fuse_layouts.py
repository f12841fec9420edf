"""The layout changes at the graph's edges, fused into the kernels beside them.

After lowering, a 4-D graph input is transposed to channels last before its quantizer, and
a 4-D output is transposed back after its unpack. On bipolar bit tensors and int16 levels the
two can read and write the float tensor in its own NCHW order instead, which saves a full
float pass over memory each way (the transposes are memory-bound: on a 64-channel 32x32 layer
they took a sixth of the time):

* ``transpose(NCHW -> NHWC) -> quantize(sign, bits)`` becomes ``quantize(src=NCHW)``: the
  quantizer reads each channel's plane in order and transposes bits, not floats; likewise
  ``quantize(round, i16)``, which transposes its int16 levels;
* ``unpack(bits or i16 -> f32) -> transpose(NHWC -> NCHW)`` becomes ``unpack(dst=NCHW)``.

Only these, because only they have vector kernels reading or writing NCHW; the values are
the same op for op (a transpose moves, it never computes), so the rewrite is exact.
"""
from __future__ import annotations

import dataclasses

from qcc.ir.graph import Graph, Node
from qcc.passes.base import PassResult, result
from qcc.passes.lower import TO_NCHW, TO_NHWC

NCHW_QUANTIZERS = (("sign", "bits"), ("round", "i16"))  # (mode, out) of the quantizers with an NCHW variant


def fuse_layouts(graph: Graph) -> PassResult:
    replace: dict[str, Node | None] = {}  # node name -> its replacement (None: dropped)
    for n in graph.nodes:
        if n.op != "transpose":
            continue
        if n.attrs.perm == TO_NHWC:
            q = graph.sole_consumer(n.outputs[0])
            if q is not None and q.op == "quantize" and (q.attrs.mode, q.attrs.out) in NCHW_QUANTIZERS:
                replace[n.name + "|" + n.outputs[0]] = None
                replace[q.name + "|" + q.outputs[0]] = q.with_(inputs=(n.inputs[0],),
                                                               attrs=dataclasses.replace(q.attrs, src="NCHW"))
        elif n.attrs.perm == TO_NCHW:
            u = graph.producer(n.inputs[0])
            if (u is not None and u.op == "unpack" and u.attrs.out == "f32" and graph.sole_consumer(n.inputs[0]) is n
                    and graph.tensors[u.inputs[0]].dtype in ("bits", "i16")):
                replace[n.name + "|" + n.outputs[0]] = None
                replace[u.name + "|" + u.outputs[0]] = u.with_(outputs=(n.outputs[0],),
                                                               attrs=dataclasses.replace(u.attrs, dst="NCHW"))
    nodes = [replace.get(n.name + "|" + n.outputs[0], n) for n in graph.nodes]
    return result(graph, graph.rewrite(n for n in nodes if n is not None))
