"""Profiled builds (`aotml build --profile`, `aotml profile`): the same bits as a plain build,
counters that count what ran, work that agrees with the build report, and the ABI from C."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import aotml
from aotml.cli import main
from aotml.codegen.llvm_cpu import CpuTarget
from aotml.driver import build, source_graph
from aotml.graph.passes import run_pipeline
from aotml.graph.symbolic import evaluate
from aotml.loops.lower import lower_graph
from aotml.loops.report import kernel_work
from conftest import rand

SOURCE = """weights "weights.npz"
model mlp {
    dim    N <= 64
    input  x:  f32[N, 48]
    param  w1: f32[48, 72]
    param  b1: f32[72]
    param  w2: f32[72, 10]
    h = gelu(x @ w1 + b1)
    output y = softmax(h @ w2, axis=-1)
    output s = sum(h, axis=1)
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The model built plain and profiled, with the profiled build's report of kernels."""
    folder = tmp_path_factory.mktemp("profile")
    rng = np.random.default_rng(7)
    np.savez(folder / "weights.npz", w1=rand(rng, (48, 72)), b1=rand(rng, (72,)),
             w2=rand(rng, (72, 10)))
    src = folder / "mlp.mlg"
    src.write_text(SOURCE)
    aotml.build(src, folder / "plain.so")
    result = build(src, folder / "profiled.so", profile=True)
    # the report's count of each kernel's work, from a lowering of its own
    graph = run_pipeline(source_graph(src)[0])
    lanes = CpuTarget().capabilities.vector_bits // 32
    program, plan, _ = lower_graph(graph, [], vector_lanes=lanes)
    return {"dir": folder, "src": src, "plain": aotml.load(folder / "plain.so"),
            "profiled": aotml.load(folder / "profiled.so"),
            "work": kernel_work(program, plan), "program": result.program}


@pytest.mark.parametrize("threads", [1, 2])
def test_profiled_build_gives_the_same_bits_and_counts_every_run(built, threads):
    plain, profiled = built["plain"], built["profiled"]
    assert profiled.profiled and not plain.profiled
    rng = np.random.default_rng(threads)
    x = rand(rng, (37, 48))
    profiled.set_num_threads(threads)
    try:
        profiled.reset_profile()
        for _ in range(5):
            got = profiled(x=x)
        want = plain(x=x)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        p = profiled.profile({"N": 37})
    finally:
        profiled.set_num_threads(0)
    assert p.runs == 5
    assert [k.kernel for k in p.kernels] == [launch.kernel for launch in
                                            built["program"].launches]
    assert all(k.seconds > 0 for k in p.kernels), p


def test_work_is_the_build_reports_for_the_symbols(built):
    p = built["profiled"].profile({"N": 23})
    by_name = {w.kernel: w for w in built["work"]}
    assert {k.kernel for k in p.kernels} == set(by_name)
    for k in p.kernels:
        w = by_name[k.kernel]
        assert (k.ops, k.flops, k.bytes) == (w.ops, evaluate(w.flops, {"N": 23}),
                                             evaluate(w.bytes, {"N": 23})), k.kernel
    assert any("gelu" in k.ops for k in p.kernels)
    # and counted independently for the plain matmul h @ w2: 2·N·72·10 operations, and its
    # three f32 buffers (h, w2, the result) read or written once
    (plain,) = [k for k in p.kernels if k.ops == "matmul"]
    assert (plain.flops, plain.bytes) == (2 * 23 * 72 * 10, 4 * (23 * 72 + 72 * 10 + 23 * 10))


def test_reset_zeroes_and_a_failed_call_counts_no_run(built):
    m = built["profiled"]
    m(x=rand(np.random.default_rng(3), (4, 48)))
    m.reset_profile()
    p = m.profile({"N": 4})
    assert p.runs == 0 and all(k.seconds == 0 for k in p.kernels)
    with pytest.raises(aotml.RunError):
        m(x=np.zeros((65, 48), np.float32))  # N above its bound: rejected before any kernel
    assert m.profile({"N": 4}).runs == 0


def test_profile_needs_a_profiled_build_and_every_symbol(built):
    with pytest.raises(aotml.RunError, match="built without --profile"):
        built["plain"].profile({"N": 1})
    with pytest.raises(aotml.RunError, match=r"a value for each symbol \(N\)"):
        built["profiled"].profile()
    with pytest.raises(aotml.RunError, match="above its bound"):
        built["profiled"].profile({"N": 65})


def test_profile_from_c(built, tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler 'cc' on PATH")
    folder = built["dir"]
    code = r"""
#include <stdio.h>
#include <stdlib.h>
#include "profiled.h"
int main(void) {
    const aotml_model *m = mlp_model();
    const aotml_profile *p = m->profile;
    if (!p) return 2;
    static float x[5 * 48], y[5 * 10], s[5];
    for (int i = 0; i < 5 * 48; i++) x[i] = (float)((i * 7919) % 97) / 50.0f - 1.0f;
    int64_t syms[1] = {5};
    const void *ins[1] = {x};
    void *outs[2] = {y, s};
    uint64_t in_bytes[1] = {sizeof x}, out_bytes[2] = {sizeof y, sizeof s};
    for (int r = 0; r < 3; r++)
        if (m->run(syms, ins, in_bytes, 1, outs, out_bytes, 2, NULL, 0)) {
            fprintf(stderr, "%s\n", m->last_error());
            return 3;
        }
    uint64_t flops[64], bytes[64];
    if (p->work(syms, flops, bytes)) return 4;
    printf("runs %llu\n", (unsigned long long)*p->runs);
    for (uint32_t k = 0; k < p->n_kernels; k++)
        printf("%s|%s|%llu|%llu|%d\n", p->kernels[k], p->ops[k], (unsigned long long)flops[k],
               (unsigned long long)bytes[k], p->ns[k] > 0);
    syms[0] = 0;
    printf("bad %d %s\n", p->work(syms, flops, bytes), m->last_error());
    return 0;
}
"""
    c_file = tmp_path / "prof.c"
    c_file.write_text(code)
    exe = tmp_path / "prof"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", f"-I{folder}", str(c_file),
                    str(folder / "profiled.so"), f"-Wl,-rpath,{folder}", "-o", str(exe)],
                   check=True, capture_output=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "runs 3"
    want = built["profiled"].profile({"N": 5})
    assert lines[1:-1] == [f"{k.kernel}|{k.ops}|{k.flops}|{k.bytes}|1" for k in want.kernels]
    assert lines[-1].startswith("bad 8 N = 0, but it must be at least 1")


def test_cli_profile_prints_every_kernel(built, capsys):
    assert main(["profile", str(built["src"]), "--dim", "N=9", "--seconds", "0.05",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("profile of mlp (mlp.mlg): ")
    for w in built["work"]:
        assert f"  {w.kernel} " in out
    assert "a prepared call from Python" in out
    assert main(["profile", str(built["dir"] / "profiled.so"), "--dim", "N=3", "--seconds",
                 "0.02", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert f"... {len(built['work']) - 1} more kernels" in out


def test_cli_profile_groups_kernels_by_their_ops(tmp_path, capsys):
    """Two layers of the same ops give one row of two kernels, their times summed."""
    (tmp_path / "m.mlg").write_text(
        "model m {\n  input x: f32[16, 40]\n  input w: f32[40, 40]\n"
        "  h = relu(x @ w)\n  output y = relu(h @ w)\n}\n")
    assert main(["profile", str(tmp_path / "m.mlg"), "--seconds", "0.02", "--group"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:-1]]
    assert out.splitlines()[1].split()[0] == "kernels"
    assert [(r[0], r[1], r[-3:]) for r in rows] == [("2", "kernels", ["matmul", "+", "relu"])]
    total = float(out.splitlines()[-1].split()[1])
    assert float(rows[0][2]) == pytest.approx(total, rel=0.01)


def test_cli_profile_writes_json(built, capsys, tmp_path):
    out = tmp_path / "p.json"
    assert main(["profile", str(built["dir"] / "profiled.so"), "--dim", "N=6", "--seconds",
                 "0.02", "--json", str(out)]) == 0
    capsys.readouterr()
    record = json.loads(out.read_text())
    assert record["model"] == "mlp" and record["runs"] >= 10 and record["run_seconds"] > 0
    by_name = {w.kernel: w for w in built["work"]}
    assert [k["kernel"] for k in record["kernels"]] == \
        [launch.kernel for launch in built["program"].launches]
    for k in record["kernels"]:
        w = by_name[k["kernel"]]
        assert (k["ops"], k["flops"], k["bytes"]) == (w.ops, evaluate(w.flops, {"N": 6}),
                                                      evaluate(w.bytes, {"N": 6}))
        assert k["seconds"] > 0


@pytest.mark.parametrize("args, message", [
    (["plain.so", "--dim", "N=3"], "was built without --profile"),
    (["mlp.mlg"], "has the dim 'N': give its value with --dim N=VALUE"),
    (["mlp.mlg", "--dim", "N=x"], "--dim takes NAME=VALUE"),
    (["mlp.mlg", "--dim", "N=3", "--seconds", "0"], "take positive values"),
    (["mlp.mlg", "--dim", "N=3", "-i", "z=missing.npy"], "cannot read input 'z'"),
])
def test_cli_profile_errors(built, capsys, args, message):
    args = [str(built["dir"] / a) if a.endswith((".so", ".mlg")) else a for a in args]
    assert main(["profile", *args]) == 1
    assert message in capsys.readouterr().err


def test_profile_needs_cpu_code(built):
    with pytest.raises(aotml.CompileError, match="--profile times CPU runs"):
        build(built["src"], built["dir"] / "gpu.ptx", target="cuda:sm_80", profile=True)
