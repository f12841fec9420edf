"""A conv of a runtime-scaled sum of quantized tensors becomes a sum of integer convs.

HORQ (order K) and XNOR-Net binarize a conv's input with scales computed at run time::

    x_hat = sum_k beta_k * H_k,   H_k = sign(R_k),   beta_k = mean |R_k|  (one per sample)

Convolution is linear and zero padding of ``x_hat`` is zero padding of every ``H_k``, so::

    conv(x_hat, W) + b = sum_k beta_k * conv(H_k, W) + b

Each ``conv(H_k, W)`` has quantized operands, so ``integer_conv`` makes it an exact
integer accumulation (XNOR/AND + popcount over planes); only the K-term combination with
the runtime ``beta_k`` stays in float. The pattern is recognized in the graph as exported
(``Sign``, ``Abs``, ``ReduceMean``, ``Mul``, ``Sub``, ``Add``) and in qcc's HORQ function
after inlining. A term without a scale (``H_k`` itself) is allowed; a sum that is not
made of such terms is left alone.
"""
from __future__ import annotations

from qcc.ir.graph import Graph, Node
from qcc.passes.base import QUANTIZERS, PassResult, result


def split_scaled_sum(graph: Graph) -> PassResult:
    tensors = dict(graph.tensors)
    nodes: list[Node] = []
    taken: set[str] = set()
    for n in graph.nodes:
        terms = _terms(graph, n.inputs[0]) if n.op == "Conv" else None
        if not terms or all(beta is None for beta, _ in terms):
            nodes.append(n)
            continue
        out = n.outputs[0]
        total = None
        for k, (beta, h) in enumerate(terms):
            y = graph.fresh_name(f"{out}_term{k}", taken)
            tensors[y] = tensors[out].with_(name=y)
            nodes.append(Node("Conv", (h, n.inputs[1]), (y,), n.attrs, f"{n.name}_term{k}"))
            if beta is not None:
                z = graph.fresh_name(f"{out}_scaled{k}", taken)
                tensors[z] = tensors[out].with_(name=z)
                nodes.append(Node("Mul", (y, beta), (z,), None, f"{n.name}_beta{k}"))
                y = z
            if total is not None:
                s = graph.fresh_name(f"{out}_sum{k}", taken)
                tensors[s] = tensors[out].with_(name=s)
                nodes.append(Node("Add", (total, y), (s,), None, f"{n.name}_sum{k}"))
                y = s
            total = y
        bias = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
        if bias is not None:
            b4 = graph.fresh_name(bias + "_4d", taken)
            tensors[b4] = tensors[bias].with_(name=b4, data=graph.const(bias).reshape(1, -1, 1, 1),
                                              shape=(1, tensors[bias].shape[0], 1, 1))
            nodes.append(Node("Add", (total, b4), (out,), None, f"{n.name}_bias"))
        else:
            nodes[-1] = nodes[-1].with_(outputs=(out,))
            tensors.pop(total, None)
    return result(graph, graph.rewrite(nodes, tensors))


def _per_sample(graph: Graph, name: str) -> bool:
    t = graph.tensors[name]
    return not t.is_const and all(d == 1 for d in t.shape[1:])


def _terms(graph: Graph, x: str) -> list[tuple[str | None, str]] | None:
    """``x`` as [(beta or None, quantized H)], or None if it is not such a sum."""
    p = graph.producer(x)
    if p is None:
        return None
    if p.op in QUANTIZERS and p.attrs.spec() is not None:
        return [(None, x)]
    if p.op == "Mul" and not any(graph.tensors[i].is_const for i in p.inputs):
        a, b = p.inputs
        if _per_sample(graph, a) and _terms(graph, b) == [(None, b)]:
            return [(a, b)]
        if _per_sample(graph, b) and _terms(graph, a) == [(None, a)]:
            return [(b, a)]
        return None
    if p.op == "Add" and not any(graph.tensors[i].is_const for i in p.inputs):
        left, right = _terms(graph, p.inputs[0]), _terms(graph, p.inputs[1])
        return left + right if left and right else None
    return None
