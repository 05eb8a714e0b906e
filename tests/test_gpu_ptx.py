"""PTX from the NVPTX backend for every op's GPU-mapped kernels, assembled by ptxas for each
architecture (skipped only where no ptxas is installed; libdevice is needed by the ops that call
exp, log, tanh, erf or pow)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opcheck import all_samples, case_id, source

from aotml.codegen.nvptx import DEFAULT_ARCHS, emit_ptx, have_ptxas, libdevice_path, ptx_problems
from aotml.driver import build, parse_target, source_graph
from aotml.errors import CompileError
from aotml.gpu.mapping import map_program
from aotml.graph.passes import run_pipeline
from aotml.loops.lower import lower_graph
from conftest import NO_WEIGHTS_MLP, REPO

needs_ptxas = pytest.mark.skipif(not have_ptxas(), reason="no ptxas on PATH")


def _mapped(path):
    graph, _, _ = source_graph(path, None)
    program, _, _ = lower_graph(run_pipeline(graph))
    return map_program(program)


def _cases() -> list:
    # two samples an op: every op, its dtypes and its attribute forms, in about a minute
    return [pytest.param(op, s, id=case_id(op, s))
            for op, samples in sorted(all_samples().items()) for s in samples[:2]]


@needs_ptxas
@pytest.mark.parametrize("op, sample", _cases())
def test_every_op_assembles_for_every_architecture(tmp_path, op, sample):
    src = tmp_path / "m.mlg"
    src.write_text(source(op, sample))
    program = _mapped(src)
    for arch in DEFAULT_ARCHS:
        try:
            ptx = emit_ptx(program, arch)
        except CompileError as e:
            if libdevice_path() is None and "libdevice" in e.message:
                pytest.skip("no libdevice.10.bc for a transcendental function")
            raise
        assert f".target {arch}" in ptx
        assert ptx.count(".entry ") == len(program.kernels)
        problem = ptx_problems(ptx, arch)
        assert problem is None, problem


def test_ptxas_rejection_is_reported():
    if not have_ptxas():
        pytest.skip("no ptxas on PATH")
    assert "version" in ptx_problems("not ptx", "sm_80")


@needs_ptxas
def test_the_cli_writes_one_ptx_module_per_architecture(tmp_path):
    (tmp_path / "mlp.mlg").write_text(NO_WEIGHTS_MLP)
    out = tmp_path / "mlp.ptx"
    proc = subprocess.run([sys.executable, "-m", "aotml", "build", str(tmp_path / "mlp.mlg"),
                           "--target", "cuda:sm_80,sm_90", "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for arch in ("sm_80", "sm_90"):
        text = (tmp_path / f"mlp.{arch}.ptx").read_text()
        assert f".target {arch}" in text and ".entry k0_matmul_g0(" in text


def test_a_cuda_object_is_refused_with_a_hint(tmp_path):
    src = tmp_path / "mlp.mlg"
    src.write_text(NO_WEIGHTS_MLP)
    for target in ("cuda", "cpu,cuda"):
        with pytest.raises(CompileError, match="writes a library") as e:
            build(src, tmp_path / "mlp.o", target=target)
        assert e.value.hint == "-o mlp.so"
    with pytest.raises(CompileError, match="writes a library"):
        build(src, tmp_path / "mlp.ptx", target="cpu,cuda")
    assert list(tmp_path.iterdir()) == [src]
    with pytest.raises(CompileError, match="unknown CUDA architecture 'sm_12'"):
        build(src, tmp_path / "mlp.ptx", target="cuda:sm_12")


@pytest.mark.parametrize("spec, kinds, archs", [
    ("cpu", {"cpu"}, ()),
    ("grid-emulation", {"grid-emulation"}, ()),
    ("cuda", {"cuda"}, ("sm_80", "sm_90")),
    ("cuda:sm_90", {"cuda"}, ("sm_90",)),
    ("cpu,cuda", {"cpu", "cuda"}, ("sm_80", "sm_90")),
    ("cpu,cuda:sm_80,sm_86", {"cpu", "cuda"}, ("sm_80", "sm_86")),
    ("cuda:sm_90,cpu", {"cpu", "cuda"}, ("sm_90",)),
])
def test_target_specs(spec, kinds, archs):
    assert parse_target(spec) == (frozenset(kinds), archs)


@pytest.mark.parametrize("spec, message", [
    ("gpu", "unknown target 'gpu'"),
    ("cpu,cpu", "unknown target"),
    ("cpu:sm_80", "unknown target"),
    ("sm_80", "unknown target"),
    ("cuda:", "unknown target"),
    ("grid-emulation,cuda", "grid-emulation stands alone"),
    ("cuda:sm_12", "unknown CUDA architecture 'sm_12'"),
])
def test_bad_target_specs(spec, message):
    with pytest.raises(CompileError, match=message):
        parse_target(spec)


@needs_ptxas
def test_a_pointwise_kernel_moves_16_bytes_per_access(tmp_path):
    """Four consecutive elements a thread (gpu/mapping.py's _widen) on 16-byte aligned buffers:
    the backend merges them into vector loads and stores."""
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n    input x: f32[300, 256]\n    input b: f32[256]\n"
                   "    output y = relu(x * 2.0 + b) * 0.5\n}\n")
    build(src, tmp_path / "m.ptx", target="cuda:sm_90")
    ptx = (tmp_path / "m.ptx").read_text()
    assert ptx.count("ld.global.nc.v4.b32") == 2  # x and b
    assert ptx.count("st.global.v4.b32") == 1
    assert ptx_problems(ptx, "sm_90") is None
