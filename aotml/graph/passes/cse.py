"""Common-subexpression elimination: compute each distinct value once.

Two nodes with the same op, the same input values and equal attributes compute the same value:
the first is kept, and every use of the second (graph outputs included) is rewritten to the
first. Small parameters (at most `max_param_bytes`, which covers every literal) whose dtype,
shape and data bytes are equal are one value too, so `x * 2 + y * 2` reads a single literal
`2`. Data are compared bit for bit (0.0 and -0.0 differ, as they do under division); attributes
are compared after filling in their defaults, floats by their exact bits. Operand order counts:
`a + b` and `b + a` are not merged.

Assumes a verified graph, and runs before `materialize_outputs`: merging can make two outputs
name one value, which that pass then gives a copy. Guarantees: no two nodes apply the same op to
the same inputs with equal attributes, no two small parameters hold equal data, and the graph
computes the same outputs as before; nodes stay in topological order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aotml import ops
from aotml.graph.ir import Graph, Node, Value

# Big enough for any literal and small vector of constants; comparing big weights byte for byte
# would cost build time for a match that almost never happens.
DEFAULT_MAX_PARAM_BYTES = 64


def eliminate_common_subexpressions(graph: Graph,
                                    max_param_bytes: int = DEFAULT_MAX_PARAM_BYTES) -> Graph:
    same: dict[int, Value] = {}  # uid of a dropped value -> the value that replaces it
    params, first_param = [], {}
    for p in graph.params:
        if p.data.nbytes <= max_param_bytes:
            key = (p.value.type, p.data.tobytes())
            if key in first_param:
                same[p.value.uid] = first_param[key]
                continue
            first_param[key] = p.value
        params.append(p)

    def resolve(v: Value) -> Value:
        return same.get(v.uid, v)

    nodes, first_node = [], {}
    for node in graph.nodes:
        inputs = tuple(resolve(v) for v in node.inputs)
        key = (node.op, tuple(v.uid for v in inputs), _attrs_key(node))
        if key in first_node:
            same[node.result.uid] = first_node[key]
            continue
        first_node[key] = node.result
        nodes.append(node if inputs == node.inputs else replace(node, inputs=inputs))
    outputs = [(name, resolve(v)) for name, v in graph.outputs]
    return replace(graph, params=params, nodes=nodes, outputs=outputs)


def _attrs_key(node: Node) -> tuple:
    bound = ops.REGISTRY[node.op].bind_attrs(node.attr)
    return tuple((name, _exact(value)) for name, value in sorted(bound.items()))


def _exact(value: Any) -> Any:
    """A hashable key equal only for identical attribute values (True is not 1, -0.0 not 0.0)."""
    if isinstance(value, tuple):
        return tuple(_exact(v) for v in value)
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)
