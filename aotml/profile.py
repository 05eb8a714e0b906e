"""`aotml profile`: where a model's run time goes, kernel by kernel.

The model is built with `profile=True` (or a library built with `--profile` is loaded), run
through a prepared call until the timing settles, and its counters read: each kernel's time per
run, its share of the run, and the rates its work gives (FLOPs and bytes as the build report
counts them). The kernels are named as in `aotml build --report` and as their functions' symbols
(`perf` shows the same names).
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aotml.errors import CompileError
from aotml.loader import KernelTime, Model, Profile


@dataclass(frozen=True)
class Timing:
    """A profile with the time of a whole run as the caller saw it."""

    profile: Profile
    run_seconds: float  # a prepared call from Python, median of the timed batches
    threads: int


def _dim_value(text: str, dims: dict[str, int], model: str, tensor: str) -> int:
    """A dim as the manifest states it ("N", "784", "N*16", "2*N + 1") for these values."""
    total = 0
    for term in text.replace(" ", "").split("+"):
        value = 1
        for factor in term.split("*"):
            if factor.isdigit():
                value *= int(factor)
            elif factor in dims:
                value *= dims[factor]
            else:
                raise CompileError(f"{model}: input '{tensor}' has the dim '{factor}': give its "
                                   f"value with --dim {factor}=VALUE, or the input itself with "
                                   f"-i {tensor}=FILE.npy")
        total += value
    return total


def random_inputs(model: Model, given: dict[str, np.ndarray], dims: dict[str, int],
                  seed: int = 0) -> dict[str, np.ndarray]:
    """`given`, and for every other input an array of its shape: floats drawn from N(0, 1),
    integers from {0, 1} (an index valid for any table), booleans at random."""
    rng = np.random.default_rng(seed)
    unknown = set(given) - {t.name for t in model.inputs}
    if unknown:
        raise CompileError(f"{model.name} has no input named {', '.join(sorted(unknown))}; its "
                           f"inputs: {', '.join(t.name for t in model.inputs)}")
    arrays = {}
    for t in model.inputs:
        if t.name in given:
            arrays[t.name] = given[t.name]
            continue
        shape = tuple(d if isinstance(d, int) else _dim_value(d, dims, model.name, t.name)
                      for d in t.shape)
        dtype = np.dtype(t.dtype)
        if dtype.kind == "f":
            arrays[t.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[t.name] = rng.random(shape) < 0.5
        else:
            arrays[t.name] = rng.integers(0, 2, shape).astype(dtype)
    return arrays


def measure(model: Model, arrays: dict[str, np.ndarray], seconds: float = 1.0,
            min_runs: int = 10) -> Timing:
    """Warm up, reset the counters, then run for about `seconds` (at least `min_runs` runs)."""
    call = model.prepare(**arrays)
    start = time.perf_counter()
    warm = 0
    while warm < 3 or time.perf_counter() - start < min(0.2, seconds / 4):
        call()
        warm += 1
    per_run = (time.perf_counter() - start) / warm
    batch = max(1, int(0.05 / max(per_run, 1e-9)))  # batches of ~50 ms for the median
    model.reset_profile()
    times = []
    runs = 0
    start = time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for _ in range(batch):
            call()
        times.append((time.perf_counter() - t0) / batch)
        runs += batch
    symbols = model.bind([arrays[t.name].shape for t in model.inputs])
    values = {s: int(symbols[k]) for k, s in enumerate(model.symbols)}
    return Timing(model.profile(values), float(np.median(times)), model.num_threads)


def _rate(amount: int, seconds: float, unit: float) -> str:
    return f"{amount / seconds / unit:.1f}" if seconds > 0 and amount else "-"


def _by_ops(kernels) -> list[KernelTime]:
    """One row per distinct list of fused ops (a transformer's layers share theirs), named by
    how many kernels it sums."""
    groups: dict[str, list[KernelTime]] = {}
    for k in kernels:
        groups.setdefault(k.ops, []).append(k)
    return [KernelTime(f"{len(ks)} kernel{'s' if len(ks) > 1 else ''}", ops,
                       sum(k.seconds for k in ks), sum(k.flops for k in ks),
                       sum(k.bytes for k in ks)) for ops, ks in groups.items()]


def format_timing(t: Timing, title: str, top: int | None = None, group: bool = False) -> str:
    """The kernels by time per run, most first, with the sum and the whole run below; with
    `group`, kernels of the same fused ops summed into one row."""
    p = t.profile
    runs = max(p.runs, 1)
    total = sum(k.seconds for k in p.kernels) / runs
    rows = sorted(_by_ops(p.kernels) if group else p.kernels, key=lambda k: -k.seconds)
    shown = rows if top is None else rows[:top]
    table = [("kernels" if group else "kernel", "us/run", "share", "GFLOP/s", "GB/s", "ops")]
    for k in shown:
        s = k.seconds / runs
        table.append((k.kernel, f"{s * 1e6:.2f}", f"{100 * s / total:.1f}%" if total else "-",
                      _rate(k.flops, s, 1e9), _rate(k.bytes, s, 1e9), k.ops))
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    right = (False, True, True, True, True)
    lines = [f"{title}: {p.runs} runs at {t.threads} thread{'s' if t.threads != 1 else ''}"]
    for r in table:
        cells = [c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right)]
        lines.append("  " + "  ".join(cells + [r[5]]))
    if len(shown) < len(rows):
        rest = sum(k.seconds for k in rows[len(shown):]) / runs
        lines.append(f"  ... {len(rows) - len(shown)} more {'rows' if group else 'kernels'}, "
                     f"{rest * 1e6:.2f} us/run")
    flops = sum(k.flops for k in p.kernels)
    lines.append(f"kernels: {total * 1e6:.2f} us/run, {_rate(flops, total, 1e9)} GFLOP/s; "
                 f"a prepared call from Python: {t.run_seconds * 1e6:.2f} us/run (median)")
    return "\n".join(lines)


def timing_record(t: Timing, model: str) -> dict:
    """The profile as plain data (`aotml profile --json`): per kernel in launch order, its
    ops, seconds per run, FLOPs and bytes per run."""
    runs = max(t.profile.runs, 1)
    return {"model": model, "threads": t.threads, "runs": t.profile.runs,
            "run_seconds": t.run_seconds,
            "kernels": [{"kernel": k.kernel, "ops": k.ops, "seconds": k.seconds / runs,
                         "flops": k.flops, "bytes": k.bytes} for k in t.profile.kernels]}


def profile_file(file: str, *, inputs: dict[str, np.ndarray], dims: dict[str, int],
                 seconds: float = 1.0, threads: int | None = None,
                 target_cpu: str | None = None, max_bytes: int | None = None,
                 winograd: bool = True) -> tuple[Timing, str]:
    """Build (unless `file` is a profiled .so) and run: the `aotml profile` command's
    measurement, with the model's name."""
    import aotml

    with tempfile.TemporaryDirectory(prefix="aotml-profile-") as tmp:
        if file.endswith(".so"):
            if target_cpu is not None or not winograd:
                raise CompileError("--target-cpu and --no-winograd apply to a source file; "
                                   "this library is built already")
            path = Path(file)
        else:
            from aotml.driver import build

            path = Path(tmp) / (re.sub(r"\W", "_", Path(file).stem) + ".so")
            build(file, path, target_cpu=target_cpu, max_bytes=max_bytes, profile=True,
                  winograd=winograd)
        model = aotml.load(path)
        if "cuda" in model.devices:  # the counters are the CPU's
            model.select_device("cpu")
        if not model.profiled:
            raise CompileError(f"'{file}' was built without --profile",
                               hint=f"profile the source, or rebuild: aotml build --profile "
                                    f"-o {Path(file).name} ...")
        if threads is not None:
            model.set_num_threads(threads)
        arrays = random_inputs(model, inputs, dims)
        return measure(model, arrays, seconds), model.name
