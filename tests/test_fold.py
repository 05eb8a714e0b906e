"""Build-time weight layouts (aotml/loops/fold.py): a matmul's packing of a constant b runs
at build time; the library then holds the panels, not the weight, and gives the same results."""

from __future__ import annotations

import numpy as np
import pytest

import aotml
from aotml.codegen.llvm_cpu import CpuTarget
from aotml.driver import build
from aotml.loops.fold import _copy_expr, _tdiv
from aotml.loops.ir import Binary, Buffer, Load, Var
from aotml.ops import nn
from aotml.ops.nn import tile_cols
from conftest import rand

COLS = tile_cols(CpuTarget().capabilities.vector_bits // 32)  # this host's panel width

LINEAR = """weights "weights.npz"
model m {{
    input x: f32[{batch}96, 200]
    param w: f32[200, {n}]
    output y = x @ w
}}"""


@pytest.fixture(autouse=True)
def pack_small_weights(monkeypatch):
    """These weights are small; the packing they test is what a big weight takes."""
    monkeypatch.setattr(nn, "PACK_MIN_BYTES", 0)


def _build(tmp_path, n: int, batch: str = "", **options):
    rng = np.random.default_rng(n)
    np.savez(tmp_path / "weights.npz", w=rand(rng, (200, n)))
    src = tmp_path / "m.mlg"
    src.write_text(LINEAR.format(n=n, batch=batch))
    return src, build(src, tmp_path / "m.so", dump="loops", **options)


def _check(src, so, shape):
    model = aotml.load(so)
    x = rand(np.random.default_rng(3), shape)
    want = aotml.interpret(src, precise=True, x=x)["y"]
    for threads in (1, 2):
        model.set_num_threads(threads)
        np.testing.assert_allclose(model(x=x)["y"], want, rtol=1e-5 * 200, atol=1e-5)
    return model


def test_the_panels_of_a_weight_are_packed_at_build_time(tmp_path):
    src, result = _build(tmp_path, 64)
    loops = result.dumps["loops"]
    # the panels are a weight, the copy is gone, and w itself is no longer in the library
    assert f"buffer k0_panels: f32[{64 // COLS}, 200, {COLS}] param@0" in loops
    assert "k0_panels[p" not in loops and "= w[" not in loops
    program = result.program
    params = {pl.buffer.name for pl in program.placements if pl.region == "param"}
    assert params == {"k0_panels"}
    assert program.weights_bytes == 200 * 64 * 4
    model = _check(src, result.so_path, (96, 200))
    assert model.workspace_bytes == 0


def test_tail_columns_keep_the_weight_beside_its_panels(tmp_path):
    src, result = _build(tmp_path, 70)  # whole panels, then 6 columns read from w
    params = {pl.buffer.name for pl in result.program.placements if pl.region == "param"}
    assert params == {"w", "k0_panels"}
    _check(src, result.so_path, (96, 200))


def test_panels_per_matrix_of_a_broadcast_batch_are_left_to_run(tmp_path):
    """Three matrices sharing one weight would need three copies of it: not folded."""
    src, result = _build(tmp_path, 64, batch="3, ")
    params = {pl.buffer.name for pl in result.program.placements if pl.region == "param"}
    assert params == {"w"}
    assert "k0_panels[" in result.dumps["loops"]
    _check(src, result.so_path, (3, 96, 200))


VECTOR = """weights "weights.npz"
model m {{
    input x: f32[{rows}, 200]
    {decl} w: f32[200, 64]
    output y = x @ w
}}"""


@pytest.mark.parametrize("rows", ["1", "3", "N"])
def test_few_or_symbolic_rows_pack_a_weight_but_not_a_run_time_b(tmp_path, rows):
    """Packing a weight costs nothing at run time, so a matrix-vector product (1 row), a few
    rows, or a symbolic count of them read panels; a b computed at run time is packed only
    from PACK_MIN_ROWS rows (its copy would cost as much as the product)."""
    rng = np.random.default_rng(5)
    w = rand(rng, (200, 64))
    np.savez(tmp_path / "weights.npz", w=w)
    for decl in ("param", "input"):
        src = tmp_path / f"{decl}.mlg"
        src.write_text(VECTOR.format(rows=rows, decl=decl))
        result = build(src, tmp_path / f"{decl}.so", dump="loops")
        params = {pl.buffer.name for pl in result.program.placements if pl.region == "param"}
        assert params == ({"k0_panels"} if decl == "param" else set())
        assert "panels" in result.dumps["loops"] if decl == "param" else \
            "panels" not in result.dumps["loops"]
        model = aotml.load(result.so_path)
        for n in ((1, 5) if rows == "N" else (int(rows),)):
            x = rand(rng, (n, 200))
            feeds = {"x": x} if decl == "param" else {"x": x, "w": w}
            want = aotml.interpret(src, precise=True, **feeds)["y"]
            for threads in (1, 2):
                model.set_num_threads(threads)
                np.testing.assert_allclose(model(**feeds)["y"], want, rtol=1e-5 * 200,
                                           atol=1e-5)


def test_a_weight_under_a_batch_loop_is_not_packed_at_run_time(tmp_path):
    """x: [1, 1, 200] puts the matmul in a batch loop of one iteration whose row tail keeps it
    closed, so fold could not make the panels at build time: one row then reads w as it is
    rather than copy all of it every call."""
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "weights.npz", w=rand(rng, (200, 70)))
    src = tmp_path / "m.mlg"
    src.write_text(LINEAR.replace("{batch}96, 200", "1, 1, 200").format(n=70, batch=""))
    result = build(src, tmp_path / "m.so", dump="loops")
    assert "panels" not in result.dumps["loops"]
    _check(src, result.so_path, (1, 1, 200))


def test_a_nest_reading_a_local_from_outside_is_left_to_run():
    w = Buffer("w", "f32", (4,))
    i, outside = Var("i"), Var("t", "f32")
    value = Binary("mul", Load(w, (i,)), outside)
    assert not _copy_expr(value, {"w": np.ones(4, np.float32)}, set(), {"i"})
    assert _copy_expr(Load(w, (i,)), {"w": np.ones(4, np.float32)}, set(), {"i"})


def test_integer_division_truncates_toward_zero_as_in_c():
    a = np.arange(-20, 21, dtype=np.int64)
    for b in (1, 3, -3, 7):
        want = np.array([int(x / b) for x in a])
        np.testing.assert_array_equal(_tdiv(a, np.int64(b)), want)


def test_the_grid_emulation_runs_the_same_graph(tmp_path):
    src, result = _build(tmp_path, 64, target="grid-emulation")
    _check(src, result.so_path, (96, 200))
