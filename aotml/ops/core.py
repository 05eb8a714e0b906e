"""The built-in ops: elementwise math with numpy broadcasting, matmul, reductions, softmax."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aotml.graph.ir import DTYPES, FLOATS, INTS, TensorType
from aotml.loops.build import (
    Names,
    Operand,
    broadcast_indices,
    compute_dtype,
    const,
    loop_nest,
    store,
    with_axis,
)
from aotml.loops.ir import Assign, Binary, Buffer, For, Load, Local, Unary, dtype_of
from aotml.ops.registry import Attr, OpDef, OpTypeError, register

_CLASSES = {"float": FLOATS, "numeric": FLOATS | INTS, "any": FLOATS | INTS | {"bool"}}
_CLASS_WORDS = {"float": "floating-point (f32, f16, bf16)",
                "numeric": "numeric (f32, f16, bf16, i32, i64)", "any": "any"}


def same_dtype(types: Sequence[TensorType], op: str, allowed: str = "float") -> str:
    """The operands' common dtype, which must be of the `allowed` class; else an error."""
    for i, t in enumerate(types):
        if t.dtype not in _CLASSES[allowed]:
            hint = 'convert it with cast(x, dtype="f32")' if allowed != "any" else None
            raise OpTypeError(f"'{op}' takes {_CLASS_WORDS[allowed]} tensors, got {t}", arg=i,
                              hint=hint)
    for i, t in enumerate(types[1:], 1):
        if t.dtype != types[0].dtype:
            raise OpTypeError(f"'{op}' operands have different dtypes: {types[0]} and {t}",
                              arg=i, hint='convert one with cast(x, dtype="...")')
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


def _unary(name: str, doc: str, np_fn, scalar_fn, allowed: str = "float") -> OpDef:
    def infer(types, attrs):
        return TensorType(same_dtype(types, name, allowed), types[0].shape)

    def reference(xs, attrs):
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            return np_fn(xs[0]).astype(xs[0].dtype, copy=False)

    def lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
        (x,) = ins
        return loop_nest(out.shape, names, lambda i: [store(out, i, scalar_fn(x.load(i)))])

    return register(OpDef(name, 1, "elementwise", (), infer, reference, lower, doc,
                          f"{name}(x) -> same shape"))


def _binary(name: str, symbol: str | None, doc: str, np_fn, loop_op: str,
            allowed: str = "numeric") -> OpDef:
    def infer(types, attrs):
        dtype = same_dtype(types, name, allowed)
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
            return [store(out, i, Binary(loop_op, va, vb))]

        return loop_nest(out.shape, names, body)

    sig = f"{name}(a, b) -> broadcast(a, b)" + (f"; infix a {symbol} b" if symbol else "")
    return register(OpDef(name, 2, "elementwise", (), infer, reference, lower, doc, sig))


_binary("add", "+", "Elementwise sum with numpy broadcasting.", np.add, "add")
_binary("sub", "-", "Elementwise difference with numpy broadcasting.", np.subtract, "sub")
_binary("mul", "*", "Elementwise product with numpy broadcasting.", np.multiply, "mul")
_binary("div", "/", "Elementwise quotient of floats with numpy broadcasting (IEEE: x/0 is "
        "±inf).", np.divide, "div", allowed="float")

_unary("neg", "Negation; infix `-x`. Integers wrap.", np.negative, lambda v: Unary("neg", v),
       allowed="numeric")
_unary("exp", "e to the power x.", np.exp, lambda v: Unary("exp", v))
_unary("tanh", "Hyperbolic tangent.", np.tanh, lambda v: Unary("tanh", v))
_unary("relu", "max(x, 0); NaN stays NaN.", lambda x: np.maximum(x, 0).astype(x.dtype),
       lambda v: Binary("max", v, const(0, dtype_of(v))), allowed="numeric")
_unary("sigmoid", "1 / (1 + exp(-x)).", lambda x: 1 / (1 + np.exp(-x)),
       lambda v: Binary("div", const(1, "f32"),
                        Binary("add", const(1, "f32"), Unary("exp", Unary("neg", v)))))


# ---------------------------------------------------------------------------------------------
# Contraction


def _matmul_infer(types, attrs):
    dtype = same_dtype(types, "matmul", "numeric")
    a, b = types
    for i, t in enumerate(types):
        if t.rank != 2:
            raise OpTypeError(f"'@' takes 2-D operands, got {t}", arg=i)
    if a.shape[1] != b.shape[0]:
        raise OpTypeError(f"'@' inner dimensions differ: {a} @ {b} "
                          f"({a.shape[1]} != {b.shape[0]})")
    return TensorType(dtype, (a.shape[0], b.shape[1]))


def _matmul_lower(out: Buffer, ins, attrs, names: Names):
    a, b = ins
    m, k = a.shape
    i, j, r = names.var("i"), names.var("j"), names.var("k")
    if compute_dtype(out.dtype) == out.dtype:
        # i-k-j order: the innermost loop walks b and the output contiguously, so it vectorizes;
        # the output itself is the accumulator.
        zero = For(j, out.shape[1], (store(out, (i, j), const(0, out.dtype)),))
        update = For(j, out.shape[1], (store(out, (i, j), Binary(
            "add", Load(out, (i, j)), Binary("mul", a.load((i, r)), b.load((r, j))))),))
        return [For(i, m, (zero, For(r, k, (update,))))]
    # A narrow output cannot hold partial sums: accumulate each element in f32.
    acc = names.var("acc", compute_dtype(out.dtype))
    dot = For(r, k, (Assign(acc, Binary("add", acc, Binary("mul", a.load((i, r)),
                                                             b.load((r, j))))),))
    return [For(i, m, (For(j, out.shape[1], (Local(acc, const(0, out.dtype)), dot,
                                             store(out, (i, j), acc))),))]


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
        dtype = same_dtype(types, name, "numeric")
        axis = normalize_axis(attrs["axis"], x.rank)
        if attrs["keepdims"]:
            shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]
        else:
            shape = x.shape[:axis] + x.shape[axis + 1:]
        return TensorType(dtype, shape)

    def reference(xs, attrs):
        return np_fn(xs[0], axis=attrs["axis"], keepdims=attrs["keepdims"]).astype(xs[0].dtype)

    def lower(out: Buffer, ins, attrs, names: Names):
        (x,) = ins
        axis = attrs["axis"] % len(x.shape)
        start = init if x.dtype in FLOATS else _int_init(init, x.dtype)

        def body(i):
            acc, r = names.var("acc", compute_dtype(out.dtype)), names.var("r")
            element = x.load(with_axis(i, axis, r, attrs["keepdims"]))
            return [Local(acc, const(start, out.dtype)),
                    For(r, x.shape[axis], (Assign(acc, Binary(combine, acc, element)),)),
                    store(out, i, acc)]

        return loop_nest(out.shape, names, body)

    return register(OpDef(name, 1, "reduction", _AXIS_ATTRS, infer, reference, lower, doc,
                          f"{name}(x, axis: int, keepdims=false) -> x without (or with 1 at) axis"))


def _int_init(init: float, dtype: str) -> int:
    if init == -np.inf:
        return int(np.iinfo(dtype.replace("i", "int")).min)
    return int(init)


_reduce("sum", "Sum along one axis; integers wrap.", np.sum, "add", 0.0)
_reduce("max", "Maximum along one axis; NaN propagates.", np.max, "max", -np.inf)


def _softmax_infer(types, attrs):
    (x,) = types
    normalize_axis(attrs["axis"], x.rank)
    return TensorType(same_dtype(types, "softmax"), x.shape)


def _softmax_reference(xs, attrs):
    x = xs[0]
    e = np.exp(x - np.max(x, axis=attrs["axis"], keepdims=True))
    return (e / np.sum(e, axis=attrs["axis"], keepdims=True)).astype(x.dtype, copy=False)


def _softmax_lower(out: Buffer, ins, attrs, names: Names):
    # Three passes over the row: the max (for range safety), exp and its sum, then the scale.
    # The middle pass keeps exp(x - m) in the output; a narrow output would round it twice, so
    # there it is recomputed in the last pass instead.
    (x,) = ins
    axis = attrs["axis"] % len(x.shape)
    n = x.shape[axis]
    wide = compute_dtype(out.dtype) == out.dtype

    def body(i):
        m, s, inv = names.var("m", "f32"), names.var("s", "f32"), names.var("inv", "f32")
        r1, r2, r3 = names.var("r"), names.var("r"), names.var("r")
        at = lambda r: with_axis(i, axis, r, keepdims=True)  # noqa: E731
        e = lambda r: Unary("exp", Binary("sub", x.load(at(r)), m))  # noqa: E731
        if wide:
            middle = (store(out, at(r2), e(r2)), Assign(s, Binary("add", s, Load(out, at(r2)))))
            last = Binary("mul", Load(out, at(r3)), inv)
        else:
            middle = (Assign(s, Binary("add", s, e(r2))),)
            last = Binary("mul", e(r3), inv)
        return [
            Local(m, const(-np.inf, "f32")),
            For(r1, n, (Assign(m, Binary("max", m, x.load(at(r1)))),)),
            Local(s, const(0, "f32")),
            For(r2, n, middle),
            Local(inv, Binary("div", const(1, "f32"), s)),
            For(r3, n, (store(out, at(r3), last),)),
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
                                             lambda i: [store(out, i, ins[0].load(i))]),
    "A copy of x (inserted where an output is an input, a parameter, or another output).",
    "copy(x) -> same shape"))


# ---------------------------------------------------------------------------------------------
# Conversion


def _cast_infer(types, attrs):
    to = attrs["dtype"]
    if to not in DTYPES:
        raise OpTypeError(f"cast to unknown dtype '{to}' (supported: {', '.join(DTYPES)})",
                          attr="dtype")
    return TensorType(to, types[0].shape)


def cast_reference(x: np.ndarray, to: str) -> np.ndarray:
    """numpy's astype, except float to integer saturates and maps NaN to 0 (as compiled code
    does; numpy leaves those cases undefined)."""
    target = DTYPES[to]
    if x.dtype.kind == "f" and target.kind in "iu":
        info = np.iinfo(target)
        wide = np.nan_to_num(x.astype(np.float64), nan=0.0)
        # float(info.max) is exact for i32 and rounds up to 2**63 for i64: either way every
        # value at or past it saturates, and every value below it converts exactly
        high, low = wide >= float(info.max), wide <= float(info.min)
        middle = np.where(high | low, 0.0, np.trunc(wide)).astype(target)
        return np.where(high, info.max, np.where(low, info.min, middle)).astype(target)
    return x.astype(target)


register(OpDef(
    "cast", 1, "elementwise", (Attr("dtype", "str"),), _cast_infer,
    lambda xs, attrs: cast_reference(xs[0], attrs["dtype"]),
    lambda out, ins, attrs, names: loop_nest(out.shape, names,
                                             lambda i: [store(out, i, ins[0].load(i))]),
    "Convert to another dtype: floats round to nearest even; float to int truncates toward zero, "
    "saturating, NaN to 0; to bool is `x != 0` (NaN is true).",
    'cast(x, dtype="f16") -> same shape'))
