"""The registry's types and the checks every op definition must pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aotml.errors import InternalError
from aotml.graph.ir import TensorType, format_attr
from aotml.loops.build import Names, Operand
from aotml.loops.ir import Buffer, Stmt

KINDS = ("elementwise", "reduction", "contraction", "normalization")
_MISSING = object()


class OpTypeError(Exception):
    """An op's shape/dtype rule or attribute check failed; `arg`/`attr` say where."""

    def __init__(self, message: str, arg: int | None = None, attr: str | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.message, self.arg, self.attr, self.hint = message, arg, attr, hint


@dataclass(frozen=True)
class Attr:
    """An attribute: its name, kind ('int', 'float', 'bool', 'str') and default."""

    name: str
    kind: str
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def check(self, value: Any) -> Any:
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }[self.kind]
        if not ok:
            raise OpTypeError(f"attribute '{self.name}' must be {_KIND_WORDS[self.kind]}, "
                              f"got {format_attr(value)}", attr=self.name)
        return float(value) if self.kind == "float" else value


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}

Infer = Callable[[Sequence[TensorType], dict], TensorType]
Reference = Callable[[Sequence[np.ndarray], dict], np.ndarray]
Lower = Callable[[Buffer, Sequence[Operand], dict, Names], list[Stmt]]


@dataclass(frozen=True)
class OpDef:
    """One op, complete: what the checker, interpreter, lowering and docs need."""

    name: str
    arity: int
    kind: str
    attrs: tuple[Attr, ...]
    infer: Infer
    reference: Reference
    lower: Lower
    doc: str
    signature: str

    def bind_attrs(self, given: dict[str, Any]) -> dict[str, Any]:
        """Checked attributes with defaults filled in; raises OpTypeError naming the culprit."""
        known = {a.name: a for a in self.attrs}
        for name in given:
            if name not in known:
                choices = ", ".join(known) or "none"
                raise OpTypeError(f"'{self.name}' has no attribute '{name}' (it takes: {choices})",
                                  attr=name)
        out = {}
        for a in self.attrs:
            if a.name in given:
                out[a.name] = a.check(given[a.name])
            elif a.required:
                raise OpTypeError(f"'{self.name}' needs the attribute '{a.name}'")
            else:
                out[a.name] = a.default
        return out


REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in REGISTRY:
        raise InternalError(f"op {op.name!r} registered twice")
    missing = [part for part in ("infer", "reference", "lower") if not callable(getattr(op, part))]
    if missing or op.kind not in KINDS or not op.doc or not op.signature:
        raise InternalError(f"op {op.name!r} is incomplete: {missing or 'kind/doc/signature'}")
    REGISTRY[op.name] = op
    return op


def get(name: str) -> OpDef:
    return REGISTRY[name]
