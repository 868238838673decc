"""The DuckDB store: transactions, idempotent blobs, variants, jobs, boards, locks (migrations: test_store_migrations.py)."""

import subprocess
import sys

import duckdb
import pytest

from qcore.qtyping import Evaluation, JobStatus, Latency, LayerStat, QlabError, VariantStatus
from qcore.store import Store


def _model_and_dataset(store):
    m = store.add_model(name="m", format="h5", sha256="abc", source_path="m.h5", input_shape=[None, 8, 8],
                        output_shape=[None, 10], keras_major=2)
    d = store.add_dataset(name="d", source="d.npz", sha256="def", input_scale=1.0, input_offset=0.0,
                          n_train=10, n_test=5, num_classes=10)
    return m, d


EV = Evaluation(0.8, 1.0, 0.9, ((2, 0), (1, 2)), 5, True)


def test_add_model_same_bytes_same_id(tmp_store):
    a, _ = _model_and_dataset(tmp_store)
    b, _ = _model_and_dataset(tmp_store)
    assert a == b


def test_save_variant_blob_named_by_sha_and_reruns_update(tmp_store):
    m, d = _model_and_dataset(tmp_store)
    v1 = tmp_store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", tflite=b"TFL3-one", evaluation=EV)
    v2 = tmp_store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", tflite=b"TFL3-one", evaluation=EV)
    assert v1 == v2
    row = tmp_store.variant(v1)
    assert row["path"].endswith(f"{row['sha256']}.tflite") and row["size_bytes"] == 8
    assert len(list(tmp_store.blob_dir.iterdir())) == 1
    assert row["accuracy"] == pytest.approx(0.8) and row["agreement"] == pytest.approx(0.9)
    assert tmp_store.confusion(v1) == [[2, 0], [1, 2]]


def test_save_variant_failure_midway_writes_nothing(tmp_store):
    m, d = _model_and_dataset(tmp_store)
    bad = Evaluation(0.5, 1.0, None, (), 0, True)
    with pytest.raises(duckdb.ConstraintException):
        tmp_store.save_variant(model_id=m, dataset_id=d, name="x", kind="not-a-kind", tflite=b"TFL3", evaluation=bad)
    assert tmp_store.query("SELECT count(*) AS n FROM variants").n[0] == 0
    assert tmp_store.query("SELECT count(*) AS n FROM evaluations").n[0] == 0


def test_failed_variant_keeps_its_error(tmp_store):
    m, d = _model_and_dataset(tmp_store)
    v = tmp_store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq",
                               status=VariantStatus.FAILED, error="no integer kernel for op SIN")
    row = tmp_store.variant(v)
    assert row["status"] == "failed" and "SIN" in row["error"]


def test_benchmark_metrics_are_rows_and_summary_shows_host_p50(tmp_store):
    m, d = _model_and_dataset(tmp_store)
    v = tmp_store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", tflite=b"TFL3x")
    lat = Latency("host", 1, True, 10, 2, 1.0, 2.0, 0.5, 0.7, 0.6, 0.9, 1.1, 0.1)
    b = tmp_store.add_benchmark(lat, sha256="s", variant_id=v)
    metrics = tmp_store.query("SELECT metric FROM bench_metrics WHERE benchmark_id = ?", [b]).metric
    assert {"init_ms", "first_ms", "p50_ms", "p99_ms", "std_ms"} <= set(metrics)
    assert tmp_store.variant(v)["host_p50_ms"] == pytest.approx(0.6)


def test_jobs_lifecycle_and_orphans(tmp_store):
    j = tmp_store.create_job("convert", {"recipes": ["int8"]})
    tmp_store.update_job(j, status=JobStatus.RUNNING, progress=1.7, message="half")
    job = tmp_store.job(j)
    assert job.status == JobStatus.RUNNING and job.progress == 1.0 and job.params == {"recipes": ["int8"]}
    assert tmp_store.fail_orphaned_jobs() == 1
    assert tmp_store.job(j).status == JobStatus.FAILED


def test_debug_run_stores_every_layer_row(tmp_store):
    m, d = _model_and_dataset(tmp_store)
    stats = [LayerStat("CONV_2D", i, f"t{i}", 10, 1, 0, 0.1, 0.01, 0.1, 0, 25.5, 1.0) for i in range(3)]
    run = tmp_store.save_debug_run(model_id=m, dataset_id=d, settings={}, model_metrics={}, stats=stats)
    assert list(tmp_store.layer_stats(run).tensor_name) == ["t0", "t1", "t2"]


def test_tune_runs_name_their_engines_from_the_job_else_the_chosen_variant(tmp_store):
    m, d = _model_and_dataset(tmp_store)
    run = {"model_id": m, "dataset_id": d, "max_drop": 0.5, "float_accuracy": 0.9, "target_accuracy": 0.895,
           "trials": [{"denylist": [], "accuracy": 0.9, "size_bytes": 8, "passed": True}]}
    # a search the dashboard queued: its job's params say who searched and who deployed
    searched = tmp_store.save_tune_run(**run, chosen_variant_id=None)
    job = tmp_store.create_job("tune", {"engine": "aeq", "deploy_engine": "tf"})
    tmp_store.update_job(job, status=JobStatus.DONE, result={"tune_run_id": searched})
    # a search the CLI ran: the chosen variant's settings and engine say it
    chosen = tmp_store.save_variant(model_id=m, dataset_id=d, name="int8 + 1 float layer@aeq", kind="tune",
                                    tflite=b"TFL3-t", settings={"search_engine": "aeq"}, engine="aeq")
    local = tmp_store.save_tune_run(**run, chosen_variant_id=chosen)
    unknown = tmp_store.save_tune_run(**run, chosen_variant_id=None)
    runs = tmp_store.tune_runs(m).set_index("id")
    assert list(runs.index) == [unknown, local, searched]
    assert (runs.loc[searched, "engine"], runs.loc[searched, "deploy_engine"]) == ("aeq", "tf")
    assert (runs.loc[local, "engine"], runs.loc[local, "deploy_engine"]) == ("aeq", "aeq")
    assert runs.loc[unknown, ["engine", "deploy_engine"]].isna().all()


def test_board_token_never_listed(tmp_store):
    tmp_store.add_board("imx", "http://10.0.0.2:8765/", "s3cret")
    boards = tmp_store.boards()
    assert boards[0].has_token and "s3cret" not in repr(boards)
    assert tmp_store.board_token("imx") == ("http://10.0.0.2:8765", "s3cret")
    with pytest.raises(QlabError, match="must start with http"):
        tmp_store.add_board("bad", "ftp://x", None)


def test_report_needs_title(tmp_store):
    with pytest.raises(QlabError, match="needs a title"):
        tmp_store.save_report("  ", "", {})
    rid = tmp_store.save_report("Int8 on NPU", "notes", {"variant_ids": [1]})
    assert tmp_store.report(rid)["content"] == {"variant_ids": [1]}


def test_store_locked_by_another_process_says_so_and_names_db(tmp_store):
    code = f"from qcore.store import Store; Store({str(tmp_store.path)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "in use by another process" in out.stderr and "--db" in out.stderr


def test_store_a_dead_process_left_opens_offline(tmp_path):
    """A writer killed before its checkpoint leaves a WAL; replaying it must not need the network
    (DuckDB would try to download its built-in core_functions; this machine has no network)."""
    db = tmp_path / "q.duckdb"
    code = f"import os; from qcore.store import Store; s = Store({str(db)!r}); s.create_job('convert'); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert db.with_name("q.duckdb.wal").exists()
    with Store(db) as store:
        assert store.variant_summary().empty and len(store.jobs()) == 1


def test_save_variant_stores_the_npu_verdict_it_is_given(tmp_store, tiny_tflite):
    from qcore.tflite.inspection import npu_verdict

    m, d = _model_and_dataset(tmp_store)
    f32 = tmp_store.save_variant(model_id=m, dataset_id=d, name="float32", kind="ptq", recipe="float32",
                                 tflite=tiny_tflite["float32"], npu=npu_verdict(tiny_tflite["float32"]))
    i8 = tmp_store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", recipe="int8",
                                tflite=tiny_tflite["int8"], npu=npu_verdict(tiny_tflite["int8"]))
    rows = tmp_store.variant_summary().set_index("variant_id")
    assert bool(rows.at[i8, "npu_ready"]) and rows.at[i8, "npu_label"] == "NPU-ready: integer-only"
    assert not bool(rows.at[f32, "npu_ready"]) and rows.at[f32, "npu_float_ops"] > 0
    assert "float ops fall back to the CPU" in rows.at[f32, "npu_verdict"]
    assert rows.at[i8, "npu_io"].startswith("float32") or "int8" in rows.at[i8, "npu_io"]
    # the float baseline of the size change is the measured float32 file
    assert rows.at[i8, "float_size_bytes"] == len(tiny_tflite["float32"])


def test_save_variant_never_parses_the_tflite(tmp_store, tiny_tflite, monkeypatch):
    import qcore.tflite.inspection as inspection

    monkeypatch.setattr(inspection, "npu_verdict", lambda *a: pytest.fail("the store parsed a .tflite"))
    m, d = _model_and_dataset(tmp_store)
    v = tmp_store.save_variant(model_id=m, dataset_id=d, name="x", kind="ptq", tflite=tiny_tflite["int8"])
    row = tmp_store.variant(v)
    assert row["npu_label"] is None or row["npu_label"] != row["npu_label"]  # NULL reads as None or NaN


def test_backfill_npu_reads_variants_saved_without_verdict(tmp_store, tiny_tflite):
    m, d = _model_and_dataset(tmp_store)
    v = tmp_store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", tflite=tiny_tflite["int8"])
    with tmp_store.transaction() as cur:
        cur.execute("DELETE FROM npu_verdicts")
    assert tmp_store.backfill_npu() == 1
    assert bool(tmp_store.variant(v)["npu_ready"])
    assert tmp_store.backfill_npu() == 0


def test_add_benchmark_stores_npu_operations_from_the_evk_capture(tmp_store):
    from pathlib import Path

    from board_agent.npu_profile import map_to_tflite, parse_npu_profile

    text = (Path(__file__).parents[1] / "board_agent" / "samples" / "04-imx8mp-vx-yolov3tiny-vivprofile.txt").read_text()
    npu = map_to_tflite(parse_npu_profile(text), ["CONV_2D"] * 24)
    lat = Latency("npu", 1, False, 50, 1, 33.1, 13049.0, 36.8, 38.9, 38.5, 40.0, 46.4, 2.0,
                  extra={"profile": {"available": True, "npu": npu}})
    bench_id = tmp_store.add_benchmark(lat, sha256="y" * 64, board="imx8mp-evk")
    rows = tmp_store.npu_ops(bench_id)
    assert len(rows) == 75 and list(rows["op_index"]) == list(range(75))
    assert set(rows["mapping"]) == {"none"} and rows["tflite_op"].isna().all()
    assert rows["time_ms"].sum() == pytest.approx(npu["total_ms"])
    assert (rows["clock_mhz"] == 1000.0).all() and rows["ddr_read_mb"].sum() == pytest.approx(npu["ddr_read_mb"])


def test_board_labels_pools_and_health_history(tmp_store):
    tmp_store.add_board("evk-1", "http://10.0.0.5:8765", None)
    tmp_store.add_board("evk-2", "http://10.0.0.6:8765", None)
    tmp_store.set_board_labels("evk-1", [("soc", "imx8mp"), ("tag", "lab")])
    tmp_store.sync_health_labels("evk-2", {"soc": "imx8mp", "bsp": "6.1-mickledore"})
    tmp_store.sync_health_labels("evk-1", {"soc": "imx93", "runtime": "tflite_runtime-2.11.1"})
    assert tmp_store.boards_matching("soc=imx8mp") == ["evk-1", "evk-2"]  # the user's soc wins on evk-1
    assert tmp_store.boards_matching("imx8mp tag=lab") == ["evk-1"]
    assert tmp_store.boards_matching("tflite_runtime-2.11.1") == ["evk-1"]
    with pytest.raises(QlabError, match="label key 'color' is not one of"):
        tmp_store.set_board_labels("evk-1", [("color", "red")])
    with pytest.raises(QlabError, match="empty pool query"):
        tmp_store.boards_matching(" , ")
    for i in range(5):
        tmp_store.log_health("evk-1", reachable=i % 2 == 0, health=None, error=f"check {i}", keep=3)
    hist = tmp_store.health_history("evk-1", limit=10)
    assert list(hist["error"]) == ["check 4", "check 3", "check 2"]
    tmp_store.remove_board("evk-1")
    assert tmp_store.board_labels("evk-1").empty
