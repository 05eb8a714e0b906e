"""Write a graph back as `.mlg` source, its params as a weights file beside it.

Used by `aotml import` so that an imported model becomes a program a person can read, edit and
rebuild. The graph must use names that are legal and distinct (`unique_names` makes them so);
every param, rank 0 included, goes to the weights file, so the source states no value that
could round differently from the one the importer computed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from aotml import ops
from aotml.errors import InternalError
from aotml.graph.ir import Graph, Value, format_attr
from aotml.graph.symbolic import Sym

KEYWORDS = frozenset({"weights", "model", "input", "param", "output", "def", "return", "dim"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def legal_name(raw: str, taken: set[str], fallback: str = "v") -> str:
    """`raw` made into an identifier not in `taken` (then added to it): characters outside
    [A-Za-z0-9_] become `_`, runs of `_` are squeezed, a leading digit gets a prefix."""
    name = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", raw)).strip("_") or fallback
    if name[0].isdigit():
        name = f"{fallback}_{name}"
    if name in KEYWORDS:
        name += "_"
    base, k = name, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _attr(value: Any) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "1e999" if value > 0 else "-1e999"  # the grammar has no inf: this overflows to it
    if isinstance(value, float) and math.isnan(value):
        raise InternalError("a NaN attribute cannot be written as .mlg")
    if isinstance(value, tuple):
        trailing = "," if len(value) == 1 else ""
        return "(" + ", ".join(_attr(v) for v in value) + trailing + ")"
    if isinstance(value, Sym):
        if len(value.terms) != 1 or value.terms[0][1] != 1 or len(value.terms[0][0]) != 1:
            raise InternalError(f"the dim {value} cannot be written in an attribute")
        return str(value)
    return format_attr(value)


def _type(v: Value) -> str:
    return f"{v.type.dtype}[{', '.join(map(str, v.type.shape))}]"


def to_mlg(graph: Graph, weights_file: str | None, header: Iterable[str] = ()) -> str:
    """The graph as `.mlg` text; its params are looked up by name in `weights_file`."""
    names = [v.name for v in graph.inputs] + [p.value.name for p in graph.params] + \
        [n.result.name for n in graph.nodes]
    for name in names:
        if not _IDENT.fullmatch(name) or name in KEYWORDS:
            raise InternalError(f"value name {name!r} is not an identifier")
    if len(set(names)) != len(names):
        raise InternalError("value names are not distinct")
    lines = [f"# {h}" for h in header]
    if graph.params:
        if weights_file is None:
            raise InternalError("a graph with params needs a weights file")
        lines.append(f'weights "{weights_file}"')
    lines.append(f"model {graph.name} {{")
    for s, bound in graph.symbols.items():
        if bound is not None:
            lines.append(f"    dim {s} <= {bound}")
    for v in graph.inputs:
        lines.append(f"    input {v.name}: {_type(v)}")
    for p in graph.params:
        lines.append(f"    param {p.value.name}: {_type(p.value)}")
    for n in graph.nodes:
        defaults = {a.name: a.default for a in ops.REGISTRY[n.op].attrs if not a.required}
        args = [v.name for v in n.inputs] + [f"{k}={_attr(v)}" for k, v in n.attrs
                                             if k not in defaults or defaults[k] != v]
        lines.append(f"    {n.result.name} = {n.op}({', '.join(args)})")
    for name, v in graph.outputs:
        if name != v.name:
            raise InternalError(f"output {name!r} is value {v.name!r}")
        lines.append(f"    output {name}")
    lines.append("}")
    return "\n".join(lines) + "\n"
