"""Properties of the artifact: deterministic bytes, a build hash that tracks its inputs, and a
wheel-installed (non-editable) compiler that carries its grammar and runtime."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import aotml
from aotml.package.artifact import POOL_SYMBOLS
from conftest import NO_WEIGHTS_MLP, REPO

SOURCE = """weights "w.npz"
model det {
    input x: f32[2, 5]
    param w: f32[5, 3]
    output y = softmax(tanh(x @ w) * 2, axis=-1)
}
"""


def _build_in(folder, w):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "det.mlg").write_text(SOURCE)
    np.savez(folder / "w.npz", w=w)
    so = aotml.build(folder / "det.mlg", folder / "out" / "det.so")
    return so.read_bytes(), so.with_suffix(".h").read_bytes()


def test_builds_are_byte_identical(tmp_path):
    w = np.random.default_rng(3).standard_normal((5, 3)).astype(np.float32)
    so1, h1 = _build_in(tmp_path / "one", w)
    so2, h2 = _build_in(tmp_path / "a" / "different" / "place", w)
    assert hashlib.sha256(so1).digest() == hashlib.sha256(so2).digest()
    assert h1 == h2


def test_build_hash_tracks_weights_and_is_in_manifest_and_header(tmp_path):
    w = np.random.default_rng(3).standard_normal((5, 3)).astype(np.float32)
    _, h1 = _build_in(tmp_path / "one", w)
    w2 = w.copy()
    w2[0, 0] += 1
    _, h2 = _build_in(tmp_path / "two", w2)
    hash1 = aotml.load(tmp_path / "one" / "out" / "det.so").build_hash
    hash2 = aotml.load(tmp_path / "two" / "out" / "det.so").build_hash
    assert len(hash1) == 64 and hash1 != hash2
    assert hash1.encode() in h1 and hash2.encode() in h2


def test_library_exports_only_the_model_api_and_the_pool(tmp_path):
    w = np.ones((5, 3), np.float32)
    _build_in(tmp_path, w)
    out = subprocess.run(["nm", "-D", "--defined-only", str(tmp_path / "out" / "det.so")],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("nm not available")
    exported = {line.split()[-1] for line in out.stdout.splitlines() if " T " in line}
    assert exported == {"aotml_model_v1", "det_model", "det_run", "det_last_error",
                        "det_set_num_threads", "det_select_device", *POOL_SYMBOLS}


@pytest.mark.slow
def test_wheel_install_builds_the_example(tmp_path):
    """A non-editable install (a wheel) carries grammar/ and runtime/ and builds the MLP."""
    wheels = tmp_path / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)]
    subprocess.run(cmd, check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("aotml-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("mlp.mlg", "make_mlp_weights.py"):
        (work / name).write_text((REPO / "examples" / name).read_text())
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run([sys.executable, "make_mlp_weights.py"], cwd=work, env=env, check=True)
    script = ("import aotml, sys; assert aotml.__file__.startswith(sys.argv[1]), aotml.__file__;"
              "import make_mlp_weights as e; m = aotml.load(aotml.build('mlp.mlg', 'mlp.so'));"
              "print(int(m(x=e.example_input())['probs'].argmax()))")
    out = subprocess.run([sys.executable, "-c", script, str(site)], cwd=work, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cli = subprocess.run([sys.executable, "-m", "aotml", "check", "mlp.mlg"], cwd=work, env=env,
                         capture_output=True, text=True)
    assert cli.stdout.strip() == ("model mlp(x: f32[N, 784]) -> (probs: f32[N, 10]) for N <= 64"), \
        cli.stderr


def test_abi_dtype_enum_matches_the_dtype_table():
    """runtime/aotml.h's aotml_dtype values are the ones aotml/dtypes.py gives each dtype."""
    import re

    from aotml.dtypes import TABLE

    header = (REPO / "runtime" / "aotml.h").read_text()
    body = header.split("typedef enum aotml_dtype {", 1)[1].split("}", 1)[0]
    enum = dict(re.findall(r"(AOTML_[A-Z0-9]+) = (\d+)", body))
    assert enum == {d.abi_enum: str(d.abi_code) for d in TABLE.values()}


def test_loader_declares_the_abi_structs_as_the_header_does():
    """aotml/loader.py repeats runtime/aotml.h's structs for cffi: the fields must match, in
    order, or the loader would read the manifest at the wrong offsets."""
    import re

    from aotml.loader import _CDEF

    header = (REPO / "runtime" / "aotml.h").read_text()

    def fields(text: str, struct: str) -> list[str]:
        body = text.split(f"typedef struct {struct} {{", 1)[1].split(f"}} {struct};", 1)[0]
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        return re.findall(r"\(?\*?\s*(\w+)\)?\s*(?:\(|;|,)", body)

    for struct in ("aotml_tensor_info", "aotml_symbol", "aotml_run_args", "aotml_profile",
                   "aotml_model"):
        assert fields(_CDEF, struct) == fields(header, struct), struct


def test_an_object_for_aarch64_is_produced_with_neon_code(tmp_path):
    # the schedule is not x86-only: the same loops compile for another architecture, with its
    # vector width (NEON, 128 bits) chosen from its features
    from aotml.driver import build
    from aotml.errors import CompileError

    src = tmp_path / "mlp.mlg"
    src.write_text(NO_WEIGHTS_MLP)
    result = build(src, tmp_path / "mlp.o", target_triple="aarch64-linux-gnu",
                   dump="asm,loops")
    data = (tmp_path / "mlp.o").read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 183  # AArch64
    assert "fmla\tv" in result.dumps["asm"]  # vector fused multiply-adds
    assert "f32x4 = splat4(" in result.dumps["loops"]  # register tiles of NEON vectors
    assert (tmp_path / "mlp.h").exists()
    with pytest.raises(CompileError, match="cannot link a library for aarch64-linux-gnu"):
        build(src, tmp_path / "mlp.so", target_triple="aarch64-linux-gnu")
    assert not (tmp_path / "mlp.so").exists()


def test_no_benchmark_script_shadows_an_installed_package():
    """The benchmark scripts run with benchmarks/ first on sys.path: a script named like an
    installed top-level package hides it from the peers that import it (a benchmarks/kernels.py
    broke transformers, which imports a package 'kernels')."""
    import importlib.machinery
    from pathlib import Path

    folder = (REPO / "benchmarks").resolve()
    path = [p for p in sys.path if Path(p or ".").resolve() != folder]
    for script in folder.glob("*.py"):
        found = importlib.machinery.PathFinder.find_spec(script.stem, path)
        assert found is None, f"benchmarks/{script.name} shadows {found.origin}"
