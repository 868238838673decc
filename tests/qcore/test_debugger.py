"""The quantization debugger: every row, derived metrics, suspects, whole-model mode, selective models, refusals."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pandas as pd
import pytest

from qcore.engines.tf import BASE_COLUMNS, calibrate, convert
from qcore.explain.debugger import float_ops, run_debugger, stats_csv, suspects
from qcore.lab import reports
from qcore.lab.documents import document
from qcore.lab.publish import publish
from qcore.qtyping import Dataset, DebugResult, LayerStat, LoadedModel, QlabError
from qcore.store import Store

# small sets keep each debugger run around a second
CAL, DEBUG = 50, 40


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One store for the module's debugger runs."""
    store = Store(tmp_path_factory.mktemp("dbg") / "qlab.duckdb")
    yield store
    store.close()


@pytest.fixture(scope="module")
def layer_run(demo: LoadedModel, digits: Dataset, module_store: Store) -> DebugResult:
    """One layer-by-layer debugger run of the demo with both extra metrics, published."""
    run = run_debugger(demo, digits, calibration_samples=CAL, debug_samples=DEBUG,
                       extra_metrics=("mean_abs_error", "correlation"))
    assert run.debug_run_id is None  # a value until the owner publishes it
    return publish(module_store, run, made_from=(demo, digits))


def _conv(stats: tuple[LayerStat, ...]) -> LayerStat:
    return next(s for s in stats if s.op_name == "CONV_2D")


def test_run_debugger_rows_and_derived_metrics(layer_run: DebugResult) -> None:
    ops = [s.op_name for s in layer_run.stats]
    assert ops == ["RESHAPE", "CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"]
    for s in layer_run.stats:
        assert s.range == pytest.approx(255.0 * s.scale)
        assert s.rmse_scale == pytest.approx(math.sqrt(s.mean_squared_error) / s.scale)
        assert set(s.extra) == {"mean_abs_error", "correlation"}
    conv = _conv(layer_run.stats)
    # a plain conv with calibrated ranges is well quantized: rmse/scale near 1/sqrt(12)
    assert 0.2 < conv.rmse_scale < 0.4
    assert conv.extra["correlation"] > 0.999
    assert conv.extra["mean_abs_error"] <= conv.max_abs_error


def test_run_debugger_columns_in_debugger_order(layer_run: DebugResult) -> None:
    assert layer_run.columns == (*BASE_COLUMNS, "mean_abs_error", "correlation", "scale", "zero_point",
                                 "tensor_name")


def test_run_debugger_model_metrics(layer_run: DebugResult) -> None:
    assert set(layer_run.model_metrics) == {"argmax_agreement", "output_mse"}
    assert 0.9 <= layer_run.model_metrics["argmax_agreement"] <= 1.0
    assert 0.0 < layer_run.model_metrics["output_mse"] < 0.1


def test_run_debugger_stores_every_row(layer_run: DebugResult, module_store: Store) -> None:
    assert layer_run.debug_run_id is not None
    rows = module_store.layer_stats(layer_run.debug_run_id)
    assert list(rows["tensor_name"]) == [s.tensor_name for s in layer_run.stats]
    np.testing.assert_allclose(rows["rmse_scale"], [s.rmse_scale for s in layer_run.stats])
    np.testing.assert_allclose(rows["mean_squared_error"], [s.mean_squared_error for s in layer_run.stats])
    run = module_store.debug_runs().set_index("id").loc[layer_run.debug_run_id]
    assert int(run["n_layers"]) == len(layer_run.stats)


@pytest.mark.slow
def test_run_debugger_equals_raw_debugger(layer_run: DebugResult, demo: LoadedModel, digits: Dataset) -> None:
    import tensorflow as tf

    from qcore.engines.tf import make_converter, representative

    converter = make_converter(demo)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative(digits.calibration(CAL))
    debug_x = digits.test_inputs()[:DEBUG]
    raw = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative(debug_x),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            layer_debug_metrics={"mean_abs_error": lambda d: float(np.mean(np.abs(d)))}),
    )
    raw.run()
    dump = io.StringIO()
    raw.layer_statistics_dump(dump)
    raw_rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
    assert [r["tensor_name"] for r in raw_rows] == [s.tensor_name for s in layer_run.stats]
    for r, s in zip(raw_rows, layer_run.stats, strict=True):
        assert r["op_name"] == s.op_name
        for key in ("num_elements", "stddev", "mean_error", "max_abs_error", "mean_squared_error", "scale"):
            assert float(r[key]) == pytest.approx(getattr(s, key), rel=1e-6, abs=1e-12), key
        assert float(r["mean_abs_error"]) == pytest.approx(s.extra["mean_abs_error"], rel=1e-6)


def test_stats_csv_debugger_columns_then_derived(layer_run: DebugResult) -> None:
    rows = list(csv.reader(io.StringIO(stats_csv(layer_run))))
    assert rows[0] == [*layer_run.columns, "range", "rmse_scale"]
    assert len(rows) == len(layer_run.stats) + 1
    conv_row = dict(zip(rows[0], rows[1 + [s.op_name for s in layer_run.stats].index("CONV_2D")], strict=True))
    conv = _conv(layer_run.stats)
    assert conv_row["tensor_name"] == conv.tensor_name
    assert float(conv_row["rmse_scale"]) == conv.rmse_scale
    assert conv_row["zero_point"] == str(int(conv.zero_point))


def test_suspects_threshold_and_first_k() -> None:
    def stat(name: str, rmse_scale: float) -> LayerStat:
        return LayerStat("CONV_2D", 0, name, 1, 0, 0, 0, 0, 1, 0, 255, rmse_scale)

    stats = [stat("a", 0.29), stat("b", 1.5), stat("c", 0.3), stat("d", 0.71), stat("e", float("nan"))]
    assert suspects(stats) == ["b", "d"]
    assert suspects(stats, threshold=1.0) == ["b"]
    assert suspects(stats, threshold=1.0, first_k=2) == ["a", "b"]
    assert suspects([], first_k=3) == []


def test_run_debugger_whole_model_errors_propagate(layer_run: DebugResult, demo: LoadedModel,
                                                   digits: Dataset) -> None:
    whole = run_debugger(demo, digits, calibration_samples=CAL, debug_samples=DEBUG, whole_model=True)
    assert whole.settings["whole_model"] is True
    layer_pool = next(s for s in layer_run.stats if s.op_name == "MAX_POOL_2D")
    whole_pool = next(s for s in whole.stats if s.op_name == "MAX_POOL_2D")
    # layer by layer, max-pool of already-quantized values adds no error; whole-model, the conv's error arrives
    assert layer_pool.mean_squared_error < 1e-10
    assert whole_pool.mean_squared_error > 1e3 * max(layer_pool.mean_squared_error, 1e-15)
    assert 0.9 <= whole.model_metrics["argmax_agreement"] <= 1.0
    assert whole.model_metrics["output_mse"] > 0.0


def test_run_debugger_selective_keeps_node_in_float(layer_run: DebugResult, demo: LoadedModel, digits: Dataset,
                                                    module_store: Store) -> None:
    conv = _conv(layer_run.stats).tensor_name
    r = publish(module_store, run_debugger(demo, digits, calibration_samples=CAL, debug_samples=DEBUG,
                                           denylisted_nodes=[conv]), made_from=(demo, digits))
    sel = r.selective
    assert sel is not None and sel.variant.path and open(sel.variant.path, "rb").read() == sel.variant.tflite
    assert conv in float_ops(sel.variant.tflite)
    assert sel.ignored_nodes == ()
    assert 0.8 < sel.variant.evaluation.accuracy <= 1.0
    assert not sel.variant.npu.ready  # a float layer falls back to the CPU
    assert "CONV_2D" not in [s.op_name for s in r.stats]  # a float op has nothing to verify
    row = module_store.variant(sel.variant.variant_id)
    assert row["kind"] == "selective" and row["engine"] == "tf" and not row["npu_ready"]
    import json

    settings = json.loads(row["settings"])
    assert settings["denylisted_nodes"] == [conv] and settings["denylisted_ops"] == []


def test_run_debugger_selective_reports_ignored_node(layer_run: DebugResult, demo: LoadedModel,
                                                     digits: Dataset) -> None:
    pool = next(s for s in layer_run.stats if s.op_name == "MAX_POOL_2D").tensor_name
    r = run_debugger(demo, digits, calibration_samples=CAL, debug_samples=DEBUG, denylisted_nodes=[pool])
    assert r.selective is not None and r.selective.ignored_nodes == (pool,)


def test_run_debugger_denylisted_ops(demo: LoadedModel, digits: Dataset) -> None:
    r = run_debugger(demo, digits, calibration_samples=CAL, debug_samples=DEBUG, denylisted_ops=["FULLY_CONNECTED"])
    assert r.selective is not None and r.selective.denylisted_ops == ("FULLY_CONNECTED",)
    assert "FULLY_CONNECTED" not in [s.op_name for s in r.stats]
    assert r.selective.variant.evaluation.accuracy > 0.8


# ---------------------------------------------------------------- refusals
def test_run_debugger_refuses_16x8(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="int16x8.*int8 activations"):
        run_debugger(demo, digits, recipe="int16x8")


def test_run_debugger_refuses_float_recipe(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="float16.*full-integer"):
        run_debugger(demo, digits, recipe="float16")


def test_run_debugger_unknown_recipe(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="unknown recipe 'int4'"):
        run_debugger(demo, digits, recipe="int4")


def test_run_debugger_unknown_metric(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="unknown layer metric 'psnr'.*mean_abs_error"):
        run_debugger(demo, digits, extra_metrics=["psnr"])


def test_run_debugger_unknown_node(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="denylisted node 'dense_7/BiasAdd'"):
        run_debugger(demo, digits, calibration_samples=CAL, debug_samples=DEBUG, denylisted_nodes=["dense_7/BiasAdd"])


def test_run_debugger_unknown_op(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="denylisted op 'MEAN'.*CONV_2D"):
        run_debugger(demo, digits, calibration_samples=CAL, debug_samples=DEBUG, denylisted_ops=["MEAN"])


def test_run_debugger_cannot_enter_debug_mode(demo: LoadedModel, digits: Dataset) -> None:
    every_op = ["RESHAPE", "CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED"]
    with pytest.raises(QlabError, match="cannot put model .* in debug mode"):
        run_debugger(demo, digits, calibration_samples=CAL, debug_samples=DEBUG, denylisted_ops=every_op)


def test_run_debugger_layer_name_not_a_scope_name(digits: Dataset) -> None:
    import keras

    inp = keras.Input((8, 8))
    x = keras.layers.Flatten()(inp)
    net = keras.Model(inp, keras.layers.Dense(10, name="my dense")(x))
    model = LoadedModel("spaced", "spaced.keras", "keras", net, (None, 8, 8), (None, 10), 3)
    with pytest.raises(QlabError, match="'my dense'.*scope name"):
        calibrate(model, "int8-fallback", digits.calibration(10))


def test_run_debugger_zero_debug_samples(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="debug samples must be at least 1"):
        run_debugger(demo, digits, debug_samples=0)


def test_run_debugger_zero_calibration_samples(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="calibration samples must be at least 1"):
        run_debugger(demo, digits, calibration_samples=0)


def test_run_debugger_data_does_not_fit(demo: LoadedModel) -> None:
    wrong = Dataset("wrong", np.zeros((4, 4, 4), np.float32), np.zeros(4, np.int64),
                    np.zeros((4, 4, 4), np.float32), np.zeros(4, np.int64))
    with pytest.raises(QlabError, match=r"\(4, 4\)"):
        run_debugger(demo, wrong)


# ---------------------------------------------------------------- the names users know
def _last_layer(model: LoadedModel) -> str:
    """The Keras name of the model's last layer (the demo's Dense head), read from the model itself."""
    return str(model.keras_model.layers[-1].name)


def test_run_debugger_names_the_output_by_its_keras_layer(layer_run: DebugResult, demo: LoadedModel,
                                                          module_store: Store) -> None:
    """The converter calls the output "StatefulPartitionedCall:0"; the row carries the Dense layer's name,
    stored and in the JSON document, with the tensor name keep-float needs beside it."""
    fc = next(s for s in layer_run.stats if s.op_name == "FULLY_CONNECTED")
    assert fc.tensor_name.startswith("StatefulPartitionedCall")
    assert fc.layer == _last_layer(demo)
    assert [s.layer for s in layer_run.stats] == ["reshape", "conv", "pool", "flatten", _last_layer(demo)]
    rows = module_store.layer_stats(int(layer_run.debug_run_id))  # type: ignore[arg-type]
    assert rows["layer"].tolist() == [s.layer for s in layer_run.stats]
    doc = document(layer_run)["layers"][-1]
    assert (doc["layer"], doc["tensor_name"]) == (_last_layer(demo), fc.tensor_name)


def test_run_debugger_aeq_names_the_output_by_its_keras_layer(demo: LoadedModel, digits: Dataset) -> None:
    """AI Edge Quantizer's rows carry the float base's tensor names; its signature names the output too."""
    run = run_debugger(demo, digits, engine="aeq", calibration_samples=20, debug_samples=10)
    fc = next(s for s in run.stats if s.op_name == "FULLY_CONNECTED")
    assert fc.tensor_name.startswith("StatefulPartitionedCall") and fc.layer == _last_layer(demo)


def test_debugger_report_names_the_output_by_its_keras_layer(layer_run: DebugResult, demo: LoadedModel,
                                                             module_store: Store) -> None:
    """The report's worst layers (its table and the HTML export) name the output by its Keras layer."""
    run = module_store.debug_runs().set_index("id").loc[layer_run.debug_run_id]
    variants = pd.DataFrame({"model_id": [int(run["model_id"])], "dataset_id": [int(run["dataset_id"])],
                             "model": [demo.name]})
    content = {"debugger": reports.debugger_content(module_store, variants)}
    worst = content["debugger"][0]["worst"]
    assert _last_layer(demo) in [w["layer"] for w in worst]
    assert not any(w["layer"].startswith("StatefulPartitionedCall") for w in worst)
    (_, table), = reports.debugger_tables(content)
    assert _last_layer(demo) in table["layer"].tolist()
    page = reports.render_html({"id": "r", "title": "names", "notes": "", "content": content,
                                "created_at": "2026-12-07"})
    assert f"<td>{_last_layer(demo)}</td>" in page and "StatefulPartitionedCall" not in page


def test_output_names_two_outputs_stay_distinct(digits: Dataset) -> None:
    """Two heads of one call ("StatefulPartitionedCall:0", ":1"): each output tensor gets its own head's name."""
    import tf_keras as keras

    from qcore.tflite.inspection import output_names
    from qcore.tflite.names import named_stats

    inp = keras.Input((8, 8), name="image")
    x = keras.layers.Flatten(name="flatten")(inp)
    net = keras.Model(inp, [keras.layers.Dense(10, name="digit")(x), keras.layers.Dense(2, name="parity")(x)],
                      name="two_heads")
    # qlab's loader takes single-output models; the converter and the names see any tf_keras model
    model = LoadedModel("two_heads", "two_heads.h5", "h5", net, (None, 8, 8), (None, 10), 2)
    outputs = output_names(convert(model, "float32", digits.calibration(1)))
    assert sorted(outputs) == ["StatefulPartitionedCall:0", "StatefulPartitionedCall:1"]
    assert sorted(outputs.values()) == ["digit", "parity"]
    rows = named_stats([LayerStat("FULLY_CONNECTED", i, t, 1, 0, 0, 0, 0, 1, 0, 255, 0.3)
                        for i, t in enumerate(sorted(outputs))], outputs)
    assert [r.layer for r in rows] == [outputs[r.tensor_name] for r in rows]
