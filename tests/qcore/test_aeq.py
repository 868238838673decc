"""AI Edge Quantizer as the second engine: recipes against the TF converter, layouts, I/O, per-layer error, search."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from qcore.engines import aeq, resolve_recipes
from qcore.explain.debugger import run_debugger
from qcore.lab.convert import convert_and_evaluate
from qcore.lab.publish import publish
from qcore.qtyping import ConvertReport, Dataset, LoadedModel, QlabError, Recipe
from qcore.recipes import get_recipe
from qcore.store import Store
from qcore.tflite.inspection import inspect, output_names
from qcore.tflite.litert_io import make_interpreter, run_model

# the bar: each AEQ recipe within one accuracy point of the TF converter's
MAX_GAP = 0.01


@pytest.fixture(scope="module")
def digits4(digits: Dataset) -> Dataset:
    """Digits with a channel axis, for a model whose first op is a convolution."""
    return dataclasses.replace(digits, name="digits-hwc", x_train=digits.x_train[..., None],
                               x_test=digits.x_test[..., None])


@pytest.fixture(scope="module")
def residual(digits4: Dataset, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A small Conv-BN-ReLU6 residual network (MobileNet's block shape), trained briefly, saved as .h5."""
    import tf_keras as keras

    from qcore.inputs.models import load_model

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((8, 8, 1), name="image")
    x = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(L.Conv2D(16, 3, padding="same",
                                                                                       use_bias=False,
                                                                                       name="stem")(inp)))
    y = L.ReLU(6.0, name="b1_relu")(L.BatchNormalization(name="b1_bn")(L.Conv2D(16, 3, padding="same",
                                                                                 use_bias=False, name="b1")(x)))
    y = L.BatchNormalization(name="b2_bn")(L.Conv2D(16, 3, padding="same", use_bias=False, name="b2")(y))
    x = L.ReLU(6.0, name="res_relu")(L.Add(name="res_add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    net = keras.Model(inp, L.Dense(10, name="logits")(x), name="resblock")
    net.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    net.fit(digits4.x_train, digits4.y_train, epochs=25, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("resblock") / "resblock.h5"
    net.save(path)
    return load_model(path)


@pytest.fixture(scope="module")
def reports(demo: LoadedModel, digits: Dataset, residual: LoadedModel, digits4: Dataset,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ConvertReport, ConvertReport, Store]]:
    """Every recipe with both engines on both models, stored in one DuckDB file."""
    store = Store(tmp_path_factory.mktemp("aeq-store") / "qlab.duckdb")
    out: dict[str, tuple[ConvertReport, ConvertReport, Store]] = {}
    for model, ds in ((demo, digits), (residual, digits4)):
        tf = publish(store, convert_and_evaluate(model, ds, resolve_recipes("all", "tf"), calibration_samples=100),
                     made_from=(model, ds))
        ae = publish(store, convert_and_evaluate(model, ds, resolve_recipes("all", "aeq"), calibration_samples=100,
                                                 engine="aeq"), made_from=(model, ds))
        out[model.name] = (tf, ae, store)
    return out


def _by_recipe(report: ConvertReport) -> dict[str, object]:
    return {v.recipe: v for v in report.variants}


@pytest.mark.slow
@pytest.mark.parametrize("which", ["demo", "resblock"])
def test_convert_aeq_every_recipe_within_a_point_of_tf(reports, which: str) -> None:
    name = next(k for k in reports if k.startswith(which[:4]))
    tf, ae, _ = reports[name]
    tf_by, ae_by = _by_recipe(tf), _by_recipe(ae)
    assert set(ae_by) == {r.name for r in resolve_recipes("all", "aeq")}
    for recipe, v in ae_by.items():
        assert v.status == "ok", f"{recipe}: {v.error}"
        assert v.engine == "aeq"
        if recipe in tf_by:
            gap = abs(v.evaluation.accuracy - tf_by[recipe].evaluation.accuracy)
            assert gap <= MAX_GAP, f"{name} {recipe}: aeq {v.evaluation.accuracy:.4f} vs tf " \
                                   f"{tf_by[recipe].evaluation.accuracy:.4f}"
    # the float reference is in reach: the models are trained, not random
    assert ae.float_accuracy > 0.8


@pytest.mark.slow
def test_convert_aeq_layouts_are_what_the_recipe_says(reports) -> None:
    _, ae, _ = reports["resblock"]
    files = {v.recipe: Path(v.path).read_bytes() for v in ae.variants}

    def weights(recipe: str):
        return [t for t in inspect(files[recipe]).tensors if t.is_constant and len(t.shape) >= 2]

    for recipe in ("int8", "uint8", "int8-fallback"):
        assert all(t.dtype == "int8" and t.per_channel for t in weights(recipe)), recipe
        assert inspect(files[recipe]).integer_only
    for recipe in ("int8-per-tensor", "uint8-per-tensor"):
        assert all(t.dtype == "int8" and len(t.scales) == 1 for t in weights(recipe)), recipe
        assert inspect(files[recipe]).integer_only
    acts = [t for t in inspect(files["int16x8"]).tensors if not t.is_constant and t.scales]
    assert acts and {t.dtype for t in acts} == {"int16"}
    assert {t.dtype for t in weights("float16")} == {"float16"}
    for recipe in ("dynamic", "weight-only"):
        found = inspect(files[recipe])
        assert {t.dtype for t in weights(recipe)} == {"int8"}, recipe
        assert not found.integer_only  # activations stay float
    assert {t.dtype for t in weights("float32")} == {"float32"}


@pytest.mark.slow
@pytest.mark.parametrize("which", ["demo", "resblock"])
def test_convert_aeq_integer_io_takes_quantized_inputs(reports, which: str) -> None:
    name = next(k for k in reports if k.startswith(which[:4]))
    _, ae, _ = reports[name]
    by = _by_recipe(ae)
    for recipe, dtype in (("int8", np.int8), ("uint8", np.uint8), ("int8-per-tensor", np.int8),
                          ("uint8-per-tensor", np.uint8)):
        v = by[recipe]
        assert (v.input_dtype, v.output_dtype) == (dtype.__name__, dtype.__name__)
        it = make_interpreter(Path(v.path).read_bytes())
        inp = it.get_input_details()[0]
        scale, zp = inp["quantization"]
        assert inp["dtype"] == dtype and scale > 0
        if dtype is np.uint8:
            assert zp >= 0  # uint8 zero points live in [0, 255]
    assert by["int8-fallback"].input_dtype == "float32"


@pytest.mark.slow
def test_convert_aeq_records_engine_in_store(reports) -> None:
    _, ae, store = reports["resblock"]
    summary = store.variant_summary()
    mine = summary[summary["variant_id"].isin([v.variant_id for v in ae.variants])]
    assert set(mine["engine"]) == {"aeq"} and set(mine["variant"].str.endswith("@aeq")) == {True}
    # every variant made by the TF converter says so, and no name of one engine hides the other's
    assert (summary["engine"] == "aeq").tolist() == summary["variant"].str.endswith("@aeq").tolist()
    assert set(summary["engine"]) == {"tf", "aeq"}


def test_aeq_refuses_a_recipe_it_cannot_express_by_name(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="recipe int4-made-up: AI Edge Quantizer cannot express it"):
        aeq.check_recipe(Recipe("int4-made-up", "Not in AEQ."))
    report = convert_and_evaluate(demo, digits, [get_recipe("weight-only")], calibration_samples=10)
    assert report.variants[0].status == "failed"
    assert "weight-only: the TF converter cannot express it" in report.variants[0].error


def test_convert_unknown_engine_is_refused(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="unknown engine 'onnx'; known engines: tf, aeq"):
        convert_and_evaluate(demo, digits, [get_recipe("int8")], engine="onnx")


def _top(stats, n: int = 5) -> list[str]:
    ranked = sorted((s for s in stats if np.isfinite(s.rmse_scale)), key=lambda s: -s.rmse_scale)
    return [s.tensor_name for s in ranked[:n]]


@pytest.mark.slow
def test_debug_aeq_and_tf_agree_on_worst_layers(residual: LoadedModel, digits4: Dataset, tmp_path: Path) -> None:
    store = Store(tmp_path / "qlab.duckdb")
    try:
        tf = publish(store, run_debugger(residual, digits4, calibration_samples=100, debug_samples=50),
                     made_from=(residual, digits4))
        ae = publish(store, run_debugger(residual, digits4, calibration_samples=100, debug_samples=50, engine="aeq"),
                     made_from=(residual, digits4))
        aeq.export_model_explorer(ae.comparison, tmp_path / "me", residual.name)
        overlap = len(set(_top(tf.stats)) & set(_top(ae.stats)))
        print(f"top-5 overlap aeq vs tf debugger: {overlap}/5; tf {_top(tf.stats)}; aeq {_top(ae.stats)}")
        # the two rank differently by design (TF verifies layer by layer, AEQ propagates errors); what
        # they must share is the single worst layer's neighbourhood: at least 2 of the top 5
        assert overlap >= 2
        assert all(s.extra.keys() == {"snr", "cosine_similarity"} for s in ae.stats)
        runs = store.debug_runs()
        assert sorted(runs["engine"]) == ["aeq", "tf"]
        assert len(store.layer_stats(int(ae.debug_run_id))) == len(ae.stats)
        me = sorted(p.name for p in (tmp_path / "me").iterdir())
        assert "resblock_comparison_result_me_input_mse.json" in me
    finally:
        store.close()


@pytest.mark.slow
def test_debug_aeq_selective_keeps_named_ops_float(residual: LoadedModel, digits4: Dataset) -> None:
    first = run_debugger(residual, digits4, calibration_samples=50, debug_samples=20, engine="aeq")
    worst = _top(first.stats, 1)
    r = run_debugger(residual, digits4, calibration_samples=50, debug_samples=20, engine="aeq",
                     denylisted_nodes=worst)
    assert r.selective is not None and not r.selective.ignored_nodes
    with pytest.raises(QlabError, match="denylisted node 'nope'"):
        run_debugger(residual, digits4, calibration_samples=50, debug_samples=20, engine="aeq",
                     denylisted_nodes=["nope"])


@pytest.mark.slow
def test_tune_aeq_reaches_the_same_target_as_tf(digits: Dataset, tmp_path: Path) -> None:
    from qcore.explain.search import tune
    from tests.qcore.test_tune import build_fragile

    model = build_fragile(digits)
    tf = tune(model, digits, max_drop=1.0, calibration_samples=50, debug_samples=30)
    ae = tune(model, digits, max_drop=1.0, calibration_samples=50, debug_samples=30, engine="aeq",
              deploy_engine="aeq")
    confirmed = tune(model, digits, max_drop=1.0, calibration_samples=50, debug_samples=30, engine="aeq",
                     deploy_engine="tf")
    print(f"search tf: {len(tf.chosen.denylist) if tf.chosen else None} layers, aeq: "
          f"{len(ae.chosen.denylist) if ae.chosen else None}; tf-confirmed accuracy "
          f"{confirmed.chosen.accuracy if confirmed.chosen else None}")
    assert tf.chosen is not None and tf.chosen.passed
    assert ae.chosen is not None and ae.chosen.passed and ae.chosen.accuracy >= ae.target_accuracy
    assert ae.tried[0].denylist == () and not ae.tried[0].passed  # the search had real work
    assert confirmed.deploy_engine == "tf" and confirmed.search_accuracy is not None
    assert confirmed.chosen is not None


def test_aeq_float_base_needs_a_signature() -> None:
    with pytest.raises(QlabError):
        aeq.base_from_tflite(b"not a model")


def test_run_model_feeds_aeq_int8_io(demo: LoadedModel, digits: Dataset) -> None:
    tflite = aeq.convert(demo, "int8", digits.calibration(30))
    out, _ = run_model(tflite, digits.test_inputs()[:8])
    assert out.shape == (8, 10)
    # made at batch 1 (the demo's Reshape reads its input's shape), its output keeps the Keras name
    assert list(output_names(tflite).values()) == [demo.keras_model.layers[-1].name]


def test_float_base_is_made_once_per_model(demo: LoadedModel, digits: Dataset, monkeypatch) -> None:
    import qcore.engines.tf as tf_engine

    first = aeq.float_base(demo, digits.calibration(1))
    calls = []
    monkeypatch.setattr(tf_engine, "convert", lambda *a, **k: calls.append(a) or b"")
    again = aeq.float_base(demo, digits.calibration(1))
    assert again.model == first.model and not calls  # the converter was not called again


def test_aeq_integer_io_on_weights_stored_outside_the_flatbuffer(digits: Dataset, tmp_path: Path) -> None:
    """AEQ writes buffers >= 1 KiB after the flatbuffer; int8/uint8 I/O must still load and keep accuracy."""
    import tf_keras

    from qcore.engines.tf import convert
    from qcore.inputs.models import load_model
    from qcore.tflite.evaluate import evaluate_tflite

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(8, 8)), tf_keras.layers.Flatten(),
                               tf_keras.layers.Dense(256, activation="relu"), tf_keras.layers.Dense(10)])
    net.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(digits.x_train, digits.y_train, epochs=8, verbose=0)
    net.save(tmp_path / "wide.h5")
    model = load_model(tmp_path / "wide.h5")
    cal = digits.calibration(50)
    for recipe in ("int8", "uint8"):
        ours = evaluate_tflite(aeq.convert(model, recipe, cal), digits)
        theirs = evaluate_tflite(convert(model, recipe, cal), digits)
        assert ours.input_dtype == recipe
        assert abs(ours.accuracy - theirs.accuracy) <= MAX_GAP, (recipe, ours.accuracy, theirs.accuracy)
