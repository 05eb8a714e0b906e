"""Samples for the ops of aotml/ops/conv.py (conv2d, pooling, attention); see opcheck.py. Plus
edge semantics checked against hand-computed values, narrow-float attention, and the errors.

f16/bf16 results are compared bit for bit with the reference, so the narrow conv and average
pooling samples draw values on a grid (multiples of 1/64 in [-2, 2)): their products and sums are
exact in f32, and the one rounding left is the final one, which both sides do alike.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from opcheck import Sample, check, params, same_on_abs, within

import aotml
from aotml.graph.ir import DTYPES
from aotml.ops import REGISTRY


def _grid(shapes, dtype):
    def inputs(rng):
        return [(rng.integers(-128, 128, size=s) / 64).astype(DTYPES[dtype]) for s in shapes]
    return inputs


def _conv(x, w, bias=False, dtype=None, **attrs):
    shapes = (x, w, (w[0],)) if bias else (x, w)
    dtypes = (dtype,) * len(shapes) if dtype else None
    return Sample(shapes, attrs, dtypes, _grid(shapes, dtype) if dtype else None,
                  terms=w[1] * w[2] * w[3] + bias, magnitude=same_on_abs("conv2d", attrs))


def _avg(x, dtype=None, **attrs):
    kernel = attrs["kernel"] if isinstance(attrs["kernel"], tuple) else (attrs["kernel"],) * 2
    return Sample((x,), attrs, dtype and (dtype,), _grid((x,), dtype) if dtype else None,
                  terms=kernel[0] * kernel[-1], magnitude=same_on_abs("avg_pool2d", attrs))


def _attention_magnitude(attrs):
    """Score errors (D terms each, scaled) turn into relative errors of the softmax weights;
    the weighted sum adds Sk terms: the bound scales Σ p·|v| by 1 + the largest |score| sum."""
    def magnitude(xs):
        q, k, v = xs
        scale = attrs.get("scale") or 1 / math.sqrt(q.shape[-1])
        scores = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
        reach = np.matmul(np.abs(q), np.swapaxes(np.abs(k), -1, -2)) * abs(scale)
        if attrs.get("causal"):
            keep = np.tril(np.ones(scores.shape[-2:], bool))
            scores, reach = np.where(keep, scores, -np.inf), np.where(keep, reach, 0)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.matmul(p, np.abs(v)) * (1 + reach.max(-1, keepdims=True))
    return magnitude


def _attention(q, k, v, **attrs):
    return Sample((q, k, v), attrs, terms=q[-1] + k[-2] + 4,
                  magnitude=_attention_magnitude(attrs))


SAMPLES: dict[str, list[Sample]] = {
    "conv2d": [
        _conv((1, 1, 1, 1), (1, 1, 1, 1)),
        _conv((2, 3, 7, 9), (4, 3, 3, 3)),
        _conv((2, 3, 7, 9), (4, 3, 3, 3), bias=True, padding=1),
        _conv((1, 3, 9, 7), (5, 3, 3, 3), bias=True, stride=2, padding=1),
        _conv((1, 2, 9, 9), (3, 2, 3, 3), dilation=2, padding=2),
        _conv((1, 3, 7, 9), (2, 3, 3, 3), bias=True, stride=(2, 1), padding=(1, 0, 2, 1)),
        _conv((2, 2, 7, 3), (3, 2, 3, 3), padding=(1, 0)),
        _conv((2, 4, 7, 7), (6, 2, 3, 3), bias=True, padding=1, groups=2),
        _conv((1, 3, 9, 9), (3, 1, 3, 3), bias=True, stride=2, padding=1, groups=3),
        _conv((2, 3, 7, 7), (6, 1, 3, 3), padding=(0, 1, 2, 0), dilation=2, groups=3),
        _conv((2, 7, 3, 3), (33, 7, 1, 1), bias=True),
        _conv((1, 5, 3, 3), (2, 5, 3, 3)),
        _conv((1, 2, 3, 7), (2, 2, 1, 3), stride=(1, 2), dilation=(2, 1), padding=(0, 2)),
        _conv((1, 1, 3, 3), (2, 1, 1, 1), bias=True, padding=3),
        _conv((1, 16, 17, 17), (8, 16, 3, 3), bias=True, padding=1),
        _conv((2, 4, 7, 9), (4, 2, 3, 3), bias=True, dtype="f16", padding=1, groups=2),
        _conv((1, 3, 9, 7), (2, 3, 3, 3), bias=True, dtype="bf16", stride=2),
    ],
    "max_pool2d": [
        Sample(((1, 1, 1, 1),), {"kernel": 1}),
        Sample(((2, 3, 9, 9),), {"kernel": 3}),
        Sample(((1, 2, 7, 7),), {"kernel": 2}),
        Sample(((2, 3, 9, 7),), {"kernel": 3, "stride": 2, "padding": 1}),
        Sample(((1, 2, 9, 7),), {"kernel": (3, 1), "stride": (1, 2), "padding": (1, 0)}),
        Sample(((1, 2, 9, 9),), {"kernel": 3, "stride": 1, "padding": (1, 0, 2, 1),
                                 "dilation": 2}),
        Sample(((1, 3, 7, 9),), {"kernel": 2, "stride": 1, "dilation": (1, 3)}),
        Sample(((1, 3, 7, 9),), {"kernel": 3, "stride": 2, "padding": 1}, ("f16",)),
        Sample(((2, 2, 9, 9),), {"kernel": 2}, ("bf16",)),
    ],
    "avg_pool2d": [
        _avg((1, 1, 1, 1), kernel=1),
        _avg((2, 3, 9, 9), kernel=3),
        _avg((1, 2, 7, 7), kernel=2, stride=2),
        _avg((2, 3, 7, 9), kernel=3, stride=1, padding=1),
        _avg((2, 3, 7, 9), kernel=3, stride=1, padding=1, count_include_pad=True),
        _avg((1, 2, 9, 7), kernel=(1, 3), stride=(2, 1), padding=(0, 1, 0, 2)),
        _avg((1, 2, 9, 7), kernel=3, stride=2, padding=(1, 0, 2, 1), count_include_pad=True),
        _avg((1, 3, 7, 9), "f16", kernel=3, stride=2, padding=1),
        _avg((2, 2, 9, 7), "bf16", kernel=(3, 2), padding=(1, 0)),
    ],
    "global_avg_pool": [
        Sample(((1, 1, 1, 1),)),
        Sample(((2, 3, 7, 9),), terms=63, magnitude=same_on_abs("global_avg_pool", {})),
        Sample(((1, 33, 3, 5),), terms=15, magnitude=same_on_abs("global_avg_pool", {})),
        # rows of 16+: partial sums in 8 lanes, a tail of 5 per row
        Sample(((2, 3, 5, 21),), terms=105, magnitude=same_on_abs("global_avg_pool", {})),
        # vector partial results: rows of 40 (2 vectors and a tail of 8 at 16 lanes) and 64
        Sample(((1, 2, 3, 40),), terms=120, magnitude=same_on_abs("global_avg_pool", {})),
        Sample(((1, 3, 2, 64),), terms=128, magnitude=same_on_abs("global_avg_pool", {})),
        Sample(((1, 3, 9, 9),), dtypes=("f16",), inputs=_grid(((1, 3, 9, 9),), "f16")),
        Sample(((2, 3, 3, 5),), dtypes=("bf16",), inputs=_grid(((2, 3, 3, 5),), "bf16")),
    ],
    "attention": [
        _attention((1, 1), (1, 1), (1, 1)),
        _attention((7, 5), (9, 5), (9, 3)),
        _attention((3, 1), (7, 1), (7, 4)),
        _attention((7, 4), (7, 4), (7, 7), causal=True),
        _attention((9, 3), (5, 3), (5, 2), causal=True),
        _attention((3, 3), (9, 3), (9, 2), causal=True),
        _attention((2, 3, 7, 4), (2, 3, 9, 4), (2, 3, 9, 5)),
        _attention((2, 3, 5, 4), (3, 7, 4), (1, 7, 2), causal=True),
        _attention((7, 8), (33, 8), (33, 3), scale=0.5),
        _attention((3, 8), (64, 8), (64, 5)),
        _attention((2, 5, 16), (2, 65, 16), (2, 65, 8), scale=-0.3, causal=True),
    ],
}


@pytest.mark.parametrize("op,sample", params(SAMPLES))
def test_conv_ops_compiled_match_reference(tmp_path, op, sample):
    check(tmp_path, op, sample)


# ---------------------------------------------------------------------------------------------
# Semantics, against values worked out by hand


def test_conv2d_zero_padding_and_bias(build_model):
    """A 3x3 all-ones kernel over ones with padding 1 counts the in-bounds taps: 4 at the
    corners, 6 on the edges, 9 inside; the bias adds once per output."""
    m = build_model("model m {\n input x: f32[1, 1, 3, 4]\n input w: f32[2, 1, 3, 3]\n"
                    " input b: f32[2]\n output y = conv2d(x, w, b, padding=1)\n}\n")
    w = np.stack([np.ones((1, 3, 3)), -np.ones((1, 3, 3))]).astype(np.float32)
    y = m(x=np.ones((1, 1, 3, 4), np.float32), w=w, b=np.array([0.5, 0], np.float32))["y"]
    counts = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [4, 6, 6, 4]], np.float32)
    np.testing.assert_array_equal(y[0, 0], counts + 0.5)
    np.testing.assert_array_equal(y[0, 1], -counts)


def test_conv2d_groups_see_only_their_channels(build_model):
    """Depthwise: output channel m reads input channel m alone."""
    m = build_model("model m {\n input x: f32[1, 3, 2, 2]\n input w: f32[3, 1, 1, 1]\n"
                    " output y = conv2d(x, w, groups=3)\n}\n")
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    w = np.array([1, 10, 100], np.float32).reshape(3, 1, 1, 1)
    np.testing.assert_array_equal(m(x=x, w=w)["y"], x * w.reshape(1, 3, 1, 1))


def test_conv2d_onnx_padding_order(build_model):
    """Four padding values are (top, left, bottom, right): here one row on top and two columns
    on the left."""
    m = build_model("model m {\n input x: f32[1, 1, 2, 2]\n input w: f32[1, 1, 1, 1]\n"
                    " output y = conv2d(x, w, padding=(1, 2, 0, 0))\n}\n")
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    y = m(x=x, w=np.ones((1, 1, 1, 1), np.float32))["y"]
    np.testing.assert_array_equal(y[0, 0], [[0, 0, 0, 0], [0, 0, 1, 2], [0, 0, 3, 4]])


def test_max_pool2d_padding_never_wins(build_model):
    """With every input negative, a padded window still returns an input value, not 0."""
    m = build_model("model m {\n input x: f32[1, 1, 3, 3]\n"
                    " output y = max_pool2d(x, kernel=3, stride=1, padding=1)\n}\n")
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    expected = [[-1, -1, -2], [-1, -1, -2], [-4, -4, -5]]
    np.testing.assert_array_equal(m(x=x)["y"][0, 0], expected)


def test_max_pool2d_nan_propagates(build_model):
    m = build_model("model m {\n input x: f32[1, 1, 2, 4]\n"
                    " output y = max_pool2d(x, kernel=2)\n}\n")
    x = np.array([[[[1, np.nan, 3, 4], [5, 6, 7, 8]]]], np.float32)
    y = m(x=x)["y"]
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 8


@pytest.mark.parametrize("include,corner,edge", [(False, 1.0, 1.0), (True, 4 / 9, 6 / 9)])
def test_avg_pool2d_count_include_pad(build_model, include, corner, edge):
    """Over ones: excluding padding every mean is 1; including it, corners are 4/9."""
    m = build_model("model m {\n input x: f32[1, 1, 3, 3]\n output y = avg_pool2d(x, kernel=3, "
                    f"stride=1, padding=1, count_include_pad={str(include).lower()})\n}}\n")
    y = m(x=np.ones((1, 1, 3, 3), np.float32))["y"][0, 0]
    expected = np.array([[corner, edge, corner], [edge, 1, edge], [corner, edge, corner]])
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_pools_stride_defaults_to_kernel(build_model):
    m = build_model("model m {\n input x: f32[1, 1, 4, 6]\n output a = max_pool2d(x, kernel=2)\n"
                    " output b = avg_pool2d(x, kernel=(2, 3))\n}\n")
    x = np.arange(24, dtype=np.float32).reshape(1, 1, 4, 6)
    out = m(x=x)
    np.testing.assert_array_equal(out["a"][0, 0], [[7, 9, 11], [19, 21, 23]])
    np.testing.assert_array_equal(out["b"][0, 0], [[4, 7], [16, 19]])


def test_global_avg_pool_means_each_plane(build_model):
    m = build_model("model m {\n input x: f32[2, 3, 5, 7]\n output y = global_avg_pool(x)\n}\n")
    x = np.arange(210, dtype=np.float32).reshape(2, 3, 5, 7)
    y = m(x=x)["y"]
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)


_ATTN = ("model m {{\n input q: f32[{sq}, 2]\n input k: f32[{sk}, 2]\n input v: f32[{sk}, 1]\n"
         " output y = attention(q, k, v{extra})\n}}\n")


@pytest.mark.parametrize("sq,sk", [(4, 4), (6, 3), (2, 5)])
def test_attention_causal_is_top_left_aligned(build_model, sq, sk):
    """With q = 0 every visible key weighs the same: query i averages v[0..i] (all of v once
    i >= Sk), as PyTorch's is_causal."""
    m = build_model(_ATTN.format(sq=sq, sk=sk, extra=", causal=true"))
    v = np.arange(1, sk + 1, dtype=np.float32).reshape(sk, 1)
    y = m(q=np.zeros((sq, 2), np.float32), k=np.ones((sk, 2), np.float32), v=v)["y"][:, 0]
    expected = [np.mean(v[:min(i, sk - 1) + 1]) for i in range(sq)]
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_attention_default_scale_is_inverse_sqrt_of_head_size(build_model):
    m = build_model(_ATTN.format(sq=3, sk=5, extra=""))
    explicit = build_model(_ATTN.format(sq=3, sk=5, extra=f", scale={1 / math.sqrt(2)!r}"))
    unit = build_model(_ATTN.format(sq=3, sk=5, extra=", scale=1"))
    rng = np.random.default_rng(0)
    args = {"q": rng.normal(size=(3, 2)).astype(np.float32),
            "k": rng.normal(size=(5, 2)).astype(np.float32),
            "v": rng.normal(size=(5, 1)).astype(np.float32)}
    np.testing.assert_allclose(m(**args)["y"], explicit(**args)["y"], rtol=1e-6)
    assert not np.allclose(m(**args)["y"], unit(**args)["y"])


def test_attention_is_stable_for_large_scores(build_model):
    """Scores near 1e4 overflow exp unless the row max is subtracted first."""
    m = build_model(_ATTN.format(sq=2, sk=3, extra=", scale=1"))
    k = np.array([[100, 0], [99, 0], [-100, 0]], np.float32)
    v = np.array([[1], [2], [3]], np.float32)
    y = m(q=np.array([[100, 0], [-100, 0]], np.float32), k=k, v=v)["y"][:, 0]
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [1.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [("f16", 2.0**-10), ("bf16", 2.0**-7)])
def test_attention_narrow_floats(build_model, dtype, rtol):
    """f16/bf16 compute in f32 and round once at the end: within one unit in the last place of
    the float64 result (exp makes a bit-exact comparison impossible)."""
    m = build_model(f"model m {{\n input q: {dtype}[2, 7, 4]\n input k: {dtype}[2, 9, 4]\n"
                    f" input v: {dtype}[2, 9, 3]\n"
                    " output y = attention(q, k, v, causal=true)\n}\n")
    rng = np.random.default_rng(1)
    args = {n: rng.uniform(-2, 2, size=s).astype(DTYPES[dtype])
            for n, s in (("q", (2, 7, 4)), ("k", (2, 9, 4)), ("v", (2, 9, 3)))}
    got = m(**args)["y"]
    assert got.dtype == DTYPES[dtype]
    attrs = REGISTRY["attention"].bind_attrs({"causal": True})
    exact = REGISTRY["attention"].reference([a.astype(np.float64) for a in args.values()], attrs)
    within(got, exact, rtol, 1e-6)


# ---------------------------------------------------------------------------------------------
# Errors: message and position


def _error(tmp_path, inputs: str, expr: str) -> tuple[aotml.CompileError, str]:
    line = f" output y = {expr}"
    src = tmp_path / "e.mlg"
    src.write_text(f"model m {{\n{inputs}\n{line}\n}}\n")
    with pytest.raises(aotml.CompileError) as e:
        aotml.build(src, tmp_path / "e.so")
    return e.value, line


_X = " input x: f32[1, 4, 7, 7]\n input w: f32[6, 2, 3, 3]\n input b: f32[6]"


@pytest.mark.parametrize("inputs,expr,at,words", [
    (_X, "conv2d(x, w)", "w)", ["channel mismatch", "f32[1, 4, 7, 7]", "f32[6, 2, 3, 3]"]),
    (_X, "conv2d(x, w, groups=3)", "3)", ["4 channels", "not divisible by groups=3"]),
    (" input x: f32[1, 4, 7, 7]\n input w: f32[6, 1, 3, 3]", "conv2d(x, w, groups=4)", "4)",
     ["6 output channels", "f32[6, 1, 3, 3]", "groups=4"]),
    (_X, "conv2d(x, w, b, groups=2, dilation=4)", "w, b", ["spans 9 along H", "padded by (0, 0)",
                                                          "f32[1, 4, 7, 7]"]),
    (_X, "conv2d(x, w, groups=2, stride=(1, 0))", "(1, 0)", ["stride must be positive",
                                                            "f32[1, 4, 7, 7]"]),
    (_X, "conv2d(x, w, groups=2, dilation=-1)", "-1", ["dilation must be positive"]),
    (_X, "conv2d(x, w, groups=2, padding=(1, 1, 1))", "(1, 1, 1)", ["1, 2 or 4 integers"]),
    (_X, "conv2d(x, w, groups=2, padding=-1)", "-1", ["must not be negative"]),
    (_X + "\n input c: f32[4]", "conv2d(x, w, c, groups=2)", "c,", ["bias must be [6]",
                                                                    "f32[4]"]),
    (_X + "\n input z: f32[4, 7, 7]", "conv2d(z, w)", "z,", ["[N, C, H, W]", "f32[4, 7, 7]"]),
    (_X + "\n input i: i32[1, 4, 7, 7]", "conv2d(i, w)", "i,", ["floating-point"]),
    (" input x: f32[1, 2, 3, 3]", "max_pool2d(x, kernel=4)", "4)", ["spans 4 along H",
                                                                    "f32[1, 2, 3, 3]"]),
    (" input x: f32[1, 2, 3, 3]", "avg_pool2d(x, kernel=2, padding=2)", "2)",
     ["covers padding only", "f32[1, 2, 3, 3]"]),
    (" input x: f32[1, 2, 3, 3]", "max_pool2d(x, kernel=(2, 2, 2))", "(2, 2, 2)",
     ["one integer or a pair"]),
    (" input x: f32[1, 2, 3, 3]", "avg_pool2d(x, kernel=2, stride=0)", "0)",
     ["stride must be positive"]),
    (" input x: f32[2, 3, 3]", "global_avg_pool(x)", "x)", ["[N, C, H, W]", "f32[2, 3, 3]"]),
    (" input q: f32[3, 4]\n input k: f32[5, 3]\n input v: f32[5, 2]", "attention(q, k, v)",
     "k,", ["head sizes differ", "f32[3, 4]", "f32[5, 3]"]),
    (" input q: f32[3, 4]\n input k: f32[5, 4]\n input v: f32[6, 2]", "attention(q, k, v)",
     "v)", ["key counts differ", "f32[6, 2]"]),
    (" input q: f32[2, 3, 4]\n input k: f32[3, 5, 4]\n input v: f32[5, 2]",
     "attention(q, k, v)", "k,", ["leading dims", "f32[2, 3, 4]", "f32[3, 5, 4]"]),
    (" input q: f32[4]\n input k: f32[5, 4]\n input v: f32[5, 2]", "attention(q, k, v)",
     "q,", ["at least 2-D", "f32[4]"]),
])
def test_errors_name_shapes_and_point_at_the_culprit(tmp_path, inputs, expr, at, words):
    err, line = _error(tmp_path, inputs, expr)
    for w in words:
        assert w in err.message, err.message
    assert err.span is not None
    assert (err.span.line, err.span.col) == (inputs.count("\n") + 3, line.index(at) + 1)


def test_pool_kernel_is_required(tmp_path):
    err, _ = _error(tmp_path, " input x: f32[1, 2, 3, 3]", "max_pool2d(x, stride=1)")
    assert "needs the attribute 'kernel'" in err.message
