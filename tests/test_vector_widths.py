"""The register tiles and vector rows at every vector width: the matmul, implicit-GEMM conv,
attention and softmax samples built for AVX2 (8 lanes) and for SSE (4 lanes, NEON's width)
run on this host against the reference, beside the host's own width that the op tests cover.
The schedule is one; its parameters (tile and panel columns, vector type) follow the
target's widest vector, which is asked of LLVM's backend for the chosen cpu."""

from __future__ import annotations

import re

import pytest
from opcheck import check, params
from test_conv_schedule import SAMPLES as CONV_SCHEDULE_SAMPLES
from test_ops_conv import SAMPLES as CONV_SAMPLES
from test_ops_nn import SAMPLES as NN_SAMPLES
from test_ops_shape import SAMPLES as SHAPE_SAMPLES

from aotml.codegen.llvm_cpu import CpuTarget
from aotml.driver import build
from aotml.loops.ir import (
    Binary,
    Buffer,
    Const,
    For,
    Kernel,
    Lane,
    Store,
    Var,
    VecLoad,
    print_kernel,
)
from aotml.loops.schedule import independent
from aotml.ops import conv

WIDTHS = {"haswell": 256, "x86-64": 128}  # cpu -> its widest vector, bits


def _f32(samples):
    return [s for s in samples if not s.dtypes or set(s.dtypes) == {"f32"}]


TILED = {"matmul": _f32(NN_SAMPLES["matmul"]), "linear": _f32(NN_SAMPLES["linear"]),
         "conv2d": _f32(CONV_SAMPLES["conv2d"]), "attention": _f32(CONV_SAMPLES["attention"]),
         # rows in vector form: the max, then the exps with their sum
         "softmax": _f32(NN_SAMPLES["softmax"]), "log_softmax": _f32(NN_SAMPLES["log_softmax"]),
         # sums in vector partial results (lane_sum)
         **{op: _f32(NN_SAMPLES[op]) for op in ("layer_norm", "rms_norm", "sum", "mean")},
         "global_avg_pool": _f32(CONV_SAMPLES["global_avg_pool"]),
         "transpose": _f32(SHAPE_SAMPLES["transpose"])}


@pytest.mark.parametrize("cpu", list(WIDTHS))
@pytest.mark.parametrize(("op", "s"), params({"conv2d": _f32(CONV_SCHEDULE_SAMPLES["conv2d"])}))
def test_the_tiled_conv_matches_the_reference_at_each_width(tmp_path, monkeypatch, cpu, op, s):
    """Every piece of the tiled conv (border rows and tiles, full and leftover tiles, strides,
    dilations) at each width: the implicit GEMM and the padded copy turned off."""
    monkeypatch.setattr(conv, "GEMM_MAX_WIDTH", 0)
    monkeypatch.setattr(conv, "PAD_COPY_MIN_WORK", 10**9)
    check(tmp_path, op, s, target_cpu=cpu)


@pytest.mark.parametrize("cpu", list(WIDTHS))
def test_the_backend_reports_the_cpus_vector_width(cpu):
    assert CpuTarget(cpu=cpu).capabilities.vector_bits == WIDTHS[cpu]


@pytest.mark.parametrize("cpu", list(WIDTHS))
@pytest.mark.parametrize(("op", "s"), params(TILED))
def test_tiles_match_the_reference_at_each_width(tmp_path, cpu, op, s):
    check(tmp_path, op, s, target_cpu=cpu)


@pytest.mark.parametrize("cpu", [None, *WIDTHS])
def test_the_tiles_are_vectors_of_the_targets_width(tmp_path, cpu):
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n  input a: f32[70, 45]\n  input b: f32[45, 3000]\n"
                   "  output y = a @ b\n}\n")
    lanes = CpuTarget(cpu=cpu).capabilities.vector_bits // 32
    loops = build(src, tmp_path / "m.so", target_cpu=cpu, dump="loops").dumps["loops"]
    assert f"f32x{lanes} = splat{lanes}(0.0)" in loops
    assert f"k0_panels: f32[{3000 // (2 * lanes)}, 45, {2 * lanes}]" in loops


@pytest.mark.parametrize(("lanes", "owned"), [(4, True), (8, False)])
def test_the_parallel_proof_counts_every_lane_of_a_vector_load(lanes, owned):
    """Iteration i stores t[4i .. 4i+3]; a vector load of 8 lanes at 4i reads the next
    iteration's elements too, so the loop may not be split."""
    t = Buffer("t", "f32", (72,))
    i, j = Var("i"), Var("j")
    at = Binary("add", Binary("mul", i, Const(4, "i64")), j)
    read = Lane(VecLoad(t, (Binary("mul", i, Const(4, "i64")),), lanes), 0)
    loop = For(i, 16, (For(j, 4, (Store(t, (at,), read),)),))
    assert independent(loop) is owned
    assert f"t[i * 4 +: {lanes}]" in print_kernel(Kernel("k", (t,), ("t",), (loop,)))


@pytest.mark.parametrize("cpu", [None, *WIDTHS])
def test_a_transpose_of_the_last_axis_runs_in_vector_blocks(tmp_path, cpu):
    """After fusion, a kernel that only swaps the last axis with another runs in L x L blocks
    (L vector loads, rows from their lanes) where both extents are whole vectors; a transpose
    that fusion inlined into its reader, or one with a partial vector, stays scalar."""
    lanes = CpuTarget(cpu=cpu).capabilities.vector_bits // 32
    src = tmp_path / "m.mlg"
    src.write_text("model m {\n  input x: f32[2, 32, 48]\n  input z: f32[16, 18]\n"
                   "  input u: f32[2, 32, 48]\n"
                   "  output y = transpose(x, perm=(0, 2, 1))\n"
                   "  output w = transpose(z, perm=(1, 0))\n"
                   "  output v = transpose(u, perm=(0, 2, 1)) * 2.0 + 1.0\n}\n")
    loops = build(src, tmp_path / "m.so", target_cpu=cpu, dump="loops").dumps["loops"]
    kernels = {k.split("(")[0]: k for k in loops.split("\nkernel ")[1:]}
    blocked = [name for name, k in kernels.items() if "vrow" in k]
    assert len(blocked) == 1, loops
    assert f"vrow0: f32x{lanes} = x[" in kernels[blocked[0]], loops
    # u's transpose went into v's nest, which reads u element by element
    assert any(re.match(r"k\d+_add\(u: ", k) and "transpose at" in k
               for k in kernels.values()), loops
