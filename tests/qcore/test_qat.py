"""Quantization-aware training: whole model and chosen layers, history, conversion, the 003_* pitfall guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qcore.qat import (
    build_qat_model,
    moving_average_ranges,
    parse_layers,
    pitfall_warnings,
    range_drift,
    run_qat,
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
    result = run_qat(demo, digits, epochs=2, train_samples=TRAIN, store=module_store,
                     progress=lambda f, m: calls.append((f, m)))
    return result, calls


def test_run_qat_whole_model(whole: tuple[QatResult, list[tuple[float, str]]]) -> None:
    r, _ = whole
    assert r.layers == ("all",)
    assert set(r.quantized_layers) == {"reshape", "conv", "pool", "flatten", "logits"}
    assert r.input_dtype == "float32" and r.output_dtype == "float32"
    assert r.tflite_accuracy == r.evaluation.accuracy
    # fine-tuning a trained model with fake quantization keeps it close to float
    assert r.tflite_accuracy > r.float_accuracy - 0.05
    assert abs(r.keras_accuracy - r.tflite_accuracy) < 0.05
    assert r.evaluation.agreement is not None and r.evaluation.agreement > 0.9


def test_run_qat_model_is_integer_inside(whole: tuple[QatResult, list[tuple[float, str]]], module_store: Store) -> None:
    from qcore.litert_io import make_interpreter

    r, _ = whole
    data = Path(r.path).read_bytes()
    assert len(data) == r.size_bytes
    it = make_interpreter(data)
    details = {t["index"]: t for t in it.get_tensor_details()}
    conv = next(op for op in it._get_ops_details() if op["op_name"] == "CONV_2D")
    assert np.dtype(details[conv["outputs"][0]]["dtype"]) == np.int8


def test_run_qat_history_per_epoch_stored(whole: tuple[QatResult, list[tuple[float, str]]],
                                          module_store: Store) -> None:
    r, _ = whole
    assert len(r.history) == 2
    assert all({"loss", "accuracy", "range_drift"} <= set(h) for h in r.history)
    stored = module_store.training_history(r.variant_id)
    assert list(stored["epoch"]) == [1, 2]
    np.testing.assert_allclose(stored["loss"], [h["loss"] for h in r.history])
    np.testing.assert_allclose(stored["accuracy"], [h["accuracy"] for h in r.history])
    row = module_store.variant(r.variant_id)
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


def test_run_qat_dense_only_with_int_io(demo: LoadedModel, digits: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "qat-dense.tflite"
    r = run_qat(demo, digits, layers="Dense", epochs=1, train_samples=TRAIN, int_io=True, out=out)
    assert "logits" in r.quantized_layers and "conv" not in r.quantized_layers
    assert r.input_dtype == "int8" and r.output_dtype == "int8"
    assert r.path == str(out) and out.stat().st_size == r.size_bytes
    assert r.settings["int_io"] is True and r.settings["train_samples"] == TRAIN


def test_run_qat_layer_by_name(demo: LoadedModel) -> None:
    qat_model, names = build_qat_model(demo.keras_model, parse_layers("conv,logits"))
    wrapped = {la.name for la in qat_model.layers if type(la).__name__.startswith("QuantizeWrapper")}
    assert {"quant_conv", "quant_logits"} <= wrapped
    assert wrapped == {f"quant_{n}" for n in names}
    assert "conv" in names and "logits" in names


def test_run_qat_warns_when_ranges_still_move(demo: LoadedModel, digits: Dataset) -> None:
    # one short epoch: the activation ranges start at ±6 and have not converged (003_*)
    r = run_qat(demo, digits, epochs=1, train_samples=200)
    assert r.range_drift > 0.02
    assert any("train longer" in w and "ranges" in w for w in r.warnings)


def test_run_qat_keras3_model(digits: Dataset, tmp_path: Path) -> None:
    import keras

    from qcore.models import load_model

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
    from qcore.tensor_compare import compare_tensors

    r, _ = whole
    cmp = compare_tensors(tiny_tflite["float32"], Path(r.path), digits.test_inputs()[:4])
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
    with pytest.raises(QlabError, match="cannot quantize layer 'norm' \\(LayerNormalization\\).*--layers.*Dense"):
        run_qat(model, digits, epochs=1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"learning_rate": 0.0}, "--learning-rate must be a positive number"),
        ({"learning_rate": float("nan")}, "--learning-rate must be a positive number"),
        ({"train_samples": 0}, "--train-samples must be at least 1"),
        ({"layers": "all,Dense"}, "cannot be combined"),
        ({"layers": " , "}, "--layers is empty"),
    ],
)
def test_run_qat_bad_settings(demo: LoadedModel, digits: Dataset, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(QlabError, match=message):
        run_qat(demo, digits, **kwargs)  # type: ignore[arg-type]
