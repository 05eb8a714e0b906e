"""Symbolic dims: every op compiled with a run-time dim and checked against the reference at
several values of it from one build; the ABI's binding and its errors; the arithmetic of
symbolic dims; the workspace planned at a bound or as a polynomial.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from opcheck import EPS32, Dim, Sample, case_id, check, params

import aotml
from aotml import ops
from aotml.graph.symbolic import SymbolicError, evaluate, round_up_terms, symbol

N, S = Dim("N"), Dim("S")


def _positive(rng, shapes):
    return [rng.uniform(0.1, 3.0, s).astype(np.float32) for s in shapes]


def _away_from_zero(rng, shapes):
    a = rng.uniform(-2, 2, shapes[0]).astype(np.float32)
    b = rng.uniform(0.5, 2, shapes[1]) * rng.choice([-1, 1], shapes[1])
    return [a, b.astype(np.float32)]


def _gather_inputs(rng, shapes):
    x = rng.uniform(-2, 2, shapes[0]).astype(np.float32)
    return [x, rng.integers(-min(shapes[0][0], 3), min(shapes[0][0], 3), shapes[1])]


def _where_inputs(rng, shapes):
    return [rng.random(shapes[0]) < 0.5,
            *(rng.uniform(-2, 2, s).astype(np.float32) for s in shapes[1:])]


def _batch_norm_inputs(rng, shapes):
    x, *rest = (rng.uniform(-2, 2, s).astype(np.float32) for s in shapes)
    rest[3] = np.abs(rest[3]) + 0.5  # a variance
    return [x, *rest]


UNARY = ["neg", "exp", "tanh", "relu", "sigmoid", "copy", "abs", "erf", "gelu", "silu"]
BINARY = ["add", "sub", "mul", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge"]
# N broadcasts against 1, and a 1 in the symbolic operand against 3
BROADCAST = (("N", 1, 4), (3, 4))

SYMBOLIC: dict[str, list[Sample]] = {
    **{op: [Sample((("N", 5),))] for op in UNARY},
    **{op: [Sample((("N", 5),), inputs=_positive)] for op in ("log", "sqrt", "rsqrt")},
    "leaky_relu": [Sample((("N", 5),), {"alpha": 0.2})],
    "clip": [Sample((("N", 5),), {"min": -0.5, "max": 1.0})],
    "cast": [Sample((("N", 3),), {"dtype": "i32"})],
    **{op: [Sample(BROADCAST), Sample((("N", "S"), ("N", "S")))] for op in BINARY},
    "div": [Sample(BROADCAST, inputs=_away_from_zero)],
    "pow": [Sample(BROADCAST, inputs=_positive)],
    "where": [Sample((("N", 4), ("N", 4), (4,)), dtypes=("bool", "f32", "f32"),
                     inputs=_where_inputs)],
    "reshape": [Sample((("N", 6),), {"shape": (-1, 3)}),
                Sample((("N", "S", 6),), {"shape": (N, S, 2, 3)}),
                Sample((("N", "S", 2),), {"shape": (-1,)})],
    "transpose": [Sample((("N", 3, "S"),), {"perm": (2, 0, 1)})],
    "broadcast_to": [Sample((("N", 1),), {"shape": (2, N, 4)})],
    "concat": [Sample((("N", 2), ("N", 3)), {"axis": 1})],
    "slice": [Sample((("N", 6),), {"starts": (1,), "ends": (6,), "axes": (1,),
                                   "steps": (2,)})],
    "gather": [Sample((("N", 5), (4,)), {"axis": 0}, dtypes=("f32", "i64"),
                      inputs=_gather_inputs, sizes=({"N": 3}, {"N": 8})),
               Sample(((3, 5), ("N",)), {"axis": 1}, dtypes=("f32", "i64"),
                      inputs=lambda rng, shapes: [
                          rng.uniform(-2, 2, shapes[0]).astype(np.float32),
                          rng.integers(-5, 5, shapes[1])])],
    "pad": [Sample((("N", 3),), {"pads": (1, 0, 2, 1)})],
    "squeeze": [Sample((("N", 1, 4),), {"axes": (1,)})],
    "unsqueeze": [Sample((("N", 4),), {"axes": (0, 2)})],
    "matmul": [Sample((("N", 3, 7), (7, 5)), terms=7),
               Sample((("N", "S", 8), ("N", 8, "S")), terms=8)],
    "linear": [Sample((("N", 6), (4, 6), (4,)), terms=7)],
    **{op: [Sample((("N", 4, 3),), {"axis": (1,)}, terms=4),
            Sample((("N", 4),), {"axis": (0,)}, terms=8),
            Sample((("N", 3),), terms=24)] for op in ("sum", "mean", "max", "min")},
    "prod": [Sample((("N", 4, 3),), {"axis": (1,)}, terms=4, inputs=_positive),
             Sample((("N", 3),), {"axis": (0,)}, terms=8, inputs=_positive)],
    **{op: [Sample((("N", 5),), {"axis": 1}), Sample((("N", 5),), {"axis": 0})]
       for op in ("argmax", "argmin")},
    **{op: [Sample((("N", 7),), {"axis": -1}, terms=7),
            Sample((("N", 3),), {"axis": 0}, terms=8)] for op in ("softmax", "log_softmax")},
    "layer_norm": [Sample((("N", 6), (6,), (6,)), terms=12),
                   Sample((("N", "S"), ("N", "S"), ("N", "S")), {"axis": 0}, terms=40)],
    "rms_norm": [Sample((("N", 6), (6,)), terms=12)],
    "batch_norm": [Sample((("N", 3, 2, 2), (3,), (3,), (3,), (3,)), inputs=_batch_norm_inputs,
                          terms=4)],
    "conv2d": [Sample((("N", 2, 5, 5), (3, 2, 3, 3), (3,)), {"padding": 1}, terms=19)],
    "max_pool2d": [Sample((("N", 2, 6, 6),), {"kernel": 2})],
    "avg_pool2d": [Sample((("N", 2, 6, 6),), {"kernel": 2}, terms=4)],
    "global_avg_pool": [Sample((("N", 3, 4, 4),), terms=16)],
    "attention": [Sample((("N", "S", 8),) * 3, {"causal": True}, terms=16),
                  Sample((("N", 2, "S", 4), ("N", 2, 5, 4), ("N", 2, 5, 3)), terms=10)],
}


def test_every_op_takes_a_symbolic_dim():
    assert sorted(set(ops.REGISTRY) - set(SYMBOLIC)) == []
    for op, samples in SYMBOLIC.items():
        assert all(s.symbols for s in samples), op


@pytest.mark.parametrize("op,sample", params(SYMBOLIC))
def test_op_with_symbolic_dims(tmp_path, op, sample):
    """One build, several values of the symbols: each run matches the float64 reference."""
    check(tmp_path, op, sample)


def test_case_ids_are_unique():
    ids = [case_id(op, s) for op, ss in SYMBOLIC.items() for s in ss]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------------------------
# the arithmetic of symbolic dims


def test_polynomials_are_canonical():
    n, s = symbol("N"), symbol("S")
    assert n * 2 * s == s * n * 2 == 2 * (n * s)
    assert str(n * s * 16 + n * 4) == "N*S*16 + N*4"
    assert n + 1 - 1 == n and n - n == 0 and isinstance(n - n, int)
    assert (n * 6) // 3 == n * 2 and (n * s * 6) // (s * 2) == n * 3
    assert (n * 6) % 3 == 0
    assert hash(n * 2) == hash(2 * n)
    assert evaluate(n * s * 3 + 2, {"N": 5, "S": 7}) == 107
    assert str(round_up_terms(n * 12 + 3, 64)) == "N*64 + 64"


@pytest.mark.parametrize("question", [
    lambda n: n < 4, lambda n: n >= 1, lambda n: int(n), lambda n: range(n),
    lambda n: bool(n), lambda n: (n * 5) % 10, lambda n: 7 // n, lambda n: n // 2,
    lambda n: max(n, 3), lambda n: n / 2,
])
def test_value_dependent_questions_raise(question):
    with pytest.raises(SymbolicError):
        question(symbol("N"))


def test_a_dim_that_may_vanish_is_refused():
    from aotml.graph.ir import TensorType
    with pytest.raises(SymbolicError, match="could be less than 1"):
        TensorType("f32", (symbol("N") - 2,))
    assert TensorType("f32", (symbol("N") + 2,)).numel == symbol("N") + 2


# ---------------------------------------------------------------------------------------------
# the ABI: binding, checks, sizes

MODEL = """model m {
    dim N <= 16
    input x: f32[N, 4]
    input b: f32[N]
    input c: f32[S, 4]
    output y = x * reshape(b, shape=(N, 1))
    output z = sum(softmax(c), axis=(1,))
    output w = relu(x)
}
"""


@pytest.fixture(scope="module")
def symbolic_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sym")
    (d / "m.mlg").write_text(MODEL)
    out = aotml.build(d / "m.mlg", d / "m.so")
    return d, aotml.load(out)


def _arrays(rng, n, s):
    return {"x": rng.standard_normal((n, 4)).astype(np.float32),
            "b": rng.standard_normal(n).astype(np.float32),
            "c": rng.standard_normal((s, 4)).astype(np.float32)}


def test_manifest_shows_the_symbols(symbolic_model):
    _, m = symbolic_model
    assert m.symbols == {"N": 16, "S": None}
    assert [t.shape for t in m.inputs] == [("N", 4), ("N",), ("S", 4)]
    assert [t.shape for t in m.outputs] == [("N", 4), ("S",), ("N", 4)]
    assert [t.nbytes for t in m.inputs] == [None, None, None]
    assert m.workspace_bytes is None  # a temporary's size depends on the unbounded S


def test_runs_at_many_sizes_from_one_build(symbolic_model):
    d, m = symbolic_model
    rng = np.random.default_rng(7)
    for n, s in [(1, 1), (16, 3), (5, 1000), (3, 2)]:
        arrays = _arrays(rng, n, s)
        got = m(**arrays)
        want = aotml.interpret(d / "m.mlg", **arrays)
        for k in want:
            assert got[k].shape == want[k].shape
            np.testing.assert_allclose(got[k], want[k], rtol=4 * EPS32, atol=1e-6)


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(b=a["b"][:2]),
     "inputs disagree on N: 'x' dim 0 is 3, but 'b' dim 0 is 2"),
    (lambda a: a.update(x=np.zeros((17, 4), np.float32), b=np.zeros(17, np.float32)),
     "input 'x' dim 0 is 17, above the bound of N (16)"),
    (lambda a: a.update(c=np.zeros((2, 5), np.float32)),
     "input 'c' has shape (2, 5), expected (S, 4)"),
    (lambda a: a.update(c=np.zeros((0, 4), np.float32)),
     "input 'c' dim 0 is 0, but S must be at least 1"),
])
def test_inconsistent_shapes_are_refused_in_both_runners(symbolic_model, change, message):
    d, m = symbolic_model
    arrays = _arrays(np.random.default_rng(1), 3, 2)
    change(arrays)
    with pytest.raises(aotml.RunError) as compiled:
        m(**arrays)
    with pytest.raises(aotml.RunError) as interpreted:
        aotml.interpret(d / "m.mlg", **arrays)
    assert message in str(compiled.value)
    assert message in str(interpreted.value)


def test_out_array_must_have_the_bound_shape(symbolic_model):
    _, m = symbolic_model
    arrays = _arrays(np.random.default_rng(2), 3, 2)
    with pytest.raises(aotml.RunError, match=r"output 'y' has shape \(4, 4\), expected \(3, 4\)"):
        m(**arrays, out={"y": np.empty((4, 4), np.float32)})


def test_bounded_model_has_a_static_workspace(tmp_path):
    (tmp_path / "m.mlg").write_text(
        "model m {\n  dim N <= 64\n  input x: f32[N, 100]\n"
        "  output y = relu(exp(softmax(x)) + 1)\n}\n")
    m = aotml.load(aotml.build(tmp_path / "m.mlg", tmp_path / "m.so"))
    assert m.workspace_bytes == 64 * 100 * 4  # softmax's result; the rest is fused
    header = (tmp_path / "m.h").read_text()
    assert "#define M_N_MAX 64" in header
    assert "#define M_WORKSPACE_BYTES 25600u" in header
    assert "#define M_x_ELEMENTS(N) ((uint64_t)(N) * 100)" in header
    assert "int m_run(int64_t N, const float *x, float *y, void *workspace);" in header
    x = np.random.default_rng(3).standard_normal((64, 100)).astype(np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    want = np.maximum(np.exp(e / e.sum(axis=1, keepdims=True)) + 1, 0)
    np.testing.assert_allclose(m(x=x)["y"], want, rtol=1e-6)


def test_unbounded_workspace_is_a_polynomial(tmp_path):
    """Temporaries of the same kind of size share a slot; the arena grows with N."""
    (tmp_path / "m.mlg").write_text(
        "model m {\n  input x: f32[N, 100]\n  a = softmax(x)\n  b = softmax(a)\n"
        "  c = softmax(b)\n  output y = c + x\n}\n")
    from aotml.driver import build
    result = build(tmp_path / "m.mlg", tmp_path / "m.so", dump="loops")
    header = (tmp_path / "m.h").read_text()
    # a, b, c take N*400 bytes each, rounded to N*448; c reuses a's slot (a dies making b)
    assert "#define M_WORKSPACE_BYTES(N) ((uint64_t)(N) * 896)" in header
    assert "workspace@N*448" in result.dumps["loops"]
    m = aotml.load(result.so_path)
    def softmax(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    for n in (1, 7, 300):
        x = np.random.default_rng(n).uniform(-1, 0, (n, 100))
        want = softmax(softmax(softmax(x))) + x
        np.testing.assert_allclose(m(x=x.astype(np.float32))["y"], want, rtol=1e-5, atol=1e-6)


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "m.h"

int main(void) {
    const aotml_model *m = m_model();
    for (int64_t n = 1; n <= 9; n += 4) {
        int64_t s = 3;
        float *x = malloc(M_x_ELEMENTS(n, s) * sizeof(float));
        float *b = malloc(M_b_ELEMENTS(n, s) * sizeof(float));
        float *c = malloc(M_c_ELEMENTS(n, s) * sizeof(float));
        float *y = malloc(M_y_ELEMENTS(n, s) * sizeof(float));
        float *z = malloc(M_z_ELEMENTS(n, s) * sizeof(float));
        float *w = malloc(M_w_ELEMENTS(n, s) * sizeof(float));
        void *ws = aligned_alloc(64, M_WORKSPACE_BYTES(n, s) + 64);
        for (int64_t i = 0; i < n * 4; i++) x[i] = (float)(i % 7) - 3.0f;
        for (int64_t i = 0; i < n; i++) b[i] = (float)i;
        for (int64_t i = 0; i < s * 4; i++) c[i] = (float)i;
        if (m_run(n, s, x, b, c, y, z, w, ws) != AOTML_OK) { puts(m_last_error()); return 1; }
        printf("%lld %g %g %g\n", (long long)n, y[n * 4 - 1], z[s - 1], w[0]);

        /* the generic entry: bind from shapes, then ask for sizes */
        int64_t xs[2] = {n, 4}, bs[1] = {n}, cs[2] = {s, 4}, syms[2];
        const int64_t *shapes[3] = {xs, bs, cs};
        if (m->bind(shapes, syms) != AOTML_OK) { puts(m->last_error()); return 1; }
        int64_t dims[2]; uint64_t bytes, wsb;
        if (m->shape(syms, 3, dims, &bytes) != AOTML_OK) return 2;
        if (m->workspace_size(syms, &wsb) != AOTML_OK) return 3;
        printf("bind %lld %lld y %lld %lld %llu ws %llu\n", (long long)syms[0],
               (long long)syms[1], (long long)dims[0], (long long)dims[1],
               (unsigned long long)bytes, (unsigned long long)wsb);
        free(x); free(b); free(c); free(y); free(z); free(w); free(ws);
    }
    int64_t bad_b[1] = {2}, xs[2] = {3, 4}, cs[2] = {1, 4}, syms[2];
    const int64_t *shapes[3] = {xs, bad_b, cs};
    int rc = m->bind(shapes, syms);
    printf("disagree %d %s\n", rc, m->last_error());
    int64_t big[2] = {17, 1};
    printf("bound %d %s\n", m_run(big[0], big[1], 0, 0, 0, 0, 0, 0, 0), m_last_error());
    int64_t huge[2] = {16, (int64_t)1 << 61};
    printf("huge %d %s\n", m->workspace_size(huge, &(uint64_t){0}), m->last_error());
    return 0;
}
"""


def test_c_program_runs_the_typed_and_generic_entries(symbolic_model, tmp_path):
    d, _ = symbolic_model
    (tmp_path / "main.c").write_text(C_PROGRAM)
    exe = tmp_path / "main"
    subprocess.run(["cc", "-std=c11", "-O1", "-Wall", "-Werror", f"-I{d}", "main.c", "-o",
                    str(exe), str(d / "m.so"), f"-Wl,-rpath,{d}"], cwd=tmp_path, check=True)
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True,
                           timeout=60).stdout.splitlines()
    # n = 1, 5, 9: y[n*4-1] = x[n*4-1] * b[n-1]; z[2] = a softmax's sum; w[0] = relu(-3)
    z_last = "1"
    for k, n in enumerate((1, 5, 9)):
        x_last = float((n * 4 - 1) % 7 - 3)
        assert lines[2 * k].split() == [str(n), f"{x_last * (n - 1):g}", z_last, "0"]
        assert lines[2 * k + 1].startswith(f"bind {n} 3 y {n} 4 {n * 16} ws ")
    assert lines[6] == ("disagree 8 inputs disagree on N: 'x' dim 0 is 3, but 'b' dim 0 is 2")
    assert lines[7] == "bound 8 N = 17 is above its bound 16"
    assert lines[8].startswith("huge 8 with N = 16, S = 2305843009213693952, input 'c' would "
                               "be too large")


def test_symbolic_dim_in_an_attribute_must_be_known(tmp_path):
    (tmp_path / "m.mlg").write_text(
        "model m {\n  input x: f32[N, 4]\n  output y = reshape(x, shape=(M, 4))\n}\n")
    with pytest.raises(aotml.CompileError, match="unknown dim 'M' in 'shape'"):
        aotml.build(tmp_path / "m.mlg", tmp_path / "m.so")


def test_cli_run_binds_symbols(symbolic_model, tmp_path):
    d, _ = symbolic_model
    rng = np.random.default_rng(5)
    arrays = _arrays(rng, 4, 6)
    args = []
    for k, a in arrays.items():
        np.save(tmp_path / f"{k}.npy", a)
        args += ["--input", f"{k}={tmp_path / f'{k}.npy'}"]
    proc = subprocess.run([sys.executable, "-m", "aotml", "run", str(d / "m.so"), *args,
                           "--output-dir", str(tmp_path / "out")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "out" / "z.npy").shape == (6,)
