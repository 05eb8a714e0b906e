"""The AST of an .mlg program: frozen dataclasses, each with a span that takes no part in
equality."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from aotml.errors import Span


def _span():
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TypeExpr:
    """A tensor type as written: `f32[1, 784]`."""

    dtype: str
    dims: tuple[int | str, ...]
    span: Span = _span()
    dim_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Name:
    """A reference to a bound name."""

    id: str
    span: Span = _span()


@dataclass(frozen=True)
class Number:
    """A numeric literal."""

    value: float
    is_int: bool
    span: Span = _span()


@dataclass(frozen=True)
class Binary:
    """An infix operation `lhs op rhs`; op is one of + - * / @."""

    op: str
    lhs: "Expr"
    rhs: "Expr"
    span: Span = _span()
    op_span: Span = _span()


@dataclass(frozen=True)
class Neg:
    """Unary minus."""

    operand: "Expr"
    span: Span = _span()


AttrValue = Union[int, float, str, bool, tuple]


@dataclass(frozen=True)
class Kwarg:
    """A keyword argument `name=value` with a compile-time value."""

    name: str
    value: AttrValue
    span: Span = _span()
    value_span: Span = _span()


@dataclass(frozen=True)
class Call:
    """An op call with positional tensor arguments and keyword attributes."""

    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[Kwarg, ...]
    span: Span = _span()
    func_span: Span = _span()


Expr = Union[Name, Number, Binary, Neg, Call]


@dataclass(frozen=True)
class InputDecl:
    """`input name: type`."""

    name: str
    type: TypeExpr
    span: Span = _span()


@dataclass(frozen=True)
class DimDecl:
    """`dim N` or `dim N <= 64`: a symbolic dimension and its optional upper bound."""

    name: str
    bound: int | None
    span: Span = _span()
    bound_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ParamDecl:
    """`param name: type`, its value looked up by name in the weights file."""

    name: str
    type: TypeExpr
    span: Span = _span()


@dataclass(frozen=True)
class Let:
    """`name = expr`, or `a, b = expr` for an op with several results (split)."""

    name: str
    value: Expr
    span: Span = _span()
    more: tuple[tuple[str, Span], ...] = ()  # the names after the first, with their spans


@dataclass(frozen=True)
class Output:
    """`output name = expr`, or `output name` for a name bound earlier."""

    name: str
    value: Expr | None
    span: Span = _span()


Stmt = Union[InputDecl, DimDecl, ParamDecl, Let, Output]


@dataclass(frozen=True)
class FuncDef:
    """`def name(params) { bindings; return expr }`: inlined at each call."""

    name: str
    params: tuple[str, ...]
    body: tuple[Let, ...]
    result: Expr
    span: Span = _span()
    param_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class WeightsDecl:
    """`weights "file.npz"`: the path is relative to the source file."""

    path: str
    span: Span = _span()


@dataclass(frozen=True)
class Model:
    """`model name { stmts }`."""

    name: str
    stmts: tuple[Stmt, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Program:
    """A whole .mlg file."""

    weights: tuple[WeightsDecl, ...]
    model: Model
    span: Span = _span()
    functions: tuple[FuncDef, ...] = ()
