"""The one graph type every stage of qcc works on.

A :class:`Graph` is a list of :class:`Node` in topological order over named
:class:`Tensor` records. Constants are tensors with ``data``. Passes never mutate a
graph they are given: they build a new one with :meth:`Graph.replace` and the helpers
below, so the graph before a pass stays runnable for comparison.

Tensor storage (``dtype``):

- ``"f32"``: float32 values (or, when ``quant`` is set, integer codes held in floats);
- ``"i32"``: integer codes or accumulators;
- ``"bits"``: integer codes packed as bit planes, channels last, 64 channels per word.

When ``quant`` is set the tensor holds integer codes ``q`` and its real value is
``quant.scale * q`` (see :mod:`qcc.ir.quant`). ``layout`` is ``"NCHW"`` (ONNX order) or
``"NHWC"`` (after lowering); rank-2 tensors are ``"NC"``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from qcc.ir.quant import QuantSpec


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "f32"
    data: np.ndarray | None = field(default=None, compare=False, repr=False)
    quant: QuantSpec | None = None
    layout: str = ""

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def channels(self) -> int:
        """Channel count: axis 1 for ONNX layouts, the last axis for NHWC."""
        if len(self.shape) < 2:
            return 1
        return self.shape[-1] if self.layout == "NHWC" else self.shape[1]

    def with_(self, **changes: Any) -> "Tensor":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Any = None
    name: str = ""

    def with_(self, **changes: Any) -> "Node":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    tensors: dict[str, Tensor]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    name: str = "model"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    # ---- queries -------------------------------------------------------------------
    def producer(self, tensor: str) -> Node | None:
        return self._producers().get(tensor)

    def consumers(self, tensor: str) -> list[Node]:
        return self._consumers().get(tensor, [])

    def const(self, name: str) -> np.ndarray | None:
        t = self.tensors.get(name)
        return None if t is None else t.data

    def _producers(self) -> dict[str, Node]:
        cache = self.__dict__.get("_prod")
        if cache is None:
            cache = {o: n for n in self.nodes for o in n.outputs}
            object.__setattr__(self, "_prod", cache)
        return cache

    def _consumers(self) -> dict[str, list[Node]]:
        cache = self.__dict__.get("_cons")
        if cache is None:
            cache = {}
            for n in self.nodes:
                for i in n.inputs:
                    if i:
                        cache.setdefault(i, []).append(n)
            object.__setattr__(self, "_cons", cache)
        return cache

    def is_output(self, tensor: str) -> bool:
        return tensor in self.outputs

    def sole_consumer(self, tensor: str) -> Node | None:
        """The only node reading ``tensor``, if it has exactly one and is no graph output."""
        cons = self.consumers(tensor)
        return cons[0] if len(cons) == 1 and not self.is_output(tensor) else None

    # ---- building ------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Graph":
        return dataclasses.replace(self, **changes)

    def rewrite(self, nodes: Iterable[Node], tensors: dict[str, Tensor] | None = None) -> "Graph":
        """A new graph with ``nodes`` (kept in the given order) and updated tensors.

        Tensors no node or graph output refers to any more are dropped.
        """
        nodes = tuple(nodes)
        table = dict(self.tensors)
        if tensors:
            table.update(tensors)
        used = set(self.inputs) | set(self.outputs)
        for n in nodes:
            used.update(i for i in n.inputs if i)
            used.update(n.outputs)
        return self.replace(nodes=nodes, tensors={k: v for k, v in table.items() if k in used})

    def fresh_name(self, base: str, taken: set[str] | None = None) -> str:
        taken = taken if taken is not None else set()
        name, i = base, 0
        while name in self.tensors or name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name
