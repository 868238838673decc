"""The schema's history: numbered migrations in the order they apply, and the one function that
brings any store up to date.

Append only. A migration's SQL is what stores out there ran: never edit it once it has shipped; write
the next number instead, and change `schema.SCHEMA` to match (a test compares the two).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import duckdb

from qcore.store.files import write_board_token
from qcore.store.schema import SCHEMA, VIEWS


class Migration(NamedTuple):
    """One numbered step of the schema's history, recorded in `schema_migrations` by its name."""

    name: str
    sql: str


MIGRATION_0004 = "0004_jobs_on_workers"
MIGRATION_0008 = "0008_secrets_trusted_image_shape"

# the ledger as every store has had it since the first commit; SCHEMA holds the same table
LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)
"""

# 0001: models, datasets, variants and what is measured of them (evaluations, benchmarks as metric rows); jobs
SQL_0001 = """
CREATE SEQUENCE IF NOT EXISTS seq_models;
CREATE SEQUENCE IF NOT EXISTS seq_datasets;
CREATE SEQUENCE IF NOT EXISTS seq_variants;
CREATE SEQUENCE IF NOT EXISTS seq_evaluations;
CREATE SEQUENCE IF NOT EXISTS seq_benchmarks;
CREATE SEQUENCE IF NOT EXISTS seq_jobs;

-- a Keras model as the user gave it; the source is copied under the data dir
CREATE TABLE IF NOT EXISTS models (
    id           BIGINT PRIMARY KEY DEFAULT nextval('seq_models'),
    name         VARCHAR NOT NULL,
    format       VARCHAR NOT NULL CONSTRAINT model_format_known
                 CHECK (format IN ('keras', 'h5', 'savedmodel', 'demo', 'tflite')),
    sha256       VARCHAR NOT NULL UNIQUE,
    source_path  VARCHAR NOT NULL,
    input_shape  VARCHAR NOT NULL,
    output_shape VARCHAR NOT NULL,
    keras_major  INTEGER,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS datasets (
    id           BIGINT PRIMARY KEY DEFAULT nextval('seq_datasets'),
    name         VARCHAR NOT NULL,
    source       VARCHAR NOT NULL,
    sha256       VARCHAR NOT NULL,
    input_scale  DOUBLE NOT NULL DEFAULT 1.0,
    input_offset DOUBLE NOT NULL DEFAULT 0.0,
    n_train      INTEGER NOT NULL CONSTRAINT dataset_n_train_nonneg CHECK (n_train >= 0),
    n_test       INTEGER NOT NULL CONSTRAINT dataset_n_test_positive CHECK (n_test > 0),
    num_classes  INTEGER NOT NULL,
    stored_path  VARCHAR,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (sha256, input_scale, input_offset)
);

-- one .tflite made from (model, dataset) by a recipe, QAT, a denylist, or the search
CREATE TABLE IF NOT EXISTS variants (
    id            BIGINT PRIMARY KEY DEFAULT nextval('seq_variants'),
    model_id      BIGINT NOT NULL,
    dataset_id    BIGINT NOT NULL,
    name          VARCHAR NOT NULL,
    kind          VARCHAR NOT NULL CONSTRAINT variant_kind_known
                  CHECK (kind IN ('ptq', 'qat', 'selective', 'tune', 'imported')),
    recipe        VARCHAR,
    settings      JSON,
    status        VARCHAR NOT NULL CONSTRAINT variant_status_known CHECK (status IN ('ok', 'failed')),
    error         VARCHAR,
    sha256        VARCHAR,
    size_bytes    BIGINT,
    path          VARCHAR,
    input_dtype   VARCHAR,
    output_dtype  VARCHAR,
    parent_variant_id BIGINT,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (model_id, dataset_id, name)
);

-- float Keras accuracy per (model, dataset): the reference every variant is compared with
CREATE TABLE IF NOT EXISTS reference_runs (
    model_id    BIGINT NOT NULL,
    dataset_id  BIGINT NOT NULL,
    accuracy    DOUBLE NOT NULL,
    top5        DOUBLE NOT NULL,
    n_samples   INTEGER NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model_id, dataset_id)
);

-- device is 'host' or 'board:<name>/<target>'
CREATE TABLE IF NOT EXISTS evaluations (
    id          BIGINT PRIMARY KEY DEFAULT nextval('seq_evaluations'),
    variant_id  BIGINT NOT NULL,
    dataset_id  BIGINT NOT NULL,
    device      VARCHAR NOT NULL DEFAULT 'host',
    n_samples   INTEGER NOT NULL,
    batched     BOOLEAN NOT NULL,
    note        VARCHAR,
    confusion   JSON,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS eval_metrics (
    evaluation_id BIGINT NOT NULL,
    metric        VARCHAR NOT NULL,
    value         DOUBLE,
    PRIMARY KEY (evaluation_id, metric)
);

-- board is 'host' for this machine, else a registered board's name
CREATE TABLE IF NOT EXISTS benchmarks (
    id          BIGINT PRIMARY KEY DEFAULT nextval('seq_benchmarks'),
    variant_id  BIGINT,
    sha256      VARCHAR NOT NULL,
    board       VARCHAR NOT NULL,
    target      VARCHAR NOT NULL CONSTRAINT benchmark_target_known
                CHECK (target IN ('host', 'npu', 'cpu', 'cpu-plain')),
    threads     INTEGER NOT NULL,
    xnnpack     BOOLEAN NOT NULL,
    runs        INTEGER NOT NULL,
    warmup      INTEGER NOT NULL,
    details     JSON,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS bench_metrics (
    benchmark_id BIGINT NOT NULL,
    metric       VARCHAR NOT NULL,
    value        DOUBLE,
    PRIMARY KEY (benchmark_id, metric)
);

CREATE TABLE IF NOT EXISTS jobs (
    id          BIGINT PRIMARY KEY DEFAULT nextval('seq_jobs'),
    kind        VARCHAR NOT NULL,
    status      VARCHAR NOT NULL CONSTRAINT job_status_known
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
    progress    DOUBLE NOT NULL DEFAULT 0 CONSTRAINT job_progress_fraction CHECK (progress BETWEEN 0 AND 1),
    message     VARCHAR NOT NULL DEFAULT '',
    params      JSON,
    result      JSON,
    error       VARCHAR NOT NULL DEFAULT '',
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""

# 0002: QAT's training history, the debugger's per-layer rows, the float-layer search
SQL_0002 = """
CREATE SEQUENCE IF NOT EXISTS seq_debug_runs;
CREATE SEQUENCE IF NOT EXISTS seq_tune_runs;

CREATE TABLE IF NOT EXISTS training_history (
    variant_id BIGINT NOT NULL,
    epoch      INTEGER NOT NULL,
    metric     VARCHAR NOT NULL,
    value      DOUBLE,
    PRIMARY KEY (variant_id, epoch, metric)
);

CREATE TABLE IF NOT EXISTS debug_runs (
    id            BIGINT PRIMARY KEY DEFAULT nextval('seq_debug_runs'),
    model_id      BIGINT NOT NULL,
    dataset_id    BIGINT NOT NULL,
    settings      JSON,
    model_metrics JSON,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS layer_stats (
    debug_run_id       BIGINT NOT NULL,
    row_idx            INTEGER NOT NULL,
    op_name            VARCHAR NOT NULL,
    tensor_idx         INTEGER NOT NULL,
    tensor_name        VARCHAR NOT NULL,
    num_elements       DOUBLE,
    stddev             DOUBLE,
    mean_error         DOUBLE,
    max_abs_error      DOUBLE,
    mean_squared_error DOUBLE,
    scale              DOUBLE,
    zero_point         DOUBLE,
    range              DOUBLE,
    rmse_scale         DOUBLE,
    extra              JSON,
    PRIMARY KEY (debug_run_id, row_idx)
);

CREATE TABLE IF NOT EXISTS tune_runs (
    id                BIGINT PRIMARY KEY DEFAULT nextval('seq_tune_runs'),
    model_id          BIGINT NOT NULL,
    dataset_id        BIGINT NOT NULL,
    max_drop          DOUBLE NOT NULL,
    float_accuracy    DOUBLE NOT NULL,
    target_accuracy   DOUBLE NOT NULL,
    chosen_variant_id BIGINT,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS tune_trials (
    tune_run_id BIGINT NOT NULL,
    step        INTEGER NOT NULL,
    denylist    JSON NOT NULL,
    accuracy    DOUBLE,
    size_bytes  BIGINT,
    passed      BOOLEAN NOT NULL,
    PRIMARY KEY (tune_run_id, step)
);
"""

# 0003: registered boards and saved reports
SQL_0003 = """
CREATE TABLE IF NOT EXISTS boards (
    name       VARCHAR PRIMARY KEY,
    url        VARCHAR NOT NULL,
    token      VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS reports (
    id         VARCHAR PRIMARY KEY,
    title      VARCHAR NOT NULL CONSTRAINT report_title_nonempty CHECK (length(trim(title)) > 0),
    notes      VARCHAR NOT NULL DEFAULT '',
    content    JSON NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""

# 0004: jobs run on Dask workers: a cancelled state, which worker ran each job, when it started and ended,
# and the structured progress a worker publishes (QAT's epochs, each recipe's row); models keep a
# summary (layers, parameters) a worker recorded, so pages never load a model. The status CHECK gains
# 'cancelled', so `jobs` is rebuilt (see _rebuild_jobs_keeping_created_by).
SQL_0004 = """
CREATE TABLE jobs_0004 (
    id          BIGINT PRIMARY KEY DEFAULT nextval('seq_jobs'),
    kind        VARCHAR NOT NULL,
    status      VARCHAR NOT NULL CONSTRAINT job_status_known
                CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    progress    DOUBLE NOT NULL DEFAULT 0 CONSTRAINT job_progress_fraction CHECK (progress BETWEEN 0 AND 1),
    message     VARCHAR NOT NULL DEFAULT '',
    params      JSON,
    result      JSON,
    error       VARCHAR NOT NULL DEFAULT '',
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    worker      VARCHAR NOT NULL DEFAULT '',
    worker_host VARCHAR NOT NULL DEFAULT '',
    started_at  TIMESTAMP,
    finished_at TIMESTAMP,
    live        JSON
);
INSERT INTO jobs_0004 (id, kind, status, progress, message, params, result, error, created_at, updated_at)
    SELECT id, kind, status, progress, message, params, result, error, created_at, updated_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_0004 RENAME TO jobs;
ALTER TABLE models ADD COLUMN summary JSON;
"""

# 0005: a .tflite made elsewhere can be stored before any data is chosen for it
SQL_0005 = """
-- a .tflite made elsewhere can be stored before any data is chosen for it: no dataset yet
ALTER TABLE variants ALTER COLUMN dataset_id DROP NOT NULL;
"""

# 0006: the board farm: labels and pools, health history, matrix runs and their cells, NPU profiles
SQL_0006 = """
CREATE SEQUENCE IF NOT EXISTS seq_board_runs;
CREATE SEQUENCE IF NOT EXISTS seq_board_health;

-- labels of a board: soc, bsp and runtime come from its agent's health (source 'health') unless the
-- user set them; tags are the user's. A pool is a query over these labels.
CREATE TABLE IF NOT EXISTS board_labels (
    board  VARCHAR NOT NULL,
    key    VARCHAR NOT NULL CONSTRAINT board_label_key_known CHECK (key IN ('soc', 'bsp', 'runtime', 'tag')),
    value  VARCHAR NOT NULL CONSTRAINT board_label_value_nonempty CHECK (length(trim(value)) > 0),
    source VARCHAR NOT NULL DEFAULT 'user' CONSTRAINT board_label_source_known CHECK (source IN ('user', 'health')),
    PRIMARY KEY (board, key, value)
);

-- every health check of a board, so "the board was down" stays visible afterwards
CREATE TABLE IF NOT EXISTS board_health_log (
    id          BIGINT PRIMARY KEY DEFAULT nextval('seq_board_health'),
    board       VARCHAR NOT NULL,
    checked_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    reachable   BOOLEAN NOT NULL,
    runtime     VARCHAR,
    targets     JSON,
    queue_depth INTEGER,
    error       VARCHAR NOT NULL DEFAULT ''
);

-- one benchmark or accuracy run over variants x targets x boards; placement 'board' (one named
-- board), 'each' (every board of a pool) or 'any' (any free board of a pool)
CREATE TABLE IF NOT EXISTS board_runs (
    id         BIGINT PRIMARY KEY DEFAULT nextval('seq_board_runs'),
    kind       VARCHAR NOT NULL CONSTRAINT board_run_kind_known CHECK (kind IN ('benchmark', 'accuracy')),
    placement  VARCHAR NOT NULL CONSTRAINT board_run_placement_known CHECK (placement IN ('board', 'each', 'any')),
    pool       VARCHAR NOT NULL,
    params     JSON,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- one (variant, target, board) cell of a run: a result, or the reason it has none
CREATE TABLE IF NOT EXISTS board_cells (
    run_id        BIGINT NOT NULL,
    cell          INTEGER NOT NULL,
    variant_id    BIGINT,
    sha256        VARCHAR NOT NULL,
    target        VARCHAR NOT NULL,
    board         VARCHAR,
    status        VARCHAR NOT NULL CONSTRAINT board_cell_status_known CHECK (status IN ('done', 'failed')),
    reason        VARCHAR NOT NULL DEFAULT '',
    attempts      JSON,
    benchmark_id  BIGINT,
    evaluation_id BIGINT,
    PRIMARY KEY (run_id, cell)
);

-- per-NPU-operation figures of a board benchmark, from the VeriSilicon driver's profiler. An NPU
-- operation is a fused graph node; tflite_index/tflite_op are set only when mapping = 'by_order'.
CREATE TABLE IF NOT EXISTS npu_op_profile (
    benchmark_id   BIGINT NOT NULL,
    op_index       INTEGER NOT NULL,
    name           VARCHAR,
    op_type        VARCHAR,
    clock_mhz      DOUBLE NOT NULL,
    cycles_total   DOUBLE,
    cycles_idle    DOUBLE,
    cycles_busy    DOUBLE,
    time_ms        DOUBLE,
    busy_ms        DOUBLE,
    share          DOUBLE,
    ddr_read_mb    DOUBLE,
    ddr_write_mb   DOUBLE,
    total_read_mb  DOUBLE,
    total_write_mb DOUBLE,
    tflite_index   INTEGER,
    tflite_op      VARCHAR,
    mapping        VARCHAR NOT NULL CONSTRAINT npu_op_mapping_known CHECK (mapping IN ('by_order', 'none')),
    PRIMARY KEY (benchmark_id, op_index)
);
"""

# 0008: secrets and provenance: who vouched for a model, the image size a zip of class folders was read at,
# and board tokens moved out of the database into one 0600 file each (see _move_board_tokens_then_run)
SQL_0008 = """
ALTER TABLE models ADD COLUMN IF NOT EXISTS trusted BOOLEAN DEFAULT false;
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS image_shape VARCHAR;
UPDATE boards SET token = NULL;
"""

# 0009: which quantizer made a variant or a per-layer table
SQL_0009 = """
-- which quantizer made a variant or a per-layer table: 'tf' (TFLiteConverter) or 'aeq' (AI Edge Quantizer)
ALTER TABLE variants ADD COLUMN IF NOT EXISTS engine VARCHAR DEFAULT 'tf';
ALTER TABLE debug_runs ADD COLUMN IF NOT EXISTS engine VARCHAR DEFAULT 'tf';
"""

# 0010: who may do what, personal API tokens (only their sha256), and who made each row
SQL_0010 = """
CREATE TABLE IF NOT EXISTS users (
    email      VARCHAR PRIMARY KEY,
    name       VARCHAR NOT NULL DEFAULT '',
    role       VARCHAR NOT NULL CONSTRAINT user_role_known CHECK (role IN ('viewer', 'member', 'admin')),
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    last_seen  TIMESTAMP
);

CREATE SEQUENCE IF NOT EXISTS seq_api_tokens;
CREATE TABLE IF NOT EXISTS api_tokens (
    id         BIGINT PRIMARY KEY DEFAULT nextval('seq_api_tokens'),
    sha256     VARCHAR NOT NULL UNIQUE CONSTRAINT api_token_sha256_hex CHECK (regexp_full_match(sha256, '[0-9a-f]{64}')),
    owner      VARCHAR NOT NULL,
    name       VARCHAR NOT NULL DEFAULT '',
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    last_used  TIMESTAMP,
    revoked_at TIMESTAMP
);

ALTER TABLE models ADD COLUMN IF NOT EXISTS created_by VARCHAR;
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS created_by VARCHAR;
ALTER TABLE variants ADD COLUMN IF NOT EXISTS created_by VARCHAR;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS created_by VARCHAR;
ALTER TABLE reports ADD COLUMN IF NOT EXISTS created_by VARCHAR;
ALTER TABLE boards ADD COLUMN IF NOT EXISTS created_by VARCHAR;
"""

# 0011: the NPU lint of every variant's .tflite
SQL_0011 = """
-- the NPU lint of a variant's .tflite, computed from the flatbuffer when the variant is saved
CREATE TABLE IF NOT EXISTS npu_verdicts (
    variant_id      BIGINT PRIMARY KEY,
    ready           BOOLEAN NOT NULL,
    n_ops           INTEGER NOT NULL,
    n_float_ops     INTEGER NOT NULL,
    quant_ops       INTEGER NOT NULL,
    float_ops       JSON NOT NULL,
    custom_ops      JSON NOT NULL,
    problems        JSON NOT NULL,
    io              VARCHAR NOT NULL,
    summary         VARCHAR NOT NULL,
    label           VARCHAR NOT NULL,
    weight_elements BIGINT NOT NULL
);
"""

# 0012: a search names who ranked and tried, who made the chosen variant, and the ranking run
SQL_0012 = """
ALTER TABLE tune_runs ADD COLUMN IF NOT EXISTS engine VARCHAR;
ALTER TABLE tune_runs ADD COLUMN IF NOT EXISTS deploy_engine VARCHAR;
ALTER TABLE tune_runs ADD COLUMN IF NOT EXISTS debug_run_id BIGINT;
"""

# 0014: `jobs.created_by` back on stores whose 0004 ran after 0010 before 0004 learned to keep it (those
# stores lost the column, and every job insert since failed); a no-op everywhere else. The values are gone.
SQL_0014 = """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS created_by VARCHAR;
"""


# 0017: a repaired variant (a recipe applied after CLE, bias correction, AdaRound) is a kind of its own.
# DuckDB cannot alter a CHECK, so the table is rebuilt with every column in place and its rows kept.
SQL_0017 = """
CREATE TABLE variants_0017 (
    id                BIGINT PRIMARY KEY DEFAULT nextval('seq_variants'),
    model_id          BIGINT NOT NULL,
    dataset_id        BIGINT,
    name              VARCHAR NOT NULL,
    kind              VARCHAR NOT NULL CONSTRAINT variant_kind_known
                      CHECK (kind IN ('ptq', 'qat', 'selective', 'tune', 'imported', 'repair')),
    recipe            VARCHAR,
    settings          JSON,
    status            VARCHAR NOT NULL CONSTRAINT variant_status_known CHECK (status IN ('ok', 'failed')),
    error             VARCHAR,
    sha256            VARCHAR,
    size_bytes        BIGINT,
    path              VARCHAR,
    input_dtype       VARCHAR,
    output_dtype      VARCHAR,
    parent_variant_id BIGINT,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    engine            VARCHAR DEFAULT 'tf',
    created_by        VARCHAR,
    UNIQUE (model_id, dataset_id, name)
);
INSERT INTO variants_0017 (id, model_id, dataset_id, name, kind, recipe, settings, status, error, sha256, size_bytes,
                           path, input_dtype, output_dtype, parent_variant_id, created_at, updated_at, engine,
                           created_by)
    SELECT id, model_id, dataset_id, name, kind, recipe, settings, status, error, sha256, size_bytes, path,
           input_dtype, output_dtype, parent_variant_id, created_at, updated_at, engine, created_by FROM variants;
DROP TABLE variants;
ALTER TABLE variants_0017 RENAME TO variants;
"""

# the name users know for each per-layer row (a model output's signature key, else its Keras layer); rows of
# older runs keep NULL and read back with the Keras layer of their tensor name
SQL_0018 = """
ALTER TABLE layer_stats ADD COLUMN layer VARCHAR;
"""

# In order; tests assert this list. No 0007 ever shipped.
MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_initial", SQL_0001),
    Migration("0002_qat_debugger_tune", SQL_0002),
    Migration("0003_boards_reports", SQL_0003),
    Migration(MIGRATION_0004, SQL_0004),
    Migration("0005_tflite_only", SQL_0005),
    Migration("0006_board_farm", SQL_0006),
    Migration(MIGRATION_0008, SQL_0008),
    Migration("0009_engine", SQL_0009),
    Migration("0010_users_tokens", SQL_0010),
    Migration("0011_npu_verdicts", SQL_0011),
    Migration("0012_tune_run_engines", SQL_0012),
    Migration("0014_jobs_created_by_again", SQL_0014),
    Migration("0017_repair_variants", SQL_0017),
    Migration("0018_layer_names", SQL_0018),
)

Applier = Callable[[duckdb.DuckDBPyConnection, Migration, Path], None]


def _count(cur: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = cur.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _run_sql(cur: duckdb.DuckDBPyConnection, migration: Migration, token_dir: Path) -> None:
    cur.execute(migration.sql)


def _rebuild_jobs_keeping_created_by(cur: duckdb.DuckDBPyConnection, migration: Migration, token_dir: Path) -> None:
    """0004 rebuilds `jobs` from the columns it knew of. It came from a branch: a store made on main
    before that branch merged already has 0010, whose `created_by` the rebuild would drop (and every
    later job insert would fail). Such a store keeps the column and its values."""
    keep = _count(cur, "SELECT count(*) FROM duckdb_columns() WHERE database_name = current_database()"
                       " AND table_name = 'jobs' AND column_name = 'created_by'")
    if keep:
        cur.execute("CREATE TEMP TABLE jobs_created_by AS SELECT id, created_by FROM jobs")
    cur.execute(migration.sql)
    if keep:
        cur.execute("ALTER TABLE jobs ADD COLUMN created_by VARCHAR")
        cur.execute("UPDATE jobs SET created_by = k.created_by FROM jobs_created_by k WHERE jobs.id = k.id")
        cur.execute("DROP TABLE jobs_created_by")


def _move_board_tokens_then_run(cur: duckdb.DuckDBPyConnection, migration: Migration, token_dir: Path) -> None:
    """0008: each token stored in the boards table moves to its own 0600 file before the column is blanked."""
    for name, token in cur.execute("SELECT name, token FROM boards WHERE token IS NOT NULL").fetchall():
        write_board_token(token_dir, str(name), str(token))
    cur.execute(migration.sql)


# migrations whose SQL alone cannot carry a store's data across; every other one just runs its SQL
APPLIERS: dict[str, Applier] = {
    MIGRATION_0004: _rebuild_jobs_keeping_created_by,
    MIGRATION_0008: _move_board_tokens_then_run,
}


def migrate(cur: duckdb.DuckDBPyConnection, token_dir: Path) -> list[str]:
    """Brings the database behind `cur` to today's schema and (re)creates the views.

    An empty database is created from `SCHEMA` and records every migration as applied; any other
    gets the migrations it lacks, in order.

    Args:
        cur: a cursor inside the caller's transaction, so a failed migration leaves nothing behind.
        token_dir: where migration 0008 moves board tokens to.

    Returns:
        The migrations applied now: every one for a new store, none for an up-to-date one.
    """
    if not _count(cur, "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"):
        cur.execute(SCHEMA)
        cur.executemany("INSERT INTO schema_migrations (version) VALUES (?)", [[m.name] for m in MIGRATIONS])
        applied_now = [m.name for m in MIGRATIONS]
    else:
        cur.execute(LEDGER)
        done = {row[0] for row in cur.execute("SELECT version FROM schema_migrations").fetchall()}
        applied_now = []
        for migration in MIGRATIONS:
            if migration.name in done:
                continue
            APPLIERS.get(migration.name, _run_sql)(cur, migration, token_dir)
            cur.execute("INSERT INTO schema_migrations (version) VALUES (?)", [migration.name])
            applied_now.append(migration.name)
    cur.execute(VIEWS)
    return applied_now
