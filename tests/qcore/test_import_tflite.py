"""Bring your own .tflite: `qlab import-tflite`, tflite-only models, custom ops, outputs scored by MSE, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qcore.cli import main
from qcore.inputs.data import dataset_record
from qcore.lab import reports
from qcore.lab.import_tflite import analyze, check_tflite_bytes
from qcore.lab.publish import publish
from qcore.qtyping import QlabError, Scoring
from qcore.store import Store
from qcore.tflite.litert_io import check_runnable, custom_ops, run_outputs


def run(capfd, *argv):
    """Runs `qlab` in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture()
def files(tmp_path: Path, tiny_tflite: dict[str, bytes], foreign_tflite: dict[str, bytes]) -> dict[str, Path]:
    """The demo's float32/int8 and the foreign files written as .tflite files under tmp_path."""
    out = {}
    for name, data in {**tiny_tflite, **foreign_tflite}.items():
        out[name] = tmp_path / f"{name}.tflite"
        out[name].write_bytes(data)
    return out


# ---------------------------------------------------------------- the CLI
def test_import_tflite_classifier_with_reference_json(capfd, files, digits_npz, tmp_path) -> None:
    db = tmp_path / "q.duckdb"
    code, out, err = run(capfd, "import-tflite", str(files["int8"]), "--reference", str(files["float32"]),
                         "--data", str(digits_npz), "--name", "digits cnn", "--db", str(db), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["scoring"] == "classes" and r["runnable"] and r["custom_ops"] == []
    assert r["verdict"] == "integer-only" and r["variant"]["input_dtype"] == "int8"
    ev = r["variant"]
    assert ev["accuracy"] > 0.8 and ev["agreement"] > 0.9 and ev["n_samples"] == 360 and ev["npu_ready"]
    assert r["reference_accuracy"] > 0.8
    with Store(db) as store:
        model = store.model(r["model_id"])
        assert (model["format"], model["name"]) == ("tflite", "digits cnn") and model["keras_major"] is pd.NA
        assert Path(model["source_path"]).read_bytes() == files["float32"].read_bytes()  # the reference
        rows = store.variant_summary(model_ids=[r["model_id"]]).set_index("variant_id")
        assert set(rows.index) == {r["variant_id"], r["reference_variant_id"]}
        mine = rows.loc[r["variant_id"]]
        assert mine["kind"] == "imported" and mine["scoring"] == "classes"
        # the reference's accuracy is the model's float accuracy, as a Keras model's would be
        assert mine["float_accuracy"] == pytest.approx(r["reference_accuracy"])
        assert mine["accuracy"] == pytest.approx(ev["accuracy"])
        assert rows.loc[r["reference_variant_id"], "variant"] == "float32 (reference)"


def test_import_tflite_without_data_then_host_bench(capfd, files, tmp_path) -> None:
    db = tmp_path / "q.duckdb"
    code, out, err = run(capfd, "import-tflite", str(files["int8"]), "--db", str(db), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["variant"]["accuracy"] is None and r["dataset_id"] is None
    assert any("no data given" in n for n in r["notes"])
    code, out, err = run(capfd, "bench", str(files["int8"]), "--runs", "5", "--warmup", "1", "--db", str(db), "--json")
    assert code == 0, err
    with Store(db) as store:
        row = store.variant(r["variant_id"])
        assert row["dataset"] is None and row["host_p50_ms"] > 0
    # importing it again with data evaluates it as a variant on that dataset, under the same model
    code, out, err = run(capfd, "import-tflite", str(files["int8"]), "--data", "digits", "--input-scale", "1",
                         "--input-offset", "0", "--db", str(db), "--json")
    again = json.loads(out)
    assert code == 0 and again["model_id"] == r["model_id"] and again["variant_id"] != r["variant_id"]
    assert again["variant"]["accuracy"] > 0.8


def test_import_tflite_human_text(capfd, files, tmp_path) -> None:
    code, out, err = run(capfd, "import-tflite", str(files["uint8"]), "--db", str(tmp_path / "q.duckdb"))
    assert code == 0, err
    assert "(tflite-only)" in out and "uint8 -> uint8" in out and "note: no data given" in out


def test_import_tflite_bad_file_names_it(capfd, tmp_path) -> None:
    bad = tmp_path / "notes.tflite"
    bad.write_bytes(b"just some text, not a flatbuffer")
    db = tmp_path / "q.duckdb"
    code, out, err = run(capfd, "import-tflite", str(bad), "--db", str(db), "--json")
    assert code == 2 and out == ""
    assert f"{bad}: not a TFLite model" in err and "Traceback" not in err
    missing = tmp_path / "gone.tflite"
    code, _, err = run(capfd, "import-tflite", str(missing), "--db", str(db))
    assert code == 2 and f"{missing}: no such file" in err
    assert not db.exists() or Store(db).models().empty


def test_import_tflite_truncated_file_names_it(capfd, files, tmp_path) -> None:
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(files["int8"].read_bytes()[:200])
    code, _, err = run(capfd, "import-tflite", str(cut), "--db", str(tmp_path / "q.duckdb"))
    assert code == 2 and f"{cut}: not a TFLite model" in err


def test_import_tflite_bad_reference_names_it(capfd, files, tmp_path) -> None:
    code, _, err = run(capfd, "import-tflite", str(files["int8"]), "--reference", str(files["two_float"]),
                       "--db", str(tmp_path / "q.duckdb"))
    assert code == 2 and str(files["two_float"]) in err and "same network" in err


def test_import_tflite_data_that_does_not_fit(capfd, files, tmp_path) -> None:
    x = np.zeros((4, 5, 5), np.float32)
    npz = tmp_path / "small.npz"
    np.savez(npz, x_train=x, y_train=np.zeros(4, int), x_test=x, y_test=np.zeros(4, int))
    code, _, err = run(capfd, "import-tflite", str(files["int8"]), "--data", str(npz),
                       "--db", str(tmp_path / "q.duckdb"))
    assert code == 2 and "(5, 5)" in err and "(8, 8)" in err


# ---------------------------------------------------------------- custom ops
def test_custom_op_model_inspects_but_running_is_refused_naming_the_op(capfd, files, tmp_path) -> None:
    path = files["custom"]
    assert custom_ops(path.read_bytes()) == ("BesselI1e",)
    code, out, _ = run(capfd, "inspect", str(path), "--json")
    assert code == 0 and "BesselI1e" in [op["name"] for op in json.loads(out)["ops"]]
    for argv in (("bench", str(path)), ("evaluate", str(path), "--data", "digits")):
        code, out, err = run(capfd, *argv)
        assert code == 2 and out == ""
        assert f"{path} uses custom op BesselI1e that LiteRT cannot run" in err
    db = tmp_path / "q.duckdb"
    code, out, err = run(capfd, "import-tflite", str(path), "--data", "digits", "--db", str(db), "--json")
    r = json.loads(out)
    assert code == 0 and not r["runnable"] and r["custom_ops"] == ["BesselI1e"]
    assert "BesselI1e" in r["refusal"] and r["variant"]["accuracy"] is None
    with Store(db) as store:
        assert store.variant(r["variant_id"])["status"] == "ok"  # stored, inspectable


def test_flex_op_model_refused_naming_the_op_and_the_delegate(capfd, files, tmp_path) -> None:
    path = files["flex"]
    code, out, err = run(capfd, "bench", str(path), "--runs", "2")
    assert code == 2 and out == ""
    assert f"{path} uses custom op FlexMatrixDeterminant" in err and "Flex delegate" in err
    code, out, err = run(capfd, "import-tflite", str(path), "--db", str(tmp_path / "q.duckdb"), "--json")
    assert code == 0 and json.loads(out)["custom_ops"] == ["FlexMatrixDeterminant"]


def test_check_runnable_allows_the_runtimes_own_custom_ops(tiny_tflite) -> None:
    check_runnable(tiny_tflite["int8"])  # builtins only: nothing to refuse
    with pytest.raises(QlabError, match="int8.tflite"):
        check_tflite_bytes(b"", "int8.tflite")


def import_tflite(store, model, *, label, reference=None, reference_label="", dataset=None):
    """analyze, then publish with the dataset registered first (what the import job and its owner do)."""
    import dataclasses

    dataset_id = publish(store, dataset_record(dataset)).dataset_id if dataset is not None else None
    result = analyze(model, label=label, reference=reference, reference_label=reference_label, dataset=dataset)
    return publish(store, dataclasses.replace(result, dataset_id=dataset_id))


# ---------------------------------------------------------------- outputs that are not class scores
def test_two_output_model_scored_by_mse_against_reference(foreign_tflite, digits, tmp_path) -> None:
    q, f = foreign_tflite["two_int8"], foreign_tflite["two_float"]
    with Store(tmp_path / "q.duckdb") as store:
        r = import_tflite(store, q, label="landmarks_int8.tflite", reference=f,
                          reference_label="landmarks_float.tflite", dataset=digits)
        assert r.scoring == Scoring.OUTPUTS and r.variant.evaluation is not None
        assert len(r.output_shapes) == 2
        ev = r.variant.evaluation
        assert ev.accuracy != ev.accuracy and ev.agreement is None and ev.confusion == ()
        # quantization error is there, but small against the outputs' scale
        assert 0 < ev.output_metrics["output_mse"] < 0.05
        assert ev.output_metrics["output_cosine"] > 0.98
        assert set(ev.output_metrics) >= {"output0_mse", "output1_mse", "output_max_abs_error"}
        # the numbers are the reference comparison of the two models' real outputs
        x = digits.test_inputs()
        (qb, qh), _ = run_outputs(q, x)
        (fb, fh), _ = run_outputs(f, x)
        assert ev.output_metrics["output0_mse"] == pytest.approx(float(np.mean((qb - fb) ** 2)), rel=1e-6)
        row = store.variant(r.variant.variant_id)
        assert row["scoring"] == "outputs" and row["output_mse"] == pytest.approx(ev.output_metrics["output_mse"])
        assert row["accuracy"] is None or row["accuracy"] != row["accuracy"]


def test_two_output_model_without_reference_is_not_scored(foreign_tflite, digits) -> None:
    r = analyze(foreign_tflite["two_int8"], label="landmarks.tflite", dataset=digits)
    assert r.scoring == Scoring.OUTPUTS and r.variant.evaluation is None
    assert any("2 outputs" in n and "not scored" in n for n in r.notes)


# ---------------------------------------------------------------- reports and Compare's table
def test_report_export_and_import_keep_tflite_only_models(files, foreign_tflite, digits, tmp_path) -> None:
    with Store(tmp_path / "a.duckdb") as a:
        cls = import_tflite(a, files["int8"].read_bytes(), label="int8.tflite", reference=files["float32"].read_bytes(),
                            reference_label="float32.tflite", dataset=digits)
        reg = import_tflite(a, foreign_tflite["two_int8"], label="lm_int8.tflite", reference=foreign_tflite["two_float"],
                            reference_label="lm_float.tflite", dataset=digits)
        bare = import_tflite(a, files["uint8"].read_bytes(), label="uint8.tflite")  # no data at all
        ids = [cls.variant.variant_id, cls.reference_variant.variant_id, reg.variant.variant_id,
               bare.variant.variant_id]
        report_id = reports.make_report(a, "byo", "", [i for i in ids if i is not None])
        table = reports.summary_table(a.report(report_id)["content"])
        assert set(table["scored by"]) == {"top-1 vs labels", "MSE vs reference"}
        html = reports.render_html(a.report(report_id))
        assert "MSE vs reference" in html and "lm_int8" in html
        bundle = reports.export_bundle(a, report_id)
    with Store(tmp_path / "b.duckdb") as b:
        new_id = reports.import_bundle(b, bundle)
        assert set(b.models()["format"]) == {"tflite"}
        rows = b.variant_summary().set_index("variant")
        assert {"int8", "float32 (reference)", "lm_int8", "uint8"} <= set(rows.index)
        assert rows.loc["int8", "accuracy"] == pytest.approx(cls.variant.evaluation.accuracy)
        assert rows.loc["lm_int8", "scoring"] == "outputs"
        assert rows.loc["lm_int8", "output_mse"] == pytest.approx(reg.variant.evaluation.output_metrics["output_mse"])
        assert pd.isna(rows.loc["uint8", "dataset_id"])  # still no dataset
        assert len(b.report(new_id)["content"]["variants"]) == 4
