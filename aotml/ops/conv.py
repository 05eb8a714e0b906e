"""Convolution, pooling (NCHW) and attention.

Spatial attributes follow PyTorch/ONNX: `stride` and `dilation` are one int or a pair (H, W);
`padding` is one int (every side), a pair (top/bottom, left/right) or four values in ONNX order
(top, left, bottom, right). Output sizes use floor rounding: (H + top + bottom - ek) // s + 1
with the effective kernel extent ek = dilation·(k - 1) + 1.

The lowerings never read out of bounds: where a window can reach into the padding (decided
statically per side), the input coordinate is clamped into range for the load and a Select on
the unclamped coordinate replaces the value by the padding value (0, or -inf for max pooling).
f32 conv2d (groups 1, static sizes) instead takes one of four faster forms, chosen from the
shapes: Winograd's F(2x2, 3x3) for 3x3 convs with enough channels (ops/winograd.py), an
implicit GEMM for narrow outputs (its unfolding step is a checked loop as above, the matmul
after it has none), or register tiles whose loops are shaped so that no tap needs a check, on
the input itself or on a zero-bordered copy of it (see "The f32 fast path", "Implicit GEMM"
and "Padding by a copy" below). A depthwise conv with wide enough outputs takes tiles of rows
of one channel ("Depthwise"). Every accumulation happens in an f32 local (scalar or vector),
whatever the storage dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from aotml.graph.ir import TensorType
from aotml.loops.build import (
    Names,
    Operand,
    all_of,
    broadcast_indices,
    const,
    idx,
    lane_sum,
    loop_nest,
    store,
    zero_bordered_copy,
    zero_bordered_plane,
)
from aotml.loops.ir import (
    Assign,
    Binary,
    Buffer,
    Cast,
    Compare,
    Expr,
    For,
    Lane,
    Load,
    Local,
    MulAdd,
    Select,
    Splat,
    Stmt,
    Store,
    Unary,
    Var,
    VecLoad,
    vector_dtype,
)
from aotml.ops.core import broadcast_shapes, same_dtype
from aotml.ops.nn import max_and_sum_exp, tiled_matmul
from aotml.ops.registry import Attr, OpDef, OpTypeError, register
from aotml.ops.winograd import applies as winograd_applies
from aotml.ops.winograd import winograd_conv

# ---------------------------------------------------------------------------------------------
# Attributes and geometry


def _pair(attrs: dict, name: str, op: str, x: TensorType | None = None) -> tuple[int, int]:
    """A one-int-or-pair attribute as (H, W), each positive; `x` names the input in errors."""
    value = attrs[name]
    on = f" (input {x})" if x is not None else ""
    if len(value) not in (1, 2):
        raise OpTypeError(f"'{op}' attribute '{name}' takes one integer or a pair (H, W), "
                          f"got {len(value)} values {value}{on}", attr=name)
    pair = (value[0], value[0]) if len(value) == 1 else value
    if min(pair) < 1:
        raise OpTypeError(f"'{op}' {name} must be positive, got {value}{on}", attr=name)
    return pair


def _padding(attrs: dict, op: str, x: TensorType | None = None) -> tuple[int, int, int, int]:
    """`padding` as (top, bottom, left, right): one int, a pair, or ONNX's four values."""
    p = attrs["padding"]
    on = f" (input {x})" if x is not None else ""
    if len(p) == 1:
        out = (p[0],) * 4
    elif len(p) == 2:
        out = (p[0], p[0], p[1], p[1])
    elif len(p) == 4:  # ONNX: (top, left, bottom, right)
        out = (p[0], p[2], p[1], p[3])
    else:
        raise OpTypeError(f"'{op}' attribute 'padding' takes 1, 2 or 4 integers, got {len(p)} "
                          f"values {p}{on}", attr="padding",
                          hint="one for every side, (top/bottom, left/right), or "
                               "(top, left, bottom, right)")
    if min(out) < 0:
        raise OpTypeError(f"'{op}' padding must not be negative, got {p}{on}", attr="padding")
    return out


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a sliding window: the input index of output `o` and tap `k` is
    o·stride + k·dilation - pad_lo."""

    size: int       # input extent
    kernel: int
    stride: int
    dilation: int
    pad_lo: int
    pad_hi: int

    @property
    def extent(self) -> int:  # the effective kernel extent
        return self.dilation * (self.kernel - 1) + 1

    @property
    def out(self) -> int:
        return (self.size + self.pad_lo + self.pad_hi - self.extent) // self.stride + 1

    @property
    def low_reach(self) -> bool:
        """Some window reaches above index 0 (into the leading padding)."""
        return self.pad_lo > 0

    @property
    def high_reach(self) -> bool:
        """Some window reaches past the last index (into the trailing padding)."""
        return (self.out - 1) * self.stride + (self.kernel - 1) * self.dilation \
            - self.pad_lo >= self.size

    def inside(self, o: int, k: int) -> bool:
        """Whether tap `k` of output `o` reads the input (not the padding)."""
        return 0 <= o * self.stride + k * self.dilation - self.pad_lo < self.size

    def empty_window(self) -> int | None:
        """The first output index whose window holds padding only, or None."""
        for o in range(self.out):
            if not any(0 <= o * self.stride + k * self.dilation - self.pad_lo < self.size
                       for k in range(self.kernel)):
                return o
        return None

    def taps(self, k: int) -> slice:
        """The input positions of outputs 0..out-1 at tap `k`, in padded coordinates."""
        start = k * self.dilation
        return slice(start, start + self.stride * (self.out - 1) + 1, self.stride)


def _axes(x: TensorType | tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
          dilation: tuple[int, int], pads: tuple[int, int, int, int]) -> tuple[_Axis, _Axis]:
    shape = x.shape if isinstance(x, TensorType) else x
    return (_Axis(shape[2], kernel[0], stride[0], dilation[0], pads[0], pads[1]),
            _Axis(shape[3], kernel[1], stride[1], dilation[1], pads[2], pads[3]))


def _check_fits(axes: Sequence[_Axis], x: TensorType, window: str, op: str, **where) -> None:
    """The (effective) kernel must fit into the padded input along both axes."""
    for name, a in zip("HW", axes):
        if a.size + a.pad_lo + a.pad_hi < a.extent:
            raise OpTypeError(
                f"'{op}': the {window} spans {a.extent} along {name} (kernel {a.kernel}, "
                f"dilation {a.dilation}) but the input {x} padded by ({a.pad_lo}, {a.pad_hi}) "
                f"is only {a.size + a.pad_lo + a.pad_hi}", **where)


def _check_rank4(types: Sequence[TensorType], op: str) -> None:
    if types[0].rank != 4:
        raise OpTypeError(f"'{op}' takes x as [N, C, H, W] (4-D), got {types[0]}", arg=0)


# ---------------------------------------------------------------------------------------------
# Shared lowering pieces


def _affine(terms: Sequence[tuple[Expr, int]], offset: int) -> Expr:
    """Σ var·coef + offset as an i64 index expression, without the trivial parts."""
    out: Expr | None = None
    for var, coef in terms:
        if coef == 0:
            continue
        term = var if coef == 1 else Binary("mul", var, idx(coef))
        out = term if out is None else Binary("add", out, term)
    if out is None:
        return idx(offset)
    if offset > 0:
        return Binary("add", out, idx(offset))
    if offset < 0:
        return Binary("sub", out, idx(-offset))
    return out


def _window_index(a: _Axis, o: Var, k: Var) -> tuple[Expr, Expr | None]:
    """The input index of output `o`, tap `k` along an axis, clamped into the input, and the
    bool 'it is not padding' (None where no window reaches into the padding)."""
    at = _affine([(o, a.stride), (k, a.dilation)], -a.pad_lo)
    inside, clamped = [], at
    if a.low_reach:
        inside.append(Compare("ge", at, idx(0)))
        clamped = Binary("max", clamped, idx(0))
    if a.high_reach:
        inside.append(Compare("lt", at, idx(a.size)))
        clamped = Binary("min", clamped, idx(a.size - 1))
    return clamped, all_of(inside)


def _padded(value: Expr, inside: Expr | None, pad_value: float) -> Expr:
    return value if inside is None else Select(inside, value, const(pad_value, "f32"))


def _window_loops(axes: Sequence[_Axis], oh: Var, ow: Var, names: Names,
                  body: Callable[[tuple[Expr, Expr], Expr | None, tuple[Var, Var]], list[Stmt]]
                  ) -> list[Stmt]:
    """Loops over the kernel taps of output (oh, ow); `body(input (h, w), inside, taps)`."""
    kh, kw = names.var("kh"), names.var("kw")
    h, inside_h = _window_index(axes[0], oh, kh)
    w, inside_w = _window_index(axes[1], ow, kw)
    inner = body((h, w), all_of([inside_h, inside_w]), (kh, kw))
    return [For(kh, axes[0].kernel, (For(kw, axes[1].kernel, tuple(inner)),))]


def _accumulate(acc: Var, value: Expr) -> Assign:
    return Assign(acc, Binary("add", acc, value))


# ---------------------------------------------------------------------------------------------
# conv2d

_SPATIAL = (Attr("stride", "ints", (1, 1)), Attr("padding", "ints", (0, 0, 0, 0)),
            Attr("dilation", "ints", (1, 1)))


def _conv_geometry(types: Sequence[TensorType], attrs: dict) -> tuple[_Axis, _Axis]:
    """Checks every shape and attribute of conv2d; the two spatial axes."""
    same_dtype(types, "conv2d", "float")
    _check_rank4(types, "conv2d")
    x, w = types[0], types[1]
    if w.rank != 4:
        raise OpTypeError(f"'conv2d' takes the weight as [M, C/groups, kH, kW] (4-D), got {w}",
                          arg=1)
    groups = attrs["groups"]
    stride = _pair(attrs, "stride", "conv2d", x)
    dilation = _pair(attrs, "dilation", "conv2d", x)
    pads = _padding(attrs, "conv2d", x)
    n_in, m_out = x.shape[1], w.shape[0]
    if groups < 1:
        raise OpTypeError(f"'conv2d' groups must be at least 1, got {groups}", attr="groups")
    if n_in % groups:
        raise OpTypeError(f"'conv2d': the input's {n_in} channels ({x}) are not divisible by "
                          f"groups={groups}", attr="groups")
    if m_out % groups:
        raise OpTypeError(f"'conv2d': the weight's {m_out} output channels ({w}) are not "
                          f"divisible by groups={groups}", attr="groups")
    if w.shape[1] != n_in // groups:
        raise OpTypeError(f"'conv2d' channel mismatch: input {x} has {n_in} channels, so with "
                          f"groups={groups} the weight needs {n_in // groups} per group at "
                          f"dim 1, got weight {w}", arg=1,
                          hint="the weight is [M, C/groups, kH, kW]")
    if len(types) == 3:
        b = types[2]
        if b.shape != (m_out,):
            raise OpTypeError(f"'conv2d' bias must be [{m_out}] (one per output channel of "
                              f"weight {w}), got {b}", arg=2)
    axes = _axes(x, w.shape[2:], stride, dilation, pads)
    _check_fits(axes, x, f"weight {w}", "conv2d", arg=1)
    return axes


def _conv_infer(types, attrs):
    h, w = _conv_geometry(types, attrs)
    x, weight = types[0], types[1]
    return TensorType(x.dtype, (x.shape[0], weight.shape[0], h.out, w.out))


def _conv_reference(xs, attrs):
    x, w = xs[0], xs[1]
    groups = attrs["groups"]
    ah, aw = _axes(x.shape, w.shape[2:], _pair(attrs, "stride", "conv2d"),
                   _pair(attrs, "dilation", "conv2d"), _padding(attrs, "conv2d"))
    n, c = x.shape[:2]
    m = w.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (ah.pad_lo, ah.pad_hi), (aw.pad_lo, aw.pad_hi)))
    out = np.zeros((n, groups, m // groups, ah.out, aw.out), dtype=x.dtype)
    wg = w.reshape(groups, m // groups, c // groups, *w.shape[2:])
    for kh in range(ah.kernel):
        for kw in range(aw.kernel):
            patch = xp[:, :, ah.taps(kh), aw.taps(kw)].reshape(n, groups, c // groups,
                                                               ah.out, aw.out)
            out += np.einsum("ngchw,gmc->ngmhw", patch, wg[:, :, :, kh, kw])
    out = out.reshape(n, m, ah.out, aw.out)
    if len(xs) == 3:
        out = out + xs[2].reshape(1, m, 1, 1)
    return out.astype(x.dtype, copy=False)


# The f32 fast path (groups 1; static C, H, W, M; the batch may be symbolic): a register-blocked
# direct convolution. The output is cut into tiles of a few output channels x up to two vectors
# of consecutive columns of one row (2 x 16 with AVX-512, 2 x 8 with AVX2), whose accumulators
# are vector locals that live across the whole reduction over (kw, c, kh): each step loads the
# tile's inputs (one vector load per vector of columns, at stride 1) and broadcasts one weight
# per channel for channels x columns multiply-adds, as in matmul's tiles. Blocks of 6 output
# channels (12 vector accumulators, 2 input vectors and a broadcast weight: 15 of AVX2's 16
# registers) and of 4 cover the channels; 1 to 3 left over take a narrower block. A strided
# tile, a border tile and a GPU's lowering (no vector width) keep scalar accumulators, 16
# columns a tile (EDGE_W = 8 at a border), which LLVM's SLP vectorizer packs where it can.
#
# Padding costs no check in the hot loop. Along the height, the rows whose every tap lies
# inside the input are one loop; each border row is emitted on its own, its kh range cut to the
# taps inside. Along the width, the full tiles whose every tap lies inside are one loop; the
# border columns take tiles of EDGE_W (one vector) emitted on their own, with kw unrolled so
# that a tap in the padding reads a constant 0, and the interior columns left over one
# narrower tile. A border row thus skips its padded taps while a border column multiplies 0 by
# the weight: the two differ only for an infinite or NaN weight facing padding (the reference
# gives NaN).
TILE_W, EDGE_W = 16, 8  # columns of a tile and of a border tile, without a vector width
CHANNEL_BLOCKS = (6, 4)

# Huge padding (relative to the input) means many border rows or tiles, each its own code:
# beyond these the direct loop nest is used.
_MAX_BORDER_ROWS = 8
_MAX_STATIC_TILES = 6


def _tile_widths(lanes: int | None) -> tuple[int, int]:
    """Columns of a full tile and of a border tile: two vectors and one, for a vector width."""
    return (2 * lanes, lanes) if lanes else (TILE_W, EDGE_W)


def _inner_outputs(a: _Axis) -> tuple[int, int] | None:
    """The outputs [lo, hi) along an axis whose every tap lies inside the input, or None."""
    lo = -(-a.pad_lo // a.stride)
    hi = min(a.out, (a.size - 1 + a.pad_lo - (a.kernel - 1) * a.dilation) // a.stride + 1)
    return (lo, hi) if hi > lo else None


def _taps_inside(a: _Axis, o: int) -> tuple[int, int]:
    """The taps [k0, k1) of output `o` that lie inside the input (k0 == k1: none)."""
    inside = [k for k in range(a.kernel) if a.inside(o, k)]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


@dataclass(frozen=True)
class _Run:
    """Outputs along one axis lowered alike: `count` > 0 blocks of `width` from `start` as a
    loop (every tap of every one inside the input), or (count 0) the one block at `start`."""

    start: int
    width: int = 1
    count: int = 0


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _row_runs(a: _Axis) -> list[_Run] | None:
    """The output rows: the inner ones as a loop, the border ones one by one."""
    inner = _inner_outputs(a)
    lo, hi = inner if inner else (a.out, a.out)
    if lo + a.out - hi > _MAX_BORDER_ROWS:
        return None
    middle = [_Run(lo, 1, hi - lo)] if hi > lo else []
    return [_Run(o) for o in range(lo)] + middle + [_Run(o) for o in range(hi, a.out)]


def _column_runs(a: _Axis, tile_w: int, edge_w: int) -> list[_Run] | None:
    """The output columns: tiles of tile_w inside as a loop; edge_w-wide tiles over the border
    columns at either end, one narrower tile for the inner columns left between."""
    inner = _inner_outputs(a)
    if inner is not None:
        left = _round_up(inner[0], edge_w)
        right = a.out - _round_up(a.out - inner[1], edge_w)
        count = (right - left) // tile_w
        if count > 0:
            middle = left + count * tile_w
            runs = [_Run(s, edge_w) for s in range(0, left, edge_w)]
            runs.append(_Run(left, tile_w, count))
            if right > middle:
                runs.append(_Run(middle, right - middle))
            runs += [_Run(s, edge_w) for s in range(right, a.out, edge_w)]
            return runs if len(runs) <= _MAX_STATIC_TILES + 1 else None
    # too narrow for a loop: tiles of tile_w one by one
    runs = [_Run(s, min(tile_w, a.out - s)) for s in range(0, a.out, tile_w)]
    return runs if len(runs) <= _MAX_STATIC_TILES else None


def _channel_runs(m_out: int) -> list[_Run]:
    """Blocks of output channels: as many of CHANNEL_BLOCKS[0] as leave a multiple of
    CHANNEL_BLOCKS[1] (so no narrow block is needed where it can be helped), then those, then
    what is left as one block."""
    big, small = CHANNEL_BLOCKS
    n_big = m_out // big
    while n_big and (m_out - n_big * big) % small:
        n_big -= 1
    if (m_out - n_big * big) % small:
        n_big = m_out // big
    n_small = (m_out - n_big * big) // small
    runs = [_Run(0, big, n_big)] if n_big else []
    if n_small:
        runs.append(_Run(n_big * big, small, n_small))
    rest = n_big * big + n_small * small
    return runs + ([_Run(rest, m_out - rest)] if rest < m_out else [])


def _tiled_conv(out: Buffer, ins: Sequence[Operand], axes: tuple[_Axis, _Axis],
                names: Names) -> list[Stmt] | None:
    """conv2d as register tiles (see above), or None where the fast path does not apply."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) == 3 else None
    if out.dtype != "f32" or any(op.buffer is None or op.dtype != "f32" for op in ins):
        return None
    if not all(isinstance(d, int) for d in (*x.shape[1:], *w.shape)):
        return None
    ah, aw = axes
    lanes = names.lanes
    rows, columns = _row_runs(ah), _column_runs(aw, *_tile_widths(lanes))
    if rows is None or columns is None:
        return None
    channels, kernel_w = w.shape[1], aw.kernel

    def tile(n: Var, ms: list[Expr], row: tuple[list, int], taps: tuple[int, int],
             col: tuple[list, int], width: int, border: bool) -> list[Stmt]:
        """One tile: output channels `ms`; output row Σ var·coef + off (`row`), whose kh taps
        inside the input are [taps); `width` columns from Σ var·coef + off (`col`). `border`:
        some tap of some column lies in the padding (the columns are static then)."""
        (row_terms, row_off), (col_terms, col_off) = row, col
        # whole vectors of columns where they are consecutive inputs, then scalar columns
        nvec = width // lanes if lanes and not border and aw.stride == 1 else 0
        first_scalar = nvec * (lanes or 0)
        vaccs = [[names.var("vacc", vector_dtype(lanes)) for _ in range(nvec)] for _ in ms]
        accs = [[names.var("acc", "f32") for _ in range(first_scalar, width)] for _ in ms]
        starts = [bias.load((m,)) if bias else const(0, "f32") for m in ms]
        stmts: list[Stmt] = [Local(acc, Splat(start, lanes))
                             for start, row_accs in zip(starts, vaccs) for acc in row_accs]
        stmts += [Local(acc, start) for start, row_accs in zip(starts, accs) for acc in row_accs]
        if taps[1] > taps[0]:
            c, kh = names.var("c"), names.var("kh")
            k_h = _affine([(kh, 1)], taps[0])
            h = _affine([(v, coef * ah.stride) for v, coef in row_terms] + [(kh, ah.dilation)],
                        row_off * ah.stride + taps[0] * ah.dilation - ah.pad_lo)

            def over_c_kh(kw: Expr | int) -> For:
                """The multiply-adds of tap kw (a loop variable, or a static tap, for which a
                column in the padding reads 0) over every input channel and kh tap."""
                terms = [(v, coef * aw.stride) for v, coef in col_terms]
                if not isinstance(kw, int):
                    terms.append((kw, aw.dilation))

                def column(t: int) -> int:  # the input column of tile column t, less terms
                    at = (col_off + t) * aw.stride - aw.pad_lo
                    return at + kw * aw.dilation if isinstance(kw, int) else at
                # each input and weight read once into a local (less IR for LLVM to chew on)
                step: list[Stmt] = []
                xvs = [names.var("xv", vector_dtype(lanes)) for _ in range(nvec)]
                step += [Local(xv, VecLoad(x.buffer, (n, c, h, _affine(terms, column(v * lanes))),
                                           lanes)) for v, xv in enumerate(xvs)]
                xs: list[Expr] = []
                for t in range(first_scalar, width):
                    if isinstance(kw, int) and not aw.inside(col_off + t, kw):
                        xs.append(const(0, "f32"))
                        continue
                    xs.append(names.var("xv", "f32"))
                    step.append(Local(xs[-1], x.load((n, c, h, _affine(terms, column(t))))))
                ws = [names.var("wv", "f32") for _ in ms]
                step += [Local(wv, w.load((m, c, k_h, idx(kw) if isinstance(kw, int) else kw)))
                         for wv, m in zip(ws, ms)]
                step += [Assign(acc, MulAdd(xv, Splat(wv, lanes), acc))
                         for wv, row_accs in zip(ws, vaccs) for xv, acc in zip(xvs, row_accs)]
                step += [Assign(acc, MulAdd(xv, wv, acc))
                         for wv, row_accs in zip(ws, accs) for xv, acc in zip(xs, row_accs)]
                return For(c, channels, (For(kh, taps[1] - taps[0], tuple(step)),))

            # kw outermost: taps kw and kw + 1 read the same inputs one column apart, and in
            # one block LLVM would merge those loads and then build the shifted vectors with
            # shuffles; in a loop nest per kw each stays one plain vector load.
            if border:  # a tap in the padding for every column adds nothing: left out
                stmts += [over_c_kh(k) for k in range(kernel_w)
                          if any(aw.inside(col_off + t, k) for t in range(width))]
            else:
                kw = names.var("kw")
                stmts.append(For(kw, kernel_w, (over_c_kh(kw),)))
        oh = _affine(row_terms, row_off)
        stmts += [store(out, (n, m, oh, _affine(col_terms, col_off + v * lanes + lane)),
                        Lane(acc, lane))
                  for m, row_accs in zip(ms, vaccs) for v, acc in enumerate(row_accs)
                  for lane in range(lanes)]
        stmts += [store(out, (n, m, oh, _affine(col_terms, col_off + t)), acc)
                  for m, row_accs in zip(ms, accs)
                  for t, acc in enumerate(row_accs, start=first_scalar)]
        return stmts

    def row_of_tiles(n: Var, ms: list[Expr], row: tuple[list, int], taps: tuple[int, int]
                     ) -> list[Stmt]:
        stmts: list[Stmt] = []
        for run in columns:
            if run.count:
                wb = names.var("wb")
                stmts.append(For(wb, run.count, tuple(
                    tile(n, ms, row, taps, ([(wb, run.width)], run.start), run.width, False))))
                continue
            border = not all(aw.inside(run.start + t, k)
                             for t in range(run.width) for k in range(kernel_w))
            stmts += tile(n, ms, row, taps, ([], run.start), run.width, border)
        return stmts

    def over_rows(run: _Run, body: Callable[[tuple[list, int], tuple[int, int]], list[Stmt]]
                  ) -> list[Stmt]:
        """`body(row, taps)` for the rows of a run: a loop over the inner ones, or one."""
        if not run.count:
            return body(([], run.start), _taps_inside(ah, run.start))
        oh = names.var("oh")
        return [For(oh, run.count, tuple(body(([(oh, 1)], run.start), (0, ah.kernel))))]

    def over_channels(run: _Run, body: Callable[[list[Expr]], list[Stmt]]) -> list[Stmt]:
        """`body(channels)` for the blocks of a run: a loop, or one block."""
        if not run.count:
            return body([idx(run.start + u) for u in range(run.width)])
        mb = names.var("mb")
        return [For(mb, run.count, tuple(body(
            [_affine([(mb, run.width)], run.start + u) for u in range(run.width)])))]

    # Each top-level nest runs over the batch; the thread parallelism pass (loops/schedule.py)
    # looks for its loop along each nest's chain of loops, and finds the loop over channel
    # blocks there (channel mb·6 + u: a range of channels of its own per iteration). Blocks
    # of channels outermost keep a block's weights in L1 while the input streams by; a 1x1
    # kernel, though, reads each input once per block, so there the rows go outermost and
    # every block reuses a row of inputs from L1.
    def rows_then_channels(n: Var, r_run: _Run, m_run: _Run) -> list[Stmt]:
        return over_rows(r_run, lambda row, taps: over_channels(
            m_run, lambda ms: row_of_tiles(n, ms, row, taps)))

    def channels_then_rows(n: Var, m_run: _Run) -> list[Stmt]:
        return over_channels(m_run, lambda ms: [
            s for r_run in rows
            for s in over_rows(r_run, lambda row, taps: row_of_tiles(n, ms, row, taps))])

    nests: list[Stmt] = []
    for m_run in _channel_runs(w.shape[0]):
        for r_run in rows if ah.kernel * aw.kernel == 1 else [None]:
            n = names.var("n")
            body = channels_then_rows(n, m_run) if r_run is None else \
                rows_then_channels(n, r_run, m_run)
            nests.append(For(n, out.shape[0], tuple(body)))
    return nests


def _conv_lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names,
                winograd: bool = True):
    x, w = ins[0], ins[1]
    axes = _axes(x.shape, w.shape[2:], _pair(attrs, "stride", "conv2d"),
                 _pair(attrs, "dilation", "conv2d"), _padding(attrs, "conv2d"))
    if attrs["groups"] > 1:
        depthwise = _depthwise_conv(out, ins, axes, attrs["groups"], names)
        if depthwise is not None:
            return depthwise  # (names its schedule itself)
    if attrs["groups"] == 1:
        fast = winograd and winograd_applies(x, w, out, axes, names.lanes) and \
            winograd_conv(out, ins, axes, names)  # (names its schedule itself)
        if fast:
            return fast
        for form, lower in ((_GEMM_FORM, _gemm_conv), (_PADDED_FORM, _padded_copy_conv),
                            (_TILED_FORM, _tiled_conv)):
            tiled = lower(out, ins, axes, names)
            if tiled is not None:
                names.schedule = form
                return tiled
    names.schedule = _DIRECT_FORM
    return _direct_conv(out, ins, axes, attrs, names)


# What `aotml build --report` says of each form (its "schedules:" lines).
_GEMM_FORM = "implicit GEMM: the input unfolded, then matmul's register tiles"
_PADDED_FORM = "register tiles on a zero-bordered copy of the input"
_TILED_FORM = "register tiles, with border rows and tiles of their own where padding is read"
_DIRECT_FORM = "direct loop: one accumulation per output element"


# Implicit GEMM. The tiled conv's tiles run along a row of output columns, so a narrow output
# (7 or 14 columns) leaves its vectors part empty and its reduction short: a 3x3 conv 32 -> 32
# on 7x7 ran at 13 GFLOP/s, 64 -> 64 on 14x14 at 29 (one core, 2026-12-04). Where the output
# is narrower than GEMM_MAX_WIDTH, the conv becomes a matmul instead: the weights as an
# M x (C·kh·kw) matrix (a copy of weights alone, which loops/fold.py makes at build time), the
# input unfolded into a (C·kh·kw) x (OH·OW) matrix per image (im2col, zero where a tap reads
# padding), and matmul's register tiles over the M x (OH·OW) output, stored into NCHW with
# the bias as each accumulator's start. The scratch memory, the unfolded input and matmul's
# panel copy of it, is 2·C·kh·kw/M times the conv's output, image for image (so with a
# symbolic batch it grows with the batch, as the activations do), and at most
# GEMM_MAX_UNFOLDED floats per image. (Unfolding straight into the panel layout saves the
# copy but was slower: 50 against 70 GFLOP/s at 14x14, the stores scattered by a division.)
GEMM_MAX_WIDTH = 32
GEMM_MAX_UNFOLDED = 1 << 22  # floats of the unfolded input per image (16 MiB)


def _gemm_conv(out: Buffer, ins: Sequence[Operand], axes: tuple[_Axis, _Axis],
               names: Names) -> list[Stmt] | None:
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) == 3 else None
    ah, aw = axes
    if out.dtype != "f32" or any(op.buffer is None or op.dtype != "f32" for op in ins) \
            or not all(isinstance(d, int) for d in (*x.shape[1:], *w.shape)):
        return None
    m_out, c_in, k_h, k_w = w.shape
    k, p = c_in * k_h * k_w, ah.out * aw.out
    if aw.out >= GEMM_MAX_WIDTH or k * p > GEMM_MAX_UNFOLDED:
        return None
    n_ = x.shape[0]
    wm = names.scratch_buffer("wmat", "f32", (m_out, k))
    cols = names.scratch_buffer("unfolded", "f32", (n_, k, p))

    def flat_k(c: Expr, kh: Expr, kw: Expr) -> Expr:
        return _affine([(c, k_h * k_w), (kh, k_w), (kw, 1)], 0)

    def weights(ix):
        m, c, kh, kw = ix
        return [Store(wm, (m, flat_k(c, kh, kw)), w.load((m, c, kh, kw)))]

    def unfold(ix):
        n, c, kh, kw, oh, ow = ix
        h, inside_h = _window_index(ah, oh, kh)
        col, inside_w = _window_index(aw, ow, kw)
        value = _padded(x.load((n, c, h, col)), all_of([inside_h, inside_w]), 0.0)
        return [Store(cols, (n, flat_k(c, kh, kw), _affine([(oh, aw.out), (ow, 1)], 0)),
                      value)]

    n = names.var("n")

    def nchw(row: Expr, col: Expr) -> tuple:
        return (n, row, Binary("idiv", col, idx(aw.out)), Binary("irem", col, idx(aw.out)))
    product = tiled_matmul(out, Operand((m_out, k), wm), Operand((n_, k, p), cols), (n,), (),
                           (n,), m_out, p, k, names, out_index=nchw,
                           init=(lambda row: bias.load((row,))) if bias else None)
    return [*loop_nest(w.shape, names, weights, "q"),
            *loop_nest((n_, c_in, k_h, k_w, ah.out, aw.out), names, unfold, "u"),
            For(n, n_, tuple(product))]


# Padding by a copy. The tiled conv handles padding without a check in its hot loop, but its
# border columns take tiles of one vector (EDGE_W) with kw unrolled: at 112 columns those 16
# run at well under half the speed of the full tiles, and a 3x3 conv 32 -> 64 with padding 1
# ran at 71 GFLOP/s against 93 without padding on the same work (one core, 2026-12-04). Where
# the window reaches into the padding, the input is first copied into a zero-bordered scratch
# buffer (one pass over C·H·W elements) and the conv runs on it without padding: every column
# is an interior column. The copy pays where each input element feeds enough multiply-adds,
# M·kh·kw of them: on one core, 3x3 convs with padding 1 took 0.68-0.80 of the time with the
# copy at M = 32 and 64, the same at M = 8 and 1.07-1.09 at M = 2 and 4 (minimum of 60 calls).
PAD_COPY_MIN_WORK = 64  # M·kh·kw from which the copy is made


def _padded_copy_conv(out: Buffer, ins: Sequence[Operand], axes: tuple[_Axis, _Axis],
                      names: Names) -> list[Stmt] | None:
    x, w = ins[0], ins[1]
    ah, aw = axes
    if not (ah.low_reach or ah.high_reach or aw.low_reach or aw.high_reach):
        return None
    if isinstance(w.shape[0], int) and w.shape[0] * ah.kernel * aw.kernel < PAD_COPY_MIN_WORK:
        return None
    if out.dtype != "f32" or any(op.buffer is None or op.dtype != "f32" for op in ins) \
            or not all(isinstance(d, int) for d in (*x.shape[1:], *ins[1].shape)):
        return None
    inner = tuple(_Axis(a.size + a.pad_lo + a.pad_hi, a.kernel, a.stride, a.dilation, 0, 0)
                  for a in axes)
    if _row_runs(inner[0]) is None or _column_runs(inner[1], *_tile_widths(names.lanes)) is None:
        return None
    n_, c_, h_, w_ = x.shape
    hp, wp = inner[0].size, inner[1].size
    xp = names.scratch_buffer("padded", "f32", (n_, c_, hp, wp))
    conv = _tiled_conv(out, [Operand((n_, c_, hp, wp), xp), *ins[1:]], inner, names)
    return None if conv is None else [*zero_bordered_copy(x, xp, ah.pad_lo, aw.pad_lo, names),
                                       *conv]


# Depthwise (groups = C = M, one filter per channel). Each output channel reads its own input
# plane only, so the tiled conv's blocks of output channels have nothing to share: instead a
# tile is DW_ROWS output rows x two vectors of columns of one channel, whose 2·DW_ROWS vector
# accumulators take one broadcast weight per tap and the tap's input rows as unaligned vector
# loads (rows shared by taps of neighbouring output rows). A padded input is first copied,
# plane by plane in the same parallel loop over channels, into a zero-bordered scratch, so no
# tap needs a check. Stride and dilation 1, f32, static sizes, outputs at least two vectors
# wide; otherwise the direct loop (a narrow image wastes most of each vector: a layout with
# channels innermost would be the way there). One core of Zen 4, 2026-12-07, 3x3 with
# padding 1 and relu, 32 channels at 112x112: 187 us by the direct loop, 115 us so (93 us
# of it without the padding's copy).
DW_ROWS = 4


def _depthwise_conv(out: Buffer, ins: Sequence[Operand], axes: tuple[_Axis, _Axis],
                    groups: int, names: Names) -> list[Stmt] | None:
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) == 3 else None
    lanes = names.lanes
    ah, aw = axes
    if not lanes or out.dtype != "f32" or any(op.buffer is None or op.dtype != "f32"
                                              for op in ins):
        return None
    if not all(isinstance(d, int) for d in (*x.shape[1:], *w.shape)):
        return None
    n_, c_, h_, w_ = x.shape
    if not (groups == c_ == w.shape[0] and w.shape[1] == 1) or \
            any(a.stride != 1 or a.dilation != 1 for a in axes) or aw.out < 2 * lanes:
        return None
    k_h, k_w = w.shape[2:]
    padded = any((a.pad_lo, a.pad_hi) != (0, 0) for a in axes)
    names.schedule = (f"depthwise: tiles of {DW_ROWS} rows x 2 vectors of columns a channel"
                      + (", on a zero-bordered copy of the input" if padded else ""))
    source = x.buffer
    if padded:
        source = names.scratch_buffer("padded", "f32", (n_, c_, h_ + ah.pad_lo + ah.pad_hi,
                                                        w_ + aw.pad_lo + aw.pad_hi))
    n, c = names.var("n"), names.var("c")
    weight = [[w.load((c, idx(0), idx(kh), idx(kw))) for kw in range(k_w)] for kh in range(k_h)]
    start = bias.load((c,)) if bias is not None else const(0, "f32")

    def tile(row0: Expr, rows: int, col0: Expr, nvec: int, nscalar: int) -> list[Stmt]:
        """Output rows row0.. (rows of them) x columns col0.. (nvec vectors, then nscalar)."""
        vaccs = [[names.var("vacc", vector_dtype(lanes)) for _ in range(nvec)]
                 for _ in range(rows)]
        accs = [[names.var("acc", "f32") for _ in range(nscalar)] for _ in range(rows)]
        stmts: list[Stmt] = [Local(a, Splat(start, lanes)) for r in vaccs for a in r]
        stmts += [Local(a, start) for r in accs for a in r]
        for kh in range(k_h):
            for kw in range(k_w):
                tap = Splat(weight[kh][kw], lanes)
                for r in range(rows):
                    at_row = _affine([(row0, 1)], r + kh)
                    for v in range(nvec):
                        column = _affine([(col0, 1)], v * lanes + kw)
                        vin = VecLoad(source, (n, c, at_row, column), lanes)
                        stmts.append(Assign(vaccs[r][v], MulAdd(tap, vin, vaccs[r][v])))
                    for s in range(nscalar):
                        column = _affine([(col0, 1)], nvec * lanes + s + kw)
                        value = Load(source, (n, c, at_row, column))
                        stmts.append(Assign(accs[r][s], MulAdd(weight[kh][kw], value,
                                                               accs[r][s])))
        for r in range(rows):
            at_row = _affine([(row0, 1)], r)
            for v in range(nvec):
                stmts += [store(out, (n, c, at_row, _affine([(col0, 1)], v * lanes + j)),
                                Lane(vaccs[r][v], j)) for j in range(lanes)]
            stmts += [store(out, (n, c, at_row, _affine([(col0, 1)], nvec * lanes + s)),
                            accs[r][s]) for s in range(nscalar)]
        return stmts

    def rows_of(row0: Expr, rows: int) -> list[Stmt]:
        """Every column of output rows row0.. : tiles of two vectors, then what is left."""
        width = 2 * lanes
        full, rest = divmod(aw.out, width)
        jb = names.var("jb")
        out_: list[Stmt] = [For(jb, full, tuple(tile(row0, rows, _affine([(jb, width)], 0), 2,
                                                      0)))]
        if rest:
            out_ += tile(row0, rows, idx(full * width), rest // lanes, rest % lanes)
        return out_

    plane: list[Stmt] = []
    if padded:
        plane += zero_bordered_plane(x, source, ah.pad_lo, aw.pad_lo, names, n, c)
    blocks, rest_rows = divmod(ah.out, DW_ROWS)
    ib = names.var("ib")
    if blocks:
        plane.append(For(ib, blocks, tuple(rows_of(_affine([(ib, DW_ROWS)], 0), DW_ROWS))))
    if rest_rows:
        plane += rows_of(idx(blocks * DW_ROWS), rest_rows)
    # channels outermost: the parallel loop, also where the batch is symbolic (the
    # parallelizer would take a symbolic loop first, and a batch of 1 is one iteration)
    return [For(c, c_, (For(n, n_, tuple(plane)),))]


def conv_lower_without_winograd(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    """conv2d's lowering with every form but Winograd's (`aotml build --no-winograd`)."""
    return _conv_lower(out, ins, attrs, names, winograd=False)


def direct_conv_lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names) -> list[Stmt]:
    """conv2d's direct form alone: one independent accumulation per output element, the form
    a GPU wants (gpu/schedules.py), where the tiled form keeps a tile of rows on one thread."""
    x, w = ins[0], ins[1]
    axes = _axes(x.shape, w.shape[2:], _pair(attrs, "stride", "conv2d"),
                 _pair(attrs, "dilation", "conv2d"), _padding(attrs, "conv2d"))
    return _direct_conv(out, ins, axes, attrs, names)


def _direct_conv(out: Buffer, ins: Sequence[Operand], axes: tuple[_Axis, _Axis], attrs,
                 names: Names) -> list[Stmt]:
    """One accumulator per output element, a bounds check per tap: any dtype, groups,
    symbolic sizes."""
    x, w = ins[0], ins[1]
    per_group_in = w.shape[1]
    per_group_out = out.shape[1] // attrs["groups"]

    def body(i):
        n, m, oh, ow = i
        acc, c = names.var("acc", "f32"), names.var("c")
        # input channel of (output channel m, channel c of its group)
        channel = _affine([(Binary("idiv", m, idx(per_group_out)), per_group_in), (c, 1)], 0) \
            if attrs["groups"] > 1 else c

        def tap(hw, inside, taps):
            value = _padded(x.load((n, channel, *hw)), inside, 0.0)
            return [_accumulate(acc, Binary("mul", value, w.load((m, c, *taps))))]

        init = ins[2].load((m,)) if len(ins) == 3 else const(0, "f32")
        return [Local(acc, init),
                For(c, per_group_in, tuple(_window_loops(axes, oh, ow, names, tap))),
                store(out, i, acc)]

    return loop_nest(out.shape, names, body)


register(OpDef(
    "conv2d", (2, 3), "contraction",
    (*_SPATIAL, Attr("groups", "int", 1)),
    _conv_infer, _conv_reference, _conv_lower,
    "2-D convolution (cross-correlation, NCHW) with optional bias, zero padding, stride, "
    "dilation and groups (groups = C: depthwise).",
    "conv2d(x: [N, C, H, W], w: [M, C/groups, kH, kW], b?: [M], stride=1, padding=0, "
    "dilation=1, groups=1) -> [N, M, OH, OW]"))


# ---------------------------------------------------------------------------------------------
# Pooling


def _pool_geometry(types: Sequence[TensorType], attrs: dict, op: str) -> tuple[_Axis, _Axis]:
    same_dtype(types, op, "float")
    _check_rank4(types, op)
    x = types[0]
    kernel = _pair(attrs, "kernel", op, x)
    # stride=() (the default) means the kernel, as in PyTorch and ONNX
    stride = kernel if attrs["stride"] == () else _pair(attrs, "stride", op, x)
    dilation = _pair(attrs, "dilation", op, x) if "dilation" in attrs else (1, 1)
    axes = _axes(x, kernel, stride, dilation, _padding(attrs, op, x))
    _check_fits(axes, types[0], f"window {kernel}", op, attr="kernel")
    for name, a in zip("HW", axes):
        o = a.empty_window()
        if o is not None:
            raise OpTypeError(
                f"'{op}': the window of output {name} index {o} covers padding only (input "
                f"{types[0]}, kernel {a.kernel}, stride {a.stride}, dilation {a.dilation}, "
                f"padding ({a.pad_lo}, {a.pad_hi}) along {name})", attr="padding",
                hint="every window must overlap the input: make the padding smaller than the "
                     "kernel")
    return axes


def _pool_infer(op: str):
    def infer(types, attrs):
        h, w = _pool_geometry(types, attrs, op)
        x = types[0]
        return TensorType(x.dtype, (*x.shape[:2], h.out, w.out))
    return infer


def _pool_axes(shape: tuple[int, ...], attrs: dict) -> tuple[_Axis, _Axis]:
    """The geometry of an already checked pooling op (so no op name is needed for errors)."""
    kernel = _pair(attrs, "kernel", "")
    stride = kernel if attrs["stride"] == () else _pair(attrs, "stride", "")
    dilation = _pair(attrs, "dilation", "") if "dilation" in attrs else (1, 1)
    return _axes(shape, kernel, stride, dilation, _padding(attrs, ""))


def _window_reduce(x: np.ndarray, attrs: dict, pad_value: float, combine) -> np.ndarray:
    """`combine` over the windows of x padded with `pad_value`."""
    ah, aw = _pool_axes(x.shape, attrs)
    xp = np.pad(x, ((0, 0), (0, 0), (ah.pad_lo, ah.pad_hi), (aw.pad_lo, aw.pad_hi)),
                constant_values=pad_value)
    out = None
    for kh in range(ah.kernel):
        for kw in range(aw.kernel):
            patch = xp[:, :, ah.taps(kh), aw.taps(kw)]
            out = patch.copy() if out is None else combine(out, patch)
    return out


def _max_pool_lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    (x,) = ins
    axes = _pool_axes(x.shape, attrs)

    def body(i):
        n, c, oh, ow = i
        acc = names.var("acc", "f32")

        def tap(hw, inside, taps):
            value = _padded(x.load((n, c, *hw)), inside, -math.inf)
            return [Assign(acc, Binary("max", acc, value))]

        return [Local(acc, const(-math.inf, "f32")), *_window_loops(axes, oh, ow, names, tap),
                store(out, i, acc)]

    return loop_nest(out.shape, names, body)


_POOL = (Attr("kernel", "ints"), Attr("stride", "ints", ()), Attr("padding", "ints", (0, 0, 0, 0)))

register(OpDef(
    "max_pool2d", 1, "reduction", (*_POOL, Attr("dilation", "ints", (1, 1))),
    _pool_infer("max_pool2d"),
    lambda xs, attrs: _window_reduce(xs[0], attrs, -np.inf, np.maximum),
    _max_pool_lower,
    "Maximum over each kH×kW window (NCHW); padding never wins; NaN propagates.",
    "max_pool2d(x: [N, C, H, W], kernel, stride=kernel, padding=0, dilation=1) "
    "-> [N, C, OH, OW]"))


def _avg_pool_reference(xs, attrs):
    x = xs[0]
    total = _window_reduce(x, attrs, 0.0, np.add)
    if attrs["count_include_pad"]:
        count = np.prod(_pair(attrs, "kernel", ""))
    else:
        count = _window_reduce(np.ones((1, 1, *x.shape[2:]), x.dtype), attrs, 0.0, np.add)
    return (total / count).astype(x.dtype, copy=False)


def _in_bounds_count(a: _Axis, o: Var) -> Expr:
    """How many taps of output `o` lie inside the input (dilation 1): the window [lo, lo + k)
    clipped to [0, size)."""
    lo = _affine([(o, a.stride)], -a.pad_lo)
    hi = _affine([(o, a.stride)], a.kernel - a.pad_lo)
    if a.high_reach:
        hi = Binary("min", hi, idx(a.size))
    if a.low_reach:
        lo = Binary("max", lo, idx(0))
    return Binary("sub", hi, lo)


def _avg_pool_lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    (x,) = ins
    axes = _pool_axes(x.shape, attrs)
    padded = any(a.low_reach or a.high_reach for a in axes)

    def body(i):
        n, c, oh, ow = i
        acc = names.var("acc", "f32")

        def tap(hw, inside, taps):
            return [_accumulate(acc, _padded(x.load((n, c, *hw)), inside, 0.0))]

        if attrs["count_include_pad"] or not padded:
            count: Expr = const(axes[0].kernel * axes[1].kernel, "f32")
        else:  # never zero: every window overlaps the input (checked by infer)
            count = Cast("f32", Binary("mul", _in_bounds_count(axes[0], oh),
                                       _in_bounds_count(axes[1], ow)))
        return [Local(acc, const(0, "f32")), *_window_loops(axes, oh, ow, names, tap),
                store(out, i, Binary("div", acc, count))]

    return loop_nest(out.shape, names, body)


register(OpDef(
    "avg_pool2d", 1, "reduction", (*_POOL, Attr("count_include_pad", "bool", False)),
    _pool_infer("avg_pool2d"), _avg_pool_reference, _avg_pool_lower,
    "Mean over each kH×kW window (NCHW); padding counts toward the divisor only with "
    "count_include_pad=true.",
    "avg_pool2d(x: [N, C, H, W], kernel, stride=kernel, padding=0, count_include_pad=false) "
    "-> [N, C, OH, OW]"))


def _global_avg_infer(types, attrs):
    same_dtype(types, "global_avg_pool", "float")
    _check_rank4(types, "global_avg_pool")
    x = types[0]
    return TensorType(x.dtype, (*x.shape[:2], 1, 1))


def _global_avg_lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    (x,) = ins
    height, width = x.shape[2:]

    def body(i):
        h = names.var("h")
        lanes = lane_sum(names, "f32", width, lambda w: x.load((i[0], i[1], h, w)),
                         outer=[(h, height)])
        if lanes is not None:
            stmts, total = lanes
            return [*stmts, store(out, i, Binary("div", total, const(height * width, "f32")))]
        acc, w = names.var("acc", "f32"), names.var("w")
        add = _accumulate(acc, x.load((i[0], i[1], h, w)))
        return [Local(acc, const(0, "f32")), For(h, height, (For(w, width, (add,)),)),
                store(out, i, Binary("div", acc, const(height * width, "f32")))]

    return loop_nest(out.shape, names, body)


register(OpDef(
    "global_avg_pool", 1, "reduction", (), _global_avg_infer,
    lambda xs, attrs: np.mean(xs[0], axis=(2, 3), keepdims=True),
    _global_avg_lower,
    "Mean over the whole H×W plane of each channel (NCHW).",
    "global_avg_pool(x: [N, C, H, W]) -> [N, C, 1, 1]"))


# ---------------------------------------------------------------------------------------------
# Attention


def _attention_infer(types, attrs):
    dtype = same_dtype(types, "attention", "float")
    for i, (t, dims) in enumerate(zip(types, ("Sq, D", "Sk, D", "Sk, Dv"))):
        if t.rank < 2:
            raise OpTypeError(f"'attention' takes {'qkv'[i]} as [..., {dims}] (at least 2-D), "
                              f"got {t}", arg=i)
    q, k, v = types
    if k.shape[-1] != q.shape[-1]:
        raise OpTypeError(f"'attention' head sizes differ: q {q} and k {k} "
                          f"({q.shape[-1]} != {k.shape[-1]})", arg=1)
    if v.shape[-2] != k.shape[-2]:
        raise OpTypeError(f"'attention' key counts differ: k {k} and v {v} "
                          f"({k.shape[-2]} != {v.shape[-2]})", arg=2)
    lead = q.shape[:-2]
    for i, t in ((1, k), (2, v)):
        both = broadcast_shapes(lead, t.shape[:-2])
        if both is None:
            raise OpTypeError(f"'attention' cannot broadcast the leading dims of q {q}, k {k} "
                              f"and v {v}", arg=i,
                              hint="leading dims align on the right; each must be equal or 1")
        lead = both
    return TensorType(dtype, (*lead, q.shape[-2], v.shape[-1]))


def _scale(attrs: dict, head: int) -> float:
    """scale=0 (the default) stands for 1/sqrt(D)."""
    return attrs["scale"] if attrs["scale"] != 0.0 else 1.0 / math.sqrt(head)


def _attention_reference(xs, attrs):
    q, k, v = xs
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * _scale(attrs, q.shape[-1])
    if attrs["causal"]:
        sq, sk = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((sq, sk), bool)), scores, -np.inf)
    e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    p = e / np.sum(e, axis=-1, keepdims=True)
    return np.matmul(p, v).astype(q.dtype, copy=False)


def _attention_lower(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    q, k, v = ins
    if out.dtype == "f32" and all(isinstance(d, int) for d in (*k.shape[-2:], v.shape[-1])):
        return _attention_tiled(out, ins, attrs, names)
    return _attention_rows(out, ins, attrs, names)


def _attention_tiled(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    """Attention as two register-tiled matmuls around a softmax, per head: kᵀ is copied into a
    scratch [D, Sk], the scores s = q·kᵀ are computed by matmul tiles into a scratch [Sq, Sk],
    each row of s becomes its softmax (scale and causal mask applied) in place, and the output
    is the tiled product s·v. The scratches are indexed by the head, so heads are independent
    (and run in parallel); the matmuls read their operands where they are (no shared panel
    scratch). Dot products run along k's rows in the old per-row form, across 16 keys at once
    here."""
    q, k, v = ins
    lead_shape = out.shape[:-2]
    sq, head = q.shape[-2:]
    keys, dv = k.shape[-2], v.shape[-1]
    kt = names.scratch_buffer("kt", "f32", (*lead_shape, head, keys))
    scores = names.scratch_buffer("scores", "f32", (*lead_shape, sq, keys))
    scale = const(_scale(attrs, head), "f32")

    def per_head(lead):
        lead = tuple(lead)
        d, j = names.var("d"), names.var("j")
        k_at = (*broadcast_indices(lead, k.shape[:-2], lead_shape), j, d)
        transpose = For(d, head, (For(j, keys, (Store(kt, (*lead, d, j), k.load(k_at)),)),))
        kt_op = Operand(kt.shape, buffer=kt)
        s_op = Operand(scores.shape, buffer=scores)
        qi = broadcast_indices(lead, q.shape[:-2], lead_shape)
        logits = tiled_matmul(scores, q, kt_op, lead, qi, lead, sq, keys, head, names,
                              pack=False)
        row = names.var("r")
        m, total, inv = names.var("m", "f32"), names.var("l", "f32"), names.var("inv", "f32")
        j3 = names.var("j")

        def logit(jv):
            value: Expr = Binary("mul", Load(scores, (*lead, row, jv)), scale)
            if attrs["causal"]:  # key j is visible to query `row` when j <= row
                value = Select(Compare("le", jv, row), value, const(-math.inf, "f32"))
            return value

        stats = max_and_sum_exp(logit, keys, names, m, total,
                                lambda j: (scores, (*lead, row, j)))
        softmax = For(row, sq, (
            *stats,
            Local(inv, Binary("div", const(1, "f32"), total)),
            For(j3, keys, (Store(scores, (*lead, row, j3),
                                 Binary("mul", Load(scores, (*lead, row, j3)), inv)),)),
        ))
        vi = broadcast_indices(lead, v.shape[:-2], lead_shape)
        weighted = tiled_matmul(out, s_op, v, lead, lead, vi, sq, dv, keys, names, pack=False)
        return [transpose, *logits, softmax, *weighted]

    return loop_nest(lead_shape, names, per_head, prefix="h")


def _attention_rows(out: Buffer, ins: Sequence[Operand], attrs, names: Names):
    # Per query row: a pass for the row max, one for the softmax denominator, one for the
    # weighted sum of values. There is no scratch buffer for the scores, so each pass recomputes
    # them (a D-term dot product). With an f32 output the weighted sum accumulates in the output
    # row; a narrow output cannot hold partial sums, so there each output element accumulates
    # in a local and the scores are recomputed per element.
    q, k, v = ins
    head, keys = q.shape[-1], k.shape[-2]
    lead_shape = out.shape[:-2]
    scale = const(_scale(attrs, head), "f32")

    def at(operand: Operand, lead, row, col) -> tuple:
        return (*broadcast_indices(lead, operand.shape[:-2], lead_shape), row, col)

    def body(i):
        lead, row = i[:-2], i[-2]

        def score(j: Var) -> tuple[list[Stmt], Expr]:
            dot, d = names.var("dot", "f32"), names.var("d")
            stmts = [Local(dot, const(0, "f32")),
                     For(d, head, (_accumulate(dot, Binary("mul", q.load(at(q, lead, row, d)),
                                                            k.load(at(k, lead, j, d)))),))]
            value: Expr = Binary("mul", dot, scale)
            if attrs["causal"]:  # key j is visible to query `row` when j <= row
                value = Select(Compare("le", j, row), value, const(-math.inf, "f32"))
            return stmts, value

        m, total, inv = names.var("m", "f32"), names.var("l", "f32"), names.var("inv", "f32")
        j1, j2, j3 = names.var("j"), names.var("j"), names.var("j")
        s1, v1 = score(j1)
        s2, v2 = score(j2)
        s3, v3 = score(j3)
        weight = Unary("exp", Binary("sub", v3, m))
        e1, e2 = names.var("e"), names.var("e")
        here = lambda e: (*lead, row, e)  # noqa: E731
        if out.dtype == "f32":
            p = names.var("p", "f32")
            weighted = (
                For(e1, out.shape[-1], (store(out, here(e1), const(0, "f32")),)),
                For(j3, keys, (*s3, Local(p, Binary("mul", weight, inv)),
                               For(e2, out.shape[-1], (store(out, here(e2), Binary(
                                   "add", Load(out, here(e2)),
                                   Binary("mul", p, v.load(at(v, lead, j3, e2))))),)))))
        else:
            acc = names.var("acc", "f32")
            weighted = (For(e1, out.shape[-1], (
                Local(acc, const(0, "f32")),
                For(j3, keys, (*s3, _accumulate(acc, Binary("mul", weight,
                                                            v.load(at(v, lead, j3, e1)))))),
                store(out, here(e1), Binary("mul", acc, inv)))),)
        return [Local(m, const(-math.inf, "f32")),
                For(j1, keys, (*s1, Assign(m, Binary("max", m, v1)))),
                Local(total, const(0, "f32")),
                For(j2, keys, (*s2, _accumulate(total, Unary("exp", Binary("sub", v2, m))))),
                Local(inv, Binary("div", const(1, "f32"), total)),
                *weighted]

    # The loop of extent 1 over the value dim keeps `i` shaped like the output.
    return loop_nest((*out.shape[:-1], 1), names, lambda i: body(list(i)))


register(OpDef(
    "attention", 3, "contraction",
    (Attr("causal", "bool", False), Attr("scale", "float", 0.0)),
    _attention_infer, _attention_reference, _attention_lower,
    "Scaled dot-product attention softmax(q·kᵀ·scale + mask)·v over the last two dims; "
    "scale=0 means 1/sqrt(D); causal hides key j from query i < j (top-left aligned).",
    "attention(q: [..., Sq, D], k: [..., Sk, D], v: [..., Sk, Dv], causal=false, scale=0) "
    "-> [..., Sq, Dv]"))
