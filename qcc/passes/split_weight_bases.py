"""Weights given as a sum of quantized bases become a sum of integer layers.

ALQ (multi-bit networks) and residual weight binarization express a weight as
``W = sum_i alpha_i * B_i`` with ``B_i`` binary (or any quantized) bases and arbitrary
coefficients ``alpha_i`` (one per tensor or per output channel). In ONNX that is a
constant subgraph ``Add(Mul(alpha_1, BipolarQuant(W_1)), Mul(alpha_2, ...))``, which
constant folding would collapse into float weights. Since the layer is linear in ``W``::

    conv(x, sum_i alpha_i B_i) + b = sum_i alpha_i * conv(x, B_i) + b

each ``conv(x, B_i)`` keeps a quantized weight and becomes an integer accumulation
(popcount over the planes of ``B_i``); only the combination with ``alpha_i`` is float.
This pass runs before ``fold_constants``. Conv and Gemm (``transB = 1`` weights, as the
importer normalizes them) are rewritten; anything else is left alone.
"""
from __future__ import annotations

from qcc.ir.graph import Graph, Node
from qcc.passes.base import QUANTIZERS, PassResult, linear_sum, result


def split_weight_bases(graph: Graph) -> PassResult:
    tensors = dict(graph.tensors)
    nodes: list[Node] = []
    taken: set[str] = set()
    for n in graph.nodes:
        terms = _bases(graph, n.inputs[1]) if n.op in ("Conv", "Gemm") else None
        if not terms or len(terms) < 2:
            nodes.append(n)
            continue
        rank = len(tensors[n.outputs[0]].shape)
        parts = []
        for k, (alpha, basis) in enumerate(terms):
            if alpha is not None:  # one coefficient per output channel, broadcast along axis 1
                a = graph.fresh_name(f"{n.outputs[0]}_alpha{k}", taken)
                v = graph.const(alpha).reshape(-1)
                shape = (1, v.size) + (1,) * (rank - 2) if v.size > 1 else ()
                tensors[a] = tensors[alpha].with_(name=a, data=v.reshape(shape), shape=shape)
                alpha = a
            parts.append(((n.inputs[0], basis), alpha))
        nodes += linear_sum(graph, n, parts, tensors, taken)
    return result(graph, graph.rewrite(nodes, tensors))


def _per_output_channel(graph: Graph, alpha: str, channels: int) -> bool:
    v = graph.const(alpha)
    return v is not None and v.size in (1, channels) and (v.size == 1 or max(v.shape) == v.size)


def _bases(graph: Graph, w: str) -> list[tuple[str | None, str]] | None:
    """``w`` as [(alpha or None, quantized basis)], or None."""
    p = graph.producer(w)
    if p is None:
        return None
    if p.op in QUANTIZERS and p.attrs.spec() is not None and graph.tensors[p.inputs[0]].is_const:
        return [(None, w)]
    if p.op == "Mul":
        a, b = p.inputs
        for alpha, basis in ((a, b), (b, a)):
            if graph.tensors[alpha].is_const and _bases(graph, basis) == [(None, basis)] \
                    and _per_output_channel(graph, alpha, graph.tensors[basis].shape[0]):
                return [(alpha, basis)]
        return None
    if p.op == "Add":
        left, right = _bases(graph, p.inputs[0]), _bases(graph, p.inputs[1])
        return left + right if left and right else None
    return None
