"""conv2d 3x3, stride 1, by Winograd's minimal filtering F(2x2, 3x3).

A direct 3x3 conv spends 9 multiply-adds per input channel on each output; F(2x2, 3x3) makes
a 2x2 block of outputs (a *tile*) from the 4x4 input patch under it with 16 products instead
of 36, a 2.25x cut in the contraction's work:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ) ] A        (g: a 3x3 filter, d: a 4x4 patch, Y: 2x2)

with the 4x3 G, 4x4 Bᵀ and 2x4 Aᵀ of Lavin and Gray ("Fast Algorithms for Convolutional
Neural Networks", 2015). Summed over input channels, the ⊙ becomes, for each of the 16
positions p of the 4x4 transformed tile, a matrix product

    M_p[m, t] = Σ_c U_p[m, c] · V_p[c, t]     (m: output channel, c: input channel, t: tile)

so the conv's work is 16 matmuls of M x C by C x tiles, run by matmul's register tiles
(ops/nn.py `tiled_matmul`), between an input transform (V = Bᵀ d B per tile and channel:
additions only) and an output transform (Aᵀ M A per tile and output channel, plus the bias;
an activation after the conv fuses into its stores like any epilogue).

Weights. U_p = (G g Gᵀ)_p is a 16-point formula of the 9 taps, one nest per position that
loops/fold.py evaluates at build time when the weight is a constant (the library then holds the
16 U_p matrices, 16/9 of the weight, and no longer the weight itself). A weight computed at
run time is transformed in the kernel.

Memory. The transformed tiles of the whole image (16·C per tile) and the products (16·M per
tile) would be 4x the conv's input and output; written and read back through memory they
would cost more than the products save. The tiles are taken instead in chunks of R tile rows,
each transformed, multiplied and transformed back while its V and M (16·(C + M)·R·TW floats)
sit in the core's L2 (CHUNK_BYTES), in a scratch *slot*. S slots run in parallel, slot s
taking the consecutive chunks s·K .. s·K + K - 1, so each thread reuses its slot's memory
chunk after chunk; tile rows left over run after them in slot 0. The input is first copied
into a zero-bordered scratch image (as the padded-copy conv does) whose size is a whole
number of tiles, so no transform needs a bounds check; where the output's height or width is
odd, the last tile row or column stores only its first row or column of outputs.

Numerics. The products are those of the same real-number sums, rounded differently: the
transforms add up to 4 inputs (V), 9 taps with factors of 1/2 (U) and 9 products (Y) before
and after the channel sum. Against an f64 reference the error stays within twice the direct
conv's (tests/test_winograd.py measures both). One case differs in kind: an infinite or NaN
input reaches all four outputs of each tile whose patch holds it (Aᵀ M A subtracts what the
direct sum never added: inf - inf). `aotml build --no-winograd` keeps the other forms.
"""

from __future__ import annotations

from aotml.loops.build import Names, Operand, const, idx, store, zero_bordered_copy
from aotml.loops.ir import Binary, Buffer, Const, Expr, For, Load, Stmt, Store, map_expr
from aotml.ops.nn import tiled_matmul

# A conv takes this form only with at least this many input and output channels: the 16
# matmuls have C as their depth and M as their rows, and with fewer the transforms take what
# the products save. One core of Zen 4, 2026-12-07, Winograd's time over the other forms' at
# 1 / 2 threads: 16 channels at 56x56 1.13 / 0.95 and at 224x224 0.96 / 0.76; 32 -> 64 at
# 112x112 0.56 / 0.47; 64 at 28x28 0.58 / 0.53.
MIN_CHANNELS = 32
# ... and an output of at least MIN_OUT x MIN_OUT (smaller ones take the implicit GEMM).
MIN_OUT = 8
# The bytes a chunk's transformed tiles and products aim at (a chunk of one tile row may take
# more, and widened rows up to MAX_WASTE more): the 1 MiB L2 of a Zen 4 core (2 MiB on
# recent Intel cores). The plan takes the smallest chunks that make whole
# vectors of tiles: at 112x112, 32 -> 64 channels, 688 KiB (chunks of 4 tile rows, 1.4 MiB,
# ran 10-25% slower; of 1 row, widened to whole vectors, the same within the noise).
CHUNK_BYTES = 1 << 20
SLOTS = 8  # the most scratch slots: the chunks run on at most this many threads at once
# The most tiles a chunk's rows may be widened by, as a fraction (see _plan): beyond it, as
# for a 10x10 output (5 tiles a row, 8 at best with AVX-512), the wasted products cost more
# than the form saves. (Rows widened 2.3x, 7 tiles to 16, made 256 channels at 14x14 no
# faster than the direct conv; widened 8/7 by chunks of 4 rows, 0.52x its time.)
MAX_WASTE = 1.15

_ADD, _SUB = "add", "sub"


def applies(x: Operand, w: Operand, out: Buffer, axes, lanes: int | None) -> bool:
    """Whether the conv (groups 1) takes this form: f32, static sizes, a 3x3 kernel at stride
    and dilation 1, enough channels and outputs, and a CPU vector width."""
    if not lanes or out.dtype != "f32" or any(o.buffer is None or o.dtype != "f32"
                                              for o in (x, w)):
        return False
    if not all(isinstance(d, int) for d in (*x.shape[1:], *w.shape)):
        return False
    m_out, c_in, k_h, k_w = w.shape
    return (k_h, k_w) == (3, 3) and m_out >= MIN_CHANNELS and c_in >= MIN_CHANNELS and \
        all(a.stride == 1 and a.dilation == 1 and a.out >= MIN_OUT for a in axes)


# The transforms as sums: row i of each matrix lists (sign, column) pairs; G's middle rows
# carry a factor of 1/2 (_HALF_ROWS).
_BT = (((1, 0), (-1, 2)), ((1, 1), (1, 2)), ((-1, 1), (1, 2)), ((1, 1), (-1, 3)))
_G = (((1, 0),), ((1, 0), (1, 1), (1, 2)), ((1, 0), (-1, 1), (1, 2)), ((1, 2),))
_HALF_ROWS = (1, 2)
_AT = (((1, 0), (1, 1), (1, 2)), ((1, 1), (-1, 2), (-1, 3)))


def _combine(terms, values) -> Expr:
    """Σ sign·values[j] over `terms`, left to right (a leading minus as 0 - v)."""
    out: Expr | None = None
    for sign, j in terms:
        v = values[j]
        if out is None:
            out = v if sign > 0 else Binary(_SUB, const(0, "f32"), v)
        else:
            out = Binary(_ADD if sign > 0 else _SUB, out, v)
    return out


def _apply(rows, grid: list[list[Expr]], half: tuple[int, ...] = ()) -> list[list[Expr]]:
    """rows · grid · rowsᵀ (rows: a matrix given as sums, as wide as the square `grid` of
    expressions), the rows listed in `half` times 1/2."""
    half_c = const(0.5, "f32")

    def scaled(i: int, e: Expr) -> Expr:
        return Binary("mul", half_c, e) if i in half else e
    left = [[scaled(i, _combine(r, [grid[k][j] for k in range(len(grid))]))
             for j in range(len(grid[0]))] for i, r in enumerate(rows)]
    return [[scaled(j, _combine(r, left[i])) for j, r in enumerate(rows)]
            for i in range(len(rows))]


def _plan(tile_rows: int, full_rows: int, tiles_w: int, c_in: int, m_out: int, lanes: int
          ) -> tuple[int, int, int, int] | None:
    """(R, W, S, K): chunks of R tile rows, each row W >= tiles_w tiles wide so that a chunk
    is whole vectors of tiles (the matmul then has no scalar columns; the tiles past the
    image's are zeros, multiplied and never stored), and S slots of K chunks each; None when
    every choice widens the rows by more than MAX_WASTE. Among the others it prefers, in
    this order: two slots or more (the slots are the form's only parallel loop, the batch
    included), no rows left over (they run in slot 0 after the slots), an even slot count
    (split evenly by 2 threads), less widening, chunks of whole register tiles, then smaller
    chunks (a matmul's b panel stays in L1)."""
    per_tile = 16 * (c_in + m_out) * 4
    r_max = max(1, min(full_rows, CHUNK_BYTES // (per_tile * tiles_w)))
    best = None
    for r in range(1, r_max + 1):
        chunks = full_rows // r
        if chunks == 0:
            continue
        w = tiles_w
        while r * w % lanes:
            w += 1
        s = max((d % 2 == 0, d) for d in range(1, min(SLOTS, chunks) + 1)
                if chunks % d == 0)[1]
        left = tile_rows - chunks * r
        key = (w <= MAX_WASTE * tiles_w, s >= 2, left == 0 or left == tile_rows - full_rows,
               s % 2 == 0 or s == chunks, -w, r * w % (2 * lanes) == 0, -r)
        if best is None or key > best[0]:
            best = (key, (r, w, s, chunks // s))
    return best[1] if best and best[0][0] else None


def winograd_conv(out: Buffer, ins, axes, names: Names) -> list[Stmt] | None:
    """conv2d as F(2x2, 3x3) (see the module docstring), or None where no chunking fits
    (the caller checked `applies`)."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) == 3 else None
    ah, aw = axes
    n_, c_in, h_, w_ = x.shape
    m_out = w.shape[0]
    oh, ow = ah.out, aw.out
    th = -(-oh // 2)                             # tile rows
    plan = _plan(th, oh // 2, -(-ow // 2), c_in, m_out, names.lanes)
    if plan is None or plan[2] == 1 and n_ != 1:
        return None  # (one slot: a batch would run on one thread, where the others split it)
    r_, tw, s_, k_ = plan                        # tw: tile columns, past the image's too
    names.schedule = (f"Winograd F(2x2, 3x3): {s_} parallel slots of {k_} chunks, each "
                      f"{r_} x {tw} tiles ({-(-ow // 2)} in the image's rows)")
    hp, wp = 2 * th + 2, 2 * tw + 2             # the zero-bordered copy
    q_ = r_ * tw                                 # tiles in a chunk
    stmts: list[Stmt] = []

    # U_p[m, c] for each position p = 4i + j: one nest each, folded at build time for a weight
    u = []
    for p in range(16):
        up = names.scratch_buffer(f"wino_u{p}", "f32", (m_out, c_in))
        m, c = names.var("m"), names.var("c")
        taps = [[w.load((m, c, idx(a), idx(b))) for b in range(3)] for a in range(3)]
        value = _apply(_G, taps, _HALF_ROWS)[p // 4][p % 4]
        stmts.append(For(m, m_out, (For(c, c_in, (Store(up, (m, c), value),)),)))
        u.append(up)

    # the input in a zero-bordered copy of whole tiles
    xp = names.scratch_buffer("wino_in", "f32", (n_, c_in, hp, wp))
    stmts += zero_bordered_copy(x, xp, ah.pad_lo, aw.pad_lo, names)

    vs = names.scratch_buffer("wino_v", "f32", (s_, 16, c_in, q_))
    ms = names.scratch_buffer("wino_m", "f32", (s_, 16, m_out, q_))

    def chunk(slot: Expr, n: Expr, row0: Expr, rows: int, half_last: bool) -> list[Stmt]:
        """Tile rows row0 .. row0 + rows - 1 of image n through slot `slot`."""
        out_: list[Stmt] = []
        # V: for each channel and tile, Bᵀ d B of its 4x4 patch
        c, r, t = names.var("c"), names.var("r"), names.var("t")
        top = _sum([(row0, 2), (r, 2)])
        patch = [[Load(xp, (n, c, _sum([(top, 1)], i), _sum([(t, 2)], j))) for j in range(4)]
                 for i in range(4)]
        v = _apply(_BT, patch)
        q = _sum([(r, tw), (t, 1)])
        out_.append(For(c, c_in, (For(r, rows, (For(t, tw, tuple(
            Store(vs, (slot, idx(p), c, q), v[p // 4][p % 4]) for p in range(16))),)),)))
        # M_p = U_p · V_p, each a matmul of m_out x c_in by c_in x (rows·tw)
        b_op = Operand((s_, 16, c_in, q_), vs)
        for p in range(16):
            out_ += tiled_matmul(ms, Operand((m_out, c_in), u[p]), b_op, (slot, idx(p)), (),
                                 (slot, idx(p)), m_out, rows * tw, c_in, names, pack=False)
        # Y = Aᵀ M A for each output channel and tile, plus the bias
        m, r, t = names.var("m"), names.var("r"), names.var("t")
        q = _sum([(r, tw), (t, 1)])
        grid = [[Load(ms, (slot, idx(4 * i + j), m, q)) for j in range(4)] for i in range(4)]
        y = _apply(_AT, grid)
        start = bias.load((m,)) if bias is not None else None

        def outputs(r_: Expr, t_: Expr, n_rows: int, n_cols: int) -> list[Stmt]:
            at = [[(n, m, _sum([(row0, 2), (r_, 2)], a), _sum([(t_, 2)], b))
                   for b in range(2)] for a in range(2)]
            sub = {r: r_, t: t_}
            body: list[Stmt] = []
            for a in range(n_rows):
                for b in range(n_cols):
                    val = _subst(y[a][b], sub)
                    if start is not None:
                        val = Binary(_ADD, val, start)
                    body.append(store(out, at[a][b], val))
            return body

        full_rows = rows - 1 if half_last else rows
        full_cols = ow // 2
        loops: list[Stmt] = []
        if full_rows:
            row_body: list[Stmt] = []
            if full_cols:
                row_body.append(For(t, full_cols, tuple(outputs(r, t, 2, 2))))
            if ow % 2:
                row_body += outputs(r, idx(full_cols), 2, 1)
            loops.append(For(r, full_rows, tuple(row_body)))
        if half_last:
            last = idx(rows - 1)
            t2 = names.var("t")
            if full_cols:
                loops.append(For(t2, full_cols, tuple(outputs(last, t2, 1, 2))))
            if ow % 2:
                loops += outputs(last, idx(full_cols), 1, 1)
        out_.append(For(m, m_out, tuple(loops)))
        return out_

    # S slots of K chunks in parallel, each chunk R full tile rows
    if k_:
        s, n, j = names.var("s"), names.var("n"), names.var("j")
        row0 = _sum([(s, k_ * r_), (j, r_)])
        stmts.append(For(s, s_, (For(n, n_, (For(j, k_, tuple(
            chunk(s, n, row0, r_, False))),)),)))
    # the tile rows left over, in slot 0 (the last one half a row where oh is odd)
    done = s_ * k_ * r_
    n = names.var("n")
    left: list[Stmt] = []
    while done < th:
        rows = min(r_, th - done)
        left += chunk(idx(0), n, idx(done), rows, done + rows == th and oh % 2 == 1)
        done += rows
    if left:
        stmts.append(For(n, n_, tuple(left)))
    return stmts


def _sum(terms, offset: int = 0) -> Expr:
    """Σ e·k + offset as an index expression, without the trivial parts."""
    out: Expr | None = None
    for e, k in terms:
        if isinstance(e, Const):
            offset += int(e.value) * k
            continue
        term = e if k == 1 else Binary("mul", e, idx(k))
        out = term if out is None else Binary(_ADD, out, term)
    if out is None:
        return idx(offset)
    return Binary(_ADD, out, idx(offset)) if offset else out


def _subst(e: Expr, sub: dict) -> Expr:
    return map_expr(e, lambda x: sub.get(x, x))
