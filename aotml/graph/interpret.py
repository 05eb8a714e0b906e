"""The reference interpreter: runs a graph with each op's numpy reference. The oracle of tests.

With `precise=True` floating-point inputs and weights are promoted to float64 and results cast
back to each output's dtype, so the oracle itself adds (almost) no rounding error.
"""

from __future__ import annotations

import numpy as np

from aotml import ops
from aotml.errors import RunError
from aotml.graph.ir import Graph


def check_inputs(graph: Graph, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    expected = {v.name for v in graph.inputs}
    unknown = sorted(set(arrays) - expected)
    if unknown:
        raise RunError(f"{graph.name}: unknown input(s) {', '.join(unknown)}; the model takes "
                       f"{', '.join(sorted(expected)) or 'no inputs'}")
    out = {}
    for v in graph.inputs:
        if v.name not in arrays:
            raise RunError(f"{graph.name}: missing input '{v.name}' ({v.type})")
        a = np.asarray(arrays[v.name])
        if a.dtype != v.type.np_dtype:
            raise RunError(f"{graph.name}: input '{v.name}' has dtype {a.dtype}, "
                           f"expected {v.type.np_dtype}")
        if a.shape != v.type.shape:
            raise RunError(f"{graph.name}: input '{v.name}' has shape {a.shape}, "
                           f"expected {v.type.shape}")
        out[v.name] = a
    return out


def interpret_graph(graph: Graph, arrays: dict[str, np.ndarray],
                    precise: bool = False) -> dict[str, np.ndarray]:
    inputs = check_inputs(graph, arrays)
    promote = (lambda a: a.astype(np.float64)) if precise else (lambda a: a)
    env: dict[int, np.ndarray] = {}
    for v in graph.inputs:
        env[v.uid] = promote(inputs[v.name])
    for p in graph.params:
        env[p.value.uid] = promote(p.data)
    for n in graph.nodes:
        env[n.result.uid] = np.asarray(
            ops.REGISTRY[n.op].reference([env[v.uid] for v in n.inputs], n.attr))
    return {name: env[v.uid].astype(v.type.np_dtype) for name, v in graph.outputs}
