"""Helpers the op lowerings share: loop nests, broadcasting indices, reductions.

An op's lowering writes loops for one output buffer from *operands*: a buffer, or a scalar
constant folded in at lowering time (a literal like the `2` in `x * 2`). Values are read in
their compute dtype (f16 and bf16 widen to f32) and `store` rounds them back to the buffer's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aotml.dtypes import compute_dtype
from aotml.graph.symbolic import Dim, Sym
from aotml.loops.ir import (
    INDEX,
    Assign,
    Binary,
    Buffer,
    Cast,
    Const,
    Expr,
    For,
    Lane,
    Load,
    Local,
    Size,
    Splat,
    Stmt,
    Store,
    Var,
    dtype_of,
    map_expr,
    vector_dtype,
    vector_form,
)


def cast(value: Expr, dtype: str) -> Expr:
    """`value` as `dtype` (no node when it already is)."""
    return value if dtype_of(value) == dtype else Cast(dtype, value)


def store(out: Buffer, indices, value: Expr) -> Store:
    """Store a computed value, rounding it to the buffer's dtype."""
    return Store(out, tuple(indices), cast(value, out.dtype))


def const(value, dtype: str) -> Const:
    """A constant in the compute dtype of `dtype`."""
    dtype = compute_dtype(dtype)
    if dtype == "bool":
        return Const(bool(value), dtype)
    return Const(float(value) if dtype == "f32" else int(value), dtype)


def as_f32(n: Dim) -> Expr:
    """A count (an element count to divide by) as an f32 value."""
    return Cast("f32", Size(n)) if isinstance(n, Sym) else const(n, "f32")



@dataclass(frozen=True)
class Operand:
    """An op input as seen by its lowering: a buffer, or a scalar known at build time."""

    shape: tuple[int, ...]
    buffer: Buffer | None = None
    scalar: Const | None = None
    scalar_dtype: str | None = None  # a folded scalar's declared dtype (its Const is widened)

    @property
    def dtype(self) -> str:
        return self.buffer.dtype if self.buffer is not None else self.scalar_dtype

    def load(self, indices: Sequence[Expr]) -> Expr:
        """The element at `indices`, in its compute dtype."""
        if self.scalar is not None:
            return cast(self.scalar, compute_dtype(self.scalar.dtype))
        value = Load(self.buffer, tuple(indices))
        return cast(value, compute_dtype(self.buffer.dtype))


class Names:
    """Fresh variable names within one kernel, and its scratch buffers: workspace memory a
    lowering may use for the duration of its kernel (a packed copy of an operand, say). The
    kernel takes each as an argument that it writes but does not output; memory planning
    gives it bytes live during that launch only. `taken` holds the program's buffer names,
    which a scratch buffer's name must avoid (and then joins). `lanes` is the f32 lanes of
    the target's widest vector, for lowerings that write explicit vector code (None: scalar
    code only, as for a GPU). `weights` names the buffers that hold the model's weights, whose
    contents are known at build time (what loops/fold.py can lay out then)."""

    def __init__(self, scope: str = "k", taken: set[str] | None = None,
                 lanes: int | None = None, weights: frozenset[str] = frozenset()):
        self._n: dict[str, int] = {}
        self.lanes = lanes
        self.scope = scope
        self.taken = taken if taken is not None else set()
        self.scratch: list[Buffer] = []
        self.schedule = ""  # the algorithm the lowering chose, where it had a choice
        self.weights = weights  # the names of the buffers holding weights (known at build time)

    def var(self, prefix: str, dtype: str = INDEX) -> Var:
        k = self._n.get(prefix, 0)
        self._n[prefix] = k + 1
        return Var(f"{prefix}{k}", dtype)

    def scratch_buffer(self, prefix: str, dtype: str, shape: tuple[Dim, ...],
                       scope: str = "global") -> Buffer:
        base = f"{self.scope}_{prefix}"
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        buf = Buffer(name, dtype, tuple(shape), scope)
        self.scratch.append(buf)
        return buf


def all_of(conds: Sequence[Expr | None]) -> Expr | None:
    """The conjunction of the conditions that are not None (None when there are none)."""
    out = None
    for c in conds:
        if c is not None:
            out = c if out is None else Binary("and", out, c)
    return out


def idx(i: Dim) -> Expr:
    """An index constant, or the run-time value of a symbolic one."""
    return Size(i) if isinstance(i, Sym) else Const(i, INDEX)


def loop_nest(shape: Sequence[int], names: Names,
              body: Callable[[tuple[Var, ...]], list[Stmt]], prefix: str = "i") -> list[Stmt]:
    """Loops over every index of `shape`, outermost first; rank 0 gives the body alone."""
    vars_ = tuple(names.var(prefix) for _ in shape)
    stmts = body(vars_)
    for v, extent in reversed(list(zip(vars_, shape))):
        stmts = [For(v, extent, tuple(stmts))]
    return stmts


def zero_bordered_copy(x: Operand, xp: Buffer, top: int, left: int, names: Names
                       ) -> list[Stmt]:
    """Statements copying the images x [N, C, H, W] into xp [N, C, HP, WP] at row `top` and
    column `left`, zeros around them (one nest over N and C: a conv's input with its padding
    made real, so its window reads need no bounds check)."""
    return loop_nest(x.shape[:2], names,
                     lambda ix: zero_bordered_plane(x, xp, top, left, names, *ix), "p")


def zero_bordered_plane(x: Operand, xp: Buffer, top: int, left: int, names: Names,
                        n: Expr, c: Expr) -> list[Stmt]:
    """zero_bordered_copy's statements for the one plane (n, c)."""
    _, _, h, w = x.shape
    hp, wp = xp.shape[2:]
    zero = const(0, "f32")

    def at(v: Var, start: int) -> Expr:
        return Binary("add", v, idx(start)) if start else v

    def row(r: Expr, source: Expr | None) -> list[Stmt]:
        """Row r of xp: zeros, or x's row `source` between zeros."""
        j = names.var("j")
        if source is None:
            return [For(j, wp, (Store(xp, (n, c, r, j), zero),))]
        stmts: list[Stmt] = []
        for start, count in ((0, left), (left + w, wp - left - w)):
            if count > 0:
                k = names.var("j")
                stmts.append(For(k, count, (Store(xp, (n, c, r, at(k, start)), zero),)))
        stmts.append(For(j, w, (Store(xp, (n, c, r, at(j, left)), x.load((n, c, source, j))),)))
        return stmts

    stmts: list[Stmt] = []
    for start, count, inside in ((0, top, False), (top, h, True), (top + h, hp - top - h, False)):
        if count > 0:
            r = names.var("r")
            stmts.append(For(r, count, tuple(row(at(r, start), r if inside else None))))
    return stmts


def broadcast_indices(out_idx: Sequence[Expr], in_shape: Sequence[int],
                      out_shape: Sequence[int]) -> tuple[Expr, ...]:
    """numpy broadcasting: shapes align on the right; a size-1 dim is read at index 0."""
    lead = len(out_shape) - len(in_shape)
    return tuple(idx(0) if d == 1 and out_shape[lead + k] != 1 else out_idx[lead + k]
                 for k, d in enumerate(in_shape))


def with_axis(outer: Sequence[Expr], axis: int, at: Expr, keepdims: bool = False) -> tuple:
    """Full indices from the indices of the other dims and the index along `axis`.

    With keepdims, `outer` already has a placeholder at `axis`, which is replaced.
    """
    outer = list(outer)
    if keepdims:
        outer[axis] = at
        return tuple(outer)
    return tuple(outer[:axis] + [at] + outer[axis:])


LANES = 8  # partial sums of a long float sum: one AVX2 vector of them


def lane_sum(names: Names, dtype: str, extent: Dim, element: Callable[[Expr], Expr],
             outer: Sequence[tuple[Var, Dim]] = (), op: str = "add",
             init: float = 0.0) -> tuple[list, Expr] | None:
    """A float reduction by `op` ("add", or "max"/"min") of `element(r)` for r in 0..extent
    (inside the loops `outer`, (variable, extent) pairs outermost first: their variables are
    free in `element`) kept in LANES partial results, element r going to lane r % LANES,
    combined by a tree at the end. A single accumulator is a
    chain of dependent operations, one per latency, which no compiler may reorder; the lanes
    are independent, so LLVM's SLP vectorizer makes them one vector operation per LANES
    elements. A sum's order of additions changes (the same at every thread count); a max or
    min is the same whatever the order. Returns the statements and the result, or None where
    extent is symbolic or under 2 * LANES.

    With a vector width (names.lanes = L) and an element whose vector form runs along r
    (`vector_form`: f32 loads indexed by r last, splats, lane-wise arithmetic), the partial
    results are VECTOR_ACCS vectors of L lanes instead, updated by whole vector loads; the
    last extent % L elements of each row go to one scalar partial result."""
    if not isinstance(extent, int) or extent < 2 * LANES:
        return None
    vector = vector_of(names, element) if dtype == "f32" and extent >= (names.lanes or 0) \
        else None
    if vector is not None:
        return _vector_lane_sum(names, extent, element, vector, outer, op, init)
    accs = [names.var("lane", dtype) for _ in range(LANES)]
    v = names.var("r")
    base = Binary("mul", v, Const(LANES, INDEX))

    def update(acc: Var, r: Expr) -> Assign:
        return Assign(acc, Binary(op, acc, element(r)))
    step = [update(a, Binary("add", base, Const(k, INDEX)) if k else base)
            for k, a in enumerate(accs)]
    body: list = [For(v, extent // LANES, tuple(step))]
    done = extent // LANES * LANES
    body += [update(accs[k], Const(done + k, INDEX)) for k in range(extent % LANES)]
    for var, n in reversed(list(outer)):
        body = [For(var, n, tuple(body))]
    return [*(Local(a, Const(init, dtype)) for a in accs), *body], tree(op, accs)


def tree(op: str, values: Sequence[Expr]) -> Expr:
    """`values` combined by `op` pairwise, level by level (a power-of-two count of them):
    the fixed order in which lane reductions meet."""
    level = list(values)
    while len(level) > 1:
        level = [Binary(op, level[k], level[k + 1]) for k in range(0, len(level), 2)]
    return level[0]


def lane_tree(op: str, vector: Expr, lanes: int) -> Expr:
    """The lanes of `vector` combined by `op` in a tree."""
    return tree(op, [Lane(vector, k) for k in range(lanes)])


VECTOR_ACCS = 2  # vector partial results of a lane_sum: two adds in flight hide the latency


def vector_of(names: Names, element: Callable[[Expr], Expr]) -> Callable[[Expr], Expr] | None:
    """vector(r): element(r)..element(r + L - 1) as one f32xL (L = names.lanes), where the
    element has a vector form along r (`vector_form`); None without a vector width or form."""
    if not names.lanes:
        return None
    probe = Var(f"{names.scope}_probe", INDEX)
    form = vector_form(element(probe), probe, names.lanes)
    if form is None:
        return None
    return lambda r: map_expr(form, lambda e: r if e == probe else e)


def _vector_lane_sum(names: Names, extent: int, element: Callable[[Expr], Expr],
                     at: Callable[[Expr], Expr], outer: Sequence[tuple[Var, Dim]], op: str,
                     init: float) -> tuple[list, Expr]:
    lanes = names.lanes
    vt = vector_dtype(lanes)
    whole = extent // lanes  # full vectors per row
    n_accs = min(VECTOR_ACCS, whole)
    accs = [names.var("vlane", vt) for _ in range(n_accs)]
    v = names.var("r")

    def offset(e: Expr, k: int) -> Expr:
        return Binary("add", e, Const(k, INDEX)) if k else e

    base = Binary("mul", v, Const(n_accs * lanes, INDEX))
    step = [Assign(a, Binary(op, a, at(offset(base, k * lanes)))) for k, a in enumerate(accs)]
    body: list = [For(v, whole // n_accs, tuple(step))]
    done = whole // n_accs * n_accs
    body += [Assign(accs[k % n_accs], Binary(op, accs[k % n_accs],
                                            at(Const((done + k) * lanes, INDEX))))
             for k in range(whole - done)]
    rest = []
    if extent % lanes:
        tail, t = names.var("tail", "f32"), names.var("r")
        rest = [Local(tail, Const(init, "f32"))]
        body.append(For(t, extent % lanes, (Assign(tail, Binary(
            op, tail, element(Binary("add", t, Const(whole * lanes, INDEX))))),)))
    for var, n in reversed(list(outer)):
        body = [For(var, n, tuple(body))]
    combined: Expr = accs[0]
    for a in accs[1:]:
        combined = Binary(op, combined, a)
    total = names.var("vtotal", vt)
    result = lane_tree(op, total, lanes)
    if rest:
        result = Binary(op, result, rest[0].var)
    return [*(Local(a, Splat(Const(init, "f32"), lanes)) for a in accs), *rest, *body,
            Local(total, combined)], result
