"""The built-in ops: elementwise math with numpy broadcasting, matmul, reductions, softmax."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aotml.graph.ir import TensorType
from aotml.loops.build import Names, Operand, broadcast_indices, loop_nest, with_axis
from aotml.loops.ir import Assign, Binary, Buffer, Const, For, Load, Local, Store, Unary
from aotml.ops.registry import Attr, OpDef, OpTypeError, register


def _f32(x: float) -> Const:
    return Const(float(x), "f32")


def _same_float(types: Sequence[TensorType], op: str) -> str:
    for i, t in enumerate(types):
        if t.dtype != "f32":
            raise OpTypeError(f"'{op}' takes floating-point tensors, got {t}", arg=i)
    return types[0].dtype


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise OpTypeError(f"axis {axis} is out of range for a tensor of rank {rank} "
                          f"(valid: {-rank}..{rank - 1})", attr="axis")
    return axis % rank


# ---------------------------------------------------------------------------------------------
# Elementwise


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    out = []
    for k in range(1, max(len(a), len(b)) + 1):
        da = a[-k] if k <= len(a) else 1
        db = b[-k] if k <= len(b) else 1
        if da != db and 1 not in (da, db):
            return None
        out.append(max(da, db))
    return tuple(reversed(out))


def _unary(name: str, doc: str, np_fn, scalar_fn) -> OpDef:
    def infer(types, attrs):
        return TensorType(_same_float(types, name), types[0].shape)

    def reference(xs, attrs):
        with np.errstate(over="ignore", under="ignore"):
            return np_fn(xs[0]).astype(xs[0].dtype, copy=False)

    def lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
        (x,) = ins
        return loop_nest(out.shape, names, lambda i: [Store(out, i, scalar_fn(x.load(i)))])

    return register(OpDef(name, 1, "elementwise", (), infer, reference, lower, doc,
                          f"{name}(x) -> same shape"))


def _binary(name: str, symbol: str | None, doc: str, np_fn, loop_op: str) -> OpDef:
    def infer(types, attrs):
        dtype = _same_float(types, name)
        a, b = types
        shape = broadcast_shapes(a.shape, b.shape)
        if shape is None:
            raise OpTypeError(f"cannot broadcast {a} and {b} for '{symbol or name}'",
                              hint="shapes are aligned on the right; each pair of dims must be "
                                   "equal or one of them 1")
        return TensorType(dtype, shape)

    def reference(xs, attrs):
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            return np_fn(xs[0], xs[1]).astype(np.result_type(xs[0], xs[1]), copy=False)

    def lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
        a, b = ins

        def body(i):
            va = a.load(broadcast_indices(i, a.shape, out.shape))
            vb = b.load(broadcast_indices(i, b.shape, out.shape))
            return [Store(out, i, Binary(loop_op, va, vb))]

        return loop_nest(out.shape, names, body)

    sig = f"{name}(a, b) -> broadcast(a, b)" + (f"; infix a {symbol} b" if symbol else "")
    return register(OpDef(name, 2, "elementwise", (), infer, reference, lower, doc, sig))


_binary("add", "+", "Elementwise sum with numpy broadcasting.", np.add, "add")
_binary("sub", "-", "Elementwise difference with numpy broadcasting.", np.subtract, "sub")
_binary("mul", "*", "Elementwise product with numpy broadcasting.", np.multiply, "mul")
_binary("div", "/", "Elementwise quotient with numpy broadcasting (IEEE: x/0 is ±inf).",
        np.divide, "div")

_unary("neg", "Negation; infix `-x`.", np.negative, lambda v: Unary("neg", v))
_unary("exp", "e to the power x.", np.exp, lambda v: Unary("exp", v))
_unary("tanh", "Hyperbolic tangent.", np.tanh, lambda v: Unary("tanh", v))
_unary("relu", "max(x, 0); NaN stays NaN.", lambda x: np.maximum(x, 0),
       lambda v: Binary("max", v, _f32(0.0)))
_unary("sigmoid", "1 / (1 + exp(-x)).", lambda x: 1 / (1 + np.exp(-x)),
       lambda v: Binary("div", _f32(1.0), Binary("add", _f32(1.0), Unary("exp", Unary("neg", v)))))


# ---------------------------------------------------------------------------------------------
# Contraction


def _matmul_infer(types, attrs):
    dtype = _same_float(types, "matmul")
    a, b = types
    for i, t in enumerate(types):
        if t.rank != 2:
            raise OpTypeError(f"'@' takes 2-D operands, got {t}", arg=i)
    if a.shape[1] != b.shape[0]:
        raise OpTypeError(f"'@' inner dimensions differ: {a} @ {b} "
                          f"({a.shape[1]} != {b.shape[0]})")
    return TensorType(dtype, (a.shape[0], b.shape[1]))


def _matmul_lower(out: Buffer, ins, attrs, names: Names):
    # i-k-j order: the innermost loop walks b and the output contiguously, so it vectorizes.
    a, b = ins
    m, k = a.shape
    i, j, r = names.var("i"), names.var("j"), names.var("k")
    zero = For(j, out.shape[1], (Store(out, (i, j), _f32(0.0)),))
    update = For(j, out.shape[1], (Store(out, (i, j), Binary(
        "add", Load(out, (i, j)), Binary("mul", a.load((i, r)), b.load((r, j))))),))
    return [For(i, m, (zero, For(r, k, (update,))))]


register(OpDef(
    "matmul", 2, "contraction", (), _matmul_infer,
    lambda xs, attrs: np.matmul(xs[0], xs[1]),
    _matmul_lower,
    "Matrix product of two 2-D tensors; infix `a @ b`.",
    "matmul(a: [M, K], b: [K, N]) -> [M, N]; infix a @ b"))


# ---------------------------------------------------------------------------------------------
# Reductions and softmax

_AXIS_ATTRS = (Attr("axis", "int"), Attr("keepdims", "bool", False))


def _reduce(name: str, doc: str, np_fn, combine: str, init: float) -> OpDef:
    def infer(types, attrs):
        (x,) = types
        dtype = _same_float(types, name)
        axis = normalize_axis(attrs["axis"], x.rank)
        if attrs["keepdims"]:
            shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]
        else:
            shape = x.shape[:axis] + x.shape[axis + 1:]
        return TensorType(dtype, shape)

    def reference(xs, attrs):
        return np_fn(xs[0], axis=attrs["axis"], keepdims=attrs["keepdims"])

    def lower(out: Buffer, ins, attrs, names: Names):
        (x,) = ins
        axis = attrs["axis"] % len(x.shape)

        def body(i):
            acc, r = names.var("acc", out.dtype), names.var("r")
            element = x.load(with_axis(i, axis, r, attrs["keepdims"]))
            return [Local(acc, _f32(init)),
                    For(r, x.shape[axis], (Assign(acc, Binary(combine, acc, element)),)),
                    Store(out, i, acc)]

        return loop_nest(out.shape, names, body)

    return register(OpDef(name, 1, "reduction", _AXIS_ATTRS, infer, reference, lower, doc,
                          f"{name}(x, axis: int, keepdims=false) -> x without (or with 1 at) axis"))


_reduce("sum", "Sum along one axis.", np.sum, "add", 0.0)
_reduce("max", "Maximum along one axis; NaN propagates.", np.max, "max", -np.inf)


def _softmax_infer(types, attrs):
    (x,) = types
    normalize_axis(attrs["axis"], x.rank)
    return TensorType(_same_float(types, "softmax"), x.shape)


def _softmax_reference(xs, attrs):
    x = xs[0]
    e = np.exp(x - np.max(x, axis=attrs["axis"], keepdims=True))
    return (e / np.sum(e, axis=attrs["axis"], keepdims=True)).astype(x.dtype, copy=False)


def _softmax_lower(out: Buffer, ins, attrs, names: Names):
    # Three passes over the row: the max (for range safety), exp and its sum, then the scale.
    (x,) = ins
    axis = attrs["axis"] % len(x.shape)
    n = x.shape[axis]

    def body(i):
        m, s, inv = names.var("m", "f32"), names.var("s", "f32"), names.var("inv", "f32")
        r1, r2, r3 = names.var("r"), names.var("r"), names.var("r")
        at = lambda r: with_axis(i, axis, r, keepdims=True)  # noqa: E731
        e = Unary("exp", Binary("sub", x.load(at(r2)), m))
        return [
            Local(m, _f32(-np.inf)),
            For(r1, n, (Assign(m, Binary("max", m, x.load(at(r1)))),)),
            Local(s, _f32(0.0)),
            For(r2, n, (Store(out, at(r2), e), Assign(s, Binary("add", s, Load(out, at(r2)))))),
            Local(inv, Binary("div", _f32(1.0), s)),
            For(r3, n, (Store(out, at(r3), Binary("mul", Load(out, at(r3)), inv)),)),
        ]

    outer_loops = x.shape[:axis] + (1,) + x.shape[axis + 1:]
    # The loop of extent 1 at `axis` keeps the index arithmetic uniform; LLVM removes it.
    return loop_nest(outer_loops, names, lambda i: body(list(i)))


register(OpDef(
    "softmax", 1, "normalization", (Attr("axis", "int", -1),), _softmax_infer,
    _softmax_reference, _softmax_lower,
    "exp(x - max) / sum(exp(x - max)) along one axis.",
    "softmax(x, axis=-1) -> same shape"))


# ---------------------------------------------------------------------------------------------
# Data movement

register(OpDef(
    "copy", 1, "elementwise", (),
    lambda types, attrs: types[0],
    lambda xs, attrs: np.array(xs[0], copy=True),
    lambda out, ins, attrs, names: loop_nest(out.shape, names,
                                             lambda i: [Store(out, i, ins[0].load(i))]),
    "A copy of x (inserted where an output is an input, a parameter, or another output).",
    "copy(x) -> same shape"))
