"""Single kernels through prepared calls at 1 and 2 threads: the measurements behind schedule
constants (parallel split, packing, tile shapes), with a knob to change a constant for a run.

    python benchmarks/kernel_times.py [--cases matmul:32,matmul:64,softmax,layer_norm,exp:16384]
                                 [--set aotml.ops.nn.PACK_MIN_BYTES=0] [--rounds 5]

A case is `matmul:N` (N x N @ N x N, both inputs), `softmax` (1x12x128x128, MiniLM's
attention rows), `layer_norm` (128x384 with weights), `exp:n` (exp(x*2+1)*0.5 over n floats),
or `mlg:PATH` (any model; f32 inputs drawn uniform in [-2, 2), integer inputs 0). `--set`
assigns an integer to a module attribute before anything is built (repeatable), so one
constant's effect is measured against a run without it. Each case is built once into
build/bench/kernels, then every thread count runs `--rounds` rounds of ~20 ms of calls,
interleaved; a cell is the best round's time per call. Not a test: the numbers vary with the
machine's load, so compare cells of one run, or runs made back to back.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aotml  # noqa: E402

OUT = REPO / "build" / "bench" / "kernels"
ONE = '''model {name} {{
{lines}
}}
'''


def source(case: str, folder: Path) -> Path:
    kind, _, arg = case.partition(":")
    if kind == "mlg":
        return Path(arg).resolve()
    name = case.replace(":", "_")
    lines = {
        "matmul": f"  input a: f32[{arg}, {arg}]\n  input b: f32[{arg}, {arg}]\n"
                  "  output y = a @ b",
        "softmax": "  input x: f32[1, 12, 128, 128]\n  output y = softmax(x, axis=-1)",
        "layer_norm": "  input x: f32[128, 384]\n  input g: f32[384]\n  input b: f32[384]\n"
                      "  output y = layer_norm(x, g, b, axis=-1)",
        "exp": f"  input x: f32[{arg}]\n  output y = exp(x * 2 + 1) * 0.5",
    }[kind]
    path = folder / f"{name}.mlg"
    path.write_text(ONE.format(name=name, lines=lines))
    return path


def best_per_call(call, rounds: int) -> float:
    start = time.perf_counter()
    call()
    per = max(time.perf_counter() - start, 1e-7)
    n = max(3, int(0.02 / per))
    for _ in range(min(n, 200)):
        call()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="matmul:32,matmul:64,matmul:128,softmax,layer_norm,"
                                      "exp:8192,exp:16384")
    p.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=INT")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    for item in args.set:
        target, _, value = item.partition("=")
        module, _, attr = target.rpartition(".")
        setattr(importlib.import_module(module), attr, int(value))
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print("case | 1 thread (us) | 2 threads (us)" + (f"   [{', '.join(args.set)}]"
                                                      if args.set else ""))
    for case in args.cases.split(","):
        src = source(case, OUT)
        model = aotml.load(aotml.build(src, OUT / f"{src.stem}.so"))
        feeds = {t.name: (rng.uniform(-2, 2, t.shape) if np.dtype(t.dtype).kind == "f"
                          else np.zeros(t.shape)).astype(t.dtype) for t in model.inputs}
        best = {1: float("inf"), 2: float("inf")}
        for _ in range(2):  # the thread counts interleaved, twice
            for threads in best:
                model.set_num_threads(threads)
                best[threads] = min(best[threads],
                                    best_per_call(model.prepare(**feeds), args.rounds))
        print(f"{case} | {best[1] * 1e6:.2f} | {best[2] * 1e6:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
