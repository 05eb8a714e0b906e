"""ONNX's own node tests, compiled to shared libraries and run (see onnx_conformance.py): every
selected test passes, or the importer refuses it for the reason EXPECTED_UNSUPPORTED gives; and
docs/onnx-conformance.md says so (regenerate it with the command at its top).

The cases are built GROUP at a time into one model (a build costs about the same for one node as
for many), on every core; a case that does not pass there is rebuilt alone for its result."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("onnx")
import onnx_conformance as oc  # noqa: E402

from conftest import REPO  # noqa: E402

GROUP = 24
DOC = REPO / "docs" / "onnx-conformance.md"

# What a user would accept as the reason a test cannot run: test name -> a substring of the
# importer's error. Anything not listed must pass; a listed test that passes must be removed.
EXPECTED_UNSUPPORTED: dict[str, str] = {
    # dtypes aotml does not have (it has f32, f16, bf16, i32, i64 and bool; "object": strings)
    **dict.fromkeys([
        "test_cast_FLOAT16_to_FLOAT4E2M1", "test_cast_FLOAT4E2M1_to_FLOAT",
        "test_cast_FLOAT4E2M1_to_FLOAT16", "test_cast_FLOAT_to_FLOAT4E2M1",
        "test_castlike_FLOAT16_to_FLOAT4E2M1_expanded",
        "test_castlike_FLOAT4E2M1_to_FLOAT16_expanded",
        "test_castlike_FLOAT4E2M1_to_FLOAT_expanded", "test_castlike_FLOAT_to_FLOAT4E2M1_expanded"
    ], "dtype float4_e2m1fn,"),
    **dict.fromkeys([
        "test_cast_DOUBLE_to_FLOAT", "test_cast_DOUBLE_to_FLOAT16", "test_cast_FLOAT16_to_DOUBLE",
        "test_cast_FLOAT_to_DOUBLE", "test_castlike_DOUBLE_to_FLOAT16_expanded",
        "test_castlike_DOUBLE_to_FLOAT_expanded", "test_castlike_FLOAT16_to_DOUBLE_expanded",
        "test_castlike_FLOAT_to_DOUBLE_expanded", "test_flexattention_double_expanded_ver26",
        "test_max_float64", "test_min_float64", "test_mod_float64_mixed_sign_fmod_0",
        "test_mod_float_edge_cases_fmod_0_float64", "test_mod_mixed_sign_float64"
    ], "dtype float64,"),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_FLOAT8E4M3FN", "test_cast_FLOAT8E4M3FN_to_FLOAT",
        "test_cast_FLOAT8E4M3FN_to_FLOAT16", "test_cast_FLOAT_to_FLOAT8E4M3FN",
        "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FN",
        "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FN",
        "test_castlike_FLOAT16_to_FLOAT8E4M3FN_expanded",
        "test_castlike_FLOAT8E4M3FN_to_FLOAT16_expanded",
        "test_castlike_FLOAT8E4M3FN_to_FLOAT_expanded",
        "test_castlike_FLOAT_to_FLOAT8E4M3FN_expanded",
        "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FN_expanded",
        "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FN_expanded"
    ], "dtype float8_e4m3fn,"),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_FLOAT8E4M3FNUZ", "test_cast_FLOAT8E4M3FNUZ_to_FLOAT",
        "test_cast_FLOAT8E4M3FNUZ_to_FLOAT16", "test_cast_FLOAT_to_FLOAT8E4M3FNUZ",
        "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ",
        "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ",
        "test_castlike_FLOAT16_to_FLOAT8E4M3FNUZ_expanded",
        "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT16_expanded",
        "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT_expanded",
        "test_castlike_FLOAT_to_FLOAT8E4M3FNUZ_expanded",
        "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ_expanded",
        "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ_expanded"
    ], "dtype float8_e4m3fnuz,"),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_FLOAT8E5M2", "test_cast_FLOAT8E5M2_to_FLOAT",
        "test_cast_FLOAT8E5M2_to_FLOAT16", "test_cast_FLOAT_to_FLOAT8E5M2",
        "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2", "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2",
        "test_castlike_FLOAT16_to_FLOAT8E5M2_expanded",
        "test_castlike_FLOAT8E5M2_to_FLOAT16_expanded",
        "test_castlike_FLOAT8E5M2_to_FLOAT_expanded", "test_castlike_FLOAT_to_FLOAT8E5M2_expanded",
        "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2_expanded",
        "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2_expanded"
    ], "dtype float8_e5m2,"),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_FLOAT8E5M2FNUZ", "test_cast_FLOAT8E5M2FNUZ_to_FLOAT",
        "test_cast_FLOAT8E5M2FNUZ_to_FLOAT16", "test_cast_FLOAT_to_FLOAT8E5M2FNUZ",
        "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ",
        "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ",
        "test_castlike_FLOAT16_to_FLOAT8E5M2FNUZ_expanded",
        "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT16_expanded",
        "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT_expanded",
        "test_castlike_FLOAT_to_FLOAT8E5M2FNUZ_expanded",
        "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ_expanded",
        "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ_expanded"
    ], "dtype float8_e5m2fnuz,"),
    **dict.fromkeys([
        "test_cast_e8m0_FLOAT16_to_FLOAT8E8M0", "test_cast_e8m0_FLOAT8E8M0_to_FLOAT",
        "test_cast_e8m0_FLOAT8E8M0_to_FLOAT16", "test_cast_e8m0_FLOAT_to_FLOAT8E8M0"
    ], "dtype float8_e8m0fnu,"),
    **dict.fromkeys([
        "test_add_int16", "test_div_int16", "test_equal_int16", "test_greater_equal_int16",
        "test_greater_equal_int16_expanded", "test_greater_int16", "test_less_equal_int16",
        "test_less_equal_int16_expanded", "test_less_int16", "test_max_int16", "test_min_int16",
        "test_mod_mixed_sign_int16", "test_mul_int16", "test_sub_int16"
    ], "dtype int16,"),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_INT2", "test_cast_FLOAT_to_INT2", "test_cast_INT2_to_FLOAT",
        "test_cast_INT2_to_FLOAT16", "test_cast_INT2_to_INT8",
        "test_castlike_FLOAT16_to_INT2_expanded", "test_castlike_FLOAT_to_INT2_expanded",
        "test_castlike_INT2_to_FLOAT16_expanded", "test_castlike_INT2_to_FLOAT_expanded",
        "test_castlike_INT2_to_INT8_expanded"
    ], "dtype int2,"),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_INT4", "test_cast_FLOAT_to_INT4", "test_cast_INT4_to_FLOAT",
        "test_cast_INT4_to_FLOAT16", "test_cast_INT4_to_INT8",
        "test_castlike_FLOAT16_to_INT4_expanded", "test_castlike_FLOAT_to_INT4_expanded",
        "test_castlike_INT4_to_FLOAT16_expanded", "test_castlike_INT4_to_FLOAT_expanded",
        "test_castlike_INT4_to_INT8_expanded"
    ], "dtype int4,"),
    **dict.fromkeys([
        "test_add_int8", "test_clip_default_int8_inbounds",
        "test_clip_default_int8_inbounds_expanded", "test_clip_default_int8_max",
        "test_clip_default_int8_max_expanded", "test_clip_default_int8_min",
        "test_clip_default_int8_min_expanded", "test_div_int8", "test_equal_int8",
        "test_greater_equal_int8", "test_greater_equal_int8_expanded", "test_greater_int8",
        "test_less_equal_int8", "test_less_equal_int8_expanded", "test_less_int8", "test_max_int8",
        "test_min_int8", "test_mod_mixed_sign_int8", "test_mul_int8", "test_sub_int8"
    ], "dtype int8,"),
    **dict.fromkeys([
        "test_equal_string", "test_equal_string_broadcast"
    ], "dtype object,"),
    **dict.fromkeys([
        "test_add_uint16", "test_div_uint16", "test_equal_uint16", "test_greater_equal_uint16",
        "test_greater_equal_uint16_expanded", "test_greater_uint16", "test_less_equal_uint16",
        "test_less_equal_uint16_expanded", "test_less_uint16", "test_max_uint16",
        "test_min_uint16", "test_mod_uint16", "test_mul_uint16", "test_sub_uint16"
    ], "dtype uint16,"),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_UINT2", "test_cast_FLOAT_to_UINT2", "test_cast_UINT2_to_FLOAT",
        "test_cast_UINT2_to_FLOAT16", "test_cast_UINT2_to_UINT8",
        "test_castlike_FLOAT16_to_UINT2_expanded", "test_castlike_FLOAT_to_UINT2_expanded",
        "test_castlike_UINT2_to_FLOAT16_expanded", "test_castlike_UINT2_to_FLOAT_expanded",
        "test_castlike_UINT2_to_UINT8_expanded"
    ], "dtype uint2,"),
    **dict.fromkeys([
        "test_add_uint32", "test_div_uint32", "test_equal_uint32", "test_greater_equal_uint32",
        "test_greater_equal_uint32_expanded", "test_greater_uint32", "test_less_equal_uint32",
        "test_less_equal_uint32_expanded", "test_less_uint32", "test_max_uint32",
        "test_min_uint32", "test_mod_uint32", "test_mul_uint32", "test_pow_types_float32_uint32",
        "test_sub_uint32"
    ], "dtype uint32,"),
    **dict.fromkeys([
        "test_cast_FLOAT16_to_UINT4", "test_cast_FLOAT_to_UINT4", "test_cast_UINT4_to_FLOAT",
        "test_cast_UINT4_to_FLOAT16", "test_cast_UINT4_to_UINT8",
        "test_castlike_FLOAT16_to_UINT4_expanded", "test_castlike_FLOAT_to_UINT4_expanded",
        "test_castlike_UINT4_to_FLOAT16_expanded", "test_castlike_UINT4_to_FLOAT_expanded",
        "test_castlike_UINT4_to_UINT8_expanded"
    ], "dtype uint4,"),
    **dict.fromkeys([
        "test_add_uint64", "test_div_uint64", "test_equal_uint64", "test_greater_equal_uint64",
        "test_greater_equal_uint64_expanded", "test_greater_uint64", "test_less_equal_uint64",
        "test_less_equal_uint64_expanded", "test_less_uint64", "test_max_uint64",
        "test_min_uint64", "test_mod_uint64", "test_mul_uint64", "test_pow_types_float32_uint64",
        "test_sub_uint64"
    ], "dtype uint64,"),
    **dict.fromkeys([
        "test_add_uint8", "test_div_uint8", "test_equal_uint8", "test_greater_equal_uint8",
        "test_greater_equal_uint8_expanded", "test_greater_uint8", "test_less_equal_uint8",
        "test_less_equal_uint8_expanded", "test_less_uint8", "test_max_uint8",
        "test_maxpool_2d_uint8", "test_min_uint8", "test_mod_uint8", "test_mul_uint8",
        "test_sub_uint8"
    ], "dtype uint8,"),
    # inputs with a dim of 0: aotml has no empty tensors
    **dict.fromkeys([
        "test_castlike_BFLOAT16_to_FLOAT_expanded", "test_castlike_FLOAT16_to_FLOAT_expanded",
        "test_castlike_FLOAT_to_BFLOAT16_expanded", "test_castlike_FLOAT_to_FLOAT16_expanded",
        "test_reduce_l1_empty_set_expanded", "test_reduce_log_sum_empty_set_expanded",
        "test_reduce_max_empty_set", "test_reduce_max_empty_set_bool", "test_reduce_min_empty_set",
        "test_reduce_prod_empty_set", "test_reduce_sum_empty_set",
        "test_reduce_sum_empty_set_non_reduced_axis_zero",
        "test_reduce_sum_square_empty_set_expanded", "test_reshape_allowzero_reordered",
        "test_split_zero_size_splits_opset13", "test_split_zero_size_splits_opset18"
    ], "dims must be at least 1"),
    # random dropout: aotml compiles inference
    **dict.fromkeys([
        "test_training_dropout", "test_training_dropout_default",
        "test_training_dropout_default_mask", "test_training_dropout_mask"
    ], "dropout in training mode"),
    # a slice with no elements: aotml has no empty tensors
    **dict.fromkeys([
        "test_slice_start_out_of_bounds"
    ], "empty"),
    # outputs with no elements: aotml has no empty tensors
    **dict.fromkeys([
        "test_constantofshape_int_shape_zero", "test_shape_start_greater_than_end"
    ], "empty tensors are not supported"),
    # optional and sequence values: aotml's values are tensors
    **dict.fromkeys([
        "test_identity_opt", "test_identity_sequence"
    ], "is not a tensor"),
}

NAMES = oc.selected_names()


@pytest.fixture(scope="module")
def results() -> dict[str, oc.Result]:
    return {r.name: r for r in oc.run_all(NAMES, jobs=os.cpu_count(), group=GROUP)}


@pytest.mark.parametrize("name", NAMES)
def test_node_case(results, name):
    r = results[name]
    expected = EXPECTED_UNSUPPORTED.get(name)
    if expected is None:
        assert r.status == "passed", f"{name} ({r.op}): {r.status}: {r.reason}"
    else:
        assert r.status == "unsupported" and expected in r.reason, \
            f"{name} ({r.op}): expected unsupported ({expected!r}), got {r.status}: {r.reason}"


def _same_onnx() -> bool:
    """Whether this onnx is the one docs/onnx-conformance.md (and EXPECTED_UNSUPPORTED) were
    made with: another has other tests."""
    import onnx
    return DOC.exists() and f"(onnx {onnx.__version__})" in DOC.read_text()


def test_expected_unsupported_are_selected_tests():
    if not _same_onnx():
        pytest.skip("another onnx version than docs/onnx-conformance.md's")
    stale = sorted(set(EXPECTED_UNSUPPORTED) - set(NAMES))
    assert not stale, f"EXPECTED_UNSUPPORTED names tests that are not run: {stale}"


def test_every_supported_op_has_node_tests():
    """The selection is by op type: a converter must not hide every test of its op."""
    from aotml.onnx_import import CONVERTERS
    cases = oc.load_cases()
    tested = {oc.case_op(cases[n]) for n in NAMES}
    all_ops = {oc.case_op(c) for c in cases.values()}
    assert {op for op in CONVERTERS if op in all_ops} <= tested


def test_doc_is_up_to_date(results):
    if not _same_onnx():
        pytest.skip("another onnx version than docs/onnx-conformance.md's")
    assert oc.render([results[n] for n in sorted(results)]) == DOC.read_text(), (
        f"{DOC.relative_to(REPO)} is out of date: run `{oc.COMMAND}`")
