"""Weight layout: give a constant weight the layout its consumer's fast kernel reads.

`linear(x, w, b)` with `w: [out, in]` a parameter becomes `matmul(x, wT) + b`, where `wT` is a
new parameter holding `w` transposed at build time (`[in, out]`, row-major). Matmul's register
tile reads a row of its right operand per step, contiguous in `[in, out]` and strided in
`[out, in]`; the bias add is then an elementwise epilogue that loop fusion folds into the
matmul's stores. The transposed copy costs no more bytes than the original, which dead-code
elimination drops when nothing else reads it; unlike constant folding, this has no size cap.

Left alone: a weight computed at run time, an input of rank 1 (matmul needs rank 2), and
dtypes other than f32 (the narrow floats take matmul's f32-accumulating path either way).

Assumes a verified graph and runs after fold_constants (so a folded weight counts as one).
Guarantees: the same outputs up to the order of a dot product's sums (both kernels accumulate
in f32 along `in`, matmul with one fused multiply-add per step); node order stays topological.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from aotml.graph.ir import Graph, Node, Param, TensorType, Value
from aotml.graph.passes.simplify import Context


def pretranspose_weights(graph: Graph) -> Graph:
    params = {p.value.uid: p for p in graph.params}
    new_params = list(graph.params)
    transposed: dict[int, Value] = {}
    nodes: list[Node] = []
    context = Context(graph, nodes)  # its `make` types a new node and appends it to `nodes`
    replaced: dict[int, Value] = {}

    for node in graph.nodes:
        node = replace(node, inputs=tuple(replaced.get(v.uid, v) for v in node.inputs))
        x, w = node.inputs[:2] if node.op == "linear" else (None, None)
        if (node.op != "linear" or w.uid not in params or x.type.rank < 2
                or w.type.dtype != "f32"):
            nodes.append(node)
            continue
        if w.uid not in transposed:
            data = np.ascontiguousarray(params[w.uid].data.T)
            value = Value(f"{w.name}_t", TensorType(w.type.dtype, data.shape))
            new_params.append(Param(value, data, params[w.uid].span))
            transposed[w.uid] = value
        y = context.make("matmul", (x, transposed[w.uid]), {}, node)
        if len(node.inputs) == 3:
            y = context.make("add", (y, node.inputs[2]), {}, node)
        replaced[node.result.uid] = y
    outputs = [(name, replaced.get(v.uid, v)) for name, v in graph.outputs]
    return replace(graph, params=new_params, nodes=nodes, outputs=outputs)
