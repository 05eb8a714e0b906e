"""Elementwise ops beyond the core arithmetic: math functions, activations, comparisons, where.

Everything here computes one output element from the elements at the same (broadcast) index of
its operands; f16 and bf16 are computed in f32 and rounded once when stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from aotml.graph.ir import INTS, TensorType
from aotml.loops.build import Names, Operand, broadcast_indices, const, loop_nest, store
from aotml.loops.ir import Binary, Buffer, Compare, Expr, Select, Unary
from aotml.ops.core import (
    _binary,
    _unary,
    broadcast_hint,
    broadcast_lowering,
    broadcast_shapes,
    same_dtype,
)
from aotml.ops.registry import Attr, OpDef, OpTypeError, register

# numpy has no erf; math's are exact to within an ulp of float64
_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])



def _mul(a: Expr, b: Expr) -> Expr:
    return Binary("mul", a, b)


def _add(a: Expr, b: Expr) -> Expr:
    return Binary("add", a, b)


def _f32(value: float) -> Expr:
    return const(value, "f32")


# ---------------------------------------------------------------------------------------------
# Math functions

_binary("pow", None, "a to the power b, for floats, with numpy broadcasting (a negative base "
        "needs an integer exponent, else NaN).", np.power, "pow", allowed="float")
_binary("maximum", None, "Elementwise maximum with numpy broadcasting; NaN propagates.",
        np.maximum, "max")
_binary("minimum", None, "Elementwise minimum with numpy broadcasting; NaN propagates.",
        np.minimum, "min")

_unary("abs", "Absolute value; integers wrap at their minimum, as in numpy.", np.abs,
       lambda v: Unary("abs", v), allowed="numeric")
_unary("log", "Natural logarithm (log 0 = -inf, negative x gives NaN).", np.log,
       lambda v: Unary("log", v))
_unary("sqrt", "Square root (negative x gives NaN).", np.sqrt, lambda v: Unary("sqrt", v))
_unary("rsqrt", "1 / sqrt(x).", lambda x: 1 / np.sqrt(x), lambda v: Unary("rsqrt", v))
_unary("erf", "The error function.", _erf, lambda v: Unary("erf", v))


# ---------------------------------------------------------------------------------------------
# Activations


def _float_infer(name: str):
    def infer(types, attrs):
        return TensorType(same_dtype(types, name, "float"), types[0].shape)
    return infer


def _map(scalar_fn):
    """A lowering that applies `scalar_fn(value, attrs)` to every element of the one input."""
    def lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
        (x,) = ins
        return loop_nest(out.shape, names, lambda i: [store(out, i, scalar_fn(x.load(i), attrs))])
    return lower


def _leaky_relu_reference(xs, attrs):
    x = xs[0]
    return np.where(x > 0, x, attrs["alpha"] * x).astype(x.dtype, copy=False)


def _leaky_relu_scalar(v: Expr, attrs) -> Expr:
    # a NaN fails the comparison and gives alpha·NaN, a NaN
    return Select(Compare("gt", v, _f32(0)), v, _mul(v, _f32(attrs["alpha"])))


register(OpDef(
    "leaky_relu", 1, "elementwise", (Attr("alpha", "float", 0.01),), _float_infer("leaky_relu"),
    _leaky_relu_reference, _map(_leaky_relu_scalar),
    "x where x > 0, else alpha * x; NaN stays NaN.",
    "leaky_relu(x, alpha=0.01) -> same shape"))

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


def _gelu_reference(xs, attrs):
    x = xs[0]
    if attrs["approximate"] == "tanh":
        y = 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x ** 3)))
    else:
        # 1 + erf(x/√2) written as erfc(-x/√2): the same function, without the cancellation
        # near x = -4 that would cost the reference its own digits
        y = 0.5 * x * _erfc(-x / math.sqrt(2))
    return np.asarray(y).astype(x.dtype, copy=False)


def _gelu_scalar(v: Expr, attrs) -> Expr:
    # The defining formulas, as PyTorch computes them. For x far below 0, 1 + erf (or tanh)
    # cancels: the error there is a few eps of |x| absolute, not relative to the (tiny) result,
    # which is how tests/test_ops_elementwise.py bounds it.
    if attrs["approximate"] == "tanh":
        cubic = _mul(_f32(_GELU_CUBIC), _mul(v, _mul(v, v)))
        inner = _mul(_f32(_SQRT_2_OVER_PI), _add(v, cubic))
        return _mul(_mul(_f32(0.5), v), _add(_f32(1), Unary("tanh", inner)))
    erf = Unary("erf", _mul(v, _f32(math.sqrt(0.5))))
    return _mul(_mul(_f32(0.5), v), _add(_f32(1), erf))


register(OpDef(
    "gelu", 1, "elementwise", (Attr("approximate", "str", "none", choices=("none", "tanh")),),
    _float_infer("gelu"), _gelu_reference, _map(_gelu_scalar),
    'Gaussian error linear unit: 0.5·x·(1 + erf(x/√2)), or with approximate="tanh" '
    "0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).",
    'gelu(x, approximate="none") -> same shape'))


def _silu_reference(xs, attrs):
    x = xs[0]
    return (x / (1 + np.exp(-x))).astype(x.dtype, copy=False)


def _silu_scalar(v: Expr, attrs) -> Expr:
    # x·sigmoid(x) = x / (1 + e^-x) = x·e^x / (1 + e^x). With e = exp(-|x|), which never
    # overflows, pick the form whose exponential is e: below x = -88.7 the plain x / (1 +
    # exp(-x)) overflows to x / inf = -0, where the exact result is a nonzero f32 down to
    # about x = -108.
    e = Unary("exp", Unary("neg", Unary("abs", v)))
    numerator = Select(Compare("ge", v, _f32(0)), v, _mul(v, e))
    return Binary("div", numerator, _add(_f32(1), e))


register(OpDef(
    "silu", 1, "elementwise", (), _float_infer("silu"), _silu_reference, _map(_silu_scalar),
    "x · sigmoid(x) (also called swish).", "silu(x) -> same shape"))


# ---------------------------------------------------------------------------------------------
# clip

# An infinite bound is no bound: the defaults leave x as it is, NaN included.
_CLIP_ATTRS = (Attr("min", "float", -math.inf), Attr("max", "float", math.inf))


def _clip_bounds(dtype: str, attrs) -> dict:
    """The bounds that bound something, as values of `dtype` (ints for an integer tensor);
    an error for a bound an integer tensor cannot take."""
    bounds = {k: attrs[k] for k, unbounded in (("min", -math.inf), ("max", math.inf))
              if attrs[k] != unbounded}
    if dtype not in INTS:
        return bounds
    info = np.iinfo(dtype.replace("i", "int"))
    for k, v in bounds.items():
        # v is a float: compared with the int limits exactly, so 2**63 is out of i64's range
        if not info.min <= v <= info.max:
            raise OpTypeError(f"clip bound {k}={v:g} does not fit in {dtype} "
                              f"({info.min}..{info.max})", attr=k)
        if not v.is_integer():
            raise OpTypeError(f"'clip' of an {dtype} tensor needs integer bounds, got {k}={v}",
                              attr=k, hint='or clip a float tensor: cast(x, dtype="f32")')
        bounds[k] = int(v)
    return bounds


def _clip_infer(types, attrs):
    dtype = same_dtype(types, "clip", "numeric")
    _clip_bounds(dtype, attrs)
    return TensorType(dtype, types[0].shape)


def _clip_reference(xs, attrs):
    x = xs[0]
    # integer tensors arrive as int32/int64; floats (any width) take the bounds as they are
    bounds = _clip_bounds(x.dtype.name.replace("int", "i") if x.dtype.kind == "i" else "f32",
                          attrs)
    # numpy.clip's definition, also when min > max (every element becomes max)
    if "min" in bounds:
        x = np.maximum(x, bounds["min"])
    if "max" in bounds:
        x = np.minimum(x, bounds["max"])
    return x.astype(xs[0].dtype, copy=False)


def _clip_lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    (x,) = ins
    bounds = _clip_bounds(x.dtype, attrs)

    def value(i):
        v = x.load(i)
        if "min" in bounds:
            v = Binary("max", v, const(bounds["min"], x.dtype))
        if "max" in bounds:
            v = Binary("min", v, const(bounds["max"], x.dtype))
        return v

    return loop_nest(out.shape, names, lambda i: [store(out, i, value(i))])


register(OpDef(
    "clip", 1, "elementwise", _CLIP_ATTRS, _clip_infer, _clip_reference, _clip_lower,
    "minimum(maximum(x, min), max), as numpy.clip (also for min > max); NaN stays NaN.",
    "clip(x, min=-inf, max=inf) -> same shape"))


# ---------------------------------------------------------------------------------------------
# where and comparisons


def _where_infer(types, attrs):
    cond, a, b = types
    if cond.dtype != "bool":
        raise OpTypeError(f"'where' takes a bool condition, got {cond}", arg=0,
                          hint="compare to get one, e.g. ne(x, 0)")
    if a.dtype != b.dtype:
        raise OpTypeError(f"'where' operands have different dtypes: {a} and {b}", arg=2,
                          hint='convert one with cast(x, dtype="...")')
    shape = cond.shape
    for i, t in enumerate((a, b), 1):
        shape = broadcast_shapes(shape, t.shape)
        if shape is None:
            raise OpTypeError(f"cannot broadcast {cond}, {a} and {b} for 'where'", arg=i,
                              hint=broadcast_hint(cond, a, b))
    return TensorType(a.dtype, shape)


def _where_lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    def body(i):
        cond, a, b = (x.load(broadcast_indices(i, x.shape, out.shape)) for x in ins)
        return [store(out, i, Select(cond, a, b))]

    return loop_nest(out.shape, names, body)


register(OpDef(
    "where", 3, "elementwise", (), _where_infer, lambda xs, attrs: np.where(*xs), _where_lower,
    "a where cond is true, else b; the three broadcast like numpy.where.",
    "where(cond: bool, a, b) -> broadcast(cond, a, b)"))


def _comparison(name: str, doc: str, np_fn) -> OpDef:
    def infer(types, attrs):
        same_dtype(types, name, "any")
        a, b = types
        shape = broadcast_shapes(a.shape, b.shape)
        if shape is None:
            raise OpTypeError(f"cannot broadcast {a} and {b} for '{name}'",
                              hint=broadcast_hint(a, b))
        return TensorType("bool", shape)

    lower = broadcast_lowering(lambda va, vb: Compare(name, va, vb))
    return register(OpDef(name, 2, "elementwise", (), infer, lambda xs, attrs: np_fn(*xs),
                          lower, doc, f"{name}(a, b) -> bool broadcast(a, b)"))


_comparison("eq", "a == b with numpy broadcasting, as bool (NaN equals nothing).", np.equal)
_comparison("ne", "a != b with numpy broadcasting, as bool (NaN differs from everything).",
            np.not_equal)
_comparison("lt", "a < b with numpy broadcasting, as bool (false where either is NaN).", np.less)
_comparison("le", "a <= b with numpy broadcasting, as bool (false where either is NaN).",
            np.less_equal)
_comparison("gt", "a > b with numpy broadcasting, as bool (false where either is NaN).",
            np.greater)
_comparison("ge", "a >= b with numpy broadcasting, as bool (false where either is NaN).",
            np.greater_equal)
