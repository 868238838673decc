"""The job contract: a `JobKind` per job, one frozen params dataclass per kind, and one JSON serializer.

The dashboard, the API and the CLI build the same params objects; `qcore.jobs.tasks` runs them on a worker
and `qcore.jobs.runner` hands them to Dask. Defaults come from `qcore.defaults`, written once.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qcore import defaults
from qcore.qtyping import ADAROUND_ITERATIONS, BiasMode, QlabError
from qcore.serialize import to_json


class JobKind(enum.StrEnum):
    """Every kind of background job a lab runs."""

    DEMO = "demo"
    ADD_MODEL = "add_model"
    CONVERT = "convert"
    HOST_BENCH = "host_bench"
    DEBUG = "debug"
    SELECTIVE = "selective"
    TUNE = "tune"
    COMPARE_TENSORS = "compare_tensors"
    QAT = "qat"
    BOARD_BENCH = "board_bench"
    BOARD_ACCURACY = "board_accuracy"
    IMPORT_TFLITE = "import_tflite"
    BOARD_MATRIX = "board_matrix"
    REPAIR = "repair"


# kinds that take seconds (load a model, inspect a .tflite): they go ahead of the queue and may use a
# quick-lane worker (one started with the resource QUICK), so an upload never waits behind a conversion
QUICK_KINDS = frozenset({JobKind.ADD_MODEL, JobKind.IMPORT_TFLITE})
# the Dask worker resource that marks a quick-lane worker: it takes only QUICK_KINDS
QUICK_RESOURCE = "QUICK"


@dataclass(frozen=True)
class DemoParams:
    """First start: train the demo CNN on digits and convert it with these recipes."""

    recipes: str = "all"


@dataclass(frozen=True)
class AddModelParams:
    """Loads an uploaded model on a worker and records it with its summary (layers, shapes)."""

    filename: str
    name: str = ""
    # an admin vouched for the file: Lambda layers and custom objects are loaded (they run code)
    trusted: bool = False


@dataclass(frozen=True)
class ConvertParams:
    """Converts a stored model with post-training recipes, evaluates each variant, times it on the host."""

    model_id: int
    dataset_id: int
    recipes: tuple[str, ...] = ("all",)
    calibration_samples: int = defaults.CALIBRATION_SAMPLES
    bench: bool = True
    engine: str = defaults.ENGINE  # a name of `qcore.engines.ENGINES`


@dataclass(frozen=True)
class HostBenchParams:
    """Times stored variants on a worker's CPU with LiteRT."""

    variant_ids: tuple[int, ...]
    runs: int = defaults.BENCH_RUNS
    warmup: int = defaults.BENCH_WARMUP
    threads: int = 1
    xnnpack: bool = True


@dataclass(frozen=True)
class DebugParams:
    """Per-layer error: AI Edge Quantizer's validation ("aeq") or TFLite's QuantizationDebugger ("tf")."""

    model_id: int
    dataset_id: int
    recipe: str = defaults.DEBUG_RECIPE
    calibration_samples: int = defaults.CALIBRATION_SAMPLES
    debug_samples: int = defaults.DEBUG_SAMPLES
    extra_metrics: tuple[str, ...] = ()  # tf only
    whole_model: bool = False  # tf only
    engine: str = defaults.ENGINE
    # a layer above this is a suspect; None: this model's own outliers on the engine's scale (what the pages use)
    threshold: float | None = None
    first_k: int = 0  # the first K layers count as suspects too


@dataclass(frozen=True)
class SelectiveParams:
    """Keeps the named layers (or op types) in float; compares with the plain recipe."""

    model_id: int
    dataset_id: int
    recipe: str = defaults.DEBUG_RECIPE
    denylisted_nodes: tuple[str, ...] = ()
    denylisted_ops: tuple[str, ...] = ()
    calibration_samples: int = defaults.CALIBRATION_SAMPLES
    debug_samples: int = defaults.DEBUG_SAMPLES
    engine: str = defaults.ENGINE
    # the per-layer statistics run beside the selective conversion, as in a debug job
    extra_metrics: tuple[str, ...] = ()
    whole_model: bool = False
    threshold: float | None = None
    first_k: int = 0


@dataclass(frozen=True)
class TuneParams:
    """Searches for the fewest float layers that keep accuracy within `max_drop` points."""

    model_id: int
    dataset_id: int
    max_drop: float = defaults.TUNE_MAX_DROP
    recipe: str = defaults.DEBUG_RECIPE
    calibration_samples: int = defaults.CALIBRATION_SAMPLES
    debug_samples: int = defaults.DEBUG_SAMPLES
    engine: str = defaults.ENGINE  # who ranks and tries
    deploy_engine: str = defaults.ENGINE  # who makes the chosen variant
    # repairs tried before any layer is kept float (`qcore.repair.METHODS`); () skips them
    repairs: tuple[str, ...] = defaults.TUNE_REPAIRS


@dataclass(frozen=True)
class CompareTensorsParams:
    """Compares every matching tensor of two stored variants on a few test samples."""

    float_variant_id: int
    quant_variant_id: int
    samples: int = defaults.COMPARE_SAMPLES
    dataset_id: int | None = None  # the test split to compare on; None: the float variant's own


@dataclass(frozen=True)
class QatParams:
    """Quantization-aware training; `gpu` sends it to a worker started with `--resources GPU=1`."""

    model_id: int
    dataset_id: int
    layers: tuple[str, ...] = ("all",)
    epochs: int = defaults.QAT_EPOCHS
    batch_size: int = defaults.QAT_BATCH
    learning_rate: float = defaults.QAT_LEARNING_RATE
    train_samples: int = 0
    int_io: bool = False
    calibration_samples: int = defaults.CALIBRATION_SAMPLES
    gpu: bool = False


@dataclass(frozen=True)
class BoardBenchParams:
    """Times stored variants on a registered board, one target after the other."""

    board: str
    variant_ids: tuple[int, ...]
    targets: tuple[str, ...] = ("cpu",)
    runs: int = defaults.BENCH_RUNS
    warmup: int = defaults.BENCH_WARMUP
    threads: int = 1
    profile: bool = False


@dataclass(frozen=True)
class BoardAccuracyParams:
    """Runs each variant's test split on a registered board."""

    board: str
    variant_ids: tuple[int, ...]
    target: str = "cpu"
    threads: int = 1
    # several targets, each (variant, target) cell on its own; empty means just `target`
    targets: tuple[str, ...] = ()
    dataset_id: int | None = None  # the test split to run; None: each variant's own


@dataclass(frozen=True)
class ImportTfliteParams:
    """Takes in a .tflite made elsewhere (and its float reference) as a variant of a tflite-only model.

    The files are uploads the owner stored (role "tflite" and "reference" in a JobSpec); the
    dataset, when given, carries the input preprocessing the model expects.
    """

    filename: str  # the user's file name: errors name it, its stem names the variant
    path: str
    name: str = ""
    dataset_id: int | None = None
    reference_filename: str = ""
    reference_path: str = ""


@dataclass(frozen=True)
class BoardMatrixParams:
    """Benchmarks variants x targets on a board, every board of a pool, or any free board of a pool."""

    pool: str
    variant_ids: tuple[int, ...]
    targets: tuple[str, ...] = ("cpu",)
    placement: str = "each"
    runs: int = defaults.BENCH_RUNS
    warmup: int = defaults.BENCH_WARMUP
    threads: int = 1
    profile: bool = False


@dataclass(frozen=True)
class RepairParams:
    """Repairs a stored model for a recipe's int8 grid, converts it beside the plain recipe, and measures the
    per-layer error before and after each repair."""

    model_id: int
    dataset_id: int
    methods: tuple[str, ...] = defaults.REPAIR_METHODS  # names of `qcore.repair.METHODS`
    recipe: str = defaults.REPAIR_RECIPE
    engine: str = defaults.ENGINE
    calibration_samples: int = defaults.CALIBRATION_SAMPLES
    debug_samples: int = defaults.DEBUG_SAMPLES
    adaround_iterations: int = ADAROUND_ITERATIONS
    bias_mode: str = BiasMode.AUTO.value  # a `BiasMode`: auto, empirical, analytic


# every params dataclass: what `JobRunner.submit` takes
JobParams = (DemoParams | AddModelParams | ConvertParams | HostBenchParams | DebugParams | SelectiveParams
             | TuneParams | CompareTensorsParams | QatParams | BoardBenchParams | BoardAccuracyParams
             | ImportTfliteParams | BoardMatrixParams | RepairParams)

PARAMS: dict[JobKind, type] = {
    JobKind.DEMO: DemoParams,
    JobKind.ADD_MODEL: AddModelParams,
    JobKind.CONVERT: ConvertParams,
    JobKind.HOST_BENCH: HostBenchParams,
    JobKind.DEBUG: DebugParams,
    JobKind.SELECTIVE: SelectiveParams,
    JobKind.TUNE: TuneParams,
    JobKind.COMPARE_TENSORS: CompareTensorsParams,
    JobKind.QAT: QatParams,
    JobKind.BOARD_BENCH: BoardBenchParams,
    JobKind.BOARD_ACCURACY: BoardAccuracyParams,
    JobKind.IMPORT_TFLITE: ImportTfliteParams,
    JobKind.BOARD_MATRIX: BoardMatrixParams,
    JobKind.REPAIR: RepairParams,
}


# the other way round: a params dataclass names its kind
KIND_OF: dict[type, JobKind] = {cls: kind for kind, cls in PARAMS.items()}


def kind_of(params: object) -> JobKind:
    """The JobKind of a params dataclass.

    Raises:
        QlabError: for anything else (a dict, a class, another dataclass), naming what it got.
    """
    kind = KIND_OF.get(type(params))
    if kind is None:
        raise QlabError(f"a job takes one of the params dataclasses of qcore.jobs.contract "
                        f"({', '.join(c.__name__ for c in KIND_OF)}), got {type(params).__name__}")
    return kind


def job_kind(kind: str | JobKind) -> JobKind:
    """The JobKind of a name.

    Raises:
        QlabError: for an unknown kind, listing the known ones.
    """
    try:
        return JobKind(str(kind))
    except ValueError:
        raise QlabError(f"unknown job kind {kind!r}; known: {', '.join(k.value for k in JobKind)}") from None


def _coerce(kind: JobKind, name: str, hint: Any, value: Any) -> Any:
    """One field's JSON value as its declared type, or a QlabError naming the field."""
    origin = typing.get_origin(hint)
    bad = QlabError(f"job {kind.value}: field {name!r} must be {_type_name(hint)}, got {value!r}")
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if isinstance(value, str):  # "int8,uint8" and a single name are both lists of one or more
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(_coerce(kind, name, item, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(kind, name, inner[0], value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
            raise bad
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint))


def parse_params(kind: str | JobKind, values: Mapping[str, Any] | None) -> Any:
    """The params dataclass of a kind from JSON-like values: the API's boundary (and a CLI's reading of JSON).

    Raises:
        QlabError: for an unknown kind, an unknown or missing field, or a value of the wrong type,
            each naming the kind and field.
    """
    k = job_kind(kind)
    if values is not None and not isinstance(values, Mapping):
        raise QlabError(f"job {k.value}: params must be an object of fields, got {type(values).__name__}")
    cls = PARAMS[k]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = dict(values or {})
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise QlabError(f"job {k.value}: unknown field {unknown[0]!r}; fields: {', '.join(fields)}")
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in given:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise QlabError(f"job {k.value}: field {name!r} is required")
            continue
        out[name] = _coerce(k, name, hints[name], given[name])
    return cls(**out)


def check_params(params: object) -> JobKind:
    """The kind of a params dataclass whose fields hold their declared types (a tuple where a list goes).

    Raises:
        QlabError: for anything but a params dataclass, or a field of another type, naming the field.
    """
    k = kind_of(params)
    hints = typing.get_type_hints(type(params))
    for f in dataclasses.fields(params):  # type: ignore[arg-type]
        value = getattr(params, f.name)
        if _coerce(k, f.name, hints[f.name], value) != value or (
                typing.get_origin(hints[f.name]) is tuple and not isinstance(value, tuple)):
            raise QlabError(f"job {k.value}: field {f.name!r} is declared {f.type}, got {value!r}")
    return k


def params_json(params: Any) -> dict[str, Any]:
    """A params dataclass as the JSON object stored in the jobs table."""
    return json.loads(to_json(dataclasses.asdict(params)))


@dataclass(frozen=True)
class JobSpec:
    """What the owner hands a worker: the kind, its params, and the bytes the job reads.

    The bytes travel through Dask itself (never a path on the server's disk), so a worker
    on another machine runs the job the same way.
    """

    job_id: int
    kind: JobKind
    params: Any
    # role → file name → bytes: "model" (the Keras file or a zipped SavedModel), "data", "variant:<id>"
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    # rows the job reads: "model", "dataset", "variant:<id>", "board:<name>" → dict
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    blob_dir: str = ""

    @property
    def resources(self) -> dict[str, float]:
        """The Dask worker resources this job needs (QAT marked for a GPU asks for GPU=1)."""
        return {"GPU": 1} if getattr(self.params, "gpu", False) else {}

    @property
    def quick(self) -> bool:
        """Whether the job belongs to the quick lane (QUICK_KINDS)."""
        return self.kind in QUICK_KINDS
