"""The CPU's inline exp, log, tanh and erf (aotml/codegen/vecmath.py) against float64.

A sweep over every binade (every 1021st bit pattern, both signs, subnormals, inf and NaN)
plus every float near the algorithms' thresholds, built for this host (FMA where it has
one) and, on x86-64, for the baseline x86-64 CPU (no FMA: llvm.fmuladd is a multiply and an
add there). Errors are in units in the last place of the correctly rounded f32 result
(2^-149 for subnormal results); a result equal to the rounded reference counts 0.
"""

from __future__ import annotations

import io
import math
import platform
import re

import numpy as np
import pytest

import aotml
from aotml.codegen import vecmath

SOURCE = """model m {
    input x: f32[N]
    output exp = exp(x)
    output log = log(x)
    output tanh = tanh(x)
    output erf = erf(x)
}
"""

# The worst errors over all 2^32 inputs, measured once: exp 1.00, log 0.94, tanh 1.33,
# erf 1.11 with FMA; exp 0.98, log 0.92, tanh 1.33, erf 1.37 without.
MAX_ULPS = {"exp": 1.5, "log": 1.5, "tanh": 2.0, "erf": 2.0}

TARGETS = [None] + (["x86-64"] if platform.machine() in ("x86_64", "AMD64") else [])

NAN, INF = math.nan, math.inf


def f32(*values) -> np.ndarray:
    return np.array(values, np.float32)


def _erf64(x: np.ndarray) -> np.ndarray:
    # math.erf is correctly rounded in float64 for all practical purposes; below 2^-30 the
    # series' second term is under 2^-60 relative
    out = np.where(np.isnan(x), np.nan, np.sign(x))
    tiny = np.abs(x) < 2.0 ** -30
    out[tiny] = x[tiny] * (2 / math.sqrt(math.pi))
    mid = ~tiny & (np.abs(x) < 6)
    out[mid] = np.frompyfunc(math.erf, 1, 1)(x[mid]).astype(np.float64)
    return out


REFERENCE = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "erf": _erf64}


def _sweep() -> np.ndarray:
    strided = np.arange(0, 2 ** 32, 1021, dtype=np.uint64).astype(np.uint32).view(np.float32)
    thresholds = [
        0.0, 1.0, 2.0 ** -126,                                  # zero, log's 1, subnormals
        88.72283935546875, -87.33654, -103.97208,               # exp: overflow, subnormal, 0
        math.sqrt(0.5), math.sqrt(2), 0.5 * math.log(2),        # log's and exp's reductions
        vecmath.TANH_SMALL, 9.01,                               # tanh's switch, saturation
        vecmath.ERF_SMALL, 3.92, vecmath.ERF_ONE,               # erf's switch, 1, clamp
    ]
    near = []
    for t in thresholds:
        for v in (t, -t):
            bits = int(np.float32(v).view(np.uint32))
            lo, hi = max(bits - 2 ** 13, 0), min(bits + 2 ** 13, 2 ** 32)
            near.append(np.arange(lo, hi, dtype=np.uint64).astype(np.uint32))
    specials = f32(INF, -INF, NAN, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                   2.0 ** -149, -2.0 ** -149)
    return np.concatenate([strided, np.concatenate(near).view(np.float32), specials])


def ulp_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in ulps of want rounded to f32; 0 where got is that rounding (infinities
    and NaN included)."""
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = want.astype(np.float32)
        exact = (got == rounded) | (np.isnan(got) & np.isnan(rounded))
        ulp = np.maximum(np.spacing(np.abs(rounded)).astype(np.float64), 2.0 ** -149)
        err = np.abs(got.astype(np.float64) - want) / ulp
    return np.where(exact, 0.0, np.where(np.isnan(err), np.inf, err))


@pytest.fixture(scope="module")
def sweep():
    x = _sweep()
    with np.errstate(all="ignore"):
        wide = x.astype(np.float64)
        return x, {name: ref(wide) for name, ref in REFERENCE.items()}


@pytest.fixture(scope="module", params=TARGETS, ids=lambda t: t or "host")
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vecmath")
    src = folder / "m.mlg"
    src.write_text(SOURCE)
    options = {"target_cpu": request.param} if request.param else {}
    return aotml.load(aotml.build(src, folder / "m.so", **options))


@pytest.mark.parametrize("name", list(REFERENCE))
def test_error_in_ulps_over_the_whole_range(model, sweep, name):
    x, refs = sweep
    got = model(x=x)[name]
    err = ulp_errors(got, refs[name])
    worst = int(np.argmax(err))
    assert err[worst] <= MAX_ULPS[name], (
        f"{name}({float(x[worst])!r}) = {float(got[worst])!r}, want {refs[name][worst]!r}: "
        f"{err[worst]:.2f} ulp")


def test_odd_functions_are_exactly_odd(model, sweep):
    x, _ = sweep
    plus, minus = model(x=x), model(x=-x)
    for name in ("tanh", "erf"):
        np.testing.assert_array_equal(minus[name].view(np.uint32),
                                      (-plus[name]).view(np.uint32), err_msg=name)


def test_special_values(model):
    tiny = 2.0 ** -149
    x = f32(-INF, INF, NAN, 0.0, -0.0, 1e-30, tiny, -tiny, 100.0, -100.0)
    out = model(x=x)
    with np.errstate(over="ignore"):
        exp100 = np.float32(math.exp(-100))  # subnormal, rounded once
    np.testing.assert_array_equal(
        out["exp"], f32(0, INF, NAN, 1, 1, 1, 1, 1, INF, exp100))
    np.testing.assert_array_equal(
        out["log"], f32(NAN, INF, NAN, -INF, -INF, math.log(1e-30), math.log(tiny), NAN,
                        math.log(100), NAN))
    np.testing.assert_array_equal(
        out["tanh"], f32(-1, 1, NAN, 0, -0.0, 1e-30, tiny, -tiny, 1, -1))
    np.testing.assert_array_equal(
        out["erf"], f32(-1, 1, NAN, 0, -0.0, 2 / math.sqrt(math.pi) * 1e-30, tiny, -tiny,
                        1, -1))
    for name in ("tanh", "erf"):  # the sign of zero
        assert not np.signbit(out[name][3]) and np.signbit(out[name][4]), name
    # the edges of exp's range: the largest finite result, the first overflow, the last
    # nonzero (2^-149, from e^-103.97 rounded up) and the first 0
    edges = f32(88.72283, 88.72284, -103.97207, -103.97209)
    np.testing.assert_array_equal(
        model(x=edges)["exp"], f32(np.exp(np.float64(edges[0])), INF, 2.0 ** -149, 0))


def test_loops_calling_them_vectorize(tmp_path):
    """No call remains (no libm, no llvm.exp), and the loop runs on vectors."""
    src = tmp_path / "m.mlg"
    src.write_text(SOURCE.replace("[N]", "[4096]"))
    dumps = io.StringIO()
    aotml.build(src, tmp_path / "m.so", dump="llvm", dump_stream=dumps)
    text = dumps.getvalue()
    called = set(re.findall(r"call[^@\n]*@([\w.]+)", text))
    assert not called & {"expf", "logf", "tanhf", "erff", "llvm.exp.f32", "llvm.log.f32"}
    assert re.search(r"<\d+ x float>", text)


def test_the_gpu_keeps_libdevice(tmp_path, monkeypatch):
    """The GPU emitter lowers the four to libdevice's __nv_* functions, never to these."""
    def refuse(b, x):
        raise AssertionError("the GPU path reached vecmath")

    for name in vecmath.FUNCTIONS:
        monkeypatch.setitem(vecmath.FUNCTIONS, name, refuse)
    src = tmp_path / "m.mlg"
    src.write_text(SOURCE)
    try:
        aotml.build(src, tmp_path / "m.ptx", target="cuda:sm_80")
    except aotml.CompileError as e:  # emitted, then found no libdevice to link
        assert "libdevice" in e.message


def test_the_tables_are_what_the_fit_gives():
    """`python -m aotml.codegen.vecmath` prints them; a table edited by hand, or a fit
    changed without its table, fails here."""
    for table, coefs in vecmath.fit().items():
        np.testing.assert_allclose(coefs, getattr(vecmath, table), rtol=1e-5, err_msg=table)
