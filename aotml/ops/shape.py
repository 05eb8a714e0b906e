"""Shape and data-movement ops: reshape, transpose, broadcast_to, concat, slice, gather, pad,
squeeze, unsqueeze.

Every op here copies elements without arithmetic on them, so it takes every dtype: values are
read with `Operand.load` and written with `store`, which is exact (f16/bf16 widen to f32 and
round back to themselves). Each lowering is a loop nest over the output that maps the output's
indices to the input's with i64 index arithmetic (concat loops over each input instead, writing
its part of the output). Optional tuple attributes default to `()`, which means "not given"
(the graph printer and passes see a plain tuple, never None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from aotml.errors import RunError
from aotml.graph.ir import DTYPES, FLOATS, INTS, TensorType, format_attr
from aotml.graph.symbolic import Sym, SymbolicError
from aotml.loops.build import Names, Operand, cast, const, idx, loop_nest, store
from aotml.loops.ir import INDEX, Assert, Binary, Buffer, Compare, Expr, Local, Select, Unary
from aotml.ops.core import normalize_axis, same_dtype
from aotml.ops.registry import Attr, OpDef, OpTypeError, register

# ---------------------------------------------------------------------------------------------
# Index arithmetic: i64 expressions, with the trivial cases folded so dumps stay readable.


def _add(a: Expr, b: Expr) -> Expr:
    if _is_zero(a):
        return b
    if _is_zero(b):
        return a
    return Binary("add", a, b)


def _mul(a: Expr, k: int) -> Expr:
    if k == 1 or _is_zero(a):
        return a
    return Binary("mul", a, idx(k))


def _is_zero(e: Expr) -> bool:
    return getattr(e, "dtype", None) == INDEX and getattr(e, "value", None) == 0


def _gather_from(out: Buffer, x: Operand, in_indices, names: Names) -> list:
    """Loops over `out` storing x at `in_indices(output indices)`: the lowering of every op
    here whose input index is a function of the output index alone."""
    return loop_nest(out.shape, names, lambda i: [store(out, i, x.load(in_indices(list(i))))])


def _axes(axes: Sequence[int], rank: int, op: str, attr: str = "axes") -> tuple[int, ...]:
    """Axes normalized to 0..rank-1, each in range and named once."""
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise OpTypeError(f"'{op}': axis {a} is out of range for rank {rank} "
                              f"(valid: {-rank}..{rank - 1})", attr=attr)
        if a % rank in out:
            raise OpTypeError(f"'{op}': axis {a % rank} is named twice in "
                              f"{attr}={format_attr(tuple(axes))}", attr=attr)
        out.append(a % rank)
    return tuple(out)


def _shape_attr(shape: Sequence[int], op: str) -> None:
    for d in shape:
        if isinstance(d, int) and d < 1:
            raise OpTypeError(f"'{op}': every dim of shape={format_attr(tuple(shape))} must be "
                              "positive (zero-size tensors are not supported)", attr="shape")


# ---------------------------------------------------------------------------------------------
# reshape


def _reshape_target(x: TensorType, shape: tuple[int, ...]) -> tuple[int, ...]:
    if shape.count(-1) > 1:
        raise OpTypeError(f"'reshape': at most one dim may be -1, got shape={format_attr(shape)}",
                          attr="shape")
    if any(isinstance(d, int) and (d == 0 or d < -1) for d in shape):
        raise OpTypeError(f"'reshape': dims must be positive or -1 (inferred), got "
                          f"shape={format_attr(shape)}", attr="shape",
                          hint="zero-size tensors are not supported; 0 does not mean "
                               "'copy this dim' here")
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if x.numel % known:
            raise OpTypeError(f"cannot reshape {x} ({x.numel} elements) to {format_attr(shape)}: "
                              f"{x.numel} is not a multiple of {known}", attr="shape")
        shape = tuple(x.numel // known if d == -1 else d for d in shape)
    elif known != x.numel:
        raise OpTypeError(f"cannot reshape {x} ({x.numel} elements) to {format_attr(shape)} "
                          f"({known} elements)", attr="shape")
    return shape


def _reshape_infer(types, attrs):
    dtype = same_dtype(types, "reshape", "any")
    return TensorType(dtype, _reshape_target(types[0], attrs["shape"]))


def _reshape_lower(out: Buffer, ins, attrs, names: Names):
    (x,) = ins
    in_shape = x.shape
    in_strides = [math.prod(in_shape[k + 1:]) for k in range(len(in_shape))]

    def in_indices(i):
        # flat row-major position of the output element, unflattened into x's dims
        flat: Expr = idx(0)
        for v, stride in zip(i, out.strides):
            flat = _add(flat, _mul(v, stride))
        result = []
        for k, (d, stride) in enumerate(zip(in_shape, in_strides)):
            if d == 1:
                result.append(idx(0))
                continue
            e = flat if stride == 1 else Binary("idiv", flat, idx(stride))
            # flat < numel, so the quotient by the first stride is already below dim 0
            result.append(e if k == 0 else Binary("irem", e, idx(d)))
        return result

    return _gather_from(out, x, in_indices, names)


register(OpDef(
    "reshape", 1, "movement", (Attr("shape", "dims"),), _reshape_infer,
    lambda xs, attrs: np.reshape(xs[0], attrs["shape"]),
    _reshape_lower,
    "The same elements in row-major order under a new shape; one dim may be -1 (inferred).",
    "reshape(x, shape=(d0, d1, ...)) -> [d0, d1, ...]"))


# ---------------------------------------------------------------------------------------------
# transpose


def _perm(rank: int, perm: tuple[int, ...]) -> tuple[int, ...]:
    """The normalized permutation; `()` (not given) reverses the axes."""
    if not perm:
        return tuple(reversed(range(rank)))
    if len(perm) != rank:
        raise OpTypeError(f"'transpose': perm={format_attr(perm)} has {len(perm)} entries for "
                          f"a tensor of rank {rank}", attr="perm")
    normal = tuple(p % rank if -rank <= p < rank else p for p in perm)
    if sorted(normal) != list(range(rank)):
        raise OpTypeError(f"'transpose': perm={format_attr(perm)} is not a permutation of "
                          f"0..{rank - 1}", attr="perm")
    return normal


def _transpose_infer(types, attrs):
    (x,) = types
    perm = _perm(x.rank, attrs["perm"])
    return TensorType(same_dtype(types, "transpose", "any"), tuple(x.shape[p] for p in perm))


def _transpose_lower(out: Buffer, ins, attrs, names: Names):
    (x,) = ins
    perm = _perm(len(x.shape), attrs["perm"])

    def in_indices(i):
        # output axis k is input axis perm[k]
        result = [None] * len(perm)
        for k, p in enumerate(perm):
            result[p] = i[k]
        return result

    return _gather_from(out, x, in_indices, names)


register(OpDef(
    "transpose", 1, "movement", (Attr("perm", "ints", ()),), _transpose_infer,
    # contiguous copies: the interpreter's results keep a view's memory order otherwise
    lambda xs, attrs: np.array(np.transpose(xs[0], _perm(xs[0].ndim, attrs["perm"])), order="C"),
    _transpose_lower,
    "Permute the axes: output axis k is input axis perm[k]; without perm, reverse them.",
    "transpose(x, perm=(p0, p1, ...)) -> [x.shape[p0], x.shape[p1], ...]"))


# ---------------------------------------------------------------------------------------------
# broadcast_to


def _broadcast_to_infer(types, attrs):
    (x,) = types
    shape = attrs["shape"]
    _shape_attr(shape, "broadcast_to")
    lead = len(shape) - x.rank
    hint = ("shapes are aligned on the right; each dim of x must equal the target's or be 1, "
            "and the target may add leading dims")
    if lead < 0:
        raise OpTypeError(f"cannot broadcast {x} to {format_attr(shape)}: the target has "
                          "fewer dims", attr="shape", hint=hint)
    for k, d in enumerate(x.shape):
        if d not in (1, shape[lead + k]):
            raise OpTypeError(f"cannot broadcast {x} to {format_attr(shape)}: dim {k} is {d}, "
                              f"the target's is {shape[lead + k]}", attr="shape", hint=hint)
    return TensorType(same_dtype(types, "broadcast_to", "any"), shape)


def _broadcast_to_lower(out: Buffer, ins, attrs, names: Names):
    (x,) = ins
    lead = len(out.shape) - len(x.shape)
    return _gather_from(out, x, lambda i: [idx(0) if d == 1 else i[lead + k]
                                           for k, d in enumerate(x.shape)], names)


register(OpDef(
    "broadcast_to", 1, "movement", (Attr("shape", "dims"),), _broadcast_to_infer,
    lambda xs, attrs: np.broadcast_to(xs[0], attrs["shape"]).copy(),
    _broadcast_to_lower,
    "Repeat x along its size-1 and new leading dims to `shape` (numpy broadcasting).",
    "broadcast_to(x, shape=(...)) -> shape"))


# ---------------------------------------------------------------------------------------------
# concat


def _concat_infer(types, attrs):
    dtype = same_dtype(types, "concat", "any")
    first = types[0]
    for i, t in enumerate(types):
        if t.rank == 0:
            raise OpTypeError(f"'concat' takes tensors of rank 1 or more, got {t}", arg=i,
                              hint="make it 1-D with unsqueeze(x, axes=0)")
    axis = normalize_axis(attrs["axis"], first.rank)
    for i, t in enumerate(types[1:], 1):
        if t.rank != first.rank or any(a != b for k, (a, b) in enumerate(zip(t.shape, first.shape))
                                       if k != axis):
            raise OpTypeError(f"'concat' along axis {axis}: {t} does not match {first} "
                              f"(the shapes must agree except along axis {axis})", arg=i)
    size = sum(t.shape[axis] for t in types)
    return TensorType(dtype, first.shape[:axis] + (size,) + first.shape[axis + 1:])


def _concat_lower(out: Buffer, ins, attrs, names: Names):
    # one loop nest per input, writing its block of the output shifted along the axis
    axis = attrs["axis"] % len(out.shape)
    stmts, offset = [], 0
    for x in ins:
        def body(i, x=x, offset=offset):
            at = list(i)
            at[axis] = _add(at[axis], idx(offset))
            return [store(out, at, x.load(i))]

        stmts += loop_nest(x.shape, names, body)
        offset += x.shape[axis]
    return stmts


register(OpDef(
    "concat", (1, None), "movement", (Attr("axis", "int", 0),), _concat_infer,
    lambda xs, attrs: np.concatenate(xs, axis=attrs["axis"]),
    _concat_lower,
    "Join tensors along an existing axis; the other dims must agree.",
    "concat(x0, x1, ..., axis=0) -> x0's shape with dim `axis` the sum of theirs"))


# ---------------------------------------------------------------------------------------------
# slice


def _slice_plan(x: TensorType, attrs) -> dict[int, tuple[int, int, int]]:
    """axis -> (first index, step, length) for each sliced axis, with ONNX/numpy clamping."""
    starts, ends, axes, steps = (attrs[k] for k in ("starts", "ends", "axes", "steps"))
    n = len(starts)
    for name, value in (("ends", ends), ("axes", axes), ("steps", steps)):
        if (value or name == "ends") and len(value) != n:
            raise OpTypeError(f"'slice': {name}={format_attr(value)} has {len(value)} entries but "
                              f"starts={format_attr(starts)} has {n}", attr=name)
    if not axes and n > x.rank:
        raise OpTypeError(f"'slice' of {x}: starts={format_attr(starts)} has {n} entries, more "
                          f"than its {x.rank} dims", attr="starts")
    axes = _axes(axes or tuple(range(n)), x.rank, "slice")
    steps = steps or (1,) * n
    plan = {}
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise OpTypeError(f"'slice': step 0 along axis {axis} (steps={format_attr(steps)})",
                              attr="steps")
        # Python's slice.indices applies numpy's (and ONNX's) rules: negative values count
        # from the end, then clamp to [0, dim] for positive steps, [-1, dim-1] for negative
        first, stop, step = slice(start, end, step).indices(x.shape[axis])
        length = len(range(first, stop, step))
        if length == 0:
            raise OpTypeError(f"'slice' of {x} is empty along axis {axis} (start {start}, end "
                              f"{end}, step {step})", attr="starts",
                              hint="zero-size tensors are not supported")
        plan[axis] = (first, step, length)
    return plan


def _slice_infer(types, attrs):
    (x,) = types
    dtype = same_dtype(types, "slice", "any")
    plan = _slice_plan(x, attrs)
    return TensorType(dtype, tuple(plan[k][2] if k in plan else d for k, d in enumerate(x.shape)))


def _slice_reference(xs, attrs):
    x = xs[0]
    n = len(attrs["starts"])
    axes = [a % x.ndim for a in attrs["axes"] or range(n)]
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, attrs["starts"], attrs["ends"],
                                      attrs["steps"] or (1,) * n):
        index[axis] = slice(start, end, step)
    return np.array(x[tuple(index)], order="C")  # (not ascontiguousarray: it makes 0-d 1-d)


def _slice_lower(out: Buffer, ins, attrs, names: Names):
    (x,) = ins
    plan = _slice_plan(TensorType(out.dtype, x.shape), attrs)

    def in_indices(i):
        # element j along a sliced axis is first + j * step (never out of range: see the plan)
        return [_add(idx(plan[k][0]), _mul(v, plan[k][1])) if k in plan else v
                for k, v in enumerate(i)]

    return _gather_from(out, x, in_indices, names)


register(OpDef(
    "slice", 1, "movement",
    (Attr("starts", "ints"), Attr("ends", "ints"), Attr("axes", "ints", ()),
     Attr("steps", "ints", ())),
    _slice_infer, _slice_reference, _slice_lower,
    "x[start:end:step] along the given axes (ONNX Slice = numpy slicing: negative values count "
    "from the end, out-of-range ones clamp); axes default to 0, 1, ..., steps to 1.",
    "slice(x, starts=(...), ends=(...), axes=(...), steps=(...)) -> x sliced"))


# ---------------------------------------------------------------------------------------------
# gather


def _gather_infer(types, attrs):
    x, indices = types
    dtype = same_dtype(types[:1], "gather", "any")
    if indices.dtype not in INTS:
        raise OpTypeError(f"'gather' indices must be i32 or i64, got {indices}", arg=1,
                          hint='convert them with cast(indices, dtype="i64")')
    if x.rank == 0:
        raise OpTypeError(f"'gather' takes a tensor of rank 1 or more, got {x}", arg=0)
    axis = normalize_axis(attrs["axis"], x.rank)
    return TensorType(dtype, x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def _range_message(n: int) -> str:
    return f"gather index out of range [{-n}, {n - 1}]"


def _gather_reference(xs, attrs):
    x, indices = xs
    axis = attrs["axis"] % x.ndim
    n = x.shape[axis]
    if np.any((indices < -n) | (indices >= n)):
        raise RunError(_range_message(n))
    return np.take(x, indices, axis=axis)


def _gather_lower(out: Buffer, ins, attrs, names: Names):
    x, indices = ins
    axis = attrs["axis"] % len(x.shape)
    n, rank = x.shape[axis], len(indices.shape)

    def body(i):
        raw, j = names.var("g", INDEX), names.var("j", INDEX)
        wrapped = Select(Compare("lt", raw, idx(0)), Binary("add", raw, idx(n)), raw)
        inside = Binary("and", Compare("ge", j, idx(0)), Compare("lt", j, idx(n)))
        at = list(i[:axis]) + [j] + list(i[axis + rank:])
        return [Local(raw, cast(indices.load(i[axis:axis + rank]), INDEX)),
                Local(j, wrapped),
                # checked before x is read, so an index out of range never reads out of bounds
                Assert(inside, _range_message(n)),
                store(out, i, x.load(at))]

    return loop_nest(out.shape, names, body)


register(OpDef(
    "gather", 2, "movement", (Attr("axis", "int", 0),), _gather_infer,
    _gather_reference, _gather_lower,
    "Pick entries of x along an axis by integer indices (negative count from the end); an index "
    "out of range fails the run.",
    "gather(x, indices: i32|i64, axis=0) -> x.shape[:axis] + indices.shape + "
    "x.shape[axis+1:]"))


# ---------------------------------------------------------------------------------------------
# pad


def _pad_value(value: float, dtype: str) -> float | int | bool:
    """The constant `value` exactly as `dtype` holds it; an error when it does not fit."""
    if dtype in FLOATS:
        with np.errstate(over="ignore"):
            held = float(np.array(value).astype(DTYPES[dtype]))
        if math.isinf(held) and not math.isinf(value):
            raise OpTypeError(f"'pad' value {value} overflows {dtype}", attr="value")
        return held
    if dtype == "bool":
        if value not in (0.0, 1.0):
            raise OpTypeError(f"'pad' value {value} is not a bool (0 or 1)", attr="value")
        return bool(value)
    info = np.iinfo(DTYPES[dtype])
    if not (math.isfinite(value) and value.is_integer() and info.min <= value <= info.max):
        raise OpTypeError(f"'pad' value {value} is not an integer that {dtype} holds",
                          attr="value")
    return int(value)


def _pad_infer(types, attrs):
    (x,) = types
    dtype = same_dtype(types, "pad", "any")
    pads, mode = attrs["pads"], attrs["mode"]
    if len(pads) != 2 * x.rank:
        raise OpTypeError(f"'pad' of {x} needs {2 * x.rank} pads (begin_0, ..., "
                          f"begin_{x.rank - 1}, end_0, ..., end_{x.rank - 1}), got "
                          f"{len(pads)}", attr="pads")
    if any(p < 0 for p in pads):
        raise OpTypeError(f"'pad': pads={format_attr(pads)} must be non-negative", attr="pads",
                          hint="to cut a tensor use slice")
    for k, d in enumerate(x.shape):
        begin, end = pads[k], pads[x.rank + k]
        if mode == "reflect" and max(begin, end) >= d:
            raise OpTypeError(f"'pad' mode \"reflect\" needs pads below the dim: axis {k} of "
                              f"{x} has {d}, pads {begin} and {end}", attr="pads",
                              hint='mode "edge" repeats the border for any amount')
    if mode == "constant":
        _pad_value(attrs["value"], dtype)
    shape = tuple(d + pads[k] + pads[x.rank + k] for k, d in enumerate(x.shape))
    return TensorType(dtype, shape)


def _pad_reference(xs, attrs):
    x = xs[0]
    rank, pads, mode = x.ndim, attrs["pads"], attrs["mode"]
    widths = [(pads[k], pads[rank + k]) for k in range(rank)]
    if rank == 0:  # nothing to pad (np.pad rejects an empty pad_width)
        return x.copy()
    if mode != "constant":
        return np.pad(x, widths, mode=mode)
    value = attrs["value"]
    # integer and bool arrays arrive as themselves; floats widened, so rounding happens once
    # when the interpreter settles the result to the declared dtype
    if x.dtype == np.bool_:
        value = bool(value)
    elif x.dtype.kind in "iu":
        value = int(value)
    return np.pad(x, widths, mode="constant", constant_values=value)


def _pad_lower(out: Buffer, ins, attrs, names: Names):
    (x,) = ins
    rank, pads, mode = len(x.shape), attrs["pads"], attrs["mode"]

    def body(i):
        inside: Expr | None = None
        at = []
        for k, d in enumerate(x.shape):
            if pads[k] == 0 and pads[rank + k] == 0:
                at.append(i[k])
                continue
            p = Binary("sub", i[k], idx(pads[k])) if pads[k] else i[k]
            if mode == "reflect":
                # numpy 'reflect' (the border is not repeated); pads < d, so one fold suffices:
                # |p| folds the start, then (d-1) - |(d-1) - q| folds the end
                top = idx(d - 1)
                at.append(Binary("sub", top, Unary("abs", Binary("sub", top, Unary("abs", p)))))
                continue
            # edge: the nearest element; also the (discarded, but in-bounds) read for constant
            at.append(Binary("min", Binary("max", p, idx(0)), idx(d - 1)))
            if mode == "constant":
                ok = Binary("and", Compare("ge", p, idx(0)), Compare("lt", p, idx(d)))
                inside = ok if inside is None else Binary("and", inside, ok)
        value = x.load(at)
        if inside is not None:
            value = Select(inside, value, const(_pad_value(attrs["value"], out.dtype),
                                                out.dtype))
        return [store(out, i, value)]

    return loop_nest(out.shape, names, body)


register(OpDef(
    "pad", 1, "movement",
    (Attr("pads", "ints"), Attr("mode", "str", "constant", ("constant", "reflect", "edge")),
     Attr("value", "float", 0.0)),
    _pad_infer, _pad_reference, _pad_lower,
    "Grow each dim by pads (ONNX order: all begins, then all ends), filled with `value` "
    "(constant), the mirror image without the border (reflect), or the border (edge).",
    'pad(x, pads=(b0, ..., e0, ...), mode="constant", value=0.0) -> [d0 + b0 + e0, ...]'))


# ---------------------------------------------------------------------------------------------
# squeeze and unsqueeze


def _squeezed(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """The axes squeeze removes (checked by infer); `()` (not given) means every size-1 dim."""
    if not axes:
        symbolic = [d for d in shape if isinstance(d, Sym)]
        if symbolic:  # it is removed exactly when it is 1 at run time: the rank would vary
            raise SymbolicError(f"whether {symbolic[0]} is a size-1 dim to remove is known "
                                "only at run time (name the axes to squeeze)")
        return tuple(k for k, d in enumerate(shape) if d == 1)
    return tuple(a % len(shape) for a in axes)


def _squeeze_infer(types, attrs):
    (x,) = types
    for a in _axes(attrs["axes"], x.rank, "squeeze"):
        if x.shape[a] != 1:
            raise OpTypeError(f"'squeeze': axis {a} of {x} has size {x.shape[a]}, not 1",
                              attr="axes")
    gone = _squeezed(x.shape, attrs["axes"])
    return TensorType(same_dtype(types, "squeeze", "any"),
                      tuple(d for k, d in enumerate(x.shape) if k not in gone))


def _squeeze_lower(out: Buffer, ins, attrs, names: Names):
    (x,) = ins
    gone = _squeezed(x.shape, attrs["axes"])

    def in_indices(i):
        rest = iter(i)
        return [idx(0) if k in gone else next(rest) for k in range(len(x.shape))]

    return _gather_from(out, x, in_indices, names)


register(OpDef(
    "squeeze", 1, "movement", (Attr("axes", "ints", ()),), _squeeze_infer,
    lambda xs, attrs: np.squeeze(xs[0], axis=_squeezed(xs[0].shape, attrs["axes"])),
    _squeeze_lower,
    "Remove size-1 dims: the given axes (each must be 1), or all of them.",
    "squeeze(x, axes=(...)) -> x's shape without those dims"))


def _unsqueeze_infer(types, attrs):
    (x,) = types
    axes = attrs["axes"]
    if not axes:
        raise OpTypeError("'unsqueeze' needs at least one axis", attr="axes")
    new = _axes(axes, x.rank + len(axes), "unsqueeze")
    rest = iter(x.shape)
    shape = tuple(1 if k in new else next(rest) for k in range(x.rank + len(new)))
    return TensorType(same_dtype(types, "unsqueeze", "any"), shape)


def _unsqueeze_lower(out: Buffer, ins, attrs, names: Names):
    (x,) = ins
    # the output's new size-1 axes have no counterpart in x: drop their indices
    new = {a % len(out.shape) for a in attrs["axes"]}
    return _gather_from(out, x, lambda i: [v for k, v in enumerate(i) if k not in new], names)


register(OpDef(
    "unsqueeze", 1, "movement", (Attr("axes", "ints"),), _unsqueeze_infer,
    lambda xs, attrs: np.expand_dims(xs[0], attrs["axes"]),
    _unsqueeze_lower,
    "Insert size-1 dims at the given positions of the output (ONNX Unsqueeze).",
    "unsqueeze(x, axes=(...)) -> x's shape with 1 at each of axes"))
