"""BatchNorm, scales and a quantizer after an integer accumulator become thresholds.

Between an ``IntConv`` accumulator ``a`` (an exact integer) and a quantizer there is a
chain of per-channel float ops: the conv's scale ``Mul``, the bias ``Add``,
BatchNormalization, further Mul/Add/Sub/Div by constants, Relu, Clip. Each is monotone
in its input for every channel (non-decreasing, or non-increasing for a negative
multiplier), and so is every QONNX quantizer, so the level index is a monotone staircase
of ``a``::

    n_c(a) = #{j : sign_c * a >= t[c, j]}

For BN followed by ``BipolarQuant`` with a positive slope this is the familiar
``[a >= ceil(-b_c / k_c)]`` where ``y = k_c * a + b_c``; with a negative slope (gamma < 0,
or a negative scale) the comparison flips, ``[a <= floor(-b_c / k_c)]``, i.e. ``sign = -1``;
with ``k_c = 0`` the channel is constant and its thresholds are ``-B`` (always) or
``B + 1`` (never), where ``|a| <= B``.

The closed form is not how the thresholds are computed. Rounding in the float chain makes
it miss ties by one unit. Instead each step ``t[c, j]`` is found by binary search over the
integers in ``[-B, B + 1]``, evaluating the chain exactly as the interpreter (and
onnxruntime, op by op in float32) does. The folded graph therefore agrees with the
unfolded one on every achievable accumulator, including values that land exactly on a
threshold (QONNX compares with ``>=``; ROUND is half to even). The result is checked on
every accumulator value when the range is small, and on samples around each threshold
otherwise.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qcc.errors import QccError
from qcc.ir import interp
from qcc.ir.graph import Graph, Node
from qcc.ir.ops import ReshapeAttrs, ThresholdAttrs
from qcc.passes.base import QUANTIZERS, PassResult, result

ELEMENTWISE = ("Mul", "Add", "Sub", "Div", "BatchNormalization", "Relu", "Clip")
CHANNEL_PRESERVING = ("Flatten", "Reshape")
EXHAUSTIVE_LIMIT = 1 << 22


def fold_thresholds(graph: Graph) -> PassResult:
    tensors = dict(graph.tensors)
    replaced: dict[int, list[Node]] = {}
    for idx, q in enumerate(graph.nodes):
        if q.op not in QUANTIZERS or q.attrs.spec() is None or getattr(q.attrs, "channels_last", False):
            continue  # a channels-last MultiThreshold reads channels from another axis than the conv
        chain = _chain(graph, q.inputs[0])
        if chain is None:
            continue
        conv, ops = chain
        acc = conv.outputs[0]
        bound = _acc_bound(graph, conv)
        quantizer = q.with_(attrs=dataclasses.replace(q.attrs, codes=True))
        thr, sign = _staircase(graph, ops + [quantizer], acc, bound)
        spec = q.attrs.spec()
        out = q.outputs[0]
        new: list[Node] = []
        if not q.attrs.codes:  # readers want values: levels, then Dequant
            lv = out + "__levels"
            tensors[lv] = tensors[out].with_(name=lv, dtype="i32", quant=spec)
            new.append(Node("Dequant", (lv,), (out,), spec, q.name + "_dequant"))
            out = lv
        if tensors[out].shape != tensors[acc].shape:  # e.g. thresholds on (N, C, 1, 1), read as (N, C)
            acc_shaped = out + "_acc_shape"
            tensors[acc_shaped] = tensors[out].with_(name=acc_shaped, shape=tensors[acc].shape, layout="NCHW")
            new.insert(0, Node("Reshape", (acc_shaped,), (out,), ReshapeAttrs(tensors[out].shape), q.name + "_reshape"))
            out = acc_shaped
        new.insert(0, Node("Threshold", (acc,), (out,), ThresholdAttrs(thr=thr, sign=sign, spec=spec), q.name))
        replaced[idx] = new
    if not replaced:
        return PassResult(graph, False)
    nodes = [m for i, n in enumerate(graph.nodes) for m in replaced.get(i, [n])]
    return result(graph, graph.rewrite(nodes, tensors))


def _chain(graph: Graph, x: str):
    """(IntConv node, [elementwise ops from it to the quantizer]) or None."""
    ops: list[Node] = []
    while True:
        p = graph.producer(x)
        if p is None:
            return None
        if p.op == "IntConv":
            return p, ops
        if p.op in CHANNEL_PRESERVING:
            shape = graph.tensors[p.inputs[0]].shape
            if len(shape) == 4 and shape[2:] != (1, 1):
                return None
        elif p.op not in ELEMENTWISE or not _per_channel_consts(graph, p):
            return None
        ops.insert(0, p)
        x = next(i for i in p.inputs if i and not graph.tensors[i].is_const)


def _per_channel_consts(graph: Graph, n: Node) -> bool:
    """Constant operands vary at most along the channel axis (axis 1), and one input is computed."""
    computed = [i for i in n.inputs if i and not graph.tensors[i].is_const]
    if len(computed) != 1:
        return False
    rank = len(graph.tensors[computed[0]].shape)
    for i in n.inputs:
        if i and graph.tensors[i].is_const:
            shape = graph.tensors[i].shape
            full = (1,) * (rank - len(shape)) + tuple(shape)
            if any(d != 1 for k, d in enumerate(full) if k != 1):
                return False
    return True


def _acc_bound(graph: Graph, conv: Node) -> np.ndarray:
    """Per output channel, B with |acc| <= B: max|q_x| * sum |q_w[c]|."""
    x = graph.tensors[conv.inputs[0]].quant
    w = graph.tensors[conv.inputs[1]].data.astype(np.int64)
    return x.max_abs * np.abs(w).reshape(w.shape[0], -1).sum(axis=1)


def _evaluate(graph: Graph, ops: list[Node], acc_name: str, a: np.ndarray) -> np.ndarray:
    """Level index of the chain for accumulators ``a`` of shape (rows, C)."""
    env = {name: t.data for name, t in graph.tensors.items() if t.is_const}
    env[acc_name] = a.reshape(a.shape + (1, 1))
    for n in ops:
        env.update(zip(n.outputs, interp.run_node(n, env)))
    q = env[ops[-1].outputs[0]].reshape(a.shape)
    spec = ops[-1].attrs.spec()
    return (q.astype(np.int64) - spec.lo) // spec.step


def _staircase(graph: Graph, ops: list[Node], acc: str, bound: np.ndarray):
    spec = ops[-1].attrs.spec()
    c = bound.shape[0]
    steps = spec.levels - 1
    lo_end = _evaluate(graph, ops, acc, -bound[None, :])[0]
    hi_end = _evaluate(graph, ops, acc, bound[None, :])[0]
    sign = np.where(hi_end >= lo_end, 1, -1).astype(np.int64)
    lo = np.broadcast_to(-bound, (steps, c)).copy()
    hi = np.broadcast_to(bound + 1, (steps, c)).copy()
    need = np.arange(1, steps + 1)[:, None]
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = _evaluate(graph, ops, acc, sign * np.minimum(mid, bound)) >= need
        ok &= mid <= bound
        hi = np.where(ok & (lo < hi), mid, hi)
        lo = np.where(~ok & (lo < hi), mid + 1, lo)
    thr = lo.T.copy()  # (C, steps)
    _verify(graph, ops, acc, bound, thr, sign)
    return thr, sign


def _verify(graph, ops, acc, bound, thr, sign) -> None:
    b = int(bound.max())
    if (2 * b + 1) * bound.size <= EXHAUSTIVE_LIMIT:
        a = np.clip(np.arange(-b, b + 1, dtype=np.int64)[:, None], -bound, bound)  # each channel's own range
    else:
        near = np.concatenate([thr.T - 1, thr.T, thr.T + 1], axis=0) * sign
        rng = np.random.default_rng(0)
        a = np.concatenate([near, rng.integers(-bound, bound + 1, size=(256, bound.size))], axis=0)
        a = np.clip(a, -bound, bound)
    want = _evaluate(graph, ops, acc, a)
    got = ((sign * a)[:, :, None] >= thr[None, :, :]).sum(axis=2)
    if not np.array_equal(want, got):
        raise QccError("internal error: folded thresholds disagree with the float chain; please report this model",
                       node=ops[-1].name, op=ops[-1].op)
