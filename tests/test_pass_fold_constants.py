"""fold_constants on IR text: what folds, what must not, and that the outputs do not change."""

from __future__ import annotations

from dataclasses import replace

import ml_dtypes
import numpy as np
import pytest
from passcheck import assert_same_outputs, graph_with
from test_passes import expect, graph_of, text

from aotml import ops
from aotml.graph.passes import fold_constants, run_pipeline, verify


def param_data(graph, name: str) -> np.ndarray:
    (p,) = [p for p in graph.params if p.value.name == name]
    return p.data


def test_folds_literal_arithmetic_and_keeps_what_reads_an_input():
    g = graph_of("""\
        input x: f32[3]
        output y = x * (2.0 + 3.0) - exp(1.0)
    """)
    folded = fold_constants(g)
    expect(folded, """
        graph m(%x: f32[3]) {
          param %c0: f32[]
          param %c1: f32[]
          param %c2: f32[]
          param %t0: f32[]
          param %t2: f32[]
          %0: f32[3] = mul(%x, %t0)
          %1: f32[3] = sub(%0, %t2)
          return y=%1
        }
    """)
    assert param_data(folded, "t0") == np.float32(5)
    assert param_data(folded, "t2") == np.exp(np.float32(1))
    assert param_data(folded, "t2").shape == ()
    verify(folded)
    assert_same_outputs(g, folded)


def test_folds_a_chain_over_weights(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    g = graph_with(tmp_path, """\
        input x: f32[3]
        param w: f32[2, 3]
        output y = x + sum(w * 2, axis=0)
    """, w=w)
    folded = fold_constants(g)
    expect(folded, """
        graph m(%x: f32[3]) {
          param %w: f32[2, 3]
          param %c0: f32[]
          param %t0: f32[2, 3]
          param %t1: f32[3]
          %0: f32[3] = add(%x, %t1)
          return y=%0
        }
    """)
    np.testing.assert_array_equal(param_data(folded, "t1"), (w * np.float32(2)).sum(axis=0))
    verify(folded)
    assert_same_outputs(g, folded)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_narrow_floats_fold_in_f32_rounded_at_each_node(tmp_path, dtype):
    np_dtype = np.float16 if dtype == "f16" else ml_dtypes.bfloat16
    w = np.linspace(-1.3, 2.9, 7).astype(np_dtype)
    g = graph_with(tmp_path, f"""\
        input x: {dtype}[7]
        param w: {dtype}[7]
        output y = x + exp(w) * 3
    """, w=w)
    folded = fold_constants(g)
    assert [n.op for n in folded.nodes] == ["add"]
    # exp in f32, rounded to the narrow dtype; then the product in f32, rounded again
    e = np.exp(w.astype(np.float32)).astype(np_dtype)
    want = (e.astype(np.float32) * np.float32(3)).astype(np_dtype)
    got = param_data(folded, folded.nodes[0].inputs[1].name)
    assert got.dtype == np_dtype
    assert got.tobytes() == want.tobytes()
    assert want.tobytes() != (np.exp(w.astype(np.float32)) * 3).astype(np_dtype).tobytes(), \
        "the sample should tell one rounding from two"
    assert_same_outputs(g, folded)


@pytest.mark.parametrize("cols, folds", [(512, True), (513, False)])
def test_results_over_one_mib_are_not_folded(tmp_path, cols, folds):
    # a: [512, 1] + b: [1, cols] is 512 * cols f32s: exactly 1 MiB for 512 columns
    g = graph_with(tmp_path, f"""\
        input x: f32[512, {cols}]
        param a: f32[512, 1]
        param b: f32[1, {cols}]
        output y = x * (a + b)
    """, a=np.ones((512, 1), np.float32), b=np.ones((1, cols), np.float32))
    folded = fold_constants(g)
    assert [n.op for n in folded.nodes] == (["mul"] if folds else ["add", "mul"])


def test_the_size_cap_is_an_argument():
    g = graph_of("""\
        input x: f32[3]
        output y = x * 2 + cast(3, dtype="f32")
    """)
    # the literal product is 4 bytes: within a 4-byte cap, beyond a 3-byte one
    assert [n.op for n in fold_constants(g, max_bytes=4).nodes] == ["mul", "add"]
    assert [n.op for n in fold_constants(g, max_bytes=3).nodes] == ["mul", "cast", "add"]


def test_a_folded_output_keeps_its_name_and_the_pipeline_copies_it(tmp_path):
    g = graph_with(tmp_path, """\
        input x: f32[3]
        param w: f32[3]
        output y = w * 2
        output z = x + 1
    """, w=np.array([1, 2, 3], np.float32))
    folded = fold_constants(g)
    expect(folded, """
        graph m(%x: f32[3]) {
          param %w: f32[3]
          param %c0: f32[]
          param %c1: f32[]
          param %y: f32[3]
          %0: f32[3] = add(%x, %c1)
          return y=%y, z=%0
        }
    """)
    assert folded.outputs[0][1] is g.outputs[0][1]
    expect(run_pipeline(g, check=True), """
        graph m(%x: f32[3]) {
          param %c1: f32[]
          param %y: f32[3]
          %0: f32[3] = add(%x, %c1)
          %1: f32[3] = copy(%y)
          return y=%1, z=%0
        }
    """)


def test_copy_is_not_folded(tmp_path):
    g = graph_with(tmp_path, """\
        param w: f32[3]
        output y = copy(w)
    """, w=np.ones(3, np.float32))
    before = text(g)
    assert text(fold_constants(g)) == before


@pytest.mark.parametrize("index, folds", [("2", True), ("-3", True), ("3", False)])
def test_an_index_out_of_range_is_left_for_the_run_time_check(tmp_path, index, folds):
    g = graph_with(tmp_path, f"""\
        input x: f32[]
        param w: f32[3]
        output y = x + gather(w, {index})
    """, w=np.array([1, 2, 4], np.float32))
    folded = fold_constants(g)
    assert [n.op for n in folded.nodes] == (["add"] if folds else ["gather", "add"])
    if folds:
        assert_same_outputs(g, folded)


def test_a_node_whose_reference_fails_is_left_for_run_time(monkeypatch):
    def fails(arrays, attrs):
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setitem(ops.REGISTRY, "exp", replace(ops.REGISTRY["exp"], reference=fails))
    g = graph_of("input x: f32[3]\noutput y = x + exp(2.0) * tanh(1.0)\n")
    folded = fold_constants(g)
    assert [n.op for n in folded.nodes] == ["exp", "mul", "add"]
    assert [p.value.name for p in folded.params] == ["c0", "c1", "t1"]


def test_the_input_graph_is_not_changed():
    g = graph_of("input x: f32[3]\noutput y = x * (2.0 + 3.0)\n")
    nodes, params, outputs, before = list(g.nodes), list(g.params), list(g.outputs), text(g)
    fold_constants(g)
    assert g.nodes == nodes and g.params == params and g.outputs == outputs
    assert text(g) == before


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_same_outputs_on_random_inputs(dtype):
    g = graph_of(f"""\
        input x: {dtype}[4, 3]
        k = exp(cast(1.5, dtype="{dtype}")) * cast(2.25, dtype="{dtype}")
        output y = softmax(x * k, axis=0) + tanh(cast(0.5, dtype="{dtype}")) / 3
        output z = relu(x) - sigmoid(cast(-1.0, dtype="{dtype}"))
    """)
    folded = fold_constants(g)
    assert len(folded.nodes) < len(g.nodes)
    assert_same_outputs(g, folded)
