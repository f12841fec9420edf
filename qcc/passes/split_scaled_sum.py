"""A conv of a runtime-scaled sum of quantized tensors becomes a sum of integer convs.

HORQ (order K) and XNOR-Net binarize a conv's input with scales computed at run time::

    x_hat = sum_k beta_k * H_k,   H_k = sign(R_k),   beta_k = mean |R_k|  (one per sample)

Convolution is linear and zero padding of ``x_hat`` is zero padding of every ``H_k``, so::

    conv(x_hat, W) + b = sum_k beta_k * conv(H_k, W) + b

The same holds for Gemm (the pass runs before ``gemm_to_conv``). Each ``conv(H_k, W)``
has quantized operands, so ``integer_conv`` makes it an exact
integer accumulation (XNOR/AND + popcount over planes); only the K-term combination with
the runtime ``beta_k`` stays in float. The pattern is recognized in the graph as exported
(``Sign``, ``Abs``, ``ReduceMean``, ``Mul``, ``Sub``, ``Add``) and in qcc's HORQ function
after inlining. A term without a scale (``H_k`` itself) is allowed; a sum that is not
made of such terms is left alone.

A scale may also be a constant. That is how HWGQ's non-uniform levels
``{0, beta - delta, beta, beta + delta}`` compile: they are ``beta * m + delta * t`` (SEEDS.md),
or with two monotone staircases of the same input, ``delta * u + (beta - 2 delta) * m``
(``u`` the 2-bit code, ``m = [u >= 1]``), one integer conv per plane group.
"""
from __future__ import annotations

from qcc.ir.graph import Graph, Node
from qcc.passes.base import QUANTIZERS, PassResult, linear_sum, result


def split_scaled_sum(graph: Graph) -> PassResult:
    tensors = dict(graph.tensors)
    nodes: list[Node] = []
    taken: set[str] = set()
    for n in graph.nodes:
        terms = _terms(graph, n.inputs[0]) if n.op in ("Conv", "Gemm") else None
        if not terms or all(beta is None for beta, _ in terms):
            nodes.append(n)
            continue
        nodes += linear_sum(graph, n, [((h, n.inputs[1]), beta) for beta, h in terms], tensors, taken)
    return result(graph, graph.rewrite(nodes, tensors))


def _per_sample(graph: Graph, name: str) -> bool:
    """One value per sample (computed at run time), or one constant for everything."""
    t = graph.tensors[name]
    return all(d == 1 for d in t.shape[1:]) if not t.is_const else t.size == 1


def _terms(graph: Graph, x: str) -> list[tuple[str | None, str]] | None:
    """``x`` as [(beta or None, quantized H)], or None if it is not such a sum."""
    p = graph.producer(x)
    if p is None:
        return None
    if p.op in QUANTIZERS and p.attrs.spec() is not None:
        return [(None, x)]
    if p.op == "Mul":
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
