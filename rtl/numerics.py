"""Fixed-point numerics, defined once for the gateware and the NumPy reference.

Every rounding and saturation in fpdeep is one of the functions in this module.
Each exists twice, side by side: a NumPy version (``*_np``) used by
:mod:`fpdeep.sim.reference`, and an Amaranth version (``*_hw``) used by the
engines in :mod:`fpdeep.rtl`. Both follow the same integer definition, so the
gateware equals the integer reference bit for bit.

The rules
---------
* Values are two's-complement integers ``q`` standing for ``q / 2**frac``.
* **Rounding** is round-to-nearest with ties toward +inf: ``floor((x + 2**(s-1)) / 2**s)``.
  In hardware that is one constant add and an arithmetic shift.
* **Saturation** clamps to the target format's range and raises a flag that the
  engines count. Nothing ever wraps around.
* **Accumulators** are 48 bits (a DSP-sized width). The elaborator proves, per
  engine, that the longest sum cannot overflow (:func:`check_accumulator`), so a
  sum is exact and only the final requantization rounds.
* **Master weights** are 32 bits with 16 more fraction bits than the 16-bit
  copies that the engines read. Gupta et al. (ICML 2015) found that 16-bit
  weights with round-to-nearest stall, because small updates round away; the
  16 extra master bits keep those updates (an update of lr·g ≈ 1e-6 is still
  ≈ 270 LSBs of a master weight), while FP and BP read cheap 16-bit copies
  rounded from the masters after every mini-batch.
* **Biases** are weights on a constant input of 1.0 in the activation format,
  so the same MAC, gradient and update path serves both.
* **The learning rate** folds in the 1/B of the mini-batch mean: the engines add
  the raw batch sum of gradients and multiply it once by ``lr / B`` held as an
  unsigned 16-bit fraction.

The loss gradient
-----------------
Softmax cross-entropy's gradient is ``p - onehot(label)``. Hardware computes
``p`` with base-2 exponentials and one division per class (:func:`softmax_error_np`):

1. ``d_i = z_i - max(z)`` (activation format, ``d_i <= 0``);
2. ``t_i = round(d_i * log2(e))``, with ``log2(e)`` as a 16-bit constant;
3. ``e_i = EXP2_LUT[frac(t_i) >> 2] >> (-floor(t_i))``, a 256-entry table of
   ``2**(j/256)`` in Q1.15;
4. ``p_i = round(e_i / sum(e))`` in the error format, by a restoring divider;
5. ``err_i = p_i - (i == label)``.

The loss value
--------------
The host's loss counter sums a per-sample cross-entropy in **bits**
(``-log2 p_label``; times ``ln 2`` for nats), unsigned Q8.8
(:data:`LOSS_FRAC` = 8, :data:`LOSS_WIDTH` = 16), from the same ``t_i`` and
``sum(e)`` as the gradient (:func:`cross_entropy_np`). Because every ``t_i`` is
already relative to the largest logit (``t_max = 0``, ``e_max = 2**15``):

1. ``loss = log2(sum(e) / 2**15) - t_label``, which stays exact however far
   ``p_label`` underflows;
2. ``log2(sum(e)) ~= k + LOG2_LUT[m] / 2**12``: ``k`` is the position of the
   leading one of the sum (``>= 15``), ``m`` the next 8 bits rounded to nearest
   (ties up, ``0 .. 256``), and ``LOG2_LUT`` a 257-entry table of
   ``log2(1 + m / 256)`` in Q1.12 (:func:`log2_parts_np`);
3. the sum, with ``max(12, act.frac)`` fraction bits, is rounded to Q8.8 and
   clamped to ``LOSS_MAX`` (255.996 bits; reached only by logit gaps the Q6.10
   default cannot hold, whose largest loss is 92.3 + log2(classes) bits).

Against the exact cross-entropy of the same logits, the error is at most 0.0060
bits (1.5 LSBs) at 2 to 10 classes and 0.0116 bits at 1000 classes, measured
over random logits (``tests/rtl/test_numerics.py``), with a mean of -0.0004
bits. The exponential table's truncated 8-bit index dominates it (each ``e_i``
is low by up to 2**-8 of an octave); the log2 table adds at most 0.0029 bits
and the final rounding 0.002. The host sums the losses into a 32-bit counter
that saturates (:func:`saturating_add_np`) rather than wrap, at 16.7 million bits.
"""

from dataclasses import dataclass

import numpy as np

from amaranth.hdl import C, Mux, signed, Value

from ..plan.errors import FpdeepError

__all__ = [
    "FixedFormat", "Numerics", "DEFAULT_NUMERICS",
    "shift_round_np", "saturate_np", "requantize_np", "check_accumulator",
    "shift_round_hw", "saturate_hw", "requantize_hw",
    "sgd_step_np", "master_to_weight_np",
    "EXP2_LUT", "LOG2E_Q", "LOG2E_FRAC", "softmax_error_np",
    "exp2_args_np", "exp2_parts_np",
    "LOG2_LUT", "LOG2_LUT_BITS", "LOG2_LUT_FRAC", "LOSS_FRAC", "LOSS_WIDTH", "LOSS_MAX",
    "LOSS_SUM_WIDTH", "log2_parts_np", "cross_entropy_combine_np", "cross_entropy_sum_np",
    "cross_entropy_np", "saturating_add_np",
    "log2_parts_hw", "cross_entropy_hw", "saturating_add_hw",
]


@dataclass(frozen=True)
class FixedFormat:
    """A signed fixed-point format of ``width`` bits with ``frac`` fraction bits."""
    width: int
    frac: int

    def __post_init__(self):
        if not isinstance(self.width, int) or not 2 <= self.width <= 64:
            raise FpdeepError(f"fixed-point width must be an int from 2 to 64, not {self.width!r}")
        if not isinstance(self.frac, int) or not 0 <= self.frac < self.width:
            raise FpdeepError(f"fixed-point fraction bits must be an int from 0 to "
                              f"{self.width - 1}, not {self.frac!r}")

    @property
    def shape(self):
        return signed(self.width)

    @property
    def min(self):
        return -(1 << (self.width - 1))

    @property
    def max(self):
        return (1 << (self.width - 1)) - 1

    @property
    def one(self):
        return 1 << self.frac

    def from_float(self, x):
        """Quantize floats: round to nearest (ties up), then saturate."""
        scaled = np.floor(np.asarray(x, dtype=np.float64) * (1 << self.frac) + 0.5)
        return np.clip(scaled, self.min, self.max).astype(np.int64)

    def to_float(self, q):
        return np.asarray(q, dtype=np.float64) / (1 << self.frac)

    def __str__(self):
        return f"Q{self.width - self.frac}.{self.frac}"


@dataclass(frozen=True)
class Numerics:
    """The formats of one training run. Defaults are the ones documented in the README.

    Parameters
    ----------
    act, weight, error : FixedFormat
        Activations, the 16-bit weight copies the engines read, and errors.
    master : FixedFormat
        Master weights; must have ``weight.frac + k`` fraction bits, ``k >= 0``.
    acc_width : int
        Accumulator width of every MAC and gradient sum.
    grad_width : int
        Width of the batch gradient, saturated from the accumulator before the
        SGD step (fraction bits ``act.frac + error.frac``).
    rate_frac : int
        Fraction bits of the unsigned 16-bit learning-rate and momentum constants.
    """
    act: FixedFormat = FixedFormat(16, 10)
    weight: FixedFormat = FixedFormat(16, 12)
    error: FixedFormat = FixedFormat(16, 13)
    master: FixedFormat = FixedFormat(32, 28)
    acc_width: int = 48
    grad_width: int = 32
    rate_frac: int = 16

    def __post_init__(self):
        for name in ("act", "weight", "error", "master"):
            if not isinstance(getattr(self, name), FixedFormat):
                raise FpdeepError(f"numerics: {name} must be a FixedFormat, "
                                  f"not {getattr(self, name)!r}")
        if self.master.frac < self.weight.frac or \
                self.master.width - self.master.frac < self.weight.width - self.weight.frac:
            raise FpdeepError(f"numerics: master format {self.master} must cover weight format "
                              f"{self.weight} (as many or more integer and fraction bits)")
        widest = max(self.act.width, self.weight.width, self.error.width)
        if self.act.width + max(self.weight.width, self.error.width) > self.acc_width:
            raise FpdeepError(f"numerics: acc_width {self.acc_width} is narrower than one "
                              f"product of {widest}-bit operands")
        if self.grad_width > self.acc_width:
            raise FpdeepError(f"numerics: grad_width {self.grad_width} exceeds acc_width "
                              f"{self.acc_width}")
        if self.act.one > self.act.max:
            raise FpdeepError(f"numerics: activation format {self.act} cannot hold 1.0, "
                              f"which biases and the loss need")
        if not 1 <= self.rate_frac <= 16:
            raise FpdeepError(f"numerics: rate_frac must be from 1 to 16, not {self.rate_frac}")

    @property
    def acc_shape(self):
        return signed(self.acc_width)

    @property
    def grad(self):
        """Format of the batch gradient: products of activations and errors."""
        return FixedFormat(self.grad_width, self.act.frac + self.error.frac)

    @property
    def update_shift(self):
        """Right shift that takes ``grad * rate`` to the master format."""
        shift = self.grad.frac + self.rate_frac - self.master.frac
        if shift < 1:
            raise FpdeepError("numerics: master format has too many fraction bits for the "
                              "gradient and rate formats")
        return shift

    def rate_from_float(self, rate, *, name="learning rate"):
        q = int(np.floor(rate * (1 << self.rate_frac) + 0.5))
        if not 0 <= q < (1 << 16):
            raise FpdeepError(f"{name} {rate} does not fit an unsigned 16-bit value with "
                              f"{self.rate_frac} fraction bits")
        if rate > 0 and q == 0:
            raise FpdeepError(f"{name} {rate} rounds to zero with {self.rate_frac} "
                              f"fraction bits")
        return q

    def to_dict(self):
        return {"act": [self.act.width, self.act.frac],
                "weight": [self.weight.width, self.weight.frac],
                "error": [self.error.width, self.error.frac],
                "master": [self.master.width, self.master.frac],
                "acc_width": self.acc_width, "grad_width": self.grad_width,
                "rate_frac": self.rate_frac}


DEFAULT_NUMERICS = Numerics()


def check_accumulator(terms, operand_width, acc_width, *, what):
    """Raise unless a sum of ``terms`` worst-case products fits the accumulator exactly.

    The largest product of two ``n``-bit operands is ``(-2**(n-1))**2 = 2**(2n-2)``;
    a sum of ``terms`` of them is at most ``terms * 2**(2n-2)``, which needs
    ``2n - 1 + bit_length(terms)`` bits with the sign (one more than
    ``ceil(log2(terms))`` would give when ``terms`` is a power of two, e.g. 32 bits
    for a single product of two 16-bit values).
    """
    need = 2 * operand_width - 1 + int(terms).bit_length()
    if need > acc_width:
        raise FpdeepError(f"{what}: a sum of {terms} products needs a {need}-bit accumulator, "
                          f"more than acc_width {acc_width}")
    return need


# ---- NumPy ---------------------------------------------------------------------------------

def shift_round_np(x, shift):
    """``x / 2**shift`` rounded to nearest, ties toward +inf (left shift when ``shift <= 0``)."""
    x = np.asarray(x, dtype=np.int64)
    if shift <= 0:
        return x << -shift
    return (x + (1 << (shift - 1))) >> shift


def saturate_np(x, fmt):
    """Clamp to ``fmt``; returns ``(values, number_of_saturated_values)``."""
    x = np.asarray(x, dtype=np.int64)
    clipped = np.clip(x, fmt.min, fmt.max)
    return clipped, int(np.count_nonzero(clipped != x))


def requantize_np(acc, acc_frac, fmt):
    """Round an exact sum with ``acc_frac`` fraction bits to ``fmt`` and saturate."""
    return saturate_np(shift_round_np(acc, acc_frac - fmt.frac), fmt)


def master_to_weight_np(master, numerics):
    """The 16-bit weight copy that the engines read, rounded from the master weights."""
    return requantize_np(master, numerics.master.frac, numerics.weight)


def sgd_step_np(master, velocity, grad_acc, numerics, rate_q, momentum_q):
    """One SGD step of a whole mini-batch, exactly as the weight-update unit does it.

    ``grad_acc`` is the exact batch sum of ``act * error`` products. It is
    saturated to the gradient format, scaled by ``rate_q`` (``lr / B``), rounded
    to the master format, optionally folded into the momentum velocity, and
    subtracted from the masters with saturation.

    Returns ``(master, velocity, saturation_count)``.
    """
    grad, sat_g = saturate_np(grad_acc, numerics.grad)
    delta = shift_round_np(grad * rate_q, numerics.update_shift)
    sat_v = 0
    if momentum_q:
        velocity, sat_v = saturate_np(
            shift_round_np(velocity * momentum_q, numerics.rate_frac) + delta, numerics.master)
        step = velocity
    else:
        step = delta
    master, sat_m = saturate_np(master - step, numerics.master)
    return master, velocity, sat_g + sat_v + sat_m


LOG2E_FRAC = 14
LOG2E_Q = int(np.floor(np.log2(np.e) * (1 << LOG2E_FRAC) + 0.5))
EXP2_LUT_FRAC = 15
EXP2_LUT_BITS = 8
EXP2_LUT = [int(np.floor(2.0 ** (j / (1 << EXP2_LUT_BITS)) * (1 << EXP2_LUT_FRAC) + 0.5))
            for j in range(1 << EXP2_LUT_BITS)]


def exp2_args_np(logits):
    """Steps 1 and 2 of the loss: ``t = round((z - max(z)) * log2(e))``, activation
    format, ``<= 0`` (``0`` at every largest logit)."""
    z = np.asarray(logits, dtype=np.int64)
    return shift_round_np((z - z.max()) * LOG2E_Q, LOG2E_FRAC)


def exp2_parts_np(logits, numerics):
    """Steps 1 to 3 of the loss: base-2 exponentials of ``z - max(z)`` in Q1.15."""
    t = exp2_args_np(logits)
    frac_bits = numerics.act.frac
    if frac_bits < EXP2_LUT_BITS:
        raise FpdeepError(f"numerics: the loss needs at least {EXP2_LUT_BITS} activation "
                          f"fraction bits, not {frac_bits}")
    index = (t & ((1 << frac_bits) - 1)) >> (frac_bits - EXP2_LUT_BITS)
    shift = -(t >> frac_bits)                                   # >= 0
    lut = np.asarray(EXP2_LUT, dtype=np.int64)
    return np.where(shift > EXP2_LUT_FRAC + 1, 0, lut[index] >> np.minimum(shift, 63))


def softmax_error_np(logits, label, numerics):
    """The hardware's softmax cross-entropy error ``p - onehot(label)`` in the error format.

    Returns ``(error, predicted_class)``; the prediction is the first largest logit.
    """
    e = exp2_parts_np(logits, numerics)
    total = int(e.sum())
    one = numerics.error.one
    p = (e * (2 * one) + total) // (2 * total)                 # round(e / total), ties up
    error = p.copy()
    error[label] -= one
    return error, int(np.argmax(logits))


LOG2_LUT_BITS = 8
LOG2_LUT_FRAC = 12
#: ``log2(1 + m / 256)`` in Q1.12 for ``m = 0 .. 256``; the last entry is exactly 1.0.
LOG2_LUT = [int(np.floor(np.log2(1.0 + m / (1 << LOG2_LUT_BITS)) * (1 << LOG2_LUT_FRAC) + 0.5))
            for m in range((1 << LOG2_LUT_BITS) + 1)]
LOSS_FRAC = 8
LOSS_WIDTH = 16
#: Largest per-sample loss, ``255.996`` bits; larger losses saturate to it.
LOSS_MAX = (1 << LOSS_WIDTH) - 1
LOSS_SUM_WIDTH = 32


def log2_parts_np(total):
    """``log2(total)`` as ``(k, index)``: ``k`` is the position of the leading one and
    ``index`` the 8 bits below it rounded to nearest (ties up), ``0 .. 256``, so that
    ``log2(total) ~= k + LOG2_LUT[index] / 2**12``. ``total`` must be positive."""
    total = np.asarray(total, dtype=np.int64)
    if np.any(total < 1):
        raise FpdeepError("numerics: log2 of a value below 1")
    k = np.frexp(total.astype(np.float64))[1].astype(np.int64) - 1     # exact below 2**53
    mantissa = total - (np.int64(1) << k)
    shift = k - (LOG2_LUT_BITS + 1)
    bits = np.where(shift >= 0, mantissa >> np.maximum(shift, 0),
                    mantissa << np.maximum(-shift, 0))                  # 9 bits
    return k, (bits + 1) >> 1


def cross_entropy_combine_np(k, log2_frac, t_label, numerics):
    """Step 3 of the loss value: ``k - 15 + log2_frac / 2**12 - t_label``, rounded to
    :data:`LOSS_FRAC` fraction bits and clamped to ``0 .. LOSS_MAX``."""
    f = max(LOG2_LUT_FRAC, numerics.act.frac)
    x = (((np.asarray(k, dtype=np.int64) - EXP2_LUT_FRAC) << f)
         + (np.asarray(log2_frac, dtype=np.int64) << (f - LOG2_LUT_FRAC))
         - (np.asarray(t_label, dtype=np.int64) << (f - numerics.act.frac)))
    return np.clip(shift_round_np(x, f - LOSS_FRAC), 0, LOSS_MAX)


def cross_entropy_sum_np(total, t_label, numerics):
    """The loss value from the sum of the exponentials (Q1.15 units) and the label's
    exponent argument: ``log2(total / 2**15) - t_label``."""
    k, index = log2_parts_np(total)
    return cross_entropy_combine_np(k, np.asarray(LOG2_LUT, dtype=np.int64)[index], t_label,
                                    numerics)


def cross_entropy_np(logits, label, numerics):
    """The hardware's per-sample softmax cross-entropy, in bits, unsigned Q8.8.

    ``log2(sum_i 2**t_i) - t_label`` with the ``t_i`` and the sum of
    :func:`softmax_error_np` (``-log2 p_label``, or ``ln(2)`` times that in nats).
    """
    t = exp2_args_np(logits)
    total = int(exp2_parts_np(logits, numerics).sum())
    return int(cross_entropy_sum_np(total, int(t[label]), numerics))


def saturating_add_np(acc, x, width):
    """``acc + x`` clamped to ``2**width - 1``, for unsigned counters."""
    return min(int(acc) + int(x), (1 << width) - 1)


# ---- Amaranth -------------------------------------------------------------------------------

def shift_round_hw(x, shift):
    """Amaranth twin of :func:`shift_round_np`; ``x`` must be signed."""
    if shift <= 0:
        return x << -shift
    return (x + (1 << (shift - 1))) >> shift


def saturate_hw(x, fmt):
    """Amaranth twin of :func:`saturate_np`: returns ``(value, saturated)`` expressions."""
    x = Value.cast(x)
    high, low = x > fmt.max, x < fmt.min
    value = Mux(high, fmt.max, Mux(low, fmt.min, x))
    return value.as_signed()[:fmt.width].as_signed(), high | low


def requantize_hw(acc, acc_frac, fmt):
    """Amaranth twin of :func:`requantize_np`: returns ``(value, saturated)``."""
    return saturate_hw(shift_round_hw(Value.cast(acc), acc_frac - fmt.frac), fmt)


def log2_parts_hw(total):
    """Amaranth twin of :func:`log2_parts_np`: ``(k, index)`` of an unsigned ``total``.

    A priority encoder and a normalising left shift; combinational.
    """
    total = Value.cast(total)
    width = max(len(total), LOG2_LUT_BITS + 2)
    total = total.as_unsigned()
    k = C(0, range(width))
    shift = C(width - 1, range(width))
    for i in range(len(total)):
        k = Mux(total[i], i, k)
        shift = Mux(total[i], width - 1 - i, shift)
    normal = (total << shift)[:width]                   # the leading one at width - 1
    bits = normal[width - 1 - (LOG2_LUT_BITS + 1):width - 1]
    return k, (bits + 1) >> 1


def cross_entropy_hw(k, log2_frac, t_label, numerics):
    """Amaranth twin of :func:`cross_entropy_combine_np`: an ``unsigned(LOSS_WIDTH)``
    expression of ``k``, ``LOG2_LUT[index]`` and the signed ``t_label``."""
    f = max(LOG2_LUT_FRAC, numerics.act.frac)
    k, log2_frac = Value.cast(k).as_unsigned(), Value.cast(log2_frac).as_unsigned()
    t_label = Value.cast(t_label).as_signed()
    x = ((k << f) + (log2_frac << (f - LOG2_LUT_FRAC)) - (EXP2_LUT_FRAC << f)
         - (t_label << (f - numerics.act.frac)))
    r = shift_round_hw(x, f - LOSS_FRAC)
    return Mux(r < 0, 0, Mux(r > LOSS_MAX, LOSS_MAX, r)).as_unsigned()[:LOSS_WIDTH]


def saturating_add_hw(acc, x):
    """Amaranth twin of :func:`saturating_add_np`: ``acc + x`` clamped to the all-ones
    value of ``acc``'s width (both unsigned)."""
    acc = Value.cast(acc)
    top = (1 << len(acc)) - 1
    s = acc + x
    return Mux(s > top, top, s)[:len(acc)]
