"""The `aotml` command: check, build (with dumps, atomic output), run (compiled and interpreted)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import aotml
from aotml.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SIGNATURE = "model mlp(x: f32[N, 784]) -> (probs: f32[N, 10]) for N <= 64"
BAD_SOURCE = """weights "mlp.npz"
model mlp {
    input  x:  f32[1, 784]
    param  w1: f32[784, 128]
    h = x @ w1 @ w1
    output probs = h
}
"""


def _example_weights_module():
    spec = importlib.util.spec_from_file_location("make_mlp_weights",
                                                  EXAMPLES / "make_mlp_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WEIGHTS = _example_weights_module()


def _python_m_aotml(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-m", "aotml", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory) -> Path:
    """A folder with a copy of examples/mlp.mlg, its weights, and the example input x.npy."""
    folder = tmp_path_factory.mktemp("mlp")
    shutil.copyfile(EXAMPLES / "mlp.mlg", folder / "mlp.mlg")
    WEIGHTS.make(folder / "mlp.npz")
    np.save(folder / "x.npy", WEIGHTS.example_input())
    return folder


@pytest.fixture(scope="module")
def mlp_so(mlp_dir) -> Path:
    """The example MLP built once through the CLI."""
    so = mlp_dir / "built" / "mlp.so"
    assert main(["build", str(mlp_dir / "mlp.mlg"), "-o", str(so)]) == 0
    return so


@pytest.fixture
def cli(capsys):
    """cli(*args) -> (exit status, stdout, stderr) of `aotml ARGS`, run in-process."""
    def run(*args):
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        assert "internal compiler error" not in err
        return rc, out, err

    return run


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- check ----------------------------------------------------------------------------------


def test_check_prints_signature(cli, mlp_dir):
    """`aotml check` prints the model's signature and nothing on stderr."""
    assert cli("check", mlp_dir / "mlp.mlg") == (0, SIGNATURE + "\n", "")


def test_check_subprocess(mlp_dir):
    """`python -m aotml check` works as a real command."""
    proc = _python_m_aotml("check", str(mlp_dir / "mlp.mlg"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, SIGNATURE + "\n", "")


def test_missing_source_file(cli, tmp_path):
    """check and build name a missing source file and exit 1."""
    missing = tmp_path / "nope.mlg"
    for args in (("check", missing), ("build", missing, "-o", tmp_path / "out" / "n.so")):
        rc, out, err = cli(*args)
        assert rc == 1
        assert err.startswith("error: ")
        assert str(missing) in err
    assert not (tmp_path / "out").exists()


# -- build ----------------------------------------------------------------------------------


def test_build_writes_library_and_header(mlp_so):
    """`aotml build FILE -o OUT.so` writes OUT.so and OUT.h, and nothing else."""
    assert _files(mlp_so.parent) == ["mlp.h", "mlp.so"]
    assert mlp_so.read_bytes()[:4] == b"\x7fELF"
    header = mlp_so.with_suffix(".h").read_text()
    assert "mlp_run" in header
    assert "MLP_WORKSPACE_BYTES" in header
    model = aotml.load(mlp_so)
    probs = model(x=WEIGHTS.example_input())["probs"]
    assert probs.shape == (1, 10)
    assert np.isclose(probs.sum(), 1.0, atol=1e-5)


def test_build_dump_all_stages(cli, mlp_dir, tmp_path):
    """`--dump graph,loops,llvm,asm` prints each stage, in pipeline order."""
    rc, out, err = cli("build", mlp_dir / "mlp.mlg", "-o", tmp_path / "mlp.so",
                       "--dump", "graph,loops,llvm,asm")
    assert (rc, err) == (0, "")
    headers = re.findall(r"^;; ---- (\w+) ----$", out, re.M)
    assert headers == ["graph", "loops", "llvm", "asm"]
    sections = dict(zip(headers, re.split(r"^;; ---- \w+ ----$", out, flags=re.M)[1:]))
    assert "graph mlp(" in sections["graph"]
    assert "kernel k0_matmul(" in sections["loops"]
    assert "@aotml_entry(" in sections["llvm"]
    assert re.search(r"^\s*ret[a-z]*\b", sections["asm"], re.M), "no return instruction in asm"
    assert re.search(r"^aotml_entry:", sections["asm"], re.M)
    assert _files(tmp_path) == ["mlp.h", "mlp.so"]


def test_build_dump_one_stage(cli, mlp_dir, tmp_path):
    """`--dump loops` prints only the loop IR."""
    rc, out, _ = cli("build", mlp_dir / "mlp.mlg", "-o", tmp_path / "mlp.so", "--dump", "loops")
    assert rc == 0
    assert re.findall(r"^;; ---- (\w+) ----$", out, re.M) == ["loops"]
    assert "kernel k0_matmul(" in out
    assert "define void" not in out


def test_build_unknown_dump_stage(cli, mlp_dir, tmp_path):
    """An unknown dump stage is an error naming it and the valid stages; nothing is built."""
    out_dir = tmp_path / "out"
    rc, out, err = cli("build", mlp_dir / "mlp.mlg", "-o", out_dir / "mlp.so",
                       "--dump", "graph,bogus")
    assert rc == 1
    assert out == ""
    assert err.startswith("error: ")
    assert "bogus" in err
    assert "graph, loops, llvm, asm" in err
    assert _files(out_dir) == []


def _bad_model(folder: Path) -> Path:
    shutil.copyfile(folder.parent / "mlp.npz", folder / "mlp.npz")
    src = folder / "bad.mlg"
    src.write_text(BAD_SOURCE)
    return src


def test_failed_build_leaves_no_file(cli, mlp_dir, tmp_path):
    """A type error fails the build with a located error and no file in the output folder."""
    work = mlp_dir / "bad1"
    work.mkdir()
    src = _bad_model(work)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, out, err = cli("build", src, "-o", out_dir / "bad.so")
    assert rc == 1
    assert err.startswith(f"{src}:5:16: error: '@' inner dimensions differ")
    assert os.listdir(out_dir) == []  # not even a hidden temporary file


def test_failed_build_keeps_old_library(cli, mlp_dir, mlp_so, tmp_path):
    """A failing build over an existing OUT.so leaves it (and OUT.h) byte-identical."""
    work = mlp_dir / "bad2"
    work.mkdir()
    src = _bad_model(work)
    so = tmp_path / "mlp.so"
    shutil.copyfile(mlp_so, so)
    shutil.copyfile(mlp_so.with_suffix(".h"), so.with_suffix(".h"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (so, so.with_suffix(".h"))}
    rc, _, err = cli("build", src, "-o", so)
    assert rc == 1
    assert "error:" in err
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before
    assert _files(tmp_path) == ["mlp.h", "mlp.so"]


def test_build_failing_to_write_header_keeps_old_library(mlp_dir, mlp_so, tmp_path):
    """If OUT.h cannot be written, the build exits 1 cleanly and the old OUT.so stays."""
    so = tmp_path / "mlp.so"
    shutil.copyfile(mlp_so, so)
    (tmp_path / "mlp.h").mkdir()  # a folder where the header should go
    before = so.read_bytes()
    proc = _python_m_aotml("build", str(mlp_dir / "mlp.mlg"), "-o", str(so), "-O", "1")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1
    assert so.read_bytes() == before
    assert _files(tmp_path) == ["mlp.h", "mlp.so"]


# -- run ------------------------------------------------------------------------------------


def test_run_library_writes_outputs(cli, mlp_dir, mlp_so, tmp_path):
    """`aotml run OUT.so --input x=x.npy --output-dir D` writes D/probs.npy as aotml.load does."""
    out_dir = tmp_path / "results"
    rc, out, err = cli("run", mlp_so, "--input", f"x={mlp_dir / 'x.npy'}",
                       "--output-dir", out_dir)
    assert (rc, err) == (0, "")
    assert out.startswith("probs: float32[1, 10]\n")
    assert _files(out_dir) == ["probs.npy"]
    got = np.load(out_dir / "probs.npy")
    want = aotml.load(mlp_so)(x=np.load(mlp_dir / "x.npy"))["probs"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_run_interpret(cli, mlp_dir, mlp_so, tmp_path):
    """`aotml run FILE.mlg --interpret` gives the interpreter's result, close to the library's."""
    x = np.load(mlp_dir / "x.npy")
    rc, out, err = cli("run", mlp_dir / "mlp.mlg", "--interpret", "-i", f"x={mlp_dir / 'x.npy'}",
                       "--output-dir", tmp_path)
    assert (rc, err) == (0, "")
    assert out.startswith("probs: float32[1, 10]\n")
    got = np.load(tmp_path / "probs.npy")
    np.testing.assert_array_equal(got, aotml.interpret(mlp_dir / "mlp.mlg", x=x)["probs"])
    np.testing.assert_allclose(got, aotml.load(mlp_so)(x=x)["probs"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interpret", [False, True], ids=["library", "interpreter"])
def test_run_wrong_input_shape(cli, mlp_dir, mlp_so, tmp_path, interpret):
    """A wrong-shape input exits 1 with a message naming the input and both shapes."""
    np.save(tmp_path / "x.npy", np.zeros((1, 783), np.float32))
    target = mlp_dir / "mlp.mlg" if interpret else mlp_so
    flags = ["--interpret"] if interpret else []
    rc, out, err = cli("run", target, *flags, "--input", f"x={tmp_path / 'x.npy'}",
                       "--output-dir", tmp_path / "res")
    assert rc == 1
    assert out == ""
    assert err.startswith("error: ")
    assert "input 'x'" in err
    assert "(1, 783)" in err and "(N, 784)" in err
    assert not (tmp_path / "res").exists()


def test_run_source_without_interpret(cli, mlp_dir):
    """Running an .mlg without --interpret is an error that suggests the fix."""
    rc, out, err = cli("run", mlp_dir / "mlp.mlg", "--input", f"x={mlp_dir / 'x.npy'}")
    assert rc == 1
    assert out == ""
    assert err.startswith("error: ")
    assert "--interpret" in err
    assert "mlp.mlg" in err


@pytest.mark.parametrize("spec", ["x", "=x.npy", "x.npy"])
def test_run_malformed_input_spec(cli, mlp_so, spec):
    """An --input that is not NAME=FILE.npy exits 1 and quotes what was given."""
    rc, out, err = cli("run", mlp_so, "--input", spec)
    assert rc == 1
    assert out == ""
    assert err.startswith("error: --input takes NAME=FILE.npy")
    assert f"'{spec}'" in err


def test_run_missing_input_file(cli, mlp_so, tmp_path):
    """An --input naming a file that does not exist exits 1 naming the input and the file."""
    missing = tmp_path / "absent.npy"
    rc, _, err = cli("run", mlp_so, "--input", f"x={missing}")
    assert rc == 1
    assert "input 'x'" in err
    assert str(missing) in err


def test_run_empty_input_file(cli, mlp_so, tmp_path):
    """An empty --input file exits 1 naming the input, not as an internal error."""
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    rc, _, err = cli("run", mlp_so, "--input", f"x={empty}")
    assert rc == 1
    assert err.startswith(f"error: cannot read input 'x' from '{empty}'")


def test_run_on_a_device_the_library_has_no_code_for(cli, mlp_dir, mlp_so):
    """--device cuda on a CPU-only library exits 1 saying how to rebuild."""
    rc, out, err = cli("run", mlp_so, "-i", f"x={mlp_dir / 'x.npy'}", "--device", "cuda")
    assert rc == 1 and out == ""
    assert "no GPU code" in err and "--target cpu,cuda" in err


def test_run_missing_library(cli, tmp_path):
    """Running a library that does not exist exits 1 naming it."""
    missing = tmp_path / "absent.so"
    rc, _, err = cli("run", missing)
    assert rc == 1
    assert err.startswith("error: ")
    assert str(missing) in err


def test_run_subprocess(mlp_dir, mlp_so, tmp_path):
    """`python -m aotml run` as a real command writes the same outputs."""
    proc = _python_m_aotml("run", str(mlp_so), "-i", f"x={mlp_dir / 'x.npy'}",
                           "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    want = aotml.load(mlp_so)(x=np.load(mlp_dir / "x.npy"))["probs"]
    np.testing.assert_array_equal(np.load(tmp_path / "probs.npy"), want)


@pytest.mark.parametrize("command", ["build", "run"])
def test_output_path_under_a_file(mlp_dir, mlp_so, tmp_path, command):
    """An output path whose folder is a regular file exits 1 with an error, not a traceback."""
    blocker = tmp_path / "afile"
    blocker.write_text("")
    if command == "build":
        args = ["build", str(mlp_dir / "mlp.mlg"), "-o", str(blocker / "m.so"), "-O", "0"]
    else:
        args = ["run", str(mlp_so), "-i", f"x={mlp_dir / 'x.npy'}", "--output-dir", str(blocker)]
    proc = _python_m_aotml(*args)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
