"""Graph passes: plain functions Graph -> Graph, composed in `PIPELINE` in this order."""

from aotml.graph.passes.dce import eliminate_dead_code
from aotml.graph.passes.outputs import materialize_outputs
from aotml.graph.verify import verify

PIPELINE = (eliminate_dead_code, materialize_outputs)


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


__all__ = ["PIPELINE", "run_pipeline", "eliminate_dead_code", "materialize_outputs", "verify"]
