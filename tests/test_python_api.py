"""The Python API: a loaded model's metadata, calls with numpy arrays, `out=`, the errors a bad
call or a bad file raises, and calls from several threads at once."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import aotml
from conftest import ABI_MODEL_SOURCE, rand

RTOL = 1e-5
ATOL = 1e-6

SOURCE = ABI_MODEL_SOURCE


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Model `m` built once for the module; `.source_path` is its source."""
    folder = tmp_path_factory.mktemp("m")
    rng = np.random.default_rng(4321)
    np.savez(folder / "weights.npz", w=rand(rng, (7, 7), -1.0, 1.0))
    src = folder / "m.mlg"
    src.write_text(SOURCE)
    loaded = aotml.load(aotml.build(src, folder / "m.so"))
    loaded.source_path = src
    return loaded


def _inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rand(rng, (3, 7)), "y": rand(rng, (7,))}


def _assert_matches_reference(model, inputs: dict, got: dict) -> None:
    ref = aotml.interpret(model.source_path, **inputs)
    assert set(got) == set(ref) == {"s", "t"}
    for name, want in ref.items():
        assert got[name].dtype == np.float32 and got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name], want, rtol=RTOL, atol=ATOL, err_msg=name)


# ---------------------------------------------------------------------------------------------
# metadata and results


def test_metadata(model):
    """`.inputs`/`.outputs` give names, numpy dtype strings, shape tuples and byte sizes."""
    assert model.name == "m"
    assert [(t.name, t.dtype, t.shape, t.nbytes) for t in model.inputs] == [
        ("x", "float32", (3, 7), 84), ("y", "float32", (7,), 28)]
    assert [(t.name, t.dtype, t.shape, t.nbytes) for t in model.outputs] == [
        ("s", "float32", (3, 7), 84), ("t", "float32", (7,), 28)]
    assert all(type(t.shape) is tuple for t in (*model.inputs, *model.outputs))
    assert all(type(d) is int for t in model.inputs for d in t.shape)
    assert model.workspace_bytes > 0
    assert re.fullmatch(r"[0-9a-f]{64}", model.build_hash), model.build_hash
    assert model.aotml_version == aotml.__version__


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_results_match_interpreter(model, seed):
    """A call on fresh random inputs returns the reference interpreter's outputs."""
    inputs = _inputs(seed)
    _assert_matches_reference(model, inputs, model(**inputs))


def test_inputs_are_not_modified_and_results_are_fresh(model):
    """A call leaves its inputs alone, and a second call does not overwrite the first's
    results."""
    a, b = _inputs(11), _inputs(12)
    a_copy = {k: v.copy() for k, v in a.items()}
    first = model(**a)
    first_copy = {k: v.copy() for k, v in first.items()}
    second = model(**b)
    for k in a:
        np.testing.assert_array_equal(a[k], a_copy[k])
    for k in first:
        assert first[k] is not second[k]
        np.testing.assert_array_equal(first[k], first_copy[k])
    assert not np.array_equal(first["s"], second["s"])


def test_out_writes_into_caller_arrays(model):
    """`out=` arrays are filled in place and returned as the very same objects."""
    inputs = _inputs(21)
    s = np.full((3, 7), np.nan, np.float32)
    t = np.full((7,), np.nan, np.float32)
    got = model(out={"s": s, "t": t}, **inputs)
    assert got["s"] is s and got["t"] is t
    _assert_matches_reference(model, inputs, {"s": s, "t": t})


def test_out_for_some_outputs(model):
    """An `out=` for one output fills it; the other output is a fresh array."""
    inputs = _inputs(22)
    t = np.full((7,), np.nan, np.float32)
    got = model(out={"t": t}, **inputs)
    assert got["t"] is t
    assert got["s"].shape == (3, 7)
    _assert_matches_reference(model, inputs, got)


# ---------------------------------------------------------------------------------------------
# bad calls


def _call_error(model, out=None, **arrays) -> str:
    with pytest.raises(aotml.RunError) as info:
        model(out=out, **arrays)
    return str(info.value)


def test_wrong_dtype(model):
    """A float64 input is refused, naming the input and both dtypes."""
    inputs = _inputs(31)
    message = _call_error(model, x=inputs["x"].astype(np.float64), y=inputs["y"])
    assert "input 'x'" in message and "float64" in message and "float32" in message


def test_wrong_shape(model):
    """An input of the wrong shape is refused, naming it and both shapes."""
    inputs = _inputs(32)
    message = _call_error(model, x=inputs["x"], y=rand(np.random.default_rng(0), (1, 7)))
    assert "input 'y'" in message and "(1, 7)" in message and "(7,)" in message


def test_non_contiguous_input(model):
    """A transposed view (right shape, not C-contiguous) is refused, naming the input."""
    x_t = rand(np.random.default_rng(33), (7, 3)).T
    assert x_t.shape == (3, 7) and not x_t.flags.c_contiguous
    message = _call_error(model, x=x_t, y=_inputs(33)["y"])
    assert "input 'x'" in message and "contiguous" in message


def test_missing_input(model):
    """Leaving out an input is an error naming it."""
    message = _call_error(model, x=_inputs(34)["x"])
    assert "missing input 'y'" in message


def test_unknown_input(model):
    """An input name the model does not take is an error naming it."""
    inputs = _inputs(35)
    message = _call_error(model, z=inputs["y"], **inputs)
    assert "unknown input" in message and "z" in message


def test_list_instead_of_array(model):
    """A Python list (even of the right size) is refused, naming the input."""
    inputs = _inputs(36)
    message = _call_error(model, x=inputs["x"], y=inputs["y"].tolist())
    assert "input 'y'" in message and "numpy array" in message and "list" in message


def test_read_only_output(model):
    """A read-only array in `out=` is refused, naming the output, and is left unchanged."""
    s = np.zeros((3, 7), np.float32)
    s.setflags(write=False)
    message = _call_error(model, out={"s": s}, **_inputs(37))
    assert "output 's'" in message and "read-only" in message
    assert not s.any()


def test_out_of_wrong_shape_and_unknown_name(model):
    """`out=` arrays are checked like inputs: wrong shape names the output; unknown names too."""
    inputs = _inputs(38)
    message = _call_error(model, out={"t": np.zeros((3, 7), np.float32)}, **inputs)
    assert "output 't'" in message and "(3, 7)" in message
    message = _call_error(model, out={"u": np.zeros((7,), np.float32)}, **inputs)
    assert "unknown output" in message and "u" in message


def test_out_overlapping_input(model):
    """An `out=` array that is an input's memory is refused by the runtime's overlap check."""
    inputs = _inputs(39)
    x_before = inputs["x"].copy()
    message = _call_error(model, out={"s": inputs["x"]}, **inputs)
    assert "output 's' overlaps input 'x'" in message
    np.testing.assert_array_equal(inputs["x"], x_before)


def test_call_after_error_succeeds(model):
    """A failed call leaves the model usable: the next good call is correct."""
    inputs = _inputs(40)
    _call_error(model, x=inputs["x"])
    _assert_matches_reference(model, inputs, model(**inputs))


# ---------------------------------------------------------------------------------------------
# threads


# ---------------------------------------------------------------------------------------------
# prepared calls


def test_a_prepared_call_runs_on_its_arrays_current_contents(model):
    """prepare() checks once; each run reads the bound inputs as they are then, and writes the
    bound outputs (the very arrays of out=, or arrays it made)."""
    inputs = _inputs(41)
    s = np.full((3, 7), np.nan, np.float32)
    prepared = model.prepare(out={"s": s}, **inputs)
    got = prepared()
    assert got["s"] is s and got["t"].shape == (7,)
    _assert_matches_reference(model, inputs, got)
    fresh = _inputs(42)
    for name, value in fresh.items():
        inputs[name][...] = value  # new contents, same arrays
    got = prepared()
    _assert_matches_reference(model, fresh, got)
    assert got["s"] is s


def test_a_prepared_call_with_symbols_binds_the_shapes_once(tmp_path):
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n    input x: f32[N, 5]\n    output y = softmax(x * 2, axis=-1)\n}\n")
    m = aotml.load(aotml.build(src, tmp_path / "m.so"))
    rng = np.random.default_rng(43)
    for n in (1, 6):
        x = rand(rng, (n, 5))
        prepared = m.prepare(x=x)
        np.testing.assert_allclose(prepared()["y"], aotml.interpret(src, x=x)["y"],
                                   rtol=RTOL, atol=ATOL)


def test_a_prepared_call_is_checked_when_it_is_made(model):
    inputs = _inputs(44)
    with pytest.raises(aotml.RunError, match="input 'x'"):
        model.prepare(x=inputs["x"][:2], y=inputs["y"])
    with pytest.raises(aotml.RunError, match="unknown output"):
        model.prepare(out={"nope": np.empty(3, np.float32)}, **inputs)


def test_a_prepared_call_raises_the_run_error_of_a_failed_check(tmp_path):
    # gather(x, i) checks its indices at run time; the bad one is written after prepare()
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n    input x: f32[4]\n    input i: i32[2]\n"
                   "    output y = gather(x, i)\n}\n")
    m = aotml.load(aotml.build(src, tmp_path / "m.so"))
    x, i = np.arange(4, dtype=np.float32), np.array([3, 1], np.int32)
    prepared = m.prepare(x=x, i=i)
    np.testing.assert_array_equal(prepared()["y"], [3, 1])
    i[0] = 9
    with pytest.raises(aotml.RunError, match="m.mlg:4"):
        prepared()


def test_concurrent_calls_from_threads(model):
    """4 Python threads calling one model at once on different inputs get the single-threaded
    results every time."""
    sets = [_inputs(100 + k) for k in range(4)]
    expected = [model(**inputs) for inputs in sets]
    for inputs, want in zip(sets, expected):
        _assert_matches_reference(model, inputs, want)
    barrier = threading.Barrier(4)
    failures: list[str] = []

    def work(k: int) -> None:
        try:
            barrier.wait()
            for c in range(100):
                j = (k + c) % 4
                got = model(**sets[j])
                for name in ("s", "t"):
                    if not np.array_equal(got[name], expected[j][name]):
                        failures.append(f"thread {k} call {c} output {name}")
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"thread {k}: {e!r}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert failures == []


# ---------------------------------------------------------------------------------------------
# loading


def test_load_missing_path(tmp_path):
    """Loading a path that does not exist raises LoadError naming the path."""
    path = tmp_path / "nowhere" / "gone.so"
    with pytest.raises(aotml.LoadError) as info:
        aotml.load(path)
    assert str(path) in str(info.value)


# Loading runs in a child process: a crash while loading must fail the test, not end the run.
LOAD_SCRIPT = """
import sys
import aotml
try:
    aotml.load(sys.argv[1])
except aotml.LoadError as e:
    print("LoadError:", e)
    sys.exit(0)
print("loaded without error")
sys.exit(1)
"""


@pytest.mark.parametrize("fraction", [0.0005, 0.003, 0.05, 0.5, 0.999])
def test_load_truncated_library(model, tmp_path, fraction):
    """A built .so cut short raises LoadError naming the path (in a child process, since a
    dlopen of a truncated file can kill the process with SIGBUS)."""
    path = tmp_path / "truncated.so"
    data = model.path.read_bytes()
    path.write_bytes(data[:max(int(len(data) * fraction), 1)])
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout}{proc.stderr[-2000:]}"
    assert proc.stdout.startswith("LoadError:") and str(path) in proc.stdout


def test_load_non_library(model, tmp_path):
    """A file that is not a shared library (the model's source) raises LoadError naming it."""
    path = tmp_path / "source.so"
    shutil.copyfile(model.source_path, path)
    with pytest.raises(aotml.LoadError) as info:
        aotml.load(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler 'cc' on PATH")
def test_load_library_that_is_not_a_model(tmp_path):
    """A real shared library without `aotml_model_v1` raises LoadError naming the path."""
    c_file = tmp_path / "plain.c"
    c_file.write_text("int plain(void) { return 1; }\n")
    path = tmp_path / "plain.so"
    subprocess.run([shutil.which("cc"), "-shared", "-fPIC", "-o", str(path), str(c_file)],
                   check=True)
    with pytest.raises(aotml.LoadError) as info:
        aotml.load(path)
    assert str(path) in str(info.value)


def test_load_copy_of_library_works(model, tmp_path):
    """A byte-for-byte copy of the .so elsewhere loads and computes the same result (it is
    self-contained)."""
    path = Path(shutil.copy(model.path, tmp_path / "copy.so"))
    copy = aotml.load(path)
    assert copy.build_hash == model.build_hash
    inputs = _inputs(51)
    got, want = copy(**inputs), model(**inputs)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


# ---------------------------------------------------------------------------------------------
# the interpreter


def test_interpret_wrong_shape(model):
    """The reference interpreter refuses an input of the wrong shape with RunError."""
    inputs = _inputs(61)
    with pytest.raises(aotml.RunError) as info:
        aotml.interpret(model.source_path, x=inputs["x"].reshape(7, 3), y=inputs["y"])
    assert "input 'x'" in str(info.value) and "(7, 3)" in str(info.value)


def test_interpret_missing_input(model):
    """The reference interpreter refuses a call that leaves out an input."""
    with pytest.raises(aotml.RunError) as info:
        aotml.interpret(model.source_path, x=_inputs(62)["x"])
    assert "missing input 'y'" in str(info.value)


def test_a_library_rebuilt_at_a_loaded_path_loads_as_the_new_one(tmp_path):
    """dlopen knows a library by its path: a rebuild in place must not bring back the old code,
    and the model already loaded keeps running the old."""
    src, so = tmp_path / "m.mlg", tmp_path / "m.so"
    x = np.random.default_rng(3).uniform(-2, 2, (5,)).astype(np.float32)
    src.write_text("model m {\n    input x: f32[5]\n    output y = x * 2.0\n}\n")
    first = aotml.load(aotml.build(src, so))
    src.write_text("model m {\n    input x: f32[5]\n    output y = x + 3.0\n}\n")
    second = aotml.load(aotml.build(src, so))
    again = aotml.load(so)  # the same file once more: the same library
    np.testing.assert_array_equal(first(x=x)["y"], x * np.float32(2.0))
    np.testing.assert_array_equal(second(x=x)["y"], x + np.float32(3.0))
    np.testing.assert_array_equal(again(x=x)["y"], x + np.float32(3.0))
    assert first.build_hash != second.build_hash == again.build_hash
    assert again._lib is second._lib
