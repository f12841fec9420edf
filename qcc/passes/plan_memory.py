"""Lifetimes to offsets in one static arena.

Each computed tensor of the lowered graph gets a byte offset; ``reshape`` outputs share
their input's buffer, graph inputs are read in place from the caller's buffer, and a
computed graph output is written in place into the caller's output buffer (its first
appearance among the outputs; it takes no arena, and no copy). A layer that reads bits also
needs an im2col scratch buffer live only during its call. Buffers are placed first-fit in
order of definition, freed after their last reader; every offset is a multiple of
``ALIGN``. The result is ``graph.meta["arena"]`` (tensor -> offset), ``["in_output"]``
(tensor -> offset in floats into the output buffer), ``["scratch"]`` (node index ->
(offset, bytes)) and ``["arena_size"]``.
"""
from __future__ import annotations

from qcc.ir.graph import Graph, Tensor
from qcc.ir.kernels_ref import plane_words, words
from qcc.passes.base import PassResult

MAX_TENSOR_BYTES = 1 << 30  # default limit of the arena and, while importing, of every tensor as float32

ALIGN = 64


def nbytes(t: Tensor) -> int:
    if t.dtype == "bits":
        n = 1
        for d in t.shape[:-1]:
            n *= d
        return 8 * n * t.quant.bits * words(t.shape[-1])
    return {"i16": 2, "f32": 4}[t.dtype] * t.size


def scratch_bytes(graph: Graph, node) -> int:
    """im2col rows of packed words for a layer reading bits: (N*OH*OW) x planes x plane_words."""
    x = graph.tensors[node.inputs[0]]
    if node.op != "layer" or x.dtype != "bits":
        return 0
    out = graph.tensors[node.outputs[0]].shape
    kh, kw = node.attrs.conv.kernel
    return 8 * out[0] * out[1] * out[2] * x.quant.bits * plane_words(kh * kw, node.attrs.in_channels)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_memory(graph: Graph) -> PassResult:
    root: dict[str, str] = {name: name for name in graph.inputs}
    last_use: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            root[o] = root[n.inputs[0]] if n.op == "reshape" else o
        for x in n.inputs:
            if x in root:
                last_use[root[x]] = i
    end = len(graph.nodes)
    in_output: dict[str, int] = {}  # computed output buffers -> their offset in floats in the output
    at = 0
    for o in graph.outputs:
        last_use[root[o]] = end
        if root[o] not in graph.inputs and root[o] not in in_output and graph.tensors[root[o]].dtype == "f32":
            in_output[root[o]] = at
        at += graph.tensors[o].size

    live: list[tuple[int, int, str]] = []  # (offset, size, buffer)
    offset: dict[str, int] = {}
    scratch: dict[int, tuple[int, int]] = {}
    size = 0

    def place(nb: int) -> int:
        at = 0
        for off, sz, _ in sorted(live):
            if at + nb <= off:
                break
            at = max(at, _align(off + sz))
        return at

    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            if root[o] != o or o in in_output:
                continue
            nb = _align(nbytes(graph.tensors[o]))
            offset[o] = place(nb)
            live.append((offset[o], nb, o))
            size = max(size, offset[o] + nb)
        sb = _align(scratch_bytes(graph, n))
        if sb:
            at = place(sb)
            scratch[i] = (at, sb)
            size = max(size, at + sb)
        live = [(off, sz, b) for off, sz, b in live if last_use.get(b, -1) > i]
    arena = {name: offset[r] for name, r in root.items() if r in offset}
    meta = dict(graph.meta, arena=arena, in_output={name: in_output[r] for name, r in root.items() if r in in_output},
                scratch=scratch, arena_size=max(size, ALIGN), arena_root=root)
    return PassResult(graph.replace(meta=meta), True)
