"""Affine quantization math: scale and zero point, (mean, std_dev) and (min, max), and back."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qcore.qtyping import QlabError

# TFLite's default 8-bit activation range (int8, asymmetric)
INT8_MIN, INT8_MAX = -128, 127
# tflite_convert's --mean_values/--std_dev_values are defined over the uint8 range
UINT8_MIN, UINT8_MAX = 0, 255


def _finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise QlabError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise QlabError(f"{name}={value!r} must be a finite number")
    return v


def _check_qrange(qmin: int, qmax: int) -> None:
    if int(qmin) != qmin or int(qmax) != qmax:
        raise QlabError(f"the integer range must have whole ends, got qmin={qmin!r}, qmax={qmax!r}")
    if qmin >= qmax:
        raise QlabError(f"the integer range is empty: qmin={qmin} must be below qmax={qmax}")


def _check_range(min_val: float, max_val: float) -> tuple[float, float]:
    lo = _finite("min", min_val)
    hi = _finite("max", max_val)
    if lo > hi:
        raise QlabError(f"min={min_val!r} is greater than max={max_val!r}")
    return lo, hi


def _check_scale(scale: float) -> float:
    s = _finite("scale", scale)
    if s <= 0.0:
        raise QlabError(f"scale={scale!r} must be positive")
    return s


def round_half_away(x: float) -> int:
    """Rounds like C's `std::round`, which TFLite's kernels use: 2.5 → 3, -2.5 → -3."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def int_range(dtype: str) -> tuple[int, int]:
    """(qmin, qmax) of an integer dtype name, e.g. "int8" → (-128, 127).

    Raises:
        QlabError: for a name that is not an integer dtype.
    """
    try:
        info = np.iinfo(np.dtype(dtype))
    except (TypeError, ValueError):
        raise QlabError(
            f"dtype={dtype!r} is not an integer type (try int8, uint8, int16)"
        ) from None
    return int(info.min), int(info.max)


def scale_zero_point(
    min_val: float, max_val: float, qmin: int = INT8_MIN, qmax: int = INT8_MAX
) -> tuple[float, int]:
    """Asymmetric quantization parameters for a float range, as TFLite computes them.

    The range is first widened to include 0.0, and the zero point is rounded ("nudged") to an
    integer so that 0.0 is exactly representable: zero padding and ReLU then cost no error.

    Args:
        min_val, max_val: the float range seen in calibration.
        qmin, qmax: the integer range, e.g. (-128, 127) for int8 or (0, 255) for uint8.

    Returns:
        (scale, zero_point) with `real = scale * (q - zero_point)`. An all-zero range gives
        scale 1.0 and the zero point of 0.0, since any scale represents it exactly.

    Raises:
        QlabError: naming the values for NaN/inf, min > max or an empty integer range.
    """
    lo, hi = _check_range(min_val, max_val)
    _check_qrange(qmin, qmax)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if lo == hi:
        return 1.0, int(min(max(0, qmin), qmax))
    scale = (hi - lo) / (qmax - qmin)
    zero_point_from_min = qmin - lo / scale
    # the widening above keeps this inside [qmin, qmax]; clamp against float round-off only
    zero_point = min(max(round_half_away(zero_point_from_min), int(qmin)), int(qmax))
    return scale, zero_point


def symmetric_scale(max_abs: float, qmax: int = INT8_MAX) -> float:
    """Scale of a symmetric (zero point 0) range [-max_abs, max_abs] → [-qmax, qmax].

    TFLite quantizes int8 weights this way, one scale per tensor or per output channel.

    Raises:
        QlabError: for a negative or non-finite `max_abs` or a non-positive `qmax`.
    """
    m = _finite("max_abs", max_abs)
    if m < 0:
        raise QlabError(f"max_abs={max_abs!r} must not be negative")
    if qmax <= 0:
        raise QlabError(f"qmax={qmax!r} must be positive")
    return m / qmax if m > 0 else 1.0


def per_channel_scales(weights: np.ndarray, axis: int = 0, qmax: int = INT8_MAX) -> np.ndarray:
    """Symmetric scales of a weight tensor, one per slice along `axis` (TFLite's per-channel layout).

    Raises:
        QlabError: for an axis outside the tensor or non-finite weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 0 or not -w.ndim <= axis < w.ndim:
        raise QlabError(f"axis={axis} is outside a tensor of shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise QlabError("the weights contain NaN or inf")
    reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    max_abs = np.max(np.abs(w), axis=reduce) if w.size else np.zeros(w.shape[axis])
    return np.where(max_abs > 0, max_abs / qmax, 1.0)


def quantize(
    x: np.ndarray | float,
    scale: float,
    zero_point: int,
    qmin: int = INT8_MIN,
    qmax: int = INT8_MAX,
) -> np.ndarray:
    """Float → integer: `clip(round(x / scale) + zero_point, qmin, qmax)`, rounding half away from zero.

    Returns:
        An array of the smallest integer dtype holding [qmin, qmax] (int8, uint8, int16, ...).

    Raises:
        QlabError: for a non-positive scale, an empty integer range or NaN inputs.
    """
    s = _check_scale(scale)
    _check_qrange(qmin, qmax)
    arr = np.asarray(x, dtype=np.float64)
    if np.isnan(arr).any():
        raise QlabError("cannot quantize NaN")
    q = np.clip(_round_half_away(arr / s) + int(zero_point), qmin, qmax)
    return q.astype(_holding_dtype(int(qmin), int(qmax)))


def _holding_dtype(qmin: int, qmax: int) -> np.dtype:
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32):
        info = np.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def dequantize(q: np.ndarray | int, scale: float, zero_point: int) -> np.ndarray:
    """Integer → float64: `scale * (q - zero_point)`.

    Raises:
        QlabError: for a non-positive scale.
    """
    s = _check_scale(scale)
    return s * (np.asarray(q, dtype=np.float64) - float(zero_point))


def representable_range(
    scale: float, zero_point: int, qmin: int = INT8_MIN, qmax: int = INT8_MAX
) -> tuple[float, float]:
    """The float range (min, max) that (scale, zero_point) covers without clipping."""
    s = _check_scale(scale)
    _check_qrange(qmin, qmax)
    return s * (qmin - zero_point), s * (qmax - zero_point)


def mean_std_from_range(
    min_val: float, max_val: float, qmin: int = UINT8_MIN, qmax: int = UINT8_MAX
) -> tuple[float, float]:
    """tflite_convert's (--mean_values, --std_dev_values) for an input trained on [min, max].

    The converter reads an integer input as `real = (q - mean) / std_dev`, so with the default
    uint8 range: (0, 255) → (0, 1); (0, 1) → (0, 255); (-1, 1) → (127.5, 127.5).

    Raises:
        QlabError: naming the values when min >= max or either is NaN/inf.
    """
    lo, hi = _check_range(min_val, max_val)
    _check_qrange(qmin, qmax)
    if lo == hi:
        raise QlabError(f"min={min_val!r} equals max={max_val!r}: an empty range has no std_dev")
    std = (qmax - qmin) / (hi - lo)
    mean = qmin - lo * std
    return mean + 0.0, std  # + 0.0 turns -0.0 into 0.0


def range_from_mean_std(
    mean: float, std_dev: float, qmin: int = UINT8_MIN, qmax: int = UINT8_MAX
) -> tuple[float, float]:
    """The float range (min, max) that tflite_convert's (mean, std_dev) map onto [qmin, qmax].

    Raises:
        QlabError: for a non-positive std_dev or NaN/inf.
    """
    m = _finite("mean", mean)
    s = _finite("std_dev", std_dev)
    if s <= 0:
        raise QlabError(f"std_dev={std_dev!r} must be positive")
    _check_qrange(qmin, qmax)
    return (qmin - m) / s + 0.0, (qmax - m) / s + 0.0


def scale_zero_point_from_mean_std(mean: float, std_dev: float) -> tuple[float, int]:
    """(scale, zero_point) from (mean, std_dev): scale = 1 / std_dev, zero_point = mean.

    A zero point is an integer in TFLite, so a mean of 127.5 is rounded (half away from zero) to 128.

    Raises:
        QlabError: for a non-positive std_dev or NaN/inf.
    """
    m = _finite("mean", mean)
    s = _finite("std_dev", std_dev)
    if s <= 0:
        raise QlabError(f"std_dev={std_dev!r} must be positive")
    return 1.0 / s, round_half_away(m)


def mean_std_from_scale_zero_point(scale: float, zero_point: int) -> tuple[float, float]:
    """(mean, std_dev) from (scale, zero_point): mean = zero_point, std_dev = 1 / scale.

    Raises:
        QlabError: for a non-positive scale.
    """
    s = _check_scale(scale)
    return float(zero_point), 1.0 / s


def mapping_table(
    min_val: float,
    max_val: float,
    qmin: int = INT8_MIN,
    qmax: int = INT8_MAX,
    n: int = 101,
) -> pd.DataFrame:
    """Evenly spaced reals over [min, max], their integers, the reals back and the error.

    The dashboard's /math page plots this as the staircase of the affine mapping.

    Returns:
        Columns `real`, `quantized`, `dequantized`, `error` (dequantized - real); the scale
        and zero point are in `df.attrs`.

    Raises:
        QlabError: as `scale_zero_point`, or for n < 2.
    """
    if int(n) != n or n < 2:
        raise QlabError(f"n={n!r} must be a whole number of at least 2")
    scale, zero_point = scale_zero_point(min_val, max_val, qmin, qmax)
    real = np.linspace(float(min_val), float(max_val), int(n))
    q = quantize(real, scale, zero_point, qmin, qmax)
    back = dequantize(q, scale, zero_point)
    df = pd.DataFrame(
        {"real": real, "quantized": q.astype(np.int64), "dequantized": back, "error": back - real}
    )
    df.attrs.update(scale=scale, zero_point=zero_point, qmin=int(qmin), qmax=int(qmax))
    return df
