"""GPU schedules in block form (aotml/gpu/schedules.py), checked without a GPU: the tiled
matmul through the grid emulation (every block, its barrier phases one after another) against
the float64 reference at shapes that hit every edge of its tiles, and its PTX through ptxas
(shared memory, barriers, accumulators in registers)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from opcheck import EPS32, within

import aotml
from aotml.codegen.nvptx import emit_ptx, have_ptxas, ptx_problems
from aotml.driver import build
from aotml.errors import InternalError
from aotml.gpu import schedules
from aotml.gpu.host import plan_launches
from aotml.gpu.schedules import BIG_TILE, SMALL_TILE
from aotml.graph.symbolic import symbol
from aotml.loops.build import idx
from aotml.loops.ir import (
    Binary,
    Buffer,
    Compare,
    Const,
    For,
    If,
    Kernel,
    Load,
    Shuffle,
    Store,
    Var,
    check_warp_phases,
    print_kernel,
    thread_extents,
)
from conftest import rand


def _model(tmp_path: Path, a: str, b: str, expr: str = "a @ b", dims: str = "") -> Path:
    src = tmp_path / "m.mlg"
    src.write_text(f"model m {{\n{dims}    input a: f32[{a}]\n    input b: f32[{b}]\n"
                   f"    output y = {expr}\n}}\n")
    return src


def _check(src: Path, shapes: list[tuple], k: int, seed: int, target="grid-emulation"):
    result = build(src, src.with_suffix(".so"), target=target)
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(seed)
    for sa, sb in shapes:
        a, b = rand(rng, sa), rand(rng, sb)
        got = model(a=a, b=b)["y"]
        exact = aotml.interpret(src, precise=True, a=a, b=b)["y"]
        within(got, exact, 1e-5 + k * EPS32, 2 * k * EPS32 * 4.0)
    return result


@pytest.fixture(params=["big", "small"])
def tile(request, monkeypatch):
    """Each test with the tile forced: the big one at any size, or the small one."""
    monkeypatch.setattr(schedules, "BIG_TILE_BLOCKS", 1 if request.param == "big" else 10**9)
    return BIG_TILE if request.param == "big" else SMALL_TILE


@pytest.mark.parametrize("shape", ["1 1 1", "one tile", "whole tiles", "70 45 130",
                                   "5 300 3", "130 9 260"])
def test_the_tiled_matmul_matches_the_reference(tmp_path, tile, shape):
    m, k, n = {
        "one tile": (tile.bm, tile.bk, tile.bn),  # no guard at all
        "whole tiles": (2 * tile.bm, 3 * tile.bk, tile.bn),  # row blocks and k steps
        # one element (every load and store at an edge); ragged in every dim; long k and a
        # thin output; a ragged second row and column block with k not a multiple of VEC
    }.get(shape) or tuple(map(int, shape.split()))
    src = _model(tmp_path, f"{m}, {k}", f"{k}, {n}")
    result = _check(src, [((m, k), (k, n))], k, seed=m * 1000 + n)
    (kernel,) = result.gpu_program.kernels
    assert {b.scope for b in kernel.args} == {"global", "shared", "local"}
    # zero, then per k step a load phase and a compute phase, then the write-back
    assert list(thread_extents(kernel.body)) == [tile.threads] * 4


def test_large_products_take_the_big_tile():
    assert schedules.matmul_tile(2048, 2048, 1) is BIG_TILE   # 256 blocks of 128 x 128
    assert schedules.matmul_tile(1024, 1024, 1) is SMALL_TILE  # 64 such blocks: too few
    assert schedules.matmul_tile(1024, 1024, 2) is BIG_TILE
    assert schedules.matmul_tile(symbol("N"), 2048, 1) is SMALL_TILE  # N may be small


def test_batched_and_broadcast_operands(tmp_path, tile):
    src = _model(tmp_path, "3, 1, 20, 33", "4, 33, 70")
    _check(src, [((3, 1, 20, 33), (4, 33, 70))], 33, seed=7)


def test_a_symbolic_row_count_takes_the_guarded_grid(tmp_path):
    # blocks past the last row block (the grid is rounded up without a ceil) do nothing
    src = _model(tmp_path, "N, 40", "40, 90", dims="    dim N <= 300\n")
    shapes = [((n, 40), (40, 90)) for n in (1, 63, 64, 65, 200, 300)]
    _check(src, shapes, 40, seed=8)


def test_an_epilogue_goes_into_the_guarded_stores(tmp_path, tile):
    src = _model(tmp_path, "37, 50", "50, 77", expr="relu(a @ b * 0.5 + 1)")
    result = _check(src, [((37, 50), (50, 77))], 50, seed=9)
    assert len(result.gpu_program.kernels) == 1


def test_a_matmul_the_schedule_declines_is_mapped_as_before(tmp_path):
    # an integer matmul has no block form: the generic mapping runs it, one thread per point
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n    input a: i32[5, 6]\n    input b: i32[6, 3]\n"
                   "    output y = a @ b\n}\n")
    result = build(src, tmp_path / "m.so", target="grid-emulation")
    assert not any(b.scope != "global" for k in result.gpu_program.kernels for b in k.args)
    rng = np.random.default_rng(10)
    a, b = rng.integers(-9, 9, (5, 6), np.int32), rng.integers(-9, 9, (6, 3), np.int32)
    np.testing.assert_array_equal(aotml.load(result.so_path)(a=a, b=b)["y"], a @ b)


@pytest.mark.skipif(not have_ptxas(), reason="no ptxas on PATH")
def test_the_ptx_keeps_the_tiles_on_chip(tmp_path, tile):
    src = _model(tmp_path, "70, 45", "45, 130")
    result = build(src, tmp_path / "m.ptx", target="cuda:sm_90")
    ptx = emit_ptx(result.gpu_program, "sm_90")
    assert ptx.count("bar.sync") == 4  # one after each phase
    assert ".shared" in ptx and "fma.rn.f32" in ptx
    # a thread's values of a step of k come in 16-byte shared-memory reads
    assert ptx.count("ld.shared.v4.b32") == (tile.tm + tile.tn) // 4, ptx
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m.ptx").write_text(ptx)
        out = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(Path(tmp) / "m.ptx"), "-o",
                              str(Path(tmp) / "m.o")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # the accumulators are in registers: no stack frame, nothing spilled
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in out.stderr, \
        out.stderr
    smem = (tile.bk * (tile.bm + 4) + tile.bk * tile.bn) * 4
    assert f"{smem} bytes smem" in out.stderr, out.stderr


ROWS = """model m {
    dim N <= 9
    input x: f32[N, 3, 300]
    input g: f32[3, 300]
    input b: f32[3, 300]
    input s: f32[N, 7, 5]
    output y = softmax(x * 2, axis=-1)
    output z = layer_norm(x, g, b, axis=1)
    output w = rms_norm(x, b, axis=1)
    output v = softmax(s, axis=-1)
}
"""


def test_row_reductions_take_one_block_per_row(tmp_path):
    """softmax, layer_norm and rms_norm: partials per thread combined by warp shuffles, rows of
    900 (a ragged share per thread), 300 and 5 (fewer elements than threads)."""
    src = tmp_path / "m.mlg"
    src.write_text(ROWS)
    result = build(src, tmp_path / "m.so", target="grid-emulation")
    model = aotml.load(result.so_path)
    kinds = {k.name.split("_", 1)[1]: k for k in result.gpu_program.kernels}
    for op in ("softmax_g0", "layer_norm_g0", "rms_norm_g0"):
        assert any(b.scope == "shared" for b in kinds[op].args), op
    rng = np.random.default_rng(11)
    for n in (1, 4, 9):
        arrays = {"x": rand(rng, (n, 3, 300), -6, 6), "g": rand(rng, (3, 300)),
                  "b": rand(rng, (3, 300)), "s": rand(rng, (n, 7, 5), -30, 30)}
        got = model(**arrays)
        exact = aotml.interpret(src, precise=True, **arrays)
        for name in got:
            within(got[name], exact[name], 1e-5 + 900 * EPS32, 1e-6)


@pytest.mark.parametrize("row, threads", [(900, 256), (100, 128), (40, 64), (20, 32)])
def test_row_reductions_by_warp_shuffles_match_the_reference(tmp_path, row, threads):
    """8, 4, 2 and 1 warps a row: the second level combines 3, 2, 1 and no halvings."""
    src = tmp_path / "m.mlg"
    src.write_text(f"model m {{\n    input x: f32[7, {row}]\n    input g: f32[{row}]\n"
                   f"    input b: f32[{row}]\n    output y = softmax(x, axis=-1)\n"
                   f"    output z = layer_norm(x, g, b)\n}}\n")
    result = build(src, tmp_path / "m.so", target="grid-emulation")
    assert all(list(thread_extents(k.body))[0] == threads for k in result.gpu_program.kernels)
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(row)
    arrays = {"x": rand(rng, (7, row), -8, 8), "g": rand(rng, (row,)), "b": rand(rng, (row,))}
    got, exact = model(**arrays), aotml.interpret(src, precise=True, **arrays)
    for name in ("y", "z"):
        within(got[name], exact[name], 1e-5 + row * EPS32, 1e-6)


@pytest.mark.skipif(not have_ptxas(), reason="no ptxas on PATH")
@pytest.mark.parametrize("row, threads", [(900, 256), (100, 128), (40, 64), (20, 32)])
def test_row_reductions_combine_by_warp_shuffles(tmp_path, row, threads):
    """Per reduction: 5 shuffles within each warp and log2(warps) across the warps' totals,
    and 2 barriers (1 with one warp) where a tree in shared memory had log2(threads) + 1."""
    src = tmp_path / "m.mlg"
    src.write_text(f"model m {{\n    input x: f32[7, {row}]\n"
                   f"    output y = softmax(x, axis=-1)\n}}\n")
    result = build(src, tmp_path / "m.ptx", target="cuda:sm_90")
    ptx = emit_ptx(result.gpu_program, "sm_90")
    warps = threads // 32
    assert ptx.count("shfl.sync.down.b32") == 2 * (5 + (warps.bit_length() - 1)), ptx
    assert ptx.count("bar.sync") == 2 * (2 if warps > 1 else 1), ptx
    assert ptx_problems(ptx, "sm_90") is None


def _phase(t: Var, body, barrier=True, threads=64) -> For:
    return For(t, threads, tuple(body), bind="thread.x", barrier=barrier)


PART = Buffer("part", "f32", (64, 2), scope="local")
SHARED = Buffer("sh", "f32", (64,), scope="shared")


def _kernel(*phases) -> Kernel:
    return Kernel("k", (PART, SHARED), (), (For(Var("b"), 64, phases, step=64,
                                                    bind="block.x"),))


@pytest.mark.parametrize("case", ["nested", "odd block", "shared write", "write after read",
                                  "store then shuffle", "another row", "across iterations"])
def test_warp_phases_that_would_race_are_refused(case):
    t = Var("t")
    shuffle = Store(PART, (t, idx(1)), Shuffle(PART, (t, idx(0)), 1))
    if case == "store then shuffle":
        # the GPU would exchange the new value, the emulation (threads in turn) the old one
        k = _kernel(_phase(t, [Store(PART, (t, idx(0)), Const(2.0, "f32")), shuffle],
                           barrier=False))
        message = "after a store to it in the same phase"
    elif case == "another row":
        k = _kernel(_phase(t, [Store(PART, (t, idx(1)), Shuffle(
            PART, (Binary("add", t, idx(1)), idx(0)), 1))], barrier=False))
        message = "not at its thread's row"
    elif case == "across iterations":
        # the phase that reads sh is barrier-less, and the loop comes back to the write
        u = Var("u")
        loop = For(Var("k"), 3, (_phase(u, [Store(SHARED, (u,), Const(1.0, "f32"))]),
                                 _phase(t, [Store(PART, (t, idx(0)), Load(SHARED, (t,)))],
                                        barrier=False)))
        k = _kernel(loop)
        message = "written while another warp may still read it"
    elif case == "nested":
        k = _kernel(_phase(t, [If(Compare("lt", t, idx(3)), (shuffle,))]))
        message = "outside a thread loop's top level"
    elif case == "odd block":
        part = Buffer("part", "f32", (48, 2), scope="local")
        k = Kernel("k", (part,), (), (For(Var("b"), 48, (_phase(t, [Store(
            part, (t, idx(1)), Shuffle(part, (t, idx(0)), 1))], threads=48),), step=48,
            bind="block.x"),))
        message = "shuffles in a block of 48 threads"
    elif case == "shared write":
        k = _kernel(_phase(t, [Store(SHARED, (t,), Const(1.0, "f32"))], barrier=False))
        message = "a phase without a barrier writes shared memory"
    else:
        read = Store(PART, (t, idx(0)), Load(SHARED, (t,)))
        k = _kernel(_phase(t, [read], barrier=False),
                    _phase(Var("u"), [Store(SHARED, (Var("u"),), Const(1.0, "f32"))]))
        message = "written while another warp may still read it"
    with pytest.raises(InternalError, match=message):
        check_warp_phases(k)


def test_a_shuffle_of_an_element_stored_later_in_the_phase_is_allowed():
    t = Var("t")
    check_warp_phases(_kernel(_phase(t, [
        Store(PART, (t, idx(1)), Binary("add", Load(PART, (t, idx(0))),
                                        Shuffle(PART, (t, idx(0)), 8))),
        Store(PART, (t, idx(0)), Const(0.0, "f32"))], barrier=False)))


def test_a_shuffle_prints_and_leaves_a_warp_phase_without_a_barrier():
    t = Var("t")
    k = _kernel(_phase(t, [Store(PART, (t, idx(1)), Shuffle(PART, (t, idx(0)), 4))],
                       barrier=False))
    check_warp_phases(k)
    text = print_kernel(k)
    assert "bind thread.x no barrier" in text and "shfl_down(part[t, 0], 4)" in text


def test_the_report_counts_a_block_loop_once_per_block(tmp_path):
    # the matmul's phases do exactly 2*m*k*n flops at whole tiles; the shared and local
    # buffers are not memory traffic
    t = SMALL_TILE
    src = _model(tmp_path, f"{2 * t.bm}, {t.bk}", f"{t.bk}, {t.bn}")
    result = build(src, tmp_path / "m.so", target="cuda", report=True)
    row = next(line for line in result.dumps["report"].splitlines() if "k0_matmul" in line)
    flops, traffic = row.split()[-2:]
    assert int(flops) == 2 * (2 * t.bm) * t.bk * t.bn
    assert int(traffic) == 4 * (2 * t.bm * t.bk + t.bk * t.bn + 2 * t.bm * t.bn)


def test_on_chip_scratch_takes_no_device_workspace(tmp_path):
    """The tiles' shared and local buffers come last in the workspace: the grid emulation runs
    them there, while the GPU's workspace stops before them (here: nothing at all)."""
    src = _model(tmp_path, "70, 45", "45, 130")
    result = _check(src, [((70, 45), (45, 130))], 45, 3)
    program = result.gpu_program
    onchip = [p for p in program.placements if p.region == "workspace"
              and p.buffer.scope != "global"]
    assert onchip and program.onchip_bytes > 0
    assert all(p.index >= program.workspace_bytes - program.onchip_bytes for p in onchip)
    assert plan_launches(program, {}).workspace == 0
    # with a global temporary too, the GPU's workspace is exactly that temporary
    (tmp_path / "two").mkdir()
    src = _model(tmp_path / "two", "70, 45", "45, 130", expr="softmax(a @ b, axis=-1)")
    program = _check(src, [((70, 45), (45, 130))], 45, 4).gpu_program
    assert plan_launches(program, {}).workspace == (70 * 130 * 4 + 63) // 64 * 64
