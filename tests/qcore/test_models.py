"""Loading Keras models in every format, and the demo."""

import numpy as np
import pytest

from qcore.inputs.models import file_sha256, load_model, predict
from qcore.qtyping import QlabError


def test_demo_model_is_the_seed_cnn_and_learns(demo, digits):
    layers = [type(layer).__name__ for layer in demo.keras_model.layers]
    assert layers == ["Reshape", "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert demo.keras_model.layers[1].filters == 12
    acc = np.mean(np.argmax(predict(demo, digits.test_inputs()), 1) == digits.y_test)
    assert acc > 0.85


def test_load_model_h5(demo_h5):
    m = load_model(demo_h5)
    assert m.format == "h5" and m.keras_major == 2 and m.input_shape == (None, 8, 8)


def test_load_model_savedmodel_directory(tmp_path, demo, digits):
    path = tmp_path / "sm"
    demo.keras_model.save(str(path), save_format="tf")
    m = load_model(path)
    assert m.format == "savedmodel" and m.output_shape == (None, 10)
    x = digits.test_inputs()[:5]
    np.testing.assert_allclose(predict(m, x), predict(demo, x), atol=1e-5)
    assert file_sha256(path) == file_sha256(path)


def test_load_model_keras3_file(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(10)])
    path = tmp_path / "k3.keras"
    model.save(path)
    m = load_model(path)
    assert m.format == "keras" and m.keras_major == 3 and m.input_shape == (None, 8, 8)


def test_load_model_missing_path():
    with pytest.raises(QlabError, match="missing.h5: no such file"):
        load_model("missing.h5")


def test_load_model_corrupt_file_names_path_and_reason(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n garbage")
    with pytest.raises(QlabError, match="broken.h5: cannot read this model"):
        load_model(path)


def test_load_model_directory_that_is_not_a_savedmodel(tmp_path):
    with pytest.raises(QlabError, match="not a SavedModel"):
        load_model(tmp_path)


def test_load_model_unknown_suffix(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    with pytest.raises(QlabError, match="unsupported model file '.onnx'"):
        load_model(path)
