"""Session fixtures shared by every test package: a trained demo model, digits, a fresh store, tiny .tflite files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import qcore  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from qcore.qtyping import Dataset, LoadedModel
from qcore.store import Store


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir for the whole session, so the demo model is trained once."""
    return tmp_path_factory.mktemp("qlab-data")


@pytest.fixture(scope="session")
def demo(session_data_dir: Path) -> LoadedModel:
    """The built-in demo CNN, trained on digits once per session (a few seconds)."""
    from qcore.inputs.models import demo_model

    return demo_model(session_data_dir / "demo")


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's bundled digits in [0, 1]."""
    from qcore.inputs.data import digits_dataset

    return digits_dataset()


@pytest.fixture(scope="session")
def digits_npz(session_data_dir: Path, digits: Dataset) -> Path:
    """The digits written as a Keras-convention .npz."""
    from qcore.inputs.data import save_npz

    path = session_data_dir / "digits.npz"
    if not path.exists():
        save_npz(digits, path)
    return path


@pytest.fixture(scope="session")
def demo_h5(demo: LoadedModel) -> Path:
    """The demo model's .h5 file on disk."""
    return Path(demo.path)


@pytest.fixture(scope="session")
def tiny_tflite(demo: LoadedModel, digits: Dataset) -> dict[str, bytes]:
    """The demo converted with float32, int8 and uint8 (recipe name → .tflite bytes)."""
    from qcore.engines.tf import convert

    calibration = digits.calibration(20)
    return {name: convert(demo, name, calibration) for name in ("float32", "int8", "uint8")}


@pytest.fixture()
def tmp_store(tmp_path: Path) -> Iterator[Store]:
    """A fresh Store on a temporary DuckDB file, closed after the test."""
    store = Store(tmp_path / "qlab.duckdb")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture()
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """QLAB_DB and QLAB_DATA_DIR pointed at a temp dir for code that reads the defaults."""
    monkeypatch.setenv("QLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QLAB_DB", str(tmp_path / "data" / "qlab.duckdb"))
    os.makedirs(tmp_path / "data", exist_ok=True)
    return tmp_path


@pytest.fixture(scope="session")
def foreign_tflite(digits: Dataset) -> dict[str, bytes]:
    """.tflite files as other tools make them, converted here by TF on tiny graphs (name → bytes).

    - "two_float" / "two_int8": a landmark-style net on 8×8 digits with two outputs, box [N, 4]
      and heatmap [N, 2, 2] (random weights; int8 calibrated on digits), so not class scores.
    - "custom": a graph with BesselI1e, which has no TFLite builtin; `allow_custom_ops` turns it
      into a custom op that LiteRT has no kernel for.
    - "flex": a determinant converted with SELECT_TF_OPS: a Flex op (FlexMatrixDeterminant) that
      needs TensorFlow's Flex delegate.
    """
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((8, 8), name="image")
    h = tf_keras.layers.Dense(16, activation="relu")(tf_keras.layers.Flatten()(inp))
    box = tf_keras.layers.Dense(4, name="box")(h)
    heat = tf_keras.layers.Reshape((2, 2), name="heat")(tf_keras.layers.Dense(4, activation="sigmoid")(h))
    net = tf_keras.Model(inp, [box, heat])
    calibration = digits.calibration(50)

    def convert(int8: bool) -> bytes:
        c = tf.lite.TFLiteConverter.from_keras_model(net)
        if int8:
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
        return bytes(c.convert())

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8], tf.float32)])
    def bessel(x: tf.Tensor) -> tf.Tensor:
        return tf.math.bessel_i1e(x) + 1.0

    c = tf.lite.TFLiteConverter.from_concrete_functions([bessel.get_concrete_function()], bessel)
    c.allow_custom_ops = True
    custom = bytes(c.convert())

    @tf.function(input_signature=[tf.TensorSpec([1, 3, 3], tf.float32)])
    def det(x: tf.Tensor) -> tf.Tensor:
        return tf.linalg.det(x)

    c = tf.lite.TFLiteConverter.from_concrete_functions([det.get_concrete_function()], det)
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    return {"two_float": convert(False), "two_int8": convert(True), "custom": custom, "flex": bytes(c.convert())}
