"""Session fixtures shared by every test package: a trained demo model, digits, a MobileNet-like network that fails per-tensor int8, a fresh store, tiny .tflite files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="session")
def mobilenet_like(digits: Dataset) -> LoadedModel:
    """A MobileNet-like network on digits (8x8 upsampled to 16x16): Conv-BN-ReLU6, then depthwise-BN-ReLU /
    pointwise-BN-ReLU(6) blocks, trained briefly. Healthy: per-tensor int8 works on it."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    L = keras.layers

    def block(x: object, name: str, filters: int, stride: int, relu6: bool) -> object:
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = L.ReLU(name=f"{name}_dw_relu")(L.BatchNormalization(name=f"{name}_dw_bn")(x))
        x = L.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
        return L.ReLU(6.0 if relu6 else None, name=f"{name}_pw_relu")(L.BatchNormalization(name=f"{name}_pw_bn")(x))

    inp = keras.Input((8, 8), name="image")
    x = L.UpSampling2D(2, name="up")(L.Reshape((8, 8, 1), name="hwc")(inp))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(x)
    x = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    x = block(x, "b1", 32, 1, relu6=True)
    x = block(x, "b2", 64, 2, relu6=False)
    out = L.Dense(10, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
    net = keras.Model(inp, out, name="mobilenet_like")
    net.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(digits.x_train, digits.y_train, epochs=20, batch_size=32, verbose=0)
    return LoadedModel("mobilenet-like", "", "h5", net, (None, 8, 8), (None, 10), 2)


@pytest.fixture(scope="session")
def spread(mobilenet_like: LoadedModel) -> LoadedModel:
    """The same network with its depthwise channels spread the way BN folding spreads them in real MobileNets.

    Each depthwise BN's gamma and beta are multiplied by k_c in [10^-1.5, 10^1] (a 300x spread of the
    folded depthwise kernels and of their activations), and the pointwise kernel's input channel c is
    divided by k_c. ReLU(k x) = k ReLU(x) for k > 0, so the float function is the same network's.
    """
    import tf_keras as keras

    net = keras.models.clone_model(mobilenet_like.keras_model)
    net.set_weights(mobilenet_like.keras_model.get_weights())
    rng = np.random.default_rng(0)
    for block in ("b1", "b2"):
        bn = net.get_layer(f"{block}_dw_bn")
        gamma, beta, mean, var = bn.get_weights()
        k = (10.0 ** rng.uniform(-1.5, 1.0, size=gamma.shape)).astype(np.float32)
        k[0], k[1] = 10.0**-1.5, 10.0  # the full spread, whatever the draw
        bn.set_weights([gamma * k, beta * k, mean, var])
        pw = net.get_layer(f"{block}_pw")
        pw.set_weights([pw.get_weights()[0] / k.reshape(1, 1, -1, 1)])
    return LoadedModel("mobilenet-like-spread", "", "h5", net, (None, 8, 8), (None, 10), 2)


@pytest.fixture(scope="session")
def spread_h5(spread: LoadedModel, session_data_dir: Path) -> Path:
    """The spread network as an .h5 file, for the CLI and jobs (they load models from files)."""
    path = session_data_dir / "mobilenet-like-spread.h5"
    if not path.exists():
        spread.keras_model.save(path)
    return path


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


@pytest.fixture(scope="session")
def digits32(digits: Dataset) -> Dataset:
    """The 8×8 digits upsampled 4× to 32×32 and repeated over 3 channels: MobileNetV2's input."""
    import numpy as np

    def up(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.kron(x, np.ones((4, 4), np.float32))[..., None], 3, axis=-1)

    return Dataset("digits32", up(digits.x_train), digits.y_train, up(digits.x_test), digits.y_test,
                   source="digits", class_names=digits.class_names)


@pytest.fixture(scope="session")
def mnv2(session_data_dir: Path, digits32: Dataset) -> LoadedModel:
    """A MobileNetV2-sized model built offline (alpha 0.35, 32×32×3, 10 classes, 64 quantized layers), trained
    one short epoch on 512 digits32 samples once per session (BatchNorm momentum 0.9 so its statistics settle)."""
    from qcore.inputs.models import load_model

    path = session_data_dir / "mnv2.h5"
    if not path.exists():
        train_mnv2(digits32, path, epochs=1, samples=512, learning_rate=3e-3)
    return load_model(path, trusted=True)


def train_mnv2(data: Dataset, path: Path, *, epochs: int, samples: int | None = None,
               learning_rate: float = 1e-3) -> Path:
    """tf_keras MobileNetV2 (alpha 0.35, 32×32×3, 10 classes, no weights: offline), BatchNorm momentum 0.9 so its
    statistics settle in a short run, trained on the first `samples` of `data` and saved as .h5 at `path`."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10)
    for layer in net.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.9
    net.compile(tf_keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    net.fit(data.x_train[:samples], data.y_train[:samples], epochs=epochs, batch_size=32, verbose=0)
    net.save(path)
    return path
