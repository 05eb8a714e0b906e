"""Run-time checks (loop-IR Assert): a failing check stops the run with a located message."""

from __future__ import annotations

import numpy as np
import pytest

import aotml
from aotml.graph.ir import TensorType
from aotml.loops.build import const, loop_nest, store
from aotml.loops.ir import Assert, Compare
from aotml.ops.registry import REGISTRY, OpDef


@pytest.fixture
def checked_op():
    """A test-only op `positive(x)`: copies x, failing at run time on a value <= 0."""

    def lower(out, ins, attrs, names):
        def body(i):
            v = ins[0].load(i)
            return [Assert(Compare("gt", v, const(0, "f32")), "value must be positive"),
                    store(out, i, v)]
        return loop_nest(out.shape, names, body)

    op = OpDef("positive", 1, "elementwise", (), lambda t, a: TensorType("f32", t[0].shape),
               lambda xs, a: xs[0], lower, "test only", "positive(x)")
    REGISTRY["positive"] = op
    yield op
    del REGISTRY["positive"]


def test_failing_check_is_a_located_run_error(checked_op, build_model):
    m = build_model("model m {\n  input x: f32[5]\n  output y = positive(x) * 2\n}\n")
    x = np.array([1, 2, 3, 4, 5], np.float32)
    np.testing.assert_array_equal(m(x=x)["y"], x * 2)
    x[3] = -1
    with pytest.raises(aotml.RunError) as e:
        m(x=x)
    assert f"value must be positive in 'positive' at {m.source_path}:3:14" in str(e.value)
    np.testing.assert_array_equal(m(x=np.ones(5, np.float32) * 3)["y"], 6)  # still usable
