"""In-place reuse (aotml/loops/inplace.py): a pointwise kernel writes its output over an input
that dies with it, and only then; the results stay the reference's."""

from __future__ import annotations

import numpy as np
import pytest

import aotml
from aotml.driver import build
from aotml.loops.inplace import reuse_in_place
from aotml.loops.ir import Binary, Buffer, Cast, Const, For, Kernel, Launch, Load, Store, Var
from conftest import rand

# softmax -> exp -> softmax: the exp kernel is kept (the second softmax reads its input in
# several passes, too often to recompute an exp) and is the last reader of the first softmax
CHAIN = """model m {
    input x: f32[37, 300]
    s = softmax(x, axis=-1)
    e = exp(s * 3.0)
    output y = softmax(e, axis=-1)
}"""


def _reference(src, **feeds):
    return aotml.interpret(src, precise=True, **feeds)["y"]


def test_a_dying_input_gives_its_bytes_to_the_pointwise_output(tmp_path):
    src = tmp_path / "m.mlg"
    src.write_text(CHAIN)
    result = build(src, tmp_path / "m.so", dump="loops", report=True)
    assert "in place (an output over an input that dies with its kernel):\n  e over s" \
        in result.dumps["report"]
    # the exp kernel takes one buffer, which it reads and writes
    assert "kernel k2_exp(e: f32[37, 300] out)" in result.dumps["loops"]
    assert "e[i0, i1] = exp(e[i0, i1] * 3.0)" in result.dumps["loops"]
    model = aotml.load(result.so_path)
    one = 37 * 300 * 4
    assert model.workspace_bytes == (one + 63) // 64 * 64  # s and e in one slot
    rng = np.random.default_rng(4)
    x = rand(rng, (37, 300))
    want = _reference(src, x=x)
    for n in (1, 2):
        model.set_num_threads(n)
        np.testing.assert_allclose(model(x=x)["y"], want, rtol=1e-5 * 300, atol=1e-7)


def test_an_input_still_read_later_keeps_its_bytes(tmp_path):
    src = tmp_path / "m.mlg"
    src.write_text(CHAIN.replace("output y = softmax(e, axis=-1)",
                                 "output y = softmax(e, axis=-1) + s"))
    result = build(src, tmp_path / "m.so", report=True)
    assert "in place" not in result.dumps["report"]
    x = rand(np.random.default_rng(5), (37, 300))
    got = aotml.load(result.so_path)(x=x)["y"]
    np.testing.assert_allclose(got, _reference(src, x=x), rtol=1e-5 * 300, atol=1e-7)


@pytest.mark.parametrize("dims", ["dim N <= 64", "dim N"])
def test_symbolic_shapes_share_one_slot(tmp_path, dims):
    """Bounded symbols are planned at their bounds, unbounded ones in run-time slots: either
    way the in-place pair shares one."""
    src = tmp_path / "m.mlg"
    src.write_text(CHAIN.replace("model m {", f"model m {{\n    {dims}")
                   .replace("f32[37, 300]", "f32[N, 300]"))
    result = build(src, tmp_path / "m.so", report=True)
    assert "e over s" in result.dumps["report"]
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(6)
    for n in (1, 37, 64):
        x = rand(rng, (n, 300))
        np.testing.assert_allclose(model(x=x)["y"], _reference(src, x=x), rtol=1e-5 * 300,
                                   atol=1e-7)


def test_grid_emulation_runs_the_in_place_kernel(tmp_path):
    src = tmp_path / "m.mlg"
    src.write_text(CHAIN)
    result = build(src, tmp_path / "m.so", target="grid-emulation", report=True)
    assert "e over s" in result.dumps["report"]
    x = rand(np.random.default_rng(8), (37, 300))
    got = aotml.load(result.so_path)(x=x)["y"]
    np.testing.assert_allclose(got, _reference(src, x=x), rtol=1e-5 * 300, atol=1e-7)


# the rule itself, on hand-built kernels: y[i, j] = f(x[...]) with x a dying temporary
X = Buffer("x", "f32", (8, 8))
Y = Buffer("y", "f32", (8, 8))
i, j = Var("i"), Var("j")


def _kernel(value, out=Y, reads=(X,)):
    body = (For(i, 8, (For(j, 8, (Store(out, (i, j), value),)),)),)
    return Kernel("k1", (*reads, out), (out.name,), body)


def _reuse(k: Kernel, temps=("x", "y"), later=()):
    producer = Kernel("k0", (X,), ("x",), (Store(X, (Const(0, "i64"), Const(0, "i64")),
                                                 Const(1.0, "f32")),))
    kernels = [producer, k, *later]
    launches = [Launch(c.name, c.args) for c in kernels]
    return reuse_in_place(kernels, launches, set(temps), {})


def test_the_rule_takes_an_input_read_at_the_stored_element():
    kernels, launches, aliases = _reuse(_kernel(Binary("mul", Load(X, (i, j)), Load(X, (i, j)))))
    assert aliases == {"y": "x"}
    assert kernels[1].args == (Y,) and launches[1].args == (Y,)
    assert kernels[1].body[0].body[0].body[0].value == Binary("mul", Load(Y, (i, j)),
                                                              Load(Y, (i, j)))


@pytest.mark.parametrize("why", ["transposed", "other dtype", "other shape", "read later",
                                 "model output"])
def test_the_rule_refuses(why):
    if why == "transposed":  # iteration (i, j) would read x[j, i], already overwritten
        k, args = _kernel(Load(X, (j, i))), {}
    elif why == "other dtype":  # i32 in, f32 out: same bytes, but not the same values
        xi = Buffer("x", "i32", (8, 8))
        k, args = _kernel(Cast("f32", Load(xi, (i, j))), reads=(xi,)), {}
    elif why == "other shape":
        wide = Buffer("x", "f32", (8, 9))
        k, args = _kernel(Load(wide, (i, j)), reads=(wide,)), {}
    elif why == "read later":
        k = _kernel(Load(X, (i, j)))
        args = {"later": [Kernel("k2", (X,), (), ())]}
    else:
        k, args = _kernel(Load(X, (i, j))), {"temps": ("x",)}
    _, _, aliases = _reuse(k, **args)
    assert aliases == {}
