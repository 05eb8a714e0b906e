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

Matmul: each block computes a bm x bn tile of the output, each of its threads a tm x tn
register tile (MatmulTile; large products take 128 x 128 blocks of 8 x 8 threads, smaller ones
64 x 64 blocks of 4 x 4, so there are blocks enough for the whole GPU). The K dimension is
walked in steps of bk: in one phase the block copies a bm x bk slice of `a` (transposed, each
row padded against bank conflicts) and a bk x bn slice of `b` into shared memory, each thread
copying runs of 4 elements with neighbouring threads on neighbouring runs (coalesced, 16-byte
reads where the address allows); in the next phase each thread reads tm values of the `a`
slice and tn of the `b` slice per step of k, 4 at a time, and does tm*tn multiply-adds.
Loads past the edges read a clamped, in-bounds address and select zero; stores past them are
guarded. Row blocks vary fastest across the grid, so neighbouring blocks share their slice
of `b` in the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aotml.graph.symbolic import Dim, Sym, product
from aotml.loops.build import Names, Operand, all_of, broadcast_indices, idx, store
from aotml.loops.ir import (
    WARP,
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
    Shuffle,
    Store,
    Unary,
    Var,
)
from aotml.ops.conv import direct_conv_lower

VEC = 4  # floats in one 16-byte access


@dataclass(frozen=True)
class MatmulTile:
    """The block's bm x bn output tile, its step bk along k, and each thread's tm x tn register
    tile, which it holds as chunks of VEC rows and VEC columns spread across the block's tile
    (rows ty*VEC + i and bm/2 + ty*VEC + i for tm = 8): each chunk is one 16-byte shared-memory
    read per step of k, and neighbouring threads' chunks sit side by side, so a warp's reads
    are free of bank conflicts."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    def __post_init__(self):
        # whole chunks per thread, and whole runs of VEC per thread in each slice copy
        ok = self.tm % VEC == 0 and self.tn % VEC == 0 and self.bk % VEC == 0 \
            and self.bm % self.tm == 0 and self.bn % self.tn == 0 \
            and self.threads % self.bm == 0 \
            and self.bm * self.bk // VEC % self.threads == 0 \
            and self.bk * self.bn // VEC % self.threads == 0
        if not ok:
            raise ValueError(f"matmul tile {self} does not divide into its threads' work")

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


# 8 x 8 a thread: 64 multiply-adds per 4 shared-memory reads; for products of at least
# BIG_TILE_BLOCKS such blocks (about a block per multiprocessor of a large GPU). Smaller ones
# take 64 x 64 blocks of 4 x 4 threads, four times as many blocks, so the whole GPU works.
# On an H200 (benchmarks/gpu_tiles.py, two runs on 2026-12-04) the big tile with k steps of
# 16 ran at 0.81-0.87 of torch's fp32 product from N = 2048 up, k steps of 8 at 0.81-0.84, and
# the small tile at 0.74-0.86 for N = 1024 (64 big blocks: 0.51-0.59) but 0.61-0.65 above.
BIG_TILE, SMALL_TILE = MatmulTile(128, 128, 16, 8, 8), MatmulTile(64, 64, 16, 4, 4)
BIG_TILE_BLOCKS = 128


def matmul_tile(m: Dim, n: int, batches: Dim) -> MatmulTile:
    """The tile for an m x n result (times `batches`); a symbolic m or batch takes the small
    one (its grid over a symbolic m also needs bm to divide the block's threads)."""
    big = BIG_TILE
    if isinstance(m, Sym) or isinstance(batches, Sym):
        return SMALL_TILE
    blocks = -(-m // big.bm) * -(-n // big.bn) * batches
    return big if blocks >= BIG_TILE_BLOCKS else SMALL_TILE


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
    batches: Dim = product(batch)
    tile = matmul_tile(m, n, batches)
    bm, bn, bk, tm, tn, threads = tile.bm, tile.bn, tile.bk, tile.tm, tile.tn, tile.threads
    col_blocks, k_steps = -(-n // bn), -(-k // bk)
    row_blocks: Expr = idx(-(-m // bm)) if isinstance(m, int) else \
        Binary("idiv", Binary("add", idx(m), idx(bm - 1)), idx(bm))
    # The grid: `threads` points per block. With a symbolic m, ceil(m / bm) is no polynomial,
    # so the grid covers batches * col_blocks * (m + bm - 1) / bm blocks, rounded up, which is
    # at least the row blocks there are; the blocks past them do nothing.
    if isinstance(m, int):
        points: Dim = batches * col_blocks * -(-m // bm) * threads
    else:
        points = batches * col_blocks * (m + bm - 1) * (threads // bm)
    at_edge_m = isinstance(m, Sym) or m % bm != 0
    at_edge_n, at_edge_k = n % bn != 0, k % bk != 0

    # a's slice is stored transposed, its rows padded by VEC floats: still 16-byte aligned for
    # the vector reads, and the transposed writes of a warp spread over the banks
    a_tile = names.scratch_buffer("a_tile", "f32", (bk, bm + VEC), scope="shared")
    b_tile = names.scratch_buffer("b_tile", "f32", (bk, bn), scope="shared")
    acc = names.scratch_buffer("acc", "f32", (threads, tm * tn), scope="local")
    bv, blk = names.var("block"), names.var("blk")
    rb, cb, bt = names.var("rb"), names.var("cb"), names.var("bt")
    k0 = names.var("k0")
    uniform: list = [
        Local(blk, Binary("idiv", bv, idx(threads))),
    ]
    inside: list = [
        Local(rb, Binary("irem", blk, row_blocks)),
        Local(cb, Binary("irem", Binary("idiv", blk, row_blocks), idx(col_blocks))),
        Local(bt, Binary("idiv", Binary("idiv", blk, row_blocks), idx(col_blocks))),
    ]
    batch_decls, at = _unflatten(bt, batch, names)  # the batch index, row-major
    inside += batch_decls
    ai = broadcast_indices(at, a.shape[:-2], batch)
    bi = broadcast_indices(at, b.shape[:-2], batch)
    row0 = Binary("mul", rb, idx(bm))
    col0 = Binary("mul", cb, idx(bn))

    def phase(body: Callable[[Var], list]) -> For:
        t = names.var("t")
        return For(t, threads, tuple(body(t)), bind="thread.x")

    def zero(t: Var) -> list:
        return [Store(acc, (t, idx(q)), Const(0.0, "f32")) for q in range(tm * tn)] \
            + fetch(t, idx(0))

    def edge_load(x: Operand, at_: tuple, dims: list[tuple[Expr, Dim, bool]]) -> Expr:
        """x at `at_` + the (index, extent, may pass the edge) of its last two dims: an
        index that may pass its edge reads at a clamped one, and the value is zero there."""
        index = [Binary("min", i, Binary("sub", idx(d), idx(1))) if edge else i
                 for i, d, edge in dims]
        inside_ = all_of([Compare("lt", i, idx(d)) for i, d, edge in dims if edge])
        value = x.load(at_ + tuple(index))
        return value if inside_ is None else Select(inside_, value, Const(0.0, "f32"))

    def stage(t: Var, x: Operand, xi: tuple, tile_: Buffer, rows: int, width: int,
              dims: list[tuple[Expr, Dim, bool]], var_names: tuple[str, str],
              transposed: bool) -> tuple[list, list]:
        """The thread's share of x's rows x width slice, bound for `tile_` (transposed:
        tile_[col, row]): (Locals, [(value of x, index in tile_)]). Each thread copies runs of
        VEC elements along the slice's second dim, neighbouring threads the neighbouring runs
        (coalesced, and one 16-byte read where the address allows): run `flat` starts at
        (flat // (width / VEC), flat % (width / VEC) * VEC) of the slice, whose dims start at,
        run to and may pass the edge as `dims` say."""
        decls: list = []
        moves: list = []
        runs = width // VEC
        for step in range(rows * runs // threads):
            flat = Binary("add", t, idx(step * threads))
            u, v = names.var(var_names[0]), names.var(var_names[1])
            (base0, n0, edge0), (base1, n1, edge1) = dims
            decls += [Local(u, Binary("idiv", flat, idx(runs))),
                      Local(v, Binary("mul", Binary("irem", flat, idx(runs)), idx(VEC)))]
            for c in range(VEC):
                vc = Binary("add", v, idx(c))
                value = edge_load(x, xi, [(Binary("add", base0, u), n0, edge0),
                                          (Binary("add", base1, vc), n1, edge1)])
                moves.append((value, (vc, u) if transposed else (u, vc)))
        return decls, moves

    def slices(t: Var, step: Expr) -> list[tuple[list, list, Buffer]]:
        """The thread's share of the slices of a and b for k step `step`."""
        kbase = Binary("mul", step, idx(bk))
        # a's slice k fastest across the threads, stored transposed; b's n fastest
        return [(*stage(t, a, ai, a_tile, bm, bk, [(row0, m, at_edge_m),
                                                   (kbase, k, at_edge_k)],
                        ("mm", "kk"), transposed=True), a_tile),
                (*stage(t, b, bi, b_tile, bk, bn, [(kbase, k, at_edge_k),
                                                   (col0, n, at_edge_n)],
                        ("kk", "nn"), transposed=False), b_tile)]

    # Slices travel through registers: the thread reads step k0 + 1's values from global
    # memory while it computes step k0, so their latency hides behind the multiply-adds.
    fetched = (bm + bn) * bk // threads
    held = names.scratch_buffer("held", "f32", (threads, fetched), scope="local")

    def fetch(t: Var, step: Expr) -> list:
        stmts: list = []
        q = 0
        for decls, moves, _ in slices(t, step):
            stmts += decls
            for value, _ in moves:
                stmts.append(Store(held, (t, idx(q)), value))
                q += 1
        return stmts

    def put(t: Var) -> list:
        stmts: list = []
        q = 0
        for decls, moves, tile_ in slices(t, idx(0)):
            stmts += decls
            for _, at_ in moves:
                stmts.append(Store(tile_, at_, Load(held, (t, idx(q)))))
                q += 1
        return stmts

    def thread_tile(t: Var) -> tuple[list, list, list]:
        """The thread's tm rows and tn columns within the block's tile, and their Locals."""
        ty, tx = names.var("ty"), names.var("tx")
        head = [Local(ty, Binary("idiv", t, idx(bn // tn))),
                Local(tx, Binary("irem", t, idx(bn // tn)))]

        def spread(pos: Var, count: int, extent: int) -> list:
            chunk = extent // (count // VEC)  # the distance between a thread's chunks
            return [Binary("add", Binary("mul", pos, idx(VEC)), idx(i // VEC * chunk + i % VEC))
                    for i in range(count)]
        return spread(ty, tm, bm), spread(tx, tn, bn), head

    def compute(t: Var) -> list:
        rows, cols, head = thread_tile(t)
        kk = names.var("kk")
        av = [names.var("a", "f32") for _ in range(tm)]
        bw = [names.var("b", "f32") for _ in range(tn)]
        step = [Local(av[i], Load(a_tile, (kk, rows[i]))) for i in range(tm)]
        step += [Local(bw[j], Load(b_tile, (kk, cols[j]))) for j in range(tn)]
        step += [Store(acc, (t, idx(i * tn + j)),
                       MulAdd(av[i], bw[j], Load(acc, (t, idx(i * tn + j)))))
                 for i in range(tm) for j in range(tn)]
        return [*head, For(kk, bk, tuple(step))]

    def write(t: Var) -> list:
        rows, cols, head = thread_tile(t)
        stmts = list(head)
        for i in range(tm):
            for j in range(tn):
                row, col = Binary("add", row0, rows[i]), Binary("add", col0, cols[j])
                s = store(out, (*at, row, col), Load(acc, (t, idx(i * tn + j))))
                guard = all_of(([Compare("lt", row, idx(m))] if at_edge_m else [])
                             + ([Compare("lt", col, idx(n))] if at_edge_n else []))
                stmts.append(If(guard, (s,)) if guard is not None else s)
        return stmts

    total_blocks = Binary("mul", Binary("mul", row_blocks, idx(col_blocks)), idx(batches))
    def fetch_next(t: Var) -> list:
        """Step k0 + 1's slices into registers, on every step but the last (uniform)."""
        following = Binary("add", k0, idx(1))
        if k_steps == 1:
            return []
        return [If(Compare("lt", following, idx(k_steps)), tuple(fetch(t, following)))]
    work = [*inside, phase(zero),
            For(k0, k_steps, (phase(put), phase(lambda t: fetch_next(t) + compute(t)))),
            phase(write)]
    body = [*uniform, If(Compare("lt", blk, total_blocks), tuple(work))] \
        if isinstance(m, Sym) else [*uniform, *work]
    return [For(bv, points, tuple(body), step=threads, bind="block.x")]


# Row reductions: softmax, layer_norm and rms_norm over a row of n elements run one block per
# row. Each thread walks the row with the block's stride, keeping its partial max or sum. The
# partials of a warp are combined in registers by shuffles (5 halving steps, no barrier);
# lane 0 of each warp puts its warp's total in shared memory (a barrier), and the first warp
# combines those the same way and puts the row's total in shared memory (a barrier), where
# every thread reads it for the next pass: two barriers a reduction, against one per halving
# step of a tree in shared memory. A row stays in the threads that read it, so the passes
# that write the output and read it back need no barrier between them.
MIN_ROW_THREADS, MAX_ROW_THREADS = 32, 256


def _unflatten(flat: Expr, dims: tuple[int | Dim, ...], names: Names) -> tuple[list, list]:
    """(Locals, indices): `flat` as row-major indices over `dims`."""
    decls, out = [], []
    rest = flat
    for d in reversed(dims):
        if d == 1:
            out.insert(0, idx(0))
            continue
        v = names.var("r")
        decls.insert(0, Local(v, Binary("irem", rest, idx(d))))
        out.insert(0, v)
        rest = Binary("idiv", rest, idx(d))
    return decls, out


def _row_blocks(shape: tuple, first: int, names: Names, build: Callable) -> list | None:
    """One block per row of the trailing dims `shape[first:]` (static, n elements). `build(
    row, at, walk, phase, reduction, threads)` returns the block's statements: `row` the
    leading indices, `at(j)` the full index of row element j, `walk(t, body)` thread t's share
    of the row's elements, `phase(fn, barrier)` a thread loop, and `reduction(op, partial)` the
    phases that combine every thread's partial (`partial(t)` -> (statements, value)) with the
    total's expression for the phases after them."""
    trail = shape[first:]
    n = product(trail)
    if not isinstance(n, int):
        return None
    threads = min(max(MIN_ROW_THREADS, 1 << (n - 1).bit_length()), MAX_ROW_THREADS)
    rows: Dim = product(shape[:first])
    bv, row = names.var("block"), names.var("row")
    row_decls, row_at = _unflatten(row, shape[:first], names)

    def at(j: Expr) -> tuple[list, tuple]:
        decls, inner = _unflatten(j, trail, names)
        return decls, (*row_at, *inner)

    def walk(t: Var, body: Callable) -> list:
        c, j = names.var("c"), names.var("j")
        step = [Local(j, Binary("add", Binary("mul", c, idx(threads)), t))]
        inner = body(j)
        step += [If(Compare("lt", j, idx(n)), tuple(inner))] if n % threads else inner
        return [For(c, -(-n // threads), tuple(step))]

    def phase(fn: Callable, barrier: bool = True) -> For:
        t = names.var("t")
        return For(t, threads, tuple(fn(t)), bind="thread.x", barrier=barrier)

    def shuffled(op: str, first: Callable, lanes: int) -> tuple[list, Buffer, int]:
        """A phase keeping first(t)'s value in the thread's row of a local buffer, then the
        log2(lanes) phases halving it by shuffles: lane 0 of each group of `lanes` ends with
        the group's total in the last column. Registers only: no barriers."""
        steps = lanes.bit_length() - 1
        part = names.scratch_buffer("part", "f32", (threads, steps + 1), scope="local")

        def head(t):
            stmts, value = first(t)
            return [*stmts, Store(part, (t, idx(0)), value)]

        def halve(t, s, delta):
            mine = Load(part, (t, idx(s)))
            theirs = Shuffle(part, (t, idx(s)), delta)
            return [Store(part, (t, idx(s + 1)), Binary(op, mine, theirs))]
        out = [phase(head, barrier=False)]
        out += [phase(lambda t, s=s: halve(t, s, lanes >> (s + 1)), barrier=False)
                for s in range(steps)]
        return out, part, steps

    def reduction(op: str, partial: Callable) -> tuple[list, Expr]:
        warps = threads // WARP
        assert warps <= WARP, "the warps' totals are combined by one warp"
        identity = Const(0.0 if op == "add" else float("-inf"), "f32")
        per_warp = names.scratch_buffer("warp_totals", "f32", (warps,), scope="shared")
        out, part, steps = shuffled(op, partial, WARP)

        def lane0(t: Var, part: Buffer, steps: int, dest: Buffer, slot: Expr,
                  lanes: int) -> list:
            """The first thread of each group of `lanes` stores its total at dest[slot]."""
            first_lane = Compare("eq", Binary("irem", t, idx(lanes)), idx(0))
            return [If(first_lane, (Store(dest, (slot,), Load(part, (t, idx(steps)))),))]
        out.append(phase(lambda t: lane0(t, part, steps, per_warp,
                                         Binary("idiv", t, idx(WARP)), WARP)))
        if warps == 1:
            return out, Load(per_warp, (idx(0),))
        # the warps' totals, by the first warp (the others combine copies of the identity)
        total = names.scratch_buffer("total", "f32", (1,), scope="shared")

        def gather(t):
            mine = Load(per_warp, (Binary("min", t, idx(warps - 1)),))
            return [], Select(Compare("lt", t, idx(warps)), mine, identity)
        second, part2, steps2 = shuffled(op, gather, warps)
        out += second
        out.append(phase(lambda t: lane0(t, part2, steps2, total, idx(0), threads)))
        return out, Load(total, (idx(0),))

    body = build(row_at, at, walk, phase, reduction, threads)
    return [For(bv, rows * threads, (Local(row, Binary("idiv", bv, idx(threads))), *row_decls,
                                      *body), step=threads, bind="block.x")]


def _f32_only(out: Buffer, ins: list[Operand]) -> bool:
    return out.dtype == "f32" and all(o.buffer is not None and o.dtype == "f32" for o in ins)


def gpu_softmax(out: Buffer, ins: list[Operand], attrs: dict, names: Names) -> list | None:
    (x,) = ins
    if not _f32_only(out, ins) or attrs["axis"] % len(x.shape) != len(x.shape) - 1:
        return None

    def build(row, at, walk, phase, reduction, threads):
        m, s = names.var("m", "f32"), names.var("s", "f32")
        mx, inv = names.var("mx", "f32"), names.var("inv", "f32")

        def each(body):  # body(index) at every element of the thread's share
            def at_j(j):
                decls, i = at(j)
                return [*decls, *body(i)]
            return at_j

        def partial_max(t):
            return [Local(m, Const(float("-inf"), "f32")),
                    *walk(t, each(lambda i: [Assign(m, Binary("max", m, x.load(i)))]))], m
        find_max, top = reduction("max", partial_max)

        def exp_and_sum(t):
            e = names.var("e", "f32")
            return [Local(mx, top), Local(s, Const(0.0, "f32")),
                    *walk(t, each(lambda i: [
                        Local(e, Unary("exp", Binary("sub", x.load(i), mx))),
                        Store(out, i, e), Assign(s, Binary("add", s, e))]))], s
        add_up, total = reduction("add", exp_and_sum)

        def scale(t):
            return [Local(inv, Binary("div", Const(1.0, "f32"), total)),
                    *walk(t, each(lambda i: [Store(out, i, Binary("mul", Load(out, i), inv))]))]

        # (each thread rescales the elements it wrote: no barrier before or after)
        return [*find_max, *add_up, phase(scale, barrier=False)]

    return _row_blocks(x.shape, len(x.shape) - 1, names, build)


def _gpu_norm(centered: bool):
    def lower(out: Buffer, ins: list[Operand], attrs: dict, names: Names) -> list | None:
        x, scale = ins[:2]
        bias = ins[2] if centered else None
        if not _f32_only(out, ins):
            return None
        first = attrs["axis"] % len(x.shape)
        n = product(x.shape[first:])

        def build(row, at, walk, phase, reduction, threads):
            s, q = names.var("s", "f32"), names.var("q", "f32")
            mean, inv = names.var("mean", "f32"), names.var("inv", "f32")

            def each(body):
                def at_j(j):
                    decls, i = at(j)
                    return [*decls, *body(i, i[len(row):])]
                return at_j

            def value(i):
                return Binary("sub", x.load(i), mean) if centered else x.load(i)

            def total(t):
                return [Local(s, Const(0.0, "f32")),
                        *walk(t, each(lambda i, p: [Assign(s, Binary("add", s, x.load(i)))]))], s
            stats, row_sum = reduction("add", total) if centered else ([], None)

            def mean_of():
                return [Local(mean, Binary("div", row_sum, Const(float(n), "f32")))] \
                    if centered else []

            def square(t):
                return [*mean_of(), Local(q, Const(0.0, "f32")),
                        *walk(t, each(lambda i, p: [
                            Assign(q, Binary("add", q, Binary("mul", value(i), value(i))))]))], q
            spread, squares = reduction("add", square)

            def normalize(t):
                variance = Binary("div", squares, Const(float(n), "f32"))
                rs = Unary("rsqrt", Binary("add", variance, Const(float(attrs["eps"]), "f32")))

                def write(i, p):
                    y = Binary("mul", Binary("mul", value(i), inv), scale.load(p))
                    return [store(out, i, Binary("add", y, bias.load(p)) if centered else y)]
                return [*mean_of(), Local(inv, rs), *walk(t, each(write))]

            return [*stats, *spread, phase(normalize, barrier=False)]

        return _row_blocks(x.shape, first, names, build) if isinstance(n, int) else None
    return lower


# op name -> its GPU lowering (same signature as OpDef.lower; None declines the shapes): the
# block forms above, and conv2d's direct form, one thread per output element (the CPU's tiled
# conv holds a tile of rows per thread: a 28x28 conv at batch 8 ran on 16 threads)
GPU_LOWERINGS: dict[str, Callable] = {"matmul": gpu_matmul, "softmax": gpu_softmax,
                                      "layer_norm": _gpu_norm(True), "rms_norm": _gpu_norm(False),
                                      "conv2d": direct_conv_lower}


def in_block_form(body) -> bool:
    """Whether a kernel body is written in block form (one block loop around thread loops)."""
    return len(body) == 1 and isinstance(body[0], For) and body[0].bind == "block.x"
