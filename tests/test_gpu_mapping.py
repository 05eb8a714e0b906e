"""The GPU mapping (aotml/gpu/mapping.py), checked without a GPU: every op's kernels mapped onto
blocks and threads and run by the grid emulation (bound loops compiled as loops for this CPU)
against the float64 reference, and the shape of the mapping itself."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import all_samples, check, params

import aotml
from aotml.driver import build
from aotml.gpu.mapping import map_kernel
from aotml.graph.symbolic import symbol
from aotml.loops.ir import (
    Binary,
    Buffer,
    Const,
    For,
    If,
    Kernel,
    Load,
    Local,
    Store,
    Var,
    grid,
    print_kernel,
)


@pytest.mark.parametrize("op, sample", params(all_samples()))
def test_grid_emulation_matches_the_reference(tmp_path, op, sample):
    check(tmp_path, op, sample, target="grid-emulation")


X = Buffer("x", "f32", (5, 300))
Y = Buffer("y", "f32", (5, 300))
S = Buffer("s", "f32", (1,))
i, j = Var("i"), Var("j")


def test_independent_loops_become_one_guarded_index_space():
    # (a row of 301: not a multiple of 4, so one element a thread; see the widening below)
    x, y = Buffer("x", "f32", (5, 301)), Buffer("y", "f32", (5, 301))
    k = Kernel("k", (x, y), ("y",), (For(i, 5, (For(j, 301, (
        Store(y, (i, j), Binary("mul", Load(x, (i, j)), Const(2.0, "f32"))),)),)),))
    (g,) = map_kernel(k, block=256)
    blocks = g.body[0]
    assert (blocks.bind, blocks.extent, blocks.step) == ("block.x", 1505, 256)
    threads = blocks.body[0]
    assert (threads.bind, threads.extent) == ("thread.x", 256)
    guard = threads.body[1]
    assert isinstance(guard, If)
    text = print_kernel(g)
    assert "if lt(i_flat, 1505)" in text
    assert "i: i64 = idiv(i_flat, 301)" in text and "j: i64 = irem(i_flat, 301)" in text


def test_a_shared_accumulator_runs_on_one_thread_without_splitting_its_local():
    acc = Var("acc", "f32")
    sum_all = For(i, 5, (For(j, 300, (
        Local(Var("t", "f32"), Load(X, (i, j))),)),))
    body = (Local(acc, Const(0.0, "f32")), sum_all, Store(S, (Const(0, "i64"),), acc))
    k = Kernel("k", (X, S), ("s",), body)
    kernels = map_kernel(k)
    # the nest is independent on its own, but splitting there would leave `acc` declared in
    # one GPU kernel and stored in another
    assert len(kernels) == 1
    assert kernels[0].body[0].extent == 1 and kernels[0].body[0].body[0].extent == 1


def test_emulation_runs_every_thread_of_a_partial_last_block(build_model):
    model = build_model("model m {\n  input x: f32[7, 61]\n  output y = exp(x) * 0.5\n}\n",
                        target="grid-emulation")
    x = np.random.default_rng(1).uniform(-2, 2, (7, 61)).astype(np.float32)
    got = model(x=x)["y"]
    np.testing.assert_allclose(got, np.exp(x.astype(np.float64)) * 0.5, rtol=2e-6)


@pytest.mark.parametrize("cols", [256, 12, 10])
def test_pointwise_grids_take_four_elements_a_thread_where_the_row_allows(tmp_path, cols):
    """Rows of a multiple of 4 are widened (values first, then the stores), others are not;
    both match the reference, the in-place form too (y over t)."""
    src = tmp_path / "m.mlg"
    src.write_text(f"model m {{\n  input x: f32[37, {cols}]\n  input b: f32[{cols}]\n"
                   f"  t = softmax(x, axis=-1)\n  output y = relu(t * 2.0 + b) * 0.5\n}}\n")
    result = build(src, tmp_path / "m.so", target="grid-emulation", dump="loops")
    assert ("i1_v3: f32 =" in result.dumps["loops"]) == (cols % 4 == 0)
    rng = np.random.default_rng(cols)
    x, b = rng.uniform(-2, 2, (37, cols)).astype(np.float32), \
        rng.uniform(-1, 1, cols).astype(np.float32)
    want = aotml.interpret(src, precise=True, x=x, b=b)["y"]
    got = aotml.load(result.so_path)(x=x, b=b)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5 * cols, atol=1e-7)


def test_a_conv_gets_a_thread_per_output_element(tmp_path):
    # the CPU's tiled conv keeps a tile of rows on one thread; on the GPU that left a batch-8
    # 28x28 conv 16 threads
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n    input x: f32[N, 3, 28, 27]\n    input w: f32[8, 3, 3, 3]\n"
                   "    output y = relu(conv2d(x, w, padding=1))\n}\n")
    result = build(src, tmp_path / "m.so", target="grid-emulation")
    (kernel,) = result.gpu_program.kernels
    points, threads = grid(kernel.body, kernel.name)
    assert points == symbol("N") * 8 * 28 * 27 and threads == 256
    rng = np.random.default_rng(3)
    model = aotml.load(result.so_path)
    for n in (1, 3):
        x, w = rng.uniform(-1, 1, (n, 3, 28, 27)).astype(np.float32), \
            rng.uniform(-1, 1, (8, 3, 3, 3)).astype(np.float32)
        want = aotml.interpret(src, precise=True, x=x, w=w)["y"]
        np.testing.assert_allclose(model(x=x, w=w)["y"], want, rtol=1e-5, atol=27 * 2.4e-7)
