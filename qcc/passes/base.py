"""What every pass returns, and the small graph utilities passes share."""
from __future__ import annotations

from dataclasses import dataclass

from qcc.ir.graph import Graph, Node

QUANTIZERS = ("Quant", "BipolarQuant", "MultiThreshold", "Sign")


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    changed: bool


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
