"""The ops of aotml/ops/nn.py (contractions, reductions, softmax, normalizations) against their
references, and their edge semantics and diagnostics; see opcheck.py for how samples are judged.

Narrow-float samples of accumulating ops draw from a coarse grid (multiples of 1/4), where every
partial result is exact in f32 and in float64 alike: the one rounding, at the store, is then the
same in the compiled code and the reference, and the bit-exact comparison is fair."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import EPS32, Sample, check, params, within

import aotml
from aotml.errors import CompileError
from aotml.graph.ir import DTYPES


def _grid(*specs, low=-8, high=8, step=0.25):
    """inputs() drawing k·step, k an integer in [low, high], for each (shape, dtype)."""
    def inputs(rng):
        return [(rng.integers(low, high + 1, size=shape) * step).astype(DTYPES[dt])
                for shape, dt in specs]
    return inputs


# ---------------------------------------------------------------------------------------------
# Contractions


def _matmul(a, b, dtype="f32", grid=False):
    return Sample((a, b), dtypes=(dtype, dtype), terms=a[-1],
                  inputs=_grid((a, dtype), (b, dtype)) if grid else None,
                  magnitude=lambda xs: np.abs(xs[0]) @ np.abs(xs[1]))


def _linear(x, out, bias=True, dtype="f32", grid=False):
    shapes = (x, (out, x[-1])) + (((out,),) if bias else ())
    dtypes = (dtype,) * len(shapes)

    def magnitude(xs):
        m = np.abs(xs[0]) @ np.abs(xs[1]).T
        return m + np.abs(xs[2]) if bias else m

    return Sample(shapes, dtypes=dtypes, terms=x[-1] + bias, magnitude=magnitude,
                  inputs=_grid(*zip(shapes, dtypes)) if grid else None)


# ---------------------------------------------------------------------------------------------
# Reductions


def _axes(shape, axis):
    return tuple(range(len(shape))) if axis == () else axis


def _count(shape, axis):
    return int(np.prod([shape[a] for a in np.atleast_1d(_axes(shape, axis))]))


def _reduce(op, shape, axis=(), keepdims=False, dtype="f32", inputs=None):
    attrs = ({"axis": axis} if axis != () else {}) | ({"keepdims": True} if keepdims else {})
    ax = _axes(shape, axis)
    # the same computation on absolute values bounds the rounding of the accumulation
    magnitude = {"sum": lambda xs: np.sum(np.abs(xs[0]), axis=ax, keepdims=keepdims),
                 "mean": lambda xs: np.mean(np.abs(xs[0]), axis=ax, keepdims=keepdims),
                 "prod": lambda xs: np.prod(np.abs(xs[0]), axis=ax, keepdims=keepdims)}.get(op)
    if op == "prod" and inputs is None and dtype == "f32":
        inputs = lambda rng: [rng.uniform(0.5, 1.5, shape).astype(np.float32)]  # noqa: E731
    return Sample((shape,), attrs, (dtype,), inputs=inputs, magnitude=magnitude,
                  terms=_count(shape, axis) if magnitude else 1)


# (shape, axis, keepdims): one axis, negative, a tuple, a negative tuple, all axes (the default),
# rank 0; each op takes the cases of its own selection
REDUCE_CASES = [((7,), 0), ((3, 7), 0), ((3, 7), -1, True), ((2, 33, 5), (0, 2)),
                ((2, 33, 5), (-1, 0), True), ((2, 33, 5),), ((1, 257), -1), ((),),
                # a contiguous last axis of 16+: 8 partial sums (tail 5), under an outer loop
                # and in vector partial results: rows of 96 (whole vectors at 16, 8 and 4
                # lanes) and 40 (a vector left over and a tail of 8 at 16 lanes)
                ((3, 4, 45), (1, 2)), ((2, 96), -1), ((3, 2, 40), (1, 2))]


def _arg(shape, attrs, dtype="f32", inputs=None):
    return Sample((shape,), attrs, (dtype,), inputs=inputs)


def _ties(shape):
    return lambda rng: [rng.integers(-1, 2, size=shape).astype(np.float32)]


ARG_SAMPLES = [_arg((7,), {"keepdims": True}), _arg((3, 7), {"axis": 0}),
               _arg((2, 33, 5), {"axis": 1}), _arg((1, 257), {}),
               _arg((3, 33), {}, inputs=_ties((3, 33))), _arg((5, 33), {"axis": 0}, "i32"),
               _arg((4, 9), {"axis": -1, "keepdims": True}, "bool"), _arg((3, 7), {}, "f16"),
               _arg((3, 7), {"axis": 0}, "bf16"), _arg((2, 3, 7), {"axis": -2}, "i64")]


# ---------------------------------------------------------------------------------------------
# Softmax and the normalizations


def _softmax(shape, attrs, log=False):
    n = shape[attrs.get("axis", -1)]
    # softmax's result is a product of positive factors: relative error only. log_softmax is
    # (x - m) - log(s): the log of an n-term sum adds an absolute n·eps.
    magnitude = (lambda xs: 1.0) if log else (lambda xs: 0.0)
    return Sample((shape,), attrs, terms=n, magnitude=magnitude)


# rows in vector form with and without a tail at 4, 8 and 16 lanes (257, 20, 64, 48, 37), and
# in scalar form (shorter rows, or along another axis)
SOFTMAX_CASES = [((1,), {}), ((3, 7), {}), ((3, 7), {"axis": 0}), ((2, 33, 5), {"axis": -2}),
                 ((1, 257), {"axis": -1}), ((4, 20), {"axis": -1}), ((5, 64), {}),
                 ((2, 3, 48), {}), ((3, 37), {})]


def _trailing(x, axis):
    return tuple(range(axis % len(x), len(x)))


def _layer_norm(x, axis=-1, eps=None):
    p = x[axis % len(x):]
    axes = _trailing(x, axis)
    e = 1e-5 if eps is None else eps

    def magnitude(xs):
        # what the rounding in the mean, the variance and the final affine step can reach:
        # the normalized value and the mean's scale, both in units of the deviation; the bias
        d = xs[0] - xs[0].mean(axis=axes, keepdims=True)
        inv = 1 / np.sqrt((d * d).mean(axis=axes, keepdims=True) + e)
        scale = np.abs(d) * inv + np.abs(xs[0]).mean(axis=axes, keepdims=True) * inv
        return scale * np.abs(xs[1]) + np.abs(xs[2])

    attrs = ({"axis": axis} if axis != -1 else {}) | ({"eps": eps} if eps is not None else {})
    return Sample((x, p, p), attrs, terms=_count(x, axes), magnitude=magnitude)


def _rms_norm(x, axis=-1, eps=None):
    p = x[axis % len(x):]
    attrs = ({"axis": axis} if axis != -1 else {}) | ({"eps": eps} if eps is not None else {})
    # x · rsqrt(mean square) · scale: a product, so the error is relative
    return Sample((x, p), attrs, terms=_count(x, _trailing(x, axis)), magnitude=lambda xs: 0.0)


def _batch_norm(x, eps=None):
    c = (x[1],)

    def inputs(rng):
        x_, s, b, m = (rng.uniform(-2, 2, shape).astype(np.float32) for shape in (x, c, c, c))
        return [x_, s, b, m, rng.uniform(0.1, 2.0, c).astype(np.float32)]  # var > 0

    def magnitude(xs):
        x_, s, b, m, v = xs
        shape = (-1,) + (1,) * (len(x) - 2)
        inv = 1 / np.sqrt(v.reshape(shape) + (1e-5 if eps is None else eps))
        return np.abs((x_ - m.reshape(shape)) * inv * s.reshape(shape)) + np.abs(b.reshape(shape))

    # no accumulation, but four roundings (sub, rsqrt, two muls) before the bias is added,
    # which can cancel: the bound is a few eps of the terms' magnitude
    return Sample((x, c, c, c, c), {"eps": eps} if eps is not None else {}, inputs=inputs,
                  terms=4, magnitude=magnitude)


SAMPLES: dict[str, list[Sample]] = {
    "matmul": [_matmul((1, 1), (1, 1)), _matmul((3, 7), (7, 33)), _matmul((33, 257), (257, 3)),
               _matmul((3, 1, 4, 5), (2, 5, 3)), _matmul((4, 5), (3, 5, 2)),
               _matmul((2, 1, 3, 4), (1, 5, 4, 2)), _matmul((3, 7), (7, 5), "i32"),
               _matmul((2, 3, 7), (7, 5), "i64"), _matmul((3, 7), (7, 33), "f16", grid=True),
               _matmul((2, 3, 7), (1, 7, 5), "bf16", grid=True),
               # the register-tiled schedule (4x16 tiles): row and column tails, exact tiles,
               # broadcast batches
               _matmul((9, 20), (20, 37)), _matmul((8, 11), (11, 32)),
               _matmul((2, 6, 5), (5, 35)), _matmul((3, 1, 5, 3), (2, 3, 17)),
               # 128+ rows take row blocks; b packed into panels (32+ rows, 512 KiB+ of b),
               # with column and row tails, alone and in row blocks
               _matmul((70, 45), (45, 50)), _matmul((131, 19), (19, 97)),
               _matmul((2, 33, 8), (2, 8, 40)), _matmul((35, 520), (520, 270)),
               _matmul((131, 520), (520, 270)),
               # one-row tiles four panels wide: alone, then whole panels and a tail; the
               # last rows of a packed b reading the panels four at a time
               _matmul((1, 30), (30, 200)), _matmul((3, 17), (17, 100)),
               _matmul((35, 9), (9, 130))],
    "linear": [_linear((3, 7), 5), _linear((1, 33), 3, bias=False), _linear((7,), 4),
               _linear((2, 3, 7), 5), _linear((3, 7), 5, bias=False, dtype="i64"),
               _linear((3, 7), 5, dtype="f16", grid=True),
               _linear((2, 7), 3, dtype="bf16", grid=True)],
    "sum": [_reduce("sum", *c) for c in REDUCE_CASES]
    + [_reduce("sum", (2, 33, 5), (0, 1), dtype="i32"),
       _reduce("sum", (3, 33), 1, dtype="f16", inputs=_grid(((3, 33), "f16"))),
       _reduce("sum", (2, 7, 3), (0, 2), dtype="bf16", inputs=_grid(((2, 7, 3), "bf16")))],
    "max": [_reduce("max", *REDUCE_CASES[k]) for k in (0, 2, 3, 5, 6)]
    + [_reduce("max", (5, 33), 0, dtype="i32"), _reduce("max", (3, 7), -1, dtype="bool"),
       _reduce("max", (2, 3, 7), (0, 2), dtype="f16")],
    "min": [_reduce("min", *REDUCE_CASES[k]) for k in (1, 4, 5, 6)]
    + [_reduce("min", (2, 3, 7), 1, dtype="i64"),
       _reduce("min", (4, 9), (), True, dtype="bool"), _reduce("min", (3, 7), 0, dtype="bf16")],
    "mean": [_reduce("mean", *REDUCE_CASES[k]) for k in (0, 2, 3, 5, 7, 8, 10)]
    + [_reduce("mean", (3, 8), 1, dtype="f16", inputs=_grid(((3, 8), "f16"))),
       _reduce("mean", (4, 2, 3), (0, 1), dtype="bf16", inputs=_grid(((4, 2, 3), "bf16")))],
    "prod": [_reduce("prod", *REDUCE_CASES[k]) for k in (0, 1, 4, 6)]
    + [_reduce("prod", (3, 33), 1, dtype="i32"),
       # factors k/4 in [0.5, 1.5]: 7 of them keep an odd part below 5**7, exact in f32
       _reduce("prod", (3, 7), 1, dtype="f16", inputs=_grid(((3, 7), "f16"), low=2, high=6)),
       _reduce("prod", (7, 2), 0, dtype="bf16", inputs=_grid(((7, 2), "bf16"), low=2, high=6))],
    "argmax": ARG_SAMPLES,
    "argmin": ARG_SAMPLES[::2],
    "softmax": [_softmax(*c) for c in SOFTMAX_CASES],
    "log_softmax": [_softmax(*c, log=True) for c in SOFTMAX_CASES],
    "layer_norm": [_layer_norm((3, 7)), _layer_norm((2, 33, 5), axis=1),
                   _layer_norm((4, 3, 7), axis=-2, eps=1e-3), _layer_norm((7, 1)),
                   _layer_norm((1, 257)), _layer_norm((4, 20)), _layer_norm((3, 64)),
                   _layer_norm((2, 5, 48))],
    "rms_norm": [_rms_norm((3, 7)), _rms_norm((2, 33, 5), axis=1),
                 _rms_norm((4, 3, 7), axis=-2, eps=1e-2), _rms_norm((1, 257)),
                 _rms_norm((4, 20)), _rms_norm((3, 64))],
    "batch_norm": [_batch_norm((2, 3)), _batch_norm((1, 7, 5)), _batch_norm((2, 3, 4, 5)),
                   _batch_norm((3, 1, 33), eps=1e-3)],
}


@pytest.mark.parametrize("op,sample", params(SAMPLES))
def test_op_compiled_matches_reference(tmp_path, op, sample):
    check(tmp_path, op, sample)


# ---------------------------------------------------------------------------------------------
# Edge semantics


def test_argmax_and_argmin_take_the_first_nan_then_the_first_extreme(build_model):
    """numpy: the first NaN is the answer for both; otherwise the first of tied extremes."""
    m = build_model("model m {\n input x: f32[5, 4]\n output a = argmax(x)\n"
                    " output b = argmin(x, axis=1, keepdims=true)\n}\n")
    nan, inf = np.nan, np.inf
    x = np.array([[1.0, nan, 3.0, nan], [2.0, 5.0, 5.0, -1.0], [-inf, -inf, -inf, -inf],
                  [nan, 0.0, 0.0, 7.0], [0.0, -1.0, 4.0, -1.0]], np.float32)
    out = m(x=x)
    np.testing.assert_array_equal(out["a"], [1, 1, 0, 0, 2])
    np.testing.assert_array_equal(out["b"], [[1], [3], [0], [0], [1]])
    assert out["a"].dtype == np.int64
    np.testing.assert_array_equal(out["a"], np.argmax(x, axis=-1))


@pytest.mark.parametrize("n", [5, 37, 64])
def test_softmax_rows_with_inf_and_nan_are_numpys(build_model, n):
    """Row by row as numpy computes exp(x - max) / sum: a NaN fills its row with NaN, +inf
    gives NaN (inf - inf), a row of -inf is NaN, -inf elsewhere gives 0 (scalar rows of 5,
    vector rows of 37 with a tail and of 64 without)."""
    m = build_model(f"model m {{\n  input x: f32[5, {n}]\n  output y = softmax(x)\n"
                    "  output z = log_softmax(x)\n}\n")
    rng = np.random.default_rng(n)
    x = rng.uniform(-3, 3, (5, n)).astype(np.float32)
    x[0, n - 1] = np.nan
    x[1, 2] = np.inf
    x[2, :] = -np.inf
    x[3, 1] = -np.inf
    out = m(x=x)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        s = e.sum(axis=1, keepdims=True)
        want_y, want_z = e / s, x - x.max(axis=1, keepdims=True) - np.log(s)
    np.testing.assert_allclose(out["y"], want_y, rtol=1e-5 * n, atol=1e-7)
    np.testing.assert_allclose(out["z"], want_z, rtol=1e-5 * n, atol=1e-6)
    assert np.isnan(out["y"][:3]).all() and np.isfinite(out["y"][3:]).all()
    assert out["y"][3, 1] == 0


def test_max_and_min_propagate_nan_over_several_axes(build_model):
    m = build_model("model m {\n input x: f32[2, 3, 2]\n output a = max(x, axis=(0, 2))\n"
                    " output b = min(x)\n output c = sum(x, axis=(2, 0), keepdims=true)\n}\n")
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    x[1, 2, 1] = np.nan
    out = m(x=x)
    np.testing.assert_array_equal(out["a"], [7.0, 9.0, np.nan])
    assert np.isnan(out["b"]) and out["b"].shape == ()
    assert out["c"].shape == (1, 3, 1) and np.isnan(out["c"][0, 2, 0])
    np.testing.assert_array_equal(out["c"][0, :2, 0], [0 + 1 + 6 + 7, 2 + 3 + 8 + 9])


def test_integer_reductions_wrap_like_numpy(build_model):
    m = build_model("model m {\n input x: i32[3, 4]\n output s = sum(x, axis=1)\n"
                    " output p = prod(x, axis=0)\n output lo = min(x)\n}\n")
    x = np.array([[2**31 - 1, 1, 0, 0], [65536, 65536, 3, 1], [-2**31, -1, 5, 7]], np.int32)
    out = m(x=x)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out["s"], np.sum(x, axis=1).astype(np.int32))
        np.testing.assert_array_equal(out["p"], np.prod(x, axis=0).astype(np.int32))
    assert out["lo"] == -2**31


def test_softmax_and_log_softmax_are_stable_for_large_inputs(build_model):
    """Both subtract the row max, so inputs near float32's range neither overflow nor give
    log(0): log_softmax of a far smaller element is its finite distance below the max."""
    m = build_model("model m {\n input x: f32[2, 3]\n output y = softmax(x)\n"
                    " output z = log_softmax(x)\n}\n")
    x = np.array([[1000.0, 999.0, -1000.0], [-80.0, 88.0, 87.5]], np.float32)
    out = m(x=x)
    ref = aotml.interpret(m.source_path, precise=True, x=x)
    within(out["y"], ref["y"], 1e-5, 1e-30)
    within(out["z"], ref["z"], 1e-5, 3 * EPS32)
    assert np.all(np.isfinite(out["y"])) and np.all(np.isfinite(out["z"]))
    assert out["z"][0, 2] == pytest.approx(-2000.0 - np.log1p(np.exp(-1.0)), rel=1e-6)


def test_layer_norm_of_a_constant_row_is_the_bias(build_model):
    """A zero variance divides 0 by sqrt(eps): exactly the bias, not NaN."""
    m = build_model("model m {\n input x: f32[2, 3]\n input s: f32[3]\n input b: f32[3]\n"
                    " output y = layer_norm(x, s, b)\n output z = rms_norm(x, s, eps=1)\n}\n")
    x = np.array([[5.0, 5.0, 5.0], [0.0, 0.0, 0.0]], np.float32)
    s, b = np.array([2.0, 3.0, 4.0], np.float32), np.array([0.5, -1.0, 0.25], np.float32)
    out = m(x=x, s=s, b=b)
    np.testing.assert_array_equal(out["y"], np.stack([b, b]))
    np.testing.assert_allclose(out["z"], [5 / np.sqrt(26) * s, [0, 0, 0]], rtol=1e-6)


NARROW_CASES = [  # op, its parameters' shape for an x of [2, 7, 5], attributes
    ("softmax", None, ", axis=0"), ("log_softmax", None, ""), ("layer_norm", (7, 5), ", axis=-2"),
    ("rms_norm", (5,), ""), ("batch_norm", (7,), ", eps=0.5")]


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_narrow_normalizations_compute_in_f32_and_round_once(build_model, dtype):
    """On f16/bf16 a normalization is its f32 computation on the widened inputs, rounded once
    at the end: at most one unit in the last place from the f32 result rounded."""
    lines = [f" input x: {dtype}[2, 7, 5]"]
    for op, pshape, attrs in NARROW_CASES:
        count = {"softmax": 0, "log_softmax": 0, "layer_norm": 2, "rms_norm": 1}.get(op, 4)
        names = ["x"] + [f"{op}{k}" for k in range(count)]
        lines += [f" input {n}: {dtype}[{', '.join(map(str, pshape))}]" for n in names[1:]]
        wide = ", ".join(f'cast({n}, dtype="f32")' for n in names)
        lines += [f" output {op} = {op}({', '.join(names)}{attrs})",
                  f' output {op}_f32 = cast({op}({wide}{attrs}), dtype="{dtype}")']
    m = build_model("model m {\n" + "\n".join(lines) + "\n}\n")
    rng = np.random.default_rng(5)
    # var (the 4th batch_norm parameter) must be positive; everything else in [-2, 2)
    arrays = {name: rng.uniform(0.1 if name == "batch_norm3" else -2.0, 2.0, shape)
              .astype(DTYPES[dtype]) for name, shape in ((t.name, t.shape) for t in m.inputs)}
    out = m(**arrays)
    ulp = {"f16": 2.0 ** -10, "bf16": 2.0 ** -7}[dtype]
    tiny = {"f16": 2.0 ** -24, "bf16": 2.0 ** -133}[dtype]
    for op, _, _ in NARROW_CASES:
        got, want = out[op].astype(np.float32), out[f"{op}_f32"].astype(np.float32)
        bound = ulp * np.maximum(np.abs(got), np.abs(want)) + tiny
        assert np.all(np.abs(got - want) <= bound), op


# ---------------------------------------------------------------------------------------------
# Diagnostics

ERRORS = [
    # (inputs, expression with ` before the culprit the caret must point at, part of the message)
    ("x: f32[2, 3]; v: f32[3]", "x @ `v", "'@' takes operands of rank 2 or more"),
    ("x: f32[2, 3, 4]; w: f32[5, 4, 2]", "x `@ w",
     "'@' batch dimensions do not broadcast: f32[2, 3, 4] @ f32[5, 4, 2] ([2] vs [5])"),
    ("x: f32[2, 3, 4]; w: f32[5, 2]", "`matmul(x, w)",
     "'@' inner dimensions differ: f32[2, 3, 4] @ f32[5, 2] (4 != 5)"),
    ("x: i32[2, 3]; w: f32[3, 2]", "x @ `w", "'matmul' operands have different dtypes"),
    ("x: f32[2, 3]; w: f32[4, 2]", "linear(x, `w)",
     "'linear' input features differ: x is f32[2, 3], so w must be [out, 3], got f32[4, 2]"),
    ("x: f32[2, 3]; w: f32[4, 3]", "linear(x, w, `w)",
     "'linear' bias must be [4] for a weight f32[4, 3], got f32[4, 3]"),
    ("x: f32[2, 3]; w: f32[3]", "linear(x, `w)", "'linear' takes a weight of shape [out, in]"),
    ("x: f32[2, 3]", "`linear(x)", "'linear' takes 2 to 3 tensor arguments, got 1"),
    ("x: f32[2, 3]", "sum(x, axis=`(1, -1))",
     "axis=(1, -1) names dimension 1 twice (tensor of rank 2)"),
    ("x: f32[2, 3]", "max(x, axis=`(0, 2))",
     "axis 2 is out of range for a tensor of rank 2 (valid: -2..1)"),
    ("x: f32[2, 3]", "argmax(x, axis=`(0, 1))", "attribute 'axis' must be an integer"),
    ("x: f32[2, 3]", "argmax(x, `axes=0)", "'argmax' has no attribute 'axes'"),
    ("x: f32[]", "argmin(`x)", "'argmin' works along an axis: it takes a tensor of rank 1"),
    ("x: f32[]; s: f32[]", "rms_norm(`x, s)", "'rms_norm' works along an axis"),
    ("x: i32[2, 3]", "mean(`x)", "'mean' takes floating-point (f32, f16, bf16) tensors"),
    ("x: bool[2, 3]", "prod(`x)", "'prod' takes numeric"),
    ("x: i32[2, 3]", "softmax(`x)", "'softmax' takes floating-point"),
    ("x: f32[2, 3]", "log_softmax(x, axis=`-3)", "axis -3 is out of range"),
    ("x: f32[2, 3, 4]; s: f32[4]", "layer_norm(x, `s, s, axis=1)",
     "'layer_norm' over axes 1..2 of f32[2, 3, 4] needs parameters of shape [3, 4], got f32[4]"),
    ("x: f32[2, 3]; s: f16[3]", "rms_norm(x, `s)", "'rms_norm' operands have different dtypes"),
    ("x: f32[2, 3, 4]; c: f32[3]; d: f32[4]", "batch_norm(x, c, c, `d, c)",
     "'batch_norm' mean must be [3] (the channels, axis 1 of f32[2, 3, 4]), got f32[4]"),
    ("x: f32[3]", "batch_norm(`x, x, x, x, x)",
     "'batch_norm' takes an input [N, C, ...] of rank 2 or more, got f32[3]"),
]


@pytest.mark.parametrize("inputs,expr,message", ERRORS, ids=[e[1] for e in ERRORS])
def test_errors_point_at_the_culprit(tmp_path, inputs, expr, message):
    decls = [d.strip() for d in inputs.split(";")]
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n" + "".join(f"    input {d}\n" for d in decls)
                   + f"    y = {expr.replace('`', '')}\n    output y\n}}\n")
    with pytest.raises(CompileError) as err:
        aotml.build(src, tmp_path / "m.so")
    assert message in err.value.message
    where = (len(decls) + 2, len("    y = ") + expr.index("`") + 1)
    assert (err.value.span.line, err.value.span.col) == where, err.value.format()
