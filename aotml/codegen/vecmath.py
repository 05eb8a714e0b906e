"""Branch-free f32 exp, log, erf and tanh, emitted inline as LLVM IR for the CPU target.

Without a vector math library LLVM lowers `llvm.exp.f32` and friends to scalar libm calls,
and a loop that calls one does not vectorize. The functions here emit straight-line code
instead: arithmetic, `llvm.fmuladd`, `llvm.fabs`, `llvm.copysign`, bitcasts, integer shifts
and selects (compare + blend, never a branch), which the loop and SLP vectorizers widen like
any other elementwise arithmetic. Special values come out of the same code, through clamps
and selects, so a lane with inf or NaN costs what any other lane costs.

Every product-sum is `llvm.fmuladd`: one FMA where the target has it, else a multiply and an
add. The reductions are exact either way (their high constants have few bits), so the
accuracy below holds on a CPU without FMA too, give or take half an ulp.

exp(x)   n = round(x·log2 e), taken from the low bits of x·log2 e + 1.5·2^23 (no float-to-int
         conversion, whose result on NaN would be poison); r = x - n·ln2 in two steps
         (Cody-Waite: ln2_hi has 15 significant bits, so n·ln2_hi is exact for |n| < 512),
         |r| <= ln2/2. e^r = 1 + r + r²·Q(r), Q of degree 4. The result is e^r·2^n1·2^n2 with
         n1 = n >> 1, n2 = n - n1: both factors are normal numbers, so results that are
         subnormal are rounded once, and exp overflows to inf past 88.72. x is clamped to 89
         first (inf from 88.73 on anyway), which keeps n small; below -104 the result is 0,
         computed at x = 0 and replaced, so no intermediate is subnormal there (a masked
         attention's -3.4e38 logits took a microcode assist each).
log(x)   A subnormal x is first scaled by 2^23. x = 2^k·m with m in [√½, √2) from the bits;
         f = m - 1 (exact); log(1+f) = f - f²/2 + f³·Q(f), Q of degree 7; the result
         k·ln2_hi + (k·ln2_lo + log(1+f)). Selects give log(0) = -inf, log(inf) = inf and
         NaN for x < 0 or NaN.
tanh(x)  |x| < 0.625: x + x³·P(x²), P of degree 4 (tiny x comes back exact); otherwise
         1 - 2/(e^(2|x|) + 1), which saturates to 1 through e^(2|x|) = inf and propagates
         NaN. Either takes the sign of x by copysign: tanh is exactly odd, -0 stays -0.
erf(x)   |x| < 0.875: x + x·Q(x²), Q of degree 5. Otherwise erf(t) = 1 - erfc(t) with
         erfc(t) = exp(-t² + S(t)), S(t) = log(erfc(t)) + t² of degree 6 (smooth, about
         -log(t·√π)), t clamped to 3.93 where erf rounds to 1. Near 1 only erfc's absolute
         error counts, so the exp's few ulps of relative error vanish in the subtraction.
         The sign comes back by copysign: erf is exactly odd, -0 stays -0.

The coefficients are minimax fits made by `python -m aotml.codegen.vecmath` (see `fit`):
Lawson's iteratively reweighted least squares on 4001 Chebyshev points, in float64, to the
relative error of the function (for erf's tail, the absolute error of erfc), then rounded to
f32. The fit's own error is below 0.1 ulp in each case; what remains is f32 rounding.
Measured once over all 2^32 inputs against float64, the worst errors are exp 1.00 ulp, log
0.94, tanh 1.33, erf 1.11 with FMA (0.98, 0.92, 1.33, 1.37 without); tests/test_vecmath.py
sweeps every binade and the floats around each threshold.
"""

from __future__ import annotations

import math

import llvmlite.ir as ir

F32 = ir.FloatType()
I32 = ir.IntType(32)

# Minimax coefficients, lowest degree first, as printed by fit() (f32 values, written exactly).
# e^r - 1 - r = r²·Q(r) on |r| <= 1.02·ln2/2 (the margin: a non-fused x·log2 e may round n
# the other way near a half)
EXP_Q = (0.4999999403953552, 0.16666509211063385, 0.04166852682828903, 0.008370134979486465,
         0.0013811661629006267)
# log(1+f) - f + f²/2 = f³·Q(f) on [√½ - 1, √2 - 1]
LOG_Q = (0.3333333134651184, -0.2500081956386566, 0.20001226663589478, -0.16623356938362122,
         0.14201758801937103, -0.13160188496112823, 0.1276157796382904, -0.0763448029756546)
# tanh(x) - x = x³·P(x²) on [0, 0.625]
TANH_P = (-0.3333328068256378, 0.13331441581249237, -0.05373971536755562, 0.0206390842795372,
          -0.005704984068870544)
TANH_SMALL = 0.625
# erf(x) - x = x·Q(x²) on [0, 0.875]
ERF_Q = (0.12837915122509003, -0.3761255145072937, 0.11282455921173096, -0.02679147571325302,
         0.005032196640968323, -0.0006203327211551368)
ERF_SMALL = 0.875
# log(erfc(t)) + t² = S(t) on [0.875, 3.93]
ERF_S = (-0.00014420725347008556, -1.1278893947601318, 0.36317938566207886, -0.1042502298951149,
         0.022381044924259186, -0.003081999719142914, 0.00019990178407169878)
ERF_ONE = 3.93  # erfc(3.93) < 2^-25: erf rounds to 1 from here on

LOG2E = 1.4426950216293335
LN2_HI = 0.693145751953125  # ln 2 to 15 bits: n·LN2_HI is exact for |n| < 512
LN2_LO = 1.428606765330187e-06  # ln 2 - LN2_HI, rounded
ROUNDER = 12582912.0  # adding it rounds to an integer, which lands in the low mantissa bits
SQRT_HALF_BITS = 0x3F3504F3  # the bits of √½ as an f32


def _like(x: ir.Value, element: ir.Type) -> ir.Type:
    """`element`, or a vector of it with as many lanes as x: every function here takes an f32
    or a vector of f32 and works lane by lane."""
    return ir.VectorType(element, x.type.count) if isinstance(x.type, ir.VectorType) else element


def _const(x: ir.Value, v: float) -> ir.Constant:
    """v as an f32 of x's shape (every lane, for a vector)."""
    t = _like(x, F32)
    return ir.Constant(t, [v] * t.count if isinstance(t, ir.VectorType) else v)


def splat_like(x: ir.Value, v: float) -> ir.Constant:
    """v as an f32 constant of x's type (in every lane of a vector)."""
    return _const(x, v)


def _int(x: ir.Value, v: int) -> ir.Constant:
    t = _like(x, I32)
    return ir.Constant(t, [v] * t.count if isinstance(t, ir.VectorType) else v)


def float_intrinsic(b: ir.IRBuilder, name: str, t: ir.Type, nargs: int) -> ir.Function:
    """llvm.NAME.f32, or llvm.NAME.vLf32 for a vector type t, declared once per module (the
    CPU codegen's float intrinsics come from here too)."""
    full = f"llvm.{name}." + (f"v{t.count}f32" if isinstance(t, ir.VectorType) else "f32")
    try:
        return b.module.get_global(full)
    except KeyError:
        return ir.Function(b.module, ir.FunctionType(t, [t] * nargs), name=full)


def _fma(b: ir.IRBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    """x·y + z, fused where the target has FMA."""
    return b.call(float_intrinsic(b, "fmuladd", x.type, 3), [x, y, z])


def _poly(b: ir.IRBuilder, x: ir.Value, coefs: tuple[float, ...]) -> ir.Value:
    """Horner's rule (the loop's iterations give the core its parallelism)."""
    acc = _const(x, coefs[-1])
    for c in reversed(coefs[:-1]):
        acc = _fma(b, acc, x, _const(x, c))
    return acc


def _fabs(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.call(float_intrinsic(b, "fabs", x.type, 1), [x])


def _copysign(b: ir.IRBuilder, magnitude: ir.Value, sign: ir.Value) -> ir.Value:
    return b.call(float_intrinsic(b, "copysign", sign.type, 2), [magnitude, sign])


def _bits(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.bitcast(x, _like(x, I32))


def _float(b: ir.IRBuilder, n: ir.Value) -> ir.Value:
    """The f32 (lanes) whose bits are n."""
    return b.bitcast(n, _like(n, F32))


def _pow2(b: ir.IRBuilder, n: ir.Value) -> ir.Value:
    """2^n as an f32, for n (i32) in the normal range [-126, 127]."""
    return _float(b, b.shl(b.add(n, _int(n, 127)), _int(n, 23)))


def exp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e^x for an f32 x, as numpy: exp(-inf) = 0, exp(inf) = inf, NaN stays NaN."""
    # clamps written as compare + select keep a NaN (llvm.minnum would drop it)
    x = b.select(b.fcmp_ordered(">", x, _const(x, 89.0)), _const(x, 89.0), x)
    # below -104 the result is 0: computed at x = 0 and replaced, as computing it at -104
    # would make subnormal intermediates (slow: softmax rows of a masked attention took 1.7x
    # as long, one microcode assist per masked key)
    zero = b.fcmp_ordered("<", x, _const(x, -104.0))
    x = b.select(zero, _const(x, 0.0), x)
    shifted = _fma(b, x, _const(x, LOG2E), _const(x, ROUNDER))
    n_float = b.fsub(shifted, _const(x, ROUNDER))
    n = b.sub(_bits(b, shifted), _bits(b, _const(x, ROUNDER)))
    r = _fma(b, n_float, _const(x, -LN2_HI), x)
    r = _fma(b, n_float, _const(x, -LN2_LO), r)
    expm1 = _fma(b, b.fmul(r, r), _poly(b, r, EXP_Q), r)
    half = b.ashr(n, _int(n, 1))
    scaled = b.fmul(b.fadd(_const(x, 1.0), expm1), _pow2(b, half))
    return b.select(zero, _const(x, 0.0), b.fmul(scaled, _pow2(b, b.sub(n, half))))


def log(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """The natural logarithm of an f32 x, as numpy: log(0) = -inf, log(inf) = inf, NaN for
    x < 0 and for NaN; subnormal x exact to the same accuracy as normal x."""
    subnormal = b.fcmp_ordered("<", x, _const(x, 1.1754943508222875e-38))
    scaled = b.select(subnormal, b.fmul(x, _const(x, 8388608.0)), x)
    # bits - bits(√½): its exponent field is k, and the bits less k·2^23 are m in [√½, √2)
    offset = b.sub(_bits(b, scaled), _int(x, SQRT_HALF_BITS))
    k = b.ashr(offset, _int(x, 23))
    m = _float(b, b.sub(_bits(b, scaled), b.shl(k, _int(x, 23))))
    f = b.fsub(m, _const(x, 1.0))
    # log(1+f) = f + f²·(f·Q(f) - 1/2)
    log1p = _fma(b, b.fmul(f, f), _fma(b, f, _poly(b, f, LOG_Q), _const(x, -0.5)), f)
    k_float = b.sitofp(b.sub(k, b.select(subnormal, _int(x, 23), _int(x, 0))), _like(x, F32))
    y = _fma(b, k_float, _const(x, LN2_HI), _fma(b, k_float, _const(x, LN2_LO), log1p))
    y = b.select(b.fcmp_ordered("==", x, _const(x, math.inf)), x, y)
    y = b.select(b.fcmp_ordered("==", x, _const(x, 0.0)), _const(x, -math.inf), y)
    return b.select(b.fcmp_unordered("<", x, _const(x, 0.0)), _const(x, math.nan), y)


def tanh(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """tanh of an f32 x, as numpy: ±1 at ±inf, -0 and tiny x kept, NaN stays NaN."""
    z = b.fmul(x, x)
    small = _fma(b, b.fmul(x, z), _poly(b, z, TANH_P), x)
    t = _fabs(b, x)
    e = exp(b, b.fadd(t, t))
    large = b.fsub(_const(x, 1.0), b.fdiv(_const(x, 2.0), b.fadd(e, _const(x, 1.0))))
    # copysign for both: the small branch gives +0 for -0 (x·x²·P(x²) is +0 + -0)
    return _copysign(b, b.select(b.fcmp_ordered("<", t, _const(x, TANH_SMALL)), small, large), x)


def erf(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """The error function of an f32 x, as numpy's reference: ±1 at ±inf, exactly odd (-0
    stays -0), NaN stays NaN."""
    z = b.fmul(x, x)
    small = _fma(b, x, _poly(b, z, ERF_Q), x)
    t = _fabs(b, x)
    t = b.select(b.fcmp_ordered(">", t, _const(x, ERF_ONE)), _const(x, ERF_ONE), t)
    erfc = exp(b, _fma(b, b.fneg(t), t, _poly(b, t, ERF_S)))
    large = b.fsub(_const(x, 1.0), erfc)
    return _copysign(b, b.select(b.fcmp_ordered("<", t, _const(x, ERF_SMALL)), small, large), x)


FUNCTIONS = {"exp": exp, "log": log, "tanh": tanh, "erf": erf}


def fit() -> dict[str, list[float]]:
    """The coefficient tables above, fitted afresh (float64 numpy; a few seconds)."""
    import numpy as np

    def minimax(f, powers, lo, hi, weight):
        # Lawson: weighted least squares whose weights grow where the error is largest
        # converges to the minimax (equioscillating) fit.
        t = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.linspace(0.0, np.pi, 4001))
        w = weight(t)
        a = np.stack([t ** p for p in powers], axis=1) * w[:, None]
        y = f(t) * w
        lam = np.full(len(t), 1.0 / len(t))
        for _ in range(100):
            s = np.sqrt(lam)
            c = np.linalg.lstsq(a * s[:, None], y * s, rcond=None)[0]
            e = np.abs(a @ c - y)
            lam = lam * e / np.dot(lam, e)
        return [float(v) for v in c.astype(np.float32)]

    erf64, erfc64 = np.vectorize(math.erf), np.vectorize(math.erfc)
    half_ln2 = 1.02 * math.log(2) / 2
    return {
        "EXP_Q": minimax(lambda r: np.expm1(r) - r, range(2, 7), -half_ln2, half_ln2,
                         lambda r: np.exp(-r)),
        "LOG_Q": minimax(lambda f: np.log1p(f) - f + f * f / 2, range(3, 11),
                         math.sqrt(0.5) - 1, math.sqrt(2) - 1,
                         lambda f: 1 / np.abs(np.log1p(f))),
        "TANH_P": minimax(lambda x: np.tanh(x) - x, range(3, 12, 2), 1e-6, TANH_SMALL,
                          lambda x: 1 / np.tanh(x)),
        "ERF_Q": minimax(lambda x: erf64(x) - x, range(1, 12, 2), 1e-6, ERF_SMALL,
                         lambda x: 1 / erf64(x)),
        "ERF_S": minimax(lambda t: np.log(erfc64(t)) + t * t, range(7), ERF_SMALL, ERF_ONE,
                         erfc64),
    }


if __name__ == "__main__":
    import textwrap

    for table, coefs in fit().items():
        print(textwrap.fill(f"{table} = ({', '.join(map(repr, coefs))})", width=99,
                            subsequent_indent=" " * (len(table) + 4), break_long_words=False))
