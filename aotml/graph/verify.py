"""The graph verifier: the invariants every pass must keep. A failure is a compiler bug."""

from __future__ import annotations

from aotml import ops
from aotml.errors import InternalError
from aotml.graph.ir import Graph


def verify(graph: Graph) -> Graph:
    defined: set[int] = set()

    def define(uid: int, what: str) -> None:
        if uid in defined:
            raise InternalError(f"{what} defines a value twice")
        defined.add(uid)

    for v in graph.inputs:
        define(v.uid, f"input {v.name}")
    for p in graph.params:
        define(p.value.uid, f"param {p.value.name}")
        if tuple(p.data.shape) != p.value.type.shape or p.data.dtype != p.value.type.np_dtype:
            raise InternalError(f"param {p.value.name} data does not match its type")
    for i, n in enumerate(graph.nodes):
        where = f"node {i} ({n.op})"
        if n.op not in ops.REGISTRY:
            raise InternalError(f"{where}: unknown op")
        op = ops.REGISTRY[n.op]
        if not op.accepts(len(n.inputs)):
            raise InternalError(f"{where}: {len(n.inputs)} inputs, op takes {op.arity_text()}")
        for v in n.inputs:
            if v.uid not in defined:
                raise InternalError(f"{where}: uses {v.name} before it is defined")
        try:
            expected = op.infer(tuple(v.type for v in n.inputs), op.bind_attrs(n.attr))
        except ops.OpTypeError as e:
            raise InternalError(f"{where}: {e.message}") from None
        if expected != n.result.type:
            raise InternalError(f"{where}: result {n.result.type}, rule gives {expected}")
        define(n.result.uid, where)
    names = [name for name, _ in graph.outputs]
    if len(set(names)) != len(names):
        raise InternalError("two outputs share a name")
    for name, v in graph.outputs:
        if v.uid not in defined:
            raise InternalError(f"output {name} is not defined")
    return graph
