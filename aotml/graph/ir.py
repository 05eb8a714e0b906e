"""The graph IR: a model as typed values produced by op nodes, in topological order.

Values have identity (two values with the same type are different tensors); nodes are frozen and
carry the source span of the expression that made them, which takes no part in equality.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aotml.dtypes import FLOATS, INTS, TABLE  # noqa: F401  (re-exported)
from aotml.errors import InternalError, Span
from aotml.graph.symbolic import Dim, Sym, SymbolicError, product, symbols_of

# dtype name in the language -> numpy dtype (derived from the one table in aotml/dtypes.py)
DTYPES = {name: d.numpy for name, d in TABLE.items()}


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape; a dim is an int or a symbolic dim (`N`, `N*16`).
    A symbolic dim must be at least 1 for every value of its symbols: a shape rule that would
    make `N - 2` raises SymbolicError, which the compiler reports at the op."""

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise InternalError(f"unknown dtype {self.dtype!r}")
        for d in self.shape:
            if isinstance(d, Sym):
                if not d.always_positive:
                    raise SymbolicError(f"the dimension {d} could be less than 1")
            elif not (isinstance(d, int) and not isinstance(d, bool) and d >= 1):
                raise InternalError(f"bad shape {self.shape!r}")

    @property
    def symbols(self) -> frozenset[str]:
        return symbols_of(self.shape)

    @property
    def is_static(self) -> bool:
        return not self.symbols

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> Dim:
        return product(self.shape)

    @property
    def nbytes(self) -> Dim:
        return self.numel * DTYPES[self.dtype].itemsize

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


_ids = itertools.count()


@dataclass(eq=False)
class Value:
    """One tensor in the graph; compared by identity."""

    name: str
    type: TensorType
    uid: int = field(default_factory=lambda: next(_ids), repr=False)


@dataclass(frozen=True)
class Node:
    """One op application producing one value."""

    op: str
    inputs: tuple[Value, ...]
    attrs: tuple[tuple[str, Any], ...]
    result: Value
    span: Span | None = field(default=None, compare=False, repr=False)

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)


@dataclass(frozen=True)
class Param:
    """A parameter: a value whose data is fixed at build time."""

    value: Value
    data: np.ndarray = field(repr=False, compare=False)
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass
class Graph:
    """A model: inputs, parameters, nodes in topological order, and named outputs.

    `symbols` maps each symbolic dim to its upper bound (None: unbounded), in the order the
    ABI takes them: by first appearance in the inputs' shapes."""

    name: str
    inputs: list[Value]
    params: list[Param]
    nodes: list[Node]
    outputs: list[tuple[str, Value]]
    symbols: dict[str, int | None] = field(default_factory=dict)

    def producers(self) -> dict[int, Node]:
        return {n.result.uid: n for n in self.nodes}


def format_attr(value: Any) -> str:
    if isinstance(value, tuple):
        trailing = "," if len(value) == 1 else ""  # (3,) is a tuple, (3) is not
        return "(" + ", ".join(format_attr(v) for v in value) + trailing + ")"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return repr(value)
    return str(value)


def print_graph(g: Graph) -> str:
    """The stable text form used by `--dump graph` and the pass tests."""
    names: dict[int, str] = {}
    taken: set[str] = set()

    def name(v: Value) -> str:
        # two values may share a name (an input `c0` and the literal `c0`): keep them apart
        text, k = f"%{v.name}", 1
        while text in taken:
            text, k = f"%{v.name}.{k}", k + 1
        taken.add(text)
        names[v.uid] = text
        return text

    def ref(v: Value) -> str:
        return names[v.uid]

    lines = []
    for v in g.inputs:
        name(v)
    for p in g.params:
        name(p.value)
    sig = ", ".join(f"{ref(v)}: {v.type}" for v in g.inputs)
    lines.append(f"graph {g.name}({sig}) {{")
    for s, bound in g.symbols.items():
        lines.append(f"  dim {s}" + (f" <= {bound}" if bound is not None else ""))
    for p in g.params:
        lines.append(f"  param {ref(p.value)}: {p.value.type}")
    for i, n in enumerate(g.nodes):
        names[n.result.uid] = f"%{i}"
        args = [ref(v) for v in n.inputs]
        args += [f"{k}={format_attr(v)}" for k, v in n.attrs]
        loc = f"  # {n.span}" if n.span is not None else ""
        lines.append(f"  {ref(n.result)}: {n.result.type} = {n.op}({', '.join(args)}){loc}")
    outs = ", ".join(f"{name}={ref(v)}" for name, v in g.outputs)
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines)
