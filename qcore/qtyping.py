"""Shared types of qlab: str-valued enums and one frozen dataclass per record."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class QlabError(Exception):
    """A user-facing error: bad input, a refused conversion, a locked store.

    The CLI prints its message as one line and exits 2; the dashboard shows it in words.
    """


class DiskError(QlabError):
    """The disk refused a write (full, read-only, not permitted); the message names the path and why.

    The API answers it with 507, the CLI and the pages like any QlabError.
    """


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception, for a QlabError that names what failed."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Role(enum.StrEnum):
    """What a signed-in user (or their API token) may do; each role includes the ones before it."""

    VIEWER = "viewer"  # report links and read-only pages
    MEMBER = "member"  # upload, run jobs, make reports, benchmark
    ADMIN = "admin"  # boards, roles, trusted uploads

    @property
    def rank(self) -> int:
        return ("viewer", "member", "admin").index(self.value)

    def allows(self, needed: Role) -> bool:
        """True when this role may do what `needed` may."""
        return self.rank >= needed.rank


class VariantStatus(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"


class VariantKind(enum.StrEnum):
    PTQ = "ptq"  # post-training recipe from the registry
    QAT = "qat"  # quantization-aware training
    SELECTIVE = "selective"  # debugger's denylisted build
    TUNE = "tune"  # chosen by the float-layer search
    IMPORTED = "imported"  # a .tflite made elsewhere
    REPAIR = "repair"  # a recipe applied to the model after repairs (CLE, bias correction, AdaRound)


class Scoring(enum.StrEnum):
    """How a model's outputs are scored."""

    CLASSES = "classes"  # one [N, classes] output: top-1 / top-5 against labels, argmax agreement
    OUTPUTS = "outputs"  # detectors, landmarks, regressions: MSE / cosine against the reference's outputs


# what each Scoring means, in the words reports and pages show
SCORING_LABELS: dict[str, str] = {Scoring.CLASSES.value: "top-1 vs labels", Scoring.OUTPUTS.value: "MSE vs reference"}


class Target(enum.StrEnum):
    HOST = "host"
    NPU = "npu"
    CPU = "cpu"
    CPU_PLAIN = "cpu-plain"


# Progress callback: fraction in [0, 1] and a short message for the user.
Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """The default progress callback: ignore."""


def progress_slice(progress: Progress, start: float, end: float) -> Progress:
    """Maps a sub-step's [0, 1] progress onto [start, end] of the caller's."""

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * max(0.0, min(1.0, fraction)), message)

    return report


@dataclass(frozen=True)
class Recipe:
    """A post-training conversion recipe: a name, a line for users, and converter settings."""

    name: str
    summary: str
    optimize: bool = False
    representative: bool = False
    # names of tf.lite.OpsSet members, e.g. ("TFLITE_BUILTINS_INT8",)
    supported_ops: tuple[str, ...] = ()
    # numpy dtype names for converter.target_spec.supported_types, e.g. ("float16",)
    supported_types: tuple[str, ...] = ()
    inference_input_type: str | None = None
    inference_output_type: str | None = None
    per_channel: bool = True
    integer_only: bool = False


@dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled data in the Keras convention, with explicit preprocessing.

    The model sees `x * input_scale + input_offset` (see `preprocess`).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_scale: float = 1.0
    input_offset: float = 0.0
    source: str = ""
    class_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        ys = [self.y_train, self.y_test]
        top = max((int(y.max()) for y in ys if y.size), default=-1)
        return max(top + 1, len(self.class_names))

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        """The float input the model expects."""
        return (x.astype(np.float32) * np.float32(self.input_scale) + np.float32(self.input_offset)).astype(
            np.float32
        )

    def calibration(self, n: int) -> np.ndarray:
        """The first `n` training samples in file order, preprocessed."""
        return self.preprocess(self.x_train[:n])

    def test_inputs(self) -> np.ndarray:
        return self.preprocess(self.x_test)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A Keras model and where it came from."""

    name: str
    path: str
    format: str  # "keras" | "h5" | "savedmodel" | "demo"
    keras_model: Any
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    keras_major: int  # 2 for tf_keras models, 3 for Keras 3


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of one model on one test split."""

    accuracy: float
    top5: float
    agreement: float | None  # share of argmax equal to the float model's; None without reference
    confusion: tuple[tuple[int, ...], ...]
    n_samples: int
    batched: bool
    note: str = ""
    size_bytes: int = 0
    input_dtype: str = ""
    output_dtype: str = ""
    scoring: str = Scoring.CLASSES.value
    # with Scoring.OUTPUTS: output_mse, output_max_abs_error, output_cosine against the reference
    output_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantResult:
    """One .tflite an engine step made (or why it could not), with every figure publishing it needs.

    Made where the work runs (a job worker, the CLI); the owner's `qcore.lab.publish` writes it once
    (blob, row, NPU verdict, evaluation, host timing) and hands it back with `variant_id` and `path`.
    """

    name: str  # unique per (model, dataset); `qcore.engines.variant_name` adds the engine's mark
    kind: VariantKind
    recipe: str | None
    engine: str
    settings: dict[str, Any] = field(default_factory=dict)
    tflite: bytes | None = field(default=None, repr=False)  # None when the step failed
    error: str = ""
    evaluation: Evaluation | None = None
    npu: NpuVerdict | None = None  # read from the flatbuffer where the bytes were made
    latency: Latency | None = None  # host timing, when the job timed it
    history: tuple[dict[str, float], ...] = ()  # QAT's epochs
    parent_variant_id: int | None = None
    # the owner's ids and where it kept the file; unset until published
    variant_id: int | None = None
    path: str = ""

    @property
    def status(self) -> VariantStatus:
        return VariantStatus.OK if self.tflite is not None else VariantStatus.FAILED

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.tflite).hexdigest() if self.tflite is not None else ""

    @property
    def size_bytes(self) -> int:
        return len(self.tflite) if self.tflite is not None else 0

    @property
    def input_dtype(self) -> str:
        return (self.evaluation.input_dtype if self.evaluation and self.evaluation.input_dtype
                else self.npu.input_dtype if self.npu else "")

    @property
    def output_dtype(self) -> str:
        return (self.evaluation.output_dtype if self.evaluation and self.evaluation.output_dtype
                else self.npu.output_dtype if self.npu else "")


@dataclass(frozen=True)
class Reference:
    """The float model's accuracy on a test split: what every variant of the pair is compared with."""

    accuracy: float
    top5: float
    n_samples: int


@dataclass(frozen=True)
class ModelRecord:
    """A model a job loaded or made, as the owner records it (the demo, an upload, a .tflite import)."""

    name: str
    format: str
    sha256: str
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    keras_major: int | None
    source_path: str = ""  # where the owner keeps the source; "" with `file` set: the owner chooses
    trusted: bool = False
    summary: dict[str, Any] | None = None  # layers, parameters, shapes: what pages show without loading
    # (path under the data directory, bytes): a file the job made that the owner keeps (the demo's .h5)
    file: tuple[str, bytes] | None = field(default=None, repr=False)
    model_id: int | None = None


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset as the owner registers it (the demo's digits, the CLI's --data)."""

    name: str
    source: str
    sha256: str
    input_scale: float
    input_offset: float
    n_train: int
    n_test: int
    num_classes: int
    stored_path: str | None = None  # where its file is read again by later jobs; None for digits
    image_shape: tuple[int | None, ...] | None = None  # the model input a folder of images was read at
    dataset_id: int | None = None


@dataclass(frozen=True)
class ConvertReport:
    """A model converted with several recipes: the float reference and one result per recipe."""

    model: str
    float_accuracy: float
    variants: tuple[VariantResult, ...]
    reference: Reference | None = None
    model_id: int | None = None
    dataset_id: int | None = None


@dataclass(frozen=True)
class DemoResult:
    """First start: the demo model trained, its data, and its conversion."""

    model: ModelRecord
    dataset: DatasetRecord
    report: ConvertReport


@dataclass(frozen=True)
class HostTiming:
    """One stored variant timed on a worker's CPU."""

    variant_id: int
    sha256: str
    latency: Latency


@dataclass(frozen=True)
class HostBenchResult:
    timings: tuple[HostTiming, ...]


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int
    is_constant: bool

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1


@dataclass(frozen=True)
class OpInfo:
    index: int
    name: str  # builtin op name, e.g. "CONV_2D"
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    is_float: bool  # computes in floating point


@dataclass(frozen=True)
class LintFinding:
    severity: str  # "error" | "warning" | "info"
    code: str  # e.g. "float-op", "per-channel", "io-dtype", "quant-pair"
    message: str


@dataclass(frozen=True)
class Inspection:
    path: str
    size_bytes: int
    ops: tuple[OpInfo, ...]
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    integer_only: bool
    float_ops: tuple[str, ...]
    lint: tuple[LintFinding, ...]
    # tensor name → the signature's output key ("StatefulPartitionedCall:0" → "predictions")
    output_names: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.integer_only:
            return "integer-only"
        return "float ops left: " + ", ".join(self.float_ops)


@dataclass(frozen=True)
class NpuVerdict:
    """Will a .tflite run on the i.MX8M Plus NPU: the compact answer shown beside every variant.

    Computed from the flatbuffer (qcore.tflite.inspection.npu_verdict) when a variant is saved.
    """

    ready: bool  # no lint error: every op is 8-bit integer and has an NPU kernel
    n_ops: int
    float_ops: tuple[tuple[str, int], ...]  # (op, count) computing in float, QUANTIZE/DEQUANTIZE aside
    quant_ops: int  # QUANTIZE/DEQUANTIZE inside the graph (round trips through float on the CPU)
    custom_ops: tuple[str, ...]
    problems: tuple[str, ...]  # codes of the lint errors, e.g. "float-op", "int16-activations"
    input_dtype: str
    output_dtype: str
    weight_elements: int  # numbers held in constant tensors: 4 bytes each in float32

    @property
    def n_float_ops(self) -> int:
        return sum(n for _, n in self.float_ops)

    @property
    def io(self) -> str:
        return f"{self.input_dtype or '?'} → {self.output_dtype or '?'}"

    @property
    def summary(self) -> str:
        """One line: "NPU-ready: integer-only" or what falls back to the CPU and why."""
        if self.ready:
            return "NPU-ready: integer-only"
        parts: list[str] = []
        if self.float_ops:
            ops = ", ".join(f"{n}× {name}" for name, n in self.float_ops[:4])
            more = f" and {len(self.float_ops) - 4} more kinds" if len(self.float_ops) > 4 else ""
            parts.append(f"{self.n_float_ops} float ops fall back to the CPU ({ops}{more})")
        if self.quant_ops:
            parts.append(f"{self.quant_ops} QUANTIZE/DEQUANTIZE inside the graph")
        if self.custom_ops:
            parts.append("custom ops " + ", ".join(self.custom_ops) + " run on the CPU")
        for code, words in (("int16-activations", "int16 activations (16x8) run on the CPU"),
                            ("float16-weights", "float16 weights need float kernels")):
            if code in self.problems:
                parts.append(words)
        return "not NPU-ready: " + "; ".join(parts or ["see the Inspect page"])

    @property
    def label(self) -> str:
        """A table cell in words (no emoji: hosts without an emoji font show empty boxes)."""
        if self.ready:
            return f"{NPU_READY}: integer-only"
        if self.float_ops:
            return f"{NPU_NOT_READY}: {self.n_float_ops} float ops → CPU"
        if self.custom_ops:
            return f"{NPU_NOT_READY}: {len(self.custom_ops)} custom ops → CPU"
        return f"{NPU_NOT_READY}: " + ", ".join(self.problems)


# the NPU verdict's two marks, in words every font has
NPU_READY = "NPU-ready"
NPU_NOT_READY = "not NPU-ready"
# stores made before labels were words keep "✅ integer-only" / "❌ 3 float ops → CPU"
_EMOJI_MARKS = (("✅ ", f"{NPU_READY}: "), ("❌ ", f"{NPU_NOT_READY}: "))


def npu_label_words(label: object) -> str:
    """A stored NPU label in words: an old "✅ …" / "❌ …" label gets its mark spelled out; "" for none."""
    if not isinstance(label, str) or not label:
        return ""
    for mark, words in _EMOJI_MARKS:
        if label.startswith(mark):
            return words + label[len(mark):]
    return label


def npu_mark(ready: bool | None) -> str:
    """The verdict's mark in words, for a list of variants: "NPU-ready", "not NPU-ready", "not checked"."""
    return NPU_READY if ready else (NPU_NOT_READY if ready is False else "not checked")


@dataclass(frozen=True)
class Latency:
    """Timing of one model on one target. Milliseconds throughout."""

    target: str
    threads: int
    xnnpack: bool
    runs: int
    warmup: int
    init_ms: float
    first_ms: float
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerStat:
    """One row of the quantization debugger's per-layer statistics, plus the derived range and rmse/scale."""

    op_name: str
    tensor_idx: int
    tensor_name: str
    num_elements: float
    stddev: float
    mean_error: float
    max_abs_error: float
    mean_squared_error: float
    scale: float
    zero_point: float
    range: float  # 255 * scale
    rmse_scale: float  # sqrt(mse) / scale; ~0.289 means well quantized
    extra: dict[str, float] = field(default_factory=dict)
    # the name users know: a model output's signature key ("predictions"), else the Keras layer of the
    # fused tensor name; "" where nobody recorded it (`qcore.tflite.names.layer_name` falls back)
    layer: str = ""


@dataclass(frozen=True)
class Board:
    name: str
    url: str
    has_token: bool
    created_at: str = ""


class Placement(enum.StrEnum):
    """Where the cells of a board run go."""

    BOARD = "board"  # one named board
    EACH = "each"  # every board of a pool: one cell per board
    ANY = "any"  # any free board of a pool: each cell once, retried elsewhere when its board goes away


class CellStatus(enum.StrEnum):
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class MatrixCell:
    """One (variant, target, board) cell of a board run and its outcome.

    `board` is where it ran or was last tried ("" when no board took it); `attempts` lists the
    boards that went away under it, as {"board", "error"}.
    """

    cell: int
    variant_id: int | None
    sha256: str
    target: str
    board: str
    status: CellStatus
    reason: str = ""
    attempts: tuple[dict[str, str], ...] = ()
    benchmark_id: int | None = None
    evaluation_id: int | None = None
    p50_ms: float | None = None
    accuracy: float | None = None


@dataclass(frozen=True)
class MatrixResult:
    """A finished board run: every cell ends done or failed with its reason."""

    run_id: int
    kind: str
    placement: Placement
    pool: str
    boards: tuple[str, ...]
    cells: tuple[MatrixCell, ...]
    wall_s: float
    retries_429: int = 0
    max_inflight: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[MatrixCell, ...]:
        return tuple(c for c in self.cells if c.status == CellStatus.FAILED)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    status: JobStatus
    progress: float
    message: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str
    created_at: str
    updated_at: str
    # the Dask worker that ran it (address and host name), and when it started and ended
    worker: str = ""
    worker_host: str = ""
    started_at: str = ""
    finished_at: str = ""
    # structured progress the worker published while it ran (QAT's epochs, each recipe's row)
    live: dict[str, Any] | None = None
    created_by: str | None = None  # who queued it (a signed-in e-mail, a token's owner, "local")


# ---------------------------------------------------------------- QAT, debugger, tensor comparison, search
# Accuracies below are fractions in [0, 1]; `max_drop` alone is in accuracy points.


@dataclass(frozen=True)
class QatResult:
    """Quantization-aware training of one model: the converted variant and its pitfall checks."""

    model: str
    layers: tuple[str, ...]  # ("all",) or the class / layer names the user chose
    quantized_layers: tuple[str, ...]  # names of the layers that got quantizers
    settings: dict[str, Any]  # epochs, batch_size, learning_rate, train_samples, int_io, ...
    history: tuple[dict[str, float], ...]  # one {"loss": .., "accuracy": .., "val_…": ..} per epoch
    float_accuracy: float  # the model before QAT
    keras_accuracy: float  # the QAT Keras model (fake quantization) on the test split
    tflite_accuracy: float  # the converted .tflite on the test split
    range_drift: float  # largest relative move of a moving-average min/max during the last epoch
    variant: VariantResult
    warnings: tuple[str, ...] = ()
    reference: Reference | None = None
    model_id: int | None = None
    dataset_id: int | None = None


@dataclass(frozen=True)
class SelectiveResult:
    """A model quantized with some nodes or ops kept in float (keep-these-float)."""

    denylisted_nodes: tuple[str, ...]
    denylisted_ops: tuple[str, ...]
    variant: VariantResult
    # denylisted nodes the quantizer still quantized: ops that share their neighbours' scale (MAX_POOL_2D, RESHAPE)
    ignored_nodes: tuple[str, ...] = ()
    # the plain recipe's variant to compare with: made by this step when the store had none, else its id
    baseline: VariantResult | None = None
    baseline_variant_id: int | None = None


@dataclass(frozen=True)
class DebugResult:
    """One per-layer error run of an engine: every per-layer row, model metrics, suspects."""

    model: str
    engine: str  # who measured it; the metric's scale is the engine's (`qcore.engines.Engine.metric`)
    settings: dict[str, Any]
    columns: tuple[str, ...]  # the engine's own table columns, in its order
    stats: tuple[LayerStat, ...]
    model_metrics: dict[str, float]  # e.g. argmax_agreement, output_mse
    suspects: tuple[str, ...]  # tensor names: error above the threshold, plus the first K
    selective: SelectiveResult | None = None
    reference: Reference | None = None
    # AI Edge Quantizer's comparison, for its Model Explorer export (only where the run was made)
    comparison: Any = field(default=None, repr=False, compare=False)
    model_id: int | None = None
    dataset_id: int | None = None
    debug_run_id: int | None = None


@dataclass(frozen=True)
class TensorDiff:
    """Float vs quantized values of one tensor that both models have, over all samples."""

    name: str  # the float model's tensor name
    quant_name: str  # the quantized model's (differs only when matched after normalising)
    shape: tuple[int, ...]
    float_dtype: str
    quant_dtype: str
    per_channel: bool
    is_constant: bool
    mse: float
    max_abs_error: float
    snr_db: float  # 10*log10(signal power / error power); inf when identical
    cosine: float
    layer: str = ""  # the name users know: the float model's output key ("predictions"), else its Keras layer


@dataclass(frozen=True)
class UnmatchedTensor:
    name: str
    side: str  # "float" | "quant"
    reason: str


@dataclass(frozen=True)
class TensorComparison:
    float_path: str
    quant_path: str
    n_samples: int
    matched: tuple[TensorDiff, ...]
    unmatched: tuple[UnmatchedTensor, ...]


@dataclass(frozen=True)
class TuneTrial:
    """One conversion the float-layer search tried."""

    denylist: tuple[str, ...]
    accuracy: float
    size_bytes: int
    passed: bool
    error: str = ""
    repairs: tuple[str, ...] = ()  # the repair methods applied to the model before this conversion


class Remedy(enum.StrEnum):
    """What met the float-layer search's target (`TuneResult.remedy`)."""

    NONE = "none"  # the plain recipe already met it
    REPAIR = "repair"  # the repaired model, every op integer
    REPAIR_FLOAT = "repair + float layers"  # the repaired model with some layers kept in float
    FLOAT = "float layers"  # the original model with some layers kept in float (the repairs did not apply)
    MISSED = "missed"  # nothing tried met it


@dataclass(frozen=True)
class TuneResult:
    """The float-layer search: every conversion tried and the smallest passing denylist, if any."""

    model: str
    max_drop: float  # accuracy points
    float_accuracy: float
    target_accuracy: float  # float_accuracy - max_drop / 100
    ranking: tuple[str, ...]  # denylistable tensor names, worst error first
    tried: tuple[TuneTrial, ...]
    chosen: TuneTrial | None
    debug: DebugResult  # the run that ranked the layers
    chosen_variant: VariantResult | None = None  # made by the deploy engine
    engine: str = "tf"  # who ranked and tried
    deploy_engine: str = "tf"  # who made the chosen variant
    search_accuracy: float | None = None  # the chosen denylist's accuracy in the search, before confirmation
    reference: Reference | None = None
    model_id: int | None = None
    dataset_id: int | None = None
    tune_run_id: int | None = None
    remedy: str = Remedy.FLOAT.value  # a Remedy: what met the target
    repairs: tuple[str, ...] = ()  # the repair methods tried first ("" when none were)
    # the repaired model's variant (every op integer), when the repairs ran; the chosen one when it passed
    repaired_variant: VariantResult | None = None
    repair_record: dict[str, Any] = field(default_factory=dict)  # RepairResult.to_dict() of that repair
    repair_error: str = ""  # why the repairs could not run on this model (then the search ran on the original)

    @property
    def chosen_variant_id(self) -> int | None:
        return self.chosen_variant.variant_id if self.chosen_variant else None


class TimeSource(enum.StrEnum):
    """Where a per-op time comes from; the UI shows this label beside every figure."""

    BOARD_PROFILE = "board profile (benchmark_model)"
    NPU_DRIVER = "NPU driver profile"
    ESTIMATE = "estimate"


@dataclass(frozen=True)
class OpCost:
    """Per-op quantization error beside per-op time for one variant on one board and target.

    `table` has one row per op of the .tflite's main subgraph (op_index, node_id, op_type, layer,
    output_tensor, rmse_scale, range, error_match, time_ms, time_share, time_source, mapped_by, macs,
    bytes_moved, npu_ddr_mb, float_on_cpu_ms, float_cost_source, float_extra_ms); `unmapped` holds profile rows
    that no single op owns (a delegate's fused node), with their time.
    """

    variant_id: int
    variant: str
    board: str  # "host" for the estimate
    target: str
    time_source: str  # a TimeSource value
    total_ms: float
    graph_id: str  # the subgraph id Model Explorer's TFLite adapter gives the main graph
    debug_run_id: int | None
    table: Any  # pandas.DataFrame
    unmapped: Any  # pandas.DataFrame
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TfliteImport:
    """A .tflite made elsewhere, taken in as a variant of a tflite-only model (no Keras source).

    The model is identified by its float reference's bytes when there is one (so several quantized
    files of one network share a model), else by the file's own.
    """

    model: ModelRecord  # format "tflite"
    variant: VariantResult  # the file, named by its stem
    reference_variant: VariantResult | None  # the float reference, a variant of its own
    input_shape: tuple[int | None, ...]
    output_shapes: tuple[tuple[int | None, ...], ...]
    verdict: str  # the inspection's: "integer-only" or the float ops left
    custom_ops: tuple[str, ...]  # custom / Flex ops in the file
    runnable: bool  # False when LiteRT here cannot run it (custom ops it has no kernel for)
    refusal: str  # why it cannot run, naming the ops; "" when runnable
    scoring: str  # Scoring: how its outputs are scored
    reference: Reference | None = None  # the float reference's accuracy on the data
    notes: tuple[str, ...] = ()  # what was not measured, and why
    dataset_id: int | None = None


# ---------------------------------------------------------------- repairs (qcore.repair)

class RepairMethod(enum.StrEnum):
    """A repair, in the order `repair` applies them whatever order they are asked in."""

    FOLD = "fold"  # BatchNormalization folded into the conv/depthwise/dense before it
    CLE = "cle"  # cross-layer equalization (Nagel et al. 2019, section 4.1)
    ABSORB = "absorb"  # high-bias absorption (Nagel et al. 2019, section 4.2)
    ADAROUND = "adaround"  # adaptive rounding onto the converter's grid (Nagel et al. 2020)
    BIAS = "bias"  # bias correction, empirical or analytic (Nagel et al. 2019, section 4.3)


class BiasMode(enum.StrEnum):
    """Where bias correction takes the expected input of each layer from."""

    AUTO = "auto"  # empirical with calibration samples, analytic without
    EMPIRICAL = "empirical"  # measured on the calibration samples
    ANALYTIC = "analytic"  # from the preceding BatchNormalization's beta and gamma


# ---------------------------------------------------------------- repair defaults, written once
# (here beside RepairSettings rather than in qcore.defaults: qtyping sits below defaults and may not import it)
# CLE stops when no scale factor of a sweep moves a channel's range by more than 0.1%
CLE_TOLERANCE = 1e-3
# the paper iterates until convergence; chains of three layers converge in a few dozen sweeps
CLE_MAX_ITERATIONS = 100
# the paper absorbs max(0, beta - 3 gamma): what a Gaussian pre-activation stays above 99.87% of the time
ABSORB_SIGMAS = 3.0
# AdaRound's optimisation steps per layer: the paper's 10,000 cost minutes per layer on a CPU; 500 with
# the quadratic (Hessian) form of the loss settle the rounding of these layer sizes (bench/repair.py)
ADAROUND_ITERATIONS = 500
# the paper's regularisation weight lambda on sum(1 - |2h - 1|^beta)
ADAROUND_REG = 0.01
# beta anneals from 20 to 2 after a warm-up without regularisation (the paper's schedule)
ADAROUND_BETA = (20.0, 2.0)
ADAROUND_WARMUP = 0.2
# Adam's step on the rounding variables V: 500 steps of 1e-2 reach the sigmoid's flat ends (|V| ~ 5)
ADAROUND_LEARNING_RATE = 1e-2


@dataclass(frozen=True)
class RepairSettings:
    """The knobs of every repair; the defaults are the constants above."""

    cle_tolerance: float = CLE_TOLERANCE
    cle_max_iterations: int = CLE_MAX_ITERATIONS
    # the paper and AIMET replace ReLU6 by ReLU inside equalized pairs; False leaves such pairs alone
    replace_relu6: bool = True
    absorb_sigmas: float = ABSORB_SIGMAS
    # never absorb more than the smallest pre-activation seen on the calibration samples, so the
    # absorption is exact on them (the 3-sigma rule alone assumes a Gaussian)
    absorb_clip_to_data: bool = True
    bias_mode: BiasMode = BiasMode.AUTO
    # the quantized stream of bias correction and AdaRound also rounds every activation onto the grid
    # the converter calibrates (as AIMET's quantsim does); off, it rounds the weights only (the papers'
    # formulation). On the bench's MobileNetV2 the two were within the test set's noise of each other.
    simulate_activations: bool = False
    adaround_iterations: int = ADAROUND_ITERATIONS
    adaround_reg: float = ADAROUND_REG
    adaround_beta: tuple[float, float] = ADAROUND_BETA
    adaround_warmup: float = ADAROUND_WARMUP
    adaround_learning_rate: float = ADAROUND_LEARNING_RATE
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values."""
        out = dataclasses.asdict(self)
        out["bias_mode"] = str(self.bias_mode)
        out["adaround_beta"] = list(self.adaround_beta)
        return out


@dataclass(frozen=True)
class RepairSkip:
    """A structure one repair left alone, named, with the reason in words."""

    method: str
    layer: str
    reason: str


@dataclass(frozen=True)
class FloatDrift:
    """How far the repaired float model's outputs moved from the original's on the same samples."""

    max_abs: float
    mean_abs: float
    # max_abs over the largest |output| of the original: the figure "equal within 1e-4" is about
    max_rel: float
    samples: int


@dataclass(frozen=True)
class RepairStep:
    """One repair as applied: its settings, the layers it changed, what it noted, its time."""

    method: str
    settings: dict[str, Any]
    changed: tuple[str, ...]
    seconds: float
    notes: tuple[str, ...] = ()
    # the float model's drift after this step against the original (None without samples)
    drift: FloatDrift | None = None
    # the step was not asked for but another one needs it (fold before cle, absorb, bias, adaround)
    implied: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The step as JSON-able values."""
        return {
            "method": self.method,
            "settings": self.settings,
            "changed": list(self.changed),
            "seconds": self.seconds,
            "notes": list(self.notes),
            "drift": dataclasses.asdict(self.drift) if self.drift else None,
            "implied": self.implied,
        }


@dataclass(frozen=True, eq=False)
class RepairResult:
    """A repaired Keras model and the record of how it was made."""

    model: LoadedModel  # an ordinary tf_keras functional model; its name says the repairs
    source: str  # the original model's name
    recipe: str  # the recipe whose weight grid the repairs targeted
    methods: tuple[str, ...]  # as asked, in the order applied
    steps: tuple[RepairStep, ...]
    skipped: tuple[RepairSkip, ...]
    drift: FloatDrift | None  # None when there were no calibration samples to measure it on
    relu6_replaced: tuple[str, ...]  # layers whose ReLU6 became ReLU for CLE (the float drift's cause)
    settings: RepairSettings
    seconds: float

    @property
    def label(self) -> str:
        return self.model.name

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per step, by method name."""
        return {s.method: s.seconds for s in self.steps}

    def to_dict(self) -> dict[str, Any]:
        """What a stored variant records about its repairs (JSON-able)."""
        return {
            "label": self.label,
            "source": self.source,
            "recipe": self.recipe,
            "methods": list(self.methods),
            "steps": [s.to_dict() for s in self.steps],
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "drift": dataclasses.asdict(self.drift) if self.drift else None,
            "relu6_replaced": list(self.relu6_replaced),
            "settings": self.settings.to_dict(),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Backup:
    """A lab's backup as `qlab backup` made it: where it is, what it holds, and where the lab lived.

    `files` maps each copied file (relative to the backup: `blobs/…`, `board_tokens/…`, `files/…` under
    the data dir) to its size; `external` lists paths rows refer to outside the data dir, not copied.
    """

    path: str
    created_at: str
    qlab_version: str
    migrations: tuple[str, ...]
    data_dir: str
    blob_dir: str
    database_bytes: int
    files: dict[str, int] = field(default_factory=dict)
    external: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        """What the backup's manifest file records (everything but where the folder is now)."""
        out = dataclasses.asdict(self)
        out.pop("path")
        return out


@dataclass(frozen=True)
class RepairStage:
    """The engine's per-layer error of one model on the way through the repairs: the plain recipe, or after a step."""

    stage: str  # "plain", or a RepairMethod value: the model after that step (and the ones before it)
    label: str  # "int8-per-tensor", "int8-per-tensor + fold + CLE"
    stats: tuple[LayerStat, ...]
    model_metrics: dict[str, float]  # argmax_agreement, output_mse of that model's quantization vs float
    seconds: float = 0.0


@dataclass(frozen=True)
class RepairReport:
    """A repair job's value: the plain recipe's variant, the repaired one beside it, and the per-layer error
    before and after each repair (every figure on the engine's own scale)."""

    model: str
    engine: str
    recipe: str
    methods: tuple[str, ...]  # as asked, in the order applied
    record: dict[str, Any]  # RepairResult.to_dict(): steps, settings, skipped structures, float drift
    plain: VariantResult  # the recipe on the original model
    repaired: VariantResult  # the recipe on the repaired model (VariantKind.REPAIR), named for its repairs
    float_accuracy: float
    columns: tuple[str, ...]  # the engine's per-layer columns
    metric: str  # what the per-layer figure means (`Engine.metric.name`)
    stages: tuple[RepairStage, ...]  # "plain" first, then one per repair asked for (an implied fold has none)
    weights: str  # "per-tensor" or "per-channel": the repaired file's weight scales
    seconds: dict[str, float]  # conversion, repair, layer_errors, total, estimate
    reference: Reference | None = None
    model_id: int | None = None
    dataset_id: int | None = None

    @property
    def label(self) -> str:
        return self.repaired.name
