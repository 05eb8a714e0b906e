"""The loader's fast call path: what it keeps between calls (pointer tables, workspaces, and the
plans of each set of input shapes) must never leak from one call into another. Results are
fresh, `out=` arrays are written in place, concurrent calls stay apart, symbolic dims rebind
at every size, and every check still refuses a bad call after good ones."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import aotml
from aotml.loader import _MAX_PLANS

# `y` needs a workspace (softmax's result), so concurrent calls sharing one would show
SYMBOLIC_SOURCE = """model w {
    dim N <= 64
    input x: f32[N, 3]
    input b: f32[3]
    output y = exp(softmax(x * 2 + b, axis=-1)) + 1
    output s = sum(x, axis=1)
}
"""

STATIC_SOURCE = """model p {
    input x: f32[5, 3]
    input b: f32[3]
    output y = exp(softmax(x * 2 + b, axis=-1)) + 1
    output s = sum(x, axis=1)
}
"""


# longer runs over a larger workspace, for the threads
HEAVY_SOURCE = """model h {
    input x: f32[2048, 3]
    input b: f32[3]
    output y = exp(softmax(x * 2 + b, axis=-1)) + 1
    output s = sum(x, axis=1)
}
"""


def _reference(x: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    h = x.astype(np.float64) * 2 + b
    e = np.exp(h - h.max(axis=-1, keepdims=True))
    return {"y": np.exp(e / e.sum(axis=-1, keepdims=True)) + 1, "s": x.sum(axis=1)}


def _assert_reference(got: dict, x: np.ndarray, b: np.ndarray) -> None:
    want = _reference(x, b)
    assert set(got) == {"y", "s"}
    for name in want:
        assert got[name].dtype == np.float32 and got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def _inputs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-2, 2, (n, 3)).astype(np.float32),
            rng.uniform(-2, 2, 3).astype(np.float32))


def _build(tmp_path_factory, source: str, name: str):
    folder = tmp_path_factory.mktemp(name)
    (folder / f"{name}.mlg").write_text(source)
    return aotml.load(aotml.build(folder / f"{name}.mlg", folder / f"{name}.so"))


@pytest.fixture(scope="module")
def symbolic(tmp_path_factory):
    return _build(tmp_path_factory, SYMBOLIC_SOURCE, "w")


@pytest.fixture(scope="module")
def static(tmp_path_factory):
    return _build(tmp_path_factory, STATIC_SOURCE, "p")


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    return _build(tmp_path_factory, HEAVY_SOURCE, "h")


def test_models_need_a_workspace(symbolic, static, heavy):
    """(So that the tests below would see calls sharing one.)"""
    assert symbolic.workspace_bytes > 0 and static.workspace_bytes > 0
    assert heavy.workspace_bytes >= 2048 * 3 * 4


# ---------------------------------------------------------------------------------------------
# fresh results and out=


@pytest.mark.parametrize("which", ["static", "symbolic"])
def test_repeated_calls_return_fresh_arrays(request, which):
    """Each call returns new arrays: the next call (same or other inputs) leaves them alone."""
    model = request.getfixturevalue(which)
    results = []
    for seed in range(6):
        x, b = _inputs(seed, 5)
        got = model(x=x, b=b)
        results.append((got, {k: v.copy() for k, v in got.items()}, x, b))
    for got, copy, x, b in results:
        for name in got:
            np.testing.assert_array_equal(got[name], copy[name])
            assert got[name].flags.owndata and got[name].flags.writeable
        _assert_reference(got, x, b)
    arrays = [a for got, *_ in results for a in got.values()]
    assert len({id(a) for a in arrays}) == len(arrays)
    assert not any(np.shares_memory(a, c) for i, a in enumerate(arrays) for c in arrays[:i])


@pytest.mark.parametrize("which", ["static", "symbolic"])
def test_out_arrays_are_written_in_place_at_every_call(request, which):
    """An `out=` array is returned as itself and holds the latest call's result; the outputs
    not in `out=` are fresh at every call."""
    model = request.getfixturevalue(which)
    y = np.full((5, 3), np.nan, np.float32)
    earlier_s = []
    for seed in range(4):
        x, b = _inputs(10 + seed, 5)
        got = model(x=x, b=b, out={"y": y})
        assert got["y"] is y
        _assert_reference(got, x, b)
        earlier_s.append((got["s"], x.sum(axis=1)))
    for s, want in earlier_s:
        np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-5)
    assert len({id(s) for s, _ in earlier_s}) == 4


def test_out_for_every_output_and_run(static):
    """`out=` for all outputs, through both `model(...)` and `model.run(...)`."""
    x, b = _inputs(20, 5)
    y, s = np.empty((5, 3), np.float32), np.empty(5, np.float32)
    got = static(x=x, b=b, out={"y": y, "s": s})
    assert got["y"] is y and got["s"] is s
    _assert_reference(got, x, b)
    x, b = _inputs(21, 5)
    got = static.run({"x": x, "b": b}, {"y": y, "s": s})
    assert got["y"] is y and got["s"] is s
    _assert_reference(got, x, b)
    _assert_reference(static.run({"x": x, "b": b}), x, b)


def test_input_named_out(tmp_path_factory):
    """A model with an input named `out` takes the keyword as that input, call after call."""
    model = _build(tmp_path_factory, "model o {\n    input out: f32[2]\n"
                   "    output y = out * 2\n}\n", "o")
    for k in range(3):
        v = np.array([k, k + 0.5], np.float32)
        np.testing.assert_array_equal(model(out=v)["y"], v * 2)
    with pytest.raises(aotml.RunError, match="missing input 'out'"):
        model()


def test_ndarray_subclass_and_mapping_out(static):
    """Arrays of an ndarray subclass, and an `out=` that is a mapping but not a dict, still
    work (the checked path takes them)."""

    class Sub(np.ndarray):
        pass

    class Outs(dict):
        pass

    x, b = _inputs(22, 5)
    s = np.empty(5, np.float32).view(Sub)
    got = static(x=x.view(Sub), b=b, out=Outs(s=s))
    assert got["s"] is s
    _assert_reference({k: np.asarray(v) for k, v in got.items()}, x, b)


# ---------------------------------------------------------------------------------------------
# symbolic dims


def test_symbolic_sizes_change_between_calls(symbolic):
    """N changes from call to call, and comes back to sizes seen before: every result (shape
    and values) is that of its own inputs."""
    for k, n in enumerate([1, 5, 64, 5, 2, 1, 64, 33, 2]):
        x, b = _inputs(30 + k, n)
        got = symbolic(x=x, b=b)
        assert got["y"].shape == (n, 3) and got["s"].shape == (n,)
        _assert_reference(got, x, b)


def test_symbolic_out_follows_the_size(symbolic):
    """`out=` arrays are checked against the shape of this call's N."""
    for n in (4, 7, 4):
        x, b = _inputs(40 + n, n)
        s = np.empty(n, np.float32)
        got = symbolic(x=x, b=b, out={"s": s})
        assert got["s"] is s
        _assert_reference(got, x, b)
    x, b = _inputs(41, 4)
    with pytest.raises(aotml.RunError) as info:
        symbolic(x=x, b=b, out={"s": np.empty(7, np.float32)})
    assert str(info.value) == "w: output 's' has shape (7,), expected (4,)"


def test_symbolic_checks_after_good_calls(symbolic):
    """A size seen before does not skip the checks: bad shapes are still refused."""
    x, b = _inputs(50, 3)
    symbolic(x=x, b=b)
    with pytest.raises(aotml.RunError, match=r"above the bound of N \(64\)"):
        symbolic(x=np.zeros((65, 3), np.float32), b=b)
    with pytest.raises(aotml.RunError) as info:
        symbolic(x=np.zeros((3, 4), np.float32), b=b)
    assert str(info.value) == "w: input 'x' has shape (3, 4), expected (N, 3)"
    with pytest.raises(aotml.RunError, match="must be at least 1"):
        symbolic(x=np.zeros((0, 3), np.float32), b=b)
    _assert_reference(symbolic(x=x, b=b), x, b)


def test_many_sizes_of_an_unbounded_symbol(tmp_path_factory):
    """More sizes than the loader keeps plans for: old ones are dropped and remade."""
    model = _build(tmp_path_factory, "model u {\n    input x: f32[N]\n"
                   "    output y = softmax(x, axis=0) + x\n}\n", "u")
    rng = np.random.default_rng(60)
    for n in [*range(1, _MAX_PLANS + 40), 1, 7, 300]:
        x = rng.uniform(-2, 2, n).astype(np.float32)
        e = np.exp(x.astype(np.float64) - x.max())
        np.testing.assert_allclose(model(x=x)["y"], e / e.sum() + x, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# threads


def _hammer(work, n_threads: int = 4) -> list[str]:
    """Run work(k, failures) on `n_threads` threads started together; the failures."""
    barrier = threading.Barrier(n_threads)
    failures: list[str] = []

    def run(k: int) -> None:
        try:
            barrier.wait()
            work(k, failures)
        except Exception as e:  # noqa: BLE001 - reported by the test
            failures.append(f"thread {k}: {e!r}")

    # (daemon threads: one stuck in C fails the test without keeping the process alive)
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    return failures


@pytest.mark.parametrize("which", ["static", "heavy", "symbolic"])
def test_threads_calling_one_model(request, which):
    """4 threads call one model at once, each on its own inputs (and, with symbols, its own
    sizes): every result is that of its own inputs, as numpy computes it."""
    model = request.getfixturevalue(which)
    sizes = {"static": [5] * 4, "heavy": [2048] * 4, "symbolic": [1, 5, 17, 64]}[which]
    sets = [[_inputs(100 + 10 * k + j, sizes[(k + j) % 4]) for j in range(4)] for k in range(4)]
    wants = [[_reference(x, b) for x, b in s] for s in sets]

    def work(k: int, failures: list[str]) -> None:
        for c in range(200):
            x, b = sets[k][c % 4]
            got = model(x=x, b=b)
            for name, want in wants[k][c % 4].items():
                if got[name].shape != want.shape or \
                        not np.allclose(got[name], want, rtol=1e-5, atol=1e-5):
                    failures.append(f"thread {k} call {c} output {name}")

    assert _hammer(work) == []


def test_threads_with_out_arrays(static):
    """Threads that each pass their own `out=` array get their own results in it."""
    sets = [_inputs(200 + k, 5) for k in range(4)]

    def work(k: int, failures: list[str]) -> None:
        y = np.empty((5, 3), np.float32)
        x, b = sets[k]
        want = _reference(x, b)
        for c in range(200):
            got = static(x=x, b=b, out={"y": y})
            if got["y"] is not y or not np.allclose(y, want["y"], rtol=1e-5, atol=1e-5) \
                    or not np.allclose(got["s"], want["s"], rtol=1e-5, atol=1e-5):
                failures.append(f"thread {k} call {c}")

    assert _hammer(work) == []


def test_threads_mixing_good_and_bad_calls(static):
    """Refused calls in some threads do not disturb good calls in others."""
    x, b = _inputs(300, 5)
    want = _reference(x, b)

    def work(k: int, failures: list[str]) -> None:
        for c in range(200):
            if k % 2:
                try:
                    static(x=x.astype(np.float64), b=b)
                    failures.append(f"thread {k} call {c}: no error")
                except aotml.RunError as e:
                    if "input 'x' has dtype float64" not in str(e):
                        failures.append(f"thread {k} call {c}: {e}")
            else:
                got = static(x=x, b=b)
                if not np.allclose(got["y"], want["y"], rtol=1e-5, atol=1e-5):
                    failures.append(f"thread {k} call {c}")

    assert _hammer(work) == []


# ---------------------------------------------------------------------------------------------
# the checks, after good calls


def test_every_check_still_refuses_after_good_calls(static):
    """After calls that took the fast path, each kind of bad call gets the checked path's
    message, and leaves the model usable."""
    x, b = _inputs(400, 5)
    for _ in range(3):
        static(x=x, b=b)
    read_only = np.zeros(5, np.float32)
    read_only.setflags(write=False)
    bad_calls = [
        (dict(x=x.astype(np.float64), b=b),
         "p: input 'x' has dtype float64, expected float32"),
        (dict(x=x[:4], b=b), "p: input 'x' has shape (4, 3), expected (5, 3)"),
        (dict(x=np.ascontiguousarray(x.T).T, b=b),
         "p: input 'x' is not C-contiguous; pass np.ascontiguousarray(...)"),
        (dict(x=x), "p: missing input 'b' (float32[3])"),
        (dict(x=x, b=b, z=b), "p: unknown input(s) z; it takes x, b"),
        (dict(x=x, b=[1.0, 2.0, 3.0]), "p: input 'b' must be a numpy array, got list"),
        (dict(x=x, b=b, out={"q": b}), "p: unknown output(s) q in out="),
        (dict(x=x, b=b, out={"s": read_only}), "p: output 's' is read-only"),
        (dict(x=x, b=b, out={"s": np.zeros(5, np.float64)}),
         "p: output 's' has dtype float64, expected float32"),
        (dict(x=x, b=b, out={"s": np.zeros(10, np.float32)[::2]}),
         "p: output 's' is not C-contiguous; pass np.ascontiguousarray(...)"),
        (dict(x=x, b=b, out={"s": None}), "p: missing output 's' (float32[5])"),
        (dict(x=x, b=b, out={"y": x}), "p: output 'y' overlaps input 'x'"),
    ]
    for arrays, message in bad_calls:
        with pytest.raises(aotml.RunError) as info:
            static(**arrays)
        assert message in str(info.value), (message, str(info.value))
        _assert_reference(static(x=x, b=b), x, b)
    assert not read_only.any()
