"""Issue 5's benchmark: aotml side by side with numpy, ONNX Runtime and PyTorch, one table.

    python benchmarks/bench.py [--quick] [--threads 1,2] [--only sgemm,chain,models]
                               [--sizes 32,...] [--rounds 15] [--no-compile] [--omp-passive]
                               [--wait-quiet 20] [--report] [--markdown FILE] [--json FILE]

A full run takes 5 minutes on the quiet 2-core machine, 10-20 on a busy one (it waits for quiet
moments); the first also builds, exports and compiles (a few minutes more). --quick (N <= 512,
5 rounds, no torch.compile) takes about 1.5.

Sections (`--only` takes their names; `models` means mlp,cnn,encoder,minilm,overhead):
  sgemm     C = A @ B, N = 32 ... 2048 (GFLOP/s, 2·N³ per call), and the machine's fp32 peak
            measured in the same run by a C FMA loop (cc -O3 -march=native, 12 independent
            chains of 8-wide FMAs per thread, best of 7 runs of ~0.25 s).
  chain     y = max(x*2+1, 0)*0.5 over 16M f32 (GB/s counting one read and one write), every
            peer writing into a preallocated y; beside it the copy y = x by each peer.
  mlp       784-512-512-10 perceptron (relu, softmax) at batch 1 and 64.
  cnn       3->32 conv3x3 pad 1, relu, maxpool 2, 32->64 conv3x3 pad 1, relu, global average
            pool, linear 64->10, on 1x3x224x224.
  encoder   pre-norm transformer encoder layer, d 384, 6 heads, MLP 1536, exact gelu, 1x128x384.
  minilm    all-MiniLM-L6-v2 at sequence 128 through aotml's ONNX importer (benchmarks/minilm.py
            exports it; skipped with a line saying what is missing without its packages).
  overhead  y = x + 1 on one float: the cost of a call from Python.
  workspace aotml's workspace bytes against the liveness lower bound (`aotml build --report`),
            for every model built.

Every model is written as .mlg with .npz weights (fixed seeds) into the cache folder
(build/bench/suite) and built by aotml once (rebuilt when its source, its weights or aotml's own
sources change). The peers get the same weights: numpy a hand-written forward, ONNX Runtime the
torch module exported by the legacy exporter (opset 17; sgemm and chain are written with
onnx.helper), PyTorch eager (inference_mode) and torch.compile (inductor; skipped by --quick and
--no-compile). Each peer's output must agree with aotml's at 1 thread (rel_err = max|got - want|
/ max|want| <= 1e-4) or it is not timed; aotml's own output at every thread count must equal its
1-thread output bit for bit, or that cell is a MISMATCH (an error, not timed).

Threads: every peer, aotml included, runs at every count of --threads. aotml through each loaded
model's set_num_threads (one pool per process, shared by every model; the count is set only when it
differs, as a change stops and joins the workers, which restart at the next call); numpy's
OpenBLAS through threadpoolctl when installed, else through OpenBLAS's own *_set_num_threads
found with ctypes; torch.set_num_threads; one ONNX Runtime session per thread count
(intra_op_num_threads, inter_op 1, sequential). numpy's ufuncs are single-threaded whatever the
setting.

Timing: all peers and thread counts of a case are interleaved round by round (the order rotated
each round), so load from other jobs falls on all of them; each round times a batch of calls
(about --target seconds) after untimed settling calls, with the garbage collector off. A cell
is the median over the rounds, ±half the inter-quartile range in percent, and in brackets
aotml's median time over the peer's at the same thread count (>1: aotml is slower).

A shared machine: beside each timed batch the CPU time of other processes is read from
/proc/stat (the machine's busy time less this process's own, all its threads). A batch is quiet
when the others left the cell's threads their cores; a cell keeps only its quiet batches when it
has 3 or more, and is marked † otherwise. On 2 cores with another job running, a 2-thread pool
waits a scheduler tick (4 ms) at every barrier for its descheduled thread, and its times grow
10-1000x: a † 2-thread cell measures that, not the library. Before each case the run waits (up
to --wait-quiet seconds) for the others to go quiet, and the FMA loop's 2-thread/1-thread ratio
just before the case goes into the table (near 2: both cores free).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import glob
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "bench" / "suite"
TOLERANCE = 1e-4
AT = "aotml x@W"  # the same model with pre-transposed weights and `@` instead of `linear`
CALL = "aotml call"  # the plain call model(**arrays, out=...), checked each time (the "aotml"
# column runs a prepared call, Model.prepare, checked once: as ONNX Runtime's IO binding)
PEERS = ("aotml", CALL, AT, "numpy", "onnxruntime", "torch", "torch.compile")
SGEMM_SIZES = (32, 64, 128, 256, 512, 1024, 2048)
CHAIN_N = 16 * 1024 * 1024
SECTIONS = ("sgemm", "chain", "mlp", "cnn", "encoder", "minilm", "overhead")
MODELS = ("mlp", "cnn", "encoder", "minilm", "overhead")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's aotml, not an installed one
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return float(np.max(np.abs(got - want))) / max(scale, 1e-30) if want.size else 0.0


def to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().numpy()
    return np.asarray(value)


def digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# threads


class Threads:
    """Sets every peer's thread count at once, the pool of every aotml model registered with
    add_model included."""

    def __init__(self):
        self.blas_how = "not controlled"
        self._models: list = []  # aotml.loader.Model, each once
        self._blas_set: Callable[[int], None] | None = None
        self._blas_get: Callable[[], int] | None = None
        self._torch = None
        self._find_blas()
        if have("torch"):
            import torch
            self._torch = torch

    def _find_blas(self):
        if have("threadpoolctl"):
            from threadpoolctl import ThreadpoolController

            blas = ThreadpoolController().select(user_api="blas")
            if blas.lib_controllers:
                self._blas_set = lambda n: [c.set_num_threads(n) for c in blas.lib_controllers]
                self._blas_get = lambda: blas.lib_controllers[0].num_threads
                self.blas_how = "threadpoolctl"
                return
        here = Path(np.__file__).resolve().parent
        candidates = sorted(glob.glob(str(here.parent / "numpy.libs" / "*openblas*"))
                            + glob.glob(str(here.parent / "scipy_openblas*" / "lib" / "*.so*")))
        for path in candidates:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("64_", ""):
                    setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    if setter is not None and getter is not None:
                        setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                        self._blas_set, self._blas_get = setter, getter
                        self.blas_how = f"ctypes {prefix}_set_num_threads{suffix}"
                        return

    def verify(self, counts: list[int]) -> bool:
        """Each count set reads back from OpenBLAS."""
        ok = True
        for n in counts:
            self.set(n)
            ok = ok and self._blas_get is not None and self._blas_get() == n
        return ok

    @property
    def controls_blas(self) -> bool:
        return self._blas_set is not None

    def add_model(self, model) -> None:
        """An aotml model whose pool set() sets from now on."""
        if not any(m is model for m in self._models):
            self._models.append(model)

    def set(self, n: int) -> None:
        if self._blas_set is not None:
            self._blas_set(n)
        if self._torch is not None and self._torch.get_num_threads() != n:
            self._torch.set_num_threads(n)
        for model in self._models:  # a change stops and joins the workers: only when needed
            if model.num_threads != n:
                got = model.set_num_threads(n)
                if got != n:
                    raise RuntimeError(f"aotml model {model.name} runs at {got} threads when "
                                       f"asked for {n}")


# ---------------------------------------------------------------------------------------------
# cases and timing


@dataclass
class Case:
    section: str
    name: str
    unit: str  # "ms", "GFLOP/s" or "GB/s"
    work: float = 0.0  # flops or bytes per call, for the rates
    runners: dict[tuple[str, int], Callable[[], object]] = field(default_factory=dict)
    notes: dict[tuple[str, int], str] = field(default_factory=dict)  # n/a reasons per cell
    times: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, int], float] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    scaling: float = 0.0  # the FMA loop's 2-thread / 1-thread rate just before the timing
    times_all: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    foreign: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    quiet: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    busy: set = field(default_factory=set)

    def value(self, seconds: float) -> float:
        return seconds * 1e3 if self.unit == "ms" else self.work / seconds / 1e9


def check(case: Case, threads: Threads) -> None:
    """Runs every cell once and compares it with aotml's output at 1 thread; a cell that
    disagrees is dropped (with a note). Without aotml the first peer is the reference. aotml
    (and its variant) at every other thread count must give exactly the bits it gives at its
    lowest count (1), or the cell is dropped as a MISMATCH and an error is printed."""
    keys = list(case.runners)
    ref_key = ("aotml", 1) if ("aotml", 1) in case.runners else (keys[0] if keys else None)
    if ref_key is None:
        return
    threads.set(ref_key[1])
    want = to_numpy(case.runners[ref_key]()).copy()
    base: dict[str, tuple[int, np.ndarray]] = {}  # aotml variant -> (lowest count, its output)
    for key in sorted(keys, key=lambda k: k[1]):
        threads.set(key[1])
        try:
            got = to_numpy(case.runners[key]())
        except Exception as e:  # a peer that fails to run is reported, not fatal
            case.notes[key] = f"failed: {type(e).__name__}: {str(e)[:80]}"
            del case.runners[key]
            continue
        err = rel_err(got, want)
        case.errors[key] = err
        if not err <= TOLERANCE:
            case.notes[key] = f"MISMATCH rel_err {err:.1e}"
            del case.runners[key]
            continue
        if key[0] in ("aotml", AT):
            if key[0] not in base:
                base[key[0]] = (key[1], got.copy())
                continue
            t0, first = base[key[0]]
            if not np.array_equal(got, first):
                diff = np.abs(got.astype(np.float64) - first.astype(np.float64))
                case.notes[key] = (f"MISMATCH not bitwise equal to {key[0]} at {t0} "
                                   f"thread{'s' if t0 > 1 else ''} "
                                   f"(max |diff| {float(np.max(diff)):.1e}, "
                                   f"{int(np.count_nonzero(got != first))} elements)")
                print(f"  ERROR {case.name}: {key[0]} at {key[1]} threads: "
                      f"{case.notes[key]}", flush=True)
                del case.runners[key]


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
NCPU = os.cpu_count() or 1
QUIET_ROUNDS = 3  # a cell keeps only its quiet rounds when it has at least this many


def machine_busy() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


def foreign_load(seconds: float = 0.5) -> float | None:
    """Cores' worth of CPU used by other processes over `seconds` of our sleeping."""
    b0, o0 = machine_busy(), own_cpu()
    time.sleep(seconds)
    b1, o1 = machine_busy(), own_cpu()
    return None if b0 is None else max(0.0, (b1 - b0) - (o1 - o0)) / seconds


def wait_quiet(max_seconds: float, threshold: float = 0.3) -> float | None:
    """Waits (up to max_seconds) until other processes use less than `threshold` cores."""
    deadline = time.perf_counter() + max_seconds
    load = foreign_load(0.5)
    while load is not None and load >= threshold and time.perf_counter() < deadline:
        load = foreign_load(1.0)
    return load


def measure(case: Case, threads: Threads, rounds: int, target: float, budget: float,
            min_rounds: int = 5) -> None:
    """Times every cell round by round. Beside each timed batch it notes how many cores' worth
    of CPU other processes used meanwhile (/proc/stat's busy time minus this process's own,
    threads included); a batch is quiet when that left the cell's threads their cores
    (foreign <= cores - threads + 0.3). A cell with at least QUIET_ROUNDS quiet batches keeps
    only those; one with fewer keeps all and is marked busy."""
    keys = list(case.runners)
    if not keys:
        return
    per: dict[tuple[str, int], float] = {}
    for key in keys:  # warm up, then one timed call to size the batches
        threads.set(key[1])
        fn = case.runners[key]
        for _ in range(2):
            fn()
        start = time.perf_counter()
        fn()
        per[key] = max(time.perf_counter() - start, 1e-7)
    calls = {k: max(1, round(target / t)) for k, t in per.items()}
    # the settling calls: ~20 ms (at least one call) before each timed batch, so a spinning
    # thread pool left by the previous cell falls outside the timing; none for calls >= 0.1 s
    settle = {k: 0 if t >= 0.1 else max(1, round(0.02 / t)) for k, t in per.items()}
    round_s = sum((calls[k] + settle[k]) * per[k] for k in keys)
    n_rounds = max(min(rounds, min_rounds), min(rounds, int(budget / max(round_s, 1e-9))))
    case.load = (os.getloadavg()[0], 0.0)
    times: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
    foreign: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(n_rounds):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for key in order:
                threads.set(key[1])
                fn = case.runners[key]
                for _ in range(settle[key]):
                    fn()
                b0, o0 = machine_busy(), own_cpu()
                start = time.perf_counter()
                for _ in range(calls[key]):
                    fn()
                wall = time.perf_counter() - start
                b1, o1 = machine_busy(), own_cpu()
                times[key].append(wall / calls[key])
                foreign[key].append(-1.0 if b0 is None else
                                    max(0.0, (b1 - b0) - (o1 - o0)) / wall)
    finally:
        if gc_was:
            gc.enable()
    case.load = (case.load[0], os.getloadavg()[0])
    case.times_all, case.foreign = times, foreign
    case.times, case.busy, case.quiet = {}, set(), {}
    for key, ts in times.items():
        quiet = [t for t, f in zip(ts, foreign[key]) if f <= NCPU - key[1] + 0.3]
        case.quiet[key] = (len(quiet), len(ts))
        if len(quiet) >= QUIET_ROUNDS:
            case.times[key] = quiet
        else:
            case.times[key] = ts
            case.busy.add(key)


# ---------------------------------------------------------------------------------------------
# aotml builds (cached)


_KEY: list[str] = []


def aotml_key(fresh: bool = False) -> str:
    """The hash of aotml's sources (benchmarks/minilm.py's), taken once per run right after
    aotml is imported: the code this process builds with, even if the files change later."""
    from minilm import _aotml_key

    if fresh:
        return _aotml_key()
    if not _KEY:
        import aotml.driver  # noqa: F401  (every stage of the compiler, imported now)
        import aotml.loader  # noqa: F401
        if have("onnx"):
            import aotml.onnx_import  # noqa: F401
        _KEY.append(_aotml_key())
    return _KEY[0]


def write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)


def save_weights(stem: str, weights: dict[str, np.ndarray]) -> Path:
    """weights as `stem-<hash of the arrays>.npz` in the cache (written once)."""
    key = digest(*[f"{k}:{v.dtype}:{v.shape}".encode() + v.tobytes()
                   for k, v in sorted(weights.items())])
    path = CACHE / f"{stem}-{key}.npz"
    if not path.exists():
        tmp = CACHE / f"{stem}-{key}.tmp.npz"
        np.savez(tmp, **weights)
        tmp.replace(path)
    return path


@dataclass
class Built:
    model: object  # aotml.loader.Model
    report: str
    seconds: float | None  # the build's time, None when cached

    @property
    def workspace(self) -> tuple[int | None, int | None]:
        for line in self.report.splitlines():
            if line.startswith("workspace:"):
                parts = line.replace(";", "").split()
                ws = int(parts[1])
                bound = int(parts[-2]) if parts[-1] == "bytes" and parts[-2].isdigit() else None
                return ws, bound
        return None, None


def aotml_build(src: Path, weights_key: str = "") -> Built:
    """Builds `src` (.mlg or .onnx) with aotml into the cache, with its report; reused when
    the source, the weights and aotml's sources are unchanged."""
    import aotml
    from aotml.driver import build

    key = digest(src.read_bytes() if src.suffix == ".mlg" else src.name, weights_key,
                 aotml_key())
    so = CACHE / f"{src.stem}-{key}.so"
    rep = so.with_suffix(".report.txt")
    seconds = None
    if not (so.exists() and rep.exists()):
        start = time.perf_counter()
        result = build(src, so, report=True)
        seconds = time.perf_counter() - start
        rep.write_text(result.dumps["report"])
    return Built(aotml.load(so), rep.read_text(), seconds)


def mlg_model(stem: str, text: str, weights: dict[str, np.ndarray] | None = None) -> Built:
    CACHE.mkdir(parents=True, exist_ok=True)
    wkey = ""
    if weights:
        wpath = save_weights(stem, weights)
        text = f'weights "{wpath.name}"\n' + text
        wkey = wpath.stem
    src = CACHE / f"{stem}.mlg"
    write_if_changed(src, text.encode())
    return aotml_build(src, wkey)


def aotml_runner(built: Built, feeds: dict[str, np.ndarray], prepared: bool = True):
    """The model into preallocated outputs, returning the first: through a prepared call
    (Model.prepare: checked once, like ONNX Runtime's IO binding), or (prepared=False) the
    plain call model(**feeds, out=...), which checks every call."""
    model = built.model
    outs = {t.name: np.empty(t.shape, t.dtype) for t in model.outputs}
    first = model.outputs[0].name
    if prepared:
        call = model.prepare(out=outs, **feeds)

        def run():
            call()
            return outs[first]
        return run

    def run_checked():
        model(**feeds, out=outs)
        return outs[first]
    return run_checked


# ---------------------------------------------------------------------------------------------
# peers


class Peers:
    """Makes aotml's runners, ONNX Runtime sessions and torch (eager, compiled) runners, or
    says why not."""

    def __init__(self, thread_counts: list[int], compile_too: bool, compile_note: str,
                 threads: Threads):
        self.thread_counts = thread_counts
        self.threads = threads
        self.ort = have("onnxruntime") and have("onnx")
        self.torch = have("torch")
        self.compile_too = compile_too and self.torch
        self.compile_note = compile_note
        self._fresh = 0

    # aotml ------------------------------------------------------------------------------
    def aotml_runners(self, case: Case, built: Built, feeds: dict[str, np.ndarray],
                      peer: str = "aotml", prepared: bool = True) -> None:
        """The model at every thread count (each runner with its own outputs); the model is
        registered with Threads, whose set(n) sets its pool."""
        self.threads.add_model(built.model)
        for n in self.thread_counts:
            case.runners[(peer, n)] = aotml_runner(built, feeds, prepared)

    # ONNX Runtime ---------------------------------------------------------------------------
    def ort_runners(self, case: Case, onnx_path: Path | None, feeds: dict[str, np.ndarray],
                    why: str = "") -> None:
        for n in self.thread_counts:
            if not self.ort or onnx_path is None:
                case.notes[("onnxruntime", n)] = why or "n/a (onnxruntime or onnx missing)"
                continue
            case.runners[("onnxruntime", n)] = self._ort_run(onnx_path, feeds, n)

    def _ort_run(self, onnx_path: Path, feeds: dict[str, np.ndarray], threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(onnx_path), options,
                                       providers=["CPUExecutionProvider"])
        # outputs into preallocated arrays through IO binding, so no allocation is timed
        binding = session.io_binding()
        for meta in session.get_inputs():
            binding.bind_cpu_input(meta.name, feeds[meta.name])
        out_meta = session.get_outputs()[0]
        shape = [d if isinstance(d, int) else None for d in out_meta.shape]
        if None in shape:  # a dynamic output shape: ask ONNX Runtime for it once
            shape = list(session.run([out_meta.name], feeds)[0].shape)
        dtype = {"tensor(float)": np.float32}[out_meta.type]
        out = np.empty(shape, dtype)
        binding.bind_output(out_meta.name, "cpu", 0, dtype, out.shape,
                            out.__array_interface__["data"][0])
        run = session.run_with_iobinding

        def call():
            run(binding)
            return out
        call.session = session  # keep it alive
        return call

    # torch ------------------------------------------------------------------------------
    def torch_runners(self, case: Case, eager: Callable | None, fn: Callable | None = None,
                      args: tuple = (), tag: str = "") -> None:
        """eager() is the eager call; torch.compile(fn)(*args) the compiled one (fn defaults to
        eager, args to none)."""
        for n in self.thread_counts:
            if not self.torch or eager is None:
                case.notes[("torch", n)] = "n/a (torch missing)"
                continue
            case.runners[("torch", n)] = self._eager(eager)
        for n in self.thread_counts:
            key = ("torch.compile", n)
            if not self.compile_too or eager is None:
                case.notes[key] = self.compile_note if self.torch else "n/a (torch missing)"
                continue
            try:
                case.runners[key] = self._compiled(fn or eager, args, n, tag)
            except Exception as e:  # inductor needs a C++ compiler and may refuse a graph
                case.notes[key] = f"n/a (compile failed: {type(e).__name__})"
                print(f"  torch.compile of {case.name} at {n} threads failed: {e}")

    def module_runners(self, case: Case, module, args: tuple, tag: str) -> None:
        self.torch_runners(case, lambda: module(*args), module, args, tag)

    def torch_module(self, case: Case, module, x: np.ndarray, stem: str, key: str) -> None:
        """ONNX Runtime on the module's export (cached by `key`) and torch on `module(x)`."""
        import torch

        tx = torch.from_numpy(x)
        onnx_path = export_onnx(stem, module, (tx,), ["x"], key) if self.ort else None
        self.ort_runners(case, onnx_path, {"x": x})
        self.module_runners(case, module, (tx,), stem)

    def without_torch(self, case: Case) -> None:
        """The cells of the peers that need the torch module, marked missing."""
        self.ort_runners(case, None, {}, "n/a (exported from torch, missing)")
        self.torch_runners(case, None)

    def _eager(self, fn):
        import torch

        def call():
            with torch.inference_mode():
                return fn()
        return call

    def _compiled(self, fn, args, threads: int, tag: str):
        import torch

        # a fresh code object per (case, thread count): dynamo caches compiled frames per code
        # object and does not guard on the thread count, but inductor's kernels are specialized
        # for the count set when they are compiled
        self._fresh += 1
        ns: dict = {}
        code = compile("def call(*args):\n    return target(*args)\n",
                       f"<bench {tag} {threads}t {self._fresh}>", "exec")
        exec(code, {"target": fn}, ns)
        compiled = torch.compile(ns["call"])
        torch.set_num_threads(threads)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled(*args)  # compiles, for this thread count

        def call():
            with torch.inference_mode():
                return compiled(*args)
        return call


def export_onnx(stem: str, module, args: tuple, input_names: list[str], key: str) -> Path:
    """The torch module exported with the legacy exporter (opset 17), cached by key."""
    import torch

    path = CACHE / f"{stem}-{digest(key, torch.__version__)}.onnx"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=["y"],
                          opset_version=17, dynamo=False, do_constant_folding=True)
    tmp.replace(path)
    return path


def helper_onnx(stem: str, nodes, inputs, output, initializers=()) -> Path:
    """A small graph written with onnx.helper."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        initializer=[helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    path = CACHE / f"{stem}-{digest(data)}.onnx"
    write_if_changed(path, data)
    return path


# ---------------------------------------------------------------------------------------------
# numpy forwards


def np_linear(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(-1, keepdims=True)
    return d / np.sqrt(var + eps) * g + b


def _erf():
    if have("scipy"):
        from scipy.special import erf
        return erf, "scipy.special.erf"

    def erf(x):  # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7
        s = np.sign(x)
        a = np.abs(x)
        t = 1 / (1 + 0.3275911 * a)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (
            -1.453152027 + t * 1.061405429))))
        return s * (1 - poly * np.exp(-a * a))
    return erf, "Abramowitz-Stegun 7.1.26"


ERF, ERF_HOW = _erf()


def np_gelu(x):
    return (0.5 * x * (1 + ERF(x * np.float32(1 / np.sqrt(2))))).astype(np.float32)


def np_conv3x3_pad1(x, w, b):
    """[1, C, H, W] conv [M, C, 3, 3] (padding 1) through im2col and one matmul."""
    _, c, h, wd = x.shape
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))  # [C, H, W, 3, 3]
    cols = np.ascontiguousarray(cols.transpose(0, 3, 4, 1, 2)).reshape(c * 9, h * wd)
    y = w.reshape(w.shape[0], c * 9) @ cols + b[:, None]
    return y.reshape(1, w.shape[0], h, wd)


# ---------------------------------------------------------------------------------------------
# the sections


def fma_exe() -> Path | None:
    """The FMA loop in C, compiled once into the cache (None without a C compiler)."""
    source = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define CHAINS 12
static long iters;
static volatile float sink[64];
static void *work(void *arg) {
    long id = (long)arg;
    __m256 acc[CHAINS];
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_ps((float)(i + id));
    for (long k = 0; k < iters; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], m, c);
    }
    __m256 s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = _mm256_add_ps(s, acc[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    sink[id] = out[0];
    return NULL;
}
int main(int argc, char **argv) {
    int threads = atoi(argv[1]), reps = atoi(argv[3]);
    iters = atol(argv[2]);
    for (int r = 0; r < reps; r++) {
        pthread_t t[64];
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, work, (void *)i);
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec);
        printf("%f\n", 2.0 * 8 * CHAINS * (double)iters * threads / s / 1e9);
    }
    return 0;
}
"""
    CACHE.mkdir(parents=True, exist_ok=True)
    src = CACHE / "fma_peak.c"
    exe = CACHE / "fma_peak"
    write_if_changed(src, source.encode())
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        try:
            subprocess.run(["cc", "-O3", "-march=native", "-pthread", str(src), "-o", str(exe)],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"peak: no C compiler result ({e}); skipped")
            return None
    return exe


def fma_rates(exe: Path, threads: int, iters: int, reps: int) -> list[float]:
    out = subprocess.run([str(exe), str(threads), str(iters), str(reps)], capture_output=True,
                         text=True, check=True).stdout.split()
    return [float(v) for v in out]


def peak_gflops(thread_counts: list[int]) -> dict[int, dict]:
    """fp32 peak from the FMA loop: {threads: {"best", "median"}}, {} without cc."""
    exe = fma_exe()
    result = {}
    for n in thread_counts if exe else ():
        rates = fma_rates(exe, n, 100_000_000, 7)
        result[n] = {"best": max(rates), "median": statistics.median(rates)}
    return result


def fma_scaling(thread_counts: list[int]) -> float:
    """The FMA loop's best 2-thread rate over its best 1-thread rate in a short probe (~0.5 s):
    near 2 when both cores are free, near 1 when another job holds one. 0 when not measured."""
    exe = fma_exe()
    if exe is None or 1 not in thread_counts or 2 not in thread_counts:
        return 0.0
    one = max(fma_rates(exe, 1, 20_000_000, 3))
    return max(fma_rates(exe, 2, 20_000_000, 3)) / one


def sgemm_cases(peers: Peers, sizes) -> list[Case]:
    cases = []
    for n in sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n), np.float32)
        b = rng.standard_normal((n, n), np.float32)
        case = Case("sgemm", f"N={n}", "GFLOP/s", work=2.0 * n ** 3)
        built = mlg_model(f"sgemm{n}", f"model sgemm{n} {{\n    input a: f32[{n}, {n}]\n"
                                       f"    input b: f32[{n}, {n}]\n    output c = a @ b\n}}\n")
        case.built = built
        peers.aotml_runners(case, built, {"a": a, "b": b})
        if n <= 64:  # where the call itself is most of the time
            peers.aotml_runners(case, built, {"a": a, "b": b}, CALL, prepared=False)
        c_np = np.empty((n, n), np.float32)
        for t in peers.thread_counts:
            case.runners[("numpy", t)] = lambda a=a, b=b, c=c_np: np.matmul(a, b, out=c)
        onnx_path = None
        if peers.ort:
            from onnx import helper
            onnx_path = helper_onnx(f"sgemm{n}", [helper.make_node("MatMul", ["a", "b"], ["c"])],
                                    [("a", [n, n]), ("b", [n, n])], ("c", [n, n]))
        peers.ort_runners(case, onnx_path, {"a": a, "b": b})
        if peers.torch:
            import torch
            ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.empty(n, n)
            for t in peers.thread_counts:
                case.runners[("torch", t)] = (
                    lambda ta=ta, tb=tb, tc=tc: torch.mm(ta, tb, out=tc))
        for t in peers.thread_counts:
            if not peers.torch:
                case.notes[("torch", t)] = "n/a (torch missing)"
            case.notes[("torch.compile", t)] = "— (= eager mm)"
        cases.append(case)
    return cases


def chain_cases(peers: Peers) -> list[Case]:
    rng = np.random.default_rng(5)
    x = rng.standard_normal(CHAIN_N, np.float32)
    cases = []
    for what in ("chain", "copy"):
        if what == "chain":
            case = Case("chain", "max(x*2+1, 0)*0.5, 16M f32", "GB/s", work=8.0 * CHAIN_N)
            text = (f"model chain {{\n    input x: f32[{CHAIN_N}]\n"
                    f"    output y = maximum(x * 2 + 1, 0) * 0.5\n}}\n")
        else:
            case = Case("chain", "copy y = x, 16M f32", "GB/s", work=8.0 * CHAIN_N)
            text = f"model copy {{\n    input x: f32[{CHAIN_N}]\n    output y = x\n}}\n"
        built = mlg_model(what, text)
        case.built = built
        peers.aotml_runners(case, built, {"x": x})
        y_np = np.empty_like(x)
        if what == "chain":
            def np_chain(y=y_np):
                np.multiply(x, 2, out=y)
                np.add(y, 1, out=y)
                np.maximum(y, 0, out=y)
                np.multiply(y, 0.5, out=y)
                return y
            case.runners[("numpy", 1)] = np_chain
        else:
            case.runners[("numpy", 1)] = lambda y=y_np: (np.copyto(y, x), y)[1]
        for t in peers.thread_counts:
            if t != 1:
                case.notes[("numpy", t)] = "n/a (ufuncs are single-threaded)"
        onnx_path = None
        if peers.ort:
            from onnx import helper
            if what == "chain":
                nodes = [helper.make_node("Mul", ["x", "two"], ["t1"]),
                         helper.make_node("Add", ["t1", "one"], ["t2"]),
                         helper.make_node("Max", ["t2", "zero"], ["t3"]),
                         helper.make_node("Mul", ["t3", "half"], ["y"])]
                inits = [("two", 2.0), ("one", 1.0), ("zero", 0.0), ("half", 0.5)]
            else:
                nodes, inits = [helper.make_node("Identity", ["x"], ["y"])], []
            onnx_path = helper_onnx(what, nodes, [("x", [CHAIN_N])], ("y", [CHAIN_N]), inits)
        peers.ort_runners(case, onnx_path, {"x": x})
        if peers.torch:
            import torch
            tx = torch.from_numpy(x)
            ty, compiled_y = torch.empty_like(tx), torch.empty_like(tx)

            if what == "chain":
                def eager(x=tx, y=ty):
                    torch.mul(x, 2, out=y)
                    torch.add(y, 1, out=y)
                    torch.clamp_min(y, 0, out=y)
                    torch.mul(y, 0.5, out=y)
                    return y

                def fused(x, y):  # inductor makes this one loop that writes y
                    return y.copy_(torch.clamp_min(x * 2 + 1, 0) * 0.5)
            else:
                def eager(x=tx, y=ty):
                    return y.copy_(x)

                def fused(x, y):
                    return y.copy_(x)
            peers.torch_runners(case, eager, fused, (tx, compiled_y), what)
        else:
            peers.torch_runners(case, None)
        cases.append(case)
    return cases


def mlp_weights():
    rng = np.random.default_rng(1)
    w = {}
    for i, (o, n) in enumerate([(512, 784), (512, 512), (10, 512)], 1):
        w[f"l{i}_w"] = (rng.standard_normal((o, n)) / np.sqrt(n)).astype(np.float32)
        w[f"l{i}_b"] = (0.1 * rng.standard_normal(o)).astype(np.float32)
    return w


def lin(mode: str, x: str, name: str) -> str:
    """The .mlg of a dense layer: `linear` on the PyTorch-layout weight NAME_w [out, in], or
    `@` on the pre-transposed NAME_wt [in, out]."""
    if mode == "linear":
        return f"linear({x}, {name}_w, {name}_b)"
    return f"{x} @ {name}_wt + {name}_b"


def transposed(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights with every NAME_w [out, in] stored as NAME_wt [in, out]."""
    return {(k + "t" if k.endswith("_w") else k): (np.ascontiguousarray(v.T) if k.endswith("_w")
                                                   else v) for k, v in w.items()}


def params_text(w: dict[str, np.ndarray]) -> str:
    return "\n".join(f"    param {k}: f32[{', '.join(map(str, v.shape))}]"
                     for k, v in w.items())


def mlp_text(batch: int, mode: str) -> str:
    w = mlp_weights() if mode == "linear" else transposed(mlp_weights())
    return f"""model mlp_b{batch} {{
    input x:  f32[{batch}, 784]
{params_text(w)}
    h1 = relu({lin(mode, "x", "l1")})
    h2 = relu({lin(mode, "h1", "l2")})
    output probs = softmax({lin(mode, "h2", "l3")}, axis=-1)
}}
"""


def mlp_cases(peers: Peers) -> list[Case]:
    w = mlp_weights()
    cases = []
    for batch in (1, 64):
        case = Case("models", f"MLP 784-512-512-10, batch {batch}", "ms")
        built = mlg_model(f"mlp_b{batch}", mlp_text(batch, "linear"), w)
        case.built = built
        at = case.built_at = mlg_model(f"mlp_b{batch}_at", mlp_text(batch, "@"), transposed(w))
        x = np.random.default_rng(10 + batch).standard_normal((batch, 784), np.float32)
        peers.aotml_runners(case, built, {"x": x})
        peers.aotml_runners(case, at, {"x": x}, AT)

        def np_mlp(x=x):
            h = np.maximum(np_linear(x, w["l1_w"], w["l1_b"]), 0)
            h = np.maximum(np_linear(h, w["l2_w"], w["l2_b"]), 0)
            return np_softmax(np_linear(h, w["l3_w"], w["l3_b"]))
        for t in peers.thread_counts:
            case.runners[("numpy", t)] = np_mlp
        module = None
        if peers.torch:
            import torch
            from torch import nn
            module = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                                   nn.ReLU(), nn.Linear(512, 10), nn.Softmax(-1)).eval()
            for i, layer in zip((1, 2, 3), (module[0], module[2], module[4])):
                layer.weight.data = torch.from_numpy(w[f"l{i}_w"].copy())
                layer.bias.data = torch.from_numpy(w[f"l{i}_b"].copy())
            peers.torch_module(case, module, x, f"mlp_b{batch}",
                               digest(built.model.build_hash, batch))
        else:
            peers.without_torch(case)
        cases.append(case)
    return cases


def cnn_case(peers: Peers) -> Case:
    rng = np.random.default_rng(2)

    def he(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    w = {"c1_w": he(32, 3, 3, 3), "c1_b": (0.1 * rng.standard_normal(32)).astype(np.float32),
         "c2_w": he(64, 32, 3, 3), "c2_b": (0.1 * rng.standard_normal(64)).astype(np.float32),
         "fc_w": he(10, 64), "fc_b": (0.1 * rng.standard_normal(10)).astype(np.float32)}
    text = """model cnn {
    input  x:    f32[1, 3, 224, 224]
    param  c1_w: f32[32, 3, 3, 3]
    param  c1_b: f32[32]
    param  c2_w: f32[64, 32, 3, 3]
    param  c2_b: f32[64]
    param  fc_w: f32[10, 64]
    param  fc_b: f32[10]
    h1 = max_pool2d(relu(conv2d(x, c1_w, c1_b, padding=1)), kernel=2)
    h2 = relu(conv2d(h1, c2_w, c2_b, padding=1))
    g = reshape(global_avg_pool(h2), shape=(1, 64))
    output y = linear(g, fc_w, fc_b)
}
"""
    case = Case("models", "CNN 3-32-64 conv, 1x3x224x224", "ms")
    built = mlg_model("cnn", text, w)
    case.built = built
    x = np.random.default_rng(20).standard_normal((1, 3, 224, 224), np.float32)
    peers.aotml_runners(case, built, {"x": x})

    def np_cnn():
        h = np.maximum(np_conv3x3_pad1(x, w["c1_w"], w["c1_b"]), 0)
        h = h.reshape(1, 32, 112, 2, 112, 2).max(axis=(3, 5))
        h = np.maximum(np_conv3x3_pad1(h, w["c2_w"], w["c2_b"]), 0)
        return np_linear(h.mean(axis=(2, 3)), w["fc_w"], w["fc_b"])
    for t in peers.thread_counts:
        case.runners[("numpy", t)] = np_cnn
    if peers.torch:
        import torch
        from torch import nn
        module = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
        for layer, name in ((module[0], "c1"), (module[3], "c2"), (module[7], "fc")):
            layer.weight.data = torch.from_numpy(w[f"{name}_w"].copy())
            layer.bias.data = torch.from_numpy(w[f"{name}_b"].copy())
        peers.torch_module(case, module, x, "cnn", built.model.build_hash)
    else:
        peers.without_torch(case)
    return case


D, HEADS, FF, SEQ = 384, 6, 1536, 128


def encoder_text(mode: str, w: dict[str, np.ndarray]) -> str:
    hd = D // HEADS
    return f"""def heads(t) {{
    return transpose(reshape(t, shape=(1, {SEQ}, {HEADS}, {hd})), perm=(0, 2, 1, 3))
}}

def merge(t) {{
    return reshape(transpose(t, perm=(0, 2, 1, 3)), shape=(1, {SEQ}, {D}))
}}

model encoder {{
    input x: f32[1, {SEQ}, {D}]
{params_text(w)}
    h = layer_norm(x, ln1_g, ln1_b)
    att = attention(heads({lin(mode, "h", "q")}), heads({lin(mode, "h", "k")}),
                    heads({lin(mode, "h", "v")}))
    a = x + {lin(mode, "merge(att)", "o")}
    f = gelu({lin(mode, "layer_norm(a, ln2_g, ln2_b)", "fc1")})
    output y = a + {lin(mode, "f", "fc2")}
}}
"""


def encoder_case(peers: Peers) -> Case:
    rng = np.random.default_rng(3)

    w = {}
    for name, (o, n) in {"q": (D, D), "k": (D, D), "v": (D, D), "o": (D, D),
                         "fc1": (FF, D), "fc2": (D, FF)}.items():
        w[f"{name}_w"] = (rng.standard_normal((o, n)) / np.sqrt(n)).astype(np.float32)
        w[f"{name}_b"] = (0.02 * rng.standard_normal(o)).astype(np.float32)
    for ln in ("ln1", "ln2"):
        w[f"{ln}_g"] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        w[f"{ln}_b"] = (0.1 * rng.standard_normal(D)).astype(np.float32)
    hd = D // HEADS
    case = Case("models", f"encoder layer d{D} h{HEADS} ff{FF}, 1x{SEQ}x{D}", "ms")
    built = mlg_model("encoder", encoder_text("linear", w), w)
    case.built = built
    at = case.built_at = mlg_model("encoder_at", encoder_text("@", transposed(w)),
                                   transposed(w))
    x = np.random.default_rng(30).standard_normal((1, SEQ, D), np.float32)
    peers.aotml_runners(case, built, {"x": x})
    peers.aotml_runners(case, at, {"x": x}, AT)

    def np_heads(t):
        return t.reshape(1, SEQ, HEADS, hd).transpose(0, 2, 1, 3)

    def np_encoder():
        h = np_layer_norm(x, w["ln1_g"], w["ln1_b"])
        q, k, v = (np_heads(np_linear(h, w[f"{n}_w"], w[f"{n}_b"])) for n in "qkv")
        p = np_softmax(q @ k.transpose(0, 1, 3, 2) * np.float32(1 / np.sqrt(hd)))
        att = (p @ v).transpose(0, 2, 1, 3).reshape(1, SEQ, D)
        a = x + np_linear(att, w["o_w"], w["o_b"])
        f = np_gelu(np_linear(np_layer_norm(a, w["ln2_g"], w["ln2_b"]), w["fc1_w"], w["fc1_b"]))
        return a + np_linear(f, w["fc2_w"], w["fc2_b"])
    for t in peers.thread_counts:
        case.runners[("numpy", t)] = np_encoder
    if peers.torch:
        import torch
        import torch.nn.functional as F
        from torch import nn

        class Encoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
                self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
                self.fc1, self.fc2 = nn.Linear(D, FF), nn.Linear(FF, D)

            def forward(self, x):
                h = self.ln1(x)
                q, k, v = (m(h).view(1, SEQ, HEADS, hd).transpose(1, 2)
                           for m in (self.q, self.k, self.v))
                att = F.scaled_dot_product_attention(q, k, v)
                a = x + self.o(att.transpose(1, 2).reshape(1, SEQ, D))
                return a + self.fc2(F.gelu(self.fc1(self.ln2(a))))

        module = Encoder().eval()
        for name in ("q", "k", "v", "o", "fc1", "fc2"):
            getattr(module, name).weight.data = torch.from_numpy(w[f"{name}_w"].copy())
            getattr(module, name).bias.data = torch.from_numpy(w[f"{name}_b"].copy())
        for name in ("ln1", "ln2"):
            getattr(module, name).weight.data = torch.from_numpy(w[f"{name}_g"].copy())
            getattr(module, name).bias.data = torch.from_numpy(w[f"{name}_b"].copy())
        peers.torch_module(case, module, x, "encoder", built.model.build_hash)
    else:
        peers.without_torch(case)
    return case


def minilm_case(peers: Peers) -> Case | str:
    import minilm

    lacking = minilm.missing()
    if lacking:
        return ("MiniLM skipped: missing " + ", ".join(lacking) + " (pip install "
                + " && pip install ".join(lacking) + ")")
    onnx_path = minilm.export_onnx()
    built = aotml_build(onnx_path)
    case = Case("models", f"all-MiniLM-L6-v2, seq {minilm.SEQ} (ONNX import)", "ms")
    case.built = built
    feeds = minilm.make_inputs(np.random.default_rng(7))
    peers.aotml_runners(case, built, feeds)
    bert = minilm.load_torch_model()
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in bert.state_dict().items()}
    cfg = bert.config
    nh, hd, eps = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads, \
        cfg.layer_norm_eps
    ids, mask, types = (feeds[n] for n in minilm.INPUTS)
    seq = ids.shape[1]

    def np_bert():
        e = "embeddings."
        h = (sd[e + "word_embeddings.weight"][ids[0]] + sd[e + "position_embeddings.weight"][:seq]
             + sd[e + "token_type_embeddings.weight"][types[0]])
        h = np_layer_norm(h, sd[e + "LayerNorm.weight"], sd[e + "LayerNorm.bias"], eps)
        bias = (1.0 - mask[0].astype(np.float32)) * np.finfo(np.float32).min
        for i in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{i}."

            def dense(t, name, p=p):
                return np_linear(t, sd[p + name + ".weight"], sd[p + name + ".bias"])
            q, k, v = (dense(h, f"attention.self.{n}").reshape(seq, nh, hd).transpose(1, 0, 2)
                       for n in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) * np.float32(1 / np.sqrt(hd)) + bias
            att = (np_softmax(s) @ v).transpose(1, 0, 2).reshape(seq, nh * hd)
            h = np_layer_norm(dense(att, "attention.output.dense") + h,
                              sd[p + "attention.output.LayerNorm.weight"],
                              sd[p + "attention.output.LayerNorm.bias"], eps)
            f = dense(np_gelu(dense(h, "intermediate.dense")), "output.dense")
            h = np_layer_norm(f + h, sd[p + "output.LayerNorm.weight"],
                              sd[p + "output.LayerNorm.bias"], eps)
        return h[None]
    for t in peers.thread_counts:
        case.runners[("numpy", t)] = np_bert
    peers.ort_runners(case, onnx_path, feeds)
    import torch
    wrapped = minilm._wrapper(bert)
    args = tuple(torch.from_numpy(feeds[n]) for n in minilm.INPUTS)
    peers.module_runners(case, wrapped, args, "minilm")
    return case


def overhead_case(peers: Peers) -> Case:
    case = Case("models", "call overhead: y = x + 1 on f32[1]", "ms")
    built = mlg_model("overhead", "model overhead {\n    input x: f32[1]\n"
                                  "    output y = x + 1\n}\n")
    case.built = built
    x = np.ones(1, np.float32)
    peers.aotml_runners(case, built, {"x": x})
    peers.aotml_runners(case, built, {"x": x}, CALL, prepared=False)
    y = np.empty(1, np.float32)
    for t in peers.thread_counts:
        case.runners[("numpy", t)] = lambda: np.add(x, 1, out=y)
    onnx_path = None
    if peers.ort:
        from onnx import helper
        onnx_path = helper_onnx("overhead", [helper.make_node("Add", ["x", "one"], ["y"])],
                                [("x", [1])], ("y", [1]), [("one", 1.0)])
    peers.ort_runners(case, onnx_path, {"x": x})
    if peers.torch:
        import torch
        tx, ty = torch.from_numpy(x), torch.empty(1)
        for t in peers.thread_counts:
            case.runners[("torch", t)] = lambda: torch.add(tx, 1, out=ty)
            case.notes[("torch.compile", t)] = "—"
    else:
        peers.torch_runners(case, None)
    return case


# ---------------------------------------------------------------------------------------------
# the table


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def columns(cases: list[Case], thread_counts: list[int]) -> list[tuple[str, int]]:
    """The (peer, threads) columns of a table: every peer at every count, but the aotml variant
    only where a case has it."""
    cols = []
    for p in PEERS:
        for t in thread_counts:
            if p in (AT, CALL) and not any((p, t) in c.times or (p, t) in c.notes
                                           for c in cases):
                continue
            cols.append((p, t))
    return cols


def cell(case: Case, key: tuple[str, int]) -> str:
    if key not in case.times:
        return case.notes.get(key, "—")
    ts = case.times[key]
    med = statistics.median(ts)
    spread = ""
    if len(ts) >= 4:
        q = statistics.quantiles(ts, n=4)
        spread = f" ±{50 * (q[2] - q[0]) / med:.0f}%"
    text = ("†" if key in case.busy else "") + fmt(case.value(med)) + spread
    ref = case.times.get(("aotml", key[1]))  # aotml at the same thread count
    if key[0] != "aotml" and ref:
        text += f" [{statistics.median(ref) / med:.2f}×]"
    return text


def table(cases: list[Case], thread_counts: list[int]) -> list[str]:
    cols = columns(cases, thread_counts)
    head = ["case"] + [f"{p} {t}t" for p, t in cols] + ["max rel_err",
                                                        "load; FMA 2t/1t; quiet rounds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in cases:
        err = max((e for k, e in c.errors.items() if k in c.times), default=0.0)
        probe = f"; ×{c.scaling:.2f}" if c.scaling else ""
        quiet = []
        for t in sorted({k[1] for k in c.quiet}):
            q = [c.quiet[k] for k in c.quiet if k[1] == t]
            quiet.append(f"{t}t {min(a for a, _ in q)}/{max(b for _, b in q)}")
        row = [c.name] + [cell(c, k) for k in cols] + [
            f"{err:.1e}", f"{c.load[0]:.1f}–{c.load[1]:.1f}{probe}; {', '.join(quiet)}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def workspace_table(cases: list[Case]) -> list[str]:
    lines = ["| model | kernels | workspace bytes | liveness lower bound | workspace / bound |"
             " weights bytes |", "| --- | --- | --- | --- | --- | --- |"]
    trivial = []
    for c in cases:
        for label, built in ((c.name, getattr(c, "built", None)),
                             (f"{c.name} ({AT})", getattr(c, "built_at", None))):
            if built is None:
                continue
            ws, bound = built.workspace
            first = built.report.splitlines()[0] if built.report else ""
            kernels = first.split(": ")[-1].split()[0] if ": " in first else "?"
            if c.section != "models" and ws == 0:
                trivial.append(label)
                continue
            ratio = "—" if not bound else f"{ws / bound:.2f}"
            if bound == 0 and ws == 0:
                ratio = "1 (both 0)"
            lines.append(f"| {label} | {kernels} | {ws:,} | "
                         f"{'?' if bound is None else f'{bound:,}'} | {ratio} | "
                         f"{_weights_bytes(built):,} |")
    if trivial:
        lines += ["", f"One kernel and no workspace (0 bytes, bound 0): {', '.join(trivial)}."]
    return lines


def _weights_bytes(built: Built) -> int:
    return int(built.model._model.weights_bytes)


def environment() -> dict[str, str]:
    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        flags = info.get("Flags", "").split()
        env["cpu"] = (f"{info.get('Model name', '?')} (family {info.get('CPU family', '?')} "
                      f"model {info.get('Model', '?')}), {info.get('CPU(s)', '?')} cores, "
                      f"{'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else '-'}"
                      f", L2 {info.get('L2 cache', '?')}, L3 {info.get('L3 cache', '?')}")
    except OSError:
        env["cpu"] = platform.processor()
    import importlib.metadata
    try:
        import llvmlite.binding as llvm
        env["llvm host cpu"] = llvm.get_host_cpu_name()
        env["llvmlite"] = importlib.metadata.version("llvmlite")
    except Exception:
        pass
    for pkg in ("numpy", "scipy", "onnx", "onnxruntime", "torch", "transformers", "threadpoolctl"):
        try:
            env[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        env["numpy blas"] = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:
        pass
    import aotml
    env["aotml"] = f"{aotml.__version__} (sources {aotml_key()})"
    return env


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: N <= 512, 5 rounds, short batches, no torch.compile")
    parser.add_argument("--threads", default="1,2",
                        help="thread counts of every peer, aotml included (default 1,2)")
    parser.add_argument("--only", default="",
                        help="sections: sgemm,chain,models (= mlp,cnn,encoder,minilm,overhead)")
    parser.add_argument("--sizes", default="", help="SGEMM sizes (default 32,...,2048)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per case (15; quick 5)")
    parser.add_argument("--target", type=float, default=None,
                        help="seconds of calls per cell and round (0.1; quick 0.02)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per case, fewer rounds past it (60; quick 8)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--wait-quiet", type=float, default=None,
                        help="before each case wait up to this many seconds for other "
                             "processes to go quiet (default 20; quick 0)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE for torch's OpenMP threads (they spin "
                             "otherwise, which a busy machine punishes badly at 2 threads)")
    parser.add_argument("--report", action="store_true", help="print aotml's build reports")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    parser.add_argument("--json", type=Path, default=None, help="write the raw times here")
    args = parser.parse_args(argv)

    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when torch's libgomp loads, below
    only = set()
    for item in (s.strip() for s in args.only.split(",") if s.strip()):
        only |= set(MODELS) if item == "models" else {item}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; "
                     f"choose from sgemm, chain, models, {', '.join(MODELS)}")
    wanted = only or set(SECTIONS)
    rounds = args.rounds or (5 if args.quick else 15)
    target = args.target or (0.02 if args.quick else 0.1)
    budget = args.budget or (8.0 if args.quick else 60.0)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 20.0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()] if args.sizes else \
        [n for n in SGEMM_SIZES if not args.quick or n <= 512]

    threads = Threads()
    if have("torch"):
        import torch
        torch.set_num_threads(max(thread_counts))
    compile_note = "skipped (--quick)" if args.quick else "skipped (--no-compile)"
    peers = Peers(thread_counts, not (args.quick or args.no_compile), compile_note, threads)
    env = environment()
    env["numpy threads"] = threads.blas_how + (
        " (read back)" if threads.verify(thread_counts) else " (did NOT read back)")
    env["aotml threads"] = ("each model's set_num_threads (default: AOTML_NUM_THREADS="
                            f"{os.environ.get('AOTML_NUM_THREADS', 'unset')}, else the cores)")
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")
    if not threads.controls_blas:
        print("warning: numpy's BLAS threads cannot be set here; its columns run at its default")
    command = "python benchmarks/bench.py " + " ".join(shlex.quote(a) for a in
                                                       (argv if argv is not None else sys.argv[1:]))
    print(f"# aotml benchmark (issue 5)\ncommand: {command.strip()}")
    for k, v in env.items():
        print(f"{k}: {v}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    out: list[str] = [f"Command: `{command.strip()}`", ""]
    out += [f"- {k}: {v}" for k, v in env.items()]
    out.append(f"- load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    raw: dict = {"env": env, "cases": []}
    all_cases: list[Case] = []
    skipped: list[str] = []

    def run_section(title: str, cases: list[Case], notes: list[str]) -> None:
        for case in cases:
            start = time.perf_counter()
            check(case, threads)
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            case.scaling = fma_scaling(thread_counts)
            measure(case, threads, rounds, target, budget)
            n_rounds = len(next(iter(case.times_all.values()), []))
            busy = f", busy (†): {', '.join(f'{p} {t}t' for p, t in sorted(case.busy))}" \
                if case.busy else ""
            print(f"  timed {case.name}: {n_rounds} rounds, {time.perf_counter() - start:.0f} s"
                  f"{busy}", flush=True)
        lines = [f"### {title}", ""] + notes + [""] + table(cases, thread_counts) + [""]
        print("\n" + "\n".join(lines), flush=True)
        out.extend(["", *lines])
        all_cases.extend(cases)
        for case in cases:
            raw["cases"].append({
                "section": case.section, "case": case.name, "unit": case.unit,
                "work": case.work, "load": case.load,
                "seconds": {f"{p} {t}t": ts for (p, t), ts in case.times_all.items()},
                "foreign_cores": {f"{p} {t}t": f for (p, t), f in case.foreign.items()},
                "busy": [f"{p} {t}t" for p, t in sorted(case.busy)],
                "rel_err": {f"{p} {t}t": e for (p, t), e in case.errors.items()},
                "notes": {f"{p} {t}t": n for (p, t), n in case.notes.items()}})

    def log_build(cases):
        for c in cases:
            b = getattr(c, "built", None)
            if b is not None and b.seconds is not None:
                print(f"  built {c.name} with aotml in {b.seconds:.1f} s", flush=True)
            if args.report and b is not None:
                print(b.report)

    cell_note = ("Cells: median ±half the inter-quartile range over the rounds, then "
                 "[aotml time / peer time] at the cell's thread count (>1: aotml slower). "
                 "max rel_err: the largest max|peer - aotml| / max|aotml at 1 thread| over the "
                 "timed cells (aotml at more threads must match its 1-thread output bit for "
                 "bit). load: the 1-minute load "
                 "average before and after the case; FMA 2t/1t: the C FMA loop's 2-thread rate "
                 "over its 1-thread rate just before the case (near 2 when both cores are free, "
                 "near 1 when another job holds one). quiet rounds: the fewest, over the cells "
                 "of that thread count, of rounds in which other processes left the cell's "
                 "threads their cores (from /proc/stat; a cell with 3 or more keeps only "
                 "those). †: fewer than 3 quiet rounds, all rounds kept: another job held a "
                 "core, and a 2-thread cell then measures the scheduler (a barrier waits a "
                 "4 ms tick for a descheduled thread), not the library.")
    if "sgemm" in wanted:
        print("\n== sgemm: building and checking", flush=True)
        peak = peak_gflops(thread_counts)
        cases = sgemm_cases(peers, sizes)
        log_build(cases)
        notes = [cell_note, ""]
        if peak:
            notes.append("fp32 peak, FMA loop in C (cc -O3 -march=native, 12 chains of 8-wide "
                         "FMAs per thread; best of 7 runs, median in brackets): " + ", ".join(
                             f"{t} thread{'s' if t > 1 else ''} {fmt(p['best'])} GFLOP/s "
                             f"({fmt(p['median'])})" for t, p in peak.items()))
        notes.append(f"aotml runs a prepared call (Model.prepare, checked once); '{CALL}' "
                     "(N <= 64) is the plain call model(a=, b=, out=), checked every time; "
                     "numpy is np.matmul(a, b, out=c).")
        raw["peak"] = peak
        run_section("SGEMM (GFLOP/s, higher is better)", cases, notes)
        for t in thread_counts:  # the FMA loop's peak is measured at every thread count
            if t not in peak:
                continue
            best = {c.name: c.value(statistics.median(c.times[("aotml", t)]))
                    for c in cases if ("aotml", t) in c.times}
            line = f"aotml as a share of the {t}-thread peak: " + ", ".join(
                f"{k} {100 * v / peak[t]['best']:.0f}%" for k, v in best.items())
            print(line)
            out.append(line)
    if "chain" in wanted:
        print("\n== chain: building and checking", flush=True)
        cases = chain_cases(peers)
        log_build(cases)
        run_section("Elementwise chain and copy (GB/s, one read + one write of 64 MiB; "
                    "higher is better)", cases,
                    [cell_note, "", "The copy row: aotml `output y = x`, numpy np.copyto, "
                     "ONNX Runtime Identity, torch y.copy_(x). numpy's chain is four ufuncs "
                     "with out=, torch eager four ops with out=, ONNX Runtime Mul, Add, Max, "
                     "Mul; aotml and torch.compile fuse them into one loop."])
    model_cases: list[Case] = []
    if wanted & {"mlp", "cnn", "encoder", "minilm", "overhead"}:
        print("\n== models: building, exporting, compiling and checking", flush=True)
        if "mlp" in wanted:
            model_cases += mlp_cases(peers)
        if "cnn" in wanted:
            model_cases.append(cnn_case(peers))
        if "encoder" in wanted:
            model_cases.append(encoder_case(peers))
        if "minilm" in wanted:
            got = minilm_case(peers)
            if isinstance(got, str):
                skipped.append(got)
                print(got)
            else:
                model_cases.append(got)
        if "overhead" in wanted:
            model_cases.append(overhead_case(peers))
        log_build(model_cases)
        notes = [cell_note, "",
                 "Each call from Python on one input; aotml and ONNX Runtime write into "
                 "preallocated outputs, both through calls bound to their arrays once (aotml's "
                 f"Model.prepare, ONNX Runtime's IO binding; '{CALL}' is aotml's plain call "
                 "model(**arrays, out=), checked every time); numpy is a hand-written forward "
                 f"(gelu with {ERF_HOW}); torch runs under inference_mode. aotml's .mlg uses "
                 "`linear(x, w, b)` on PyTorch-layout weights w [out, in]; the column "
                 f"'{AT}' is the same model with the weights stored [in, out] and "
                 "`x @ w + b` (MiniLM comes through the ONNX importer as MatMul on [in, out] "
                 "weights already)."] + \
            [f"{s}" for s in skipped]
        run_section("Models (median latency in ms, lower is better)", model_cases, notes)
    if all_cases:
        lines = ["### Workspace (aotml build --report)", "",
                 "The bytes of scratch memory the built library asks for, against the liveness "
                 "lower bound (the most bytes live at once under the plan's order).", ""]
        lines += workspace_table(all_cases)
        print("\n" + "\n".join(lines))
        out.extend(["", *lines])
    out.append("")
    out.append(f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if aotml_key(fresh=True) != aotml_key():
        line = (f"Note: aotml's sources changed on disk during the run (now "
                f"{aotml_key(fresh=True)}); this run built with the code it imported at the "
                f"start ({aotml_key()}).")
        print(line)
        out.append(line)
    if args.markdown:
        args.markdown.write_text("\n".join(out) + "\n")
        print(f"\nwrote {args.markdown}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
        print(f"wrote {args.json}")
    mismatches = [f"{c.name}: {k[0]} {k[1]}t {n}" for c in all_cases for k, n in c.notes.items()
                  if n.startswith("MISMATCH") or n.startswith("failed")]
    for m in mismatches:
        print("ERROR " + m)
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
