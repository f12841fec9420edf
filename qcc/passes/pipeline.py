"""The passes, in order. Each is a pure function ``Graph -> PassResult``."""
from __future__ import annotations

from typing import Callable

from qcc.ir.graph import Graph
from qcc.ir.verify import verify
from qcc.passes.base import PassResult
from qcc.passes.fold_constants import fold_constants
from qcc.passes.fold_thresholds import fold_thresholds
from qcc.passes.fuse_layouts import fuse_layouts
from qcc.passes.gemm_to_conv import gemm_to_conv
from qcc.passes.integer_conv import integer_conv
from qcc.passes.lower import lower
from qcc.passes.plan_memory import plan_memory
from qcc.passes.remove_dead_channels import remove_dead_channels
from qcc.passes.split_scaled_sum import split_scaled_sum
from qcc.passes.split_weight_bases import split_weight_bases

PASSES: tuple[Callable[[Graph], PassResult], ...] = (
    split_weight_bases,
    fold_constants,
    split_scaled_sum,
    gemm_to_conv,
    integer_conv,
    fold_thresholds,
    remove_dead_channels,
    lower,
    fuse_layouts,
    plan_memory,
)


def run_passes(graph: Graph, upto: str | None = None, skip: tuple[str, ...] = ()) -> Graph:
    """Run the pipeline (optionally stopping after the pass named ``upto``, or leaving out the
    passes named in ``skip``), verifying between passes."""
    for p in PASSES:
        if p.__name__ in skip:
            continue
        graph = p(graph).graph
        verify(graph, after=p.__name__)
        if p.__name__ == upto:
            break
    return graph
