"""Model summaries read from the file's config and weight shapes, never by loading the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcore.inputs.summary import summarize
from qcore.qtyping import LoadedModel, QlabError


def test_summarize_demo_h5_counts_layers_and_params(demo: LoadedModel, demo_h5: Path) -> None:
    s = summarize(demo_h5)
    keras_layers = [la for la in demo.keras_model.layers if type(la).__name__ != "InputLayer"]
    assert s.layers == len(keras_layers)
    assert s.params == demo.keras_model.count_params()
    assert dict(s.classes).get("Conv2D", 0) >= 1 and s.custom == ()


def test_summarize_mobilenet_v2_batchnorm(tmp_path: Path) -> None:
    import tf_keras

    path = tmp_path / "mnv2.h5"
    tf_keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10).save(path)
    s = summarize(path)
    assert s.batchnorm == 52 and dict(s.classes)["DepthwiseConv2D"] == 17 and s.params > 400_000


def test_summarize_not_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(QlabError, match="x.h5: cannot read its Keras config"):
        summarize(bad)
