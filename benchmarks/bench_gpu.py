"""Issue 6's GPU check and benchmark, for a machine with an NVIDIA GPU (one run, one table).

    python benchmarks/bench_gpu.py [--sizes 1024,2048,4096,8192] [--arch sm_90] [--rounds 5]
                                   [--markdown FILE] [--build-dir build/bench_gpu] [--emulate]

First it checks: each model below is built with `--target cpu,cuda:ARCH`, run on the GPU and on
the CPU, and compared with the float64 reference interpreter (a mismatch stops the run). Then it
times, by median over --rounds batches:

  sgemm     C = A @ B for each N of --sizes, TF32 off: with host arrays in and out (aotml's
            call copies them to the device and back; PyTorch from_numpy -> .cuda() -> @ ->
            .cpu()), and on tensors already on the device (aotml's run_device on the torch
            tensors' memory against torch.matmul, each synchronized): the kernels alone, the
            issue's target (aotml at >= 70% of torch's speed).
  pointwise y = max(x*2+1, 0)*0.5 over --pointwise floats on device memory (run_device): GB/s
            counting one read and one write, against a device-to-device copy of the same
            bytes (torch's copy_), the issue's target (>= 80% of the copy), and torch's own
            eager expression.
  rows      softmax and layer_norm over 8192 rows of 4096 on device memory, against torch's:
            GB/s counting one read and one write.
  models    a 784-512-10 MLP at batch 64, an encoder-sized matmul + softmax + layer_norm chain:
            aotml on the GPU, aotml on the CPU, and PyTorch on the GPU (the input from the
            host and the output back to it; the weights uploaded once, as aotml's params);
            then the test suite's ONNX models exported from PyTorch (an MLP at batch 64, a
            CNN and a transformer encoder layer at batch 8), checked against onnxruntime,
            against the same torch modules on the GPU.

PyTorch is optional: without it (or without CUDA in it) its columns are left out and the line
says so. Without a usable GPU it stops at once saying why. `--emulate`, with AOTML_CUDA_DRIVER
naming the tests' stand-in driver, runs the whole script through the kernels' CPU emulation
(use small --sizes): a check of its plumbing anywhere; only times on a real GPU mean anything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import TOLERANCE, rel_err  # noqa: E402  (this folder: the same check as bench.py)

import aotml  # noqa: E402
from aotml.driver import build as build_model  # noqa: E402

MODELS = {
    "mlp64": ("""weights "mlp64.npz"

model mlp64 {
    input x: f32[64, 784]
    param w1: f32[784, 512]
    param w2: f32[512, 10]
    h = relu(x @ w1)
    output y = softmax(h @ w2, axis=-1)
}
""", {"x": (64, 784), "w1": (784, 512), "w2": (512, 10)}),
    "block": ("""weights "block.npz"

model block {
    input x: f32[128, 384]
    param w: f32[384, 1536]
    param g: f32[1536]
    param b: f32[1536]
    output y = layer_norm(softmax(x @ w, axis=-1), g, b)
}
""", {"x": (128, 384), "w": (384, 1536), "g": (1536,), "b": (1536,)}),
}


def _torch_mlp64(torch, x, w1, w2):
    h = torch.relu(torch.from_numpy(x).cuda() @ w1)
    return torch.softmax(h @ w2, dim=-1).cpu()


def _torch_block(torch, x, w, g, b):
    h = torch.softmax(torch.from_numpy(x).cuda() @ w, dim=-1)
    return torch.nn.functional.layer_norm(h, (h.shape[-1],), g, b, eps=1e-5).cpu()


# PyTorch on the GPU, host arrays in and out, as aotml's call
TORCH_MODELS = {"mlp64": _torch_mlp64, "block": _torch_block}


def timed(fn, rounds: int, target: float = 0.2) -> float:
    """Median seconds per call over `rounds` batches of about `target` seconds each."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < target / 4:
        fn()
        calls += 1
    per_batch = max(1, int(calls * 4))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        times.append((time.perf_counter() - t0) / per_batch)
    return statistics.median(times)


def torch_cuda():
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch, f"torch {torch.__version__} on {torch.cuda.get_device_name()}"


def build(folder: Path, name: str, source: str | Path, arch: str, emulate: bool = False):
    """The model (.mlg text, or a model file's path) built for the CPU and the GPU; with
    `emulate`, also its kernels' CPU emulation, named to the tests' stand-in driver
    (tests/fake_cuda.c) for the next load."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, Path):
        src = source
    else:
        src = folder / f"{name}.mlg"
        src.write_text(source)
    result = build_model(src, folder / f"{name}.so", target=f"cpu,cuda:{arch}")
    if emulate:
        from aotml.gpu.emulate import emulation_object
        obj = folder / f"{name}.emu.o"
        obj.write_bytes(emulation_object(result.gpu_program))
        subprocess.run(["cc", "-shared", "-o", str(obj.with_suffix(".so")), str(obj)],
                       check=True)
        os.environ["FAKE_CUDA_EMULATION"] = str(obj.with_suffix(".so"))
    return src, result.so_path


def check(src: Path, so: Path, arrays: dict):
    """The model, checked against the float64 reference on the GPU and on the CPU (the device
    choice belongs to the library: select_device switches it), left on the GPU."""
    model = aotml.load(so, "cuda")
    want = aotml.interpret(src, precise=True, **arrays)
    for device in ("cpu", "cuda"):
        model.select_device(device)
        for name, value in model(**arrays).items():
            err = rel_err(value, want[name])
            if err > TOLERANCE:
                raise SystemExit(f"{src.stem} on {device}: {name} is off by {err:.2e}")
    return model


def sgemm_row(n: int, args, folder: Path, rng, torch) -> tuple[list[str], str]:
    src, so = build(folder, f"sgemm{n}", f"model sgemm{n} {{\n    input a: f32[{n}, {n}]\n"
                    f"    input b: f32[{n}, {n}]\n    output c = a @ b\n}}\n", args.arch,
                    args.emulate)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    # (the float64 reference of a larger product takes longer than the whole benchmark)
    gpu = check(src, so, {"a": a, "b": b}) if n <= 2048 else aotml.load(so, "cuda")
    out = {"c": np.empty((n, n), np.float32)}
    ours = timed(lambda: gpu(a=a, b=b, out=out), args.rounds)
    if torch is None:
        return [f"sgemm {n}", f"{ours * 1e3:.3f}", "-", "-", "-", "-", "-", "-"], gpu.device
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    tc = torch.empty((n, n), device="cuda")
    torch.cuda.synchronize()

    def host_roundtrip():
        (torch.from_numpy(a).cuda() @ torch.from_numpy(b).cuda()).cpu()

    def on_device():
        torch.matmul(ta, tb, out=tc)
        torch.cuda.synchronize()

    def ours_on_device():  # (returns when the run is done)
        gpu.run_device({"a": ta.data_ptr(), "b": tb.data_ptr()}, {"c": tc.data_ptr()})
    theirs, kernel, theirs_kernel = (timed(f, args.rounds) for f in
                                     (host_roundtrip, ours_on_device, on_device))
    return [f"sgemm {n}", f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}", f"{ours / theirs:.2f}",
            f"{kernel * 1e3:.3f}", f"{2 * n ** 3 / kernel / 1e9:.0f}",
            f"{theirs_kernel * 1e3:.3f}", f"{theirs_kernel / kernel:.2f}"], gpu.device


def pointwise_row(n: int, args, folder: Path, rng, torch) -> list[str]:
    src, so = build(folder, "chain", f"model chain {{\n    input x: f32[{n}]\n"
                    f"    output y = maximum(x * 2 + 1, 0) * 0.5\n}}\n", args.arch, args.emulate)
    model = aotml.load(so, "cuda")
    if torch is None:
        return ["pointwise", "-", "-", "-", "-", "-"]
    x = torch.from_numpy(rng.standard_normal(n, dtype=np.float32)).cuda()
    y, copy = torch.empty_like(x), torch.empty_like(x)
    model.run_device({"x": x.data_ptr()}, {"y": y.data_ptr()})
    want = torch.clamp(x * 2 + 1, min=0) * 0.5
    if not torch.equal(y, want):
        raise SystemExit("pointwise on cuda: differs from torch's result")

    def ours():
        model.run_device({"x": x.data_ptr()}, {"y": y.data_ptr()})

    def device_copy():
        copy.copy_(x)
        torch.cuda.synchronize()

    def theirs():
        torch.mul(torch.clamp(x * 2 + 1, min=0), 0.5, out=copy)
        torch.cuda.synchronize()
    t_ours, t_copy, t_theirs = (timed(f, args.rounds) for f in (ours, device_copy, theirs))
    gbs = [2 * 4 * n / t / 1e9 for t in (t_ours, t_copy, t_theirs)]
    return [f"pointwise {n}", f"{t_ours * 1e3:.3f}", f"{gbs[0]:.0f}", f"{gbs[1]:.0f}",
            f"{gbs[0] / gbs[1]:.2f}", f"{gbs[2]:.0f}"]


def rows_row(op: str, shape: tuple, args, folder: Path, rng, torch) -> list[str]:
    """softmax or layer_norm over the last axis of `shape` on device memory (run_device)
    against torch's, GB/s counting one read and one write."""
    rows, n = shape
    text = {"softmax": "softmax(x, axis=-1)", "layer_norm": "layer_norm(x, g, b)"}[op]
    params = f"    input g: f32[{n}]\n    input b: f32[{n}]\n" if op == "layer_norm" else ""
    _, so = build(folder, op, f"model {op} {{\n    input x: f32[{rows}, {n}]\n{params}"
                  f"    output y = {text}\n}}\n", args.arch, args.emulate)
    model = aotml.load(so, "cuda")
    if torch is None:
        return [f"{op} {rows}x{n}", "-", "-", "-", "-"]
    x = torch.randn(rows, n, device="cuda")
    g, b = torch.randn(n, device="cuda"), torch.randn(n, device="cuda")
    y, theirs_y = torch.empty_like(x), torch.empty_like(x)
    ins = {"x": x.data_ptr()} | ({"g": g.data_ptr(), "b": b.data_ptr()}
                                 if op == "layer_norm" else {})

    def theirs():
        if op == "softmax":
            torch.softmax(x, dim=-1, out=theirs_y)
        else:
            theirs_y.copy_(torch.nn.functional.layer_norm(x, (n,), g, b, eps=1e-5))
        torch.cuda.synchronize()

    def ours():
        model.run_device(ins, {"y": y.data_ptr()})
    ours()
    theirs()
    err = float((y - theirs_y).abs().max() / theirs_y.abs().max())
    if not err <= TOLERANCE:
        raise SystemExit(f"{op} on cuda: off from torch's by {err:.2e}")
    t_ours, t_theirs = timed(ours, args.rounds), timed(theirs, args.rounds)
    gbs = [2 * 4 * rows * n / t / 1e9 for t in (t_ours, t_theirs)]
    return [f"{op} {rows}x{n}", f"{t_ours * 1e3:.3f}", f"{gbs[0]:.0f}", f"{gbs[1]:.0f}",
            f"{gbs[0] / gbs[1]:.2f}"]


ROWS_SHAPE = (8192, 4096)  # 128 MiB: several times the L2
ONNX_BATCH = {"mlp": 64, "cnn": 8, "encoder_layer": 8}
MODELS_DIR = REPO / "tests" / "models"


def onnx_row(name: str, args, folder: Path, torch) -> list[str]:
    """A checked-in ONNX model (tests/models: exported from PyTorch) on the GPU, checked
    against onnxruntime where it is installed, else against aotml's CPU code; and the same
    torch module on the GPU (host arrays in and out), its weights uploaded once."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("export_models",
                                                  MODELS_DIR / "export_models.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    _, so = build(folder, f"onnx_{name}", MODELS_DIR / f"{name}.onnx", args.arch, args.emulate)
    feeds = export.example_inputs(name, ONNX_BATCH[name], seed=5)
    model = aotml.load(so, "cuda")
    got = model(**feeds)
    try:
        import onnxruntime as ort
        session = ort.InferenceSession(str(MODELS_DIR / f"{name}.onnx"),
                                       providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    except ImportError:
        model.select_device("cpu")
        want = model(**feeds)
    for key, value in got.items():
        err = rel_err(value, want[key])
        if err > TOLERANCE:
            raise SystemExit(f"{name} on cuda: {key} is off by {err:.2e}")
    ours = timed(lambda: model(**feeds), args.rounds)
    model.select_device("cpu")
    on_cpu = timed(lambda: model(**feeds), args.rounds)
    model.select_device("cuda")
    row = [f"{name} (batch {ONNX_BATCH[name]})", f"{ours * 1e3:.3f}", f"{on_cpu * 1e3:.3f}", "-"]
    if torch is not None:
        module = export.build_model(name).cuda().eval()

        def theirs():
            with torch.no_grad():
                module(*(torch.from_numpy(a).cuda() for a in feeds.values())).cpu()
        row[3] = f"{timed(theirs, args.rounds) * 1e3:.3f}"
    return row


def model_row(name: str, source: str, shapes: dict, args, folder: Path, rng,
              torch) -> list[str]:
    # the weights are the model's params, uploaded once, as torch's are below
    weights = {k: rng.standard_normal(s, dtype=np.float32) * 0.1 for k, s in shapes.items()
               if k != "x"}
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{name}.npz", **weights)
    src, so = build(folder, name, source, args.arch, args.emulate)
    x = rng.standard_normal(shapes["x"], dtype=np.float32) * 0.1
    model = check(src, so, {"x": x})
    ours = timed(lambda: model(x=x), args.rounds)
    model.select_device("cpu")
    on_cpu = timed(lambda: model(x=x), args.rounds)
    model.select_device("cuda")
    row = [name, f"{ours * 1e3:.3f}", f"{on_cpu * 1e3:.3f}", "-"]
    if torch is not None:
        params = {k: torch.from_numpy(a).cuda() for k, a in weights.items()}
        forward = TORCH_MODELS[name]
        row[3] = f"{timed(lambda: forward(torch, x, **params), args.rounds) * 1e3:.3f}"
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,2048,4096,8192")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pointwise", type=int, default=1 << 26, help="floats in the pointwise row")
    p.add_argument("--markdown", default=None)
    p.add_argument("--build-dir", default=str(REPO / "build" / "bench_gpu"))
    p.add_argument("--emulate", action="store_true", help="for a dry run through the tests' "
                   "stand-in driver (AOTML_CUDA_DRIVER=libfakecuda.so): times mean nothing")
    args = p.parse_args(argv)
    folder = Path(args.build_dir)
    rng = np.random.default_rng(0)
    torch, peer = torch_cuda()
    lines = [f"aotml {aotml.__version__}; peer: {peer}", "",
             "| case | aotml, host arrays (ms) | torch, host arrays (ms) | aotml / torch | "
             "aotml on device (ms) | aotml GFLOP/s | torch on device (ms) | "
             "aotml speed / torch's |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    device = None
    probe = build(folder, "probe", "model probe {\n    input x: f32[3]\n    output y = x + 1\n}\n",
                  args.arch, args.emulate)[1]
    try:
        aotml.load(probe, "cuda")
    except aotml.LoadError as e:
        print(f"no usable GPU here: {e}", file=sys.stderr)
        return 2
    for n in (int(x) for x in args.sizes.split(",")):
        row, device = sgemm_row(n, args, folder, rng, torch)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| case | aotml on device (ms) | aotml GB/s | device copy GB/s | "
              "aotml / copy | torch eager GB/s |", "| --- | --- | --- | --- | --- | --- |",
              "| " + " | ".join(pointwise_row(args.pointwise, args, folder, rng, torch)) + " |"]
    lines += ["", "| rows | aotml on device (ms) | aotml GB/s | torch GB/s | aotml / torch |",
              "| --- | --- | --- | --- | --- |"]
    for op in ("softmax", "layer_norm"):
        lines.append("| " + " | ".join(rows_row(op, ROWS_SHAPE, args, folder, rng, torch))
                     + " |")
    lines += ["", "| model | aotml GPU (ms) | aotml CPU (ms) | torch GPU, host arrays (ms) |",
              "| --- | --- | --- | --- |"]
    for name, (source, shapes) in MODELS.items():
        lines.append("| " + " | ".join(model_row(name, source, shapes, args, folder, rng,
                                                   torch)) + " |")
    if not args.emulate:  # (the stand-in driver runs one emulation library at a time)
        for name in ONNX_BATCH:
            lines.append("| " + " | ".join(onnx_row(name, args, folder, torch)) + " |")
    lines.insert(1, f"aotml ran on: {device}")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
