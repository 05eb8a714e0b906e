"""Constant folding: compute at build time every node whose inputs are all parameters.

Such a node is evaluated with its op's numpy reference, with exactly the interpreter's semantics
(`interpret_graph` runs it: f16 and bf16 are computed in f32 and the result is rounded to its
dtype, as the compiled code would store it), and becomes a parameter holding the result. The
parameter keeps the node's result value itself, so no use and no output has to be rewritten:
output names and output values stay as they were. Folding proceeds in topological order, so a
chain of foldable nodes folds completely.

Left alone: a node whose result is larger than `max_bytes` (folding must not bloat the
library's embedded weights), `copy` (it exists to give a value a buffer of its own; folding it
would only duplicate data), and a node whose reference fails on its data. That is a run-time
check (gather's index range raises RunError): the compiled model reports it when it runs, as it
would without folding. Any other failure is left to run time too, since the compiled kernel,
not the reference, is what runs there.

Assumes a verified graph, and runs before `materialize_outputs` (a folded output is a
parameter, which that pass then copies into the caller's buffer). Guarantees: the graph
computes the same outputs, bit for bit, as `interpret_graph` (in its default mode) computes for
the input graph; the folded parameters' data match their types; the remaining nodes are in
topological order. Folded values are the reference's, so where a compiled kernel sums in
another order (a reduction, say) they may differ from it in the last bit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from aotml.graph.interpret import interpret_graph
from aotml.graph.ir import Graph, Node, Param

# 1 MiB of result bytes: enough for any table a model derives from its literals and small
# weights; a bigger result would rather be computed at run time than stored in the library.
DEFAULT_MAX_BYTES = 1 << 20

_NEVER_FOLDED = frozenset({"copy"})


def fold_constants(graph: Graph, max_bytes: int = DEFAULT_MAX_BYTES) -> Graph:
    known = {p.value.uid: p for p in graph.params}
    params = list(graph.params)
    nodes = []
    for node in graph.nodes:
        folded = None
        if (node.op not in _NEVER_FOLDED and all(v.uid in known for v in node.inputs)
                and node.result.type.is_static and node.result.type.nbytes <= max_bytes):
            folded = _evaluate(graph.name, node, known)
        if folded is None:
            nodes.append(node)
            continue
        known[node.result.uid] = folded
        params.append(folded)
    return replace(graph, params=params, nodes=nodes)


def _evaluate(name: str, node: Node, known: dict[int, Param]) -> Param | None:
    """The node's result as a parameter, or None where its reference fails."""
    inputs = list({v.uid: known[v.uid] for v in node.inputs}.values())
    alone = Graph(name, [], inputs, [node], [("result", node.result)])
    try:
        data = interpret_graph(alone, {})["result"]
    except Exception:  # whatever the failure, the node is left to fail at run time
        return None
    return Param(node.result, np.asarray(data, order="C"), node.span)
