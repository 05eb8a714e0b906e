"""Parse .mlg text with Lark (LALR) and transform the tree into the AST.

Lark's exceptions are rewritten into located user errors: "unexpected X, expected one of ...".
"""

from __future__ import annotations

import functools
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from aotml.errors import CompileError, SourceFile, Span, deep_recursion
from aotml.frontend import ast
from aotml.resources import grammar_dir

# How terminals read in a message.
_TERMINAL_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'",
    "SLASH": "'/'", "AT": "'@'", "$END": "end of file",
    "WEIGHTS": "'weights'", "MODEL": "'model'", "INPUT": "'input'", "PARAM": "'param'",
    "OUTPUT": "'output'", "DEF": "'def'", "RETURN": "'return'", "DIM": "'dim'", "LE": "'<='",
}


@functools.cache
def _parser() -> lark.Lark:
    text = (grammar_dir() / "mlg.lark").read_text()
    return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse_file(path: str | Path) -> ast.Program:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CompileError(f"no such file: '{path}'") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CompileError(f"cannot read '{path}': {e}") from None
    return parse(text, str(path))


def parse(text: str, filename: str = "<string>") -> ast.Program:
    source = SourceFile(filename, text)
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, source) from None
    try:
        with deep_recursion(Span(source, 1, 1, 1, 2)):
            return _ToAst(source).transform(tree)
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, CompileError):
            raise e.orig_exc from None
        if isinstance(e.orig_exc, RecursionError):
            raise CompileError("expression is nested too deeply to compile",
                               Span(source, 1, 1, 1, 2)) from None
        raise


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    return f"'{tok.value}'"


def _expected(names) -> str:
    readable = sorted({_TERMINAL_NAMES.get(n, n) for n in names if not n.startswith("__")})
    if not readable:
        return ""
    if len(readable) == 1:
        return f", expected {readable[0]}"
    return ", expected one of " + ", ".join(readable)


def _syntax_error(e: lark.exceptions.UnexpectedInput, source: SourceFile) -> CompileError:
    line, col = max(e.line, 1), max(e.column, 1)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = source.line(line)[col - 1:col] or "?"
        return CompileError(f"unexpected character '{ch}'", Span(source, line, col, line, col + 1))
    if isinstance(e, lark.exceptions.UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            lines = source.text.rstrip("\n").split("\n")
            line, col = len(lines), len(lines[-1]) + 1
            span = Span(source, line, col, line, col + 1)
        else:
            end = tok.end_column if tok.end_line == tok.line and tok.type != "_NL" else col + 1
            span = Span(source, line, col, line, end)
        return CompileError(f"unexpected {_describe_token(tok)}{_expected(e.expected)}", span)
    return CompileError("unexpected end of file", Span(source, line, col, line, col + 1))


class _ToAst(Transformer):
    """Maps each grammar rule to an AST node, with spans from Lark's positions."""

    def __init__(self, source: SourceFile):
        super().__init__()
        self.source = source

    def _tok(self, tok: Token) -> Span:
        return Span(self.source, tok.line, tok.column, tok.end_line, tok.end_column)

    def _meta(self, meta) -> Span:
        return Span(self.source, meta.line, meta.column, meta.end_line, meta.end_column)

    @v_args(meta=True)
    def start(self, meta, items):
        *decls, model = items
        weights = tuple(d for d in decls if isinstance(d, ast.WeightsDecl))
        functions = tuple(d for d in decls if isinstance(d, ast.FuncDef))
        return ast.Program(weights, model, self._meta(meta), functions)

    @v_args(meta=True)
    def func_def(self, meta, items):
        name, *rest = items
        *params_and_body, result = rest
        params = [p for p in params_and_body if isinstance(p, Token)]
        body = tuple(b for b in params_and_body if isinstance(b, ast.Let))
        return ast.FuncDef(name.value, tuple(p.value for p in params), body, result,
                           self._tok(name), tuple(self._tok(p) for p in params))

    def return_stmt(self, items):
        (value,) = items
        return value

    @v_args(meta=True)
    def weights_decl(self, meta, items):
        (s,) = items
        return ast.WeightsDecl(s.value[1:-1], self._tok(s))

    @v_args(meta=True)
    def model(self, meta, items):
        name, *stmts = items
        return ast.Model(name.value, tuple(stmts), self._meta(meta))

    @v_args(meta=True)
    def input_decl(self, meta, items):
        name, ty = items
        return ast.InputDecl(name.value, ty, self._tok(name))

    @v_args(meta=True)
    def dim_decl(self, meta, items):
        name, _, bound = items
        if bound is None:
            return ast.DimDecl(name.value, None, self._tok(name))
        value, is_int = self._number(bound)
        return ast.DimDecl(name.value, value if is_int else bound.value, self._tok(name),
                           self._tok(bound))

    @v_args(meta=True)
    def param_decl(self, meta, items):
        name, ty = items
        return ast.ParamDecl(name.value, ty, self._tok(name))

    @v_args(meta=True)
    def let_stmt(self, meta, items):
        name, *more, value = items
        return ast.Let(name.value, value, self._tok(name),
                       tuple((m.value, self._tok(m)) for m in more))

    @v_args(meta=True)
    def output_stmt(self, meta, items):
        name, value = (items + [None])[:2]
        return ast.Output(name.value, value, self._tok(name))

    @v_args(meta=True)
    def tensor_type(self, meta, items):
        dtype, *dims = items
        if dims == [None]:
            dims = []
        return ast.TypeExpr(dtype.value, tuple(d for d, _ in dims), self._meta(meta),
                            tuple(s for _, s in dims))

    def dim(self, items):
        if len(items) == 2:  # a minus sign and a number: kept to be rejected with a good message
            minus, num = items
            span = Span(self.source, minus.line, minus.column, num.end_line, num.end_column)
            return ("-" + num.value, span)
        (tok,) = items
        return (tok.value, self._tok(tok))

    @v_args(meta=True)
    def binary(self, meta, items):
        lhs, op, rhs = items
        return ast.Binary(op.value, lhs, rhs, self._meta(meta), self._tok(op))

    @v_args(meta=True)
    def neg(self, meta, items):
        _, operand = items
        if isinstance(operand, ast.Number):
            return ast.Number(-operand.value, operand.is_int, self._meta(meta))
        return ast.Neg(operand, self._meta(meta))

    def name(self, items):
        (tok,) = items
        return ast.Name(tok.value, self._tok(tok))

    def number(self, items):
        (tok,) = items
        return ast.Number(*self._number(tok), self._tok(tok))

    def _number(self, tok: Token) -> tuple[float, bool]:
        # Python refuses int() of more than 4300 digits; no dimension or value needs 40
        if len(tok.value) > 40 and tok.value.isdigit():
            raise CompileError(f"the number {tok.value[:20]}... is too long", self._tok(tok))
        return _number(tok.value)

    @v_args(meta=True)
    def call(self, meta, items):
        func, *args = items
        args = [a for a in args if a is not None]
        positional = tuple(a for a in args if not isinstance(a, ast.Kwarg))
        kwargs = tuple(a for a in args if isinstance(a, ast.Kwarg))
        seen_kw = False
        for a in args:  # keyword arguments come after positional ones, as in Python
            if isinstance(a, ast.Kwarg):
                seen_kw = True
            elif seen_kw:
                raise CompileError("positional argument follows keyword argument", a.span)
        return ast.Call(func.value, positional, kwargs, self._meta(meta), self._tok(func))

    @v_args(meta=True)
    def kwarg(self, meta, items):
        name, (value, vspan) = items
        return ast.Kwarg(name.value, value, self._tok(name), vspan)

    def attr_number(self, items):
        (tok,) = items
        value, is_int = self._number(tok)
        return (int(value) if is_int else value, self._tok(tok))

    def attr_neg_number(self, items):
        minus, tok = items
        value, is_int = self._number(tok)
        span = Span(self.source, minus.line, minus.column, tok.end_line, tok.end_column)
        return (-int(value) if is_int else -value, span)

    def attr_string(self, items):
        (tok,) = items
        return (tok.value[1:-1], self._tok(tok))

    def attr_name(self, items):
        (tok,) = items
        value = {"true": True, "false": False}.get(tok.value, tok.value)
        return (value, self._tok(tok))

    @v_args(meta=True)
    def attr_tuple(self, meta, items):
        items = [i for i in items if i is not None]
        return (tuple(v for v, _ in items), self._meta(meta))


def _number(text: str) -> tuple[float, bool]:
    is_int = text.isdigit()
    return (int(text) if is_int else float(text)), is_int
