"""The job kinds the API accepts and one frozen params dataclass per kind, checked in one place.

`parse_params` is the single gate between a request's JSON and the job runner; when
`qcore.jobs` (the engine's typed job contract) lands, this module re-exports it instead.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from qcore.qtyping import QlabError

# the bounds a request may ask for; the engine's own checks stay the last word
MAX_SAMPLES = 100_000
MAX_RUNS = 10_000
MAX_EPOCHS = 1_000
MAX_THREADS = 64


def _n(lo: float, hi: float, doc: str) -> dict[str, Any]:
    return {"minimum": lo, "maximum": hi, "description": doc}


class JobKind(enum.StrEnum):
    CONVERT = "convert"
    DEBUG = "debug"
    SELECTIVE = "selective"
    TUNE = "tune"
    QAT = "qat"
    COMPARE_TENSORS = "compare_tensors"
    HOST_BENCH = "host_bench"
    BOARD_BENCH = "board_bench"
    BOARD_ACCURACY = "board_accuracy"


@dataclass(frozen=True)
class ConvertParams:
    model_id: int = field(metadata=_n(1, 2**62, "a stored model"))
    dataset_id: int = field(metadata=_n(1, 2**62, "a stored dataset (calibration and test data)"))
    recipes: list[str] = field(default_factory=lambda: ["int8"],
                               metadata={"description": "recipe names, or ['all']", "minItems": 1})
    calibration_samples: int = field(default=100, metadata=_n(1, MAX_SAMPLES, "first N training samples"))
    bench: bool = field(default=True, metadata={"description": "time each variant on the server's CPU after"})


@dataclass(frozen=True)
class DebugParams:
    model_id: int = field(metadata=_n(1, 2**62, "a stored model"))
    dataset_id: int = field(metadata=_n(1, 2**62, "a stored dataset"))
    recipe: str = field(default="int8", metadata={"description": "an int8 recipe"})
    calibration_samples: int = field(default=100, metadata=_n(1, MAX_SAMPLES, "first N training samples"))
    debug_samples: int = field(default=100, metadata=_n(1, MAX_SAMPLES, "first M test samples"))
    extra_metrics: list[str] = field(default_factory=list, metadata={"description": "mean_abs_error, correlation"})
    whole_model: bool = field(default=False, metadata={"description": "whole-model verification"})


@dataclass(frozen=True)
class SelectiveParams:
    model_id: int = field(metadata=_n(1, 2**62, "a stored model"))
    dataset_id: int = field(metadata=_n(1, 2**62, "a stored dataset"))
    recipe: str = field(default="int8", metadata={"description": "an int8 recipe"})
    denylisted_nodes: list[str] = field(default_factory=list, metadata={"description": "tensor names kept in float"})
    denylisted_ops: list[str] = field(default_factory=list, metadata={"description": "op types kept in float"})
    calibration_samples: int = field(default=100, metadata=_n(1, MAX_SAMPLES, "first N training samples"))
    debug_samples: int = field(default=100, metadata=_n(1, MAX_SAMPLES, "first M test samples"))


@dataclass(frozen=True)
class TuneParams:
    model_id: int = field(metadata=_n(1, 2**62, "a stored model"))
    dataset_id: int = field(metadata=_n(1, 2**62, "a stored dataset"))
    max_drop: float = field(metadata=_n(0, 100, "accuracy points the result may lose against float"))
    recipe: str = field(default="int8", metadata={"description": "an int8 recipe"})
    calibration_samples: int = field(default=100, metadata=_n(1, MAX_SAMPLES, "first N training samples"))
    debug_samples: int = field(default=100, metadata=_n(1, MAX_SAMPLES, "first M test samples"))


@dataclass(frozen=True)
class QatParams:
    model_id: int = field(metadata=_n(1, 2**62, "a stored model"))
    dataset_id: int = field(metadata=_n(1, 2**62, "a stored dataset"))
    layers: list[str] = field(default_factory=lambda: ["all"],
                              metadata={"description": "['all'] or layer classes / names to quantize"})
    epochs: int = field(default=3, metadata=_n(1, MAX_EPOCHS, "fine-tuning epochs"))
    batch_size: int = field(default=32, metadata=_n(1, 65536, "batch size"))
    learning_rate: float = field(default=1e-4, metadata=_n(1e-9, 10, "Adam's learning rate"))
    train_samples: int = field(default=0, metadata=_n(0, 10**9, "first N training samples (0 = all)"))
    int_io: bool = field(default=False, metadata={"description": "int8 input and output"})


@dataclass(frozen=True)
class CompareTensorsParams:
    float_variant_id: int = field(metadata=_n(1, 2**62, "the float variant"))
    quant_variant_id: int = field(metadata=_n(1, 2**62, "the quantized variant"))
    samples: int = field(default=20, metadata=_n(1, 10_000, "first N test samples"))


@dataclass(frozen=True)
class HostBenchParams:
    variant_ids: list[int] = field(metadata={"description": "variants to time on the server", "minItems": 1})
    runs: int = field(default=50, metadata=_n(1, MAX_RUNS, "timed runs"))
    warmup: int = field(default=5, metadata=_n(0, MAX_RUNS, "untimed runs first"))
    threads: int = field(default=1, metadata=_n(1, MAX_THREADS, "interpreter threads"))
    xnnpack: bool = field(default=True, metadata={"description": "XNNPACK delegate on"})


@dataclass(frozen=True)
class BoardBenchParams:
    board: str = field(metadata={"description": "a registered board", "minLength": 1})
    variant_ids: list[int] = field(metadata={"description": "variants to time on the board", "minItems": 1})
    targets: list[str] = field(default_factory=lambda: ["cpu"],
                               metadata={"description": "npu, cpu, cpu-plain, or ['all']", "minItems": 1})
    runs: int = field(default=50, metadata=_n(1, MAX_RUNS, "timed runs"))
    warmup: int = field(default=5, metadata=_n(0, MAX_RUNS, "untimed runs first"))
    threads: int = field(default=1, metadata=_n(1, MAX_THREADS, "CPU threads"))


@dataclass(frozen=True)
class BoardAccuracyParams:
    board: str = field(metadata={"description": "a registered board", "minLength": 1})
    variant_ids: list[int] = field(metadata={"description": "variants to evaluate on the board", "minItems": 1})
    target: str = field(default="cpu", metadata={"description": "npu, cpu or cpu-plain"})
    threads: int = field(default=1, metadata=_n(1, MAX_THREADS, "CPU threads"))


PARAMS: dict[JobKind, type[Any]] = {
    JobKind.CONVERT: ConvertParams,
    JobKind.DEBUG: DebugParams,
    JobKind.SELECTIVE: SelectiveParams,
    JobKind.TUNE: TuneParams,
    JobKind.QAT: QatParams,
    JobKind.COMPARE_TENSORS: CompareTensorsParams,
    JobKind.HOST_BENCH: HostBenchParams,
    JobKind.BOARD_BENCH: BoardBenchParams,
    JobKind.BOARD_ACCURACY: BoardAccuracyParams,
}


def _check(kind: str, name: str, hint: Any, meta: Any, value: Any) -> Any:
    where = f"{kind}.{name}"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return _check(kind, name, arm, meta, value)
            except QlabError:
                continue
        raise QlabError(f"params.{name}: {value!r} is not a valid value for {where}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise QlabError(f"params.{name}: expected a list, got {type(value).__name__}")
        if len(value) < int(meta.get("minItems", 0)):
            raise QlabError(f"params.{name}: needs at least {meta['minItems']} item(s)")
        return [_check(kind, f"{name}[{i}]", item, {}, v) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise QlabError(f"params.{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise QlabError(f"params.{name}: expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise QlabError(f"params.{name}: expected a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise QlabError(f"params.{name}: expected a string, got {value!r}")
        if len(value) < int(meta.get("minLength", 0)):
            raise QlabError(f"params.{name}: must not be empty")
        return value
    if "minimum" in meta and value < meta["minimum"]:
        raise QlabError(f"params.{name}: {value!r} is below the minimum {meta['minimum']}")
    if "maximum" in meta and value > meta["maximum"]:
        raise QlabError(f"params.{name}: {value!r} is above the maximum {meta['maximum']}")
    return value


def parse_params(kind: str, params: Any) -> Any:
    """A job kind's params dataclass from a request's JSON.

    Raises:
        QlabError: naming an unknown kind, an unknown or missing field, or a bad value.
    """
    try:
        job_kind = JobKind(kind)
    except ValueError:
        raise QlabError(f"kind: unknown job kind {kind!r}; known: {', '.join(k.value for k in JobKind)}") from None
    if not isinstance(params, dict):
        raise QlabError(f"params: expected an object, got {type(params).__name__}")
    cls = PARAMS[job_kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise QlabError(f"params.{unknown[0]}: unknown field of {kind}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in params:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise QlabError(f"params.{name}: required for {kind}")
            continue
        values[name] = _check(kind, name, hints[name], f.metadata, params[name])
    return cls(**values)


def to_task_params(kind: str, params: Any) -> dict[str, Any]:
    """The JSON dict today's job runner takes for a parsed params object."""
    from qcore.recipes import resolve_recipes

    out = dataclasses.asdict(params)
    if kind == JobKind.CONVERT:
        try:
            out["recipes"] = [r.name for r in resolve_recipes(",".join(out["recipes"]))]
        except ValueError as exc:
            raise QlabError(f"params.recipes: {exc}") from None
    if kind == JobKind.QAT and out["layers"] == ["all"]:
        out["layers"] = "all"
    if kind == JobKind.BOARD_BENCH and out["targets"] == ["all"]:
        out["targets"] = "all"
    return out
