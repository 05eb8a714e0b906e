"""Contractions, reductions over any axes, and normalizations.

Contractions (`matmul`, `linear`) and the sums inside reductions and normalizations accumulate in
the compute dtype: f32 for f32/f16/bf16, the integer type itself (wrapping, as numpy) for
integers. A narrow float output never holds partial sums; it is rounded once, at the end.
Normalizations compute their statistics in f32 in separate passes (the mean first, then the
variance around it), which costs a pass over the data and buys accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from aotml.graph.ir import FLOATS, TensorType, format_attr
from aotml.graph.symbolic import product
from aotml.loops.build import (
    Names,
    Operand,
    as_f32,
    broadcast_indices,
    compute_dtype,
    const,
    lane_sum,
    lane_tree,
    loop_nest,
    store,
    vector_of,
    with_axis,
)
from aotml.loops.fold import MAX_POINTS
from aotml.loops.ir import (
    INDEX,
    Assign,
    Binary,
    Buffer,
    Compare,
    Const,
    Expr,
    For,
    Lane,
    Load,
    Local,
    MulAdd,
    Select,
    Splat,
    Store,
    Unary,
    Var,
    VecLoad,
    vector_dtype,
)
from aotml.ops.core import broadcast_shapes, normalize_axis, same_dtype
from aotml.ops.registry import Attr, OpDef, OpTypeError, register


def _one_axis(name: str, x: TensorType, axis: int) -> int:
    """normalize_axis, with a plainer message for a scalar, which has no axis to pick."""
    if x.rank == 0:
        raise OpTypeError(f"'{name}' works along an axis: it takes a tensor of rank 1 or more, "
                          f"got {x}", arg=0)
    return normalize_axis(axis, x.rank)


# ---------------------------------------------------------------------------------------------
# Contractions


def _matmul_infer(types, attrs):
    dtype = same_dtype(types, "matmul", "numeric")
    a, b = types
    for i, t in enumerate(types):
        if t.rank < 2:
            raise OpTypeError(f"'@' takes operands of rank 2 or more (matrices, or stacks of "
                              f"them), got {t}", arg=i,
                              hint="reshape a vector to [1, K] or [K, 1]: reshape(v, shape=(1, K))")
    if a.shape[-1] != b.shape[-2]:
        raise OpTypeError(f"'@' inner dimensions differ: {a} @ {b} "
                          f"({a.shape[-1]} != {b.shape[-2]})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if batch is None:
        raise OpTypeError(f"'@' batch dimensions do not broadcast: {a} @ {b} "
                          f"({list(a.shape[:-2])} vs {list(b.shape[:-2])})",
                          hint="the dims before the last two are aligned on the right; each "
                               "pair must be equal or one of them 1")
    return TensorType(dtype, batch + (a.shape[-2], b.shape[-1]))


# The register tile: TILE_ROWS rows x VECTORS vectors of the target's widest f32 vector (2 x 8
# columns with AVX2, 2 x 16 with AVX-512, 2 x 4 with NEON) of accumulators held in registers
# across the whole k loop; each step of k loads VECTORS vectors of b, broadcasts TILE_ROWS
# values of a, and issues TILE_ROWS * VECTORS vector multiply-adds. Without a vector width (a
# GPU's lowering) the tile is TILE_ROWS x SCALAR_COLS scalar accumulators.
TILE_ROWS, VECTORS, SCALAR_COLS = 4, 2, 16
# Rows per cache block of a big matmul, and the fewest rows for which b is packed (see
# tiled_matmul).
BLOCK_ROWS = 64
# A matrix-vector product (m = 1, a model at batch 1) streams a weight from L2/L3 once per
# call: through packed panels, each wide tile reads 4 contiguous streams, where b's rows put
# its 512 bytes a row stride apart. MLP 784-512-512-10 at batch 1 on Zen 4, 2026-12-07
# (benchmarks/kernel_times.py, 9 rounds): 32.9 -> 29.0 us at 1 thread, 19.9 -> 15.7 at 2.
PACK_MIN_ROWS = 32
# The fewest bytes of b for which it is packed at run time. Below this b's rows stay in cache
# however they are strided, and a copy costs more than it saves: one thread packs, and at two
# threads the other then pulls every panel line from that core's cache. Prepared calls on Zen 4,
# 2026-12-07, unpacked / packed (us, 1t and 2t): N=64 5.3/5.5, 3.2/5.3; N=112 25.1/26.5,
# 13.2/22.6; N=160 73/77, 44/52; N=256 310/297, 155/164; N=384 equal; N=512 2659/2351,
# 1307/1216; N=1024 39125/19340 (power-of-two row strides alias in the cache). A weight's
# panels are made at build time (loops/fold.py) and cost nothing at run time, but a small
# weight gains nothing from them either.
PACK_MIN_BYTES = 1 << 19
WIDE_PANELS = 4  # a one-row tile spans this many panels (8 vector accumulators)


def tile_cols(lanes: int | None) -> int:
    """The columns of a register tile, and of a packed panel of b, for a vector width."""
    return VECTORS * lanes if lanes else SCALAR_COLS


def tiled_matmul(out, a, b, at, ai, bi, m, n: int, k, names: Names,
                 pack: bool = True, out_index: Callable | None = None,
                 init: Callable | None = None) -> list:
    """Register tiles: TILE_ROWS x tile_cols(lanes) accumulators, one multiply-add each per
    step of k, every output element stored once (so an elementwise epilogue can be fused into
    the store). With `names.lanes` the accumulators are explicit vectors (loop IR `f32xL`
    locals): b's row segment is one vector load, a's element one broadcast, the step one
    vector multiply-add per accumulator, and the stores read the lanes back as scalars (LLVM
    makes them vector stores again). The n % cols last columns take a narrower tile (whole
    vectors, then scalar columns), the m % TILE_ROWS last rows one-row tiles; a symbolic m
    takes one-row tiles throughout.

    With at least PACK_MIN_ROWS rows (static), or with b a weight (`names.weights`) whose
    panels loops/fold.py will make at build time (no batch loop around them, at most
    fold.MAX_POINTS floats), so that any number of rows gains, and PACK_MIN_BYTES of b, b's
    full column panels
    are first copied into a scratch buffer, panel after panel ([n // cols, k, cols]): a tile
    then reads its K x cols panel contiguously, where in b each of its k rows lies a row stride
    apart (with a power-of-two n, all in the same few cache sets). The copy costs k*n moves
    against 2*m*k*n flops, and none at run time when b is a weight (loops/fold.py packs it at
    build time). `pack=False` reads b where it is (a caller whose b is already laid out so,
    or that needs the kernel free of shared scratch). `out_index(row, col)` places output
    element (row, col) (default: out[*at, row, col]); `init(row)` starts row's accumulators
    (default 0): the implicit-GEMM conv stores into NCHW with its bias as the start."""
    if out_index is None:
        def out_index(row, col):
            return (*at, row, col)
    lanes = names.lanes
    cols_per_tile = tile_cols(lanes)
    nt, tail = n // cols_per_tile, n % cols_per_tile
    panels = None
    stmts: list = []
    small = isinstance(k, int) and k * n * 4 < PACK_MIN_BYTES
    # a weight's panels cost nothing at run time where loops/fold.py makes them at build time:
    # a nest at the kernel's top level (no batch loop around it) of at most MAX_POINTS
    constant = b.buffer is not None and b.buffer.name in names.weights and not at and \
        isinstance(k, int) and nt * k * cols_per_tile <= MAX_POINTS
    if pack and nt >= 2 and not small and (constant or isinstance(m, int)
                                           and m >= PACK_MIN_ROWS):
        # one set of panels per matrix of a batch: the batch loop stays independent (and
        # parallel), each matrix reading only its own copy
        panels = names.scratch_buffer("panels", "f32",
                                      (*out.shape[:len(at)], nt, k, cols_per_tile))
        p, r, c = names.var("p"), names.var("k"), names.var("c")
        col = Binary("add", Binary("mul", p, Const(cols_per_tile, "i64")), c)
        copy = Store(panels, (*at, p, r, c), b.load(bi + (r, col)))
        stmts.append(For(p, nt, (For(r, k, (For(c, cols_per_tile, (copy,)),)),)))

    def tile(rows: list[Expr], cols: list[Expr], panel: Expr | None = None) -> list:
        """A tile over consecutive columns `cols`: whole vectors first, then scalars."""
        r = names.var("k")
        nvec = len(cols) // lanes if lanes else 0
        scalar_cols = cols[nvec * (lanes or 0):]
        vtype = vector_dtype(lanes) if nvec else None
        vaccs = [[names.var("vacc", vtype) for _ in range(nvec)] for _ in rows]
        accs = [[names.var("acc", "f32") for _ in scalar_cols] for _ in rows]
        starts = [init(row) if init is not None else const(0, "f32") for row in rows]
        inits = [Local(acc, Splat(start, lanes)) for start, row_accs in zip(starts, vaccs)
                 for acc in row_accs]
        inits += [Local(acc, start) for start, row_accs in zip(starts, accs) for acc in row_accs]

        def from_panel(c: int) -> tuple:  # (a wide tile spans several panels)
            return (*at, _plus(panel, c // cols_per_tile), r, Const(c % cols_per_tile, "i64"))
        packed = panel is not None and panels is not None
        b_vecs = [VecLoad(panels, from_panel(v * lanes), lanes) if packed
                  else VecLoad(b.buffer, bi + (r, cols[v * lanes]), lanes)
                  for v in range(nvec)]
        b_vals = [Load(panels, from_panel(nvec * (lanes or 0) + c)) if packed
                  else b.load(bi + (r, col)) for c, col in enumerate(scalar_cols)]
        step = []
        for t in range(len(rows)):
            a_t = a.load(ai + (rows[t], r))
            step += [Assign(acc, MulAdd(Splat(a_t, lanes), bv, acc))
                     for acc, bv in zip(vaccs[t], b_vecs)]
            step += [Assign(acc, MulAdd(a_t, bv, acc)) for acc, bv in zip(accs[t], b_vals)]
        done = [store(out, out_index(rows[t], cols[v * lanes + lane]), Lane(vaccs[t][v], lane))
                for t in range(len(rows)) for v in range(nvec) for lane in range(lanes or 0)]
        done += [store(out, out_index(rows[t], col), acc)
                 for t in range(len(rows)) for col, acc in zip(scalar_cols, accs[t])]
        return [*inits, For(r, k, tuple(step)), *done]

    def offsets(base: Expr | None, start: int, count: int) -> list[Expr]:
        def at(t):
            if base is None:
                return Const(start + t, "i64")
            return base if start + t == 0 else Binary("add", base, Const(start + t, "i64"))
        return [at(t) for t in range(count)]

    def full_tile(rows: list[Expr], jb: Expr) -> list:
        col0 = Binary("mul", jb, Const(cols_per_tile, "i64"))
        return tile(rows, offsets(col0, 0, cols_per_tile), jb)

    def across(rows: list[Expr]) -> list:
        """One block of rows, all columns: full column tiles, then the narrower tail. A single
        row takes tiles WIDE_PANELS panels wide first: a one-row tile of one panel has only
        two vector accumulators, whose FMA chains leave the FMA units idle for their latency,
        where WIDE_PANELS panels keep eight in flight (each sum still runs over k in order:
        the same bits)."""
        jb = names.var("jb")
        out_: list = []
        first = 0
        if len(rows) == 1 and nt >= WIDE_PANELS:
            jw = names.var("jw")
            col0 = Binary("mul", jw, Const(WIDE_PANELS * cols_per_tile, "i64"))
            out_.append(For(jw, nt // WIDE_PANELS, tuple(tile(
                rows, offsets(col0, 0, WIDE_PANELS * cols_per_tile),
                Binary("mul", jw, Const(WIDE_PANELS, "i64"))))))
            first = nt // WIDE_PANELS * WIDE_PANELS
        if nt - first:
            at_jb = _plus(jb, first)
            out_.append(For(jb, nt - first, tuple(full_tile(rows, at_jb))))
        if tail:
            out_ += tile(rows, offsets(None, nt * cols_per_tile, tail))
        return out_

    if not isinstance(m, int):
        i = names.var("i")
        return [*stmts, For(i, m, tuple(across([i])))]
    done = 0
    if m >= 2 * BLOCK_ROWS and nt >= 2:
        # Blocks of BLOCK_ROWS rows, columns outside rows inside: a K x cols panel of b is
        # read from memory once per block and then from cache by its BLOCK_ROWS / TILE_ROWS
        # tiles, where sweeping all of b for every few rows would stream it from memory.
        io, jb, ib = names.var("io"), names.var("jb"), names.var("ib")
        row0 = Binary("add", Binary("mul", io, Const(BLOCK_ROWS, "i64")),
                      Binary("mul", ib, Const(TILE_ROWS, "i64")))
        rows = offsets(row0, 0, TILE_ROWS)
        per_block = BLOCK_ROWS // TILE_ROWS
        body = [For(jb, nt, (For(ib, per_block, tuple(full_tile(rows, jb))),))]
        if tail:
            body.append(For(ib, per_block, tuple(tile(rows, offsets(None, nt * cols_per_tile,
                                                                     tail)))))
        done = m // BLOCK_ROWS * BLOCK_ROWS
        stmts.append(For(io, m // BLOCK_ROWS, tuple(body)))
    mt = (m - done) // TILE_ROWS
    if mt:
        ib = names.var("ib")
        row0 = Binary("mul", ib, Const(TILE_ROWS, "i64"))
        if done:
            row0 = Binary("add", row0, Const(done, "i64"))
        stmts.append(For(ib, mt, tuple(across(offsets(row0, 0, TILE_ROWS)))))
    for row in range(done + mt * TILE_ROWS, m):
        stmts += across([Const(row, "i64")])
    return stmts


def _plus(e: Expr, c: int) -> Expr:
    return e if c == 0 else Binary("add", e, Const(c, "i64"))


def _matmul_lower(out: Buffer, ins, attrs, names: Names):
    a, b = ins
    batch = out.shape[:-2]
    m, n = out.shape[-2:]
    k = a.shape[-1]

    def matrix(at: tuple):
        # `at` indexes the batch dims of the output; each operand reads its broadcast slice
        ai, bi = broadcast_indices(at, a.shape[:-2], batch), broadcast_indices(at, b.shape[:-2],
                                                                              batch)
        i, j, r = names.var("i"), names.var("j"), names.var("k")
        o = tuple(at) + (i, j)
        product = Binary("mul", a.load(ai + (i, r)), b.load(bi + (r, j)))
        if compute_dtype(out.dtype) == out.dtype:
            if out.dtype == "f32" and isinstance(n, int):
                return tiled_matmul(out, a, b, at, ai, bi, m, n, k, names)
            # i-k-j order: the innermost loop walks b and the output contiguously, so it
            # vectorizes; the output itself is the accumulator.
            zero = For(j, n, (store(out, o, const(0, out.dtype)),))
            update = For(j, n, (store(out, o, Binary("add", Load(out, o), product)),))
            return [For(i, m, (zero, For(r, k, (update,))))]
        # A narrow output cannot hold partial sums: accumulate each element in f32.
        acc = names.var("acc", compute_dtype(out.dtype))
        dot = For(r, k, (Assign(acc, Binary("add", acc, product)),))
        return [For(i, m, (For(j, n, (Local(acc, const(0, out.dtype)), dot,
                                      store(out, o, acc))),))]

    return loop_nest(batch, names, matrix, prefix="b")


register(OpDef(
    "matmul", 2, "contraction", (), _matmul_infer,
    lambda xs, attrs: np.matmul(xs[0], xs[1]),
    _matmul_lower,
    "Matrix product with numpy's batching: the dims before the last two broadcast; infix "
    "`a @ b`. Operands of rank 1 are rejected.",
    "matmul(a: [..., M, K], b: [..., K, N]) -> [..., M, N]; infix a @ b"))


def _linear_infer(types, attrs):
    dtype = same_dtype(types, "linear", "numeric")
    x, w = types[:2]
    if x.rank < 1:
        raise OpTypeError(f"'linear' takes an input of rank 1 or more, got {x}", arg=0)
    if w.rank != 2:
        raise OpTypeError(f"'linear' takes a weight of shape [out, in], got {w}", arg=1)
    if x.shape[-1] != w.shape[1]:
        raise OpTypeError(f"'linear' input features differ: x is {x}, so w must be "
                          f"[out, {x.shape[-1]}], got {w}", arg=1,
                          hint="w is [out_features, in_features] as in PyTorch's nn.Linear; "
                               "for a weight stored [in, out], write x @ w + b")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        raise OpTypeError(f"'linear' bias must be [{w.shape[0]}] for a weight {w}, "
                          f"got {types[2]}", arg=2)
    return TensorType(dtype, x.shape[:-1] + (w.shape[0],))


def _linear_reference(xs, attrs):
    y = np.matmul(xs[0], xs[1].T)
    return y + xs[2] if len(xs) == 3 else y


def _linear_lower(out: Buffer, ins, attrs, names: Names):
    x, w = ins[:2]

    def body(i):
        acc, r = names.var("acc", compute_dtype(out.dtype)), names.var("k")
        lead, o = tuple(i[:-1]), i[-1]
        term = Binary("mul", x.load(lead + (r,)), w.load((o, r)))
        result = acc if len(ins) == 2 else Binary("add", acc, ins[2].load((o,)))
        return [Local(acc, const(0, out.dtype)),
                For(r, x.shape[-1], (Assign(acc, Binary("add", acc, term)),)),
                store(out, i, result)]

    return loop_nest(out.shape, names, body)


register(OpDef(
    "linear", (2, 3), "contraction", (), _linear_infer, _linear_reference, _linear_lower,
    "x @ wᵀ + b with w: [out, in] and b: [out], as PyTorch's nn.Linear; b may be left out.",
    "linear(x: [..., IN], w: [OUT, IN], b: [OUT] optional) -> [..., OUT]"))


# ---------------------------------------------------------------------------------------------
# Reductions


def normalize_axes(axes: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """The axes as sorted non-negative dims; `()` means every axis. Errors point at `axis`."""
    if not axes:
        return tuple(range(rank))
    dims: list[int] = []
    for a in axes:
        d = normalize_axis(a, rank)
        if d in dims:
            raise OpTypeError(f"axis={format_attr(axes)} names dimension {d} twice "
                              f"(tensor of rank {rank})", attr="axis")
        dims.append(d)
    return tuple(sorted(dims))


def _reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool):
    if keepdims:
        return tuple(1 if d in axes else n for d, n in enumerate(shape))
    return tuple(n for d, n in enumerate(shape) if d not in axes)


def _input_index(outer: Sequence[Expr], reduced: Sequence[Expr], axes: tuple[int, ...],
                 rank: int, keepdims: bool) -> tuple[Expr, ...]:
    """The input's index from the output's (`outer`) and the reduction loops' (`reduced`)."""
    outer, reduced = list(outer), list(reduced)
    index = []
    for d in range(rank):
        if d in axes:
            index.append(reduced.pop(0))
            if keepdims:
                outer.pop(0)  # the output's placeholder 0 at a kept dim
        else:
            index.append(outer.pop(0))
    return tuple(index)


def _extreme(dtype: str, largest: bool):
    """The largest (or smallest) value of a dtype: the identity of min (or max)."""
    if dtype in FLOATS:
        return np.inf if largest else -np.inf
    if dtype == "bool":
        return largest
    info = np.iinfo({"i32": np.int32, "i64": np.int64}[dtype])
    return int(info.max if largest else info.min)


# name: (dtype class, numpy function, loop-IR combine op, identity (None: the dtype's extreme),
# doc)
_REDUCTIONS = {
    "sum": ("numeric", np.sum, "add", 0, "Sum over the axes; integers wrap."),
    "mean": ("float", np.mean, "add", 0, "Arithmetic mean over the axes (floats only), "
             "accumulated in f32."),
    "prod": ("numeric", np.prod, "mul", 1, "Product over the axes; integers wrap."),
    "max": ("any", np.max, "max", None, "Maximum over the axes; NaN propagates; on bool, any."),
    "min": ("any", np.min, "min", None, "Minimum over the axes; NaN propagates; on bool, all."),
}


def _reduce(name: str) -> OpDef:
    allowed, np_fn, combine, identity, doc = _REDUCTIONS[name]

    def infer(types, attrs):
        (x,) = types
        dtype = same_dtype(types, name, allowed)
        axes = normalize_axes(attrs["axis"], x.rank)
        return TensorType(dtype, _reduced_shape(x.shape, axes, attrs["keepdims"]))

    def reference(xs, attrs):
        x = xs[0]
        axes = normalize_axes(attrs["axis"], x.ndim)
        return np.asarray(np_fn(x, axis=axes, keepdims=attrs["keepdims"])).astype(x.dtype)

    def lower(out: Buffer, ins, attrs, names: Names):
        (x,) = ins
        rank, keep = len(x.shape), attrs["keepdims"]
        axes = normalize_axes(attrs["axis"], rank)
        count = product(x.shape[a] for a in axes)
        dtype = compute_dtype(x.dtype)
        op = {("max", "bool"): "or", ("min", "bool"): "and"}.get((combine, dtype), combine)
        start = identity if identity is not None else _extreme(dtype, largest=combine == "min")

        def body(i):
            rs = [names.var("r") for _ in axes]
            if name in ("sum", "mean") and dtype == "f32" and axes and axes[-1] == rank - 1:
                # the innermost reduced axis is contiguous: partial sums in vector lanes
                lanes = lane_sum(
                    names, dtype, x.shape[-1],
                    lambda r: x.load(_input_index(i, [*rs[:-1], r], axes, rank, keep)),
                    outer=[(r, x.shape[a]) for r, a in zip(rs[:-1], axes[:-1])])
                if lanes is not None:
                    stmts, total = lanes
                    result = Binary("div", total, as_f32(count)) if name == "mean" else total
                    return [*stmts, store(out, i, result)]
            acc = names.var("acc", dtype)
            element = x.load(_input_index(i, rs, axes, rank, keep))
            loops = [Assign(acc, Binary(op, acc, element))]
            for r, a in reversed(list(zip(rs, axes))):
                loops = [For(r, x.shape[a], tuple(loops))]
            result = Binary("div", acc, as_f32(count)) if name == "mean" else acc
            return [Local(acc, const(start, dtype)), *loops, store(out, i, result)]

        return loop_nest(out.shape, names, body)

    return register(OpDef(
        name, 1, "reduction", (Attr("axis", "ints", ()), Attr("keepdims", "bool", False)),
        infer, reference, lower,
        doc + " axis: one int or a tuple; () (the default) means every axis.",
        f"{name}(x, axis=(), keepdims=false) -> x without (or with 1 at) the axes"))


for _name in _REDUCTIONS:
    _reduce(_name)


def _arg_extreme(name: str, largest: bool) -> OpDef:
    np_fn = np.argmax if largest else np.argmin

    def infer(types, attrs):
        (x,) = types
        same_dtype(types, name, "any")
        axis = _one_axis(name, x, attrs["axis"])
        return TensorType("i64", _reduced_shape(x.shape, (axis,), attrs["keepdims"]))

    def reference(xs, attrs):
        x = xs[0]
        return np_fn(x, axis=attrs["axis"], keepdims=attrs["keepdims"]).astype(np.int64)

    def lower(out: Buffer, ins, attrs, names: Names):
        (x,) = ins
        axis = normalize_axis(attrs["axis"], len(x.shape))
        dtype = compute_dtype(x.dtype)

        def body(i):
            best, pos, r = names.var("best", dtype), names.var("pos", "i64"), names.var("r")
            v, take = names.var("v", dtype), names.var("take", "bool")
            # strictly better keeps the first occurrence of the extreme value
            better = Compare("gt" if largest else "lt", v, best)
            if dtype == "f32":
                # numpy: the first NaN wins, and nothing replaces it
                first_nan = Binary("and", Compare("ne", v, v), Compare("eq", best, best))
                better = Binary("or", better, first_nan)
            step = (Local(v, x.load(with_axis(i, axis, r, attrs["keepdims"]))),
                    Local(take, better),
                    Assign(pos, Select(take, r, pos)),
                    Assign(best, Select(take, v, best)))
            return [Local(best, const(_extreme(dtype, not largest), dtype)),
                    Local(pos, Const(0, "i64")),
                    For(r, x.shape[axis], step),
                    store(out, i, pos)]

        return loop_nest(out.shape, names, body)

    what = "maximum" if largest else "minimum"
    return register(OpDef(
        name, 1, "reduction", (Attr("axis", "int", -1), Attr("keepdims", "bool", False)),
        infer, reference, lower,
        f"Index (i64) of the first {what} along one axis; a NaN counts as the {what} (numpy).",
        f"{name}(x, axis=-1, keepdims=false) -> i64, x without (or with 1 at) axis"))


_arg_extreme("argmax", largest=True)
_arg_extreme("argmin", largest=False)


# ---------------------------------------------------------------------------------------------
# Softmax


def _softmax_infer(name: str):
    def infer(types, attrs):
        (x,) = types
        _one_axis(name, x, attrs["axis"])
        return TensorType(same_dtype(types, name), x.shape)
    return infer


def _softmax_reference(xs, attrs):
    x = xs[0]
    e = np.exp(x - np.max(x, axis=attrs["axis"], keepdims=True))
    return (e / np.sum(e, axis=attrs["axis"], keepdims=True)).astype(x.dtype, copy=False)


def _rows(x: Operand, axis: int, names: Names, body) -> list:
    """A loop nest over every row of `x` along `axis`; body(at) gets at(r), the index of the
    row's element r. The loop of extent 1 at `axis` keeps the index arithmetic uniform; LLVM
    removes it."""
    outer = x.shape[:axis] + (1,) + x.shape[axis + 1:]
    return loop_nest(outer, names,
                     lambda i: body(lambda r: with_axis(list(i), axis, r, keepdims=True)))


def max_and_sum_exp(value: Callable[[Expr], Expr], n: int, names: Names, m: Var, s: Var,
                    keep: Callable[[Expr], tuple[Buffer, tuple]] | None = None) -> list:
    """m = the max of value(r) over a row of n (for range safety), then s = the sum of
    exp(value(r) - m); with `keep(r)` (an f32 buffer and the index where element r goes),
    each exp is also stored there (it may be where value(r) reads: each element is read
    before it is overwritten).

    Where value has a vector form along the row (`vector_of`: a row that is contiguous f32,
    L = names.lanes of it a vector), the max and then the exps and their sum are vector code,
    two passes over
    the row, each exp computed once, stored and added in the same step (the lanes' results
    meet in a tree at the end; a tail of n % L elements is scalar). Otherwise a static row of
    16 or more keeps the max and the sum in vector lanes (lane_sum): as one chain each, a row
    of 128 took ~1000 cycles of add and max latency (MiniLM's softmax, 9% of its time). The
    exp stays out of the lanes' loop, where LLVM vectorized it four lanes wide through
    shuffles; alone it takes whole vectors."""
    lanes = names.lanes
    vector = vector_of(names, value) if lanes and isinstance(n, int) and n >= lanes else None
    if vector is not None:
        return _vector_max_and_sum_exp(value, vector, n, lanes, names, m, s, keep)

    def e(r):
        return Unary("exp", Binary("sub", value(r), m))

    def kept(r):
        return Load(*keep(r)) if keep is not None else e(r)

    r1, r2, r3 = names.var("r"), names.var("r"), names.var("r")
    stores = [For(r2, n, (store(*keep(r2), e(r2)),))] if keep is not None else []
    lanes_max = lane_sum(names, "f32", n, value, op="max", init=-np.inf)
    lanes_sum = lane_sum(names, "f32", n, kept)
    if lanes_max is not None and lanes_sum is not None:
        (max_stmts, top), (sum_stmts, total) = lanes_max, lanes_sum
        return [*max_stmts, Local(m, top), *stores, *sum_stmts, Local(s, total)]
    return [Local(m, const(-np.inf, "f32")),
            For(r1, n, (Assign(m, Binary("max", m, value(r1))),)),
            *stores,
            Local(s, const(0, "f32")),
            For(r3, n, (Assign(s, Binary("add", s, kept(r3))),))]


def _vector_max_and_sum_exp(value, vector, n: int, lanes: int, names: Names, m: Var, s: Var,
                            keep) -> list:
    vt = vector_dtype(lanes)
    vmax, vsum, v = names.var("vmax", vt), names.var("vsum", vt), names.var("vexp", vt)
    r1, r2 = names.var("r"), names.var("r")
    full, done = n // lanes, n // lanes * lanes

    def first(r: Var) -> Expr:
        return Binary("mul", r, Const(lanes, INDEX))

    def tail(r: Var) -> Expr:
        return Binary("add", r, Const(done, INDEX))

    exps: list = [Local(v, Unary("exp", Binary("sub", vector(first(r2)), Splat(m, lanes))))]
    if keep is not None:
        exps += [store(*keep(Binary("add", first(r2), Const(k, INDEX)) if k else first(r2)),
                       Lane(v, k)) for k in range(lanes)]
    exps.append(Assign(vsum, Binary("add", vsum, v)))
    out = [Local(vmax, Splat(const(-np.inf, "f32"), lanes)),
           For(r1, full, (Assign(vmax, Binary("max", vmax, vector(first(r1)))),)),
           Local(m, lane_tree("max", vmax, lanes)),
           Local(vsum, Splat(const(0, "f32"), lanes)),
           For(r2, full, tuple(exps)),
           Local(s, lane_tree("add", vsum, lanes))]
    if n > done:  # the tail, an element a statement (fusion counts a producer's copies so)
        t1, t2 = names.var("r"), names.var("r")
        out.insert(3, For(t1, n - done, (Assign(m, Binary("max", m, value(tail(t1)))),)))
        e = Unary("exp", Binary("sub", value(tail(t2)), m))
        if keep is not None:
            step = [store(*keep(tail(t2)), e),
                    Assign(s, Binary("add", s, Load(*keep(tail(t2)))))]
        else:
            step = [Assign(s, Binary("add", s, e))]
        out.append(For(t2, n - done, tuple(step)))
    return out


def _softmax_lower(out: Buffer, ins, attrs, names: Names):
    # Three passes over the row: the max, exp and its sum, then the scale. The middle pass
    # keeps exp(x - m) in the output; a narrow output would round it twice, so there it is
    # recomputed in the last pass instead.
    (x,) = ins
    axis = attrs["axis"] % len(x.shape)
    n = x.shape[axis]
    wide = compute_dtype(out.dtype) == out.dtype

    def body(at):
        m, s, inv = names.var("m", "f32"), names.var("s", "f32"), names.var("inv", "f32")
        first = max_and_sum_exp(lambda r: x.load(at(r)), n, names, m, s,
                                (lambda r: (out, at(r))) if wide else None)
        r = names.var("r")
        e = Load(out, at(r)) if wide else Unary("exp", Binary("sub", x.load(at(r)), m))
        return [*first,
                Local(inv, Binary("div", const(1, "f32"), s)),
                For(r, n, (store(out, at(r), Binary("mul", e, inv)),))]

    return _rows(x, axis, names, body)


register(OpDef(
    "softmax", 1, "normalization", (Attr("axis", "int", -1),), _softmax_infer("softmax"),
    _softmax_reference, _softmax_lower,
    "exp(x - max) / sum(exp(x - max)) along one axis.",
    "softmax(x, axis=-1) -> same shape"))


def _log_softmax_reference(xs, attrs):
    x, axis = xs[0], attrs["axis"]
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return (shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))).astype(
        x.dtype, copy=False)


def _log_softmax_lower(out: Buffer, ins, attrs, names: Names):
    (x,) = ins
    axis = attrs["axis"] % len(x.shape)
    n = x.shape[axis]

    def body(at):
        m, s, ls = names.var("m", "f32"), names.var("s", "f32"), names.var("ls", "f32")
        first = max_and_sum_exp(lambda r: x.load(at(r)), n, names, m, s)
        r = names.var("r")
        # (x - m) - log(s) rather than x - (m + log(s)): x - m is exact-ish and never
        # cancels against the log term, which is >= 0
        value = Binary("sub", Binary("sub", x.load(at(r)), m), ls)
        return [*first,
                Local(ls, Unary("log", s)),
                For(r, n, (store(out, at(r), value),))]

    return _rows(x, axis, names, body)


register(OpDef(
    "log_softmax", 1, "normalization", (Attr("axis", "int", -1),),
    _softmax_infer("log_softmax"), _log_softmax_reference, _log_softmax_lower,
    "x - max - log(sum(exp(x - max))) along one axis: log(softmax(x)) without its underflow.",
    "log_softmax(x, axis=-1) -> same shape"))


# ---------------------------------------------------------------------------------------------
# Normalizations over trailing axes


def _trailing_infer(name: str, n_params: int):
    """x, then `n_params` tensors of shape x.shape[axis:], all of one float dtype."""
    def infer(types, attrs):
        dtype = same_dtype(types, name)
        x = types[0]
        axis = _one_axis(name, x, attrs["axis"])
        want = x.shape[axis:]
        for i, t in enumerate(types[1:n_params + 1], 1):
            if t.shape != want:
                raise OpTypeError(f"'{name}' over axes {axis}..{x.rank - 1} of {x} needs "
                                  f"parameters of shape {list(want)}, got {t}", arg=i)
        return TensorType(dtype, x.shape)
    return infer


def _trailing_loops(x: Operand, axis: int, names: Names, body) -> list:
    """Loops over x.shape[:axis] around body(inner_loops, total), where inner_loops(fn) makes
    a loop nest over x.shape[axis:] whose body is fn(index into x, index into the
    parameters), and total(element) gives (statements, sum) for the f32 sum of element(index
    into x, index into the parameters) over those axes: in vector lanes (lane_sum) where
    they are one static axis, else one accumulator."""
    inner = x.shape[axis:]

    def outer_body(o):
        def inner_loops(fn):
            return loop_nest(inner, names, lambda r: fn(tuple(o) + tuple(r), tuple(r)),
                             prefix="r")

        def total(element):
            if len(inner) == 1:
                lanes = lane_sum(names, "f32", inner[0],
                                 lambda r: element((*o, r), (r,)))
                if lanes is not None:
                    return lanes
            acc = names.var("acc", "f32")
            return [Local(acc, const(0, "f32")),
                    *inner_loops(lambda i, p: [Assign(acc, Binary("add", acc, element(i, p)))])
                    ], acc
        return body(inner_loops, total)

    return loop_nest(x.shape[:axis], names, outer_body)


def _layer_norm_reference(xs, attrs):
    x, scale, bias = xs
    axes = tuple(range(attrs["axis"] % x.ndim, x.ndim))
    d = x - np.mean(x, axis=axes, keepdims=True)
    var = np.mean(d * d, axis=axes, keepdims=True)
    return (d / np.sqrt(var + attrs["eps"]) * scale + bias).astype(x.dtype, copy=False)


def _layer_norm_lower(out: Buffer, ins, attrs, names: Names):
    x, scale, bias = ins
    axis = attrs["axis"] % len(x.shape)
    n = product(x.shape[axis:])

    def body(inner_loops, total):
        mean, inv = names.var("mean", "f32"), names.var("inv", "f32")

        def centered(i):
            return Binary("sub", x.load(i), mean)

        def normalized(i, p):
            value = Binary("mul", Binary("mul", centered(i), inv), scale.load(p))
            return [store(out, i, Binary("add", value, bias.load(p)))]

        sum_stmts, s = total(lambda i, p: x.load(i))
        square_stmts, q = total(lambda i, p: Binary("mul", centered(i), centered(i)))
        variance = Binary("div", q, as_f32(n))
        return [*sum_stmts,
                Local(mean, Binary("div", s, as_f32(n))),
                *square_stmts,
                Local(inv, Unary("rsqrt", Binary("add", variance, const(attrs["eps"], "f32")))),
                *inner_loops(normalized)]

    return _trailing_loops(x, axis, names, body)


register(OpDef(
    "layer_norm", 3, "normalization", (Attr("axis", "int", -1), Attr("eps", "float", 1e-5)),
    _trailing_infer("layer_norm", 2), _layer_norm_reference, _layer_norm_lower,
    "(x - mean) / sqrt(var + eps) * scale + bias, the statistics over the axes from axis to the "
    "end (ONNX LayerNormalization), computed in f32 in two passes.",
    "layer_norm(x, scale: x.shape[axis:], bias: x.shape[axis:], axis=-1, eps=1e-5) "
    "-> same shape"))


def _rms_norm_reference(xs, attrs):
    x, scale = xs
    axes = tuple(range(attrs["axis"] % x.ndim, x.ndim))
    ms = np.mean(x * x, axis=axes, keepdims=True)
    return (x / np.sqrt(ms + attrs["eps"]) * scale).astype(x.dtype, copy=False)


def _rms_norm_lower(out: Buffer, ins, attrs, names: Names):
    x, scale = ins
    axis = attrs["axis"] % len(x.shape)
    n = product(x.shape[axis:])

    def body(inner_loops, total):
        inv = names.var("inv", "f32")

        def scaled(i, p):
            return [store(out, i, Binary("mul", Binary("mul", x.load(i), inv), scale.load(p)))]

        square_stmts, q = total(lambda i, p: Binary("mul", x.load(i), x.load(i)))
        mean_square = Binary("div", q, as_f32(n))
        return [*square_stmts,
                Local(inv, Unary("rsqrt", Binary("add", mean_square, const(attrs["eps"], "f32")))),
                *inner_loops(scaled)]

    return _trailing_loops(x, axis, names, body)


register(OpDef(
    "rms_norm", 2, "normalization", (Attr("axis", "int", -1), Attr("eps", "float", 1e-6)),
    _trailing_infer("rms_norm", 1), _rms_norm_reference, _rms_norm_lower,
    "x / sqrt(mean(x²) + eps) * scale, the mean over the axes from axis to the end, in f32.",
    "rms_norm(x, scale: x.shape[axis:], axis=-1, eps=1e-6) -> same shape"))


# ---------------------------------------------------------------------------------------------
# Batch normalization (inference)


def _batch_norm_infer(types, attrs):
    dtype = same_dtype(types, "batch_norm")
    x = types[0]
    if x.rank < 2:
        raise OpTypeError(f"'batch_norm' takes an input [N, C, ...] of rank 2 or more, got {x}",
                          arg=0)
    for i, (t, what) in enumerate(zip(types[1:], ("scale", "bias", "mean", "var")), 1):
        if t.shape != (x.shape[1],):
            raise OpTypeError(f"'batch_norm' {what} must be [{x.shape[1]}] (the channels, "
                              f"axis 1 of {x}), got {t}", arg=i)
    return TensorType(dtype, x.shape)


def _batch_norm_reference(xs, attrs):
    x = xs[0]
    scale, bias, mean, var = (p.reshape((-1,) + (1,) * (x.ndim - 2)) for p in xs[1:])
    return ((x - mean) / np.sqrt(var + attrs["eps"]) * scale + bias).astype(x.dtype, copy=False)


def _batch_norm_lower(out: Buffer, ins, attrs, names: Names):
    x, scale, bias, mean, var = ins

    def channel(nc):
        # one 1/sqrt(var + eps) per (sample, channel), applied over the spatial dims
        c, inv = (nc[1],), names.var("inv", "f32")

        def element(s):
            i = tuple(nc) + tuple(s)
            value = Binary("mul", Binary("mul", Binary("sub", x.load(i), mean.load(c)), inv),
                           scale.load(c))
            return [store(out, i, Binary("add", value, bias.load(c)))]

        return [Local(inv, Unary("rsqrt", Binary("add", var.load(c), const(attrs["eps"], "f32")))),
                *loop_nest(x.shape[2:], names, element, prefix="s")]

    return loop_nest(x.shape[:2], names, channel)


register(OpDef(
    "batch_norm", 5, "normalization", (Attr("eps", "float", 1e-5),), _batch_norm_infer,
    _batch_norm_reference, _batch_norm_lower,
    "Inference batch normalization over channel axis 1: (x - mean) / sqrt(var + eps) * scale "
    "+ bias, the four parameters of shape [C].",
    "batch_norm(x: [N, C, ...], scale: [C], bias: [C], mean: [C], var: [C], eps=1e-5) "
    "-> same shape"))
