"""The job kinds the API accepts, over the engine's job contract (`qcore.jobs.contract`), checked in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

from qcore.engines import ENGINES, resolve_recipes
from qcore.explain.repairs import check_repair
from qcore.jobs.contract import (
    PARAMS,
    ConvertParams,
    JobKind,
    JobParams,
    RepairParams,
    job_kind,
    parse_params,
)
from qcore.qtyping import QlabError

# what a client may queue: an allowlist, because some kinds are the server's own and take server
# paths (demo, add_model, import_tflite: uploads go through POST /models, /datasets, /variants)
API_KINDS: tuple[JobKind, ...] = (
    JobKind.CONVERT, JobKind.DEBUG, JobKind.SELECTIVE, JobKind.TUNE, JobKind.QAT, JobKind.COMPARE_TENSORS,
    JobKind.HOST_BENCH, JobKind.BOARD_BENCH, JobKind.BOARD_ACCURACY, JobKind.REPAIR,
)

# the smallest value a count may take (the OpenAPI document says the same); others are >= 1
MINIMUM: dict[str, float] = {"warmup": 0, "train_samples": 0, "max_drop": 0, "first_k": 0}
COUNT_FIELDS = ("model_id", "dataset_id", "float_variant_id", "quant_variant_id", "calibration_samples",
                "debug_samples", "samples", "runs", "warmup", "threads", "epochs", "batch_size", "train_samples",
                "max_drop", "variant_ids", "first_k", "adaround_iterations")
# the largest count a request may ask for (ids are unbounded in practice but must fit BIGINT)
MAXIMUM: dict[str, float] = {"threads": 64, "epochs": 1000, "runs": 100_000, "warmup": 100_000,
                             "max_drop": 100, "batch_size": 65_536, "adaround_iterations": 1_000_000}
MAX_ID = 2**62
MAX_COUNT = 10**7


def bounds(name: str) -> tuple[float, float] | None:
    """(minimum, maximum) of a numeric params field, or None."""
    if name not in COUNT_FIELDS:
        return None
    high = MAX_ID if name.endswith(("_id", "_ids")) else MAXIMUM.get(name, MAX_COUNT)
    return MINIMUM.get(name, 1), high


def parse(kind: Any, params: Any) -> JobParams:
    """A request's `kind` and `params` as the kind's params dataclass: what the runner takes.

    Raises:
        QlabError: naming an unknown kind, an unknown or missing field, a bad value, an unknown
            engine or recipe.
    """
    if not isinstance(kind, str):
        raise QlabError("kind: required, a string")
    k = job_kind(kind)
    if k not in API_KINDS:
        raise QlabError(f"kind: {kind!r} is the server's own job; queue one of {', '.join(API_KINDS)}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise QlabError(f"params: expected an object, got {type(params).__name__}")
    parsed: JobParams = parse_params(k, params)
    for f in dataclasses.fields(parsed):
        span = bounds(f.name)
        value = getattr(parsed, f.name)
        if span is None or value is None:  # an optional id left out (compare_tensors' dataset_id)
            continue
        for v in value if isinstance(value, tuple) else (value,):
            if not span[0] <= v <= span[1]:
                raise QlabError(f"params.{f.name}: {v!r} is outside [{span[0]:g}, {span[1]:g}]")
    for name in ("engine", "deploy_engine"):
        if hasattr(parsed, name) and getattr(parsed, name) not in ENGINES:
            raise QlabError(f"params.{name}: unknown engine {getattr(parsed, name)!r}; known: {', '.join(ENGINES)}")
    if isinstance(parsed, ConvertParams):
        try:  # "all" stays "all": the worker expands it for the params' engine
            resolve_recipes(",".join(parsed.recipes), parsed.engine)
        except QlabError as exc:
            raise QlabError(f"params.recipes: {exc}") from None
    if isinstance(parsed, RepairParams):
        try:  # an unknown method, a recipe the repairs cannot target: refused before the job is queued
            check_repair(parsed.recipe, parsed.engine, parsed.methods)
        except QlabError as exc:
            raise QlabError(f"params.methods/recipe: {exc}") from None
    return parsed


__all__ = ["API_KINDS", "PARAMS", "JobKind", "bounds", "parse"]
