"""conv2d's register-tiled schedule (aotml/ops/conv.py, `_tiled_conv`): f32, groups 1.

End to end, each case is built into a real .so and compared with the float64 reference on fresh
random inputs (opcheck's bound: rtol 1e-5 plus C·kH·kW·eps32 of the same conv on absolute
values). The sizes are picked so that every piece of the schedule runs: channel counts that
leave a block of 4 or a narrow block after the blocks of 6, widths with and without a loop of
full tiles and with a narrower leftover tile, border rows and columns from padding 1 to 3 (and
one-sided), stride, dilation, 1x1, 5x5, 1x7 and 7x1 kernels, batch 1 and 3 and a symbolic batch,
images too small for any inner tile, and padding so large that the direct loop takes over.

Every sample runs by each algorithm: the implicit GEMM (narrow outputs take it), and the
tiled conv, through a zero-bordered copy of its input or through its own border rows and
tiles. Then the loop IR itself: the fast
path is taken where it should be (and not for groups 2,
f16, huge padding), its hot loop has no bounds check, reads consecutive columns, and stores
each channel block at `mb*6 + u`.
"""

from __future__ import annotations

import pytest
from opcheck import check, conv_sample, params

from aotml.codegen.llvm_cpu import CpuTarget
from aotml.graph.ir import TensorType
from aotml.graph.symbolic import symbol
from aotml.loops.build import Names, Operand
from aotml.loops.ir import (
    Assign,
    Binary,
    Buffer,
    Compare,
    Const,
    For,
    Lane,
    Load,
    Local,
    MulAdd,
    Select,
    Splat,
    Store,
    Var,
    VecLoad,
    children,
)
from aotml.ops import REGISTRY, conv, winograd
from aotml.ops.conv import TILE_W

_conv = conv_sample


SAMPLES = {"conv2d": [
    # M = 7: one block of 6 and one of 1; OW = 37: border tiles, one full tile in a loop, a
    # leftover tile of 5
    _conv((1, 3, 9, 37), (7, 3, 3, 3), bias=True, padding=1),
    # batch 3, no padding: M = 10 (6 + 4), OW = 43: two full tiles and a leftover of 11
    _conv((3, 5, 11, 45), (10, 5, 3, 3)),
    # 5x5 with padding 2: two border rows and columns on each side; M = 13 (6 + 6 + 1)
    _conv((1, 4, 12, 40), (13, 4, 5, 5), bias=True, padding=2),
    # one-sided (ONNX order: top 2, left 1, bottom 0, right 3); M = 5 (4 + 1)
    _conv((2, 3, 10, 41), (5, 3, 3, 3), padding=(2, 1, 0, 3)),
    # stride 2 with padding; OW = 34
    _conv((1, 3, 15, 67), (9, 3, 3, 3), bias=True, stride=2, padding=1),
    # dilation 2
    _conv((2, 3, 13, 41), (6, 3, 3, 3), dilation=2, padding=2),
    # mixed: stride (2, 1), dilation (1, 2), a 3x2 kernel
    _conv((1, 2, 11, 39), (8, 2, 3, 2), bias=True, stride=(2, 1), dilation=(1, 2),
          padding=(1, 2)),
    # stride 3 along the width, 2x2 kernel
    _conv((1, 3, 8, 70), (4, 3, 2, 2), stride=(1, 3), padding=1),
    # 1x1: every tap inside; M = 12 (6 + 6), OW = 35
    _conv((1, 16, 5, 35), (12, 16, 1, 1), bias=True),
    # 1x7 and 7x1 (padding along one axis only)
    _conv((1, 3, 6, 50), (8, 3, 1, 7), padding=(0, 3)),
    _conv((3, 3, 21, 19), (3, 3, 7, 1), bias=True, padding=(3, 0)),
    # M = 32: blocks 6, 6, 6, 6, 4, 4 (the first CNN layer's channels)
    _conv((1, 3, 10, 40), (32, 3, 3, 3), bias=True, padding=1),
    # wide rows: a loop of several full tiles per row
    _conv((1, 8, 6, 77), (16, 8, 3, 3), bias=True, padding=1),
    # small images, no inner tile or row: static tiles only
    _conv((1, 3, 3, 3), (5, 3, 3, 3), bias=True, padding=1),
    _conv((2, 2, 2, 5), (3, 2, 3, 3), padding=1),
    _conv((1, 1, 1, 1), (2, 1, 1, 1), bias=True),
    # padding 3 around a 3x3 image with a 1x1 kernel: rows and columns of bias only
    _conv((1, 1, 3, 3), (2, 1, 1, 1), bias=True, padding=3),
    # padding larger than the fast path takes (the direct loop instead)
    _conv((1, 2, 3, 20), (3, 2, 1, 1), bias=True, padding=5),
    # groups 2: the direct loop
    _conv((2, 4, 9, 21), (6, 2, 3, 3), bias=True, padding=1, groups=2),
    # a symbolic batch
    _conv(("N", 3, 9, 37), (7, 3, 3, 3), bias=True, padding=1),
]}


@pytest.fixture(params=["implicit gemm", "padded copy", "border tiles"])
def algorithm(request, monkeypatch):
    """Each conv by each algorithm: as a matmul over its unfolded input, or tiled, through a
    zero-bordered copy of its input wherever the window reaches into the padding or through
    the border rows and tiles of the tiled conv."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 10**9)  # tested in test_winograd.py
    monkeypatch.setattr(conv, "GEMM_MAX_WIDTH", 10**9 if request.param == "implicit gemm" else 0)
    monkeypatch.setattr(conv, "PAD_COPY_MIN_WORK", 0 if request.param == "padded copy" else 10**9)
    return request.param


@pytest.mark.parametrize("op,sample", params(SAMPLES))
def test_tiled_conv_matches_reference(tmp_path, op, sample, algorithm):
    check(tmp_path, op, sample)


def test_narrow_outputs_take_the_implicit_gemm():
    """Output rows narrower than GEMM_MAX_WIDTH: the weights as a matrix, the input unfolded,
    matmul's tiles; wider ones stay tiled."""
    narrow = _lower((1, 16, 14, 14), (32, 16, 3, 3), bias=True, padding=1)
    stored = {s.buffer.name for s in _walk(narrow) if isinstance(s, Store)}
    assert {"k_wmat", "k_unfolded", "y"} <= stored
    assert not _padded_copies(narrow)
    wide = _lower((1, 16, 14, 40), (32, 16, 3, 3), bias=True, padding=1)
    assert "k_unfolded" not in {s.buffer.name for s in _walk(wide) if isinstance(s, Store)}


def test_the_padded_copy_is_chosen_where_each_input_feeds_enough_work():
    # M·kh·kw: 64 · 9 makes the copy, 2 · 9 (fewer multiply-adds per element copied) does not
    assert _padded_copies(_lower((1, 8, 12, 40), (64, 8, 3, 3), padding=1)) == 1
    assert _padded_copies(_lower((1, 8, 12, 40), (2, 8, 3, 3), padding=1)) == 0
    assert _padded_copies(_lower((1, 8, 12, 40), (64, 8, 3, 3))) == 0  # no padding


def _padded_copies(body) -> int:
    return len({s.buffer.name for s in _walk(body)
                if isinstance(s, Store) and s.buffer.name.endswith("padded")})


def test_the_padded_copy_leaves_the_conv_interior_tiles_only():
    """The first nest writes the zero-bordered copy; the conv after it reads only that, with
    no bounds check and no border tile (every tile is a full TILE_W or the leftover)."""
    body = _lower((1, 32, 20, 40), (64, 32, 3, 3), bias=True, padding=1)
    copy, *convs = body
    assert {s.buffer.name for s in _walk([copy]) if isinstance(s, Store)} == {"k_padded"}
    padded = next(s.buffer for s in _walk([copy]) if isinstance(s, Store))
    assert padded.shape == (1, 32, 22, 42)
    read = {e.buffer.name for e in _exprs(convs) if isinstance(e, Load)}
    assert read == {"k_padded", "w", "b"}
    assert not {type(e) for e in _exprs(convs)} & {Select, Compare}


# ---------------------------------------------------------------------------------------------
# The loop IR


def _lower(x, w, bias=False, dtype="f32", lanes=None, **attrs):
    """conv2d's loop IR for these shapes, straight from the registry (`lanes`: the target's
    vector width; None, scalar tiles)."""
    op = REGISTRY["conv2d"]
    bound = op.bind_attrs(attrs)
    shapes = [x, w] + ([(w[0],)] if bias else [])
    types = [TensorType(dtype, s) for s in shapes]
    out = op.infer(types, bound)
    buffers = [Buffer(name, dtype, s) for name, s in zip(("x", "w", "b"), shapes)]
    operands = [Operand(b.shape, buffer=b) for b in buffers]
    return op.lower(Buffer("y", dtype, out.shape), operands, bound, Names(lanes=lanes))


@pytest.fixture
def border_tiles(monkeypatch):
    """The tiled conv's own handling of padding (border rows and tiles), not the copy."""
    monkeypatch.setattr(conv, "PAD_COPY_MIN_WORK", 10**9)
    monkeypatch.setattr(conv, "GEMM_MAX_WIDTH", 0)


def _walk(stmts):
    for s in stmts:
        yield s
        if isinstance(s, For):
            yield from _walk(s.body)


def _exprs(stmts):
    """Every expression node of a statement list."""
    for s in _walk(stmts):
        if isinstance(s, Store):
            roots = (*s.indices, s.value)
        elif isinstance(s, Local):
            roots = (s.init,)
        else:
            roots = (s.value,) if isinstance(s, Assign) else ()
        stack = list(roots)
        while stack:
            e = stack.pop()
            yield e
            stack.extend(children(e))


def _value(e, env: dict[str, int]) -> int:
    """An index expression's value; a variable's value is looked up by its name less digits."""
    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, Var):
        return env[e.name.rstrip("0123456789")]
    assert isinstance(e, Binary) and e.op in ("add", "sub", "mul"), e
    a, b = _value(e.lhs, env), _value(e.rhs, env)
    return {"add": a + b, "sub": a - b, "mul": a * b}[e.op]


def _loops(stmts, prefix: str) -> list[For]:
    return [s for s in _walk(stmts) if isinstance(s, For) and s.var.name.startswith(prefix)]


def test_fast_path_has_no_bounds_checks(border_tiles):
    """Padding is handled by the shape of the loops: no Select or Compare anywhere."""
    body = _lower((1, 32, 20, 40), (64, 32, 3, 3), bias=True, padding=1)
    kinds = {type(e) for e in _exprs(body)}
    assert MulAdd in kinds
    assert not kinds & {Select, Compare}


@pytest.mark.parametrize("case", [
    dict(x=(1, 4, 9, 9), w=(6, 2, 3, 3), padding=1, groups=2),
    dict(x=(1, 4, 9, 9), w=(6, 4, 3, 3), padding=1, dtype="f16"),
    dict(x=(1, 2, 3, 20), w=(3, 2, 1, 1), padding=5),
], ids=["groups2", "f16", "huge-padding"])
def test_direct_loop_where_the_fast_path_does_not_apply(case, border_tiles):
    body = _lower(case.pop("x"), case.pop("w"), **case)
    assert MulAdd not in {type(e) for e in _exprs(body)}


def test_hot_loop_reads_consecutive_columns(border_tiles):
    """In the loop over full tiles of an inner row, each step reads TILE_W inputs at
    consecutive columns and one weight per channel, then does 6 x TILE_W multiply-adds."""
    body = _lower((1, 8, 10, 60), (12, 8, 3, 3), padding=1)
    (rows,) = _loops(body, "oh")
    (tiles,) = _loops(rows.body, "wb")
    (taps,) = _loops(tiles.body, "kh")
    reads = {s.var: s.init for s in taps.body if isinstance(s, Local)}
    updates = [s for s in taps.body if isinstance(s, Assign)]
    assert len(reads) == TILE_W + 6 and len(updates) == 6 * TILE_W
    env = {"n": 0, "mb": 1, "oh": 3, "wb": 1, "kw": 1, "c": 5, "kh": 2}
    at = {v: (e.buffer.name, tuple(_value(i, env) for i in e.indices)) for v, e in reads.items()}
    # the loop over inner rows starts at output row 1: its oh = 3 is row 4, read at 4 + 2 - 1
    inputs = sorted(index for name, index in at.values() if name == "x")
    first = inputs[0][3]
    assert inputs == [(0, 5, 5, first + t) for t in range(TILE_W)]
    assert sorted(index for name, index in at.values() if name == "w") == \
        [(6 + u, 5, 2, 1) for u in range(6)]
    pairs = set()
    for s in updates:
        assert isinstance(s.value, MulAdd) and s.value.c == s.var
        pairs.add((at[s.value.a][1][3] - first, at[s.value.b][1][0] - 6))
    assert pairs == {(t, u) for t in range(TILE_W) for u in range(6)}


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_hot_loop_loads_vectors_of_columns(border_tiles, lanes):
    """With a vector width, a full tile is two vectors of consecutive columns: each step loads
    them, broadcasts one weight per channel and does 6 x 2 vector multiply-adds; the stores
    read the lanes back one column each."""
    body = _lower((1, 8, 10, 100), (12, 8, 3, 3), padding=1, lanes=lanes)
    (rows,) = _loops(body, "oh")
    (tiles,) = _loops(rows.body, "wb")
    (taps,) = _loops(tiles.body, "kh")
    reads = {s.var: s.init for s in taps.body if isinstance(s, Local)}
    env = {"n": 0, "mb": 1, "oh": 3, "wb": 1, "kw": 1, "c": 5, "kh": 2}
    first, second = sorted(_value(e.indices[3], env) for e in reads.values()
                           if isinstance(e, VecLoad))
    assert second == first + lanes
    assert all(e.lanes == lanes for e in reads.values() if isinstance(e, VecLoad))
    updates = [s for s in taps.body if isinstance(s, Assign)]
    assert len(updates) == 12
    assert all(isinstance(s.value, MulAdd) and isinstance(s.value.b, Splat) for s in updates)
    stores = [s for s in _walk(tiles.body) if isinstance(s, Store)]
    assert len(stores) == 6 * 2 * lanes and all(isinstance(s.value, Lane) for s in stores)


def test_one_by_one_kernel_puts_rows_outermost():
    """With a 1x1 kernel the loop over rows encloses the loop over channel blocks."""
    body = _lower((1, 64, 9, 40), (24, 64, 1, 1))
    (nest,) = body
    (rows,) = nest.body
    assert rows.var.name.startswith("oh") and rows.body[0].var.name.startswith("mb")


def test_channel_blocks_store_at_block_offsets(border_tiles):
    """Each store of the loop over blocks of 6 channels writes channel mb*6 + u, 0 <= u < 6:
    the blocks own disjoint channels (what the thread parallelism pass proves from)."""
    body = _lower((1, 3, 10, 40), (32, 3, 3, 3), bias=True, padding=1)
    nests = [s for s in body if isinstance(s, For)]
    assert len(nests) == 2  # blocks of 6, then of 4
    (six,) = [loop for loop in _loops(nests[0].body, "mb")]
    assert six.extent == 4
    for s in _walk(six.body):
        if isinstance(s, Store):
            channel = s.indices[1]
            offsets = {_value(channel, {"mb": k}) - 6 * k for k in (0, 3)}
            assert len(offsets) == 1 and 0 <= offsets.pop() < 6


def test_symbolic_batch_keeps_the_fast_path(border_tiles):
    n = symbol("N")
    body = _lower((n, 3, 9, 37), (7, 3, 3, 3), bias=True, padding=1)
    assert MulAdd in {type(e) for e in _exprs(body)}
    assert all(isinstance(s, For) and s.extent == n for s in body)


# ---------------------------------------------------------------------------------------------
# Depthwise (groups = channels)

LANES = CpuTarget().capabilities.vector_bits // 32  # this host's, as a build uses


def _depthwise(x, k=(3, 3), bias=False, **attrs):
    return conv_sample(x, (x[1], 1, *k), bias, groups=x[1], **attrs)


DEPTHWISE = [
    # 9 rows: two blocks of 4 and one row; 40 columns: whole tiles, then what is left
    _depthwise((1, 5, 9, 40), bias=True, padding=1),
    # no padding (the input read in place), batch 2, 67 columns
    _depthwise((2, 3, 11, 69)),
    # a 5x5 kernel with one-sided padding (top 2, left 1, bottom 0, right 3)
    _depthwise((1, 4, 10, 50), (5, 5), padding=(2, 1, 0, 3)),
    # a 1x7 kernel, 3 rows
    _depthwise((1, 2, 3, 70), (1, 7), bias=True, padding=(0, 3)),
    # a symbolic batch
    _depthwise(("N", 3, 6, 48), bias=True, padding=1),
]


@pytest.mark.parametrize("sample", DEPTHWISE, ids=lambda s: "x".join(map(str, s.shapes[0])))
def test_depthwise_matches_reference(tmp_path, sample):
    x = tuple(2 if isinstance(d, str) else d for d in sample.shapes[0])
    body = _lower(x, sample.shapes[1], len(sample.shapes) == 3, lanes=LANES, **sample.attrs)
    assert _is_depthwise(body)
    check(tmp_path, "conv2d", sample)


def _is_depthwise(body) -> bool:
    """The depthwise tiles are the only conv form with vector loads under groups > 1."""
    return any(isinstance(e, VecLoad) for e in _exprs(body))


def test_depthwise_where_it_applies():
    taken = _lower((1, 8, 12, 40), (8, 1, 3, 3), lanes=16, padding=1, groups=8)
    assert _is_depthwise(taken)
    (nest,) = taken  # one loop over channels (then the batch): copy, then tiles
    assert nest.var.name.startswith("c")
    copies = {s.buffer.name for s in _walk([nest]) if isinstance(s, Store)}
    assert copies == {"k_padded", "y"}
    # stride 2, a channel multiplier of 2, a narrow output, no vector width: the direct loop
    for x, w, attrs in (((1, 8, 12, 80), (8, 1, 3, 3), dict(stride=2, groups=8)),
                        ((1, 8, 12, 40), (16, 1, 3, 3), dict(groups=8)),
                        ((1, 8, 12, 20), (8, 1, 3, 3), dict(groups=8))):
        assert not any(isinstance(e, VecLoad)
                       for e in _exprs(_lower(x, w, lanes=16, padding=1, **attrs)))
    assert not any(isinstance(e, VecLoad) for e in
                   _exprs(_lower((1, 8, 12, 40), (8, 1, 3, 3), padding=1, groups=8)))
