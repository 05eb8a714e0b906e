"""Loop-level fusion: pointwise producers are computed inside their consumers; the report says
what was fused and why the rest was not. (Every fused program is also checked against the
reference by the op tests, the examples and the fuzzer.)"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

import aotml
from aotml.codegen.llvm_cpu import CpuTarget
from aotml.driver import build

CHAIN = """model chain {
    input x: f32[N, 64]
    input b: f32[64]
    output y = maximum(x * 2 + 1, 0) * 0.5
    output z = softmax(x * 3 + b, axis=-1)
    output w = sum(exp(x), axis=(1,))
}
"""


def test_pointwise_chains_become_one_kernel(tmp_path):
    (tmp_path / "chain.mlg").write_text(CHAIN)
    result = build(tmp_path / "chain.mlg", tmp_path / "chain.so", dump="loops")
    loops = result.dumps["loops"]
    kernels = [line.split("(")[0].split()[-1] for line in loops.splitlines()
               if line.startswith("kernel ")]
    # y: one nest; z: the scale and bias read inside softmax's passes; w: exp is recomputed
    # nowhere (it is read once per element by the sum) so it is inlined too
    assert len(kernels) == 3, loops
    assert "y[i0, i1] = max((x[i0, i1] * 2.0) + 1.0, 0.0) * 0.5" in loops
    # in vector form (the softmax's row passes read L lanes at a time)
    assert re.search(r"vmax0 = max\(vmax0, \(x\[i0, r0 \* (\d+) \+: \1\] \* splat\1\(3\.0\)\) "
                     r"\+ b\[r0 \* \1 \+: \1\]\)", loops), loops
    assert "workspace 0 bytes" in loops
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(0)
    for n in (1, 9):
        x = rng.standard_normal((n, 64)).astype(np.float32)
        b = rng.standard_normal(64).astype(np.float32)
        got, want = model(x=x, b=b), aotml.interpret(tmp_path / "chain.mlg", precise=True,
                                                     x=x, b=b)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5 * 64, atol=1e-6)


def test_a_producer_goes_into_vector_loads_in_vector_form(tmp_path):
    """softmax reads its rows L lanes at a time: a pointwise producer whose loads run along
    the row (or not at all: s[i, 0]) is computed there in vector form; a transpose, which
    reads across rows, is stored, and the report says why."""
    (tmp_path / "m.mlg").write_text("""model m {
    input x: f32[6, 40]
    input s: f32[6, 1]
    input b: f32[40]
    input t: f32[40, 6]
    output y = softmax(x * s + b, axis=-1)
    output z = softmax(transpose(t, perm=(1, 0)) * 2, axis=-1)
}
""")
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", dump="loops", report=True)
    loops, report = result.dumps["loops"], result.dumps["report"]
    lanes = CpuTarget().capabilities.vector_bits // 32
    assert f"(x[i0, r0 * {lanes} +: {lanes}] * splat{lanes}(s[i0, 0])) + " \
           f"b[r0 * {lanes} +: {lanes}]" in loops
    assert "report for m: 3 kernels" in report, report  # x * s + b went into y's softmax
    assert re.search(r"k\d+_mul -> k\d+_softmax: k\d+_softmax reads t\d+ in vector loads, and "
                     r"k\d+_mul has no vector form there", report), report
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(5)
    arrays = {"x": rng.standard_normal((6, 40)).astype(np.float32),
              "s": rng.uniform(0.5, 2, (6, 1)).astype(np.float32),
              "b": rng.standard_normal(40).astype(np.float32),
              "t": rng.standard_normal((40, 6)).astype(np.float32)}
    got = model(**arrays)
    want = aotml.interpret(tmp_path / "m.mlg", precise=True, **arrays)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5 * 40, atol=1e-7, err_msg=k)


def test_a_mask_from_bools_is_stored_once_and_added_in_the_epilogue(tmp_path):
    """An attention mask made from two bool vectors is read once per head: it is stored as
    f32 (not recomputed from the bools in every head's epilogue), its kernel moves before
    the matmul, and the scale and the add go into the matmul's stores."""
    (tmp_path / "m.mlg").write_text("""model m {
    input q: f32[1, 3, 20, 8]
    input k: f32[1, 3, 8, 20]
    input a: bool[1, 1, 20, 1]
    input b: bool[1, 1, 1, 20]
    output y = (q @ k) * 0.35 + where(where(a, b, a), 0.0, -3.4e38)
}
""")
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", dump="loops", report=True)
    report = result.dumps["report"]
    assert "report for m: 2 kernels" in report, report
    assert re.search(r"k\d+_where -> k\d+_add: k\d+_add reads each element of t\d+ several "
                     r"times, and k\d+_where computes from bool or integer elements", report)
    assert re.search(r"k\d+_matmul +matmul \+ mul \+ add ", report), report
    launches = [line.split()[1].split("(")[0] for line in result.dumps["loops"].splitlines()
                if line.strip().startswith("launch ")]
    assert launches[0].endswith("_where") and launches[1].endswith("_matmul"), launches
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(11)
    arrays = {"q": rng.standard_normal((1, 3, 20, 8)).astype(np.float32),
              "k": rng.standard_normal((1, 3, 8, 20)).astype(np.float32),
              "a": rng.random((1, 1, 20, 1)) < 0.7, "b": rng.random((1, 1, 1, 20)) < 0.7}
    got = model(**arrays)["y"]
    want = aotml.interpret(tmp_path / "m.mlg", precise=True, **arrays)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5 * 8, atol=1e-6)


def test_an_expensive_producer_read_many_times_is_stored(tmp_path):
    (tmp_path / "m.mlg").write_text("model m {\n  input x: f32[4, 8]\n  e = exp(x)\n"
                                    "  output y = e @ transpose(e, perm=(1, 0))\n}\n")
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", dump="loops", report=True)
    assert "kernel k0_exp" in result.dumps["loops"]
    assert "recomputing k0_exp (5 operations per element) at each read costs more than " \
           "storing it" in result.dumps["report"]


def test_report_lists_kernels_flops_bytes_and_workspace(tmp_path):
    (tmp_path / "chain.mlg").write_text(CHAIN)
    proc = subprocess.run([sys.executable, "-m", "aotml", "build", str(tmp_path / "chain.mlg"),
                           "-o", str(tmp_path / "c.so"), "--report"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "report for chain: 3 kernels" in out
    assert "mul + add + maximum + mul  N*256" in out   # 4 flops per element, 64 per row
    assert "workspace: 0 bytes; liveness lower bound: 0 bytes" in out


def test_reshape_of_a_buffer_is_a_view(tmp_path):
    """reshape/squeeze/unsqueeze copy nothing: the consumer reads the source's bytes under the
    new shape, and the source stays live as long as the view is read."""
    (tmp_path / "m.mlg").write_text(
        "model m {\n  input x: f32[N, 6]\n  s = softmax(x)\n  r = reshape(s, shape=(-1, 3))\n"
        "  u = unsqueeze(softmax(r), axes=(0,))\n  output y = u\n  output z = reshape(x, "
        "shape=(-1,))\n}\n")
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", dump="loops")
    loops = result.dumps["loops"]
    assert "buffer r: f32[N*2, 3] view of s" in loops
    assert "k1_reshape" not in loops                   # no kernel for the view
    assert "launch k4_reshape(x, z)" in loops          # an output is still written
    model = aotml.load(result.so_path)
    for n in (1, 4):
        x = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
        got = model(x=x)
        want = aotml.interpret(tmp_path / "m.mlg", precise=True, x=x)
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5 * 6, atol=1e-7)
        np.testing.assert_array_equal(got["z"], want["z"])


def test_a_value_read_twice_in_a_chain_does_not_blow_up(tmp_path):
    """where(r > 1, r - 1, r) reads r three times: inlining r into it each link would grow the
    expression as 3^n (14 links did not build in 5 minutes); the chain builds in well under a
    second and computes the same."""
    lines = ["model m {", "    input x: f32[4]", "    r0 = relu(x)"]
    lines += [f"    r{i} = where(gt(r{i - 1}, 1.0), r{i - 1} - 1.0, r{i - 1})"
              for i in range(1, 15)]
    (tmp_path / "m.mlg").write_text("\n".join(lines + ["    output y = r14", "}"]) + "\n")
    model = aotml.load(aotml.build(tmp_path / "m.mlg", tmp_path / "m.so"))
    x = np.array([-1.0, 0.5, 3.25, 20.0], np.float32)
    np.testing.assert_array_equal(model(x=x)["y"], [0.0, 0.5, 0.25, 6.0])


EPILOGUE = """weights "w.npz"
model m {
    dim N
    input x: f32[N, 37]
    param w: f32[37, 21]
    param b: f32[21]
    param v: f32[19, 21]
    param u: f32[37, 5]
    h = relu(x @ w + b)
    output y = linear(h, v) * 2
    output s = sum(x @ u, axis=1)
}
"""


def test_bias_and_activation_are_stored_by_the_matmul(tmp_path):
    rng = np.random.default_rng(11)
    np.savez(tmp_path / "w.npz", w=rng.standard_normal((37, 21)).astype(np.float32),
             b=rng.standard_normal(21).astype(np.float32),
             v=rng.standard_normal((19, 21)).astype(np.float32),
             u=rng.standard_normal((37, 5)).astype(np.float32))
    (tmp_path / "m.mlg").write_text(EPILOGUE)
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", dump="loops", report=True)
    report, loops = result.dumps["report"], result.dumps["loops"]
    # h: matmul, bias and relu in one kernel; y: linear's weight transposed at build time,
    # then the scale fused in; s reads its matmul's result in a reduction: no epilogue
    assert "matmul + add + relu" in report, report
    assert "matmul + mul" in report, report
    assert "is not elementwise over" in report
    assert "buffer v_t: f32[21, 19] param" in loops
    model = aotml.load(result.so_path)
    for n in (1, 6):
        x = rng.standard_normal((n, 37)).astype(np.float32)
        got, want = model(x=x), aotml.interpret(tmp_path / "m.mlg", precise=True, x=x)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5 * 37, atol=1e-5)


def test_no_epilogue_when_the_result_has_two_readers(tmp_path):
    (tmp_path / "m.mlg").write_text("model m {\n  input a: f32[8, 8]\n  p = a @ a\n"
                                    "  output y = p + 1\n  output z = p * 2\n}\n")
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", report=True)
    assert "k0_matmul -> k1_add, k2_mul: k0_matmul's result has 2 readers" in \
        result.dumps["report"]


def test_no_epilogue_when_the_matmul_reads_back_its_sums(tmp_path):
    # an f16 matmul accumulates in f32 locals and stores once; an integer one accumulates in
    # its output, which it reads back: its stores are not final
    (tmp_path / "m.mlg").write_text("model m {\n  input a: i32[5, 6]\n  input b: i32[6, 3]\n"
                                    "  output y = (a @ b) + 1\n}\n")
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", report=True)
    assert "reads back t0 as it accumulates" in result.dumps["report"], result.dumps["report"]
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(2)
    a, b = rng.integers(-9, 9, (5, 6), dtype=np.int32), rng.integers(-9, 9, (6, 3), dtype=np.int32)
    np.testing.assert_array_equal(model(a=a, b=b)["y"], a @ b + 1)


def test_a_gelu_epilogue_is_fused_but_not_pow(tmp_path):
    # erf is inline vector code (codegen/vecmath.py), so gelu goes into the tile's stores;
    # pow is still a libm call per element, which there kept the accumulators out of vector
    # registers (gelu(a @ b) with libm's erf ran 10x slower fused than as its own pass)
    rng = np.random.default_rng(3)
    a = rng.uniform(-2, 2, (9, 8)).astype(np.float32)
    for expr, fused in (("gelu(a @ b)", True), ("pow(abs(a @ b), 1.5)", False)):
        folder = tmp_path / str(fused)
        folder.mkdir()
        (folder / "m.mlg").write_text("model m {\n  input a: f32[9, 8]\n  input b: f32[8, 19]\n"
                                      f"  output y = {expr}\n}}\n")
        result = build(folder / "m.mlg", folder / "m.so", report=True)
        report = result.dumps["report"]
        assert ("calls pow" in report) != fused, report
        assert ("k0_matmul  matmul + gelu" in report) == fused, report
        b = rng.uniform(-2, 2, (8, 19)).astype(np.float32)
        want = aotml.interpret(folder / "m.mlg", precise=True, a=a, b=b)["y"]
        got = aotml.load(result.so_path)(a=a, b=b)["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5 * 8, atol=1e-6)


def test_an_epilogue_in_vector_form_gives_the_scalar_epilogues_bits(tmp_path, monkeypatch):
    """Where the consumer has a vector form, a tile's L stores of one accumulator take it
    once, as vector code (then one vector store); lane by lane it is the same arithmetic, so
    the bits equal the scalar epilogue's. A select has no vector form and stays scalar. The
    rows and columns leave partial tiles (37 x 70)."""
    from aotml.loops import fuse

    (tmp_path / "m.mlg").write_text(
        "model m {\n  input a: f32[37, 40]\n  input b: f32[40, 70]\n  input c: f32[70]\n"
        "  input d: f32[40, 70]\n  output y = gelu(a @ b + c) * 0.5\n"
        "  output z = where(gt(a @ d, 0.0), a @ d, 0.1 * (a @ d))\n}\n")
    vector = build(tmp_path / "m.mlg", tmp_path / "v.so", dump="loops")
    loops = vector.dumps["loops"]
    lanes = CpuTarget().capabilities.vector_bits // 32
    assert re.search(rf"vepi\d+: f32x{lanes} = .*erf\(", loops), loops
    assert "select(" in loops  # z's epilogue, scalar
    monkeypatch.setattr(fuse, "vector_form", lambda e, var, lanes: None)
    scalar = build(tmp_path / "m.mlg", tmp_path / "s.so", dump="loops")
    assert "vepi" not in scalar.dumps["loops"]
    rng = np.random.default_rng(8)
    arrays = {"a": rng.standard_normal((37, 40)).astype(np.float32),
              "b": rng.standard_normal((40, 70)).astype(np.float32),
              "c": rng.standard_normal(70).astype(np.float32),
              "d": rng.standard_normal((40, 70)).astype(np.float32)}
    got, want = aotml.load(vector.so_path)(**arrays), aotml.load(scalar.so_path)(**arrays)
    for name in ("y", "z"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    ref = aotml.interpret(tmp_path / "m.mlg", precise=True, **arrays)["y"]
    np.testing.assert_allclose(got["y"], ref, rtol=1e-5 * 40, atol=1e-5)


def test_an_activation_written_as_several_ops_becomes_the_matmuls_epilogue(tmp_path):
    """gelu as ONNX writes it reads the matmul's result twice, in two ops: two readers when
    epilogues are first tried, one kernel once the pointwise chain has collapsed, which the
    second round of epilogues then fuses into the tiles' stores."""
    (tmp_path / "m.mlg").write_text(
        "model m {\n  input a: f32[37, 40]\n  input b: f32[40, 70]\n  h = a @ b\n"
        "  output y = h * (erf(h / 1.4142135) + 1) * 0.5\n}\n")
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", report=True)
    report = result.dumps["report"]
    assert "1 kernels" in report and "matmul + div + erf + add + mul + mul" in report, report
    assert "2 readers" not in report, report  # (round one's reason, no longer true)
    model = aotml.load(result.so_path)
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((37, 40)).astype(np.float32), \
        rng.standard_normal((40, 70)).astype(np.float32)
    want = aotml.interpret(tmp_path / "m.mlg", precise=True, a=a, b=b)["y"]
    np.testing.assert_allclose(model(a=a, b=b)["y"], want, rtol=1e-5 * 40, atol=1e-5 * 40)
