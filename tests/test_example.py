"""The bundled example end to end: build, run from Python and from C, compare."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import numpy as np
import pytest

import aotml
from conftest import REPO


def _example_module():
    spec = importlib.util.spec_from_file_location("make_mlp_weights",
                                                  REPO / "examples" / "make_mlp_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlp")
    shutil.copy(REPO / "examples" / "mlp.mlg", folder / "mlp.mlg")
    example = _example_module()
    example.make(folder / "mlp.npz")
    so = aotml.build(folder / "mlp.mlg", folder / "mlp.so")
    return folder, so, example


def test_mlp_compiled_agrees_with_interpreter(mlp):
    folder, so, example = mlp
    model = aotml.load(so)
    assert [(t.name, t.dtype, t.shape) for t in model.inputs] == [("x", "float32", ("N", 784))]
    assert [(t.name, t.dtype, t.shape) for t in model.outputs] == [
        ("probs", "float32", ("N", 10))]
    assert model.symbols == {"N": 64}
    rng = np.random.default_rng(7)
    for x in [example.example_input(), rng.uniform(0, 1, (1, 784)).astype(np.float32),
              rng.uniform(0, 1, (13, 784)).astype(np.float32),
              rng.uniform(0, 1, (64, 784)).astype(np.float32)]:
        got = model(x=x)["probs"]
        ref = aotml.interpret(folder / "mlp.mlg", x=x)["probs"]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_example_prints_the_same_class_as_python(mlp, tmp_path):
    folder, so, example = mlp
    app = folder / "mlp_app"
    subprocess.run(["cc", "-O2", "-std=c11", f"-I{folder}", str(REPO / "examples" / "mlp_app.c"),
                    str(so), "-Wl,-rpath,$ORIGIN", "-o", str(app)], check=True)
    out = subprocess.run([str(app)], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    probs = aotml.load(so)(x=example.example_input())["probs"]
    top = int(np.argmax(probs))
    assert f"c: top class {top} (p = {probs[0, top]:.6f})" in out


def test_an_input_named_out_is_an_input(build_model):
    """`out=` selects output arrays, unless the model has an input of that name."""
    m = build_model("model m {\n input out: f32[3]\n output y = exp(out)\n}\n")
    x = np.array([0.5, -1.0, 2.0], np.float32)
    np.testing.assert_allclose(m(out=x)["y"], np.exp(x), rtol=1e-6)
    y = np.empty(3, np.float32)
    assert m.run({"out": x}, out={"y": y})["y"] is y


@pytest.mark.parametrize("name", ["lenet", "encoder"])
def test_cnn_and_transformer_examples_agree_with_interpreter(tmp_path, name):
    """examples/lenet.mlg (conv, pool, dense) and examples/encoder.mlg (attention, layer norm,
    gelu MLP, residuals) compiled vs the float64 interpreter on fresh inputs."""
    spec = importlib.util.spec_from_file_location("make_weights",
                                                  REPO / "examples" / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(REPO / "examples"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "examples"))
    shutil.copy(REPO / "examples" / f"{name}.mlg", tmp_path / f"{name}.mlg")
    getattr(module, f"make_{name}")(tmp_path / f"{name}.npz")
    model = aotml.load(aotml.build(tmp_path / f"{name}.mlg", tmp_path / f"{name}.so"))
    rng = np.random.default_rng(17)
    for _ in range(2):
        x = rng.standard_normal(model.inputs[0].shape).astype(np.float32)
        out = model.outputs[0].name
        got = model(x=x)[out]
        ref = aotml.interpret(tmp_path / f"{name}.mlg", precise=True, x=x)[out]
        scale = float(np.max(np.abs(ref)))
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * scale)
