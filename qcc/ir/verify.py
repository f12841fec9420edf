"""Structural checks run between passes: a broken graph fails here, next to its cause."""
from __future__ import annotations

from qcc.errors import QccError
from qcc.ir.graph import Graph


def verify(graph: Graph, after: str = "") -> None:
    """Every input defined before use, every tensor declared, outputs produced, names unique."""
    where = f" after {after}" if after else ""
    defined = set(graph.inputs) | {n for n, t in graph.tensors.items() if t.is_const}
    for n in graph.nodes:
        for i in n.inputs:
            if i and i not in defined:
                raise QccError(f"internal error{where}: input '{i}' used before it is defined", node=n.name, op=n.op)
        for o in n.outputs:
            if o in defined:
                raise QccError(f"internal error{where}: tensor '{o}' defined twice", node=n.name, op=n.op)
            if o not in graph.tensors:
                raise QccError(f"internal error{where}: tensor '{o}' has no declaration", node=n.name, op=n.op)
            defined.add(o)
    for o in graph.outputs:
        if o not in defined:
            raise QccError(f"internal error{where}: graph output '{o}' is never produced")
