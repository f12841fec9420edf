"""qcc's model-local ONNX functions: methods with no standard ONNX op, written as standard ops.

``HORQ<K>`` (domain ``qcc``) is high-order residual binarization of a 4-D input (HORQ,
ICCV 2017; K = 1 is XNOR-Net's input binarization with one scale per sample)::

    R_1 = x;  for k = 1..K:  H_k = Sign(R_k);  beta_k = ReduceMean(|R_k|, axes = C, H, W);
                             R_{k+1} = R_k - beta_k * H_k
    y = beta_1 * H_1 + ... + beta_K * H_K

A model that calls it carries the function, so onnxruntime runs its body as the oracle;
qcc inlines it and compiles ``Conv(y, W)`` as K integer convs over the planes of ``H_k``
(:mod:`qcc.passes.split_scaled_sum`). The same subgraph written out by an exporter is
recognized just the same.
"""
from __future__ import annotations

import onnx
from onnx import helper

DOMAIN = "qcc"


def horq_function(order: int, opset: int = 17) -> onnx.FunctionProto:
    """The function ``qcc.HORQ<order>(x) -> y`` for a model of the given default opset."""
    if not 1 <= order <= 8:
        raise ValueError("HORQ order must be in 1..8")
    nodes, terms, r = [], [], "x"
    if opset >= 18:
        nodes.append(helper.make_node("Constant", [], ["axes"], value_ints=[1, 2, 3]))
    for k in range(1, order + 1):
        reduce = (helper.make_node("ReduceMean", [f"abs{k}", "axes"], [f"beta{k}"], keepdims=1) if opset >= 18
                  else helper.make_node("ReduceMean", [f"abs{k}"], [f"beta{k}"], axes=[1, 2, 3], keepdims=1))
        nodes += [helper.make_node("Sign", [r], [f"h{k}"]), helper.make_node("Abs", [r], [f"abs{k}"]), reduce,
                  helper.make_node("Mul", [f"beta{k}", f"h{k}"], [f"t{k}"])]
        terms.append(f"t{k}")
        if k < order:
            nodes.append(helper.make_node("Sub", [r, f"t{k}"], [f"r{k + 1}"]))
            r = f"r{k + 1}"
    total = terms[0]
    for k, t in enumerate(terms[1:], 2):
        nodes.append(helper.make_node("Add", [total, t], [f"s{k}"]))
        total = f"s{k}"
    nodes.append(helper.make_node("Identity", [total], ["y"]))
    return helper.make_function(DOMAIN, f"HORQ{order}", ["x"], ["y"], nodes, [helper.make_opsetid("", opset)])


def inline(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its local functions (qcc's and the user's) expanded into the graph."""
    if not model.functions:
        return model
    import onnx.inliner

    return onnx.inliner.inline_local_functions(model)
