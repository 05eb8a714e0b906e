"""The reference interpreter: runs a graph with each op's numpy reference. The oracle of tests.

It follows the compiled semantics: f16 and bf16 values are computed in f32 and every node's
result is rounded to its dtype, as the compiled code stores it. With `precise=True` f32 work is
done in float64 instead, and f32 results are not rounded between nodes, so the oracle itself
adds (almost) no rounding error; narrow and integer results are still rounded at each node.
"""

from __future__ import annotations

import numpy as np

from aotml import ops
from aotml.errors import InternalError, RunError
from aotml.graph.ir import DTYPES, FLOATS, Graph
from aotml.graph.symbolic import Sym, evaluate


def bind_symbols(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, int]:
    """The symbols' values from the inputs' shapes, checked as the compiled ABI checks them:
    static dims match, every input agrees on each symbol, each is within 1..bound."""
    values: dict[str, int] = {}
    where: dict[str, tuple[str, int]] = {}
    for v in graph.inputs:
        a = inputs[v.name]
        if a.ndim != v.type.rank:
            raise RunError(f"{graph.name}: input '{v.name}' has shape {a.shape}, "
                           f"expected {v.type}")
        if any(not isinstance(w, Sym) and g != w for g, w in zip(a.shape, v.type.shape)):
            raise RunError(f"{graph.name}: input '{v.name}' has shape {a.shape}, expected "
                           f"({', '.join(map(str, v.type.shape))})")
        for k, (got, want) in enumerate(zip(a.shape, v.type.shape)):
            if not isinstance(want, Sym):
                continue
            (name,) = want.symbols
            bound = graph.symbols.get(name)
            if got < 1:
                raise RunError(f"{graph.name}: input '{v.name}' dim {k} is {got}, but {name} "
                               "must be at least 1")
            if bound is not None and got > bound:
                raise RunError(f"{graph.name}: input '{v.name}' dim {k} is {got}, above the "
                               f"bound of {name} ({bound})")
            if name not in values:
                values[name], where[name] = got, (v.name, k)
            elif values[name] != got:
                first, d = where[name]
                raise RunError(f"{graph.name}: inputs disagree on {name}: '{first}' dim {d} is "
                               f"{values[name]}, but '{v.name}' dim {k} is {got}")
    return values


def _concrete(attrs: dict, symbols: dict[str, int]) -> dict:
    """Attributes with their symbolic dims (`shape=(N, 4)`) replaced by their values."""
    def value(v):
        if isinstance(v, tuple):
            return tuple(value(x) for x in v)
        return evaluate(v, symbols) if isinstance(v, Sym) else v
    return {k: value(v) for k, v in attrs.items()}


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
        if v.type.is_static and a.shape != v.type.shape:
            raise RunError(f"{graph.name}: input '{v.name}' has shape {a.shape}, "
                           f"expected {v.type.shape}")
        out[v.name] = a
    return out


def interpret_graph(graph: Graph, arrays: dict[str, np.ndarray],
                    precise: bool = False) -> dict[str, np.ndarray]:
    inputs = check_inputs(graph, arrays)
    symbols = bind_symbols(graph, inputs)
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
            out = ops.REGISTRY[n.op].reference([env[v.uid] for v in n.inputs],
                                               _concrete(n.attr, symbols))
        out = np.asarray(out)
        want = tuple(evaluate(d, symbols) for d in n.result.type.shape)
        if out.shape != want:  # the op's shape rule and its reference disagree
            raise InternalError(f"the reference of '{n.op}' gave shape {out.shape}; its type "
                                f"{n.result.type} says {want}")
        env[n.result.uid] = settle(out, n.result.type.dtype)
    return {name: env[v.uid].astype(v.type.np_dtype, order="C") for name, v in graph.outputs}
