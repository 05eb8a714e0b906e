"""The ONNX importer's contract: a model built from .onnx and from its imported .mlg computes the
same as onnxruntime; names survive; dynamic dims become symbolic dims; errors name the node.
(ONNX's own node tests: test_onnx_conformance.py; broken and hostile files:
test_onnx_hostile.py; models exported from PyTorch: test_onnx_models.py.)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import aotml

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aotml.onnx_import import OnnxImportError, import_onnx  # noqa: E402


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=17, name="m.onnx"):
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.fixture
def mlp(tmp_path):
    rng = np.random.default_rng(0)
    inits = [("fc1.weight", rng.standard_normal((16, 8)).astype(np.float32)),
             ("fc1.bias", rng.standard_normal(16).astype(np.float32)),
             ("w2", rng.standard_normal((16, 4)).astype(np.float32)),
             ("shape", np.array([0, 2, 2], np.int64))]
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1,
                              name="/fc1/Gemm"),
             helper.make_node("Relu", ["h"], ["/act/Relu_output_0"], name="/act/Relu"),
             helper.make_node("MatMul", ["/act/Relu_output_0", "w2"], ["m"], name="fc2"),
             helper.make_node("Reshape", ["m", "shape"], ["r"], name="reshape"),
             helper.make_node("Softmax", ["r"], ["probs"], axis=-1, name="sm"),
             helper.make_node("ReduceMean", ["/act/Relu_output_0"], ["mean"], keepdims=0,
                              axes=[1], name="mean")]
    path = _save(tmp_path, nodes, [_f32("x", ["batch", 8])],
                 [_f32("probs", ["batch", 2, 2]), _f32("mean", ["batch"])], inits)
    return path


def test_onnx_and_imported_mlg_agree_with_onnxruntime(mlp, tmp_path):
    direct = aotml.load(aotml.build(mlp, tmp_path / "direct.so"))
    proc = subprocess.run([sys.executable, "-m", "aotml", "import", str(mlp), "-o",
                           str(tmp_path / "mlp.mlg")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mlp.safetensors").exists()
    rebuilt = aotml.load(aotml.build(tmp_path / "mlp.mlg", tmp_path / "rebuilt.so"))
    session = ort.InferenceSession(str(mlp))
    rng = np.random.default_rng(1)
    for batch in (1, 3, 17):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        want = dict(zip(["probs", "mean"], session.run(None, {"x": x})))
        got, again = direct(x=x), rebuilt(x=x)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got[k], again[k])


def test_imported_source_keeps_names_and_symbols(mlp, tmp_path):
    from aotml.onnx_import import write_mlg
    mlg, _ = write_mlg(import_onnx(mlp), tmp_path / "m.mlg", "m.onnx")
    text = mlg.read_text()
    assert "input x: f32[batch, 8]" in text
    assert "param fc1_weight: f32[16, 8]" in text           # '.' is not legal in a name
    assert "act_Relu_output_0 = relu(h)" in text
    assert "r = reshape(m, shape=(batch, 2, 2))" in text    # ONNX's 0 copies the symbolic dim
    assert text.rstrip().endswith("output probs\n    output mean\n}".rstrip())
    model = aotml.load(aotml.build(mlg, tmp_path / "m.so"))
    assert model.symbols == {"batch": None}


def test_unsupported_ops_are_listed_together(tmp_path):
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="s1"),
             helper.make_node("Sin", ["a"], ["b"], name="s2"),
             helper.make_node("Relu", ["b"], ["c"], name="r"),
             helper.make_node("HardSwish", ["c"], ["y"], name="hs")]
    path = _save(tmp_path, nodes, [_f32("x", [4])], [_f32("y", [4])])
    with pytest.raises(OnnxImportError) as e:
        import_onnx(path)
    assert "2 unsupported op types" in e.value.message
    assert "HardSwish ×1 (hs)" in e.value.message and "Sin ×2 (s1, s2)" in e.value.message


def test_errors_name_the_node(tmp_path):
    inits = [("w", np.ones((5, 3), np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")]
    path = _save(tmp_path, nodes, [_f32("x", [2, 4])], [_f32("y", [2, 3])], inits)
    with pytest.raises(OnnxImportError, match=r"node 'proj' \(MatMul\): '@' inner dimensions "
                                              r"differ: f32\[2, 4\] @ f32\[5, 3\]"):
        import_onnx(path)


def test_shape_inputs_must_be_constants(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")]
    path = _save(tmp_path, nodes, [_f32("x", [2, 4]),
                                   helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
                 [_f32("y", [4, 2])])
    with pytest.raises(OnnxImportError, match="its shape must be a constant"):
        import_onnx(path)


def test_shape_computations_fold(tmp_path):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exporters write a flatten."""
    c = [("zero", np.array(0, np.int64)), ("minus1", np.array([-1], np.int64)),
         ("ax0", np.array([0], np.int64))]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    path = _save(tmp_path, nodes, [_f32("x", [3, 4, 5])], [_f32("y", [3, 20])], c)
    model = aotml.load(aotml.build(path, tmp_path / "m.so"))
    x = np.random.default_rng(2).standard_normal((3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(model(x=x)["y"], x.reshape(3, 20))


def test_cli_without_onnx_says_how_to_install(tmp_path, mlp):
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from aotml.cli import main\n"
            f"sys.exit(main(['check', {str(mlp)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "needs the 'onnx' package" in proc.stderr and "pip install" in proc.stderr


def test_float64_input_is_refused_by_name(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    path = _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [3])],
                 [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3])])
    with pytest.raises(OnnxImportError, match="input 'x' has dtype float64"):
        import_onnx(path)
