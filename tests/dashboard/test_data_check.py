"""The dataset-against-model checks: shape, value range after preprocessing, labels against outputs."""

from __future__ import annotations

import numpy as np

from dashboard.services import data_check
from qcore.qtyping import Dataset

MODEL = {"name": "cnn", "input_shape": "[null, 8, 8, 1]", "output_shape": "[null, 10]"}


def _ds(x: np.ndarray, y: np.ndarray, scale: float = 1.0, offset: float = 0.0) -> Dataset:
    return Dataset(name="d", x_train=x, y_train=y, x_test=x, y_test=y, input_scale=scale, input_offset=offset)


def test_profile_measures_after_preprocessing() -> None:
    x = np.full((4, 8, 8, 1), 255, dtype=np.uint8)
    prof = data_check.profile(_ds(x, np.array([0, 1, 2, 3]), scale=1 / 255))
    assert prof["sample_shape"] == [8, 8, 1] and prof["classes"] == 4
    assert abs(prof["max"] - 1.0) < 1e-6


def test_warnings_fitting_pair_has_none() -> None:
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    assert data_check.warnings(MODEL, data_check.profile(_ds(x, np.arange(20) % 10))) == []


def test_warnings_shape_mismatch_is_an_error() -> None:
    prof = data_check.profile(_ds(np.zeros((3, 28, 28)), np.array([0, 1, 2])))
    (severity, message), *_ = data_check.warnings(MODEL, prof, "mnist")
    assert severity == "error" and "mnist has samples of shape (28, 28)" in message and "(8, 8, 1)" in message


def test_warnings_more_labels_than_outputs_is_an_error() -> None:
    prof = data_check.profile(_ds(np.zeros((3, 8, 8, 1)) + 0.5, np.array([0, 5, 12])))
    assert ("error", "the dataset has labels 0..12 but model 'cnn' has only 10 outputs") in data_check.warnings(
        MODEL, prof)


def test_warnings_raw_pixels_suggest_the_scale() -> None:
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1)).astype(np.uint8)
    found = data_check.warnings(MODEL, data_check.profile(_ds(x, np.arange(10))))
    assert [s for s, _ in found] == ["warning"] and "1/255" in found[0][1] and "after x · 1 + 0" in found[0][1]


def test_warnings_constant_input_and_fewer_classes() -> None:
    prof = data_check.profile(_ds(np.zeros((4, 8, 8, 1)), np.array([0, 1, 0, 1])))
    found = data_check.warnings(MODEL, prof)
    texts = " ".join(m for _, m in found)
    assert "uses 2 of the 10 classes" in texts and "every input value is 0" in texts
    assert {s for s, _ in found} == {"warning"}


def test_for_ui_names_controls_not_cli_flags() -> None:
    from dashboard.services.words import for_ui

    text = "tfmot cannot quantize layer 'x'; annotate only supported layers with --layers, e.g. --layers Dense"
    assert for_ui(text) == ("tfmot cannot quantize layer 'x'; annotate only supported layers with the 'layer "
                            "classes or names' box, e.g. Dense in the 'layer classes or names' box")
    assert for_ui("--epochs must be at least 1, got 0") == "'epochs' must be at least 1, got 0"
    assert for_ui("use --unknown-flag and x--y") == "use --unknown-flag and x--y"
