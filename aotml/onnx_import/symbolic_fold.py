"""Shape computations over symbolic dims, folded at import.

Exporters compute reshape targets from `Shape` at run time (`x.view(x.size(0), -1)`, the
head split of nn.MultiheadAttention). When a graph input has a dynamic dim, aotml knows that dim
as a symbol (`batch`), so `Shape` gives a constant whose entries are ints or `Sym`s: a numpy
array of dtype object. The ops that shape code uses on it (Gather, Slice, Concat, Unsqueeze,
Squeeze, Reshape, Cast to an integer type, Add/Sub/Mul/Div/Neg, Equal and Where where the answer
does not depend on the symbol's value, ReduceProd, Expand, Identity) are evaluated here with numpy
on object arrays, and a result with no symbol left becomes a plain int64 array again.
`ConstantOfShape` of a symbolic shape becomes a `broadcast_to` node. Anything else on a symbolic
shape is an import error that names the node: a symbol's value is never guessed.
"""

from __future__ import annotations

import math

import numpy as np

from aotml.graph.symbolic import Sym, SymbolicError
from aotml.onnx_import.reader import OnnxImportError

INT_TYPES = {6, 7, 12, 13}  # INT32, INT64, UINT32, UINT64


def is_symbolic(array) -> bool:
    return isinstance(array, np.ndarray) and array.dtype == object


def symbolic_array(dims) -> np.ndarray:
    """An int64 array of `dims`, or an object array where some dim is a Sym."""
    dims = list(dims)
    if not any(isinstance(d, Sym) for d in dims):
        return np.asarray(dims, dtype=np.int64)
    out = np.empty(len(dims), dtype=object)
    out[:] = [d if isinstance(d, Sym) else int(d) for d in dims]
    return out


def settle(array: np.ndarray) -> np.ndarray:
    """An object array with no Sym left becomes int64 (and folds the ordinary way again)."""
    if not is_symbolic(array) or any(isinstance(v, Sym) for v in array.flat):
        return array
    return np.asarray([int(v) for v in array.flat], dtype=np.int64).reshape(array.shape)


def _obj(array: np.ndarray) -> np.ndarray:
    if is_symbolic(array):
        return array
    if array.dtype.kind not in "iu":
        raise SymbolicError(f"mixes symbolic dims with {array.dtype} values")
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [int(v) for v in array.flat]
    return out


def _ints(array, what: str) -> list[int]:
    if array is None:
        return []
    if is_symbolic(array) or array.dtype.kind not in "iu":
        raise SymbolicError(f"its {what} must be constant integers")
    return [int(v) for v in np.ravel(array)]


def _decided_equal(a, b) -> bool:
    diff = a - b
    if isinstance(diff, Sym):
        if diff.always_positive or (-diff).always_positive:
            return False
        raise SymbolicError(f"whether {a} == {b} depends on the run-time value")
    return diff == 0


def _div(a, b):
    if isinstance(a, Sym) or isinstance(b, Sym):
        return a // b  # exact division only (raises otherwise)
    q = abs(a) // abs(b)  # ONNX integer Div truncates toward zero
    return q if (a >= 0) == (b >= 0) else -q


def _slice(x, starts, ends, axes, steps):
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a % x.ndim] = slice(s, e, st)
    return x[tuple(index)]


def _unsqueeze(x, axes):
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = np.expand_dims(x, a)
    return x


def _reshape(x, shape, allowzero):
    shape = [x.shape[k] if d == 0 and not allowzero else d for k, d in enumerate(shape)]
    return x.reshape(shape)


def _cast(args, attrs):
    if int(attrs["to"]) not in INT_TYPES:
        raise SymbolicError("a symbolic dim cast to a non-integer type")
    return args[0]


def _elementwise(fn):
    vec = np.frompyfunc(fn, 2, 1)
    return lambda args, attrs: vec(_obj(args[0]), _obj(args[1]))


def _arg(args, k):
    return args[k] if k < len(args) else None


def _gather(args, attrs):
    idx = args[1]
    index = _ints(idx, "indices")
    index = np.asarray(index).reshape(idx.shape) if idx.ndim else index[0]
    return np.take(_obj(args[0]), index, axis=int(attrs.get("axis", 0)))


def _where(args, attrs):
    if is_symbolic(args[0]):
        raise SymbolicError("its condition holds symbolic dims")
    return np.where(args[0], _obj(args[1]), _obj(args[2]))


def _reduce_prod(args, attrs):
    x = _obj(args[0])
    axes = _ints(_arg(args, 1), "axes") or list(attrs.get("axes", ()))
    if attrs.get("noop_with_empty_axes", 0) and not axes:
        return x
    return np.multiply.reduce(x, axis=tuple(axes) if axes else None,
                              keepdims=bool(attrs.get("keepdims", 1)), initial=1)


def _axes(args, attrs):
    return _ints(args[1], "axes") if _arg(args, 1) is not None else \
        [int(a) for a in attrs.get("axes", ())]


# op -> (const inputs, None where left out; attributes) -> array
_FOLD = {
    "Identity": lambda args, attrs: args[0],
    "Cast": _cast,
    "Neg": lambda args, attrs: np.frompyfunc(lambda v: -v, 1, 1)(_obj(args[0])),
    "Add": _elementwise(lambda a, b: a + b),
    "Sub": _elementwise(lambda a, b: a - b),
    "Mul": _elementwise(lambda a, b: a * b),
    "Div": _elementwise(_div),
    "Equal": lambda args, attrs: np.frompyfunc(_decided_equal, 2, 1)(
        _obj(args[0]), _obj(args[1])).astype(bool),
    "Where": _where,
    "Gather": _gather,
    "Slice": lambda args, attrs: _slice(
        args[0], _ints(args[1], "starts"), _ints(args[2], "ends"),
        _ints(_arg(args, 3), "axes"), _ints(_arg(args, 4), "steps")),
    "Concat": lambda args, attrs: np.concatenate([_obj(a) for a in args],
                                                 axis=int(attrs["axis"])),
    "Unsqueeze": lambda args, attrs: _unsqueeze(args[0], _axes(args, attrs)),
    "Squeeze": lambda args, attrs: np.squeeze(
        args[0], axis=tuple(_axes(args, attrs)) or None),
    "Reshape": lambda args, attrs: _reshape(args[0], _ints(args[1], "shape"),
                                            attrs.get("allowzero", 0)),
    "Expand": lambda args, attrs: np.broadcast_to(
        args[0], np.broadcast_shapes(args[0].shape, tuple(_ints(args[1], "shape")))).copy(),
    "ReduceProd": _reduce_prod,
    "Flatten": lambda args, attrs: args[0].reshape(
        (math.prod(args[0].shape[:int(attrs.get("axis", 1))]), -1)),
}


def fold_symbolic(imp, node, ins, attrs) -> list:
    """Evaluate `node` on constant inputs of which one or more holds symbolic dims: a
    constant (int64 again when no symbol is left) or, for ConstantOfShape, a graph value."""
    args = [t.const if t is not None else None for t in ins]
    try:
        if node.op_type == "ConstantOfShape":
            return [_constant_of_shape(imp, args[0], attrs)]
        if node.op_type not in _FOLD:
            raise SymbolicError(f"{node.op_type} is not supported on a shape with symbolic "
                                "dims")
        out = np.asarray(_FOLD[node.op_type](args, attrs))
    except (SymbolicError, ValueError, IndexError, TypeError) as e:
        raise OnnxImportError(f"{imp.where}: a shape computation on symbolic dims: {e}",
                              hint="export the model with static shapes for these dims") \
            from None
    return [settle(out)]


def _constant_of_shape(imp, shape, attrs):
    from aotml.onnx_import.convert import _T, _writable_dims

    dims = [d if isinstance(d, Sym) else int(d) for d in shape.flat]
    value = attrs.get("value")
    if value is not None:
        from onnx import numpy_helper
        fill = numpy_helper.to_array(value).reshape(())
    else:
        fill = np.zeros((), np.float32)
    scalar = imp.tensor(_T(const=np.asarray(fill)), "fill")
    return imp.node("broadcast_to", [scalar], {"shape": _writable_dims(imp, dims)})
