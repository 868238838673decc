"""Pure numpy metrics with their edge cases."""

import math

import numpy as np
import pytest

from qcore.tflite import metrics


def test_accuracy_counts_argmax_hits():
    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert metrics.accuracy(out, np.array([1, 0, 0])) == pytest.approx(2 / 3)


def test_accuracy_empty_is_nan():
    assert math.isnan(metrics.accuracy(np.zeros((0, 3)), np.zeros(0)))


def test_accuracy_nan_row_never_counts_as_correct():
    out = np.array([[np.nan, 1.0], [0.0, 1.0]])
    assert metrics.accuracy(out, np.array([1, 1])) == 0.5


def test_accuracy_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 outputs but 3 labels"):
        metrics.accuracy(np.zeros((2, 2)), np.zeros(3))


def test_top_k_with_fewer_classes_than_k_is_one():
    out = np.array([[0.1, 0.9, 0.0]])
    assert metrics.top_k(out, np.array([2]), k=5) == 1.0


def test_top_k_two():
    out = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    assert metrics.top_k(out, np.array([1, 2]), k=2) == 0.5


def test_agreement_between_models():
    a = np.array([[1, 0], [0, 1], [1, 0]])
    b = np.array([[1, 0], [1, 0], [1, 0]])
    assert metrics.agreement(a, b) == pytest.approx(2 / 3)


def test_confusion_rows_are_truth_and_drops_invalid_predictions():
    cm = metrics.confusion(np.array([0, 1, 1, -1]), np.array([0, 0, 1, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


# ---------------------------------------------------------------- outputs scored against a reference
def test_output_metrics_empty_set_is_nan():
    empty = np.zeros((0, 4))
    assert math.isnan(metrics.mse(empty, empty))
    assert math.isnan(metrics.max_abs_error(empty, empty))
    assert math.isnan(metrics.cosine(empty, empty))


def test_output_mse_and_max_error_over_every_value():
    a = np.array([[1.0, 2.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.mse(a, b) == pytest.approx((4 + 1) / 4)
    assert metrics.max_abs_error(a, b) == 2.0


def test_cosine_zero_samples_and_nan_rows():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [np.nan, 1.0], [1.0, 1.0]])
    b = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [-1.0, -1.0]])
    # identical 1, both zero 1, one zero 0, the NaN row left out, opposite -1
    assert metrics.cosine(a, b) == pytest.approx((1 + 1 + 0 - 1) / 4)


def test_output_metrics_refuse_different_shapes():
    with pytest.raises(ValueError, match="cannot be compared"):
        metrics.mse(np.zeros((2, 3)), np.zeros((2, 4)))
