"""Elaborate the AST into the graph IR: resolve names, load weights, infer and check every type.

Every user error found here points at the span of the construct at fault. What it guarantees:
a graph whose nodes are in topological order, each type inferred by its op's rule.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aotml import ops
from aotml.errors import CompileError, Span, deep_recursion, did_you_mean
from aotml.frontend import ast
from aotml.graph.ir import DTYPES, FLOATS, INTS, Graph, Node, Param, TensorType, Value, format_attr
from aotml.graph.symbolic import Dim, SymbolicError, evaluate, symbol

INFIX = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul"}


# The largest tensor a model may declare or compute: beyond this a shape is surely a mistake,
# and sizes stay far from overflowing the 64-bit byte counts of the ABI.
MAX_TENSOR_BYTES = 1 << 40


def elaborate(program: ast.Program) -> Graph:
    return _Elaborator(program).run()


# The largest bound a symbolic dim may declare.
MAX_DIM_BOUND = 1 << 40


def _check_size(ty: TensorType, span: Span, bounds: dict[str, int | None]) -> None:
    """Refuse a tensor over the limit: at the symbols' bounds, or with the unbounded ones at 1
    (their least value)."""
    values = {s: bounds.get(s) or 1 for s in ty.symbols}
    nbytes = evaluate(ty.nbytes, values)
    if nbytes > MAX_TENSOR_BYTES:
        at = "" if ty.is_static else \
            " (with " + ", ".join(f"{s} = {v}" for s, v in sorted(values.items())) + ")"
        raise CompileError(f"{ty} takes {nbytes} bytes{at}, more than the limit of "
                           f"{MAX_TENSOR_BYTES} (1 TiB)", span)


class _Weights:
    """The arrays of the `weights` files, looked up by parameter name."""

    def __init__(self, decls: tuple[ast.WeightsDecl, ...]):
        self.files: list[tuple[ast.WeightsDecl, dict[str, np.ndarray]]] = []
        for decl in decls:
            self.files.append((decl, _load_npz(decl)))

    def lookup(self, decl: ast.ParamDecl) -> np.ndarray:
        if not self.files:
            raise CompileError(f"param '{decl.name}' needs a weights file", decl.span,
                               hint='name one before the model: weights "file.npz"')
        found = [(d, arrays[decl.name]) for d, arrays in self.files if decl.name in arrays]
        if not found:
            names = [n for _, arrays in self.files for n in arrays]
            where = " or ".join(f"'{d.path}'" for d, _ in self.files)
            raise CompileError(f"no array named '{decl.name}' in weights file {where}", decl.span,
                               hint=did_you_mean(decl.name, names))
        if len(found) > 1:
            raise CompileError(f"param '{decl.name}' is in more than one weights file: "
                               + ", ".join(f"'{d.path}'" for d, _ in found), decl.span)
        return found[0][1]


def _load_npz(decl: ast.WeightsDecl) -> dict[str, np.ndarray]:
    """The arrays of an .npz or .safetensors file, by name."""
    base = Path(decl.span.source.path).parent if decl.span is not None else Path(".")
    path = base / decl.path
    if not path.exists():
        where = f" (looked for '{path}')" if str(path) != decl.path else ""
        raise CompileError(f"weights file '{decl.path}' not found{where}", decl.span)
    if not path.is_file():
        raise CompileError(f"weights file '{decl.path}' is not a file", decl.span)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CompileError(f"cannot read weights file '{decl.path}': {e.strerror}",
                           decl.span) from None
    if path.suffix == ".safetensors":
        return _load_safetensors(path, decl)
    if magic == b"\x93NUM":
        raise CompileError(f"cannot read weights file '{decl.path}': it holds a single array "
                           "(.npy), not an .npz archive of named arrays", decl.span,
                           hint="save with np.savez(path, name=array, ...)")
    if magic != b"PK\x03\x04":
        raise CompileError(f"cannot read weights file '{decl.path}': not an .npz archive",
                           decl.span, hint="save with np.savez(path, name=array, ...)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CompileError(f"cannot read weights file '{decl.path}': {e}", decl.span) from None


def _load_safetensors(path: Path, decl: ast.WeightsDecl) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CompileError(f"cannot read weights file '{decl.path}': {e}", decl.span) from None


@dataclass(frozen=True)
class _Literal:
    """A number not yet given a dtype: it takes the dtype of the tensor it meets."""

    value: float | int
    is_int: bool
    span: Span


class _Elaborator:
    def __init__(self, program: ast.Program):
        self.program = program
        self.env: dict[str, Value] = {}
        self.defined_at: dict[str, Span] = {}
        self.named: set[int] = set()
        self.graph = Graph(program.model.name, [], [], [], [])
        self.weights: _Weights | None = None
        self._literals = 0
        self.functions: dict[str, ast.FuncDef] = {}
        self.calls: list[str] = []  # the user functions being inlined, outermost first

    def run(self) -> Graph:
        model = self.program.model
        for fn in self.program.functions:
            self.declare_function(fn)
        self.declare_dims(model)
        for stmt in model.stmts:
            with deep_recursion(stmt.span):
                self.statement(stmt)
        self.check_dims_bound()
        if not self.graph.outputs:
            raise CompileError(f"model '{model.name}' has no outputs", model.span,
                               hint="mark a result with: output name = expr")
        return self.graph

    def declare_dims(self, model: ast.Model) -> None:
        """`dim N <= 64` statements, wherever they stand in the model."""
        self.dim_decls: dict[str, ast.DimDecl] = {}
        for stmt in model.stmts:
            if not isinstance(stmt, ast.DimDecl):
                continue
            if stmt.name in self.dim_decls:
                raise CompileError(f"dim '{stmt.name}' is already declared", stmt.span,
                                   notes=[f"first declared at {self.dim_decls[stmt.name].span}"])
            if stmt.bound is not None and (not isinstance(stmt.bound, int)
                                           or not 1 <= stmt.bound <= MAX_DIM_BOUND):
                raise CompileError(f"the bound of dim '{stmt.name}' must be an integer from 1 "
                                   f"to {MAX_DIM_BOUND}, got {stmt.bound}", stmt.bound_span)
            self.dim_decls[stmt.name] = stmt

    def check_dims_bound(self) -> None:
        for name, decl in self.dim_decls.items():
            if name not in self.graph.symbols:
                raise CompileError(f"dim '{name}' is declared but no input's shape uses it",
                                   decl.span,
                                   hint="a symbolic dim takes its value from an input's shape")

    def statement(self, stmt: ast.Stmt) -> None:
        if isinstance(stmt, ast.InputDecl):
            value = Value(stmt.name, self.tensor_type(stmt.type, symbols_allowed=True))
            self.bind(stmt.name, value, stmt.span)
            self.graph.inputs.append(value)
        elif isinstance(stmt, ast.ParamDecl):
            self.param(stmt)
        elif isinstance(stmt, ast.Let):
            self.let(stmt)
        elif isinstance(stmt, ast.Output):
            self.output(stmt)

    # -- declarations ---------------------------------------------------------------------

    def bind(self, name: str, value: Value, span: Span) -> None:
        if name in self.env:
            first = self.defined_at[name]
            raise CompileError(f"'{name}' is already defined", span,
                               notes=[f"first defined at {first}"])
        self.env[name] = value
        self.defined_at[name] = span
        if value.uid not in self.named:  # a node result takes its first binding's name
            value.name = name
            self.named.add(value.uid)

    def tensor_type(self, t: ast.TypeExpr, symbols_allowed: bool = False) -> TensorType:
        if t.dtype not in DTYPES:
            hint = did_you_mean(t.dtype, DTYPES) or "supported: " + ", ".join(DTYPES)
            raise CompileError(f"unknown dtype '{t.dtype}'", t.span, hint=hint)
        dims: list[Dim] = []
        for d, span in zip(t.dims, t.dim_spans):
            if d[:1].isalpha() or d[:1] == "_":
                if not symbols_allowed:
                    raise CompileError(f"the shape of a param must be static, got the symbolic "
                                       f"dim '{d}'", span,
                                       hint="only inputs take symbolic dims: their values come "
                                            "from the inputs' shapes at run time")
                decl = self.dim_decls.get(d)
                self.graph.symbols.setdefault(d, decl.bound if decl else None)
                dims.append(symbol(d))
                continue
            if not d.lstrip("-").isdigit():
                raise CompileError(f"dimension '{d}' must be a positive integer", span)
            if len(d) > 40:  # (int() of a huge digit string is slow, or refused)
                raise CompileError(f"dimension {d[:20]}... is too large", span)
            if int(d) < 1:
                raise CompileError(f"dimension {d} must be at least 1", span)
            if int(d) > MAX_TENSOR_BYTES:
                raise CompileError(f"dimension {d} is too large", span)
            dims.append(int(d))
        ty = TensorType(t.dtype, tuple(dims))
        _check_size(ty, t.span, self.graph.symbols)
        return ty

    def param(self, decl: ast.ParamDecl) -> None:
        ty = self.tensor_type(decl.type)
        if self.weights is None:
            self.weights = _Weights(self.program.weights)
        data = self.weights.lookup(decl)
        if ty.dtype == "bf16" and data.dtype in (np.dtype("V2"), np.dtype(np.uint16)):
            data = data.view(ty.np_dtype)  # .npz has no bfloat16: its bits come as V2/uint16
        if data.dtype != ty.np_dtype:
            raise CompileError(
                f"weight '{decl.name}' has dtype {data.dtype}, declared {ty.dtype}", decl.span,
                hint=f"save it as {ty.np_dtype} (numpy: array.astype(np.{ty.np_dtype}))")
        if data.shape != ty.shape:
            raise CompileError(
                f"weight '{decl.name}' has shape {tuple(data.shape)}, declared {ty}", decl.span)
        value = Value(decl.name, ty)
        self.bind(decl.name, value, decl.span)
        # order="C", not ascontiguousarray, which would turn a rank-0 weight into shape (1,)
        self.graph.params.append(Param(value, np.asarray(data, order="C"), decl.span))

    def let(self, stmt: ast.Let) -> None:
        names = [(stmt.name, stmt.span), *stmt.more]
        is_split = isinstance(stmt.value, ast.Call) and stmt.value.func == "split"
        if is_split:
            values = self.split(stmt.value, len(names))
        elif len(names) > 1:
            raise CompileError(f"only split gives several results; this gives one, but "
                               f"{len(names)} names are bound", stmt.span)
        else:
            values = [self.value(stmt.value)]
        for (name, span), value in zip(names, values):
            self.bind(name, value, span)

    # -- user functions -------------------------------------------------------------------

    def declare_function(self, fn: ast.FuncDef) -> None:
        if fn.name in self.functions:
            raise CompileError(f"function '{fn.name}' is already defined", fn.span,
                               notes=[f"first defined at {self.functions[fn.name].span}"])
        if fn.name in ops.REGISTRY or fn.name == "split":
            raise CompileError(f"function '{fn.name}' has the name of an op", fn.span,
                               hint="rename the function")
        seen: dict[str, Span] = {}
        for name, span in zip(fn.params, fn.param_spans):
            if name in seen:
                raise CompileError(f"parameter '{name}' is listed twice", span)
            seen[name] = span
        # Names are checked now, so a function with a typo fails even if it is never called;
        # types can only be checked at a call, where the arguments' types are known.
        for let in fn.body:
            self._check_names(let.value, seen, fn)
            for name, span in [(let.name, let.span), *let.more]:
                if name in seen:
                    raise CompileError(f"'{name}' is already defined", span,
                                       notes=[f"first defined at {seen[name]}"])
                seen[name] = span
        self._check_names(fn.result, seen, fn)
        self.functions[fn.name] = fn

    def _check_names(self, e: ast.Expr, scope: dict[str, Span], fn: ast.FuncDef) -> None:
        if isinstance(e, ast.Name) and e.id not in scope:
            raise CompileError(f"unknown name '{e.id}' in function '{fn.name}'", e.span,
                               hint=did_you_mean(e.id, scope) or
                               "a function sees only its parameters and its own bindings")
        for child in (getattr(e, "lhs", None), getattr(e, "rhs", None),
                      getattr(e, "operand", None), *getattr(e, "args", ())):
            if child is not None:
                self._check_names(child, scope, fn)

    def inline(self, fn: ast.FuncDef, call: ast.Call) -> Value:
        """Elaborate `fn`'s body with its parameters bound to the call's arguments."""
        if fn.name in self.calls:
            raise CompileError(f"function '{fn.name}' calls itself "
                               f"({' -> '.join([*self.calls, fn.name])})", call.func_span)
        if call.kwargs:
            raise CompileError(f"function '{fn.name}' takes no keyword arguments",
                               call.kwargs[0].span)
        if len(call.args) != len(fn.params):
            raise CompileError(f"function '{fn.name}' takes {len(fn.params)} arguments, got "
                               f"{len(call.args)}", call.span,
                               hint=f"def {fn.name}({', '.join(fn.params)})")
        args = [self.value(a) for a in call.args]
        saved = self.env, self.defined_at
        self.env = dict(zip(fn.params, args))
        self.defined_at = dict(zip(fn.params, fn.param_spans))
        self.calls.append(fn.name)
        try:
            for let in fn.body:
                self.let(let)
            return self.value(fn.result)
        except CompileError as e:
            # the error is in the body; say which call brought us there
            raise CompileError(e.message, e.span, e.hint,
                               (*e.notes, f"in the call to '{fn.name}' at {call.span}")) from None
        finally:
            self.env, self.defined_at = saved
            self.calls.pop()

    def split(self, call: ast.Call, parts: int) -> list[Value]:
        """`a, b, ... = split(x, sizes=(...), axis=0)`: one slice per part. Without sizes the
        axis is cut into equal parts, one per bound name."""
        if len(call.args) != 1:
            raise CompileError(f"'split' takes 1 tensor argument, got {len(call.args)}",
                               call.span)
        kw = {k.name: k for k in call.kwargs}
        for name, k in kw.items():
            if name not in ("sizes", "axis"):
                raise CompileError(f"'split' has no attribute '{name}' (it takes: sizes, axis)",
                                   k.span)
        x = self.value(call.args[0])
        axis = kw["axis"].value if "axis" in kw else 0
        if not isinstance(axis, int) or isinstance(axis, bool) or not -x.type.rank <= axis < \
                x.type.rank:
            raise CompileError(f"axis {axis} is not an axis of {x.type}",
                               kw["axis"].value_span if "axis" in kw else call.span)
        axis %= x.type.rank
        dim = x.type.shape[axis]
        if "sizes" in kw:
            sizes = kw["sizes"].value
            sizes = sizes if isinstance(sizes, tuple) else (sizes,)
            where = kw["sizes"].value_span
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
                raise CompileError(f"split sizes must be integers, got {format_attr(sizes)}",
                                   where)
            if len(sizes) != parts or sum(sizes) != dim or min(sizes) < 1:
                raise CompileError(f"split sizes {sizes} must be {parts} positive numbers "
                                   f"adding up to {dim} (axis {axis} of {x.type})", where)
        else:
            try:
                uneven = dim % parts
            except SymbolicError:
                uneven = True
            if uneven:
                raise CompileError(f"cannot split axis {axis} of {x.type} into {parts} equal "
                                   "parts", call.span, hint="give the sizes: sizes=(...)")
            sizes = (dim // parts,) * parts
        values, start = [], 0
        for size in sizes:
            attrs = {"starts": (start,), "ends": (start + size,), "axes": (axis,)}
            values.append(self.make_node("slice", (x,), attrs, call.span, call.func_span))
            start += size
        return values

    def output(self, stmt: ast.Output) -> None:
        if any(name == stmt.name for name, _ in self.graph.outputs):
            raise CompileError(f"output '{stmt.name}' is already defined", stmt.span)
        if stmt.value is None:
            value = self.lookup(stmt.name, stmt.span)
        else:
            value = self.value(stmt.value)
            self.bind(stmt.name, value, stmt.span)
        self.graph.outputs.append((stmt.name, value))

    # -- expressions ----------------------------------------------------------------------

    def lookup(self, name: str, span: Span) -> Value:
        if name not in self.env:
            raise CompileError(f"unknown name '{name}'", span,
                               hint=did_you_mean(name, self.env))
        return self.env[name]

    def value(self, e: ast.Expr) -> Value:
        """An expression as a tensor; a bare literal becomes an f32 (or i64) scalar."""
        v = self.expr(e)
        if isinstance(v, _Literal):
            return self.literal(v, "i64" if v.is_int else "f32")
        return v

    def expr(self, e: ast.Expr) -> Value | _Literal:
        if isinstance(e, ast.Name):
            return self.lookup(e.id, e.span)
        if isinstance(e, ast.Number):
            return _Literal(e.value, e.is_int, e.span)
        if isinstance(e, ast.Neg):
            return self.apply("neg", [e.operand], {}, e.span, e.span)
        if isinstance(e, ast.Binary):
            return self.apply(INFIX[e.op], [e.lhs, e.rhs], {}, e.span, e.op_span)
        if isinstance(e, ast.Call):
            if e.func in self.functions:
                return self.inline(self.functions[e.func], e)
            if e.func == "split":
                raise CompileError("split gives several results: bind them with "
                                   "a, b = split(...)", e.span)
            if e.func not in ops.REGISTRY:
                raise CompileError(f"unknown op '{e.func}'", e.func_span,
                                   hint=did_you_mean(e.func, [*ops.REGISTRY, *self.functions]))
            attrs: dict[str, Any] = {}
            kw_spans: dict[str, ast.Kwarg] = {}
            for kw in e.kwargs:
                if kw.name in attrs:
                    raise CompileError(f"attribute '{kw.name}' given twice", kw.span)
                attrs[kw.name] = kw.value
                kw_spans[kw.name] = kw
            return self.apply(e.func, list(e.args), attrs, e.span, e.func_span, kw_spans)
        raise TypeError(f"unexpected AST node {e!r}")

    def literal(self, lit: _Literal, dtype: str) -> Value:
        """A rank-0 constant of `dtype`; lowering folds it into the loops that read it."""
        if dtype in INTS or dtype == "bool":
            if not lit.is_int:
                raise CompileError(f"the number {lit.value} cannot be used as {dtype}", lit.span,
                                   hint='make the tensor a float with cast(x, dtype="f32")')
            if dtype == "bool":
                raise CompileError(f"the number {lit.value} cannot be used as bool", lit.span)
            info = np.iinfo(DTYPES[dtype])
            if not info.min <= lit.value <= info.max:
                raise CompileError(f"{lit.value} does not fit in {dtype}", lit.span)
        try:
            with np.errstate(over="raise"):
                data = np.asarray(float(lit.value) if dtype in FLOATS else lit.value,
                                  dtype=DTYPES[dtype])
        except (OverflowError, FloatingPointError):
            raise CompileError(f"{lit.value} is too large for {dtype}", lit.span) from None
        value = Value(f"c{self._literals}", TensorType(dtype, ()))
        self._literals += 1
        self.graph.params.append(Param(value, data, lit.span))
        return value

    def apply(self, op_name: str, args: list[ast.Expr], attrs: dict[str, Any], span: Span,
              op_span: Span, kw_spans: dict[str, ast.Kwarg] | None = None) -> Value:
        op = ops.REGISTRY[op_name]
        if not op.accepts(len(args)):
            raise CompileError(f"'{op_name}' takes {op.arity_text()}, got {len(args)}",
                               span, hint=f"signature: {op.signature}")
        evaluated = [self.expr(a) for a in args]
        # A literal takes the dtype of the first non-bool tensor operand of an elementwise op
        # (`x * 2` with x: f16 multiplies by an f16 2; `where(c, x, 0)` by x's); elsewhere an
        # integer literal is i64 (`gather(x, 2)`) and any other number f32.
        tensors = [v for v in evaluated if isinstance(v, Value) and v.type.dtype != "bool"]
        elementwise = op.kind == "elementwise"
        like = tensors[0].type.dtype if tensors and elementwise else None

        def dtype_for(lit: _Literal) -> str:
            return like or ("i64" if lit.is_int and not elementwise else "f32")

        inputs = tuple(self.literal(v, dtype_for(v)) if isinstance(v, _Literal) else v
                       for v in evaluated)
        return self.make_node(op_name, inputs, attrs, span, op_span, kw_spans, args)

    def symbolic_attrs(self, op, attrs: dict[str, Any],
                       kw_spans: dict[str, ast.Kwarg]) -> dict[str, Any]:
        """In a 'dims' attribute a name is a symbolic dim of the model: `shape=(N, 4)`."""
        out = dict(attrs)
        for a in op.attrs:
            value = attrs.get(a.name)
            if a.kind != "dims" or value is None:
                continue
            items = value if isinstance(value, tuple) else (value,)
            converted = []
            for v in items:
                if isinstance(v, str):
                    if v not in self.graph.symbols:
                        where = kw_spans[a.name].value_span if a.name in kw_spans else None
                        raise CompileError(f"unknown dim '{v}' in '{a.name}'", where,
                                           hint=did_you_mean(v, self.graph.symbols) or
                                           "a dim name must appear in an input's shape")
                    v = symbol(v)
                converted.append(v)
            out[a.name] = tuple(converted)
        return out

    def make_node(self, op_name: str, inputs: tuple[Value, ...], attrs: dict[str, Any],
                  span: Span, op_span: Span, kw_spans: dict[str, ast.Kwarg] | None = None,
                  args: list[ast.Expr] | None = None) -> Value:
        """Check the op's attributes and type rule, append the node, return its result."""
        op = ops.REGISTRY[op_name]
        kw_spans = kw_spans or {}
        attrs = self.symbolic_attrs(op, attrs, kw_spans)
        try:
            bound = op.bind_attrs(attrs)
            result_type = op.infer(tuple(v.type for v in inputs), bound)
        except ops.OpTypeError as err:
            where = op_span
            if err.arg is not None and args is not None:
                where = args[err.arg].span
            elif err.attr is not None and err.attr in kw_spans:
                kw = kw_spans[err.attr]
                unknown = err.attr not in {a.name for a in op.attrs}
                where = kw.span if unknown else kw.value_span
            raise CompileError(err.message, where, hint=err.hint) from None
        except SymbolicError as err:
            shapes = ", ".join(str(v.type) for v in inputs)
            raise CompileError(f"'{op_name}' does not support these symbolic dims ({shapes}): "
                               f"{err}", op_span,
                               hint="symbolic dims work where the op's result does not depend "
                                    "on their run-time value; a fixed size works everywhere"
                               ) from None
        _check_size(result_type, span, self.graph.symbols)
        result = Value(f"t{len(self.graph.nodes)}", result_type)
        self.graph.nodes.append(Node(op_name, inputs, tuple(sorted(bound.items())), result, span))
        return result
