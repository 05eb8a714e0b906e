"""Helpers shared by the graph-pass tests: graphs from .mlg text, and a check that a pass
changed no output."""

from __future__ import annotations

import textwrap

import numpy as np

from aotml.frontend import parse
from aotml.graph.elaborate import elaborate
from aotml.graph.interpret import interpret_graph


def graph_with(tmp_path, body: str, **weights):
    """A model over `weights` (saved beside it as w.npz), elaborated to a graph."""
    np.savez(tmp_path / "w.npz", **weights)
    src = 'weights "w.npz"\nmodel m {\n' + textwrap.dedent(body) + "}\n"
    return elaborate(parse(src, str(tmp_path / "t.mlg")))


def assert_same_outputs(before, after, seeds=(0, 1, 2)) -> None:
    """Both graphs compute bit-identical outputs (NaN equal to NaN) on random inputs."""
    for seed in seeds:
        rng = np.random.default_rng(seed)
        arrays = {v.name: rng.uniform(-2, 2, v.type.shape).astype(v.type.np_dtype)
                  for v in before.inputs}
        want, got = interpret_graph(before, arrays), interpret_graph(after, arrays)
        assert list(want) == list(got)
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
            assert np.array_equal(got[name].astype(np.float64), want[name].astype(np.float64),
                                  equal_nan=True), name
