"""Rebuilding Keras 3 models in tf_keras: configs, weights, the output check, and the refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcore.inputs.keras_bridge import check_scope_names, is_keras3, to_tf_keras
from qcore.qtyping import Dataset, LoadedModel, QlabError


def _keras3_functional() -> Any:
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8), name="image")
    x = keras.layers.Reshape((8, 8, 1), name="reshape")(inp)
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(x)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(10, name="logits", kernel_regularizer=keras.regularizers.L2(1e-4))(x)
    model = keras.Model(inp, out, name="k3_functional")
    # non-trivial batch-norm statistics, so a wrong weight order would show in the outputs
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 1.5, 4).astype("float32") for _ in range(4)])
    return model


@pytest.fixture(scope="module")
def keras3_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Keras 3 Functional model (branches, Add, BatchNorm) saved as .keras."""
    path = tmp_path_factory.mktemp("k3") / "k3_functional.keras"
    _keras3_functional().save(path)
    return path


def test_to_tf_keras_functional_outputs_match(keras3_file: Path, digits: Dataset) -> None:
    from qcore.inputs.models import load_model

    loaded = load_model(keras3_file)
    assert loaded.keras_major == 3
    x = digits.test_inputs()[:32]
    rebuilt = to_tf_keras(loaded, check_inputs=x)
    assert not is_keras3(rebuilt)
    assert type(rebuilt).__module__.startswith("tf_keras")
    assert [la.name for la in rebuilt.layers] == ["image", "reshape", "conv_a", "conv_b", "add", "bn", "flatten",
                                                  "logits"]
    want = loaded.keras_model.predict(x, verbose=0)
    got = rebuilt.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_to_tf_keras_sequential_copies_weights() -> None:
    import keras

    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(16, activation="relu", name="hidden"),
         keras.layers.Dropout(0.2, name="drop"), keras.layers.Dense(10, name="out")],
        name="k3_seq",
    )
    rebuilt = to_tf_keras(model)
    assert type(rebuilt).__name__ == "Sequential"
    for name in ("hidden", "out"):
        for mine, theirs in zip(rebuilt.get_layer(name).get_weights(), model.get_layer(name).get_weights(),
                                strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_to_tf_keras_passes_tf_keras_through(demo: LoadedModel) -> None:
    assert to_tf_keras(demo) is demo.keras_model


def test_to_tf_keras_custom_layer_names_it() -> None:
    import keras

    class Doubler(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x * 2

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(Doubler(name="doubler")(inp)))
    with pytest.raises(QlabError, match="'doubler'"):
        to_tf_keras(model)


def test_to_tf_keras_nested_model_names_it() -> None:
    import keras

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="inner_block")
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(inner(inp)))
    with pytest.raises(QlabError, match="'inner_block'.*nested"):
        to_tf_keras(model)


def test_to_tf_keras_keras3_only_setting_names_it() -> None:
    import keras

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2, name="adapted", lora_rank=2)(inp))
    with pytest.raises(QlabError, match="'adapted'.*lora_"):
        to_tf_keras(model)


def test_to_tf_keras_subclassed_model_refused() -> None:
    import keras

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x: Any) -> Any:
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), dtype="float32"))
    with pytest.raises(QlabError, match="subclassed"):
        to_tf_keras(net)


def test_check_scope_names_bad_name() -> None:
    import keras

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2, name="my dense")(inp))
    with pytest.raises(QlabError, match="'my dense'.*scope name"):
        check_scope_names(model)
