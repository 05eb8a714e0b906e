"""Every dtype through the whole road: storage, compute in f32 for f16/bf16, casts, literals."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import aotml

BF16 = np.dtype(ml_dtypes.bfloat16)
NP = {"f32": np.float32, "f16": np.float16, "bf16": BF16, "i32": np.int32, "i64": np.int64,
      "bool": np.bool_}
# Tolerances relative to each dtype's precision (issue: f16 1e-3, bf16 1.6e-2).
RTOL = {"f32": 1e-5, "f16": 1e-3, "bf16": 1.6e-2}


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on inf/NaN casts


def values(rng, dtype: str, shape, low=-3, high=3) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("i32", "i64"):
        return rng.integers(low * 10, high * 10, size=shape).astype(NP[dtype])
    return rng.uniform(low, high, size=shape).astype(np.float32).astype(NP[dtype])


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "i32", "i64"])
def test_arithmetic_and_reductions_per_dtype(build_model, dtype):
    m = build_model(f"""model m {{
    input a: {dtype}[3, 7]
    input b: {dtype}[7]
    input c: {dtype}[7, 5]
    output s = a * b + a - 2
    output r = relu(a)
    output t = sum(a, axis=1)
    output u = max(a, axis=0, keepdims=true)
    output v = a @ c
}}""")
    rng = np.random.default_rng(11)
    inputs = {"a": values(rng, dtype, (3, 7)), "b": values(rng, dtype, (7,)),
              "c": values(rng, dtype, (7, 5))}
    got = m(**inputs)
    ref = aotml.interpret(m.source_path, **inputs)
    for name in ref:
        assert got[name].dtype == NP[dtype], name
        if dtype in ("i32", "i64"):
            np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
        else:
            # same computation in f32 and one rounding to the dtype: at most one ulp apart
            np.testing.assert_allclose(got[name].astype(np.float64),
                                       ref[name].astype(np.float64),
                                       rtol=RTOL[dtype], atol=RTOL[dtype], err_msg=name)


def test_integers_wrap_like_numpy(build_model):
    m = build_model("model m {\n input a: i32[4]\n output y = a * a + 2147483647\n}\n")
    a = np.array([0, 1, 46341, -7], np.int32)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(m(a=a)["y"], a * a + np.int32(2147483647))


CAST_PAIRS = [(s, d) for s in NP for d in NP if s != d]


@pytest.mark.parametrize("src,dst", CAST_PAIRS, ids=[f"{s}-{d}" for s, d in CAST_PAIRS])
def test_cast_matches_reference(build_model, src, dst):
    m = build_model(f'model m {{\n input x: {src}[41]\n output y = cast(x, dtype="{dst}")\n}}\n')
    rng = np.random.default_rng(5)
    x = values(rng, src, (41,), -200, 200)
    if src in ("f32", "f16", "bf16"):  # the special values, and halves to test rounding
        special = np.array([np.nan, np.inf, -np.inf, 0.5, -0.5, 1.5, 2.5, -0.0, 3e9, -3e9],
                           np.float32).astype(NP[src])
        x[:len(special)] = special
    got = m(x=x)["y"]
    ref = aotml.interpret(m.source_path, x=x)["y"]
    assert got.dtype == NP[dst]
    np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))


def test_bf16_rounds_to_nearest_even_like_ml_dtypes(build_model):
    """f32 -> bf16 in compiled code agrees bit for bit with ml_dtypes on 100k random bit
    patterns (NaNs compared as NaN)."""
    m = build_model('model m {\n input x: f32[100000]\n output y = cast(x, dtype="bf16")\n}\n')
    bits = np.random.default_rng(2).integers(0, 2**32, size=100000, dtype=np.uint64)
    x = bits.astype(np.uint32).view(np.float32)
    got, want = m(x=x)["y"], x.astype(BF16)
    nan = np.isnan(want.astype(np.float32))
    assert np.array_equal(np.isnan(got.astype(np.float32)), nan)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])


def test_float_to_int_saturates_and_nan_is_zero(build_model):
    m = build_model('model m {\n input x: f32[5]\n output y = cast(x, dtype="i32")\n}\n')
    x = np.array([np.nan, 1e20, -1e20, -2.7, 2.7], np.float32)
    np.testing.assert_array_equal(m(x=x)["y"], [0, 2**31 - 1, -2**31, -2, 2])


def test_literals_take_the_tensor_dtype(build_model):
    m = build_model("model m {\n input x: f16[3]\n input k: i64[3]\n"
                    " output y = x * 0.1\n output z = k * 3 - 1\n}\n")
    x = np.array([1, 2, 3], np.float16)
    k = np.array([1, -2, 5], np.int64)
    out = m(x=x, k=k)
    assert out["y"].dtype == np.float16 and out["z"].dtype == np.int64
    # 0.1 is first rounded to f16, the product computed in f32 and rounded to f16
    want = (x.astype(np.float32) * np.float32(np.float16(0.1))).astype(np.float16)
    np.testing.assert_array_equal(out["y"], want)
    np.testing.assert_array_equal(out["z"], k * 3 - 1)


def test_float_literal_with_an_integer_tensor_is_an_error(tmp_path):
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n input k: i32[3]\n output y = k * 0.5\n}\n")
    with pytest.raises(aotml.CompileError) as e:
        aotml.build(src, tmp_path / "m.so")
    assert "the number 0.5 cannot be used as i32" in str(e.value)
    assert (e.value.span.line, e.value.span.col) == (3, 17)


def test_mixed_dtypes_are_an_error_with_a_hint(tmp_path):
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n input a: f32[3]\n input b: f16[3]\n output y = a + b\n}\n")
    with pytest.raises(aotml.CompileError) as e:
        aotml.build(src, tmp_path / "m.so")
    assert "operands have different dtypes: f32[3] and f16[3]" in str(e.value)
    assert e.value.span.col == 17 and "cast(" in e.value.hint  # at `b`


@pytest.mark.parametrize("dtype", ["f16", "bf16", "i64", "bool"])
def test_weights_of_every_dtype_from_npz_and_safetensors(tmp_path, dtype):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(4)
    w = values(rng, dtype, (2, 3))
    for fmt in ("npz", "safetensors"):
        folder = tmp_path / fmt
        folder.mkdir()
        if fmt == "npz":
            np.savez(folder / "w.npz", w=w)
        else:
            save_file({"w": w}, str(folder / "w.safetensors"))
        src = folder / "m.mlg"
        src.write_text(f'weights "w.{fmt}"\nmodel m {{\n input x: {dtype}[2, 3]\n'
                       f' param w: {dtype}[2, 3]\n output y = copy(w)\n output z = x\n}}\n')
        m = aotml.load(aotml.build(src, folder / "m.so"))
        out = m(x=w)
        np.testing.assert_array_equal(out["y"].view(np.uint8), w.view(np.uint8))
        np.testing.assert_array_equal(out["z"].view(np.uint8), w.view(np.uint8))


def test_corrupt_safetensors_is_a_located_error(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    src = tmp_path / "m.mlg"
    src.write_text('weights "w.safetensors"\nmodel m {\n param w: f32[2]\n output y = w\n}\n')
    with pytest.raises(aotml.CompileError) as e:
        aotml.build(src, tmp_path / "m.so")
    assert "cannot read weights file 'w.safetensors'" in str(e.value)
    assert (e.value.span.line, e.value.span.col) == (1, 9)
