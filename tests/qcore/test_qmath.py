"""Quantization math: the seeds' worked examples, round trips and every bad value a user could type."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcore.qtyping import QlabError
from qcore.tflite import qmath


# ------------------------------------------------------------------ seeds' worked examples
def test_scale_zero_point_seed_000_example() -> None:
    # 000: [-2, 6] onto [-128, 127] has scale 8/255, and 3.0 becomes 32
    scale, zero_point = qmath.scale_zero_point(-2.0, 6.0, -128, 127)
    assert scale == pytest.approx(8 / 255)
    assert zero_point == -64
    assert int(qmath.quantize(3.0, scale, zero_point, -128, 127)) == 32


def test_mean_std_from_range_seed_001_unit_range() -> None:
    # 001: an input trained on (0, 1) needs mean 0, std_dev 255
    assert qmath.mean_std_from_range(0.0, 1.0) == pytest.approx((0.0, 255.0))


def test_mean_std_from_range_seed_001_symmetric_range() -> None:
    # 001: an input trained on (-1, 1) needs mean 127.5, std_dev 127.5
    assert qmath.mean_std_from_range(-1.0, 1.0) == pytest.approx((127.5, 127.5))


def test_mean_std_from_range_seed_001_pixel_range() -> None:
    # 001: raw pixels (0, 255) need mean 0, std_dev 1
    assert qmath.mean_std_from_range(0.0, 255.0) == pytest.approx((0.0, 1.0))


def test_scale_zero_point_seed_001_uint8_unit_range() -> None:
    # [-1, 1] onto [0, 255] has scale 2/255; tflite_convert's rule truncates the zero point 127.5 to
    # 127, TFLite's nudge rounds it to 128 — either keeps 0.0 exact, 128 is what the converter does
    scale, zero_point = qmath.scale_zero_point(-1.0, 1.0, 0, 255)
    assert scale == pytest.approx(2 / 255)
    assert zero_point == 128


def test_scale_zero_point_from_mean_std_seed_001_relations() -> None:
    # 001: std_dev = 1 / scale, mean = zero_point
    scale, zero_point = qmath.scale_zero_point_from_mean_std(128.0, 127.0)
    assert scale == pytest.approx(1 / 127)
    assert zero_point == 128


# ------------------------------------------------------------------ scale and zero point
def test_scale_zero_point_zero_is_exact() -> None:
    for lo, hi in [(-2.0, 6.0), (-0.3, 0.7), (-1.1, 0.05), (-5.0, 5.0)]:
        scale, zp = qmath.scale_zero_point(lo, hi)
        q0 = qmath.quantize(0.0, scale, zp)
        assert float(qmath.dequantize(q0, scale, zp)) == 0.0


def test_scale_zero_point_positive_range_widened_to_zero() -> None:
    scale, zp = qmath.scale_zero_point(2.0, 6.0, -128, 127)
    assert scale == pytest.approx(6 / 255)
    assert zp == -128


def test_scale_zero_point_negative_range_widened_to_zero() -> None:
    scale, zp = qmath.scale_zero_point(-4.0, -1.0, 0, 255)
    assert scale == pytest.approx(4 / 255)
    assert zp == 255


def test_scale_zero_point_equal_nonzero_bounds() -> None:
    scale, zp = qmath.scale_zero_point(3.0, 3.0, 0, 255)
    assert scale == pytest.approx(3 / 255)
    assert zp == 0


def test_scale_zero_point_all_zero_range() -> None:
    assert qmath.scale_zero_point(0.0, 0.0) == (1.0, 0)
    assert qmath.scale_zero_point(0.0, 0.0, 0, 255) == (1.0, 0)


def test_scale_zero_point_min_above_max() -> None:
    with pytest.raises(QlabError, match=r"min=5\.0 is greater than max=1\.0"):
        qmath.scale_zero_point(5.0, 1.0)


def test_scale_zero_point_nan() -> None:
    with pytest.raises(QlabError, match="min=nan"):
        qmath.scale_zero_point(float("nan"), 1.0)


def test_scale_zero_point_inf() -> None:
    with pytest.raises(QlabError, match="max=inf"):
        qmath.scale_zero_point(0.0, math.inf)


def test_scale_zero_point_not_a_number() -> None:
    with pytest.raises(QlabError, match="'abc' is not a number"):
        qmath.scale_zero_point("abc", 1.0)  # type: ignore[arg-type]


def test_scale_zero_point_empty_integer_range() -> None:
    with pytest.raises(QlabError, match="qmin=127 must be below qmax=-128"):
        qmath.scale_zero_point(-1.0, 1.0, 127, -128)


def test_symmetric_scale_int8_weights() -> None:
    assert qmath.symmetric_scale(0.5) == pytest.approx(0.5 / 127)
    assert qmath.symmetric_scale(0.0) == 1.0


def test_symmetric_scale_negative() -> None:
    with pytest.raises(QlabError, match="max_abs=-1"):
        qmath.symmetric_scale(-1.0)


def test_per_channel_scales_one_per_output_channel() -> None:
    w = np.zeros((3, 2, 2))
    w[0, 0, 0], w[1, 1, 1], w[2] = -1.27, 0.254, 0.0
    np.testing.assert_allclose(qmath.per_channel_scales(w, axis=0), [0.01, 0.002, 1.0])


def test_per_channel_scales_bad_axis() -> None:
    with pytest.raises(QlabError, match=r"axis=3 is outside a tensor of shape \(3, 2\)"):
        qmath.per_channel_scales(np.ones((3, 2)), axis=3)


def test_per_channel_scales_nan_weights() -> None:
    with pytest.raises(QlabError, match="NaN"):
        qmath.per_channel_scales(np.array([[np.nan, 1.0]]), axis=0)


# ------------------------------------------------------------------ quantize / dequantize
def test_quantize_rounds_half_away_from_zero() -> None:
    q = qmath.quantize([0.25, -0.25, 0.75, -0.75], 0.5, 0)
    assert q.tolist() == [1, -1, 2, -2]


def test_quantize_clips_to_range() -> None:
    q = qmath.quantize([-1000.0, 1000.0], 0.1, 0, -128, 127)
    assert q.tolist() == [-128, 127]


def test_quantize_dtype_follows_range() -> None:
    assert qmath.quantize([1.0], 0.1, 0).dtype == np.int8
    assert qmath.quantize([1.0], 0.1, 0, 0, 255).dtype == np.uint8
    assert qmath.quantize([1.0], 0.1, 0, -32768, 32767).dtype == np.int16


def test_quantize_nan() -> None:
    with pytest.raises(QlabError, match="NaN"):
        qmath.quantize([1.0, float("nan")], 0.1, 0)


def test_quantize_zero_scale() -> None:
    with pytest.raises(QlabError, match="scale=0.0 must be positive"):
        qmath.quantize([1.0], 0.0, 0)


def test_quantize_negative_scale() -> None:
    with pytest.raises(QlabError, match="scale=-0.5 must be positive"):
        qmath.quantize([1.0], -0.5, 0)


def test_dequantize_round_trip_error_below_half_step() -> None:
    scale, zp = qmath.scale_zero_point(-2.0, 6.0)
    x = np.linspace(-2.0, 6.0, 1001)
    back = qmath.dequantize(qmath.quantize(x, scale, zp), scale, zp)
    # the nudge shifts the top of the range down by a quarter step, still inside half a step
    assert np.max(np.abs(back - x)) <= scale / 2 + 1e-12


def test_dequantize_zero_scale() -> None:
    with pytest.raises(QlabError, match="scale=0"):
        qmath.dequantize([1], 0, 0)


def test_representable_range_of_seed_example() -> None:
    scale, zp = qmath.scale_zero_point(-2.0, 6.0)
    lo, hi = qmath.representable_range(scale, zp)
    assert lo == pytest.approx(-64 * 8 / 255)
    assert hi == pytest.approx(191 * 8 / 255)


def test_int_range_names() -> None:
    assert qmath.int_range("int8") == (-128, 127)
    assert qmath.int_range("uint8") == (0, 255)
    assert qmath.int_range("int16") == (-32768, 32767)


def test_int_range_float_dtype() -> None:
    with pytest.raises(QlabError, match="dtype='float32' is not an integer type"):
        qmath.int_range("float32")


# ------------------------------------------------------------------ (mean, std_dev) ↔ (min, max)
def test_range_from_mean_std_inverts_mean_std_from_range() -> None:
    for lo, hi in [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (-3.5, 12.25)]:
        mean, std = qmath.mean_std_from_range(lo, hi)
        assert qmath.range_from_mean_std(mean, std) == pytest.approx((lo, hi))


def test_range_from_mean_std_mobilenet_flags() -> None:
    # tflite_convert --mean_values=128 --std_dev_values=127, as in the classic tflite_convert command line
    lo, hi = qmath.range_from_mean_std(128.0, 127.0)
    assert lo == pytest.approx(-128 / 127)
    assert hi == pytest.approx(1.0)


def test_mean_std_from_range_int8_range() -> None:
    mean, std = qmath.mean_std_from_range(0.0, 1.0, -128, 127)
    assert (mean, std) == pytest.approx((-128.0, 255.0))


def test_mean_std_from_range_equal_bounds() -> None:
    with pytest.raises(QlabError, match=r"min=2\.0 equals max=2\.0"):
        qmath.mean_std_from_range(2.0, 2.0)


def test_mean_std_from_range_min_above_max() -> None:
    with pytest.raises(QlabError, match=r"min=1\.0 is greater than max=0\.0"):
        qmath.mean_std_from_range(1.0, 0.0)


def test_mean_std_from_range_nan() -> None:
    with pytest.raises(QlabError, match="max=nan"):
        qmath.mean_std_from_range(0.0, float("nan"))


def test_range_from_mean_std_zero_std() -> None:
    with pytest.raises(QlabError, match="std_dev=0.0 must be positive"):
        qmath.range_from_mean_std(0.0, 0.0)


def test_scale_zero_point_from_mean_std_negative_std() -> None:
    with pytest.raises(QlabError, match="std_dev=-1.0 must be positive"):
        qmath.scale_zero_point_from_mean_std(0.0, -1.0)


def test_mean_std_from_scale_zero_point_inverts() -> None:
    mean, std = qmath.mean_std_from_scale_zero_point(1 / 255, 0)
    assert (mean, std) == pytest.approx((0.0, 255.0))
    assert qmath.scale_zero_point_from_mean_std(mean, std) == (pytest.approx(1 / 255), 0)


def test_mean_std_agree_with_scale_zero_point() -> None:
    # (mean, std_dev) and (zero_point, scale) describe the same map: q = real * std + mean
    mean, std = qmath.mean_std_from_range(-1.0, 3.0)
    scale, zp = qmath.scale_zero_point(-1.0, 3.0, 0, 255)
    assert 1 / std == pytest.approx(scale)
    assert qmath.round_half_away(mean) == zp


# ------------------------------------------------------------------ mapping table
def test_mapping_table_columns_and_attrs() -> None:
    df = qmath.mapping_table(-2.0, 6.0, -128, 127, n=9)
    assert list(df.columns) == ["real", "quantized", "dequantized", "error"]
    assert len(df) == 9
    assert df.attrs["zero_point"] == -64
    assert df.attrs["scale"] == pytest.approx(8 / 255)
    assert df["real"].iloc[0] == -2.0 and df["real"].iloc[-1] == 6.0
    assert df["quantized"].iloc[0] == -128 and df["quantized"].iloc[-1] == 127
    assert df.loc[df["real"] == 3.0, "quantized"].item() == 32
    np.testing.assert_allclose(df["error"], df["dequantized"] - df["real"])


def test_mapping_table_monotone() -> None:
    df = qmath.mapping_table(-0.7, 0.3, 0, 255, n=200)
    assert (np.diff(df["quantized"]) >= 0).all()


def test_mapping_table_too_few_points() -> None:
    with pytest.raises(QlabError, match="n=1 must be a whole number of at least 2"):
        qmath.mapping_table(0.0, 1.0, n=1)


def test_mapping_table_min_above_max() -> None:
    with pytest.raises(QlabError, match="is greater than"):
        qmath.mapping_table(1.0, -1.0)


def test_round_half_away() -> None:
    assert [qmath.round_half_away(v) for v in (2.5, -2.5, 0.49, -0.5, 127.5)] == [3, -3, 0, -1, 128]
