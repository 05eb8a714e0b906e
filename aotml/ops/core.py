"""The built-in ops: elementwise math with numpy broadcasting, copy and cast, and the helpers
every op module shares (same_dtype, normalize_axis, broadcast_shapes). Contractions, reductions
and normalizations are in nn.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aotml.graph.ir import DTYPES, FLOATS, INTS, TensorType
from aotml.loops.build import (
    Names,
    Operand,
    broadcast_indices,
    const,
    loop_nest,
    store,
)
from aotml.loops.ir import Binary, Buffer, Unary, dtype_of
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


def broadcast_shapes(a: tuple, b: tuple) -> tuple | None:
    """numpy's rule. A symbolic dim broadcasts with 1 and with itself only: `N` against `4`
    would hold for one value of N, which is not known until run time."""
    out = []
    for k in range(1, max(len(a), len(b)) + 1):
        da = a[-k] if k <= len(a) else 1
        db = b[-k] if k <= len(b) else 1
        if da != db and 1 not in (da, db):
            return None
        out.append(db if da == 1 else da)
    return tuple(reversed(out))


def broadcast_hint(*types: TensorType) -> str:
    hint = "shapes are aligned on the right; each pair of dims must be equal or one of them 1"
    if any(t.symbols for t in types):
        hint += " (a symbolic dim matches only itself or 1)"
    return hint


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


def broadcast_lowering(combine):
    """The lowering of a broadcasting binary op whose element is `combine(a, b)`."""

    def lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
        a, b = ins

        def body(i):
            va = a.load(broadcast_indices(i, a.shape, out.shape))
            vb = b.load(broadcast_indices(i, b.shape, out.shape))
            return [store(out, i, combine(va, vb))]

        return loop_nest(out.shape, names, body)

    return lower


def _binary(name: str, symbol: str | None, doc: str, np_fn, loop_op: str,
            allowed: str = "numeric") -> OpDef:
    def infer(types, attrs):
        dtype = same_dtype(types, name, allowed)
        a, b = types
        shape = broadcast_shapes(a.shape, b.shape)
        if shape is None:
            raise OpTypeError(f"cannot broadcast {a} and {b} for '{symbol or name}'",
                              hint=broadcast_hint(a, b))
        return TensorType(dtype, shape)

    def reference(xs, attrs):
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            return np_fn(xs[0], xs[1]).astype(np.result_type(xs[0], xs[1]), copy=False)

    lower = broadcast_lowering(lambda va, vb: Binary(loop_op, va, vb))
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
