"""The reference interpreter: runs a graph with each op's numpy reference. The oracle of tests.

It follows the compiled semantics: f16 and bf16 values are computed in f32 and every node's
result is rounded to its dtype, as the compiled code stores it. With `precise=True` f32 work is
done in float64 instead, and f32 results are not rounded between nodes, so the oracle itself
adds (almost) no rounding error; narrow and integer results are still rounded at each node.
"""

from __future__ import annotations

import numpy as np

from aotml import ops
from aotml.errors import RunError
from aotml.graph.ir import DTYPES, FLOATS, Graph


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
    wide = np.float64 if precise else np.float32

    def promote(a: np.ndarray, dtype: str) -> np.ndarray:
        return a.astype(wide) if dtype in FLOATS else a

    def settle(a: np.ndarray, dtype: str) -> np.ndarray:
        if precise and dtype == "f32":
            return a.astype(np.float64)
        return promote(a.astype(DTYPES[dtype]), dtype)  # round to storage, compute wide

    env: dict[int, np.ndarray] = {}
    for v in graph.inputs:
        env[v.uid] = promote(inputs[v.name], v.type.dtype)
    for p in graph.params:
        env[p.value.uid] = promote(p.data, p.value.type.dtype)
    for n in graph.nodes:
        with np.errstate(all="ignore"):
            out = ops.REGISTRY[n.op].reference([env[v.uid] for v in n.inputs], n.attr)
        env[n.result.uid] = settle(np.asarray(out), n.result.type.dtype)
    return {name: env[v.uid].astype(v.type.np_dtype, order="C") for name, v in graph.outputs}
