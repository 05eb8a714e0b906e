"""Graph passes: plain functions Graph -> Graph, composed in `PIPELINE` in this order."""

from aotml.graph.passes.cse import eliminate_common_subexpressions
from aotml.graph.passes.dce import eliminate_dead_code
from aotml.graph.passes.fold_constants import fold_constants
from aotml.graph.passes.layout import pretranspose_weights
from aotml.graph.passes.outputs import materialize_outputs
from aotml.graph.passes.simplify import simplify
from aotml.graph.verify import verify

# Folding first turns constant subgraphs into parameters, whose values the simplifier's rules
# read (x * (3.0 - 2.0) is x * 1); simplifying can make nodes equal (x * 1 * 2 is then x * 2) for
# common-subexpression elimination; dead code, which all three leave behind, goes next; and
# outputs get their own buffers last, once no pass will merge or replace values. Weights get
# their kernels' layout once folding has made every constant weight a parameter.
PIPELINE = (
    fold_constants,
    pretranspose_weights,
    simplify,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    materialize_outputs,
)


def run_pipeline(graph, check: bool = False, on_pass=None):
    """Run every pass in order; with `check`, verify the graph after each one."""
    if check:
        verify(graph)
    for p in PIPELINE:
        graph = p(graph)
        if check:
            verify(graph)
        if on_pass is not None:
            on_pass(p.__name__, graph)
    return graph


__all__ = [
    "PIPELINE",
    "run_pipeline",
    "fold_constants",
    "pretranspose_weights",
    "simplify",
    "eliminate_common_subexpressions",
    "eliminate_dead_code",
    "materialize_outputs",
    "verify",
]
