"""Issue 6 on a real GPU: every op sample, larger shapes that span many blocks with tails, the
bundled examples and the checked-in ONNX models, run on the GPU against the float64 reference;
device choice, several architectures in one library, `out=` and `run_device` on device memory.

The module skips without a CUDA GPU, saying so (CI has none: there the grid emulation in
test_gpu_mapping.py checks the same mappings numerically). With AOTML_REQUIRE_GPU=1 it fails
instead. benchmarks/gpu_session.sh runs this file on a machine lent with a GPU.
"""

from __future__ import annotations

import importlib.util
import sys
import zlib

import numpy as np
import pytest
from cuda_device import DeviceArrays, arch
from opcheck import EPS32, all_samples, check, params, within

import aotml
from conftest import ABI_MODEL_SOURCE, NO_WEIGHTS_MLP, REPO, rand

ARCH = arch()  # (skips this module without a GPU)


@pytest.fixture(autouse=True)
def _real_driver(monkeypatch):
    """The machine's driver, not the tests' stand-in (which another test may have named)."""
    monkeypatch.delenv("AOTML_CUDA_DRIVER", raising=False)


def _cuda() -> str:
    return f"cuda:{ARCH}"


def _matches_reference(src, got: dict, arrays: dict, terms: int) -> None:
    exact = aotml.interpret(src, precise=True, **arrays)
    for name, want in exact.items():
        assert got[name].shape == want.shape, name
        scale = float(np.max(np.abs(want)))
        within(got[name], want, 1e-5 + terms * EPS32, 2 * terms * EPS32 * scale)


@pytest.mark.parametrize("op, sample", params(all_samples()))
def test_op_on_the_gpu(tmp_path, op, sample):
    check(tmp_path, op, sample, target=_cuda())


# Shapes the op samples keep small: many blocks, partial last blocks and tiles, long rows.
LARGE = {
    "matmul": ("input a: f32[1023, 517]\n    input b: f32[517, 771]\n    output y = a @ b",
               {"a": (1023, 517), "b": (517, 771)}, 517),
    # 17 x 17 blocks: the big tile (at least 128 blocks), ragged in m, n and k
    "big-tile matmul": ("input a: f32[2049, 515]\n    input b: f32[515, 2050]\n"
                        "    output y = a @ b", {"a": (2049, 515), "b": (515, 2050)}, 515),
    "batched matmul": ("input a: f32[3, 130, 67]\n    input b: f32[3, 67, 257]\n"
                       "    output y = a @ b", {"a": (3, 130, 67), "b": (3, 67, 257)}, 67),
    "softmax": ("input x: f32[301, 1999]\n    output y = softmax(x, axis=-1)",
                {"x": (301, 1999)}, 1999),
    "layer norm": ("input x: f32[257, 1030]\n    input g: f32[1030]\n    input b: f32[1030]\n"
                   "    output y = layer_norm(x, g, b)",
                   {"x": (257, 1030), "g": (1030,), "b": (1030,)}, 1030),
    "row sum": ("input x: f32[129, 40001]\n    output y = sum(x, axis=-1)",
                {"x": (129, 40001)}, 40001),
    "pointwise": ("input x: f32[1001, 1027]\n    input b: f32[1027]\n"
                  "    output y = relu(x * 2 + b) * 0.5", {"x": (1001, 1027), "b": (1027,)}, 1),
    "conv": ("input x: f32[2, 5, 33, 31]\n    input w: f32[7, 5, 3, 3]\n"
             "    output y = relu(conv2d(x, w, padding=1))",
             {"x": (2, 5, 33, 31), "w": (7, 5, 3, 3)}, 45),
}


@pytest.mark.parametrize("name", list(LARGE))
def test_large_shapes_on_the_gpu(tmp_path, name):
    body, shapes, terms = LARGE[name]
    src = tmp_path / "m.mlg"
    src.write_text(f"model m {{\n    {body}\n}}\n")
    model = aotml.load(aotml.build(src, tmp_path / "m.so", target=_cuda()))
    assert model.device.startswith("cuda:0")
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arrays = {k: rand(rng, s) for k, s in shapes.items()}
    _matches_reference(src, model(**arrays), arrays, terms)


def test_a_cpu_cuda_library_runs_on_the_gpu_and_on_the_cpu(tmp_path):
    src = tmp_path / "mlp.mlg"
    src.write_text(NO_WEIGHTS_MLP)
    model = aotml.load(aotml.build(src, tmp_path / "mlp.so", target=f"cpu,{_cuda()}"))
    assert model.devices == ("cpu", "cuda")
    assert model.device.startswith("cuda:0") and ARCH in model.device
    rng = np.random.default_rng(11)
    w = rand(rng, (96, 64))
    for device in ("cuda", "cpu"):
        model.select_device(device)
        for n in (1, 7, 64):
            arrays = {"x": rand(rng, (n, 96)), "w": w}
            _matches_reference(src, model(**arrays), arrays, 96)


def test_several_architectures_in_one_library(tmp_path):
    src = tmp_path / "m.mlg"
    src.write_text(NO_WEIGHTS_MLP)
    model = aotml.load(aotml.build(src, tmp_path / "m.so", target=f"cuda:sm_80,{ARCH}"))
    rng = np.random.default_rng(12)
    arrays = {"x": rand(rng, (5, 96)), "w": rand(rng, (96, 64))}
    _matches_reference(src, model(**arrays), arrays, 96)


def test_weights_uploaded_once_and_out_arrays_filled(tmp_path):
    rng = np.random.default_rng(13)
    np.savez(tmp_path / "weights.npz", w=rand(rng, (7, 7)))
    src = tmp_path / "m.mlg"
    src.write_text(ABI_MODEL_SOURCE)
    model = aotml.load(aotml.build(src, tmp_path / "m.so", target=_cuda()))
    for _ in range(3):
        arrays = {"x": rand(rng, (3, 7)), "y": rand(rng, (7,))}
        out = {"s": np.full((3, 7), np.nan, np.float32), "t": np.full(7, np.nan, np.float32)}
        got = model(**arrays, out=out)
        assert got["s"] is out["s"] and got["t"] is out["t"]
        _matches_reference(src, out, arrays, 7)


def test_run_device_on_device_memory(tmp_path):
    src = tmp_path / "mlp.mlg"
    src.write_text(NO_WEIGHTS_MLP)
    model = aotml.load(aotml.build(src, tmp_path / "mlp.so", target=_cuda()))
    memory = DeviceArrays()
    try:
        rng = np.random.default_rng(14)
        for n in (3, 64):
            arrays = {"x": rand(rng, (n, 96)), "w": rand(rng, (96, 64))}
            out = memory.upload(np.full((n, 64), np.nan, np.float32))
            model.run_device({k: memory.upload(a) for k, a in arrays.items()}, {"y": out},
                             shapes={k: a.shape for k, a in arrays.items()})
            got = {"y": memory.download(out, (n, 64), np.float32)}
            _matches_reference(src, got, arrays, 96)
    finally:
        memory.close()


def _module(name: str, path):
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.mark.parametrize("name, shape", [("mlp", (5, 784)), ("lenet", (1, 1, 28, 28)),
                                         ("encoder", (1, 16, 32))])
def test_the_examples_on_the_gpu(tmp_path, name, shape):
    weights = _module("make_weights", REPO / "examples" / "make_weights.py")
    make = {"mlp": weights.make_mlp, "lenet": weights.make_lenet,
            "encoder": weights.make_encoder}[name]
    make(tmp_path / f"{name}.npz")
    src = tmp_path / f"{name}.mlg"
    src.write_text((REPO / "examples" / f"{name}.mlg").read_text())
    model = aotml.load(aotml.build(src, tmp_path / f"{name}.so", target=f"cpu,{_cuda()}"))
    assert model.device.startswith("cuda:0")
    rng = np.random.default_rng(15)
    x = rng.uniform(0, 1, shape).astype(np.float32)
    got = model(x=x)
    for key, want in aotml.interpret(src, precise=True, x=x).items():
        err = np.max(np.abs(got[key] - want)) / np.max(np.abs(want))
        assert err <= 1e-5, f"{name}: '{key}' off by {err:.2e} relative to its largest value"


@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder_layer"])
def test_the_onnx_models_on_the_gpu(tmp_path, name):
    pytest.importorskip("onnx")
    export = _module("export_models", REPO / "tests" / "models" / "export_models.py")
    onnx_path = REPO / "tests" / "models" / f"{name}.onnx"
    gpu = aotml.load(aotml.build(onnx_path, tmp_path / f"{name}.so", target=f"cpu,{_cuda()}"))
    assert gpu.device.startswith("cuda:0")
    for batch in (1, 3, 8):
        feeds = export.example_inputs(name, batch, seed=4000 + batch)
        on_gpu = gpu(**feeds)
        gpu.select_device("cpu")
        on_cpu = gpu(**feeds)
        gpu.select_device("cuda")
        for key, want in on_cpu.items():
            err = np.max(np.abs(on_gpu[key] - want)) / np.max(np.abs(want))
            assert err <= 1e-4, f"{name} batch {batch}: '{key}' GPU vs CPU {err:.2e}"
