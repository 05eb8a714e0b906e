"""Dead-code elimination: drop nodes and parameters no output depends on.

Assumes a verified graph; guarantees every remaining node and parameter reaches an output.
Inputs are kept even when unused: they are part of the model's signature.
"""

from __future__ import annotations

from dataclasses import replace

from aotml.graph.ir import Graph


def eliminate_dead_code(graph: Graph) -> Graph:
    live = {v.uid for _, v in graph.outputs}
    kept = []
    for node in reversed(graph.nodes):
        if node.result.uid in live:
            kept.append(node)
            live.update(v.uid for v in node.inputs)
    params = [p for p in graph.params if p.value.uid in live]
    return replace(graph, nodes=kept[::-1], params=params)
