"""GPU schedules: op lowerings written in *block form*, for the ops where the generic mapping
(gpu/mapping.py: one thread per independent point, each running the CPU's loops) starves the
GPU. A GPU build lowers an op through its schedule here when there is one and it accepts the
shapes, and through the op's own lowering otherwise.

Block form. The kernel body is one `block.x` loop (stepping by the block's thread count, as
the mapping's grids do) whose body runs once per block. Inside it, `thread.x` loops over the
block's threads hold the per-thread work; consecutive thread loops are *barrier phases*: every
thread finishes one before any starts the next. The GPU code generator runs each thread loop's
body as the thread `tid.x` and puts a barrier after it; the CPU (the grid emulation) runs the
thread loops as loops, one after another, which is the same order of effects. Statements
between thread loops run on every thread alike and must be uniform (the same for every thread
of the block: block indices, bounds), so every thread reaches every barrier.

Memory in block form: "shared" buffers are the block's shared memory; a "local" buffer has one
row per thread, indexed first by the thread loop's variable, and lives in registers on the GPU
(see loops/ir.py, Buffer.scope). A value that must survive from one phase to the next (an
accumulator) lives in a local buffer, not in a Local.

Matmul: each block computes a BM x BN tile of the output with THREADS threads, each thread a
TM x TN register tile. The K dimension is walked in steps of BK: in one phase the block copies
a BM x BK slice of `a` (transposed, padded a column against bank conflicts) and a BK x BN
slice of `b` into shared memory, each thread loading BM*BK/THREADS elements with neighbouring
threads reading neighbouring addresses (coalesced); in the next phase each thread reads TM
values of the `a` slice and TN of the `b` slice per step of k and does TM*TN multiply-adds.
Loads past the edges read a clamped, in-bounds address and select zero; stores past them are
guarded. Row blocks vary fastest across the grid, so neighbouring blocks share their slice
of `b` in the cache.
"""

from __future__ import annotations

from collections.abc import Callable

from aotml.graph.symbolic import Dim, Sym, product
from aotml.loops.build import Names, Operand, broadcast_indices, idx, store
from aotml.loops.ir import (
    INDEX,
    Assign,
    Binary,
    Buffer,
    Compare,
    Const,
    Expr,
    For,
    If,
    Load,
    Local,
    MulAdd,
    Select,
    Store,
    Unary,
    Var,
)

BM, BN, BK = 64, 64, 16  # the block's output tile and its step along k
TM, TN = 4, 4            # each thread's register tile
THREADS = (BM // TM) * (BN // TN)


def _i(v: int) -> Expr:
    return Const(v, INDEX)


def _op(op: str, x: Expr, y: Expr) -> Expr:
    return Binary(op, x, y)


def _all(conds: list[Expr]) -> Expr | None:
    out = None
    for c in conds:
        out = c if out is None else Binary("and", out, c)
    return out


def gpu_matmul(out: Buffer, ins: list[Operand], attrs: dict, names: Names) -> list | None:
    """The block-form matmul (see the module docstring), or None for shapes it does not take:
    a result other than f32, or a symbolic n or k (m and the batch dims may be symbolic)."""
    a, b = ins
    m, n = out.shape[-2:]
    k = a.shape[-1]
    if out.dtype != "f32" or a.buffer is None or b.buffer is None \
            or not isinstance(n, int) or not isinstance(k, int):
        return None
    batch = out.shape[:-2]
    col_blocks, k_steps = -(-n // BN), -(-k // BK)
    row_blocks: Expr = _i(-(-m // BM)) if isinstance(m, int) else \
        _op("idiv", _op("add", idx(m), _i(BM - 1)), _i(BM))
    batches: Dim = product(batch) if batch else 1
    # The grid: THREADS points per block. With a symbolic m, ceil(m / BM) is no polynomial, so
    # the grid covers batches * col_blocks * (m + BM - 1) / BM blocks, rounded up, which is at
    # least the row blocks there are; the blocks past them do nothing.
    if isinstance(m, int):
        points: Dim = batches * col_blocks * -(-m // BM) * THREADS
    else:
        points = batches * col_blocks * (m + BM - 1) * (THREADS // BM)
    at_edge_m = isinstance(m, Sym) or m % BM != 0
    at_edge_n, at_edge_k = n % BN != 0, k % BK != 0

    a_tile = names.scratch_buffer("a_tile", "f32", (BK, BM + 1), scope="shared")
    b_tile = names.scratch_buffer("b_tile", "f32", (BK, BN), scope="shared")
    acc = names.scratch_buffer("acc", "f32", (THREADS, TM * TN), scope="local")
    bv, blk = names.var("block"), names.var("blk")
    rb, cb, bt = names.var("rb"), names.var("cb"), names.var("bt")
    k0 = names.var("k0")
    uniform: list = [
        Local(blk, _op("idiv", bv, _i(THREADS))),
    ]
    inside: list = [
        Local(rb, _op("irem", blk, row_blocks)),
        Local(cb, _op("irem", _op("idiv", blk, row_blocks), _i(col_blocks))),
        Local(bt, _op("idiv", _op("idiv", blk, row_blocks), _i(col_blocks))),
    ]
    # the batch index, dim by dim (row-major over `batch`)
    at: list[Expr] = []
    rest: Expr = bt
    for d in reversed(batch):
        v = names.var("b")
        inside.append(Local(v, _op("irem", rest, idx(d))))
        at.insert(0, v)
        rest = _op("idiv", rest, idx(d))
    ai = broadcast_indices(at, a.shape[:-2], batch)
    bi = broadcast_indices(at, b.shape[:-2], batch)
    row0 = _op("mul", rb, _i(BM))
    col0 = _op("mul", cb, _i(BN))

    def phase(body: Callable[[Var], list]) -> For:
        t = names.var("t")
        return For(t, THREADS, tuple(body(t)), bind="thread.x")

    def zero(t: Var) -> list:
        return [Store(acc, (t, _i(q)), Const(0.0, "f32")) for q in range(TM * TN)]

    def edge_load(x: Operand, at_: tuple, dims: list[tuple[Expr, Dim, bool]]) -> Expr:
        """x at `at_` + the (index, extent, may pass the edge) of its last two dims: an
        index that may pass its edge reads at a clamped one, and the value is zero there."""
        index = [_op("min", i, _op("sub", idx(d), _i(1))) if edge else i for i, d, edge in dims]
        inside_ = _all([Compare("lt", i, idx(d)) for i, d, edge in dims if edge])
        value = x.load(at_ + tuple(index))
        return value if inside_ is None else Select(inside_, value, Const(0.0, "f32"))

    def load_tiles(t: Var) -> list:
        stmts: list = []
        kbase = _op("mul", k0, _i(BK))
        for step in range(BM * BK // THREADS):  # a's slice, k fastest across the threads
            flat = _op("add", t, _i(step * THREADS))
            mm, kk = names.var("mm"), names.var("kk")
            value = edge_load(a, ai, [(_op("add", row0, mm), m, at_edge_m),
                                      (_op("add", kbase, kk), k, at_edge_k)])
            stmts += [Local(mm, _op("idiv", flat, _i(BK))), Local(kk, _op("irem", flat, _i(BK))),
                      Store(a_tile, (kk, mm), value)]
        for step in range(BK * BN // THREADS):  # b's slice, n fastest
            flat = _op("add", t, _i(step * THREADS))
            kk, nn = names.var("kk"), names.var("nn")
            value = edge_load(b, bi, [(_op("add", kbase, kk), k, at_edge_k),
                                      (_op("add", col0, nn), n, at_edge_n)])
            stmts += [Local(kk, _op("idiv", flat, _i(BN))), Local(nn, _op("irem", flat, _i(BN))),
                      Store(b_tile, (kk, nn), value)]
        return stmts

    def thread_tile(t: Var) -> tuple[Var, Var, list]:
        ty, tx = names.var("ty"), names.var("tx")
        return ty, tx, [Local(ty, _op("idiv", t, _i(BN // TN))),
                        Local(tx, _op("irem", t, _i(BN // TN)))]

    def compute(t: Var) -> list:
        ty, tx, head = thread_tile(t)
        kk = names.var("kk")
        av = [names.var("a", "f32") for _ in range(TM)]
        bw = [names.var("b", "f32") for _ in range(TN)]
        step = [Local(av[i], Load(a_tile, (kk, _op("add", _op("mul", ty, _i(TM)), _i(i)))))
                for i in range(TM)]
        step += [Local(bw[j], Load(b_tile, (kk, _op("add", _op("mul", tx, _i(TN)), _i(j)))))
                 for j in range(TN)]
        step += [Store(acc, (t, _i(i * TN + j)),
                       MulAdd(av[i], bw[j], Load(acc, (t, _i(i * TN + j)))))
                 for i in range(TM) for j in range(TN)]
        return [*head, For(kk, BK, tuple(step))]

    def write(t: Var) -> list:
        ty, tx, head = thread_tile(t)
        stmts = list(head)
        for i in range(TM):
            for j in range(TN):
                row = _op("add", row0, _op("add", _op("mul", ty, _i(TM)), _i(i)))
                col = _op("add", col0, _op("add", _op("mul", tx, _i(TN)), _i(j)))
                s = store(out, (*at, row, col), Load(acc, (t, _i(i * TN + j))))
                guard = _all(([Compare("lt", row, idx(m))] if at_edge_m else [])
                             + ([Compare("lt", col, _i(n))] if at_edge_n else []))
                stmts.append(If(guard, (s,)) if guard is not None else s)
        return stmts

    total_blocks = _op("mul", _op("mul", row_blocks, _i(col_blocks)), idx(batches))
    work = [*inside, phase(zero), For(k0, k_steps, (phase(load_tiles), phase(compute))),
            phase(write)]
    body = [*uniform, If(Compare("lt", blk, total_blocks), tuple(work))] \
        if isinstance(m, Sym) else [*uniform, *work]
    return [For(bv, points, tuple(body), step=THREADS, bind="block.x")]


# Row reductions: softmax, layer_norm and rms_norm over a row of n elements run one block per
# row. Each thread walks the row with the block's stride, keeping its partial max or sum; the
# partials meet in shared memory and are combined by a tree (log2 of the block's threads
# phases, halving the active threads each time); every thread then reads the total from
# element 0 for the next pass. A row stays in the threads that read it, so the passes that
# write the output and read it back need no barrier between them.
MIN_ROW_THREADS, MAX_ROW_THREADS = 32, 256


def _unflatten(flat: Expr, dims: tuple[int | Dim, ...], names: Names) -> tuple[list, list]:
    """(Locals, indices): `flat` as row-major indices over `dims`."""
    decls, out = [], []
    rest = flat
    for d in reversed(dims):
        if d == 1:
            out.insert(0, _i(0))
            continue
        v = names.var("r")
        decls.insert(0, Local(v, _op("irem", rest, idx(d))))
        out.insert(0, v)
        rest = _op("idiv", rest, idx(d))
    return decls, out


def _row_blocks(shape: tuple, first: int, names: Names, build: Callable) -> list | None:
    """One block per row of the trailing dims `shape[first:]` (static, n elements). `build(
    row, at, walk, phase, tree, threads)` returns the block's statements: `row` the leading
    indices, `at(j)` the full index of row element j, `walk(t, body)` thread t's share of the
    row's elements, `phase(fn)` a thread loop, `tree(buf, op)` the phases combining buf[0..T)
    into buf[0]."""
    trail = shape[first:]
    n = product(trail) if trail else 1
    if not isinstance(n, int):
        return None
    threads = min(max(MIN_ROW_THREADS, 1 << (n - 1).bit_length()), MAX_ROW_THREADS)
    rows: Dim = product(shape[:first]) if first else 1
    bv, row = names.var("block"), names.var("row")
    row_decls, row_at = _unflatten(row, shape[:first], names)

    def at(j: Expr) -> tuple[list, tuple]:
        decls, inner = _unflatten(j, trail, names)
        return decls, (*row_at, *inner)

    def walk(t: Var, body: Callable) -> list:
        c, j = names.var("c"), names.var("j")
        step = [Local(j, _op("add", _op("mul", c, _i(threads)), t))]
        inner = body(j)
        step += [If(Compare("lt", j, _i(n)), tuple(inner))] if n % threads else inner
        return [For(c, -(-n // threads), tuple(step))]

    def phase(fn: Callable) -> For:
        t = names.var("t")
        return For(t, threads, tuple(fn(t)), bind="thread.x")

    def tree(buf: Buffer, op: str) -> list:
        out, half = [], threads // 2
        while half:
            def combine(t, half=half):
                other = _op("add", t, _i(half))
                return [If(Compare("lt", t, _i(half)),
                           (Store(buf, (t,), _op(op, Load(buf, (t,)), Load(buf, (other,)))),))]
            out.append(phase(combine))
            half //= 2
        return out

    body = build(row_at, at, walk, phase, tree, threads)
    return [For(bv, rows * threads, (Local(row, _op("idiv", bv, _i(threads))), *row_decls,
                                      *body), step=threads, bind="block.x")]


def _f32_only(out: Buffer, ins: list[Operand]) -> bool:
    return out.dtype == "f32" and all(o.buffer is not None and o.dtype == "f32" for o in ins)


def gpu_softmax(out: Buffer, ins: list[Operand], attrs: dict, names: Names) -> list | None:
    (x,) = ins
    if not _f32_only(out, ins) or attrs["axis"] % len(x.shape) != len(x.shape) - 1:
        return None

    def build(row, at, walk, phase, tree, threads):
        top = names.scratch_buffer("max", "f32", (threads,), scope="shared")
        total = names.scratch_buffer("sum", "f32", (threads,), scope="shared")
        m, s = names.var("m", "f32"), names.var("s", "f32")
        mx, inv = names.var("mx", "f32"), names.var("inv", "f32")

        def each(body):  # body(index) at every element of the thread's share
            def at_j(j):
                decls, i = at(j)
                return [*decls, *body(i)]
            return at_j

        def partial_max(t):
            return [Local(m, Const(float("-inf"), "f32")),
                    *walk(t, each(lambda i: [Assign(m, _op("max", m, x.load(i)))])),
                    Store(top, (t,), m)]

        def exp_and_sum(t):
            e = names.var("e", "f32")
            return [Local(mx, Load(top, (_i(0),))), Local(s, Const(0.0, "f32")),
                    *walk(t, each(lambda i: [
                        Local(e, Unary("exp", _op("sub", x.load(i), mx))),
                        Store(out, i, e), Assign(s, _op("add", s, e))])),
                    Store(total, (t,), s)]

        def scale(t):
            return [Local(inv, _op("div", Const(1.0, "f32"), Load(total, (_i(0),)))),
                    *walk(t, each(lambda i: [Store(out, i, _op("mul", Load(out, i), inv))]))]

        return [phase(partial_max), *tree(top, "max"), phase(exp_and_sum), *tree(total, "add"),
                phase(scale)]

    return _row_blocks(x.shape, len(x.shape) - 1, names, build)


def _gpu_norm(centered: bool):
    def lower(out: Buffer, ins: list[Operand], attrs: dict, names: Names) -> list | None:
        x, scale = ins[:2]
        bias = ins[2] if centered else None
        if not _f32_only(out, ins):
            return None
        first = attrs["axis"] % len(x.shape)
        n = product(x.shape[first:])

        def build(row, at, walk, phase, tree, threads):
            sums = names.scratch_buffer("sum", "f32", (threads,), scope="shared") \
                if centered else None
            squares = names.scratch_buffer("squares", "f32", (threads,), scope="shared")
            s, q = names.var("s", "f32"), names.var("q", "f32")
            mean, inv = names.var("mean", "f32"), names.var("inv", "f32")

            def each(body):
                def at_j(j):
                    decls, i = at(j)
                    return [*decls, *body(i, i[len(row):])]
                return at_j

            def value(i):
                return _op("sub", x.load(i), mean) if centered else x.load(i)

            def total(t):
                return [Local(s, Const(0.0, "f32")),
                        *walk(t, each(lambda i, p: [Assign(s, _op("add", s, x.load(i)))])),
                        Store(sums, (t,), s)]

            def square(t):
                head = [Local(mean, _op("div", Load(sums, (_i(0),)), Const(float(n), "f32")))] \
                    if centered else []
                return [*head, Local(q, Const(0.0, "f32")),
                        *walk(t, each(lambda i, p: [
                            Assign(q, _op("add", q, _op("mul", value(i), value(i))))])),
                        Store(squares, (t,), q)]

            def normalize(t):
                head = [Local(mean, _op("div", Load(sums, (_i(0),)), Const(float(n), "f32")))] \
                    if centered else []
                variance = _op("div", Load(squares, (_i(0),)), Const(float(n), "f32"))
                rs = Unary("rsqrt", _op("add", variance, Const(float(attrs["eps"]), "f32")))

                def write(i, p):
                    y = _op("mul", _op("mul", value(i), inv), scale.load(p))
                    return [store(out, i, _op("add", y, bias.load(p)) if centered else y)]
                return [*head, Local(inv, rs), *walk(t, each(write))]

            stats = [phase(total), *tree(sums, "add")] if centered else []
            return [*stats, phase(square), *tree(squares, "add"), phase(normalize)]

        return _row_blocks(x.shape, first, names, build) if isinstance(n, int) else None
    return lower


# op name -> its block-form lowering (same signature as OpDef.lower; None declines the shapes)
GPU_LOWERINGS: dict[str, Callable] = {"matmul": gpu_matmul, "softmax": gpu_softmax,
                                      "layer_norm": _gpu_norm(True), "rms_norm": _gpu_norm(False)}


def in_block_form(body) -> bool:
    """Whether a kernel body is written in block form (one block loop around thread loops)."""
    return len(body) == 1 and isinstance(body[0], For) and body[0].bind == "block.x"
