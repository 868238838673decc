"""Conversion with every recipe, refusals that name the op, and storage in one transaction per variant."""

import numpy as np
import pandas as pd
import pytest

from qcore.lab.convert import convert, convert_and_evaluate, refused_ops
from qcore.qtyping import LoadedModel, QlabError, VariantStatus
from qcore.recipes import resolve_recipes
from qcore.tflite.inspection import inspect


@pytest.fixture(scope="module")
def all_report(demo, digits, tmp_path_factory):
    """convert_and_evaluate with every recipe into a module-wide store and out dir."""
    from qcore.store import Store

    root = tmp_path_factory.mktemp("convert")
    store = Store(root / "q.duckdb")
    report = convert_and_evaluate(demo, digits, resolve_recipes("all"), store=store, out_dir=root / "out")
    yield report, store, root
    store.close()


def _model_with(fn, name):
    """A tiny tf_keras model with one Lambda op between two Dense layers."""
    import tf_keras

    inp = tf_keras.Input((8,))
    x = tf_keras.layers.Lambda(fn)(tf_keras.layers.Dense(8)(inp))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3)(x))
    return LoadedModel(name, "", "h5", model, (None, 8), (None, 3), 2)


def test_convert_and_evaluate_every_recipe_succeeds(all_report, digits):
    report, _, root = all_report
    assert [v.recipe for v in report.variants] == [r.name for r in resolve_recipes("all")]
    assert all(v.status == VariantStatus.OK for v in report.variants), [v.error for v in report.variants]
    assert report.float_accuracy > 0.85
    for v in report.variants:
        assert v.path == str(root / "out" / f"{v.recipe}.tflite")
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
    paths = {v.recipe: v.path for v in report.variants}
    per_channel = [t for t in inspect(open(paths["int8"], "rb").read()).tensors if len(t.scales) > 1]
    per_tensor = [t for t in inspect(open(paths["int8-per-tensor"], "rb").read()).tensors if len(t.scales) > 1]
    assert per_channel and not per_tensor


def test_convert_and_evaluate_stores_rows_and_is_idempotent(all_report, demo, digits):
    report, store, _ = all_report
    before = store.query("SELECT count(*) AS n FROM variants").n[0]
    blobs_before = sorted(p.name for p in store.blob_dir.iterdir())
    again = convert_and_evaluate(demo, digits, resolve_recipes("int8"), store=store)
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
    report = convert_and_evaluate(model, ds, resolve_recipes("int8,int8-fallback"), store=tmp_store)
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
        convert_and_evaluate(demo, digits, resolve_recipes("int8"), calibration_samples=0)
