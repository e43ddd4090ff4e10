"""Vectorizable float32 exp, log, tanh, sigmoid and erf as straight-line LLVM IR.

libm calls (``llvm.exp`` and friends become calls to ``expf``) keep the loop vectorizer
away from every loop that holds one; these routines use only arithmetic, bit casts,
``select`` and intrinsics with vector forms, so the loops around them vectorize.

* exp: Cody-Waite range reduction x = n ln2 + r (ln2 split in a short high part and a
  low part, so n * ln2_hi is exact), a degree-6 polynomial for e^r on |r| <= ln2/2
  (the Cephes ``expf`` minimax coefficients), and 2^n applied as two exact powers of two
  so that results in the denormal range are rounded once;
* log: the exponent and mantissa taken from the bits (denormals scaled by 2^23 first),
  the mantissa moved into [sqrt(1/2), sqrt(2)), a degree-9 polynomial in m - 1 (Cephes
  ``logf``);
* tanh: an odd polynomial for |x| < 0.625 (exact sign and -0.0 near 0), else
  (1 - e) / (1 + e) with e = exp(-2|x|) and the sign copied back;
* sigmoid: 1 / (1 + e) or e / (1 + e) with e = exp(-|x|), stable in both tails;
* erf: x + x Q(x^2) for |x| < 0.875 (Q of degree 5), else 1 - exp(P(|x|)) with P of degree
  10 fitting log(erfc) on [0.875, 4] (|x| clamped to 4, where erf rounds to 1) and the sign
  copied back. Both polynomials are our least-squares fits of float64 ``math.erf``.

Special values are numpy's: NaN gives numpy's quiet NaN, exp(+-inf) = inf / 0, overflow gives inf,
underflow gradual denormals then 0, log(0) = -inf, log(x < 0) = NaN (x86's default NaN,
sign bit set, as numpy gives), log(inf) = inf.
float64 keeps the libm calls (correctly rounded to about 1 ulp; a polynomial of the same
accuracy would need twice the degree): ``FAST`` names the dtypes these routines serve.
"""
from __future__ import annotations

from typing import Sequence

from llvmlite import ir

from .builder import F32

FAST = ("float32",)
I32 = ir.IntType(32)

# Cephes expf: e^r ~ 1 + r + r^2 P(r) on |r| <= ln2/2, about 1 ulp
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4       # ln2_hi has 9 bits: n * ln2_hi exact
_LOG2E = 1.44269504088896341
# Cephes logf: log(1 + m) ~ m - m^2/2 + m^3 P(m) on sqrt(1/2) - 1 <= m < sqrt(2) - 1
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
          1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
          3.3333331174e-1)
# Cephes tanhf: tanh(x) ~ x + x^3 P(x^2) on |x| < 0.625
_TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
           -3.33332819422e-1)

# erf(x) ~ x + x Q(x^2) on |x| < 0.875 (relative least squares; Q(0) = 2/sqrt(pi) - 1)
_ERF_SMALL = (-6.199346971698105e-04, 5.031426437199116e-03, -2.6790950447320938e-02,
              1.1282441020011902e-01, -3.761254847049713e-01, 1.2837915122509003e-01)
_ERF_SPLIT = 0.875
# log(erfc(x)) ~ P(x) on [0.875, 4]
_ERFC_LOG = (-5.8463626828597626e-08, 1.403457417836762e-06, -1.3195056453696452e-05,
             4.472838918445632e-05, 2.40695386310108e-04, -3.8248912896960974e-03,
             2.4759305641055107e-02, -1.0810431092977524e-01, -6.333293914794922e-01,
             -1.1295721530914307, 1.9243413407821208e-04)


def _c(v: float) -> ir.Constant:
    return ir.Constant(F32, float(v))


def _i(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


def _intr(module: ir.Module, name: str, nargs: int = 1) -> ir.Function:
    fnty = ir.FunctionType(F32, [F32] * nargs)
    return module.declare_intrinsic(f"llvm.{name}", [F32], fnty)


def _nan_in(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """y, or numpy's NaN (the quiet NaN 0x7fc00000, whatever the input's bits) for NaN x."""
    return b.select(b.fcmp_unordered("uno", x, x), b.bitcast(_i(0x7FC00000), F32), y)


def _horner(b: ir.IRBuilder, x: ir.Value, coeffs: Sequence[float]) -> ir.Value:
    acc = _c(coeffs[0])
    for c in coeffs[1:]:
        acc = b.fadd(b.fmul(acc, x), _c(c))
    return acc


def _pow2(b: ir.IRBuilder, k: ir.Value) -> ir.Value:
    """2^k as a float32 for an i32 k in [-126, 127] (built from the exponent bits)."""
    return b.bitcast(b.shl(b.add(k, _i(127)), _i(23)), F32)


def exp_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e^x to about 1 ulp, NaN/inf/overflow/denormal results as numpy's ``np.exp``."""
    module = b.module
    # outside [-104, 89] the result is 0 or inf anyway; the clamp keeps n in [-150, 128]
    xc = b.call(_intr(module, "minnum", 2), [b.call(_intr(module, "maxnum", 2), [x, _c(-104.0)]),
                                          _c(89.0)])
    n = b.call(_intr(module, "rint"), [b.fmul(xc, _c(_LOG2E))])
    r = b.fsub(b.fsub(xc, b.fmul(n, _c(_LN2_HI))), b.fmul(n, _c(_LN2_LO)))
    p = _horner(b, r, _EXP_P)
    y = b.fadd(b.fadd(b.fmul(b.fmul(p, r), r), r), _c(1.0))
    ni = b.fptosi(n, I32)
    n1 = b.ashr(ni, _i(1))                      # two exact steps: one rounding at most
    y = b.fmul(b.fmul(y, _pow2(b, n1)), _pow2(b, b.sub(ni, n1)))
    return _nan_in(b, x, y)


def log_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Natural log to about 1 ulp; 0 -> -inf, negative -> NaN, inf -> inf, NaN -> NaN."""
    tiny = b.fcmp_ordered("<", x, _c(1.1754943508222875e-38))     # denormal (or <= 0)
    xs = b.select(tiny, b.fmul(x, _c(8388608.0)), x)              # * 2^23: normal now
    bits = b.bitcast(xs, I32)
    e = b.sub(b.lshr(bits, _i(23)), b.select(tiny, _i(126 + 23), _i(126)))
    m = b.bitcast(b.or_(b.and_(bits, _i(0x007FFFFF)), _i(0x3F000000)), F32)   # [0.5, 1)
    low = b.fcmp_ordered("<", m, _c(0.707106781186547524))
    e = b.select(low, b.sub(e, _i(1)), e)
    m = b.fsub(b.select(low, b.fadd(m, m), m), _c(1.0))
    z = b.fmul(m, m)
    y = b.fmul(b.fmul(_horner(b, m, _LOG_P), m), z)
    ef = b.sitofp(e, F32)
    y = b.fadd(y, b.fmul(ef, _c(_LN2_LO)))
    y = b.fsub(y, b.fmul(z, _c(0.5)))
    y = b.fadd(b.fadd(m, y), b.fmul(ef, _c(_LN2_HI)))
    y = b.select(b.fcmp_ordered("==", x, _c(float("inf"))), x, y)
    y = b.select(b.fcmp_ordered("==", x, _c(0.0)), _c(float("-inf")), y)
    y = b.select(b.fcmp_ordered("<", x, _c(0.0)), b.bitcast(_i(-0x400000), F32), y)  # -NaN
    return _nan_in(b, x, y)


def tanh_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """tanh to a few ulp; odd, tanh(-0.0) = -0.0, +-inf -> +-1, NaN -> NaN."""
    module = b.module
    ax = b.call(_intr(module, "fabs"), [x])
    z = b.fmul(x, x)
    small = b.fadd(x, b.fmul(b.fmul(_horner(b, z, _TANH_P), z), x))
    small = b.select(b.fcmp_ordered("==", x, _c(0.0)), x, small)   # -0.0 + 0.0 would be +0
    e = exp_f32(b, b.fmul(ax, _c(-2.0)))
    big = b.fdiv(b.fsub(_c(1.0), e), b.fadd(_c(1.0), e))
    big = b.call(_intr(module, "copysign", 2), [big, x])
    return _nan_in(b, x, b.select(b.fcmp_ordered("<", ax, _c(0.625)), small, big))


def sigmoid_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """1 / (1 + e^-x) without overflow in either tail (NaN stays NaN)."""
    ax = b.call(_intr(b.module, "fabs"), [x])
    e = exp_f32(b, b.fneg(ax))                                      # e^-|x| in (0, 1]
    den = b.fadd(_c(1.0), e)
    pos = b.fdiv(_c(1.0), den)
    neg = b.fdiv(e, den)
    return _nan_in(b, x, b.select(b.fcmp_ordered(">=", x, _c(0.0)), pos, neg))


def erf_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """erf to about 1.5 ulp; odd, erf(-0.0) = -0.0, +-inf -> +-1, NaN -> NaN."""
    module = b.module
    ax = b.call(_intr(module, "fabs"), [x])
    small = b.fadd(x, b.fmul(x, _horner(b, b.fmul(x, x), _ERF_SMALL)))
    axc = b.call(_intr(module, "minnum", 2), [ax, _c(4.0)])
    big = b.fsub(_c(1.0), exp_f32(b, _horner(b, axc, _ERFC_LOG)))
    big = b.call(_intr(module, "copysign", 2), [big, x])
    return _nan_in(b, x, b.select(b.fcmp_ordered("<", ax, _c(_ERF_SPLIT)), small, big))
