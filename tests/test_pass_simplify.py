"""simplify on IR text: each rule, what must not be rewritten, and that outputs do not change.

The expected texts are after `eliminate_dead_code`, which removes what a rewrite left unused
(a rewritten node itself is gone either way: its uses now read the replacement).
"""

from __future__ import annotations

import numpy as np
import pytest
from passcheck import assert_same_outputs, graph_with
from test_passes import expect, graph_of, text

from aotml.graph.passes import eliminate_dead_code, run_pipeline, simplify, verify
from aotml.graph.passes.simplify import RULES


def simplified(g):
    out = simplify(g)
    verify(out)
    assert_same_outputs(g, out)
    return eliminate_dead_code(out)


@pytest.mark.parametrize("expr", [
    "x * 1", "1 * x", "x * 1.0", "x + 0", "0 + x", "x - 0", "x / 1", "x * 1 * 1",
    "neg(neg(x))", "- -x", "- - - -x", 'cast(x, dtype="f32")', "reshape(x, shape=3)",
    "((x * 1) + 0) / 1 - 0", "neg(neg(x * 1)) + 0",
])
def test_identities_reduce_to_x(expr):
    g = graph_of(f"input x: f32[3]\noutput y = exp({expr})\n")
    expect(simplified(g), """
        graph m(%x: f32[3]) {
          %0: f32[3] = exp(%x)
          return y=%0
        }
    """)


@pytest.mark.parametrize("expr", ["x * 1", "1 * x", "x + 0", "0 + x", "x - 0", "neg(neg(x))",
                                  'cast(x, dtype="i32")'])
def test_integer_identities_reduce_to_x(expr):
    g = graph_of(f"input x: i32[3]\noutput y = relu({expr})\n")
    expect(simplified(g), """
        graph m(%x: i32[3]) {
          %0: i32[3] = relu(%x)
          return y=%0
        }
    """)


@pytest.mark.parametrize("expr", [
    "x * 1.0000001", "x * 0.9999999", "x * 2", "x * 0", "x + 1", "0 - x", "1 / x", "x - 1",
    "neg(x)", "neg(exp(neg(x)))", 'cast(x, dtype="f16")', "reshape(x, shape=(3, 1))",
    "copy(x)", "copy(copy(x))",
])
def test_what_is_not_an_identity_stays(expr):
    g = graph_of(f"input x: f32[3]\noutput y = exp({expr})\n")
    before = text(g)
    assert text(simplify(g)) == before


def test_a_narrow_literal_is_judged_as_stored():
    # 1.0000001 rounds to 1 in f16 (not in f32, above): the product is then x itself
    g = graph_of("input x: f16[3]\noutput y = exp(x * 1.0000001)\n")
    assert g.params[0].data == 1
    expect(simplified(g), """
        graph m(%x: f16[3]) {
          %0: f16[3] = exp(%x)
          return y=%0
        }
    """)


@pytest.mark.parametrize("x_shape, ones_shape, rewritten", [
    ((3,), (3,), True),        # an all-ones tensor of x's own shape: x * ones is x
    ((2, 3), (3,), True),      # ones broadcast to x's shape: still x
    ((3,), (2, 3), False),     # ones broadcast x to [2, 3]: the product is not x
    ((3,), (1,), True),
    ((1,), (3,), False),
])
def test_a_splat_param_is_a_unit_only_where_the_type_stays(tmp_path, x_shape, ones_shape,
                                                           rewritten):
    dims = lambda s: ", ".join(map(str, s))  # noqa: E731
    g = graph_with(tmp_path, f"""\
        input x: f32[{dims(x_shape)}]
        param ones: f32[{dims(ones_shape)}]
        output y = exp(x * ones) + exp(ones * x)
    """, ones=np.ones(ones_shape, np.float32))
    ops = [n.op for n in simplified(g).nodes]
    assert ops == (["exp", "exp", "add"] if rewritten else ["mul", "exp", "mul", "exp", "add"])


def test_a_param_with_one_element_not_one_is_not_a_unit(tmp_path):
    w = np.ones(4, np.float32)
    w[3] = 1.0000001
    g = graph_with(tmp_path, """\
        input x: f32[4]
        param w: f32[4]
        output y = x / w
    """, w=w)
    assert text(simplify(g)) == text(g)


def test_transposes_compose_into_one():
    g = graph_of("""\
        input x: f32[2, 3, 4]
        a = transpose(x, perm=(1, 0, 2))
        output y = exp(transpose(a, perm=(0, 2, 1)))
    """)
    expect(simplified(g), """
        graph m(%x: f32[2, 3, 4]) {
          %0: f32[3, 4, 2] = transpose(%x, perm=(1, 2, 0))
          %1: f32[3, 4, 2] = exp(%0)
          return y=%1
        }
    """)


@pytest.mark.parametrize("p, q", [
    ("(1, 2, 0)", "(2, 0, 1)"),
    ("(2, 1, 0)", "(2, 1, 0)"),
    ("(-1, 0, 1)", "(1, 2, 0)"),   # negative axes count from the end
    (None, None),                  # no perm reverses the axes: twice is the identity
    ("(2, 1, 0)", None),
])
def test_transposes_composing_to_the_identity_are_x(p, q):
    perm = lambda s: f", perm={s}" if s else ""  # noqa: E731
    g = graph_of(f"""\
        input x: f32[2, 3, 4]
        output y = exp(transpose(transpose(x{perm(p)}){perm(q)}))
    """)
    expect(simplified(g), """
        graph m(%x: f32[2, 3, 4]) {
          %0: f32[2, 3, 4] = exp(%x)
          return y=%0
        }
    """)


def test_a_chain_of_transposes_is_one():
    g = graph_of("""\
        input x: f32[2, 3, 4, 5]
        output y = transpose(transpose(transpose(x, perm=(1, 0, 2, 3)), perm=(0, 2, 1, 3)),
                             perm=(0, 1, 3, 2))
    """)
    expect(simplified(g), """
        graph m(%x: f32[2, 3, 4, 5]) {
          %0: f32[3, 4, 5, 2] = transpose(%x, perm=(1, 2, 3, 0))
          return y=%0
        }
    """)


def test_a_transpose_read_elsewhere_stays_for_its_other_use():
    g = graph_of("""\
        input x: f32[2, 3]
        a = transpose(x)
        output y = transpose(a) + 1
        output z = a
    """)
    expect(simplified(g), """
        graph m(%x: f32[2, 3]) {
          param %c0: f32[]
          %0: f32[3, 2] = transpose(%x, perm=())
          %1: f32[2, 3] = add(%x, %c0)
          return y=%1, z=%0
        }
    """)


def test_reshapes_collapse_into_one():
    g = graph_of("""\
        input x: f32[2, 3, 4]
        output y = exp(reshape(reshape(reshape(x, shape=(6, 4)), shape=-1), shape=(4, -1)))
    """)
    expect(simplified(g), """
        graph m(%x: f32[2, 3, 4]) {
          %0: f32[4, 6] = reshape(%x, shape=(4, -1))
          %1: f32[4, 6] = exp(%0)
          return y=%1
        }
    """)


def test_reshapes_back_to_the_input_shape_are_x():
    g = graph_of("""\
        input x: f32[2, 3, 4]
        output y = exp(reshape(reshape(x, shape=(6, 4)), shape=(2, 3, 4)))
    """)
    expect(simplified(g), """
        graph m(%x: f32[2, 3, 4]) {
          %0: f32[2, 3, 4] = exp(%x)
          return y=%0
        }
    """)


def test_an_output_that_becomes_an_input_is_copied_by_the_pipeline():
    g = graph_of("input x: f32[3]\noutput y = x * 1\noutput z = neg(neg(x))\n")
    expect(run_pipeline(g, check=True), """
        graph m(%x: f32[3]) {
          %0: f32[3] = copy(%x)
          %1: f32[3] = copy(%x)
          return y=%0, z=%1
        }
    """)


def test_the_rules_are_a_table():
    g = graph_of("input x: f32[3]\noutput y = relu(relu(x * 1))\n")
    assert text(simplify(g, rules={})) == text(g)

    def relu_of_relu(node, ctx):
        inner = ctx.producer(node.inputs[0])
        return inner.result if inner is not None and inner.op == "relu" else None

    expect(eliminate_dead_code(simplify(g, rules={**RULES, "relu": (relu_of_relu,)})), """
        graph m(%x: f32[3]) {
          %0: f32[3] = relu(%x)
          return y=%0
        }
    """)


def test_rules_run_to_a_fixpoint():
    def neg_of_sub(node, ctx):  # -(a - b) is b - a, which another rule may then simplify
        inner = ctx.producer(node.inputs[0])
        if inner is None or inner.op != "sub":
            return None
        return ctx.make("sub", inner.inputs[::-1], {}, like=node)

    # -(0 - x) becomes x - 0, a node made after the sweep passed the sub rules: the next one
    # reduces it to x
    g = graph_of("input x: f32[3]\noutput y = exp(neg(0 - x))\n")
    expect(eliminate_dead_code(simplify(g, rules={**RULES, "neg": (neg_of_sub,)})), """
        graph m(%x: f32[3]) {
          %0: f32[3] = exp(%x)
          return y=%0
        }
    """)


def test_the_input_graph_is_not_changed():
    g = graph_of("input x: f32[2, 3]\noutput y = transpose(transpose(x * 1), perm=(0, 1))\n")
    nodes, params, outputs, before = list(g.nodes), list(g.params), list(g.outputs), text(g)
    simplify(g)
    assert g.nodes == nodes and g.params == params and g.outputs == outputs
    assert text(g) == before


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_same_outputs_on_random_inputs(dtype):
    g = graph_of(f"""\
        input x: {dtype}[2, 3, 4]
        input v: {dtype}[4]
        a = transpose(transpose(x * 1, perm=(2, 0, 1)), perm=(0, 2, 1))
        b = reshape(reshape(a / 1 - 0, shape=(8, 3)), shape=(4, 6))
        c = cast(neg(neg(b)), dtype="{dtype}") + 0
        output y = softmax(c, axis=0)
        output z = x * 1.0000001 + v * 1 - transpose(transpose(x))
        output w = 0 + x
    """)
    out = simplify(g)
    assert len(out.nodes) < len(g.nodes)
    verify(out)
    assert_same_outputs(g, out)
