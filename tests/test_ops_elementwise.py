"""Samples for the ops of aotml/ops/elementwise.py (see opcheck.py), and their edge semantics:
NaN, infinities, signed zeros, integer wrap-around, narrow floats, and located errors."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from opcheck import EPS32, Sample, check, check_error, params, within

import aotml

NP = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16, "i32": np.int32,
      "i64": np.int64, "bool": np.bool_}

UNARY_SHAPES = [(1,), (3, 7), (33,), (2, 3, 5), (257,)]
NARROW_AND_INTS = ("f16", "bf16", "i32", "i64")


def uniform(low: float, high: float, *shapes):
    """Inputs for a restricted domain: f32 values in [low, high)."""
    return lambda rng: [rng.uniform(low, high, s).astype(np.float32) for s in shapes]


def positive_base(base, exponent):
    """pow's inputs: a base in [0.1, 2) and an exponent in [-3, 3)."""
    return lambda rng: [rng.uniform(0.1, 2.0, base).astype(np.float32),
                        rng.uniform(-3.0, 3.0, exponent).astype(np.float32)]


def with_nans(*shapes):
    """f32 values in [-2, 2) with about one element in five NaN (at different places in each
    operand, so that both NaN-first and NaN-second occur)."""
    def inputs(rng):
        out = []
        for s in shapes:
            x = rng.uniform(-2, 2, s).astype(np.float32)
            x[rng.random(s) < 0.2] = np.nan
            out.append(x)
        return out
    return inputs


# Few distinct values, so that ties (including -0.0 against 0.0) and NaN are frequent.
TIES = np.array([-1.0, -0.5, -0.0, 0.0, 0.5, 1.0, np.nan])


def ties(shapes, dtypes):
    def inputs(rng):
        out = []
        for s, dt in zip(shapes, dtypes):
            if dt == "bool":
                out.append(rng.random(s) < 0.5)
            elif dt in ("i32", "i64"):
                out.append(rng.integers(-3, 3, s).astype(NP[dt]))
            else:
                out.append(rng.choice(TIES, s).astype(NP[dt]))
        return out
    return inputs


def erf_magnitude(xs):
    """0.5·|x|·(1 + |erf(x/√2)|): gelu computed on absolute values. Where 1 + erf cancels
    (x toward -4) the compiled result is off by a few eps of this, not of the (tiny) result."""
    x = xs[0]
    return 0.5 * np.abs(x) * (1 + np.abs(np.vectorize(math.erf)(x / math.sqrt(2))))


def tanh_magnitude(xs):
    """The same for the tanh form: 0.5·|x|·(1 + |tanh(u)|)."""
    x = xs[0]
    return 0.5 * np.abs(x) * (1 + np.abs(np.tanh(math.sqrt(2 / math.pi)
                                                 * (x + 0.044715 * x ** 3))))


def gelu(shape, approximate):
    attrs = {"approximate": approximate} if approximate else {}
    magnitude = tanh_magnitude if approximate == "tanh" else erf_magnitude
    # terms=2: the `1 + erf` (or `1 + tanh`) sum; see erf_magnitude
    return Sample((shape,), attrs, inputs=uniform(-4, 4, shape), terms=2, magnitude=magnitude)


def compare_samples(op):
    # each comparison gets one of the rarer dtypes, so that together they cover all of them
    rare = {"eq": "f16", "ne": "bf16", "lt": "i64", "le": "f16", "gt": "bf16", "ge": "i64"}[op]
    f32_shapes = ((257,), (257,)) if op in ("eq", "lt", "gt") else ((5, 1, 7), (3, 1))
    cases = [(f32_shapes, "f32"), (((33,), (1,)), "i32"), (((3, 1), (1, 7)), "bool"),
             (((2, 5), (5,)), rare)]
    return [Sample(shapes, dtypes=(dt, dt), inputs=ties(shapes, (dt, dt)))
            for shapes, dt in cases]


def extremum_samples():
    # NaN only in f32: the narrow results are compared bit for bit, and which NaN payload
    # comes out is not part of the semantics.
    # broadcasting: a scalar-like (1,), both sides, a rank change
    shapes = [((1,), (1,)), ((33,), (1,)), ((3, 1), (1, 7)), ((5, 1, 7), (3, 1)),
              ((257,), (257,))]
    return ([Sample(s, inputs=with_nans(*s)) for s in shapes]
            + [Sample(((3, 7), (7,)), dtypes=(dt, dt)) for dt in NARROW_AND_INTS])


def where_samples():
    shapes = [((3, 1), (1, 7), (7,)), ((1,), (33,), (1,)),
              ((5, 1, 7), (3, 1), (1,)), ((257,), (257,), (257,))]
    return ([Sample(s, dtypes=("bool", "f32", "f32")) for s in shapes]
            + [Sample(((3, 7), (3, 7), (7,)), dtypes=("bool", dt, dt))
               for dt in (*NARROW_AND_INTS, "bool")])


def clip_samples():
    s = (3, 7)
    return [
        Sample((s,), {"min": -0.5}, inputs=with_nans(s)),
        Sample((s,), {"max": 0.75}, inputs=with_nans(s)),
        Sample(((2, 3, 5),), {"min": -1, "max": 1.5}, inputs=with_nans((2, 3, 5))),
        Sample((s,), {"min": 1.0, "max": -1.0}),  # min > max: every element becomes max
        Sample(((1,),), {"min": 0.0, "max": 0.0}),
        Sample(((257,),), {"min": -1.25, "max": 1.25}),
        Sample(((33,),), {"min": -3, "max": 5}, dtypes=("i32",)),
        Sample(((33,),), {"max": -2}, dtypes=("i64",)),
        Sample((s,), {"min": -0.5, "max": 1.0}, dtypes=("f16",)),
        Sample((s,), {"min": -0.5}, dtypes=("bf16",)),
    ]


# pow: positive bases (a negative one needs an integer exponent: a test below); equal shapes,
# a row, a column, both sides, a rank change.
POW_SHAPES = [((1,), (1,)), ((3, 7), (3, 7)), ((3, 7), (7,)), ((3, 1), (3, 7)),
              ((3, 1), (1, 7)), ((5, 1, 7), (3, 1))]
POSITIVE = (0.01, 4.0)  # the domain drawn for log, sqrt, rsqrt

SAMPLES: dict[str, list[Sample]] = {
    "pow": [Sample(s, inputs=positive_base(*s)) for s in POW_SHAPES],
    "maximum": extremum_samples(),
    "minimum": extremum_samples(),
    "abs": [Sample((s,)) for s in UNARY_SHAPES[:4]]
    + [Sample(((3, 7),), dtypes=(dt,)) for dt in NARROW_AND_INTS],
    **{op: [Sample((s,), inputs=uniform(*POSITIVE, s)) for s in UNARY_SHAPES[1:]]
       for op in ("log", "rsqrt")},
    # sqrt is correctly rounded in f32, and rounding that again to f16/bf16 is the same as
    # rounding the exact root once (24 >= 2·11 + 2 bits), so the narrow results are exact too.
    "sqrt": [Sample((s,), inputs=uniform(*POSITIVE, s)) for s in UNARY_SHAPES[:4]]
    + [Sample(((3, 7),), dtypes=(dt,), inputs=lambda rng, dt=dt: [
        rng.uniform(*POSITIVE, (3, 7)).astype(NP[dt])]) for dt in ("f16", "bf16")],
    "erf": [Sample((s,), inputs=uniform(-4, 4, s)) for s in UNARY_SHAPES[1:]],
    "leaky_relu": [Sample((s,)) for s in UNARY_SHAPES[:3]]
    + [Sample(((2, 3, 5),), {"alpha": 0.2}), Sample(((257,),), {"alpha": -1.5}),
       # alpha = 0.25 keeps x·alpha exact, so the narrow results can be compared bit for bit
       Sample(((3, 7),), {"alpha": 0.25}, dtypes=("f16",)),
       Sample(((3, 7),), {"alpha": 0.25}, dtypes=("bf16",))],
    "gelu": [gelu((1,), None), gelu((3, 7), None), gelu((257,), "none"),
             gelu((1,), "tanh"), gelu((2, 33), "tanh"), gelu((257,), "tanh")],
    # [-80, 80] reaches where e^-x is huge while every result stays a normal f32
    "silu": [Sample((s,)) for s in UNARY_SHAPES[:4]]
    + [Sample(((257,),), inputs=uniform(-80, 80, (257,)))],
    "clip": clip_samples(),
    "where": where_samples(),
    **{op: compare_samples(op) for op in ("eq", "ne", "lt", "le", "gt", "ge")},
}


@pytest.mark.parametrize("op,sample", params(SAMPLES))
def test_op_compiled_matches_reference(tmp_path, op, sample):
    check(tmp_path, op, sample)


def run(build_model, decls: str, outputs: str, **inputs) -> dict:
    """Build a model from declarations and output lines, run it on `inputs`."""
    return build_model(f"model m {{\n{decls}\n{outputs}\n}}\n")(**inputs)


def f32(*values) -> np.ndarray:
    return np.array(values, np.float32)


NAN, INF = math.nan, math.inf


def test_comparisons_follow_numpy_on_nan_and_signed_zero(build_model):
    """NaN is unequal to everything, itself included, and every ordered comparison with it is
    false; -0.0 == 0.0. For bool, false < true."""
    ops = ("eq", "ne", "lt", "le", "gt", "ge")
    out = run(build_model, " input a: f32[6]\n input b: f32[6]\n input p: bool[4]\n"
              " input q: bool[4]",
              "\n".join(f" output {op} = {op}(a, b)\n output {op}_bool = {op}(p, q)"
                        for op in ops),
              a=f32(NAN, 1, NAN, -0.0, 1, 2), b=f32(NAN, NAN, 1, 0.0, 1, 1),
              p=np.array([False, False, True, True]), q=np.array([False, True, False, True]))
    expected = {"eq": [0, 0, 0, 1, 1, 0], "ne": [1, 1, 1, 0, 0, 1], "lt": [0, 0, 0, 0, 0, 0],
                "le": [0, 0, 0, 1, 1, 0], "gt": [0, 0, 0, 0, 0, 1], "ge": [0, 0, 0, 1, 1, 1]}
    expected_bool = {"eq": [1, 0, 0, 1], "ne": [0, 1, 1, 0], "lt": [0, 1, 0, 0],
                     "le": [1, 1, 0, 1], "gt": [0, 0, 1, 0], "ge": [1, 0, 1, 1]}
    for op in ops:
        assert out[op].dtype == np.bool_
        np.testing.assert_array_equal(out[op], np.array(expected[op], bool), err_msg=op)
        np.testing.assert_array_equal(out[op + "_bool"], np.array(expected_bool[op], bool),
                                      err_msg=op)


def test_maximum_and_minimum_propagate_nan_from_either_side(build_model):
    out = run(build_model, " input a: f32[5]\n input b: f32[5]\n input i: i64[2]\n"
              " input j: i64[2]",
              " output mx = maximum(a, b)\n output mn = minimum(a, b)\n"
              " output imx = maximum(i, j)\n output imn = minimum(i, j)",
              a=f32(NAN, 1, NAN, -INF, 2), b=f32(1, NAN, NAN, 3, INF),
              i=np.array([-2**63, 5], np.int64), j=np.array([2**63 - 1, -7], np.int64))
    np.testing.assert_array_equal(out["mx"], f32(NAN, NAN, NAN, 3, INF))
    np.testing.assert_array_equal(out["mn"], f32(NAN, NAN, NAN, -INF, 2))
    np.testing.assert_array_equal(out["imx"], np.array([2**63 - 1, 5], np.int64))
    np.testing.assert_array_equal(out["imn"], np.array([-2**63, -7], np.int64))


def test_clip_keeps_nan_and_follows_numpy_when_min_exceeds_max(build_model):
    x = f32(NAN, -5, 0.5, 5, -INF, INF)
    k = np.array([-2**31, -5, 4, 2**31 - 1], np.int32)
    out = run(build_model, " input x: f32[6]\n input k: i32[4]",
              " output both = clip(x, min=-1, max=1)\n output inverted = clip(x, min=1, max=-1)"
              "\n output upper = clip(x, max=0)\n output none = clip(x)\n"
              " output ints = clip(k, min=-3, max=5)\n output infinite = clip(k, min=-1e999)",
              x=x, k=k)
    np.testing.assert_array_equal(out["both"], f32(NAN, -1, 0.5, 1, -1, 1))
    np.testing.assert_array_equal(out["inverted"], f32(NAN, -1, -1, -1, -1, -1))
    np.testing.assert_array_equal(out["inverted"], np.clip(x, 1, -1))
    np.testing.assert_array_equal(out["upper"], f32(NAN, -5, 0, 0, -INF, 0))
    np.testing.assert_array_equal(out["none"], x)  # no bound: x as it is
    np.testing.assert_array_equal(out["ints"], np.array([-3, -3, 4, 5], np.int32))
    np.testing.assert_array_equal(out["infinite"], k)  # an infinite bound bounds nothing


def test_pow_of_a_negative_base_and_special_values(build_model):
    """C's powf and numpy agree: a negative base with an integer exponent is real, with any
    other exponent NaN; x**0 is 1 even for NaN, 1**y is 1 even for NaN; 0**-1 is inf."""
    a = f32(-2, -2, -1.5, -0.5, -3, -2, -8, 0, 0, NAN, 1, 2)
    b = f32(2, 3, -1, 4, 0, 0.5, 1 / 3, -1, 0, 0, NAN, 10)
    got = run(build_model, " input a: f32[12]\n input b: f32[12]", " output y = pow(a, b)",
              a=a, b=b)["y"]
    expected = f32(4, -8, -2 / 3, 0.0625, 1, NAN, NAN, INF, 1, 1, 1, 1024)
    np.testing.assert_allclose(got, expected, rtol=2 * EPS32)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(got, np.power(a, b), rtol=2 * EPS32)


def test_abs_of_signed_zero_infinity_and_the_integer_minimum(build_model):
    out = run(build_model, " input x: f32[4]\n input k: i32[3]\n input n: i64[2]",
              " output y = abs(x)\n output ki = abs(k)\n output ni = abs(n)",
              x=f32(-0.0, NAN, -INF, -3.5), k=np.array([-2**31, -7, 0], np.int32),
              n=np.array([-2**63, -2**62], np.int64))
    np.testing.assert_array_equal(out["y"], f32(0, NAN, INF, 3.5))
    assert not np.signbit(out["y"][0])
    # the minimum has no positive counterpart: it wraps to itself, as in numpy
    np.testing.assert_array_equal(out["ki"], np.array([-2**31, 7, 0], np.int32))
    np.testing.assert_array_equal(out["ni"], np.array([-2**63, 2**62], np.int64))


def test_math_functions_at_the_edges_of_their_domains(build_model):
    x = f32(0, -0.0, -1, INF, 4, NAN)
    out = run(build_model, " input x: f32[6]",
              " output log = log(x)\n output sqrt = sqrt(x)\n output rsqrt = rsqrt(x)\n"
              " output erf = erf(x)\n output nerf = erf(-x)", x=x)
    np.testing.assert_array_equal(out["log"], f32(-INF, -INF, NAN, INF, math.log(4), NAN))
    np.testing.assert_array_equal(out["sqrt"], f32(0, -0.0, NAN, INF, 2, NAN))
    assert np.signbit(out["sqrt"][1])  # IEEE: sqrt(-0) = -0
    np.testing.assert_array_equal(out["rsqrt"], f32(INF, -INF, NAN, 0, 0.5, NAN))
    np.testing.assert_allclose(out["erf"], f32(0, 0, -math.erf(1), 1, math.erf(4), NAN),
                               rtol=2 * EPS32)
    np.testing.assert_array_equal(out["nerf"], -out["erf"])  # erf is odd, exactly


def test_activations_at_known_points(build_model):
    """The formulas themselves (the samples compare with a reference written from them):
    values computed independently, in float64."""
    x = f32(1, -2, 0.5, 3)
    out = run(build_model, " input x: f32[4]",
              " output g = gelu(x)\n output gn = gelu(x, approximate=\"none\")\n"
              " output gt = gelu(x, approximate=\"tanh\")\n output s = silu(x)\n"
              " output l = leaky_relu(x)\n output l3 = leaky_relu(x, alpha=0.3)", x=x)
    phi = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (1, -2, 0.5, 3)]  # the normal CDF
    gelu_exact = f32(*(v * p for v, p in zip((1, -2, 0.5, 3), phi)))
    np.testing.assert_allclose(out["g"], gelu_exact, rtol=4 * EPS32)
    np.testing.assert_array_equal(out["gn"], out["g"])  # "none" is the default
    # the tanh formula evaluated with the math module
    np.testing.assert_allclose(out["gt"], f32(0.84119199, -0.045402306, 0.34571401, 2.9963626),
                               rtol=4 * EPS32)
    np.testing.assert_allclose(out["s"], f32(*(v / (1 + math.exp(-v)) for v in (1, -2, 0.5, 3))),
                               rtol=4 * EPS32)
    np.testing.assert_allclose(out["l"], f32(1, -0.02, 0.5, 3), rtol=EPS32)
    np.testing.assert_allclose(out["l3"], f32(1, -0.6, 0.5, 3), rtol=EPS32)


def test_activations_at_extremes(build_model):
    """inf, NaN and far tails: saturation as the reference; silu below -88, where the plain
    x / (1 + exp(-x)) overflows to -0, keeps its (subnormal) value."""
    x = f32(-INF, INF, NAN, -95, -10, 30, 0)
    src = (" output g = gelu(x)\n output gt = gelu(x, approximate=\"tanh\")\n"
           " output s = silu(x)\n output l = leaky_relu(x)")
    m = build_model(f"model m {{\n input x: f32[7]\n{src}\n}}\n")
    got, ref = m(x=x), aotml.interpret(m.source_path, precise=True, x=x)
    tail = 4 * EPS32 * np.abs(x.astype(np.float64))  # 1 + erf/tanh cancels (see gelu())
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf
        for name in ("g", "gt"):
            within(got[name], ref[name], 1e-5, np.nan_to_num(tail, posinf=0.0))
    # alpha is rounded to f32 before the product: within an ulp or two of -0.95, -0.1
    np.testing.assert_allclose(got["l"], f32(-INF, INF, NAN, -0.95, -0.1, 30, 0),
                               rtol=2 * EPS32)
    np.testing.assert_array_equal(got["s"][:3], f32(NAN, INF, NAN))  # -inf·0 as in numpy
    # e^-95 is subnormal, rounded to a multiple of 2^-149: times 95, up to ~50·2^-149 off
    within(got["s"][3:], ref["s"][3:], 1e-5, 100 * 2.0 ** -149)
    assert got["s"][3] < 0


def test_literals_take_the_dtype_of_the_tensor_operand(build_model):
    """A number next to a tensor takes its dtype, and where's bool condition does not count:
    `where(c, k, 0)` with k: i32 selects an i32 zero."""
    x = f32(-2, 0.25, 3)
    k = np.array([-5, 2, 9], np.int32)
    out = run(build_model, " input x: f32[3]\n input k: i32[3]",
              " output w = where(gt(x, 0), x, 0.5)\n output wk = where(lt(k, 3), k, 0)\n"
              " output p = pow(x, 2)\n output m = maximum(k, 1)\n output e = eq(k, 2)\n"
              " output folded = x + pow(2, 3)", x=x, k=k)
    np.testing.assert_array_equal(out["w"], f32(0.5, 0.25, 3))
    np.testing.assert_array_equal(out["wk"], np.array([-5, 2, 0], np.int32))
    np.testing.assert_allclose(out["p"], f32(4, 0.0625, 9), rtol=EPS32)
    np.testing.assert_array_equal(out["m"], np.array([1, 2, 9], np.int32))
    np.testing.assert_array_equal(out["e"], [False, True, False])
    np.testing.assert_allclose(out["folded"], f32(6, 8.25, 11), rtol=EPS32)


MANTISSA = {"f16": 10, "bf16": 7}
MIN_EXPONENT = {"f16": -14, "bf16": -126}


def narrow_ulp(values: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of `dtype` numbers at `values` (constant through the subnormals)."""
    exponent = np.floor(np.log2(np.maximum(np.abs(values), 2.0 ** -200)))
    return 2.0 ** (np.maximum(exponent, MIN_EXPONENT[dtype]) - MANTISSA[dtype])


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_narrow_floats_are_one_rounding_from_exact(build_model, dtype):
    """f16/bf16 compute in f32 and round once when stored: the f32 result is a few f32 ulps
    from exact, so after rounding it is at most one ulp of the dtype from the exactly rounded
    reference (two roundings of nearly the same number can fall on either side of a tie).
    The samples compare narrow results bit for bit, so these ops are checked here."""
    ops = {"log": "log(p)", "rsqrt": "rsqrt(p)", "erf": "erf(x)", "gelu": "gelu(x)",
           "gelu_tanh": 'gelu(x, approximate="tanh")', "silu": "silu(x)", "pow": "pow(p, x)",
           "leaky": "leaky_relu(x)"}
    m = build_model(f"model m {{\n input x: {dtype}[257]\n input p: {dtype}[257]\n"
                    + "".join(f" output {k} = {v}\n" for k, v in ops.items()) + "}\n")
    rng = np.random.default_rng(7)
    x = rng.uniform(-4, 4, 257).astype(NP[dtype])
    p = rng.uniform(*POSITIVE, 257).astype(NP[dtype])
    got, ref = m(x=x, p=p), aotml.interpret(m.source_path, precise=True, x=x, p=p)
    for name in ops:
        g, r = got[name].astype(np.float64), ref[name].astype(np.float64)
        bound = narrow_ulp(np.maximum(np.abs(g), np.abs(r)), dtype)
        if name.startswith("gelu"):
            bound += 4 * EPS32 * np.abs(x.astype(np.float64))  # the tail (see gelu())
        assert got[name].dtype == NP[dtype]
        assert np.all(np.abs(g - r) <= bound), name


# "^" marks where the error must point; it is removed from the source
ERRORS = [
    ("where(^x, x, x)", "'where' takes a bool condition, got f32[3, 7]"),
    ("where(b, x, ^k)", "'where' operands have different dtypes: f32[3, 7] and i32[7]"),
    ("where(b, x, ^r)", "cannot broadcast bool[3, 7], f32[3, 7] and f32[4] for 'where'"),
    ("where(b, ^r, x)", "cannot broadcast bool[3, 7], f32[4] and f32[3, 7] for 'where'"),
    ("eq(x, ^k)", "'eq' operands have different dtypes: f32[3, 7] and i32[7]"),
    ("^lt(x, r)", "cannot broadcast f32[3, 7] and f32[4] for 'lt'"),
    ("ge(x, ^h)", "'ge' operands have different dtypes: f32[3, 7] and f16[7]"),
    ("log(^k)", "'log' takes floating-point (f32, f16, bf16) tensors, got i32[7]"),
    ("pow(^k, k)", "'pow' takes floating-point (f32, f16, bf16) tensors, got i32[7]"),
    ("pow(x, ^k)", "'pow' takes floating-point (f32, f16, bf16) tensors, got i32[7]"),
    ("^pow(x, r)", "cannot broadcast f32[3, 7] and f32[4] for 'pow'"),
    ("maximum(^b, b)", "'maximum' takes numeric (f32, f16, bf16, i32, i64) tensors, got bool"),
    ("minimum(x, ^h)", "'minimum' operands have different dtypes: f32[3, 7] and f16[7]"),
    ("abs(^b)", "'abs' takes numeric (f32, f16, bf16, i32, i64) tensors, got bool[3, 7]"),
    ("leaky_relu(^k)", "'leaky_relu' takes floating-point (f32, f16, bf16) tensors, got i32"),
    ("leaky_relu(x, alpha=^true)", "attribute 'alpha' must be a number, got true"),
    ("silu(^k)", "'silu' takes floating-point"),
    ('gelu(x, approximate=^"erf")',
     'attribute \'approximate\' must be one of "none", "tanh", got "erf"'),
    ("clip(^b, min=0)", "'clip' takes numeric"),
    ("clip(k, min=^0.5)", "'clip' of an i32 tensor needs integer bounds, got min=0.5"),
    ("clip(k, min=0, max=^3000000000)", "clip bound max=3e+09 does not fit in i32"),
    ("clip(k, max=^-1e999)", "clip bound max=-inf does not fit in i32"),
]


@pytest.mark.parametrize("call,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_the_types_and_point_at_the_culprit(tmp_path, call, message):
    check_error(tmp_path, "  input x: f32[3, 7]\n  input k: i32[7]\n  input b: bool[3, 7]\n"
                "  input h: f16[7]\n  input r: f32[4]\n", call, message)
