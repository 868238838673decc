"""Today's schema in one place: every table as the migrations leave it, and the dashboard's views.

A fresh store is created from `SCHEMA`; an existing one reaches the same tables through the numbered
migrations in `migrations.py`. A test builds both and compares them, so this text stays true. Column
order is the migrations' (a column added later comes last), because some inserts list no columns.
"""

SCHEMA = """
-- which numbered migrations a store has (a fresh store records them all)
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    VARCHAR PRIMARY KEY,
    applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

------------------------------------------------------------------------------ models & datasets

-- a model as the user gave it (Keras file, SavedModel, the demo, or only a .tflite); the source is
-- copied under the data dir. `summary` is what a worker read of it (layers, parameters), so pages
-- never load a model; `trusted` means an admin vouched for it and jobs skip the safety checks.
CREATE SEQUENCE IF NOT EXISTS seq_models;
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
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    summary      JSON,
    trusted      BOOLEAN DEFAULT false,
    created_by   VARCHAR
);

-- labelled data and the preprocessing it is read with; the same data read two ways is two rows.
-- `image_shape` is the model input shape a folder or zip of images was read at.
CREATE SEQUENCE IF NOT EXISTS seq_datasets;
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
    image_shape  VARCHAR,
    created_by   VARCHAR,
    UNIQUE (sha256, input_scale, input_offset)
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

------------------------------------------------------------------------------ variants & evaluations

-- one .tflite made from (model, dataset) by a recipe, QAT, a denylist, the search, a repair, or imported; the
-- file is a blob named by its sha256. dataset_id is NULL for a .tflite stored before any data was
-- chosen for it. `engine` is the quantizer that made it: 'tf' (TFLiteConverter) or 'aeq' (AI Edge Quantizer).
CREATE SEQUENCE IF NOT EXISTS seq_variants;
CREATE TABLE IF NOT EXISTS variants (
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

-- the NPU lint of a variant's .tflite, read from the flatbuffer when the variant is saved
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

-- a QAT variant's metrics per epoch, one row per (epoch, metric)
CREATE TABLE IF NOT EXISTS training_history (
    variant_id BIGINT NOT NULL,
    epoch      INTEGER NOT NULL,
    metric     VARCHAR NOT NULL,
    value      DOUBLE,
    PRIMARY KEY (variant_id, epoch, metric)
);

-- one accuracy run of a variant; device is 'host' or 'board:<name>/<target>'. Views read the latest.
CREATE SEQUENCE IF NOT EXISTS seq_evaluations;
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

-- what an evaluation measured (accuracy, top5, agreement, output_mse...), one row per metric
CREATE TABLE IF NOT EXISTS eval_metrics (
    evaluation_id BIGINT NOT NULL,
    metric        VARCHAR NOT NULL,
    value         DOUBLE,
    PRIMARY KEY (evaluation_id, metric)
);

------------------------------------------------------------------------------ benchmarks

-- one timing of a .tflite; board is 'host' for this machine, else a registered board's name
CREATE SEQUENCE IF NOT EXISTS seq_benchmarks;
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

-- what a benchmark measured (init_ms, p50_ms, peak_rss_mb...), one row per metric
CREATE TABLE IF NOT EXISTS bench_metrics (
    benchmark_id BIGINT NOT NULL,
    metric       VARCHAR NOT NULL,
    value        DOUBLE,
    PRIMARY KEY (benchmark_id, metric)
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

------------------------------------------------------------------------------ debug & tune runs

-- one per-layer error run over (model, dataset): TF's debugger ('tf') or AEQ's validation ('aeq')
CREATE SEQUENCE IF NOT EXISTS seq_debug_runs;
CREATE TABLE IF NOT EXISTS debug_runs (
    id            BIGINT PRIMARY KEY DEFAULT nextval('seq_debug_runs'),
    model_id      BIGINT NOT NULL,
    dataset_id    BIGINT NOT NULL,
    settings      JSON,
    model_metrics JSON,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    engine        VARCHAR DEFAULT 'tf'
);

-- one row per quantized tensor of a debug run, in the run's order
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
    layer              VARCHAR,  -- the name users know: an output's signature key, else its Keras layer
    PRIMARY KEY (debug_run_id, row_idx)
);

-- one search for the fewest float layers that keep accuracy within max_drop of the float model
CREATE SEQUENCE IF NOT EXISTS seq_tune_runs;
CREATE TABLE IF NOT EXISTS tune_runs (
    id                BIGINT PRIMARY KEY DEFAULT nextval('seq_tune_runs'),
    model_id          BIGINT NOT NULL,
    dataset_id        BIGINT NOT NULL,
    max_drop          DOUBLE NOT NULL,
    float_accuracy    DOUBLE NOT NULL,
    target_accuracy   DOUBLE NOT NULL,
    chosen_variant_id BIGINT,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    engine            VARCHAR,  -- who ranked the layers and made the trials
    deploy_engine     VARCHAR,  -- who made the chosen variant
    debug_run_id      BIGINT    -- the per-layer run that ranked them
);

-- every conversion a search tried, in order
CREATE TABLE IF NOT EXISTS tune_trials (
    tune_run_id BIGINT NOT NULL,
    step        INTEGER NOT NULL,
    denylist    JSON NOT NULL,
    accuracy    DOUBLE,
    size_bytes  BIGINT,
    passed      BOOLEAN NOT NULL,
    PRIMARY KEY (tune_run_id, step)
);

------------------------------------------------------------------------------ boards & farm

-- a registered board agent. Its token lives in a 0600 file of its own (files.board_token_path):
-- the token column is kept only because dropping it needs a migration; it is always NULL.
CREATE TABLE IF NOT EXISTS boards (
    name       VARCHAR PRIMARY KEY,
    url        VARCHAR NOT NULL,
    token      VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR
);

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
CREATE SEQUENCE IF NOT EXISTS seq_board_health;
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
CREATE SEQUENCE IF NOT EXISTS seq_board_runs;
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

------------------------------------------------------------------------------ jobs

-- a job the dashboard, the API or the CLI queued and a Dask worker ran: which worker, when it started
-- and ended, and the structured progress it publishes (`live`: QAT's epochs, each recipe's row)
CREATE SEQUENCE IF NOT EXISTS seq_jobs;
CREATE TABLE IF NOT EXISTS jobs (
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
    live        JSON,
    created_by  VARCHAR
);

------------------------------------------------------------------------------ reports

-- a saved report; its id is the unguessable token of its `?report=` link
CREATE TABLE IF NOT EXISTS reports (
    id         VARCHAR PRIMARY KEY,
    title      VARCHAR NOT NULL CONSTRAINT report_title_nonempty CHECK (length(trim(title)) > 0),
    notes      VARCHAR NOT NULL DEFAULT '',
    content    JSON NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    created_by VARCHAR
);

------------------------------------------------------------------------------ users & tokens

-- who may do what (qcore.store.accounts); the first user on a fresh store becomes admin
CREATE TABLE IF NOT EXISTS users (
    email      VARCHAR PRIMARY KEY,
    name       VARCHAR NOT NULL DEFAULT '',
    role       VARCHAR NOT NULL CONSTRAINT user_role_known CHECK (role IN ('viewer', 'member', 'admin')),
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    last_seen  TIMESTAMP
);

-- personal API tokens, kept only as their sha256
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
"""

# the dashboard's summaries over the long metric rows; made again at every open (CREATE OR REPLACE)
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
