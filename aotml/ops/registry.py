"""The registry's types and the checks every op definition must pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aotml.errors import InternalError
from aotml.graph.ir import TensorType, format_attr
from aotml.graph.symbolic import Sym
from aotml.loops.build import Names, Operand
from aotml.loops.ir import Buffer, Stmt

# movement: ops that only move or copy elements (reshape, transpose, slice, gather, pad, ...)
KINDS = ("elementwise", "reduction", "contraction", "normalization", "movement")
_MISSING = object()


class OpTypeError(Exception):
    """An op's shape/dtype rule or attribute check failed; `arg`/`attr` say where."""

    def __init__(self, message: str, arg: int | None = None, attr: str | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.message, self.arg, self.attr, self.hint = message, arg, attr, hint


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Attr:
    """An attribute: its name, kind, default, and for strings the allowed values.

    Kinds: 'int', 'float', 'bool', 'str', 'ints' (a tuple of integers; a single integer is
    taken as a 1-tuple), 'dims' (like 'ints', and an entry may name a symbolic dim of the
    model: `shape=(N, 4)`) and 'floats'. Values reach infer/reference/lower already checked and
    normalized (floats as float, ints as tuple)."""

    name: str
    kind: str
    default: Any = _MISSING
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def check(self, value: Any) -> Any:
        kind = self.kind
        written = value  # for the message: as the user wrote it
        if kind in ("ints", "dims", "floats") and not isinstance(value, tuple):
            value = (value,)
        ok = {
            "int": _is_int(value),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "ints": isinstance(value, tuple) and all(_is_int(v) for v in value),
            "dims": isinstance(value, tuple) and all(_is_int(v) or isinstance(v, Sym)
                                                     for v in value),
            "floats": isinstance(value, tuple) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
        }[kind]
        if not ok:
            raise OpTypeError(f"attribute '{self.name}' must be {_KIND_WORDS[kind]}, "
                              f"got {format_attr(written)}", attr=self.name)
        if self.choices and value not in self.choices:
            raise OpTypeError(f"attribute '{self.name}' must be one of "
                              + ", ".join(f'"{c}"' for c in self.choices)
                              + f", got {format_attr(value)}", attr=self.name)
        if kind == "float":
            return float(value)
        if kind == "floats":
            return tuple(float(v) for v in value)
        return value


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a string", "ints": "an integer or a tuple of integers",
               "dims": "a tuple of integers and symbolic dims",
               "floats": "a number or a tuple of numbers"}

Infer = Callable[[Sequence[TensorType], dict], TensorType]
Reference = Callable[[Sequence[np.ndarray], dict], np.ndarray]
Lower = Callable[[Buffer, Sequence[Operand], dict, Names], list[Stmt]]


@dataclass(frozen=True)
class OpDef:
    """One op, complete: what the checker, interpreter, lowering and docs need."""

    name: str
    arity: int | tuple[int, int | None]  # fixed, or (fewest, most); most None: no limit
    kind: str
    attrs: tuple[Attr, ...]
    infer: Infer
    reference: Reference
    lower: Lower
    doc: str
    signature: str

    def accepts(self, n: int) -> bool:
        lo, hi = (self.arity, self.arity) if isinstance(self.arity, int) else self.arity
        return n >= lo and (hi is None or n <= hi)

    def arity_text(self) -> str:
        if isinstance(self.arity, int):
            return f"{self.arity} tensor argument{'s' if self.arity != 1 else ''}"
        lo, hi = self.arity
        return f"at least {lo} tensor arguments" if hi is None else \
            f"{lo} to {hi} tensor arguments"

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

