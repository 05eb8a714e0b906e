"""Parallel loops: which loops the schedule proves independent, and that compiled models give
the same bits at every thread count, fail the same way, and survive threads and fork."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest

import aotml
from aotml.driver import build
from aotml.loops.ir import Assign, Binary, Buffer, Const, For, Kernel, Load, Local, Store, Var
from aotml.loops.schedule import independent, open_unit_loops, parallelize
from conftest import REPO, rand

OUT = Buffer("y", "f32", (64, 32))
SRC = Buffer("x", "f32", (64, 32))
i, j, t = Var("i"), Var("j"), Var("t")


def c(v: int) -> Const:
    return Const(v, "i64")


def test_a_loop_storing_at_its_own_index_is_independent():
    body = (For(j, 32, (Store(OUT, (i, j), Load(SRC, (i, j))),)),)
    assert independent(For(i, 64, body))
    # the inner loop is independent too, given the outer variable
    assert independent(body[0], ("i",))


def test_a_shifted_store_is_owned_but_a_shared_element_is_not():
    shifted = Binary("add", i, c(1))  # iteration i writes row i+1: still its own
    body = (For(j, 32, (Store(OUT, (shifted, j), Load(SRC, (i, j))),)),)
    assert independent(For(i, 63, body))
    halved = Binary("idiv", i, c(2))  # iterations 2r and 2r+1 both write row r
    body = (For(j, 32, (Store(OUT, (halved, j), Load(SRC, (i, j))),)),)
    assert not independent(For(i, 64, body))


def test_tiles_own_their_block_when_the_offset_stays_inside_it():
    row = Binary("add", Binary("mul", i, c(4)), t)
    tile = (For(t, 4, (For(j, 32, (Store(OUT, (row, j), Load(SRC, (row, j))),)),)),)
    assert independent(For(i, 16, tile))
    overlapping = (For(t, 5, tile[0].body),)  # t reaches 4: block i writes row 4i+4
    assert not independent(For(i, 12, overlapping))


def test_a_block_offset_by_a_constant_is_still_owned():
    # rows 4i+24 .. 4i+27: a window of 4 at coefficient 4 (the conv's later channel blocks)
    row = Binary("add", Binary("add", Binary("mul", i, c(4)), c(24)), t)
    body = (For(t, 4, (For(j, 32, (Store(OUT, (row, j), Load(SRC, (row, j))),)),)),)
    assert independent(For(i, 10, body))
    # reading the row above as well widens the window to 5 > 4: iterations overlap
    above = Binary("sub", row, c(1))
    reads = (For(t, 4, (For(j, 32, (Store(OUT, (row, j), Load(OUT, (above, j))),)),)),)
    assert not independent(For(i, 10, reads))


def test_reading_back_another_iterations_element_is_not_independent():
    prev = Load(OUT, (Binary("sub", i, c(1)), j))
    body = (For(j, 32, (Store(OUT, (i, j), prev),)),)
    assert not independent(For(i, 64, body))


def test_an_accumulator_declared_outside_the_loop_is_shared():
    acc = Var("acc", "f32")
    total = Buffer("s", "f32", (1,))
    loop = For(i, 64, (For(j, 32, (Assign(acc, Binary("add", acc, Load(SRC, (i, j)))),)),))
    assert not independent(loop)
    kernel = Kernel("k", (SRC, total), ("s",), (Local(acc, Const(0.0, "f32")), loop,
                                               Store(total, (c(0),), acc)))
    assert not any(s.parallel for s in parallelize(kernel).body if isinstance(s, For))


def test_small_nests_stay_serial_and_big_ones_get_a_grain():
    small = Kernel("k", (SRC, OUT), ("y",),
                   (For(i, 64, (For(j, 32, (Store(OUT, (i, j), Load(SRC, (i, j))),)),)),))
    assert not parallelize(small).body[0].parallel
    big_out, big_src = Buffer("y", "f32", (512, 512)), Buffer("x", "f32", (512, 512))
    big = Kernel("k", (big_src, big_out), ("y",),
                 (For(i, 512, (For(j, 512, (Store(big_out, (i, j),
                                                   Load(big_src, (i, j))),)),)),))
    loop = parallelize(big).body[0]
    assert loop.parallel and 1 <= loop.grain < 512


# ---------------------------------------------------------------------------------------------
# Compiled models at several thread counts

MODELS = {
    # tiles, narrower column tiles and one-row tiles, with a fused bias + relu epilogue
    "matmul": ("""weights "weights.npz"
model m {
    input a: f32[203, 131]
    param w: f32[131, 77]
    param b: f32[77]
    output y = relu(a @ w + b)
}""", {"w": (131, 77), "b": (77,)}, {"a": (203, 131)}),
    "linear_symbolic": ("""weights "weights.npz"
model m {
    dim N <= 300
    input x: f32[N, 97]
    param w: f32[45, 97]
    param b: f32[45]
    output y = gelu(linear(x, w, b))
}""", {"w": (45, 97), "b": (45,)}, {"x": (257, 97)}),
    "softmax_norm": ("""weights "weights.npz"
model m {
    input x: f32[300, 257]
    param g: f32[257]
    param b: f32[257]
    output y = layer_norm(softmax(x, axis=-1) * 3, g, b, axis=-1)
}""", {"g": (257,), "b": (257,)}, {"x": (300, 257)}),
    "conv": ("""weights "weights.npz"
model m {
    input x: f32[2, 5, 41, 37]
    param w: f32[11, 5, 3, 3]
    output y = relu(conv2d(x, w, padding=1))
}""", {"w": (11, 5, 3, 3)}, {"x": (2, 5, 41, 37)}),
    # each matrix of the batch packs its own panels: the batch loop runs in parallel
    "batched_matmul": ("""model m {
    input a: f32[3, 40, 37]
    input b: f32[3, 37, 3600]
    output y = a @ b
}""", {}, {"a": (3, 40, 37), "b": (3, 37, 3600)}),
    # a batch of one: the one-iteration batch loop is opened, so packing and tiles go parallel
    "batch1_matmul": ("""model m {
    input a: f32[1, 96, 20]
    input b: f32[1, 20, 6600]
    output y = a @ b
}""", {}, {"a": (1, 96, 20), "b": (1, 20, 6600)}),
    # b too small to pack: the tiles read it where it is, in parallel
    "small_matmul": ("""model m {
    input a: f32[5, 40, 37]
    input b: f32[5, 37, 50]
    output y = a @ b
}""", {}, {"a": (5, 40, 37), "b": (5, 37, 50)}),
    "reduce": ("""model m {
    input x: f32[513, 300]
    output y = sum(exp(x * 0.1), axis=1)
}""", {}, {"x": (513, 300)}),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_thread_count_gives_the_same_bits(tmp_path, name):
    source, weights, inputs = MODELS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if weights:
        np.savez(tmp_path / "weights.npz", **{k: rand(rng, s) for k, s in weights.items()})
    src = tmp_path / "m.mlg"
    src.write_text(source)
    result = build(src, tmp_path / "m.so", dump="loops")
    assert "parallel" in result.dumps["loops"], "no loop of this model runs in parallel"
    model = aotml.load(result.so_path)
    feeds = {k: rand(rng, s) for k, s in inputs.items()}
    results = []
    for n in (1, 2, 3, 5):
        assert model.set_num_threads(n) == n
        results.append(model(**feeds)["y"])
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    want = aotml.interpret(src, precise=True, **feeds)["y"]
    np.testing.assert_allclose(results[0], want, rtol=1e-5 * 16, atol=1e-5)


GATHER = """model m {
    input x: f32[300, 64]
    input idx: i64[400]
    output y = gather(x, idx, axis=0)
}"""


def test_a_failed_check_in_a_worker_is_reported_as_a_serial_run_reports_it(build_model):
    model = build_model(GATHER)
    rng = np.random.default_rng(7)
    x = rand(rng, (300, 64))
    idx = rng.integers(0, 300, size=400)
    idx[-3] = 300  # in the last range, which a worker runs
    messages = []
    for n in (1, 2, 4):
        model.set_num_threads(n)
        with pytest.raises(aotml.RunError) as err:
            model(x=x, idx=idx)
        messages.append(str(err.value))
    assert len(set(messages)) == 1 and "gather index out of range" in messages[0]
    idx[-3] = 299
    np.testing.assert_array_equal(model(x=x, idx=idx)["y"], x[idx])


def test_concurrent_callers_each_get_their_own_result(build_model):
    source, weights, _ = MODELS["matmul"]
    rng = np.random.default_rng(3)
    params = {k: rand(rng, s) for k, s in weights.items()}
    model = build_model(source, params)
    model.set_num_threads(2)
    feeds = [rand(rng, (203, 131)) for _ in range(4)]
    want = [model(a=a)["y"] for a in feeds]
    got: dict[int, list] = {k: [] for k in range(4)}

    def work(k):
        for _ in range(20):
            got[k].append(model(a=feeds[k])["y"])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(4):
        for r in got[k]:
            np.testing.assert_array_equal(r, want[k])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_workers(build_model):
    source, weights, _ = MODELS["matmul"]
    rng = np.random.default_rng(5)
    model = build_model(source, {k: rand(rng, s) for k, s in weights.items()})
    model.set_num_threads(2)
    a = rand(rng, (203, 131))
    want = model(a=a)["y"]
    pid = os.fork()
    if pid == 0:  # the child: the parent's workers are gone; a run must not hang
        ok = np.array_equal(model(a=a)["y"], want)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_the_default_comes_from_AOTML_NUM_THREADS(build_model):
    model = build_model(MODELS["reduce"][0])
    code = ("import aotml, sys; m = aotml.load(sys.argv[1]); print(m.num_threads); "
            "print(m.set_num_threads(0))")
    env = {**os.environ, "AOTML_NUM_THREADS": "3", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, str(model.path)], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "3"]


ONE_POOL_SCRIPT = """
import os, sys
import numpy as np
import aotml

def threads():
    return len(os.listdir("/proc/self/task"))

rng = np.random.default_rng(11)
x = rng.uniform(-2, 2, (513, 300)).astype(np.float32)
a = rng.uniform(-2, 2, (5, 40, 37)).astype(np.float32)
b = rng.uniform(-2, 2, (5, 37, 50)).astype(np.float32)
before = threads()
first, second = aotml.load(sys.argv[1]), aotml.load(sys.argv[2])
y1 = first(x=x)["y"]
y2 = second(a=a, b=b)["y"]
assert np.allclose(y1, np.exp(x.astype(np.float64) * 0.1).sum(axis=1), rtol=1e-5 * 300)
assert np.allclose(y2, a.astype(np.float64) @ b, rtol=1e-5 * 37, atol=1e-5)
print(threads() - before)
first.set_num_threads(2)
print(second.num_threads)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_two_libraries_in_one_process_share_one_pool(tmp_path):
    """One pool per process: the second library loaded runs its loops on the first's workers
    and sees its size; with a pool each, 3 threads apiece would start 4 workers. The libraries
    even share the model name `m` (and so the names they export): each still runs its own."""
    paths = []
    for name in ("reduce", "small_matmul"):
        src = tmp_path / f"{name}.mlg"
        src.write_text(MODELS[name][0])
        paths.append(str(build(src, tmp_path / f"{name}.so").so_path))
    env = {**os.environ, "AOTML_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", ONE_POOL_SCRIPT, *paths], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]


UNLOAD_SCRIPT = """
import os, sys
import numpy as np
import aotml
from aotml.loader import _ffi

before = len(os.listdir("/proc/self/task"))
model = aotml.load(sys.argv[1])
x = np.random.default_rng(2).uniform(-2, 2, (513, 300)).astype(np.float32)
model(x=x)
running = len(os.listdir("/proc/self/task")) - before
_ffi.dlclose(model._lib)
print(running, len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_unloading_a_library_stops_its_workers(tmp_path):
    """dlclose must not leave workers behind running code that is no longer mapped."""
    src = tmp_path / "reduce.mlg"
    src.write_text(MODELS["reduce"][0])
    so = build(src, tmp_path / "reduce.so").so_path
    env = {**os.environ, "AOTML_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", UNLOAD_SCRIPT, str(so)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "0"]


def test_a_loop_of_one_iteration_is_opened_so_its_nests_can_run_in_parallel():
    src, out = Buffer("x", "f32", (4096, 64)), Buffer("y", "f32", (4096, 64))
    pack = For(j, 64, (Store(out, (c(0), j), Load(src, (c(0), j))),))
    rows = For(i, 4096, (For(j, 64, (Store(out, (i, j), Load(src, (i, j))),)),))
    batch = Var("b")
    unit = For(batch, 1, (pack, rows))
    kernel = parallelize(Kernel("k", (src, out), ("y",), open_unit_loops((unit,))))
    assert [type(s).__name__ for s in kernel.body] == ["For", "For"]
    assert kernel.body[1].var == i and kernel.body[1].parallel
    # a local directly in the body would change scope: that loop is left as it is
    held = For(batch, 1, (Local(t, c(0)), rows))
    assert open_unit_loops((held,)) == (held,)


def test_many_calls_with_more_threads_than_ranges_give_the_same_bits(tmp_path):
    """The pool's hand-off without locks, call after call: a loop of 3 ranges run by pools of
    5 and 8 threads (workers without a range skip each job) between loops that use them all.
    Every call gives the 1-thread bits, and none hangs."""
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n    input x: f32[300, 64]\n    input w: f32[3, 40000]\n"
                   "    output y = softmax(x * 2, axis=-1)\n"
                   "    output s = sum(exp(w * 0.1), axis=1)\n}\n")
    result = build(src, tmp_path / "m.so", dump="loops")
    assert result.dumps["loops"].count("parallel(") == 2, result.dumps["loops"]
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(8)
    feeds = {"x": rand(rng, (300, 64)), "w": rand(rng, (3, 40000))}
    model.set_num_threads(1)
    want = {k: v.copy() for k, v in model(**feeds).items()}
    for threads in (5, 8):
        model.set_num_threads(threads)
        call = model.prepare(**feeds)
        for _ in range(1500):
            got = call()
            assert all(np.array_equal(got[k], want[k]) for k in want)


STEAL_SCRIPT = r"""
import ctypes, sys, threading, time
lib = ctypes.CDLL(sys.argv[1])
TASK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
ran = []
main = threading.get_ident()

def task(ctx, begin, end):
    ran.append((begin, end, threading.get_ident() == main))
    if threading.get_ident() == main and begin == 0:
        time.sleep(0.1)  # time for the worker to claim the first range of its block
    if threading.get_ident() != main and begin == 4:
        time.sleep(0.4)  # where it is held up
    return 0

fn = TASK(task)
lib.aotml_pool1_set_num_threads(2)
lib.aotml_pool1_parallel_for.argtypes = [TASK, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
assert lib.aotml_pool1_parallel_for(TASK(lambda ctx, b, e: 0), None, 8, 1) == 0  # workers up
assert lib.aotml_pool1_parallel_for(fn, None, 8, 1) == 0
print(sorted(ran))
"""


def test_a_held_up_worker_s_ranges_are_taken_by_the_caller(tmp_path):
    """8 iterations, 2 threads: blocks [0, 4) and [4, 8) of 4 ranges. The worker is held up
    in range 4; the caller runs its block, then the worker's unstarted ranges 7, 6, 5 (with
    the static split it waited for the worker to run them); every range runs once."""
    src = tmp_path / "reduce.mlg"
    src.write_text(MODELS["reduce"][0])
    so = build(src, tmp_path / "reduce.so").so_path
    out = subprocess.run([sys.executable, "-c", STEAL_SCRIPT, str(so)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    ran = eval(out.stdout)  # [(begin, end, run by the caller)]
    assert [(b, e) for b, e, _ in ran] == [(k, k + 1) for k in range(8)]
    assert [k for k, _, by_caller in ran if not by_caller] == [4]
