"""Quantization-aware training: whole model and chosen layers, history, conversion, the moving-average range pitfall guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qcore.lab.publish import publish
from qcore.lab.qat import (
    build_qat_model,
    fused_chains,
    moving_average_ranges,
    parse_layers,
    pitfall_warnings,
    range_drift,
    run_qat,
    select_layers,
)
from qcore.qtyping import Dataset, LoadedModel, QatResult, QlabError
from qcore.store import Store

# a few hundred samples and two epochs keep a QAT run to seconds
TRAIN = 400


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One store for the module's QAT runs."""
    store = Store(tmp_path_factory.mktemp("qat") / "qlab.duckdb")
    yield store
    store.close()


@pytest.fixture(scope="module")
def whole(demo: LoadedModel, digits: Dataset, module_store: Store) -> tuple[QatResult, list[tuple[float, str]]]:
    """QAT of the whole demo model for two epochs, stored, with the progress calls it made."""
    calls: list[tuple[float, str]] = []
    result = run_qat(demo, digits, epochs=2, train_samples=TRAIN, progress=lambda f, m: calls.append((f, m)))
    return publish(module_store, result, made_from=(demo, digits)), calls


def test_run_qat_whole_model(whole: tuple[QatResult, list[tuple[float, str]]]) -> None:
    r, _ = whole
    assert r.layers == ("all",)
    assert set(r.quantized_layers) == {"reshape", "conv", "pool", "flatten", "logits"}
    assert r.variant.input_dtype == "float32" and r.variant.output_dtype == "float32"
    assert r.tflite_accuracy == r.variant.evaluation.accuracy
    # fine-tuning a trained model with fake quantization keeps it close to float
    assert r.tflite_accuracy > r.float_accuracy - 0.05
    assert abs(r.keras_accuracy - r.tflite_accuracy) < 0.05
    assert r.variant.evaluation.agreement is not None and r.variant.evaluation.agreement > 0.9


def test_run_qat_model_is_integer_inside(whole: tuple[QatResult, list[tuple[float, str]]], module_store: Store) -> None:
    from qcore.tflite.litert_io import make_interpreter

    r, _ = whole
    data = Path(r.variant.path).read_bytes()
    assert data == r.variant.tflite
    it = make_interpreter(data)
    details = {t["index"]: t for t in it.get_tensor_details()}
    conv = next(op for op in it._get_ops_details() if op["op_name"] == "CONV_2D")
    assert np.dtype(details[conv["outputs"][0]]["dtype"]) == np.int8


def test_run_qat_history_per_epoch_stored(whole: tuple[QatResult, list[tuple[float, str]]],
                                          module_store: Store) -> None:
    r, _ = whole
    assert len(r.history) == 2
    assert all({"loss", "accuracy", "val_loss", "val_accuracy", "range_drift"} <= set(h) for h in r.history)
    stored = module_store.training_history(r.variant.variant_id)
    assert list(stored["epoch"]) == [1, 2]
    np.testing.assert_allclose(stored["loss"], [h["loss"] for h in r.history])
    np.testing.assert_allclose(stored["accuracy"], [h["accuracy"] for h in r.history])
    row = module_store.variant(r.variant.variant_id)
    assert row["kind"] == "qat" and row["accuracy"] == pytest.approx(r.tflite_accuracy)


def test_run_qat_progress_every_epoch(whole: tuple[QatResult, list[tuple[float, str]]]) -> None:
    _, calls = whole
    epochs = [m for _, m in calls if m.startswith("QAT epoch")]
    assert [m.split(":")[0] for m in epochs] == ["QAT epoch 1/2", "QAT epoch 2/2"]
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_run_qat_leaves_model_untouched(demo: LoadedModel, digits: Dataset) -> None:
    before = [w.copy() for w in demo.keras_model.get_weights()]
    run_qat(demo, digits, epochs=1, train_samples=64, learning_rate=1e-2)
    for a, b in zip(before, demo.keras_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_run_qat_dense_only_with_int_io(demo: LoadedModel, digits: Dataset) -> None:
    r = run_qat(demo, digits, layers="Dense", epochs=1, train_samples=TRAIN, int_io=True)
    assert "logits" in r.quantized_layers and "conv" not in r.quantized_layers
    assert r.variant.input_dtype == "int8" and r.variant.output_dtype == "int8"
    assert r.variant.recipe == "int8" and r.variant.npu is not None
    assert r.settings["int_io"] is True and r.settings["train_samples"] == TRAIN


def test_run_qat_layer_by_name(demo: LoadedModel) -> None:
    qat_model, names = build_qat_model(demo.keras_model, parse_layers("conv,logits"))
    wrapped = {la.name for la in qat_model.layers if type(la).__name__.startswith("QuantizeWrapper")}
    assert {"quant_conv", "quant_logits"} <= wrapped
    assert wrapped == {f"quant_{n}" for n in names}
    assert "conv" in names and "logits" in names


def test_run_qat_warns_when_ranges_still_move(demo: LoadedModel, digits: Dataset) -> None:
    # one short epoch: the activation ranges start at ±6 and have not converged
    r = run_qat(demo, digits, epochs=1, train_samples=200)
    assert r.range_drift > 0.02
    assert any("train longer" in w and "ranges" in w for w in r.warnings)


def test_run_qat_keras3_model(digits: Dataset, tmp_path: Path) -> None:
    import keras

    from qcore.inputs.models import load_model

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(name="flat"),
                            keras.layers.Dense(24, activation="relu", name="hidden"),
                            keras.layers.Dense(10, name="logits")], name="k3_mlp")
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(digits.x_train, digits.y_train, epochs=5, verbose=0)
    net.save(tmp_path / "k3_mlp.keras")
    model = load_model(tmp_path / "k3_mlp.keras")
    assert model.keras_major == 3
    r = run_qat(model, digits, epochs=1, train_samples=TRAIN)
    assert set(r.quantized_layers) == {"flat", "hidden", "logits"}
    assert r.tflite_accuracy > 0.6


def test_pitfall_warnings_accuracy_gap() -> None:
    found = pitfall_warnings(0.98, 0.20, 0.0)
    assert len(found) == 1 and "98.00%" in found[0] and "20.00%" in found[0] and "train longer" in found[0]
    assert pitfall_warnings(0.98, 0.975, 0.0) == []
    assert len(pitfall_warnings(0.98, 0.20, 0.5)) == 2


def test_compare_tensors_matches_qat_names(whole: tuple[QatResult, list[tuple[float, str]]],
                                           tiny_tflite: dict[str, bytes], digits: Dataset) -> None:
    from qcore.tflite.compare import compare_tensors

    r, _ = whole
    cmp = compare_tensors(tiny_tflite["float32"], r.variant.tflite, digits.test_inputs()[:4])
    renamed = [d for d in cmp.matched if d.name != d.quant_name]
    assert renamed and all("quant_" in d.quant_name and "quant_" not in d.name for d in renamed)


def test_range_drift_relative_to_width() -> None:
    before = {"a": (np.array(-1.0), np.array(1.0))}
    after = {"a": (np.array(-1.0), np.array(1.5))}
    assert range_drift(before, after) == pytest.approx(0.5 / 2.5)
    assert range_drift(after, after) == 0.0
    assert range_drift({}, after) == 0.0


def test_moving_average_ranges_exclude_weight_ranges(demo: LoadedModel) -> None:
    qat_model, _ = build_qat_model(demo.keras_model, ("all",))
    keys = set(moving_average_ranges(qat_model))
    assert "quant_conv/post_activation" in keys and any(k.startswith("quantize_layer") for k in keys)
    assert not any("kernel" in k for k in keys)


# ---------------------------------------------------------------- refusals
def test_run_qat_unknown_layer(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="'LSTM' matches no layer.*Conv2D.*logits"):
        run_qat(demo, digits, layers="LSTM")


def test_run_qat_unsupported_layer(digits: Dataset) -> None:
    import tf_keras

    net = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(8, 8)), tf_keras.layers.Flatten(),
                               tf_keras.layers.LayerNormalization(name="norm"), tf_keras.layers.Dense(10)])
    model = LoadedModel("normed", "normed.h5", "h5", net, (None, 8, 8), (None, 10), 2)
    with pytest.raises(QlabError, match="cannot quantize layer 'norm' \\(LayerNormalization\\).*choose only supported layers.*Dense") as err:
        run_qat(model, digits, epochs=1)
    # the same text reaches the QAT page, so it names no command-line flag
    assert "--" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"learning_rate": 0.0}, "--learning-rate must be a positive number"),
        ({"learning_rate": float("nan")}, "--learning-rate must be a positive number"),
        ({"train_samples": 0}, "--train-samples must be at least 1"),
        ({"layers": "all,Dense"}, "cannot be combined"),
        ({"layers": " , "}, "layer choice is empty"),
    ],
)
def test_run_qat_bad_settings(demo: LoadedModel, digits: Dataset, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(QlabError, match=message):
        run_qat(demo, digits, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- Conv-BN-ReLU6 networks (MobileNetV2's blocks)
def _conv_bn_net(keras_module: object, digits: Dataset) -> object:
    """MobileNetV2's block in small: Conv-BN-ReLU6, depthwise-BN-ReLU6, a 1×1 projection with BN, a residual Add."""
    k = keras_module
    L = k.layers  # type: ignore[attr-defined]
    k.utils.set_random_seed(0)  # type: ignore[attr-defined]
    x_in = k.Input((8, 8), name="pixels")  # type: ignore[attr-defined]
    x = L.Reshape((8, 8, 1), name="image")(x_in)
    # MobileNetV2's BN momentum (0.999) needs thousands of steps; 0.9 settles in this short fit
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    stem = L.ReLU(6.0, name="stem_relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(stem)
    x = L.BatchNormalization(momentum=0.9, name="dw_bn")(x)
    x = L.ReLU(6.0, name="dw_relu")(x)
    x = L.Conv2D(8, 1, use_bias=False, name="project")(x)
    x = L.BatchNormalization(momentum=0.9, name="project_bn")(x)
    x = L.Add(name="add")([stem, x])
    x = L.GlobalAveragePooling2D(name="pool")(x)
    out = L.Dense(10, name="logits")(x)
    net = k.Model(x_in, out, name="conv_bn")  # type: ignore[attr-defined]
    net.compile(k.optimizers.Adam(1e-2),  # type: ignore[attr-defined]
                k.losses.SparseCategoricalCrossentropy(from_logits=True))  # type: ignore[attr-defined]
    net.fit(digits.x_train, digits.y_train, epochs=8, batch_size=32, verbose=0)
    return net


@pytest.fixture(scope="module")
def conv_bn(digits: Dataset, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The Conv-BN-ReLU6 + depthwise + residual net in tf_keras, trained a few seconds, loaded back from .h5."""
    import tf_keras

    from qcore.inputs.models import load_model

    path = tmp_path_factory.mktemp("conv_bn") / "conv_bn.h5"
    _conv_bn_net(tf_keras, digits).save(path)  # type: ignore[attr-defined]
    return load_model(path)


def _ops(tflite: bytes) -> list[str]:
    from qcore.tflite.litert_io import make_interpreter

    return [op["op_name"] for op in make_interpreter(tflite)._get_ops_details()]


def test_fused_chains_conv_bn_relu(conv_bn: LoadedModel) -> None:
    chains = {c.head: c.relu for c in fused_chains(conv_bn.keras_model)}
    assert chains == {("stem", "stem_bn"): "stem_relu", ("dw", "dw_bn"): "dw_relu", ("project", "project_bn"): None}


def test_fused_chains_skip_a_conv_with_two_consumers() -> None:
    import tf_keras

    L = tf_keras.layers
    x_in = tf_keras.Input((8, 8, 1))
    conv = L.Conv2D(4, 3, name="conv")(x_in)
    bn = L.BatchNormalization(name="bn")(conv)
    net = tf_keras.Model(x_in, L.Add(name="add")([conv, bn]))
    # tfmot does not fold a BN whose conv output is also used elsewhere, so neither does qlab
    assert fused_chains(net) == []
    with pytest.raises(QlabError, match="cannot quantize layer 'bn' \\(BatchNormalization\\).*only right after"):
        select_layers(net, ("all",))


def test_select_layers_every_conv2d_brings_its_bn_and_relu(conv_bn: LoadedModel) -> None:
    names = [la.name for la in select_layers(conv_bn.keras_model, ("Conv2D",))]
    assert names == ["stem", "stem_bn", "stem_relu", "project", "project_bn"]


def test_select_layers_bn_by_name_brings_its_conv(conv_bn: LoadedModel) -> None:
    names = [la.name for la in select_layers(conv_bn.keras_model, ("dw_bn",))]
    assert names == ["dw", "dw_bn", "dw_relu"]
    # a ReLU chosen alone is quantized alone
    assert [la.name for la in select_layers(conv_bn.keras_model, ("ReLU",))] == ["stem_relu", "dw_relu"]


def test_run_qat_conv_bn_whole_model(conv_bn: LoadedModel, digits: Dataset) -> None:
    r = run_qat(conv_bn, digits, epochs=2, train_samples=TRAIN)
    assert r.layers == ("all",)
    assert {"stem_bn", "dw_bn", "project_bn", "add", "stem_relu"} <= set(r.quantized_layers)
    assert r.tflite_accuracy > 0.5 and r.tflite_accuracy > r.float_accuracy - 0.1
    # the Keras-vs-TFLite check ran on it: the converted model follows the QAT model
    assert abs(r.keras_accuracy - r.tflite_accuracy) < 0.05
    # the moving-average range check ran on it: BN layers' outputs got activation ranges that were watched
    assert len(r.history) == 2 and r.range_drift > 0


def test_run_qat_conv_bn_whole_model_is_integer_with_bn_folded(conv_bn: LoadedModel, digits: Dataset,
                                                               tmp_path: Path) -> None:
    from qcore.tflite.litert_io import make_interpreter

    r = run_qat(conv_bn, digits, epochs=1, train_samples=TRAIN)
    it = make_interpreter(r.variant.tflite)
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    ops = {op["op_name"]: op for op in it._get_ops_details()}
    # every BatchNormalization folded into its convolution: no multiply, and the convolutions run in int8
    assert "MUL" not in ops
    for name in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"):
        assert dtypes[ops[name]["outputs"][0]] == np.int8, name


def test_run_qat_conv_bn_every_conv2d_folds_bn(conv_bn: LoadedModel, digits: Dataset, tmp_path: Path) -> None:
    r = run_qat(conv_bn, digits, layers="Conv2D", epochs=1, train_samples=TRAIN)
    assert {"stem", "stem_bn", "stem_relu", "project", "project_bn"} <= set(r.quantized_layers)
    assert "dw" not in r.quantized_layers
    assert abs(r.keras_accuracy - r.tflite_accuracy) < 0.05
    # both BatchNormalizations after a Conv2D are folded into it: two convolutions, no multiply left
    ops = _ops(r.variant.tflite)
    assert ops.count("CONV_2D") == 2 and "MUL" not in ops


def test_run_qat_conv_bn_keras3(digits: Dataset, tmp_path: Path) -> None:
    import keras

    from qcore.inputs.models import load_model

    _conv_bn_net(keras, digits).save(tmp_path / "conv_bn.keras")  # type: ignore[attr-defined]
    model = load_model(tmp_path / "conv_bn.keras")
    assert model.keras_major == 3
    r = run_qat(model, digits, layers="Conv2D,dw_bn", epochs=1, train_samples=TRAIN)
    assert {"stem_bn", "dw", "dw_bn", "dw_relu", "project_bn"} <= set(r.quantized_layers)
    assert abs(r.keras_accuracy - r.tflite_accuracy) < 0.05


def test_run_qat_bn_after_activation_refused(digits: Dataset) -> None:
    import tf_keras

    L = tf_keras.layers
    net = tf_keras.Sequential([L.InputLayer(input_shape=(8, 8)), L.Flatten(name="flat"),
                               L.Dense(16, activation="relu", name="hidden"),
                               L.BatchNormalization(name="after_relu"), L.Dense(10, name="logits")])
    model = LoadedModel("bn_after_relu", "bn.h5", "h5", net, (None, 8, 8), (None, 10), 2)
    with pytest.raises(QlabError, match="'after_relu' \\(BatchNormalization\\).*without activation") as err:
        run_qat(model, digits, epochs=1)
    assert "--" not in str(err.value)
    # the other layers can still be chosen
    assert [la.name for la in select_layers(net, ("Dense",))] == ["hidden", "logits"]


def test_tfmot_unsupported_message_is_translated() -> None:
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from qcore.lab.qat import _TFMOT_UNSUPPORTED

    net = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(4,)),
                               tf_keras.layers.LayerNormalization(name="norm")])
    # tfmot's own wording, which build_qat_model turns into a message naming the layer
    with pytest.raises(RuntimeError) as err:
        tfmot.quantization.keras.quantize_model(net)
    found = _TFMOT_UNSUPPORTED.search(str(err.value))
    assert found and found["name"] == "norm" and found["cls"] == "LayerNormalization"


def _digits32(digits: Dataset) -> Dataset:
    """The 8×8 digits upsampled 4× to 32×32 and repeated over 3 channels (MobileNetV2's input)."""
    def up(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.kron(x, np.ones((4, 4), np.float32))[..., None], 3, axis=-1)

    return Dataset("digits32", up(digits.x_train), digits.y_train, up(digits.x_test), digits.y_test,
                   source="digits", class_names=digits.class_names)


@pytest.mark.slow
def test_qat_mobilenet_v2_cli(digits: Dataset, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """MobileNetV2 (alpha 0.35, 32×32) trained a few epochs on digits, then `qlab qat --json` on its .h5."""
    import json

    import keras
    import tf_keras

    from qcore.cli import main
    from qcore.inputs.data import save_npz
    from qcore.lab.qat import ACCURACY_GAP, RANGE_SETTLED

    data = _digits32(digits)
    save_npz(data, tmp_path / "digits32.npz")
    tf_keras.utils.set_random_seed(0)
    net = tf_keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    for layer in net.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.9  # 0.999 would not settle in these few hundred steps
    net.compile(tf_keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    net.fit(data.x_train, data.y_train, epochs=3, batch_size=32, verbose=0)
    net.save(tmp_path / "mnv2.h5")

    code = main(["qat", str(tmp_path / "mnv2.h5"), "--data", str(tmp_path / "digits32.npz"), "--epochs", "2",
                 "--train-samples", "512", "--db", str(tmp_path / "q.duckdb"), "--out", str(tmp_path / "q.tflite"),
                 "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert {"bn_Conv1", "Conv1_relu", "block_1_depthwise_BN", "block_2_add", "predictions"} <= set(r["quantized_layers"])
    assert r["float_accuracy"] > 0.5 and r["tflite_accuracy"] > 0.5
    # both pitfall checks ran, and warned exactly when their figures say so
    assert len(r["history"]) == 2 and r["range_drift"] > 0
    gap = abs(r["keras_accuracy"] - r["tflite_accuracy"])
    assert (gap > ACCURACY_GAP) == any("differ by" in w for w in r["warnings"])
    assert (r["range_drift"] > RANGE_SETTLED) == any("still moved" in w for w in r["warnings"])
    assert gap < 0.1
    ops = _ops((tmp_path / "q.tflite").read_bytes())
    assert "MUL" not in ops and ops.count("DEPTHWISE_CONV_2D") == 17

    # the same network from Keras 3 goes through the rebuild, and "every Conv2D" annotates its BN and ReLU6
    from qcore.inputs import keras_bridge

    k3 = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)
    qat_model, names = build_qat_model(keras_bridge.to_tf_keras(k3, check_inputs=data.x_test[:4]), ("Conv2D",))
    assert {"Conv1", "bn_Conv1", "Conv1_relu", "block_16_project_BN", "out_relu"} <= set(names)
    assert "block_1_depthwise" not in names
