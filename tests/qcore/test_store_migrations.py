"""The store's schema and its history: SCHEMA says what the migrations build, and a store made at any
earlier migration level opens with today's code, reaches today's schema and keeps its rows."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest

from qcore.qtyping import Evaluation, JobStatus, Latency
from qcore.store import MIGRATIONS, Store, accounts
from qcore.store.base import connect
from qcore.store.migrations import LEDGER

NAMES = [m.name for m in MIGRATIONS]
SQL = dict(MIGRATIONS)

# Representative rows, each written only into a store that has the migration it needs. Together they
# touch every table and every column a later migration adds, moves or rebuilds.
ROWS: list[tuple[str, str]] = [
    ("0001_initial", "INSERT INTO models (name, format, sha256, source_path, input_shape, output_shape, keras_major)"
                     " VALUES ('demo', 'demo', 'm1', 'demo.h5', '[null, 8, 8, 1]', '[null, 10]', 3)"),
    ("0001_initial", "INSERT INTO datasets (name, source, sha256, input_scale, input_offset, n_train, n_test,"
                     " num_classes, stored_path) VALUES ('digits', 'digits.npz', 'd1', 1.0, 0.0, 100, 50, 10, 'd.npz')"),
    ("0001_initial", "INSERT INTO reference_runs (model_id, dataset_id, accuracy, top5, n_samples)"
                     " VALUES (1, 1, 0.95, 1.0, 50)"),
    ("0001_initial", "INSERT INTO variants (model_id, dataset_id, name, kind, recipe, settings, status, sha256,"
                     " size_bytes, path, input_dtype, output_dtype) VALUES (1, 1, 'int8', 'ptq', 'int8',"
                     " '{\"recipe\": \"int8\"}', 'ok', 'v1', 1234, 'blobs/v1.tflite', 'int8', 'int8')"),
    ("0001_initial", "INSERT INTO variants (model_id, dataset_id, name, kind, status, error)"
                     " VALUES (1, 1, 'float16', 'ptq', 'failed', 'no kernel for SIN')"),
    ("0001_initial", "INSERT INTO evaluations (variant_id, dataset_id, device, n_samples, batched, confusion)"
                     " VALUES (1, 1, 'host', 50, true, '[[25, 0], [1, 24]]')"),
    ("0001_initial", "INSERT INTO eval_metrics VALUES (1, 'accuracy', 0.94), (1, 'top5', 1.0), (1, 'agreement', 0.98)"),
    ("0001_initial", "INSERT INTO benchmarks (variant_id, sha256, board, target, threads, xnnpack, runs, warmup,"
                     " details) VALUES (1, 'v1', 'host', 'host', 1, true, 10, 2, '{}')"),
    ("0001_initial", "INSERT INTO bench_metrics VALUES (1, 'p50_ms', 0.61), (1, 'min_ms', 0.5)"),
    ("0001_initial", "INSERT INTO jobs (kind, status, progress, message, params, result)"
                     " VALUES ('convert', 'done', 1, 'done', '{\"recipes\": [\"int8\"]}', '{\"variant_ids\": [1]}')"),
    ("0001_initial", "INSERT INTO jobs (kind, status, error) VALUES ('qat', 'failed', 'out of memory')"),
    ("0002_qat_debugger_tune", "INSERT INTO training_history VALUES (1, 1, 'loss', 0.3), (1, 2, 'loss', 0.2)"),
    ("0002_qat_debugger_tune", "INSERT INTO debug_runs (model_id, dataset_id, settings, model_metrics)"
                               " VALUES (1, 1, '{}', '{\"accuracy\": 0.9}')"),
    ("0002_qat_debugger_tune", "INSERT INTO layer_stats (debug_run_id, row_idx, op_name, tensor_idx, tensor_name,"
                               " rmse_scale) VALUES (1, 0, 'CONV_2D', 3, 'conv', 0.4)"),
    ("0002_qat_debugger_tune", "INSERT INTO tune_runs (model_id, dataset_id, max_drop, float_accuracy, target_accuracy,"
                               " chosen_variant_id) VALUES (1, 1, 0.01, 0.95, 0.94, 1)"),
    ("0002_qat_debugger_tune", "INSERT INTO tune_trials VALUES (1, 0, '[\"conv\"]', 0.945, 1300, true)"),
    ("0003_boards_reports", "INSERT INTO boards (name, url, token) VALUES ('evk', 'http://10.0.0.5:8765', 'old-token')"),
    ("0003_boards_reports", "INSERT INTO reports (id, title, notes, content)"
                            " VALUES ('r1', 'int8 on the NPU', 'notes', '{\"variant_ids\": [1]}')"),
    ("0004_jobs_on_workers", "UPDATE jobs SET worker = 'tcp://10.0.0.9:4000', worker_host = 'gpu-box',"
                             " live = '{\"epoch\": 2}' WHERE id = 1"),
    ("0004_jobs_on_workers", "INSERT INTO jobs (kind, status) VALUES ('debug', 'cancelled')"),
    ("0004_jobs_on_workers", "UPDATE models SET summary = '{\"layers\": 7}'"),
    ("0005_tflite_only", "INSERT INTO variants (model_id, dataset_id, name, kind, status)"
                         " VALUES (1, NULL, 'imported', 'imported', 'ok')"),
    ("0006_board_farm", "INSERT INTO board_labels VALUES ('evk', 'soc', 'imx8mp', 'health'), ('evk', 'tag', 'lab', 'user')"),
    ("0006_board_farm", "INSERT INTO board_health_log (board, reachable, runtime, queue_depth)"
                        " VALUES ('evk', true, 'tflite_runtime 2.11', 0)"),
    ("0006_board_farm", "INSERT INTO board_runs (kind, placement, pool, params) VALUES ('benchmark', 'each', 'soc=imx8mp', '{}')"),
    ("0006_board_farm", "INSERT INTO board_cells (run_id, cell, variant_id, sha256, target, board, status, benchmark_id)"
                        " VALUES (1, 0, 1, 'v1', 'npu', 'evk', 'done', 1)"),
    ("0006_board_farm", "INSERT INTO npu_op_profile (benchmark_id, op_index, name, clock_mhz, time_ms, mapping)"
                        " VALUES (1, 0, 'conv', 1000.0, 0.2, 'none')"),
    ("0008_secrets_trusted_image_shape", "UPDATE boards SET token = NULL"),  # 0008 moved tokens into files
    ("0008_secrets_trusted_image_shape", "UPDATE models SET trusted = true"),
    ("0008_secrets_trusted_image_shape", "UPDATE datasets SET image_shape = '[28, 28, 1]'"),
    ("0009_engine", "UPDATE variants SET engine = 'aeq' WHERE id = 1"),
    ("0009_engine", "UPDATE debug_runs SET engine = 'aeq'"),
    ("0010_users_tokens", "INSERT INTO users (email, name, role) VALUES ('ann@lab.example', 'Ann', 'admin')"),
    ("0010_users_tokens", f"INSERT INTO api_tokens (sha256, owner, name) VALUES ('{'a' * 64}', 'ann@lab.example', 'ci')"),
    *[("0010_users_tokens", f"UPDATE {t} SET created_by = 'ann@lab.example'")
      for t in ("models", "datasets", "variants", "jobs", "reports", "boards")],
    ("0011_npu_verdicts", "INSERT INTO npu_verdicts VALUES (1, true, 12, 0, 12, '{}', '[]', '[]', 'int8 -> int8',"
                          " 'integer-only', 'ok', 5000)"),
    ("0012_tune_run_engines", "UPDATE tune_runs SET engine = 'aeq', deploy_engine = 'tf', debug_run_id = 1"),
    ("0017_repair_variants", "INSERT INTO variants (model_id, dataset_id, name, kind, recipe, status, parent_variant_id)"
                             " VALUES (1, 1, 'int8-per-tensor + CLE + bias', 'repair', 'int8-per-tensor', 'ok', 1)"),
    ("0018_layer_names", "INSERT INTO layer_stats (debug_run_id, row_idx, op_name, tensor_idx, tensor_name,"
                         " rmse_scale, layer) VALUES (1, 1, 'FULLY_CONNECTED', 9, 'StatefulPartitionedCall:0', 0.3,"
                         " 'predictions')"),
]


def _build(path: Path, applied: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Makes a store as the code of its time did (the ledger, then each migration's SQL in `applied`'s
    order), writes ROWS into it and returns every table's rows by column, before closing it."""
    con = connect(path)
    try:
        con.execute(LEDGER)
        for name in applied:
            con.execute(SQL[name])
            con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [name])
        for needs, sql in ROWS:
            if needs in applied:
                con.execute(sql)
        return {t: _rows(con, t) for t in _tables(con) if t != "schema_migrations"}
    finally:
        con.close()


def _tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() ORDER BY 1").fetchall()]


def _rows(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str] | None = None) -> list[tuple[Any, ...]]:
    """A table's rows, with their column names, in a stable order."""
    cols = list(columns) if columns is not None else [r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() AND table_name = ?"
        " ORDER BY column_index", [table]).fetchall()]
    listed = ", ".join(f'"{c}"' for c in cols)
    return [tuple(cols), *con.execute(f"SELECT {listed} FROM {table} ORDER BY ALL").fetchall()]


def _catalog(con: duckdb.DuckDBPyConnection, *, column_order: bool = True) -> dict[str, Any]:
    """Everything the schema defines, as comparable values: tables, columns (name, type, nullability,
    default), constraints, views, sequences and indexes. Oids and counters (a reopened sequence starts
    where it stood) are left out."""
    db = "database_name = current_database()"
    order = "column_index" if column_order else "column_name"
    cat: dict[str, Any] = {
        "columns": con.execute(
            f"SELECT table_name, column_name, data_type, is_nullable, column_default FROM duckdb_columns()"
            f" WHERE {db} ORDER BY table_name, {order}").fetchall(),
        "constraints": con.execute(
            f"SELECT table_name, constraint_type, constraint_name, constraint_text, expression,"
            f" constraint_column_names FROM duckdb_constraints() WHERE {db} ORDER BY ALL").fetchall(),
        "views": con.execute(f"SELECT view_name, sql FROM duckdb_views() WHERE {db} AND NOT internal ORDER BY 1").fetchall(),
        "sequences": con.execute(
            f"SELECT sequence_name, min_value, max_value, increment_by, cycle FROM duckdb_sequences()"
            f" WHERE {db} ORDER BY 1").fetchall(),
        "indexes": con.execute(f"SELECT table_name, index_name, sql FROM duckdb_indexes() WHERE {db} ORDER BY ALL").fetchall(),
    }
    if column_order:  # DuckDB's own CREATE TABLE text for each table: every column in place, every constraint
        cat["tables"] = con.execute(f"SELECT table_name, sql FROM duckdb_tables() WHERE {db} ORDER BY 1").fetchall()
    else:
        cat["tables"] = _tables(con)
    return cat


def _assert_same_catalog(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Names what differs (missing and extra entries first), then checks the order too."""
    for key in want:
        missing = [x for x in want[key] if x not in got[key]]
        extra = [x for x in got[key] if x not in want[key]]
        assert (missing, extra) == ([], []), f"{key}: missing {missing}, extra {extra}"
        assert got[key] == want[key], key


@pytest.fixture()
def today(tmp_path: Path) -> Iterator[Store]:
    """A store created fresh by today's code (from SCHEMA), closed after the test."""
    store = Store(tmp_path / "fresh" / "qlab.duckdb")
    yield store
    store.close()


def test_migrations_list_is_numbered_in_order() -> None:
    assert NAMES == [
        "0001_initial", "0002_qat_debugger_tune", "0003_boards_reports", "0004_jobs_on_workers", "0005_tflite_only",
        "0006_board_farm",
        "0008_secrets_trusted_image_shape", "0009_engine", "0010_users_tokens", "0011_npu_verdicts",
        "0012_tune_run_engines", "0014_jobs_created_by_again", "0017_repair_variants",
        "0018_layer_names",
    ]
    numbers = [int(re.match(r"(\d{4})_[a-z0-9_]+$", n).group(1)) for n in NAMES]  # type: ignore[union-attr]
    assert numbers == sorted(set(numbers))


def test_migrate_fresh_store_records_every_migration(today: Store) -> None:
    assert today.applied_migrations() == NAMES
    assert today.migrate() == []


def test_schema_fresh_equals_every_migration_applied(today: Store, tmp_path: Path) -> None:
    """SCHEMA stays true: the tables, columns, constraints and views it makes are what the migrations make."""
    db = tmp_path / "migrated" / "qlab.duckdb"
    db.parent.mkdir()
    _build(db, NAMES)
    with Store(db) as migrated, migrated.transaction() as a, today.transaction() as b:
        assert migrated.applied_migrations() == NAMES
        _assert_same_catalog(_catalog(a), _catalog(b))


@pytest.mark.parametrize("level", range(len(NAMES)), ids=NAMES)
def test_migrate_store_at_each_level_reaches_today_keeping_rows(level: int, today: Store, tmp_path: Path) -> None:
    """A store made at migrations 0001..level, with rows in every table it has, opens with today's code."""
    applied = NAMES[: level + 1]
    _check_upgrade(applied, today, tmp_path)


def _check_upgrade(applied: Sequence[str], today: Store, tmp_path: Path, *, column_order: bool = True) -> None:
    """Builds a store with `applied`, opens it with today's code and checks schema, rows and writes."""
    db = tmp_path / "old" / "qlab.duckdb"
    db.parent.mkdir()
    before = _build(db, applied)
    with Store(db) as store:
        assert store.applied_migrations() == NAMES
        with store.transaction() as a, today.transaction() as b:
            _assert_same_catalog(_catalog(a, column_order=column_order), _catalog(b, column_order=column_order))
            for table, rows in before.items():
                columns = [c for c in rows[0] if not (table == "boards" and c == "token")]
                kept = [tuple(r[rows[0].index(c)] for c in columns) for r in rows[1:]]
                header, *now = _rows(a, table, columns)
                assert sorted(now, key=repr) == sorted(kept, key=repr), table
        # a board token the database held before 0008 now sits in its own file
        if "0003_boards_reports" in applied:
            token = None if "0008_secrets_trusted_image_shape" in applied else "old-token"
            assert store.board_token("evk") == ("http://10.0.0.5:8765", token)
            assert store.query("SELECT token FROM boards")["token"].isna().all()
        _check_writes(store)


def _check_writes(store: Store) -> None:
    """Today's writes and reads work on an upgraded store (each needs a column some migration added)."""
    m = store.add_model(name="m2", format="tflite", sha256="m2", source_path="m2.tflite", input_shape=[1, 4],
                        output_shape=[1, 2], keras_major=None, trusted=True)
    d = store.add_dataset(name="d2", source="d2.npz", sha256="d2", input_scale=1.0, input_offset=0.0, n_train=0,
                          n_test=4, num_classes=2, image_shape=[2, 2, 1])
    v = store.save_variant(model_id=m, dataset_id=d, name="int8", kind="ptq", recipe="int8", tflite=b"TFL3-bytes",
                           evaluation=Evaluation(0.75, 1.0, 0.9, ((2, 0), (1, 1)), 4, True), engine="aeq")
    store.add_benchmark(Latency("host", 1, True, 5, 1, 1.0, 2.0, 0.5, 0.7, 0.6, 0.9, 1.1, 0.1), sha256="s", variant_id=v)
    assert store.variant(v)["accuracy"] == pytest.approx(0.75) and store.variant(v)["engine"] == "aeq"
    assert len(store.variant_summary()) == len(store.query("SELECT id FROM variants"))
    job = store.create_job("convert", {"model_id": m})
    store.update_job(job, status=JobStatus.CANCELLED)
    assert store.job(job).status == JobStatus.CANCELLED
    accounts.sign_in(store, "bob@lab.example")
    store.set_model_summary(m, {"layers": 1})
    store.save_report("after the upgrade", "", {"variant_ids": [v]})


def _named(*numbers: str) -> list[str]:
    by_number = {n[:4]: n for n in NAMES}
    return [by_number[n] for n in numbers]


# Stores made on main before 0004 came in from the jobs-on-workers branch (merged at 66a028e): main's
# migration list at each commit that changed it, applied in its order, and one store upgraded at each.
# Today's code applies what they lack, 0004 last; columns may sit in another order (models.summary).
HISTORIES: dict[str, list[str]] = {
    "b90b6b2": _named("0001", "0002", "0003", "0011"),
    "b221ee1": _named("0001", "0002", "0003", "0009", "0011"),
    "7c6db13": _named("0001", "0002", "0003", "0008", "0009", "0011"),
    "98b234c": _named("0001", "0002", "0003", "0005", "0008", "0009", "0011"),
    "605367a": _named("0001", "0002", "0003", "0005", "0006", "0008", "0009", "0011"),
    "90242b8": _named("0001", "0002", "0003", "0005", "0006", "0008", "0009", "0010", "0011"),
    "b90b6b2-upgraded-to-90242b8": _named("0001", "0002", "0003", "0011", "0009", "0008", "0005", "0006", "0010"),
}


@pytest.mark.parametrize("applied", HISTORIES.values(), ids=HISTORIES.keys())
def test_migrate_store_from_main_before_0004_reaches_today_keeping_rows(
    applied: list[str], today: Store, tmp_path: Path
) -> None:
    """0004 rebuilds `jobs`; on a store that already has 0010 it must keep `created_by` and its values."""
    _check_upgrade(applied, today, tmp_path, column_order=False)


def test_migrate_store_whose_0004_dropped_created_by_gets_it_back(today: Store, tmp_path: Path) -> None:
    """Before 0004 kept `created_by`, a store made on main (0010 applied) lost the column when 0004 rebuilt
    `jobs`, and every job insert failed after. 0014 adds it back; the jobs and their other columns stay."""
    db = tmp_path / "damaged" / "qlab.duckdb"
    db.parent.mkdir()
    con = connect(db)
    try:
        con.execute(LEDGER)
        for name in _named("0001", "0002", "0003", "0011", "0009", "0008", "0005", "0006", "0010", "0004"):
            con.execute(SQL[name])  # 0004 as it ran then: the plain rebuild, no applier
            con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [name])
        con.execute("INSERT INTO jobs (kind, status, error) VALUES ('convert', 'failed', 'out of memory')")
        assert "created_by" not in [r[0] for r in con.execute("DESCRIBE jobs").fetchall()]
    finally:
        con.close()
    with Store(db) as store:
        assert store.applied_migrations() == NAMES
        with store.transaction() as a, today.transaction() as b:
            _assert_same_catalog(_catalog(a, column_order=False), _catalog(b, column_order=False))
        old = store.jobs()[0]
        assert (old.kind, old.error, old.created_by) == ("convert", "out of memory", None)
        _check_writes(store)  # creates a job: the insert names created_by


def test_layer_stats_of_a_run_stored_before_0018_read_back_with_the_keras_layer(tmp_path: Path) -> None:
    """A run stored before layer names were recorded has no `layer`: its rows read back with the Keras layer of
    the fused tensor name (the output keeps the converter's name: nobody recorded the signature's key)."""
    db = tmp_path / "old" / "qlab.duckdb"
    db.parent.mkdir()
    _build(db, NAMES[: NAMES.index("0017_repair_variants") + 1])
    con = connect(db)
    try:
        con.execute("INSERT INTO layer_stats (debug_run_id, row_idx, op_name, tensor_idx, tensor_name, rmse_scale)"
                    " VALUES (1, 1, 'CONV_2D', 4, 'model/block_7_depthwise_relu/Relu6;model/block_7_BN/Fused', 0.3),"
                    " (1, 2, 'FULLY_CONNECTED', 9, 'StatefulPartitionedCall:0', 0.4)")
    finally:
        con.close()
    with Store(db) as store:
        rows = store.layer_stats(1)
        assert rows["layer"].tolist() == ["conv", "block_7_depthwise_relu", "StatefulPartitionedCall"]
        assert rows["tensor_name"].tolist()[2] == "StatefulPartitionedCall:0"
