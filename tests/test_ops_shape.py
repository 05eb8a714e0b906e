"""The shape and data-movement ops of aotml/ops/shape.py against their references (see
opcheck.py), in every dtype, plus their edge semantics checked against numpy written out by
hand: clamped and reversed slices, negative and out-of-range gather indices, pad modes and
values, and the errors of every op, located in the source."""

from __future__ import annotations

import numpy as np
import pytest
from opcheck import Sample, check, check_error, draw, params

import aotml

INT64_MAX = 2**63 - 1


def _gather(x_shape, idx_shape, x_dtype="f32", idx_dtype="i64", axis=0):
    """A gather sample whose indices cover [-n, n-1], negative ones included."""
    n = x_shape[axis % len(x_shape)]

    def inputs(rng):
        indices = rng.integers(-n, n, size=idx_shape).astype(
            "int32" if idx_dtype == "i32" else "int64")
        return [draw(rng, x_shape, x_dtype), indices]

    return Sample((x_shape, idx_shape), {"axis": axis}, dtypes=(x_dtype, idx_dtype),
                  inputs=inputs)


# One-element tuples are written as plain integers: the language has no `(3,)`.
SAMPLES: dict[str, list[Sample]] = {
    "reshape": [
        Sample(((3, 7),), {"shape": (7, 3)}),
        Sample(((2, 3, 5),), {"shape": (-1, 5)}, dtypes=("i64",)),
        Sample(((33,),), {"shape": (3, 11)}, dtypes=("bf16",)),
        Sample(((1,),), {"shape": ()}),
        Sample(((257,),), {"shape": (257, 1)}, dtypes=("bool",)),
        Sample(((3, 1, 7),), {"shape": (7, -1)}, dtypes=("f16",)),
        Sample(((2, 3, 4, 5),), {"shape": (4, 30)}, dtypes=("i32",)),
    ],
    "transpose": [
        Sample(((3, 7),)),
        Sample(((2, 3, 5),), {"perm": (1, 2, 0)}, dtypes=("i32",)),
        Sample(((2, 3, 5),), {"perm": (-1, 0, -2)}, dtypes=("bool",)),
        Sample(((1, 33, 3),), {"perm": (2, 0, 1)}, dtypes=("bf16",)),
        Sample(((7,),)),
        Sample(((3, 1, 7),), dtypes=("i64",)),
        # f32 with both swapped extents whole vectors: in L x L blocks (at 16, 8 and 4 lanes)
        Sample(((2, 32, 48),), {"perm": (0, 2, 1)}),
        Sample(((1, 16, 3, 32),), {"perm": (0, 2, 3, 1)}),  # MiniLM's kᵀ
        Sample(((32, 5, 16),), {"perm": (2, 1, 0)}),
        Sample(((16, 20),), {"perm": (1, 0)}),  # 20 is no whole number of vectors: scalar
    ],
    "broadcast_to": [
        Sample(((1,),), {"shape": 33}),
        Sample(((3, 1),), {"shape": (3, 7)}),
        Sample(((7,),), {"shape": (2, 3, 7)}, dtypes=("i64",)),
        Sample(((1, 7),), {"shape": (5, 3, 7)}, dtypes=("bool",)),
        Sample(((3, 1, 1),), {"shape": (3, 5, 7)}, dtypes=("f16",)),
        Sample(((257,),), {"shape": (1, 257)}, dtypes=("bf16",)),
    ],
    "concat": [
        Sample(((3, 7), (3, 7))),
        Sample(((3, 7), (3, 1), (3, 5)), {"axis": 1}),
        Sample(((2, 3, 5), (2, 7, 5)), {"axis": -2}, dtypes=("bf16", "bf16")),
        Sample(((33,),)),
        Sample(((1,), (257,)), dtypes=("i64", "i64")),
        Sample(((2, 1), (2, 3), (2, 1)), {"axis": -1}, dtypes=("bool",) * 3),
        Sample(((1, 3), (1, 3)), dtypes=("f16", "f16")),
    ],
    "slice": [
        Sample(((7,),), {"starts": 1, "ends": 5}),
        Sample(((3, 7),), {"starts": (0, 1), "ends": (2, 7)}),
        Sample(((3, 7),), {"starts": -1, "ends": -100, "axes": 1, "steps": -1}),
        Sample(((2, 33, 5),), {"starts": (1, -3), "ends": (1000, -1), "axes": (2, -2),
                               "steps": (2, 1)}),
        Sample(((33,),), {"starts": -5, "ends": 2, "steps": -3}, dtypes=("i64",)),
        Sample(((3, 7),), {"starts": 2, "ends": 0, "steps": -1}, dtypes=("bool",)),
        Sample(((257,),), {"starts": 3, "ends": 250, "steps": 7}, dtypes=("bf16",)),
        # ONNX's "to the end" / "to the beginning" idioms: the extremes of i64
        Sample(((3, 7),), {"starts": (0, -1), "ends": (INT64_MAX, -INT64_MAX - 1),
                           "steps": (1, -2)}, dtypes=("f16",)),
        Sample(((3, 7),), {"starts": (), "ends": ()}, dtypes=("i32",)),
    ],
    "gather": [
        _gather((5, 3), (4,)),
        _gather((3, 7), (2, 3), idx_dtype="i32", axis=1),
        _gather((2, 33, 5), (), axis=-2),
        _gather((7,), (3,), x_dtype="bf16"),
        _gather((4, 3), (5,), x_dtype="bool", idx_dtype="i32", axis=1),
        _gather((257,), (33,), x_dtype="i64"),
        _gather((1, 3), (2, 1), x_dtype="f16"),
    ],
    "pad": [
        Sample(((3, 7),), {"pads": (1, 2, 0, 3)}),
        Sample(((7,),), {"pads": (3, 2), "mode": "reflect"}),
        Sample(((2, 3, 5),), {"pads": (0, 1, 2, 1, 0, 4), "mode": "edge"}, dtypes=("i64",)),
        Sample(((3, 7),), {"pads": (2, 6, 2, 6), "mode": "reflect"}, dtypes=("bf16",)),
        Sample(((33,),), {"pads": (1, 1), "value": -1.5}, dtypes=("f16",)),
        Sample(((3, 5),), {"pads": (1, 0, 0, 2), "value": 1}, dtypes=("bool",)),
        Sample(((3, 4),), {"pads": (2, 1, 1, 2), "value": 7}, dtypes=("i32",)),
        Sample(((1,),), {"pads": (0, 0)}),
        Sample(((1, 3),), {"pads": (4, 0, 0, 1), "mode": "edge", "value": 0.1},
               dtypes=("bool",)),
        Sample(((3, 7),), {"pads": (0, 2, 1, 0), "value": 0.1}),
    ],
    "squeeze": [
        Sample(((1, 3, 1, 7),)),
        Sample(((1, 3, 1, 7),), {"axes": (0, -2)}, dtypes=("i64",)),
        Sample(((3, 1),), {"axes": 1}, dtypes=("bool",)),
        Sample(((1,),)),
        Sample(((1, 33, 1),), {"axes": -1}, dtypes=("bf16",)),
        Sample(((3, 7),), dtypes=("f16",)),
    ],
    "unsqueeze": [
        Sample(((3, 7),), {"axes": 0}),
        Sample(((3, 7),), {"axes": (-1, 1)}),
        Sample(((33,),), {"axes": (0, 2)}, dtypes=("i64",)),
        Sample(((),), {"axes": 0}),
        Sample(((5,),), {"axes": (2, 0, 1)}, dtypes=("bool",)),
        Sample(((3, 1),), {"axes": -1}, dtypes=("bf16",)),
    ],
}


@pytest.mark.parametrize("op,sample", params(SAMPLES))
def test_op_compiled_matches_reference(tmp_path, op, sample):
    check(tmp_path, op, sample)


def test_semantics_match_numpy_written_out(build_model):
    """Each op against the numpy expression it stands for, not against its own reference."""
    m = build_model("""model m {
    input x: i32[3, 4]
    input i: i64[2, 2]
    output reshape_ = reshape(x, shape=(2, -1, 3))
    output transpose_ = transpose(reshape(x, shape=(2, 3, 2)), perm=(2, -3, 1))
    output reverse = transpose(reshape(x, shape=(2, 3, 2)))
    output bcast = broadcast_to(slice(x, starts=1, ends=2), shape=(2, 3, 4))
    output cat = concat(x, slice(x, starts=0, ends=1, axes=1), x, axis=-1)
    output rev = slice(x, starts=(-1, -1), ends=(-INF, -INF), steps=(-1, -2))
    output clamped = slice(x, starts=(-100, 2), ends=(100, 100))
    output g = gather(x, i, axis=1)
    output reflect = pad(x, pads=(2, 3, 1, 2), mode="reflect")
    output edge = pad(x, pads=(2, 3, 1, 2), mode="edge")
    output const = pad(x, pads=(0, 1, 1, 0), value=-9)
    output sq = squeeze(reshape(x, shape=(1, 3, 1, 4)))
    output unsq = unsqueeze(x, axes=(-1, 0))
}""".replace("INF", str(2**63)))
    x = np.arange(12, dtype=np.int32).reshape(3, 4) * 3 - 7
    i = np.array([[0, -1], [3, -4]], np.int64)
    got = m(x=x, i=i)
    y = x.reshape(2, 3, 2)
    expected = {
        "reshape_": x.reshape(2, 2, 3), "transpose_": y.transpose(2, 0, 1),
        "reverse": y.transpose(2, 1, 0), "bcast": np.broadcast_to(x[1:2], (2, 3, 4)),
        "cat": np.concatenate([x, x[:, :1], x], axis=1), "rev": x[::-1, ::-2],
        "clamped": x[:, 2:], "g": x[:, [[0, 3], [3, 0]]],
        "reflect": np.pad(x, [(2, 1), (3, 2)], mode="reflect"),
        "edge": np.pad(x, [(2, 1), (3, 2)], mode="edge"),
        "const": np.pad(x, [(0, 1), (1, 0)], constant_values=-9),
        "sq": x, "unsq": x[None, :, :, None],
    }
    for name, want in expected.items():
        assert got[name].dtype == np.int32, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("dtype", ["i32", "i64"])
def test_gather_index_out_of_range_fails_at_run_time(build_model, dtype):
    """Indices in [-5, 4] work (negative ones from the end); -6 and 5 fail the run with a
    located message, in the compiled model and in the interpreter alike; the model stays
    usable."""
    m = build_model(f"model m {{\n  input x: f32[5, 2]\n  input i: {dtype}[3]\n"
                    "  output y = gather(x, i)\n}\n")
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    np_int = np.int32 if dtype == "i32" else np.int64
    good = np.array([-5, 4, -1], np_int)
    np.testing.assert_array_equal(m(x=x, i=good)["y"], x[[0, 4, 4]])
    for bad in (-6, 5, np.iinfo(np_int).min, np.iinfo(np_int).max):
        i = np.array([0, bad, 1], np_int)
        with pytest.raises(aotml.RunError) as e:
            m(x=x, i=i)
        assert (f"gather index out of range [-5, 4] in 'gather' at {m.source_path}:4:14"
                in str(e.value)), bad
        with pytest.raises(aotml.RunError, match=r"gather index out of range \[-5, 4\]"):
            aotml.interpret(m.source_path, x=x, i=i)
    np.testing.assert_array_equal(m(x=x, i=good)["y"], x[[0, 4, 4]])


def test_pad_value_is_rounded_to_the_dtype(build_model):
    """The constant is held as the dtype holds it: 0.1 in f16 is float16(0.1), in i64 a value
    like -3 is exact."""
    m = build_model("model m {\n  input x: f16[2]\n  input k: i64[1]\n"
                    "  output y = pad(x, pads=(1, 2), value=0.1)\n"
                    "  output z = pad(k, pads=(2, 0), value=-3)\n}\n")
    out = m(x=np.array([1.5, -2.0], np.float16), k=np.array([9], np.int64))
    np.testing.assert_array_equal(out["y"], np.array([0.1, 1.5, -2.0, 0.1, 0.1], np.float16))
    np.testing.assert_array_equal(out["z"], [-3, -3, 9])


def test_data_movement_keeps_special_values(build_model):
    """NaN, infinities and -0.0 pass through unchanged in f32 and f16."""
    m = build_model("model m {\n  input x: f32[4]\n  input h: f16[4]\n"
                    "  output y = slice(transpose(x), starts=-1, ends=-10, steps=-1)\n"
                    "  output z = concat(h, h)\n}\n")
    x = np.array([np.nan, -np.inf, -0.0, np.inf], np.float32)
    out = m(x=x, h=x.astype(np.float16))
    np.testing.assert_array_equal(np.signbit(out["y"]), np.signbit(x[::-1]))
    np.testing.assert_array_equal(out["y"], x[::-1])  # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(out["z"], np.concatenate([x, x]).astype(np.float16))
    assert np.signbit(out["z"][2]) and np.signbit(out["z"][6])


ERRORS = [
    # (call with ^ where the error must point, message fragment)
    ("reshape(x, shape=^(4, 5))", "cannot reshape f32[3, 7] (21 elements) to (4, 5)"),
    ("reshape(x, shape=^(-1, 5))", "21 is not a multiple of 5"),
    ("reshape(x, shape=^(-1, -1))", "at most one dim may be -1"),
    ("reshape(x, shape=^(0, 21))", "dims must be positive or -1"),
    ("transpose(x, perm=^(0, 0))", "is not a permutation of 0..1"),
    ("transpose(x, perm=^(1, 0, 2))", "has 3 entries for a tensor of rank 2"),
    ("broadcast_to(x, shape=^(3, 5))", "cannot broadcast f32[3, 7] to (3, 5): dim 1 is 7"),
    ("broadcast_to(x, shape=^7)", "the target has fewer dims"),
    ("concat(x, ^w)", "f32[7, 3] does not match f32[3, 7]"),
    ("concat(x, ^k, axis=1)", "operands have different dtypes"),
    ("concat(x, x, axis=^2)", "axis 2 is out of range for a tensor of rank 2"),
    ("slice(x, starts=(0, 0), ends=^3)", "ends=(3,) has 1 entries but starts=(0, 0) has 2"),
    ("slice(x, starts=1, ends=2, steps=^0)", "step 0 along axis 0"),
    ("slice(x, starts=^5, ends=2, axes=1)", "is empty along axis 1 (start 5, end 2, step 1)"),
    ("slice(x, starts=(0, 0), ends=(1, 1), axes=^(1, -1))", "axis 1 is named twice"),
    ("slice(x, starts=0, ends=1, axes=^2)", "axis 2 is out of range for rank 2"),
    ("slice(x, starts=^(0, 0, 0), ends=(1, 1, 1))", "has 3 entries, more than its 2 dims"),
    ("gather(x, ^x)", "'gather' indices must be i32 or i64, got f32[3, 7]"),
    ("gather(x, k, axis=^-3)", "axis -3 is out of range"),
    ("pad(x, pads=^(1, 1))", "needs 4 pads"),
    ("pad(x, pads=^(1, -1, 0, 0))", "must be non-negative"),
    ('pad(x, pads=^(3, 0, 0, 0), mode="reflect")', "axis 0 of f32[3, 7] has 3"),
    ('pad(x, pads=(1, 0, 0, 0), mode=^"wrap")', "attribute 'mode' must be one of"),
    ("pad(k, pads=(1, 0), value=^0.5)", "value 0.5 is not an integer that i32 holds"),
    ("pad(k, pads=(1, 0), value=^3000000000)", "is not an integer that i32 holds"),
    ("pad(b, pads=(1, 0), value=^2)", "value 2.0 is not a bool"),
    ("pad(h, pads=(1, 0), value=^70000)", "value 70000.0 overflows f16"),
    ("squeeze(x, axes=^1)", "axis 1 of f32[3, 7] has size 7, not 1"),
    ("unsqueeze(x, axes=^(0, -4))", "axis 0 is named twice"),
    ("unsqueeze(x, axes=^3)", "axis 3 is out of range for rank 3"),
    ("unsqueeze(x, axes=^())", "needs at least one axis"),
]


@pytest.mark.parametrize("call,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_shapes_and_point_at_the_culprit(tmp_path, call, message):
    check_error(tmp_path, "  input x: f32[3, 7]\n  input w: f32[7, 3]\n  input k: i32[7]\n"
                "  input b: bool[2]\n  input h: f16[2]\n", call, message)
