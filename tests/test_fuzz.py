"""Differential fuzzing: random valid models compiled to a real .so and compared with the float64
reference interpreter (the generator and runner are in fuzz_graphs.py), and the replay of every
saved reproducer in tests/fuzz_regressions/.

The hypothesis test (200 graphs) is derandomized, so CI runs the same graphs every time; a
failure is shrunk (fewer steps, simpler seeds, then fewer outputs) and the smallest failing graph
is saved to tests/fuzz_regressions/, from where `test_saved_reproducer` replays it on every run.
One more graph per registered op is drawn around that op, so every op is checked on every run.
Another 50 graphs are symbolized (some input dims become a run-time symbol N; see
`fuzz_graphs.symbolize`): each is refused with a CompileError, or built once and checked at its
original sizes and at others. For a long run (a quarter of the graphs symbolized; `--symbolic 1`
for all):

    python tests/fuzz_graphs.py --graphs 5000 [--seed N] [--jobs 2] [--symbolic P]
"""

from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path

import fuzz_graphs as fz
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context

from aotml import ops

GRAPHS = 200  # ~0.2 s each on the 2-core CI machine; test_random_graph_around_each_op adds one
#               graph per op
SYMBOLIC_GRAPHS = 50  # two thirds compile (~0.45 s each, run at up to 4 sizes), the rest are
#                       refused at once: ~18 s in all

SEEDS = st.integers(0, 2**32 - 1)
SPECS = st.builds(fz.GraphSpec, seed=SEEDS,
                  steps=st.lists(SEEDS, min_size=1, max_size=fz.MAX_STEPS).map(tuple))


@settings(max_examples=GRAPHS, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS)
def test_compiled_graph_matches_interpreter(spec):
    """A random valid graph builds, runs, and matches the float64 reference."""
    with tempfile.TemporaryDirectory(prefix="aotml-fuzz-") as tmp:
        g, failure = fz.run_spec(spec, Path(tmp))
    if failure is None:
        return
    saved = ""
    if current_build_context().is_final:  # the shrunk example: keep it as a regression
        g, failure = fz.shrink_outputs(g, failure)
        saved = f"\nsaved as {fz.save_reproducer(g, failure, f'tests/test_fuzz.py: {spec}')}"
    raise AssertionError(f"{failure}\n{g.source()}{saved}")


@pytest.mark.parametrize("op", sorted(set(ops.REGISTRY) - fz.SKIPPED_OPS))
def test_random_graph_around_each_op(op, tmp_path):
    """One random graph per registered op, drawn with that op far more often than the rest:
    every op is compiled and checked inside a graph on every run, however rare the random draws
    make it. An op the generator cannot draw (operands or attributes it cannot satisfy) fails
    here: extend related_shape / draw_attr in fuzz_graphs.py, or GUARDS for its domain."""
    seeds = (zlib.crc32(op.encode()) + k for k in range(40))
    spec = next((s for s in (fz.GraphSpec.from_seed(k, focus=op) for k in seeds)
                 if op in fz.generate(s).ops()), None)
    if spec is None:
        pytest.fail(f"the generator drew no graph with '{op}' in 40 tries")
    g, failure = fz.run_spec(spec, tmp_path)
    if failure is not None:
        spec, failure = fz.shrink(spec, failure)
        g, failure = fz.shrink_outputs(fz.generate(spec), failure)
        saved = fz.save_reproducer(g, failure, f"tests/test_fuzz.py: {spec}")
        raise AssertionError(f"{failure}\n{g.source()}\nsaved as {saved}")


@settings(max_examples=SYMBOLIC_GRAPHS, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS)
def test_symbolized_graph_matches_interpreter(spec):
    """A random graph with input dims made symbolic is refused with a CompileError, or builds
    once and matches the float64 reference at its original sizes and at others."""
    g = fz.symbolize(fz.generate(spec))
    if g is None:
        return
    with tempfile.TemporaryDirectory(prefix="aotml-fuzz-") as tmp:
        failure = fz.run_symbolic(g, Path(tmp)).failure
    if failure is None:
        return
    saved = ""
    if current_build_context().is_final:
        g, failure = fz.shrink_outputs(g, failure)
        saved = f"\nsaved as {fz.save_reproducer(g, failure, f'tests/test_fuzz.py: {spec}')}"
        _, static = fz.run_spec(spec)
        if static is not None:
            saved += f"\n(the static graph fails too: {static})"
    raise AssertionError(f"{failure}\n{g.source()}{saved}")


def test_symbolize_is_a_pure_function_of_the_graph():
    """Same graph, same symbolized source and runs; its first run is the original graph on
    the original arrays, the others differ in size; params stay static."""
    made = 0
    for seed in range(30):
        g = fz.generate(fz.GraphSpec.from_seed(seed))
        s = fz.symbolize(g)
        if s is None:
            continue
        made += 1
        assert fz.symbolize(g).source() == s.source() and fz.symbolize(g).runs == s.runs
        assert s.concrete().source() == g.source()
        assert all(leaf.type.is_static for leaf in s.params)
        a, b = g.inputs(), s.inputs()
        assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
        assert len(set(map(str, s.runs))) == len(s.runs)
        assert all(1 <= v <= (s.dims.get(k) or v) for k, v in s.runs[0].items())
    assert made >= 25


def test_symbolic_reproducer_records_its_sizes(tmp_path):
    """A symbolized graph's reproducer keeps the inputs of the run that failed, and replays
    them on the symbolic source (here a graph that passes: the replay passes too)."""
    spec = next(s for s in map(fz.GraphSpec.from_seed, range(100))
                if (g := fz.symbolize(fz.generate(s))) is not None and len(g.runs) > 1
                and not any(leaf.index_bound for leaf in g.leaves)
                and fz.run_symbolic(g, tmp_path).checked == len(g.runs))
    g = fz.symbolize(fz.generate(spec))
    at = g.runs[1]
    failure = fz.Failure("mismatch", "pretend", at=at, inputs=g.inputs(at))
    mlg = fz.save_reproducer(g, failure, "test", tmp_path / "saved")
    meta = json.loads(mlg.with_suffix(".json").read_text())
    assert meta["symbolic"] == at
    assert {k: tuple(v) for k, v in meta["shapes"].items()} == \
        {k: a.shape for k, a in g.inputs(at).items()}
    assert fz.replay(mlg, tmp_path) is None


def test_graph_is_a_pure_function_of_its_spec():
    """Same spec, same source, weights and inputs: what makes shrinking and replay work."""
    spec = fz.GraphSpec.from_seed(7)
    a, b = fz.generate(spec), fz.generate(spec)
    assert a.source() == b.source()
    for x, y in [(a.inputs(), b.inputs()), (a.weights(), b.weights())]:
        assert x.keys() == y.keys()
        assert all(x[k].tobytes() == y[k].tobytes() for k in x)


def _reproducers() -> list:
    cases = []
    for mlg in fz.reproducers():
        meta = json.loads(mlg.with_suffix(".json").read_text())
        marks = [pytest.mark.xfail(strict=True, reason=meta["xfail"])] if meta.get("xfail") else []
        name = mlg.parent.name if mlg.stem == "source" else mlg.stem
        cases.append(pytest.param(mlg, id=name, marks=marks))
    return cases


@pytest.mark.parametrize("mlg", _reproducers())
def test_saved_reproducer(mlg, tmp_path):
    """A graph (or source) that once failed passes now; known bugs are strict xfails."""
    problem = fz.replay(mlg, tmp_path)
    assert problem is None, f"{mlg.name}: {problem}"
