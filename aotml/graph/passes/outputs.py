"""Give every output a buffer of its own.

An output is written into the caller's memory, so it must be produced by a node, and by a node
whose result no other output names. Where an output is an input, a parameter, or the same value
as an earlier output, a `copy` node is inserted. Guarantees: output values are distinct node
results.
"""

from __future__ import annotations

from dataclasses import replace

from aotml.graph.ir import Graph, Node, Value


def materialize_outputs(graph: Graph) -> Graph:
    produced = {n.result.uid for n in graph.nodes}
    seen: set[int] = set()
    nodes = list(graph.nodes)
    outputs = []
    for name, value in graph.outputs:
        if value.uid not in produced or value.uid in seen:
            copy = Value(name, value.type)
            nodes.append(Node("copy", (value,), (), copy))
            value = copy
        seen.add(value.uid)
        outputs.append((name, value))
    return replace(graph, nodes=nodes, outputs=outputs)
