"""What every pass returns, and the small graph utilities passes share."""
from __future__ import annotations

from dataclasses import dataclass

from qcc.ir.graph import Graph, Node

QUANTIZERS = ("Quant", "BipolarQuant", "MultiThreshold", "Sign")


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    changed: bool


def linear_sum(graph: Graph, n: Node, parts, tensors: dict, taken: set[str]) -> list[Node]:
    """Nodes computing ``sum_k coeff_k * n.op(inputs_k) + bias`` into ``n``'s output.

    ``parts`` is [(inputs of the layer op without bias, coefficient tensor or None)]: the
    layer ``n`` (Conv or Gemm, with its optional bias) split by linearity. Coefficients
    must already broadcast against the output; the bias becomes one ``Add``."""
    out, nodes, total = n.outputs[0], [], None
    rank = len(tensors[out].shape)

    def fresh(base: str) -> str:
        name = graph.fresh_name(base, taken)
        tensors[name] = tensors[out].with_(name=name)
        return name

    for k, (inputs, coeff) in enumerate(parts):
        y = fresh(f"{out}_part{k}")
        nodes.append(Node(n.op, tuple(inputs), (y,), n.attrs, f"{n.name}_part{k}"))
        if coeff is not None:
            z = fresh(f"{out}_scaled{k}")
            nodes.append(Node("Mul", (y, coeff), (z,), None, f"{n.name}_scale{k}"))
            y = z
        if total is not None:
            s = fresh(f"{out}_sum{k}")
            nodes.append(Node("Add", (total, y), (s,), None, f"{n.name}_sum{k}"))
            y = s
        total = y
    bias = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
    if bias is not None:
        b = graph.fresh_name(bias + "_bcast", taken)
        v = graph.const(bias).reshape(-1)
        shape = (1, v.size) + (1,) * (rank - 2)
        tensors[b] = tensors[bias].with_(name=b, data=v.reshape(shape), shape=shape)
        nodes.append(Node("Add", (total, b), (out,), None, f"{n.name}_bias"))
    else:
        nodes[-1] = nodes[-1].with_(outputs=(out,))
        tensors.pop(total, None)
    return nodes


def prune(graph: Graph) -> Graph:
    """Drop nodes none of whose outputs is used (dead code after a rewrite)."""
    live = set(graph.outputs)
    kept: list[Node] = []
    for n in reversed(graph.nodes):
        if any(o in live for o in n.outputs):
            kept.append(n)
            live.update(i for i in n.inputs if i)
    return graph.rewrite(reversed(kept))


def result(before: Graph, after: Graph) -> PassResult:
    after = prune(after)
    return PassResult(after, after.nodes != before.nodes or after.tensors.keys() != before.tensors.keys())
