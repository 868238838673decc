"""`qlab qat`, `debug`, `compare-tensors` and `tune`: the CLI contract, JSON outputs and exit codes."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from qcore.cli import main
from qcore.cli.explain import debug_text, tune_text
from qcore.qtyping import LoadedModel


@pytest.fixture()
def db(tmp_path: Path) -> str:
    """A fresh DuckDB path for one command."""
    return str(tmp_path / "qlab.duckdb")


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _bad(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err
    return err


@pytest.fixture(scope="module")
def tflite_files(tiny_tflite: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's float32 and int8 .tflite written to files."""
    root = tmp_path_factory.mktemp("cli-tflite")
    out = {}
    for name in ("float32", "int8"):
        out[name] = root / f"{name}.tflite"
        out[name].write_bytes(tiny_tflite[name])
    return out


def test_qat_json_contract(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path, db: str,
                           tmp_path: Path) -> None:
    out = tmp_path / "qat.tflite"
    got = _json(capsys, ["qat", str(demo_h5), "--data", str(digits_npz), "--epochs", "2", "--train-samples", "300",
                         "--batch-size", "64", "--learning-rate", "5e-4", "--out", str(out), "--db", db, "--json"])
    for key in ("keras_accuracy", "tflite_accuracy", "variant", "variant_id", "history", "warnings"):
        assert key in got
    variant = got["variant"]
    assert out.read_bytes() == Path(variant["path"]).read_bytes() and out.stat().st_size == variant["size_bytes"]
    assert variant["kind"] == "qat" and variant["variant_id"] == got["variant_id"]
    assert len(got["history"]) == 2 and {"loss", "accuracy"} <= set(got["history"][0])
    assert isinstance(got["warnings"], list)
    assert 0.0 <= got["tflite_accuracy"] <= 1.0


def test_qat_int_io_dense_only(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path,
                               db: str) -> None:
    got = _json(capsys, ["qat", str(demo_h5), "--data", str(digits_npz), "--layers", "Dense", "--epochs", "1",
                         "--train-samples", "200", "--int-io", "--db", db, "--json"])
    assert got["variant"]["input_dtype"] == "int8" and "logits" in got["quantized_layers"]


def test_debug_out_csv_columns(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path, db: str,
                               tmp_path: Path) -> None:
    out = tmp_path / "stats.csv"
    got = _json(capsys, ["debug", str(demo_h5), "--data", str(digits_npz), "--calibration-samples", "40",
                         "--debug-samples", "30", "--metrics", "mean_abs_error", "--out", str(out), "--db", db,
                         "--engine", "tf", "--json"])
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["op_name", "tensor_idx", "num_elements", "stddev", "mean_error", "max_abs_error",
                       "mean_squared_error", "mean_abs_error", "scale", "zero_point", "tensor_name", "range",
                       "rmse_scale"]
    assert len(rows) - 1 == len(got["layers"]) > 0
    assert got["model_metrics"]["argmax_agreement"] >= 0.9
    assert got["selective"] is None and got["debug_run_id"] is not None


def test_debug_selective_out(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path, db: str,
                             tmp_path: Path) -> None:
    sel = tmp_path / "sel.tflite"
    got = _json(capsys, ["debug", str(demo_h5), "--data", str(digits_npz), "--calibration-samples", "40",
                         "--debug-samples", "30", "--denylist-ops", "FULLY_CONNECTED", "--selective-out", str(sel),
                         "--whole-model", "--engine", "tf", "--db", db, "--json"])
    assert sel.read_bytes() == Path(got["selective"]["path"]).read_bytes()
    assert sel.stat().st_size == got["selective"]["size_bytes"] and got["selective"]["npu_ready"] is False
    assert got["selective"]["denylisted_ops"] == ["FULLY_CONNECTED"]
    assert got["settings"]["whole_model"] is True


def test_compare_tensors_json(capsys: pytest.CaptureFixture[str], tflite_files: dict[str, Path],
                              digits_npz: Path, db: str) -> None:
    got = _json(capsys, ["compare-tensors", str(tflite_files["float32"]), str(tflite_files["int8"]), "--data",
                         str(digits_npz), "--samples", "4", "--db", db, "--json"])
    assert got["n_samples"] == 4
    assert got["matched"] and {"name", "mse", "max_abs_error", "snr_db", "cosine"} <= set(got["matched"][0])
    assert all({"name", "side", "reason"} <= set(u) for u in got["unmatched"])


def test_tune_json_contract(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path, db: str,
                            tmp_path: Path) -> None:
    got = _json(capsys, ["tune", str(demo_h5), "--data", str(digits_npz), "--max-drop", "5", "--out",
                         str(tmp_path / "tuned"), "--db", db, "--json"])
    assert got["target_accuracy"] == pytest.approx(got["float_accuracy"] - 0.05)
    assert got["tried"] and {"denylist", "accuracy", "size_bytes"} <= set(got["tried"][0])
    chosen = got["chosen"]
    assert chosen is not None and {"denylist", "accuracy", "size_bytes", "passed"} <= set(chosen)
    variant = got["chosen_variant"]
    assert variant["variant_id"] == got["chosen_variant_id"] and variant["engine"] == got["deploy_engine"] == "tf"
    assert (tmp_path / "tuned" / f"{demo_h5.stem}-tune.tflite").read_bytes() == Path(variant["path"]).read_bytes()


# ---------------------------------------------------------------- exit 2, one clear line
def test_debug_16x8_exits_2(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path, db: str) -> None:
    _bad(capsys, ["debug", str(demo_h5), "--data", str(digits_npz), "--recipe", "int16x8", "--engine", "tf",
                  "--db", db], "int16x8", "compare-tensors")


def test_debug_aeq_exports_model_explorer(capsys: pytest.CaptureFixture[str], demo_h5: Path,
                                          digits_npz: Path, db: str, tmp_path: Path) -> None:
    out, me = tmp_path / "stats.csv", tmp_path / "me"
    got = _json(capsys, ["debug", str(demo_h5), "--data", str(digits_npz), "--calibration-samples", "40",
                         "--debug-samples", "20", "--out", str(out), "--model-explorer-out", str(me), "--db", db,
                         "--engine", "aeq", "--json"])
    assert got["engine"] == "aeq" and got["settings"]["engine"] == "aeq"
    # no --threshold: suspects are this model's outliers on AEQ's own scale (the pages' rule), not TF's fixed 0.7,
    # under which every layer of a whole-model comparison was a suspect
    from qcore.engines import get_engine

    errors = [row["rmse_scale"] for row in got["layers"]]
    threshold, _ = get_engine("aeq").metric.suspect_threshold(errors)
    assert got["settings"]["threshold"] == threshold
    assert sorted(got["suspects"]) == sorted(row["tensor_name"] for row in got["layers"]
                                             if row["rmse_scale"] > threshold)
    assert len(got["suspects"]) < len(got["layers"])
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["op_name", "tensor_idx", "num_elements", "mean_squared_error", "scale", "zero_point",
                       "tensor_name", "snr", "cosine_similarity", "range", "rmse_scale"]
    assert len(rows) - 1 == len(got["layers"]) > 0
    assert sorted(p.name for p in me.glob("*_me_input_*.json")) == [
        f"{got['model']}_comparison_result_me_input_{m}.json" for m in ("cosine_similarity", "mse", "snr")]


def test_debug_tf_refuses_model_explorer_export(capsys: pytest.CaptureFixture[str], demo_h5: Path,
                                                digits_npz: Path, db: str, tmp_path: Path) -> None:
    _bad(capsys, ["debug", str(demo_h5), "--data", str(digits_npz), "--engine", "tf", "--model-explorer-out",
                  str(tmp_path / "me"), "--db", db], "Model Explorer", "--engine aeq")
    from qcore.store import Store

    with Store(db) as store:  # refused before anything ran or was stored
        assert store.models().empty and store.debug_runs().empty


def test_debug_is_the_default_engine_tf(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path,
                                        db: str, demo: LoadedModel) -> None:
    got = _json(capsys, ["debug", str(demo_h5), "--data", str(digits_npz), "--calibration-samples", "20",
                         "--debug-samples", "10", "--db", db, "--json"])
    assert got["engine"] == "tf" and got["settings"]["engine"] == "tf"
    # the output row: its Keras name (the demo's last Dense) for people, its tensor name for --denylist-nodes
    head, out = str(demo.keras_model.layers[-1].name), got["layers"][-1]
    assert out["layer"] == head and out["tensor_name"].startswith("StatefulPartitionedCall")
    assert f"{head:<24} {out['tensor_name']}" in debug_text(got, argparse.Namespace()).splitlines()[-3]


def test_tune_text_names_the_chosen_layers_by_the_ranking_runs_names() -> None:
    """The chosen denylist reads by layer name ("predictions"), with the tensor name --denylist-nodes takes."""
    doc = {"model": "m", "max_drop": 1.0, "float_accuracy": 0.9, "target_accuracy": 0.89, "layers": 2,
           "engine": "tf", "deploy_engine": "tf", "remedy": "float", "tried": [],
           "chosen": {"denylist": ["StatefulPartitionedCall:0", "m/conv/Relu;m/conv/BiasAdd"], "accuracy": 0.895,
                      "size_bytes": 4096, "passed": True},
           "chosen_variant": {"variant_id": 3, "name": "int8 + 2 float layers"},
           "layer_names": {"StatefulPartitionedCall:0": "predictions"}}
    lines = tune_text(doc, argparse.Namespace()).splitlines()
    assert lines[-2:] == [f"    {'predictions':<24} StatefulPartitionedCall:0",
                          f"    {'conv':<24} m/conv/Relu;m/conv/BiasAdd"]


def test_convert_engine_aeq_json(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path, db: str,
                                 tmp_path: Path) -> None:
    got = _json(capsys, ["convert", str(demo_h5), "--data", str(digits_npz), "--recipes", "int8,weight-only",
                         "--engine", "aeq", "--out", str(tmp_path / "out"), "--calibration-samples", "30",
                         "--db", db, "--json"])
    assert got["engine"] == "aeq"
    assert [(v["recipe"], v["engine"], v["status"]) for v in got["variants"]] == [
        ("int8", "aeq", "ok"), ("weight-only", "aeq", "ok")]
    assert got["variants"][0]["input_dtype"] == "int8"


def test_debug_unknown_node_exits_2(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path,
                                    db: str) -> None:
    _bad(capsys, ["debug", str(demo_h5), "--data", str(digits_npz), "--denylist-nodes", "no/such/node", "--db", db],
         "'no/such/node'")


def test_debug_selective_out_without_denylist_exits_2(capsys: pytest.CaptureFixture[str], demo_h5: Path,
                                                      digits_npz: Path, db: str, tmp_path: Path) -> None:
    _bad(capsys, ["debug", str(demo_h5), "--data", str(digits_npz), "--selective-out", str(tmp_path / "s.tflite"),
                  "--db", db], "--selective-out needs")


def test_qat_unknown_layer_exits_2(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path,
                                   db: str) -> None:
    _bad(capsys, ["qat", str(demo_h5), "--data", str(digits_npz), "--layers", "GRU", "--db", db], "'GRU'")


def test_qat_zero_epochs_exits_2(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path,
                                 db: str) -> None:
    _bad(capsys, ["qat", str(demo_h5), "--data", str(digits_npz), "--epochs", "0", "--db", db], "--epochs")


def test_qat_missing_model_exits_2(capsys: pytest.CaptureFixture[str], digits_npz: Path, db: str,
                                   tmp_path: Path) -> None:
    _bad(capsys, ["qat", str(tmp_path / "nope.h5"), "--data", str(digits_npz), "--db", db], "nope.h5")


def test_tune_negative_drop_exits_2(capsys: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path,
                                    db: str) -> None:
    _bad(capsys, ["tune", str(demo_h5), "--data", str(digits_npz), "--max-drop", "-1", "--db", db], "--max-drop")


def test_compare_tensors_not_tflite_exits_2(capsys: pytest.CaptureFixture[str], tflite_files: dict[str, Path],
                                            digits_npz: Path) -> None:
    _bad(capsys, ["compare-tensors", str(tflite_files["float32"]), str(digits_npz), "--data", str(digits_npz)],
         "not a TFLite model")


def test_compare_tensors_zero_samples_exits_2(capsys: pytest.CaptureFixture[str], tflite_files: dict[str, Path],
                                              digits_npz: Path) -> None:
    _bad(capsys, ["compare-tensors", str(tflite_files["float32"]), str(tflite_files["int8"]), "--data",
                  str(digits_npz), "--samples", "0"], "--samples")
