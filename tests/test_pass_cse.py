"""eliminate_common_subexpressions on IR text: what merges, what must not, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
from passcheck import assert_same_outputs, graph_with
from test_passes import expect, graph_of, text

from aotml.graph.ir import Node
from aotml.graph.passes import eliminate_common_subexpressions as cse
from aotml.graph.passes import run_pipeline, verify


def test_a_repeated_node_is_computed_once():
    g = graph_of("""\
        input x: f32[3]
        a = exp(x)
        b = exp(x)
        output y = a + b
    """)
    merged = cse(g)
    expect(merged, """
        graph m(%x: f32[3]) {
          %0: f32[3] = exp(%x)
          %1: f32[3] = add(%0, %0)
          return y=%1
        }
    """)
    verify(merged)
    assert_same_outputs(g, merged)


def test_equal_literals_are_one_value():
    g = graph_of("""\
        input x: f32[3]
        input y: f32[3]
        output z = x * 2 + y * 2.0 + x * 3
    """)
    expect(cse(g), """
        graph m(%x: f32[3], %y: f32[3]) {
          param %c0: f32[]
          param %c2: f32[]
          %0: f32[3] = mul(%x, %c0)
          %1: f32[3] = mul(%y, %c0)
          %2: f32[3] = add(%0, %1)
          %3: f32[3] = mul(%x, %c2)
          %4: f32[3] = add(%2, %3)
          return z=%4
        }
    """)


def test_merges_cascade_down_a_chain():
    # the second `* 2` reads the second exp and the second literal: equal only once both merged
    g = graph_of("""\
        input x: f32[3]
        a = tanh(exp(x) * 2)
        b = tanh(exp(x) * 2)
        output y = a - b
    """)
    merged = cse(g)
    expect(merged, """
        graph m(%x: f32[3]) {
          param %c0: f32[]
          %0: f32[3] = exp(%x)
          %1: f32[3] = mul(%0, %c0)
          %2: f32[3] = tanh(%1)
          %3: f32[3] = sub(%2, %2)
          return y=%3
        }
    """)
    assert_same_outputs(g, merged)


@pytest.mark.parametrize("a, b", [
    ("sum(x, axis=0)", "sum(x, axis=1)"),
    ("sum(x, axis=0, keepdims=true)", "sum(x, axis=0)"),
    ('cast(x, dtype="f16")', 'cast(x, dtype="bf16")'),
    ("softmax(x, axis=0)", "softmax(x, axis=1)"),
    ("x - e", "e - x"),  # operand order counts
])
def test_different_attributes_or_operands_are_not_merged(a, b):
    g = graph_of(f"""\
        input x: f32[3, 3]
        e = exp(x)
        output p = {a}
        output q = {b}
    """)
    before = text(g)
    assert text(cse(g)) == before


def test_an_omitted_default_equals_the_default_written_out():
    g = graph_of("""\
        input x: f32[3, 3]
        output p = softmax(x)
        output q = softmax(x, axis=-1)
    """)
    # a node built by a pass may leave a default out; it still matches the elaborated one
    p = g.nodes[0]
    g.nodes[0] = Node(p.op, p.inputs, (), p.result, p.span)
    assert [n.op for n in cse(g).nodes] == ["softmax"]
    # -1 and 1 name the same axis of a rank-2 tensor, but are different attributes: kept apart
    g2 = graph_of("input x: f32[3, 3]\noutput p = softmax(x, axis=1)\noutput q = softmax(x)\n")
    assert len(cse(g2).nodes) == 2


def test_merged_outputs_name_one_value_and_the_pipeline_copies_it():
    g = graph_of("""\
        input x: f32[3]
        output a = exp(x)
        output b = exp(x)
    """)
    merged = cse(g)
    expect(merged, """
        graph m(%x: f32[3]) {
          %0: f32[3] = exp(%x)
          return a=%0, b=%0
        }
    """)
    expect(run_pipeline(g, check=True), """
        graph m(%x: f32[3]) {
          %0: f32[3] = exp(%x)
          %1: f32[3] = copy(%0)
          return a=%0, b=%1
        }
    """)
    assert_same_outputs(g, merged)


def test_literals_of_another_dtype_or_value_stay_apart():
    g = graph_of("""\
        input x: f32[3]
        input h: f16[3]
        output y = x * 2 + x * 2.0000002 + cast(h * 2, dtype="f32")
    """)
    assert [p.value.name for p in cse(g).params] == ["c0", "c1", "c2"]


@pytest.mark.parametrize("n, merged", [(16, True), (17, False)])
def test_weights_up_to_64_bytes_merge(tmp_path, n, merged):
    ones = np.ones(n, np.float32)
    g = graph_with(tmp_path, f"""\
        input x: f32[{n}]
        param u: f32[{n}]
        param v: f32[{n}]
        output y = x * u + x * v
    """, u=ones, v=ones)
    out = cse(g)
    assert [p.value.name for p in out.params] == (["u"] if merged else ["u", "v"])
    assert len(out.nodes) == (2 if merged else 3)
    assert_same_outputs(g, out)


def test_weights_differing_in_one_bit_stay_apart(tmp_path):
    u = np.zeros(4, np.float32)
    g = graph_with(tmp_path, """\
        input x: f32[4]
        param u: f32[4]
        param v: f32[4]
        output y = x / u + x / v
    """, u=u, v=-u)  # 0.0 and -0.0 compare equal but divide differently
    out = cse(g)
    assert [p.value.name for p in out.params] == ["u", "v"]
    assert_same_outputs(g, out)


def test_the_input_graph_is_not_changed():
    g = graph_of("input x: f32[3]\noutput y = exp(x) * 2 + exp(x) * 2\n")
    nodes, params, outputs, before = list(g.nodes), list(g.params), list(g.outputs), text(g)
    cse(g)
    assert g.nodes == nodes and g.params == params and g.outputs == outputs
    assert text(g) == before


def test_same_outputs_on_random_inputs():
    g = graph_of("""\
        input x: f32[4, 3]
        input v: f32[3]
        a = softmax(x * 2 + v, axis=0)
        b = softmax(x * 2 + v, axis=1)
        c = softmax(x * 2 + v, axis=0)
        output y = a * b - c / 2
        output z = sum(x * 2 + v, axis=1)
    """)
    merged = cse(g)
    assert [n.op for n in merged.nodes] == [
        "mul", "add", "softmax", "softmax", "mul", "div", "sub", "sum"]
    assert_same_outputs(g, merged)
