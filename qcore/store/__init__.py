"""The DuckDB store: one schema, numbered migrations, one owner that writes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from qcore.jobs.contract import json_default
from qcore.qtyping import (
    Board,
    Evaluation,
    Job,
    JobStatus,
    Latency,
    LayerStat,
    MatrixCell,
    NpuVerdict,
    QlabError,
    Scoring,
    VariantStatus,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# who is acting (a signed-in e-mail, a token's owner, "local"); new rows record it as created_by.
# The dashboard sets it per script run and per API request; a job's thread inherits its submitter's.
ACTOR: ContextVar[str | None] = ContextVar("qlab_actor", default=None)

SCHEMA_0001 = """
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

SCHEMA_0002 = """
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

SCHEMA_0003 = """
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

SCHEMA_0009 = """
-- which quantizer made a variant or a per-layer table: 'tf' (TFLiteConverter) or 'aeq' (AI Edge Quantizer)
ALTER TABLE variants ADD COLUMN IF NOT EXISTS engine VARCHAR DEFAULT 'tf';
ALTER TABLE debug_runs ADD COLUMN IF NOT EXISTS engine VARCHAR DEFAULT 'tf';
"""

SCHEMA_0011 = """
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

SCHEMA_0005 = """
-- a .tflite made elsewhere can be stored before any data is chosen for it: no dataset yet
ALTER TABLE variants ALTER COLUMN dataset_id DROP NOT NULL;
"""

SCHEMA_0006 = """
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

# who may do what, personal API tokens (only their sha256), and who made each row
SCHEMA_0010 = """
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

VIEWS = """
CREATE OR REPLACE VIEW v_latest_eval AS
SELECT * EXCLUDE (rn) FROM (
    SELECT e.*, row_number() OVER (PARTITION BY variant_id, device ORDER BY id DESC) AS rn
    FROM evaluations e
) WHERE rn = 1;

CREATE OR REPLACE VIEW v_eval_wide AS
SELECT e.id AS evaluation_id, e.variant_id, e.device, e.n_samples, e.batched, e.note,
       max(m.value) FILTER (WHERE m.metric = 'accuracy')  AS accuracy,
       max(m.value) FILTER (WHERE m.metric = 'top5')      AS top5,
       max(m.value) FILTER (WHERE m.metric = 'agreement') AS agreement,
       max(m.value) FILTER (WHERE m.metric = 'host_agreement') AS host_agreement,
       max(m.value) FILTER (WHERE m.metric = 'output_mse') AS output_mse
FROM v_latest_eval e LEFT JOIN eval_metrics m ON m.evaluation_id = e.id
GROUP BY ALL;

CREATE OR REPLACE VIEW v_bench_wide AS
SELECT b.id AS benchmark_id, b.variant_id, b.sha256, b.board, b.target, b.threads, b.xnnpack,
       b.runs, b.warmup, b.created_at,
       max(m.value) FILTER (WHERE m.metric = 'init_ms')  AS init_ms,
       max(m.value) FILTER (WHERE m.metric = 'first_ms') AS first_ms,
       max(m.value) FILTER (WHERE m.metric = 'min_ms')   AS min_ms,
       max(m.value) FILTER (WHERE m.metric = 'mean_ms')  AS mean_ms,
       max(m.value) FILTER (WHERE m.metric = 'p50_ms')   AS p50_ms,
       max(m.value) FILTER (WHERE m.metric = 'p90_ms')   AS p90_ms,
       max(m.value) FILTER (WHERE m.metric = 'p99_ms')   AS p99_ms,
       max(m.value) FILTER (WHERE m.metric = 'std_ms')   AS std_ms,
       max(m.value) FILTER (WHERE m.metric = 'peak_rss_mb') AS peak_rss_mb
FROM benchmarks b LEFT JOIN bench_metrics m ON m.benchmark_id = b.id
GROUP BY ALL;

-- one row per variant: what /compare and the overview show
CREATE OR REPLACE VIEW v_variant_summary AS
SELECT v.id AS variant_id, v.model_id, m.name AS model, v.dataset_id, d.name AS dataset,
       v.name AS variant, v.kind, v.recipe, v.engine, v.status, v.error, v.size_bytes, v.path, v.sha256,
       v.input_dtype, v.output_dtype, v.settings, v.updated_at, v.created_by,
       r.accuracy AS float_accuracy,
       e.accuracy, e.top5, e.agreement, e.batched, e.output_mse,
       coalesce(json_extract_string(v.settings, '$.scoring'), 'classes') AS scoring,
       (SELECT median(h.p50_ms) FROM v_bench_wide h
         WHERE h.variant_id = v.id AND h.board = 'host'
           AND h.benchmark_id = (SELECT max(h2.benchmark_id) FROM v_bench_wide h2
                                 WHERE h2.variant_id = v.id AND h2.board = 'host')) AS host_p50_ms,
       (SELECT min(bw.p50_ms) FROM v_bench_wide bw
         WHERE bw.variant_id = v.id AND bw.board <> 'host') AS board_p50_ms,
       n.ready AS npu_ready, n.label AS npu_label, n.summary AS npu_verdict, n.n_float_ops AS npu_float_ops,
       n.io AS npu_io,
       -- the size a float32 .tflite of the same model has (measured when one exists, else 4 bytes a weight)
       coalesce((SELECT min(f.size_bytes) FROM variants f WHERE f.model_id = v.model_id
                  AND f.recipe = 'float32' AND f.status = 'ok'), 4 * n.weight_elements) AS float_size_bytes
FROM variants v
JOIN models m ON m.id = v.model_id
LEFT JOIN datasets d ON d.id = v.dataset_id
LEFT JOIN reference_runs r ON r.model_id = v.model_id AND r.dataset_id = v.dataset_id
LEFT JOIN v_eval_wide e ON e.variant_id = v.id AND e.device = 'host'
LEFT JOIN npu_verdicts n ON n.variant_id = v.id;
"""

# jobs run on Dask workers: a cancelled state, which worker ran each job, when it started and ended,
# and the structured progress a worker publishes (QAT's epochs, each recipe's row); models keep a
# summary (layers, parameters) a worker recorded, so pages never load a model
SCHEMA_0004 = """
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
# secrets and provenance: who vouched for a model, the image size a zip of class folders was read at,
# and board tokens moved out of the database into one 0600 file each (see Store._move_board_tokens)
SCHEMA_0008 = """
ALTER TABLE models ADD COLUMN IF NOT EXISTS trusted BOOLEAN DEFAULT false;
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS image_shape VARCHAR;
UPDATE boards SET token = NULL;
"""
MIGRATION_0008 = "0008_secrets_trusted_image_shape"

# Numbered migrations; tests assert this list. Append only, never edit an applied one.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("0001_initial", SCHEMA_0001),
    ("0002_qat_debugger_tune", SCHEMA_0002),
    ("0003_boards_reports", SCHEMA_0003),
    ("0004_jobs_on_workers", SCHEMA_0004),
    ("0005_tflite_only", SCHEMA_0005),
    ("0006_board_farm", SCHEMA_0006),
    (MIGRATION_0008, SCHEMA_0008),
    ("0009_engine", SCHEMA_0009),
    ("0010_users_tokens", SCHEMA_0010),
    ("0011_npu_verdicts", SCHEMA_0011),
)

# label keys of a board; soc, bsp and runtime are also derived from its agent's health
BOARD_LABEL_KEYS: tuple[str, ...] = ("soc", "bsp", "runtime", "tag")
# health checks kept per board
HEALTH_HISTORY_KEEP = 200

LOCK_MARKERS = ("lock", "Conflicting lock", "being used by another process")


def default_db_path() -> Path:
    """`QLAB_DB`, else `data/qlab.duckdb` under `QLAB_DATA_DIR` or the repo."""
    env = os.environ.get("QLAB_DB")
    if env:
        return Path(env)
    return default_data_dir() / "qlab.duckdb"


def default_data_dir() -> Path:
    env = os.environ.get("QLAB_DATA_DIR")
    return Path(env) if env else REPO_ROOT / "data"


def private_dir(path: Path) -> Path:
    """Creates `path` if needed and makes it readable by its owner only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: object, what: str = "sha256") -> str:
    """`value` if it is 64 lowercase hex digits, else QlabError naming it (it becomes a file name)."""
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise QlabError(f"{what} {str(value)[:80]!r} is not a sha256 (64 lowercase hex digits)")
    return value


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=json_default)


def write_atomic(path: Path, data: bytes, part_suffix: str = ".part") -> None:
    """Writes `data` at `path` through a uniquely named temp file in the same folder, then a rename:
    a reader never sees half a file, and a failure leaves no temp file behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=part_suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _loads(value: Any) -> Any:
    if value is None or isinstance(value, dict | list):
        return value
    if isinstance(value, float):  # pandas turns an all-NULL JSON column into NaN
        return None
    return json.loads(value)


class Store:
    """The one owner of the DuckDB file. Threads share it; each call takes its own cursor.

    Args:
        path: the database file (created if missing).
        blob_dir: where `.tflite` files are kept, named by sha256. Defaults to
            `<db dir>/blobs`.

    Raises:
        QlabError: when another process holds the file.
    """

    def __init__(self, path: str | os.PathLike[str], blob_dir: str | os.PathLike[str] | None = None,
                 token_dir: str | os.PathLike[str] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.parent.resolve() == default_data_dir().resolve():
            private_dir(self.path.parent)
        self.blob_dir = Path(blob_dir) if blob_dir else self.path.parent / "blobs"
        self.blob_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.token_dir = Path(token_dir) if token_dir else self.path.parent / "board_tokens"
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            text = str(exc)
            if any(marker in text for marker in LOCK_MARKERS):
                raise QlabError(
                    f"database {self.path} is in use by another process (is the dashboard running?); "
                    "pass --db PATH (or set QLAB_DB) to use another file"
                ) from None
            raise QlabError(f"cannot open database {self.path}: {text}") from None
        except duckdb.Error as exc:
            raise QlabError(f"cannot open database {self.path}: {exc}") from None
        for f in (self.path, self.path.with_name(self.path.name + ".wal")):
            if f.exists():
                os.chmod(f, 0o600)  # the database holds every user's results: readable by its owner only
        self._lock = threading.RLock()
        self._tx = threading.local()
        self.migrate()

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside BEGIN/COMMIT; rolls back on any exception.

        Nested calls on the same thread join the outer transaction, so a caller can make several
        store writes (e.g. a bundle import) all-or-nothing with `with store.transaction():`.
        """
        with self._lock:
            outer = getattr(self._tx, "cur", None)
            if outer is not None:
                yield outer
                return
            cur = self._con.cursor()
            cur.execute("BEGIN TRANSACTION")
            self._tx.cur = cur
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                self._tx.cur = None
                cur.close()

    @contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The open transaction's cursor on this thread (so reads see its rows), else a fresh one."""
        outer = getattr(self._tx, "cur", None)
        if outer is not None:
            yield outer
            return
        cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """A read as a DataFrame, on its own cursor (safe from any thread)."""
        with self._reader() as cur:
            return cur.execute(sql, params or []).df()

    def _one(self, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
        with self._reader() as cur:
            return cur.execute(sql, params or []).fetchone()

    def migrate(self) -> list[str]:
        """Applies the migrations not yet recorded; returns the names applied now."""
        applied_now: list[str] = []
        with self.transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
            )
            done = {row[0] for row in cur.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                if version == MIGRATION_0008:
                    self._move_board_tokens(cur)
                cur.execute(sql)
                cur.execute("INSERT INTO schema_migrations (version) VALUES (?)", [version])
                applied_now.append(version)
            cur.execute(VIEWS)
        if applied_now:
            log.info("applied migrations %s to %s", applied_now, self.path)
        return applied_now

    def applied_migrations(self) -> list[str]:
        return list(self.query("SELECT version FROM schema_migrations ORDER BY version")["version"])

    # ------------------------------------------------------------------ blobs
    def put_blob(self, data: bytes, suffix: str = ".tflite") -> tuple[str, Path]:
        """Writes `data` under its sha256 (idempotent); returns (sha256, path)."""
        digest = sha256_bytes(data)
        path = self.blob_dir / f"{digest}{suffix}"
        if not path.exists():
            write_atomic(path, data, ".tmp")
        return digest, path

    def blob_path(self, sha256: str, suffix: str = ".tflite") -> Path:
        """Where the blob of this sha256 lives.

        Raises:
            QlabError: when `sha256` is not 64 hex digits (a value like `../../x` must never become a path).
        """
        return self.blob_dir / f"{check_sha256(sha256)}{suffix}"

    # ------------------------------------------------------------------ models & datasets
    def add_model(
        self,
        *,
        name: str,
        format: str,
        sha256: str,
        source_path: str,
        input_shape: Sequence[int | None],
        output_shape: Sequence[int | None],
        keras_major: int | None,
        trusted: bool = False,
    ) -> int:
        """Registers a model; the same bytes twice give the same id.

        Args:
            trusted: an admin vouched for it, so jobs load it without the safety checks.
        """
        with self.transaction() as cur:
            row = cur.execute("SELECT id FROM models WHERE sha256 = ?", [sha256]).fetchone()
            if row:
                if trusted:
                    cur.execute("UPDATE models SET trusted = true WHERE id = ?", [row[0]])
                return int(row[0])
            row = cur.execute(
                "INSERT INTO models (name, format, sha256, source_path, input_shape, output_shape, keras_major,"
                " trusted, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [name, format, sha256, source_path, json.dumps(list(input_shape)),
                 json.dumps(list(output_shape)), keras_major, bool(trusted), ACTOR.get()],
            ).fetchone()
            assert row is not None
            return int(row[0])

    def add_dataset(
        self,
        *,
        name: str,
        source: str,
        sha256: str,
        input_scale: float,
        input_offset: float,
        n_train: int,
        n_test: int,
        num_classes: int,
        stored_path: str | None = None,
        image_shape: Sequence[int | None] | None = None,
    ) -> int:
        """Registers a dataset with its preprocessing; the same data and preprocessing give the same id.

        Args:
            image_shape: for a folder or zip of images, the model input shape they were read at,
                so jobs read them the same way again.
        """
        with self.transaction() as cur:
            row = cur.execute(
                "SELECT id FROM datasets WHERE sha256 = ? AND input_scale = ? AND input_offset = ?",
                [sha256, input_scale, input_offset],
            ).fetchone()
            if row:
                return int(row[0])
            row = cur.execute(
                "INSERT INTO datasets (name, source, sha256, input_scale, input_offset, n_train, n_test,"
                " num_classes, stored_path, image_shape, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                [name, source, sha256, input_scale, input_offset, n_train, n_test, num_classes, stored_path,
                 None if image_shape is None else json.dumps(list(image_shape)), ACTOR.get()],
            ).fetchone()
            assert row is not None
            return int(row[0])

    def models(self) -> pd.DataFrame:
        return self.query("SELECT * FROM models ORDER BY id DESC")

    def datasets(self) -> pd.DataFrame:
        return self.query("SELECT * FROM datasets ORDER BY id DESC")

    def model(self, model_id: int) -> dict[str, Any]:
        df = self.query("SELECT * FROM models WHERE id = ?", [model_id])
        if df.empty:
            raise QlabError(f"no model with id {model_id}")
        return dict(df.iloc[0])

    def dataset(self, dataset_id: int) -> dict[str, Any]:
        df = self.query("SELECT * FROM datasets WHERE id = ?", [dataset_id])
        if df.empty:
            raise QlabError(f"no dataset with id {dataset_id}")
        return dict(df.iloc[0])

    def set_reference(self, model_id: int, dataset_id: int, accuracy: float, top5: float, n: int) -> None:
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO reference_runs (model_id, dataset_id, accuracy, top5, n_samples)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (model_id, dataset_id) DO UPDATE SET"
                " accuracy = excluded.accuracy, top5 = excluded.top5, n_samples = excluded.n_samples,"
                " created_at = now()",
                [model_id, dataset_id, accuracy, top5, n],
            )

    def reference(self, model_id: int, dataset_id: int) -> float | None:
        row = self._one(
            "SELECT accuracy FROM reference_runs WHERE model_id = ? AND dataset_id = ?", [model_id, dataset_id]
        )
        return None if row is None else float(row[0])

    # ------------------------------------------------------------------ variants & evaluations
    def save_variant(
        self,
        *,
        model_id: int,
        dataset_id: int | None,
        name: str,
        kind: str,
        recipe: str | None = None,
        settings: dict[str, Any] | None = None,
        status: VariantStatus = VariantStatus.OK,
        error: str = "",
        tflite: bytes | None = None,
        input_dtype: str = "",
        output_dtype: str = "",
        evaluation: Evaluation | None = None,
        parent_variant_id: int | None = None,
        history: Sequence[dict[str, float]] | None = None,
        npu: NpuVerdict | None = None,
        engine: str = "tf",
    ) -> int:
        """Writes a variant, its .tflite blob, its NPU verdict and its host evaluation in one transaction.

        Re-running the same (model, dataset, name) updates that row; evaluations accumulate,
        and views read the latest. A failed variant keeps its error and no half-written metrics.
        The NPU verdict is read from the .tflite here unless the caller passes one.
        `dataset_id` is None only for an imported .tflite stored before any data was chosen;
        such a variant has no evaluation.

        Returns:
            The variant id.
        """
        sha = path = None
        size = None
        if tflite is not None:
            sha, blob = self.put_blob(tflite)
            path, size = str(blob), len(tflite)
            if npu is None:
                npu = _lint_or_none(tflite, name)
        params = [kind, recipe, _json(settings), str(status), error or None, sha, size, path,
                  input_dtype or None, output_dtype or None, parent_variant_id, str(engine)]
        with self.transaction() as cur:
            row = cur.execute(
                "SELECT id FROM variants WHERE model_id = ? AND dataset_id IS NOT DISTINCT FROM ? AND name = ?",
                [model_id, dataset_id, name],
            ).fetchone()
            if row:
                variant_id = int(row[0])
                cur.execute(
                    "UPDATE variants SET kind = ?, recipe = ?, settings = ?, status = ?, error = ?, sha256 = ?,"
                    " size_bytes = ?, path = ?, input_dtype = ?, output_dtype = ?, parent_variant_id = ?,"
                    " engine = ?, updated_at = current_timestamp WHERE id = ?",
                    [*params, variant_id],
                )
            else:
                got = cur.execute(
                    "INSERT INTO variants (model_id, dataset_id, name, kind, recipe, settings, status, error,"
                    " sha256, size_bytes, path, input_dtype, output_dtype, parent_variant_id, engine, created_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [model_id, dataset_id, name, *params, ACTOR.get()],
                ).fetchone()
                assert got is not None
                variant_id = int(got[0])
            cur.execute("DELETE FROM npu_verdicts WHERE variant_id = ?", [variant_id])
            if npu is not None and tflite is not None:
                _insert_npu(cur, variant_id, npu)
            if evaluation is not None:
                if dataset_id is None:
                    raise QlabError(f"variant {name!r}: an evaluation needs the dataset it was made on")
                self._insert_evaluation(cur, variant_id, dataset_id, "host", evaluation, {})
            if history:
                cur.execute("DELETE FROM training_history WHERE variant_id = ?", [variant_id])
                for epoch, metrics in enumerate(history, start=1):
                    for metric, value in metrics.items():
                        cur.execute(
                            "INSERT INTO training_history VALUES (?, ?, ?, ?)",
                            [variant_id, epoch, metric, float(value)],
                        )
        return variant_id

    @staticmethod
    def _insert_evaluation(
        cur: duckdb.DuckDBPyConnection,
        variant_id: int,
        dataset_id: int,
        device: str,
        ev: Evaluation,
        extra_metrics: dict[str, float | None],
    ) -> int:
        got = cur.execute(
            "INSERT INTO evaluations (variant_id, dataset_id, device, n_samples, batched, note, confusion)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [variant_id, dataset_id, device, ev.n_samples, ev.batched, ev.note or None,
             json.dumps([list(r) for r in ev.confusion])],
        ).fetchone()
        assert got is not None
        eval_id = int(got[0])
        metrics: dict[str, float | None] = {"accuracy": ev.accuracy, "top5": ev.top5, "agreement": ev.agreement}
        if ev.scoring == Scoring.OUTPUTS:  # top-1 does not apply: no accuracy rows at all, not NaN ones
            metrics = {"agreement": ev.agreement}
        metrics.update(ev.output_metrics)
        metrics.update(extra_metrics)
        for metric, value in metrics.items():
            if value is not None:
                cur.execute("INSERT INTO eval_metrics VALUES (?, ?, ?)", [eval_id, metric, float(value)])
        return eval_id

    def add_evaluation(
        self,
        variant_id: int,
        dataset_id: int,
        evaluation: Evaluation,
        device: str = "host",
        extra_metrics: dict[str, float | None] | None = None,
    ) -> int:
        """Stores one more evaluation of a variant (e.g. on a board: device='board:<name>/<target>')."""
        with self.transaction() as cur:
            return self._insert_evaluation(cur, variant_id, dataset_id, device, evaluation, extra_metrics or {})

    def variant(self, variant_id: int) -> dict[str, Any]:
        df = self.query("SELECT * FROM v_variant_summary WHERE variant_id = ?", [variant_id])
        if df.empty:
            raise QlabError(f"no variant with id {variant_id}")
        return dict(df.iloc[0])

    def variant_summary(
        self, model_ids: Sequence[int] | None = None, variant_ids: Sequence[int] | None = None
    ) -> pd.DataFrame:
        """One row per variant with latest accuracy, size and latency (the /compare table)."""
        sql = "SELECT * FROM v_variant_summary"
        clauses, params = [], []
        if model_ids is not None:
            clauses.append("model_id IN (SELECT unnest(?::BIGINT[]))")
            params.append(list(model_ids))
        if variant_ids is not None:
            clauses.append("variant_id IN (SELECT unnest(?::BIGINT[]))")
            params.append(list(variant_ids))
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return self.query(sql + " ORDER BY model_id DESC, variant_id", params)

    def evaluations(self, variant_id: int) -> pd.DataFrame:
        """Latest evaluation per device for a variant, with the confusion matrix."""
        return self.query(
            "SELECT w.*, e.confusion FROM v_eval_wide w JOIN evaluations e ON e.id = w.evaluation_id"
            " WHERE w.variant_id = ? ORDER BY w.device",
            [variant_id],
        )

    def confusion(self, variant_id: int, device: str = "host") -> list[list[int]] | None:
        row = self._one(
            "SELECT confusion FROM v_latest_eval WHERE variant_id = ? AND device = ?", [variant_id, device]
        )
        return None if row is None or row[0] is None else _loads(row[0])

    def training_history(self, variant_id: int) -> pd.DataFrame:
        """Per-epoch metrics of a QAT variant, one column per metric."""
        long = self.query(
            "SELECT epoch, metric, value FROM training_history WHERE variant_id = ? ORDER BY epoch", [variant_id]
        )
        if long.empty:
            return pd.DataFrame(columns=["epoch"])
        return long.pivot(index="epoch", columns="metric", values="value").reset_index().rename_axis(None, axis=1)

    # ------------------------------------------------------------------ benchmarks
    def add_benchmark(
        self,
        latency: Latency,
        *,
        sha256: str,
        board: str = "host",
        variant_id: int | None = None,
    ) -> int:
        """Stores one timing (host or board) as a row plus its metrics as rows."""
        details = dict(latency.extra)
        with self.transaction() as cur:
            got = cur.execute(
                "INSERT INTO benchmarks (variant_id, sha256, board, target, threads, xnnpack, runs, warmup, details)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [variant_id, sha256, board, latency.target, latency.threads, latency.xnnpack, latency.runs,
                 latency.warmup, _json(details)],
            ).fetchone()
            assert got is not None
            bench_id = int(got[0])
            metrics = {k: v for k, v in asdict(latency).items() if k.endswith("_ms")}
            if isinstance(details.get("peak_rss_mb"), int | float):
                metrics["peak_rss_mb"] = details["peak_rss_mb"]
            for metric, value in metrics.items():
                if value is not None:
                    cur.execute("INSERT INTO bench_metrics VALUES (?, ?, ?)", [bench_id, metric, float(value)])
            self._insert_npu_ops(cur, bench_id, details)
        return bench_id

    @staticmethod
    def _insert_npu_ops(cur: duckdb.DuckDBPyConnection, bench_id: int, details: dict[str, Any]) -> None:
        """The driver's per-NPU-operation rows of a profiled npu benchmark, one row each."""
        prof = details.get("profile")
        npu = prof.get("npu") if isinstance(prof, dict) else None
        if not isinstance(npu, dict) or not npu.get("available"):
            return
        clock = float(npu.get("clock_mhz") or 0.0)
        for r in npu.get("ops", []):
            cur.execute(
                "INSERT INTO npu_op_profile (benchmark_id, op_index, name, op_type, clock_mhz, cycles_total,"
                " cycles_idle, cycles_busy, time_ms, busy_ms, share, ddr_read_mb, ddr_write_mb, total_read_mb,"
                " total_write_mb, tflite_index, tflite_op, mapping) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?)",
                [bench_id, int(r["index"]), r.get("name"), r.get("type"), clock, r.get("cycles_total"),
                 r.get("cycles_idle"), r.get("cycles_busy"), r.get("time_ms"), r.get("busy_ms"), r.get("share"),
                 r.get("ddr_read_mb"), r.get("ddr_write_mb"), r.get("total_read_mb"), r.get("total_write_mb"),
                 r.get("tflite_index"), r.get("tflite_op"), r.get("mapping") or "none"],
            )

    def benchmarks(self, variant_ids: Sequence[int] | None = None, board: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM v_bench_wide WHERE 1=1"
        params: list[Any] = []
        if variant_ids is not None:
            sql += " AND variant_id IN (SELECT unnest(?::BIGINT[]))"
            params.append(list(variant_ids))
        if board is not None:
            sql += " AND board = ?"
            params.append(board)
        return self.query(sql + " ORDER BY benchmark_id DESC", params)

    def benchmark_details(self, variant_id: int) -> pd.DataFrame:
        """Every timing of a variant with its `details` JSON parsed (per-op profiles live there), newest first."""
        df = self.query(
            "SELECT id AS benchmark_id, board, target, threads, details, created_at FROM benchmarks"
            " WHERE variant_id = ? ORDER BY id DESC",
            [variant_id],
        )
        df["details"] = [(_loads(d) or {}) for d in df["details"]]
        return df

    def needs_npu_backfill(self) -> bool:
        """Whether a stored .tflite has no NPU verdict yet (a store from before migration 0011)."""
        row = self._one(
            "SELECT count(*) FROM variants v LEFT JOIN npu_verdicts n ON n.variant_id = v.id"
            " WHERE n.variant_id IS NULL AND v.status = 'ok' AND v.path IS NOT NULL"
        )
        return bool(row and row[0])

    def backfill_npu(self) -> int:
        """Reads the NPU verdict of stored variants saved before verdicts existed; returns how many.

        Pure flatbuffer reading (no interpreter); a job runs it, never a page.
        """
        todo = self.query(
            "SELECT v.id, v.name, v.path FROM variants v LEFT JOIN npu_verdicts n ON n.variant_id = v.id"
            " WHERE n.variant_id IS NULL AND v.status = 'ok' AND v.path IS NOT NULL"
        )
        done = 0
        for r in todo.itertuples():
            p = Path(str(r.path))
            npu = _lint_or_none(p.read_bytes(), str(r.name)) if p.exists() else None
            if npu is not None:
                with self.transaction() as cur:
                    cur.execute("DELETE FROM npu_verdicts WHERE variant_id = ?", [int(r.id)])
                    _insert_npu(cur, int(r.id), npu)
                done += 1
        return done

    def variant_id_for_sha(self, sha256: str) -> int | None:
        row = self._one("SELECT max(id) FROM variants WHERE sha256 = ?", [sha256])
        return None if row is None or row[0] is None else int(row[0])

    # ------------------------------------------------------------------ debugger & tune
    def save_debug_run(
        self,
        *,
        model_id: int,
        dataset_id: int,
        settings: dict[str, Any],
        model_metrics: dict[str, Any],
        stats: Sequence[LayerStat],
        engine: str = "tf",
    ) -> int:
        """Stores one per-layer error run (TF's debugger or AEQ's validation) and its rows, in one transaction."""
        with self.transaction() as cur:
            got = cur.execute(
                "INSERT INTO debug_runs (model_id, dataset_id, settings, model_metrics, engine)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                [model_id, dataset_id, _json(settings), _json(model_metrics), str(engine)],
            ).fetchone()
            assert got is not None
            run_id = int(got[0])
            rows = [
                (run_id, i, s.op_name, s.tensor_idx, s.tensor_name, s.num_elements, s.stddev, s.mean_error,
                 s.max_abs_error, s.mean_squared_error, s.scale, s.zero_point, s.range, s.rmse_scale,
                 _json(s.extra) if s.extra else None)
                for i, s in enumerate(stats)
            ]
            if rows:
                cur.executemany(
                    "INSERT INTO layer_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
        return run_id

    def debug_runs(self, model_id: int | None = None) -> pd.DataFrame:
        sql = ("SELECT r.*, m.name AS model, d.name AS dataset, "
               "(SELECT count(*) FROM layer_stats s WHERE s.debug_run_id = r.id) AS n_layers "
               "FROM debug_runs r JOIN models m ON m.id = r.model_id JOIN datasets d ON d.id = r.dataset_id")
        params: list[Any] = []
        if model_id is not None:
            sql += " WHERE r.model_id = ?"
            params.append(model_id)
        return self.query(sql + " ORDER BY r.id DESC", params)

    def layer_stats(self, debug_run_id: int) -> pd.DataFrame:
        return self.query(
            "SELECT * EXCLUDE (debug_run_id) FROM layer_stats WHERE debug_run_id = ? ORDER BY row_idx",
            [debug_run_id],
        )

    def save_tune_run(
        self,
        *,
        model_id: int,
        dataset_id: int,
        max_drop: float,
        float_accuracy: float,
        target_accuracy: float,
        trials: Sequence[dict[str, Any]],
        chosen_variant_id: int | None,
    ) -> int:
        """Stores the search and every conversion it tried (keys: denylist, accuracy, size_bytes, passed)."""
        with self.transaction() as cur:
            got = cur.execute(
                "INSERT INTO tune_runs (model_id, dataset_id, max_drop, float_accuracy, target_accuracy,"
                " chosen_variant_id) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                [model_id, dataset_id, max_drop, float_accuracy, target_accuracy, chosen_variant_id],
            ).fetchone()
            assert got is not None
            run_id = int(got[0])
            for step, t in enumerate(trials):
                cur.execute(
                    "INSERT INTO tune_trials VALUES (?, ?, ?, ?, ?, ?)",
                    [run_id, step, json.dumps(list(t["denylist"])), t.get("accuracy"), t.get("size_bytes"),
                     bool(t["passed"])],
                )
        return run_id

    def tune_trials(self, tune_run_id: int) -> pd.DataFrame:
        return self.query("SELECT * FROM tune_trials WHERE tune_run_id = ? ORDER BY step", [tune_run_id])

    def tune_runs(self, model_id: int | None = None) -> pd.DataFrame:
        """Float-layer searches, newest first (the dashboard's /debugger list)."""
        sql, params = "SELECT * FROM tune_runs", []
        if model_id is not None:
            sql += " WHERE model_id = ?"
            params.append(model_id)
        return self.query(sql + " ORDER BY id DESC", params)

    def device_evaluations(self, variant_ids: Sequence[int]) -> pd.DataFrame:
        """Latest evaluation per (variant, device), host and boards: the accuracy-drift table."""
        return self.query(
            "SELECT variant_id, device, n_samples, accuracy, top5, agreement, host_agreement FROM v_eval_wide"
            " WHERE variant_id IN (SELECT unnest(?::BIGINT[])) ORDER BY variant_id, device",
            [list(variant_ids)],
        )

    # ------------------------------------------------------------------ boards
    def add_board(self, name: str, url: str, token: str | None) -> None:
        """Registers (or re-points) a board. The token goes to its own 0600 file, never into the database."""
        if not name.strip():
            raise QlabError("board name must not be empty")
        if not url.startswith(("http://", "https://")):
            raise QlabError(f"board URL {url!r} must start with http:// or https://")
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO boards (name, url, token) VALUES (?, ?, NULL) ON CONFLICT (name) DO UPDATE SET"
                " url = excluded.url, token = NULL",
                [name, url.rstrip("/")],
            )
            self._write_token(name, token)

    def boards(self) -> list[Board]:
        df = self.query("SELECT name, url, created_at FROM boards ORDER BY name")
        return [Board(r["name"], r["url"], self._token_path(r["name"]).exists(), str(r["created_at"]))
                for _, r in df.iterrows()]

    def board_token(self, name: str) -> tuple[str, str | None]:
        """(url, token) of a registered board, for the client only."""
        row = self._one("SELECT url FROM boards WHERE name = ?", [name])
        if row is None:
            known = ", ".join(b.name for b in self.boards()) or "none"
            raise QlabError(f"no board named {name!r} (known: {known}); add it with `qlab board add`")
        try:
            token = self._token_path(name).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            token = None
        return str(row[0]), token

    def remove_board(self, name: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM boards WHERE name = ?", [name])
            cur.execute("DELETE FROM board_labels WHERE board = ?", [name])
            self._token_path(name).unlink(missing_ok=True)

    def _token_path(self, name: str) -> Path:
        # board names are free text: the file is named by their digest
        return self.token_dir / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.token"

    def _write_token(self, name: str, token: str | None) -> None:
        path = self._token_path(name)
        if not token:
            path.unlink(missing_ok=True)
            return
        private_dir(self.token_dir)
        fd, tmp = tempfile.mkstemp(prefix=".token.", dir=self.token_dir)  # mkstemp files are 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(token + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _move_board_tokens(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Migration 0008: each token stored in the boards table moves to its own file."""
        exists = cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'boards'").fetchone()
        if not exists or not exists[0]:
            return
        for name, token in cur.execute("SELECT name, token FROM boards WHERE token IS NOT NULL").fetchall():
            self._write_token(str(name), str(token))

    # ------------------------------------------------------------------ board farm
    def set_board_labels(self, board: str, labels: Sequence[tuple[str, str]], *, remove: bool = False) -> None:
        """Adds (or with remove=True drops) the user's labels of a board, e.g. [("tag", "lab-2")].

        Raises:
            QlabError: unknown board, unknown key or an empty value (naming it).
        """
        self.board_token(board)  # raises for an unknown board
        for key, value in labels:
            if key not in BOARD_LABEL_KEYS:
                raise QlabError(f"label key {key!r} is not one of {', '.join(BOARD_LABEL_KEYS)}")
            if not value.strip():
                raise QlabError(f"label {key}= needs a value")
        with self.transaction() as cur:
            for key, value in labels:
                cur.execute("DELETE FROM board_labels WHERE board = ? AND key = ? AND value = ?",
                            [board, key, value.strip()])
                if not remove:
                    cur.execute("INSERT INTO board_labels (board, key, value, source) VALUES (?, ?, ?, 'user')",
                                [board, key, value.strip()])

    def sync_health_labels(self, board: str, derived: dict[str, str]) -> None:
        """Replaces the labels taken from a board's health (soc, bsp, runtime); the user's stay and win."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM board_labels WHERE board = ? AND source = 'health'", [board])
            user_keys = {r[0] for r in cur.execute(
                "SELECT DISTINCT key FROM board_labels WHERE board = ? AND source = 'user'", [board]).fetchall()}
            for key, value in derived.items():
                if key in BOARD_LABEL_KEYS and key not in user_keys and value.strip():
                    cur.execute("INSERT INTO board_labels (board, key, value, source) VALUES (?, ?, ?, 'health')"
                                " ON CONFLICT DO NOTHING", [board, key, value.strip()])

    def board_labels(self, board: str | None = None) -> pd.DataFrame:
        """Labels as rows (board, key, value, source)."""
        sql = "SELECT board, key, value, source FROM board_labels"
        params: list[Any] = []
        if board is not None:
            sql += " WHERE board = ?"
            params.append(board)
        return self.query(sql + " ORDER BY board, key, value", params)

    def boards_matching(self, pool: str) -> list[str]:
        """Registered boards whose labels satisfy a pool query, by name.

        A query is terms joined by commas or spaces, all of which must hold: `key=value` (e.g.
        `soc=imx8mp`, `tag=lab`), a bare value matching any label or the board's name, or `*`.

        Raises:
            QlabError: an empty query, or a term with an unknown key.
        """
        terms = [t for t in pool.replace(",", " ").split() if t]
        if not terms:
            raise QlabError("empty pool query; e.g. 'imx8mp', 'soc=imx8mp tag=lab' or '*'")
        labels = self.board_labels()
        names = [b.name for b in self.boards()]
        by_board: dict[str, set[tuple[str, str]]] = {n: set() for n in names}
        for r in labels.itertuples(index=False):
            by_board.setdefault(str(r.board), set()).add((str(r.key), str(r.value)))
        out = []
        for name in names:
            have = by_board.get(name, set())
            ok = True
            for term in terms:
                if term == "*":
                    continue
                key, sep, value = term.partition("=")
                if sep:
                    if key not in BOARD_LABEL_KEYS:
                        raise QlabError(f"pool term {term!r}: key {key!r} is not one of {', '.join(BOARD_LABEL_KEYS)}")
                    ok = ok and (key, value) in have
                else:
                    ok = ok and (term == name or any(v == term for _, v in have))
            if ok:
                out.append(name)
        return out

    def log_health(self, board: str, *, reachable: bool, health: dict[str, Any] | None, error: str = "",
                   keep: int = HEALTH_HISTORY_KEEP) -> None:
        """Appends one health check of a board and keeps its last `keep` checks."""
        info = health or {}
        rt = info.get("runtime")
        runtime = f"{rt.get('name') or ''} {rt.get('version') or ''}".strip() if isinstance(rt, dict) else None
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO board_health_log (board, reachable, runtime, targets, queue_depth, error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [board, reachable, runtime or None, _json(info.get("targets")), info.get("queue_depth"), error],
            )
            cur.execute(
                "DELETE FROM board_health_log WHERE board = ? AND id NOT IN"
                " (SELECT id FROM board_health_log WHERE board = ? ORDER BY id DESC LIMIT ?)",
                [board, board, keep],
            )

    def health_history(self, board: str | None = None, limit: int = 20) -> pd.DataFrame:
        """The last `limit` health checks per board, newest first."""
        sql = ("SELECT board, checked_at, reachable, runtime, targets, queue_depth, error FROM ("
               " SELECT *, row_number() OVER (PARTITION BY board ORDER BY id DESC) AS rn FROM board_health_log"
               + (" WHERE board = ?" if board is not None else "") + ") WHERE rn <= ? ORDER BY board, rn")
        return self.query(sql, ([board] if board is not None else []) + [limit])

    def create_board_run(self, kind: str, placement: str, pool: str, params: dict[str, Any]) -> int:
        with self.transaction() as cur:
            got = cur.execute("INSERT INTO board_runs (kind, placement, pool, params) VALUES (?, ?, ?, ?)"
                              " RETURNING id", [kind, placement, pool, _json(params)]).fetchone()
        assert got is not None
        return int(got[0])

    def save_cell(self, run_id: int, cell: MatrixCell) -> None:
        """Stores one finished cell of a run (replacing an earlier record of the same cell)."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM board_cells WHERE run_id = ? AND cell = ?", [run_id, cell.cell])
            cur.execute(
                "INSERT INTO board_cells (run_id, cell, variant_id, sha256, target, board, status, reason, attempts,"
                " benchmark_id, evaluation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, cell.cell, cell.variant_id, cell.sha256, cell.target, cell.board or None, str(cell.status),
                 cell.reason, _json(list(cell.attempts)), cell.benchmark_id, cell.evaluation_id],
            )

    def board_runs(self, limit: int = 20) -> pd.DataFrame:
        """Board runs, newest first, with their cell counts."""
        return self.query(
            "SELECT r.id AS run_id, r.kind, r.placement, r.pool, r.created_at,"
            " count(c.cell) AS cells, count(c.cell) FILTER (WHERE c.status = 'failed') AS failed"
            " FROM board_runs r LEFT JOIN board_cells c ON c.run_id = r.id GROUP BY ALL ORDER BY r.id DESC LIMIT ?",
            [limit])

    def board_cells(self, run_id: int) -> pd.DataFrame:
        """The cells of a run with their p50 (benchmarks) or accuracy (evaluations), in cell order."""
        return self.query(
            "SELECT c.*, b.p50_ms, b.min_ms, b.mean_ms, e.accuracy FROM board_cells c"
            " LEFT JOIN v_bench_wide b ON b.benchmark_id = c.benchmark_id"
            " LEFT JOIN (SELECT evaluation_id, value AS accuracy FROM eval_metrics WHERE metric = 'accuracy') e"
            "   ON e.evaluation_id = c.evaluation_id"
            " WHERE c.run_id = ? ORDER BY c.cell", [run_id])

    def latest_evaluation_id(self, variant_id: int, device: str) -> int | None:
        row = self._one("SELECT max(id) FROM evaluations WHERE variant_id = ? AND device = ?", [variant_id, device])
        return None if row is None or row[0] is None else int(row[0])

    def npu_ops(self, benchmark_id: int) -> pd.DataFrame:
        """Per-NPU-operation rows of one board benchmark (empty when it had no driver profile)."""
        return self.query("SELECT * FROM npu_op_profile WHERE benchmark_id = ? ORDER BY op_index", [benchmark_id])

    def latest_npu_profile(self, variant_id: int, board: str | None = None) -> pd.DataFrame:
        """The per-NPU-operation rows of the newest profiled npu benchmark of a variant (on `board`)."""
        sql = ("SELECT p.*, b.board FROM npu_op_profile p JOIN benchmarks b ON b.id = p.benchmark_id"
               " WHERE p.benchmark_id = (SELECT max(p2.benchmark_id) FROM npu_op_profile p2"
               " JOIN benchmarks b2 ON b2.id = p2.benchmark_id WHERE b2.variant_id = ?"
               + (" AND b2.board = ?" if board is not None else "") + ") ORDER BY p.op_index")
        return self.query(sql, [variant_id] + ([board] if board is not None else []))

    # ------------------------------------------------------------------ jobs
    def create_job(self, kind: str, params: dict[str, Any] | None = None) -> int:
        with self.transaction() as cur:
            got = cur.execute(
                "INSERT INTO jobs (kind, status, params, created_by) VALUES (?, 'queued', ?, ?) RETURNING id",
                [kind, _json(params or {}), ACTOR.get()],
            ).fetchone()
            assert got is not None
            return int(got[0])

    def update_job(
        self,
        job_id: int,
        *,
        status: JobStatus | None = None,
        progress: float | None = None,
        message: str | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        worker: str | None = None,
        worker_host: str | None = None,
        live: dict[str, Any] | None = None,
        only_active: bool = False,
    ) -> bool:
        """Updates a job row; returns False when nothing changed.

        Args:
            only_active: change the row only while it is queued or running, so a late progress
                event never reopens a job that already ended (failed, cancelled, done).
        """
        sets: list[str] = ["updated_at = current_timestamp"]
        params: list[Any] = []
        if status is not None:
            sets.append("status = ?")
            params.append(str(status))
            if status == JobStatus.RUNNING:
                sets.append("started_at = coalesce(started_at, current_timestamp)")
            elif status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
                sets.append("finished_at = current_timestamp")
        if progress is not None:
            sets.append("progress = ?")
            params.append(min(1.0, max(0.0, float(progress))))
        for column, value in (("message", message), ("error", error), ("worker", worker),
                              ("worker_host", worker_host)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        for column, obj in (("result", result), ("live", live)):
            if obj is not None:
                sets.append(f"{column} = ?")
                params.append(_json(obj))
        where = " WHERE id = ?" + (" AND status IN ('queued', 'running')" if only_active else "")
        with self.transaction() as cur:
            got = cur.execute(f"UPDATE jobs SET {', '.join(sets)}{where} RETURNING id", [*params, job_id]).fetchall()
        return bool(got)

    def free_variant_name(self, model_id: int, dataset_id: int, name: str, settings: dict[str, Any]) -> str:
        """`name`, unless a variant of that name keeps other layers float: then `name` with a short tag."""
        same = self.query(
            "SELECT settings FROM variants WHERE model_id = ? AND dataset_id = ? AND name = ?",
            [model_id, dataset_id, name],
        )
        if same.empty:
            return name

        def key(s: dict[str, Any]) -> str:
            return json.dumps([sorted(s.get("denylisted_nodes") or []), sorted(s.get("denylisted_ops") or []),
                               s.get("recipe")])

        stored = same["settings"].iloc[0]
        if isinstance(stored, str) and key(json.loads(stored)) == key(settings):
            return name  # the same choice again: re-running updates that variant
        return f"{name} #{hashlib.sha1(key(settings).encode()).hexdigest()[:4]}"

    def set_model_summary(self, model_id: int, summary: dict[str, Any]) -> None:
        """Records what a worker read of a model (layers, parameters, shapes) for pages to show."""
        with self.transaction() as cur:
            cur.execute("UPDATE models SET summary = ? WHERE id = ?", [_json(summary), model_id])

    def model_summary(self, model_id: int) -> dict[str, Any] | None:
        """A model's recorded summary, or None when no worker has read it yet."""
        row = self._one("SELECT summary FROM models WHERE id = ?", [model_id])
        return None if row is None else _loads(row[0])

    def job(self, job_id: int) -> Job:
        df = self.query("SELECT * FROM jobs WHERE id = ?", [job_id])
        if df.empty:
            raise QlabError(f"no job with id {job_id}")
        return _job_from_row(dict(df.iloc[0]))

    def jobs(self, limit: int = 50, kind: str | None = None, active: bool = False) -> list[Job]:
        """The newest jobs first; `active` keeps only queued and running ones."""
        sql, params = "SELECT * FROM jobs WHERE 1=1", []
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if active:
            sql += " AND status IN ('queued', 'running')"
        df = self.query(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [_job_from_row(dict(r)) for _, r in df.iterrows()]

    def fail_orphaned_jobs(self, reason: str = "the server restarted while this job ran") -> int:
        """Marks queued/running jobs failed; called once when the owner process starts."""
        with self.transaction() as cur:
            got = cur.execute(
                "UPDATE jobs SET status = 'failed', error = ?, updated_at = current_timestamp,"
                " finished_at = current_timestamp WHERE status IN ('queued', 'running') RETURNING id",
                [reason],
            ).fetchall()
        return len(got)

    # ------------------------------------------------------------------ reports
    def save_report(self, title: str, notes: str, content: dict[str, Any]) -> str:
        """Stores a report; returns its id, an unguessable short token used in `?report=<id>`."""
        if not title.strip():
            raise QlabError("a report needs a title")
        report_id = secrets.token_urlsafe(8)
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO reports (id, title, notes, content, created_by) VALUES (?, ?, ?, ?, ?)",
                [report_id, title.strip(), notes, _json(content), ACTOR.get()],
            )
        return report_id

    def report(self, report_id: str) -> dict[str, Any]:
        df = self.query("SELECT * FROM reports WHERE id = ?", [report_id])
        if df.empty:
            raise QlabError(f"no report with id {report_id!r}")
        row = dict(df.iloc[0])
        row["content"] = _loads(row["content"])
        return row

    def reports(self) -> pd.DataFrame:
        return self.query("SELECT id, title, created_by, created_at FROM reports ORDER BY created_at DESC")


def _lint_or_none(tflite: bytes, name: str) -> NpuVerdict | None:
    """The NPU verdict of a .tflite about to be stored; None (and a log line) when it cannot be read."""
    from qcore.tflite.inspection import npu_verdict

    try:
        return npu_verdict(tflite)
    except QlabError as exc:
        log.warning("variant %r: no NPU verdict: %s", name, exc)
        return None


def _insert_npu(cur: duckdb.DuckDBPyConnection, variant_id: int, npu: NpuVerdict) -> None:
    cur.execute(
        "INSERT INTO npu_verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [variant_id, npu.ready, npu.n_ops, npu.n_float_ops, npu.quant_ops, json.dumps(dict(npu.float_ops)),
         json.dumps(list(npu.custom_ops)), json.dumps(list(npu.problems)), npu.io, npu.summary, npu.label,
         npu.weight_elements],
    )


def _job_from_row(r: dict[str, Any]) -> Job:
    return Job(
        id=int(r["id"]),
        kind=str(r["kind"]),
        status=JobStatus(r["status"]),
        progress=float(r["progress"]),
        message=str(r["message"] or ""),
        params=_loads(r["params"]) or {},
        result=_loads(r["result"]),
        error=str(r["error"] or ""),
        created_at=str(r["created_at"]),
        updated_at=str(r["updated_at"]),
        worker=str(r.get("worker") or ""),
        worker_host=str(r.get("worker_host") or ""),
        started_at=_text(r.get("started_at")),
        finished_at=_text(r.get("finished_at")),
        live=_loads(r.get("live")),
        created_by=None if pd.isna(r.get("created_by")) else str(r.get("created_by")),
    )


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) or str(value) == "NaT" else str(value)
