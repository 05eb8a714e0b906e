"""Thread parallelism: which loop of each nest runs across the runtime's thread pool.

A loop may run in parallel when its iterations are independent, which is proved here from the
indices, not assumed from the op: for every buffer the body stores, every store *and every
load* of that buffer addresses, at one index position shared by all of them, `v*c + e` where
`v` is the loop variable, `c` a positive constant, and every `e` (over the values of the inner
loop variables) within one window `[lo, lo + c)`. Iteration `v` then owns the elements
`[v*c + lo, v*c + lo + c)` of that dim: it writes only its own and reads back only its own.
The body may not touch a scalar local declared outside the loop. Such a loop gives the same
result, bit for bit, however its range is split, so results do not depend on the thread count.

Which loop: in each top-level nest of a kernel, the outermost provable loop along the chain of
perfectly nested loops whose extent is symbolic or at least MIN_SPLIT; failing that, the
provable one with the largest extent. Each thread's range gets at least `grain` iterations,
about GRAIN_WORK scalar operations (symbols counted as 1); a static loop with less than two
ranges' worth, or less than MIN_PARALLEL_WORK in all, stays serial, and the runtime splits a
symbolic one only as far as its value at run time allows.

Also here, the other after-fusion schedule of a kernel: `block_transpose`, which runs a
transpose of the last axis in vector blocks.
"""

from __future__ import annotations

from dataclasses import replace

from aotml.graph.symbolic import Sym
from aotml.loops.fuse import pointwise
from aotml.loops.ir import (
    INDEX,
    Assert,
    Assign,
    Binary,
    Const,
    Expr,
    For,
    Kernel,
    Lane,
    Load,
    Local,
    Store,
    Unary,
    Var,
    VecLoad,
    children,
    dtype_of,
    lanes_of,
    map_stmt_exprs,
    vector_dtype,
)

MIN_SPLIT = 4
GRAIN_WORK = 1 << 15  # the least work a thread's range gets
# The least work a nest is split for. Handing ranges to the pool and waiting for them costs
# about half a microsecond with the workers awake (more when they sleep), which a small nest
# does not win back. Prepared calls on Zen 4, 2026-12-07, 1 thread against 2 (us): SGEMM N=32
# (~100K operations) 0.91 / 1.08-1.14, N=48 (~350K) 2.55 / 1.88, N=64 5.6 / 3.1-3.6;
# exp(x*2+1)*0.5 over 8192 (~200K counting exp as below) 2.64 / 2.64 (not split then),
# 16384 4.98 / 2.83.
MIN_PARALLEL_WORK = 1 << 18
# What an operation counts, per lane, where it is not 1: the inline polynomials of
# codegen/vecmath.py take tens of instructions, pow is a library call.
OP_WORK = {"exp": 20, "log": 20, "tanh": 20, "erf": 20, "sqrt": 4, "rsqrt": 5, "div": 4,
           "pow": 40}


def parallelize(kernel: Kernel) -> Kernel:
    """`kernel` with one loop of each profitable top-level nest marked parallel (lowering
    opens loops of one iteration first: `open_unit_loops`)."""
    return replace(kernel, body=tuple(_nest(s) if isinstance(s, For) else s
                                      for s in kernel.body))


def open_unit_loops(stmts) -> tuple:
    """`stmts` with each top-level loop of one iteration (a batch of 1: `for b0 in 0..1 {
    pack; compute }`) replaced by its body at `b0 = 0`, when that body is loops alone (so no
    local changes scope). Its nests then become top-level nests of their own, each free to run
    in parallel: otherwise the one-iteration loop is the only candidate, and a matmul at batch
    1 would run on one thread."""
    out = []
    for s in stmts:
        if (isinstance(s, For) and s.extent == 1 and s.step == 1 and not s.bind
                and not s.parallel and all(isinstance(b, For) for b in s.body)):
            zero = Const(0, s.var.dtype)
            out += open_unit_loops(map_stmt_exprs(s.body, lambda e, v=s.var, z=zero: z
                                                  if e == v else e))
        else:
            out.append(s)
    return tuple(out)


def _nest(top: For) -> For:
    chain, s = [], top
    while True:
        chain.append(s)
        if len(s.body) != 1 or not isinstance(s.body[0], For):
            break
        s = s.body[0]
    legal = [f for k, f in enumerate(chain) if f.step == 1 and not f.bind
             and independent(f, tuple(c.var.name for c in chain[:k]))]
    if not legal:
        return top
    wide = [f for f in legal if isinstance(f.extent, Sym) or f.extent >= MIN_SPLIT]
    pick = wide[0] if wide else max(legal, key=lambda f: f.extent)
    per_iteration = max(work(pick.body), 1)
    grain = max(1, -(-GRAIN_WORK // per_iteration))
    if not isinstance(pick.extent, Sym) and (pick.extent // grain < 2 or
                                             pick.extent * per_iteration < MIN_PARALLEL_WORK):
        return top  # too little work: handing it out would cost more than it saves
    return _mark(top, pick, grain)


def _mark(s: For, pick: For, grain: int) -> For:
    if s is pick:
        return replace(s, parallel=True, grain=grain)
    return replace(s, body=(_mark(s.body[0], pick, grain),))


def work(stmts) -> int:
    """Scalar operations (loads, arithmetic, stores) a statement list runs, symbols counted as 1."""
    total = 0
    for s in stmts:
        if isinstance(s, For):
            total += (s.extent if isinstance(s.extent, int) else 1) * work(s.body)
        elif isinstance(s, Store):
            total += 1 + _size(s.value) + sum(_size(i) for i in s.indices)
        elif isinstance(s, (Local, Assign)):
            total += _size(s.init if isinstance(s, Local) else s.value)
        elif isinstance(s, Assert):
            total += _size(s.cond)
    return total


def _size(e: Expr) -> int:
    """Scalar operations in `e` (an operation on a vector counts once per lane; OP_WORK
    weighs the costly ones)."""
    if isinstance(e, (Const, Var)):
        return 0
    own = OP_WORK.get(e.op, 1) if isinstance(e, (Unary, Binary)) else 1
    return own * (lanes_of(dtype_of(e)) or 1) + sum(_size(c) for c in children(e))


def independent(loop: For, outer: tuple[str, ...] = ()) -> bool:
    """Whether the iterations of `loop` write disjoint elements and read back only their own,
    and use no scalar local from outside it (see the module docstring). `outer` names the
    enclosing loops' variables, fixed while it runs."""
    extents: dict[str, int | None] = {}
    declared: set[str] = set()
    accesses: dict[str, list[tuple]] = {}
    stored: set[str] = set()
    free: set[str] = set()

    def expr(e: Expr) -> None:
        if isinstance(e, Var):
            if e.name not in extents and e.name not in declared and e.name != loop.var.name:
                free.add(e.name)
            return
        if isinstance(e, Load):
            accesses.setdefault(e.buffer.name, []).append((e.indices, 1))
        elif isinstance(e, VecLoad):  # lanes along the last dim
            accesses.setdefault(e.buffer.name, []).append((e.indices, e.lanes))
        for c in children(e):
            expr(c)

    def walk(stmts) -> None:
        for s in stmts:
            if isinstance(s, For):
                extents[s.var.name] = s.extent if isinstance(s.extent, int) else None
                walk(s.body)
            elif isinstance(s, Store):
                stored.add(s.buffer.name)
                accesses.setdefault(s.buffer.name, []).append((s.indices, 1))
                for i in s.indices:
                    expr(i)
                expr(s.value)
            elif isinstance(s, Local):
                expr(s.init)
                declared.add(s.var.name)
            elif isinstance(s, Assign):
                if s.var.name not in declared:
                    free.add(s.var.name)
                expr(s.value)
            elif isinstance(s, Assert):
                expr(s.cond)

    walk(loop.body)
    if free - set(outer):
        return False  # a local from outside, shared by every thread
    return all(_owned(accesses[name], loop.var, extents) for name in stored)


def _owned(indices_list, v: Var, extents: dict[str, int | None]) -> bool:
    """Whether, at some index position, every access is `v*c + e` with one c and all the e
    within a window narrower than c: iteration v then owns [v*c + lo, v*c + lo + c).
    `indices_list` holds (indices, width) pairs: a vector access covers `width` elements
    along the last dim."""
    rank = len(indices_list[0][0])
    for p in range(rank):
        coef, lo, hi = None, None, None
        for indices, width in indices_list:
            form = _affine(indices[p], v.name)
            if form is None:
                break
            c, rest = form
            if c < 1 or (coef is not None and c != coef):
                break
            r_lo, r_hi = _range(rest, extents) if rest is not None else (0, 0)
            if r_lo is None:
                break
            if p == rank - 1:
                r_hi += width - 1
            coef = c
            lo = r_lo if lo is None else min(lo, r_lo)
            hi = r_hi if hi is None else max(hi, r_hi)
        else:
            if hi - lo < coef:
                return True
    return False


def _affine(e: Expr, v: str) -> tuple[int, Expr | None] | None:
    """`e` as `c*v + rest` (rest free of v, None for 0), or None when it is not of that form."""
    if isinstance(e, Var) and e.name == v:
        return 1, None
    if not _mentions(e, v):
        return 0, e
    if isinstance(e, Binary) and e.op in ("add", "sub"):
        left, right = _affine(e.lhs, v), _affine(e.rhs, v)
        if left is None or right is None:
            return None
        sign = 1 if e.op == "add" else -1
        rest = left[1]
        if right[1] is not None:
            rest = right[1] if rest is None and sign == 1 else \
                Binary(e.op, rest if rest is not None else Const(0, "i64"), right[1])
        return left[0] + sign * right[0], rest
    if isinstance(e, Binary) and e.op == "mul":
        for a, b in ((e.lhs, e.rhs), (e.rhs, e.lhs)):
            if isinstance(b, Const):
                inner = _affine(a, v)
                if inner is None:
                    return None
                c, rest = inner
                return c * int(b.value), None if rest is None else Binary("mul", rest, b)
    return None


def _mentions(e: Expr, v: str) -> bool:
    if isinstance(e, Var):
        return e.name == v
    return any(_mentions(c, v) for c in children(e))


def _range(e: Expr, extents: dict[str, int | None]) -> tuple[int | None, int | None]:
    """Bounds of an index expression over the inner loops' ranges, or (None, None)."""
    if isinstance(e, Const):
        return int(e.value), int(e.value)
    if isinstance(e, Var):
        ext = extents.get(e.name)
        return (0, ext - 1) if ext is not None else (None, None)
    if isinstance(e, Binary) and e.op in ("add", "sub", "mul"):
        a, b = _range(e.lhs, extents), _range(e.rhs, extents)
        if a[0] is None or b[0] is None:
            return None, None
        if e.op == "add":
            return a[0] + b[0], a[1] + b[1]
        if e.op == "sub":
            return a[0] - b[1], a[1] - b[0]
        products = [x * y for x in a for y in b]
        return min(products), max(products)
    return None, None


def block_transpose(kernel: Kernel, lanes: int | None) -> Kernel:
    """A kernel that only permutes axes, the input's last axis among them (`y[i, j] = x[j,
    i]`, a pointwise nest whose value is one load at permuted loop variables, left alone by
    fusion), rewritten in L x L blocks: L vector loads along the input's last axis, then each
    output row of the block from lane j of every vector (LLVM's shuffles). One element at a
    time, each load a different cache line, MiniLM's kᵀ took 2.5 cycles an element (32 us;
    12 us in blocks). Unchanged without a vector width, for other dtypes, or where an extent
    is symbolic or no whole number of vectors."""
    pw = pointwise(kernel) if lanes else None
    if pw is None or not isinstance(pw.value, Load):
        return kernel
    load, out, vars_ = pw.value, pw.buffer, pw.vars
    rank = len(vars_)
    if rank < 2 or load.buffer.dtype != "f32" or out.dtype != "f32" or \
            len(load.indices) != rank or set(load.indices) != set(vars_):
        return kernel
    a = vars_.index(load.indices[-1])  # the output axis the input's last axis goes to
    if a == rank - 1 or any(not isinstance(d, int) for d in out.shape) or \
            out.shape[a] % lanes or out.shape[-1] % lanes:
        return kernel
    blocks = [Var(f"tb{k}") for k in range(rank)]
    vecs = [Var(f"vrow{r}", vector_dtype(lanes)) for r in range(lanes)]

    def at(j: int, r: int) -> dict:
        """The output index of element (j, r) of the block: j along axis a, r along the last."""
        where = dict(zip(vars_, blocks))
        for axis, k in ((a, j), (rank - 1, r)):
            first = Binary("mul", blocks[axis], Const(lanes, INDEX))
            where[vars_[axis]] = Binary("add", first, Const(k, INDEX)) if k else first
        return where

    body: list = []
    for r, v in enumerate(vecs):
        where = at(0, r)
        body.append(Local(v, VecLoad(load.buffer, tuple(where[i] for i in load.indices),
                                     lanes)))
    for j in range(lanes):
        for r, v in enumerate(vecs):
            where = at(j, r)
            body.append(Store(out, tuple(where[i] for i in vars_), Lane(v, j)))
    extents = list(out.shape)
    extents[a] //= lanes
    extents[-1] //= lanes
    stmts: list = body
    for var, n in reversed(list(zip(blocks, extents))):
        stmts = [For(var, n, tuple(stmts))]
    return replace(kernel, body=tuple(stmts))
