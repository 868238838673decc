"""Conversion with every recipe as values, refusals that name the op, and publishing them in one transaction."""

import numpy as np
import pandas as pd
import pytest

from qcore.engines import resolve_recipes
from qcore.engines.tf import convert, refused_ops
from qcore.lab.convert import convert_and_evaluate
from qcore.lab.publish import publish, register
from qcore.qtyping import LoadedModel, QlabError, VariantStatus
from qcore.tflite.inspection import inspect


def converted(store, model, dataset, recipes):
    """convert_and_evaluate, published under the model and dataset it was made from."""
    import dataclasses

    model_id, dataset_id = register(store, model, dataset)
    report = convert_and_evaluate(model, dataset, resolve_recipes(recipes, "tf"))
    return publish(store, dataclasses.replace(report, model_id=model_id, dataset_id=dataset_id))


@pytest.fixture(scope="module")
def all_report(demo, digits, tmp_path_factory):
    """Every recipe converted and published into a module-wide store."""
    from qcore.store import Store

    root = tmp_path_factory.mktemp("convert")
    store = Store(root / "q.duckdb")
    yield converted(store, demo, digits, "all"), store, root
    store.close()


def _model_with(fn, name):
    """A tiny tf_keras model with one Lambda op between two Dense layers."""
    import tf_keras

    inp = tf_keras.Input((8,))
    x = tf_keras.layers.Lambda(fn)(tf_keras.layers.Dense(8)(inp))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3)(x))
    return LoadedModel(name, "", "h5", model, (None, 8), (None, 3), 2)


def test_convert_and_evaluate_every_recipe_succeeds(all_report, digits):
    report, store, _ = all_report
    assert [v.recipe for v in report.variants] == [r.name for r in resolve_recipes("all", "tf")]
    assert all(v.status == VariantStatus.OK for v in report.variants), [v.error for v in report.variants]
    assert report.float_accuracy > 0.85
    for v in report.variants:
        assert v.path == str(store.blob_path(v.sha256)) and v.variant_id is not None
        assert open(v.path, "rb").read() == v.tflite
        assert v.evaluation.n_samples == len(digits.y_test)
        assert abs(v.evaluation.accuracy - report.float_accuracy) < 0.05
        assert v.evaluation.agreement > 0.9


def test_convert_and_evaluate_io_dtypes_follow_the_recipe(all_report):
    report, _, _ = all_report
    dtypes = {v.recipe: (v.input_dtype, v.output_dtype) for v in report.variants}
    assert dtypes["int8"] == ("int8", "int8") and dtypes["uint8-per-tensor"] == ("uint8", "uint8")
    assert dtypes["int8-fallback"] == ("float32", "float32") and dtypes["float16"] == ("float32", "float32")


def test_convert_and_evaluate_sizes_shrink_with_quantization(all_report):
    sizes = {v.recipe: v.size_bytes for v in all_report[0].variants}
    assert sizes["float16"] < sizes["float32"] and sizes["int8"] < sizes["float32"]


def test_per_tensor_recipe_has_no_per_channel_weights(all_report):
    report, _, _ = all_report
    files = {v.recipe: v.tflite for v in report.variants}
    per_channel = [t for t in inspect(files["int8"]).tensors if len(t.scales) > 1]
    per_tensor = [t for t in inspect(files["int8-per-tensor"]).tensors if len(t.scales) > 1]
    assert per_channel and not per_tensor


def test_convert_and_evaluate_stores_rows_and_is_idempotent(all_report, demo, digits):
    report, store, _ = all_report
    before = store.query("SELECT count(*) AS n FROM variants").n[0]
    blobs_before = sorted(p.name for p in store.blob_dir.iterdir())
    again = converted(store, demo, digits, "int8")
    assert store.query("SELECT count(*) AS n FROM variants").n[0] == before
    assert sorted(p.name for p in store.blob_dir.iterdir()) == blobs_before
    assert again.variants[0].sha256 == next(v.sha256 for v in report.variants if v.recipe == "int8")
    summary = store.variant_summary()
    assert set(summary.variant) >= {"int8", "uint8", "float16"}
    assert summary.float_accuracy.notna().all()


def test_convert_int8_on_op_without_integer_kernel_names_it():
    model = _model_with(lambda x: __import__("tensorflow").math.sin(x), "sin-model")
    with pytest.raises(QlabError, match="no integer kernel for op SIN.*int8-fallback"):
        convert(model, "int8", np.random.rand(8, 8).astype("float32"))


def test_convert_and_evaluate_refused_recipe_leaves_failed_row_and_others_run(tmp_store):
    import tensorflow as tf

    from qcore.qtyping import Dataset

    model = _model_with(tf.math.sin, "sin-model")
    rng = np.random.default_rng(0)
    ds = Dataset("rand", rng.random((20, 8), dtype=np.float32), rng.integers(0, 3, 20),
                 rng.random((10, 8), dtype=np.float32), rng.integers(0, 3, 10), source="test")
    report = converted(tmp_store, model, ds, "int8,int8-fallback")
    status = {v.recipe: v.status for v in report.variants}
    assert status == {"int8": VariantStatus.FAILED, "int8-fallback": VariantStatus.OK}
    rows = tmp_store.variant_summary().set_index("variant")
    assert rows.loc["int8", "status"] == "failed" and "SIN" in rows.loc["int8", "error"]
    assert pd.isna(rows.loc["int8", "sha256"])
    assert tmp_store.query(
        "SELECT count(*) AS n FROM evaluations e JOIN variants v ON v.id = e.variant_id WHERE v.name = 'int8'"
    ).n[0] == 0


def test_refused_ops_parses_converter_messages():
    assert refused_ops("error: 'tf.Erf' op is neither a custom op nor a flex op") == ["tf.Erf"]
    assert refused_ops("Quantization not yet supported for op: 'CUMSUM'") == ["CUMSUM"]


def test_convert_and_evaluate_zero_calibration_samples_is_refused(demo, digits):
    with pytest.raises(QlabError, match="calibration samples must be at least 1"):
        convert_and_evaluate(demo, digits, resolve_recipes("int8", "tf"), calibration_samples=0)


def test_convert_and_evaluate_writes_nothing_and_carries_every_figure(demo, digits):
    report = convert_and_evaluate(demo, digits, resolve_recipes("int8,float16", "tf"))
    for v in report.variants:
        assert v.variant_id is None and v.path == ""  # a value: nothing stored, nothing written
        assert v.tflite and v.sha256 and v.size_bytes == len(v.tflite)
        assert v.npu is not None  # the verdict is read where the bytes were made
    verdicts = {v.recipe: v.npu.ready for v in report.variants}
    assert verdicts == {"int8": True, "float16": False}
    assert report.reference is not None and report.reference.accuracy == report.float_accuracy


def test_publish_without_ids_is_refused(tmp_store, demo, digits):
    report = convert_and_evaluate(demo, digits, resolve_recipes("int8", "tf"))
    with pytest.raises(QlabError, match="no model and dataset ids"):
        publish(tmp_store, report)
    assert tmp_store.query("SELECT count(*) AS n FROM variants").n[0] == 0


def test_publish_is_one_transaction(tmp_store, demo, digits, monkeypatch):
    import dataclasses

    model_id, dataset_id = register(tmp_store, demo, digits)
    report = convert_and_evaluate(demo, digits, resolve_recipes("int8,uint8", "tf"))
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(*args, **kwargs)

    original = tmp_store.save_variant
    monkeypatch.setattr(tmp_store, "save_variant", fail_second)
    with pytest.raises(RuntimeError):
        publish(tmp_store, dataclasses.replace(report, model_id=model_id, dataset_id=dataset_id))
    assert tmp_store.query("SELECT count(*) AS n FROM variants").n[0] == 0
