"""User functions: inlined at each call, type-checked per call, errors located in the body with
the chain of calls as notes."""

from __future__ import annotations

import numpy as np
import pytest

import aotml

MLP = """def dense(x, w, b) {
    h = x @ w + b
    return relu(h)
}

def twice(x, w, b) {
    return dense(dense(x, w, b), w, b)
}

model m {
    input x: f32[3, 5]
    input w: f32[5, 5]
    input b: f32[5]
    output y = twice(x, w, b) * 2
    output z = dense(x, w, b)
}
"""


def test_functions_inline_and_compile(build_model):
    m = build_model(MLP)
    rng = np.random.default_rng(8)
    x, w, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in [(3, 5), (5, 5), (5,)])

    def dense(v):
        return np.maximum(v @ w + b, 0)

    out = m(x=x, w=w, b=b)
    np.testing.assert_allclose(out["y"], dense(dense(x)) * 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["z"], dense(x), rtol=1e-5, atol=1e-6)


def test_one_function_called_with_different_shapes(build_model):
    m = build_model("def sq(v) {\n    return v * v\n}\nmodel m {\n    input a: f32[2]\n"
                    "    input b: f32[3, 4]\n    output y = sq(a)\n    output z = sq(b)\n}\n")
    a, b = np.array([1, -2], np.float32), np.arange(12, dtype=np.float32).reshape(3, 4)
    out = m(a=a, b=b)
    np.testing.assert_array_equal(out["y"], a * a)
    np.testing.assert_array_equal(out["z"], b * b)


def _error(tmp_path, text: str) -> aotml.CompileError:
    src = tmp_path / "f.mlg"
    src.write_text(text)
    with pytest.raises(aotml.CompileError) as e:
        aotml.build(src, tmp_path / "f.so")
    return e.value


def test_type_error_in_body_names_the_calls(tmp_path):
    e = _error(tmp_path, MLP.replace("x @ w + b", "x @ b + w"))
    assert (e.span.line, e.span.col) == (2, 13)  # at `b`, inside dense
    assert e.notes == (f"in the call to 'dense' at {tmp_path / 'f.mlg'}:7:18",
                       f"in the call to 'twice' at {tmp_path / 'f.mlg'}:14:16")


@pytest.mark.parametrize("change,message,where", [
    (("return relu(h)", "return relu(hh)"), "unknown name 'hh' in function 'dense'", (3, 17)),
    (("return dense(dense(x, w, b), w, b)", "return twice(x, w, b)"),
     "function 'twice' calls itself (twice -> twice)", (7, 12)),
    (("output z = dense(x, w, b)", "output z = dense(x, w)"),
     "function 'dense' takes 3 arguments, got 2", (15, 16)),
    (("output z = dense(x, w, b)", "output z = dense(x, w, b=b)"),
     "function 'dense' takes no keyword arguments", (15, 28)),
    (("def twice(x, w, b)", "def relu(x, w, b)"), "function 'relu' has the name of an op",
     (6, 5)),
    (("def twice(x, w, b)", "def twice(x, w, x)"), "parameter 'x' is listed twice", (6, 17)),
    (("def twice(x, w, b)", "def dense(x, w, b)"), "function 'dense' is already defined",
     (6, 5)),
    (("h = x @ w + b", "w = x @ w + b"), "'w' is already defined", (2, 5)),
])
def test_function_diagnostics(tmp_path, change, message, where):
    e = _error(tmp_path, MLP.replace(*change))
    assert e.message == message
    assert (e.span.line, e.span.col) == where


def test_a_function_sees_only_its_parameters(tmp_path):
    text = "def f(v) {\n    return v + x\n}\nmodel m {\n    input x: f32[2]\n" \
           "    output y = f(x)\n}\n"
    e = _error(tmp_path, text)
    assert e.message == "unknown name 'x' in function 'f'"
    assert "only its parameters" in e.hint


def test_mutual_recursion_is_reported(tmp_path):
    text = ("def f(v) {\n    return g(v)\n}\ndef g(v) {\n    return f(v)\n}\n"
            "model m {\n    input x: f32[2]\n    output y = f(x)\n}\n")
    e = _error(tmp_path, text)
    assert e.message == "function 'f' calls itself (f -> g -> f)"


def test_split_binds_one_slice_per_name(build_model):
    m = build_model("model m {\n    input x: f32[3, 9]\n"
                    "    a, b, c = split(x, sizes=(2, 3, 4), axis=1)\n"
                    "    p, q, r = split(x, axis=-1)\n"
                    "    output y = a\n    output z = c\n    output w = q\n}\n")
    x = np.random.default_rng(3).uniform(-1, 1, (3, 9)).astype(np.float32)
    out = m(x=x)
    np.testing.assert_array_equal(out["y"], x[:, :2])
    np.testing.assert_array_equal(out["z"], x[:, 5:])
    np.testing.assert_array_equal(out["w"], x[:, 3:6])


@pytest.mark.parametrize("line,message,col", [
    ("a, b = split(x, sizes=(2, 2), axis=1)",
     "split sizes (2, 2) must be 2 positive numbers adding up to 9 (axis 1 of f32[3, 9])", 27),
    ("a, b = split(x, axis=1)", "cannot split axis 1 of f32[3, 9] into 2 equal parts", 12),
    ("a, b = split(x, axis=2)", "axis 2 is not an axis of f32[3, 9]", 26),
    ("a, b = split(x, parts=2)", "'split' has no attribute 'parts' (it takes: sizes, axis)", 21),
    ("a, b = exp(x)", "only split gives several results; this gives one, but 2 names are bound",
     5),
    ("a = exp(split(x, axis=0))",
     "split gives several results: bind them with a, b = split(...)", 13),
])
def test_split_diagnostics(tmp_path, line, message, col):
    e = _error(tmp_path, f"model m {{\n    input x: f32[3, 9]\n    {line}\n    output y = x\n}}\n")
    assert e.message == message
    assert (e.span.line, e.span.col) == (3, col)
