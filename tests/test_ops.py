"""Every op in the registry, compiled to a real .so and compared with its numpy reference.

Samples are listed per op; a test checks that every registered op has samples, so adding an op
without tests fails here. References run in float64 (`precise=True`, cast to float32 at the
end); the bound on the compiled float32 result is rtol 1e-5 plus, for ops that accumulate n
terms, n·eps32 times the magnitude of the terms (the reference applied to absolute values).
"""

from __future__ import annotations

import numpy as np
import pytest

import aotml
from aotml.ops import REGISTRY
from conftest import rand

EPS32 = float(np.finfo(np.float32).eps)


def _unary_samples():
    return [((s,), {}) for s in [(1,), (3, 7), (33,), (2, 3, 5), (257,)]]


# Broadcasting variants: equal shapes, a scalar-like (1,), row, column, both sides, rank change.
BINARY_SHAPES = [((1,), (1,)), ((3, 7), (3, 7)), ((33,), (1,)), ((3, 7), (7,)),
                 ((3, 1), (3, 7)), ((3, 1), (1, 7)), ((5, 1, 7), (3, 1)), ((257,), (257,))]

SAMPLES: dict[str, list] = {
    **{op: [(s, {}) for s in BINARY_SHAPES] for op in ("add", "sub", "mul", "div")},
    **{op: _unary_samples() for op in ("neg", "exp", "tanh", "relu", "sigmoid", "copy")},
    "matmul": [(((1, 1), (1, 1)), {}), (((3, 7), (7, 33)), {}), (((33, 257), (257, 3)), {}),
               (((1, 784), (784, 10)), {}), (((7, 1), (1, 5)), {})],
    **{op: [(((7,),), {"axis": 0}), (((3, 7),), {"axis": 1}), (((3, 7),), {"axis": 0}),
            (((3, 7),), {"axis": -1, "keepdims": True}),
            (((2, 33, 5),), {"axis": 1}), (((2, 33, 5),), {"axis": 1, "keepdims": True}),
            (((1, 257),), {"axis": -1})] for op in ("sum", "max")},
    "cast": [(((3, 7),), {"dtype": "f16"}), (((33,),), {"dtype": "bf16"}),
             (((1,),), {"dtype": "i32"})],
    "softmax": [(((1,),), {}), (((3, 7),), {}), (((3, 7),), {"axis": 0}),
                (((2, 33, 5),), {"axis": 1}), (((1, 257),), {"axis": -1})],
}


def test_every_registered_op_has_samples():
    assert set(SAMPLES) == set(REGISTRY)


def _source(op: str, shapes, attrs) -> str:
    names = [f"x{i}" for i in range(len(shapes))]
    decls = "\n".join(f"    input {n}: f32[{', '.join(map(str, s))}]"
                      for n, s in zip(names, shapes))
    kw = "".join(f", {k}={_attr(v)}" for k, v in attrs.items())
    return f"model m {{\n{decls}\n    output y = {op}({', '.join(names)}{kw})\n}}\n"


def _attr(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f'"{v}"' if isinstance(v, str) else str(v)


def _inputs(op: str, shapes, rng) -> dict[str, np.ndarray]:
    arrays = {f"x{i}": rand(rng, s) for i, s in enumerate(shapes)}
    if op == "div":  # keep the divisor away from zero: |b| in [0.5, 2]
        b = rng.uniform(0.5, 2.0, size=shapes[1]) * rng.choice([-1, 1], size=shapes[1])
        arrays["x1"] = b.astype(np.float32)
    return arrays


def _accumulated(op: str, shapes, attrs) -> int:
    """How many terms one output element sums (1 for plain elementwise ops)."""
    if op == "matmul":
        return shapes[0][1]
    if op in ("sum", "softmax"):
        return shapes[0][attrs.get("axis", -1)]
    return 1


def _magnitude(op: str, arrays: dict, attrs) -> np.ndarray | float:
    if op == "matmul":
        return np.abs(arrays["x0"]).astype(np.float64) @ np.abs(arrays["x1"])
    if op == "sum":
        return np.sum(np.abs(arrays["x0"]).astype(np.float64), axis=attrs["axis"],
                      keepdims=attrs.get("keepdims", False))
    return 0.0


def _case_id(op, shapes, attrs) -> str:
    dims = "x".join("_".join(map(str, s)) for s in shapes)
    return f"{op}-{dims}" + "".join(f"-{k}{v}" for k, v in attrs.items())


CASES = [pytest.param(op, shapes, attrs, id=_case_id(op, shapes, attrs))
         for op, samples in SAMPLES.items() for shapes, attrs in samples]


@pytest.mark.parametrize("op,shapes,attrs", CASES)
def test_op_compiled_matches_reference(tmp_path, op, shapes, attrs):
    src = tmp_path / "m.mlg"
    src.write_text(_source(op, shapes, attrs))
    model = aotml.load(aotml.build(src, tmp_path / "m.so"))
    rng = np.random.default_rng(abs(hash((op, str(shapes), str(attrs)))) % 2**32)
    for _ in range(2):  # two fresh draws through the same library
        arrays = _inputs(op, shapes, rng)
        got = model(**arrays)["y"]
        exact = aotml.interpret(src, precise=True, **arrays)["y"]
        assert got.shape == exact.shape and got.dtype == exact.dtype
        if got.dtype != np.float32:  # a cast: one rounding of the same value, bit for bit
            np.testing.assert_array_equal(got.view(np.uint8), exact.view(np.uint8))
            continue
        n = _accumulated(op, shapes, attrs)
        rtol = 1e-5 + (n * EPS32 if op == "softmax" else 0.0)
        assert_within(got, exact, rtol, 2 * n * EPS32 * _magnitude(op, arrays, attrs))


def assert_within(got, exact, rtol, atol) -> None:
    """|got - exact| <= rtol·|exact| + atol elementwise (atol may be an array)."""
    err = np.abs(got.astype(np.float64) - exact)
    bound = rtol * np.abs(exact.astype(np.float64)) + atol
    bad = ~(err <= bound) & ~(np.isnan(got) & np.isnan(exact)) & ~(got == exact)
    assert not bad.any(), (f"{int(bad.sum())} of {bad.size} elements off; worst error "
                           f"{float(np.max(np.where(bad, err, 0))):.3g}")


def test_nan_propagates_through_relu_and_max(build_model):
    """relu and max follow numpy: a NaN input gives NaN, not 0 or the other operand."""
    m = build_model("model m {\n input x: f32[4]\n output r = relu(x)\n"
                    " output s = max(x, axis=0)\n}\n")
    x = np.array([1.5, np.nan, -2.0, 3.0], np.float32)
    out = m(x=x)
    assert np.isnan(out["r"][1]) and out["r"][2] == 0 and out["r"][3] == 3.0
    assert np.isnan(out["s"])


def test_softmax_is_stable_for_large_inputs(build_model):
    """softmax subtracts the row max, so inputs near float32's range do not overflow."""
    m = build_model("model m {\n input x: f32[2, 3]\n output y = softmax(x)\n}\n")
    x = np.array([[1000.0, 999.0, -1000.0], [-80.0, 88.0, 87.5]], np.float32)
    ref = aotml.interpret(m.source_path, precise=True, x=x)["y"]
    np.testing.assert_allclose(m(x=x)["y"], ref, rtol=1e-5, atol=1e-30)
    assert np.all(np.isfinite(m(x=x)["y"]))


def test_sigmoid_and_exp_saturate_like_ieee(build_model):
    """exp overflows to inf and sigmoid saturates to exactly 0 and 1 at the extremes."""
    m = build_model("model m {\n input x: f32[4]\n output e = exp(x)\n"
                    " output s = sigmoid(x)\n}\n")
    x = np.array([100.0, -200.0, 0.0, 20.0], np.float32)
    out = m(x=x)
    assert np.isinf(out["e"][0]) and out["e"][1] == 0.0
    np.testing.assert_array_equal(out["s"][:2], np.array([1.0, 0.0], np.float32))
    assert out["s"][2] == 0.5


def test_scalar_literals_fold_into_loops(build_model):
    """Literals (`x * 2 - 0.5`, `-1.5 / x`) compile to constants and match the reference."""
    m = build_model("model m {\n input x: f32[3, 7]\n"
                    " output y = x * 2 - 0.5 + -1.5 / x\n}\n")
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 2.0, (3, 7)).astype(np.float32)
    ref = aotml.interpret(m.source_path, precise=True, x=x)["y"]
    np.testing.assert_allclose(m(x=x)["y"], ref, rtol=1e-5)
