"""Repairs in the explain loop: the plain recipe and the repaired model side by side, per-layer error after each step."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qcore import defaults
from qcore.engines import get_engine, variant_name
from qcore.engines.base import Engine
from qcore.inputs.data import check_fits
from qcore.inputs.models import float_reference
from qcore.qtyping import (
    Dataset,
    LayerStat,
    LoadedModel,
    Progress,
    QlabError,
    Recipe,
    RepairReport,
    RepairSettings,
    RepairStage,
    RepairStep,
    VariantKind,
    VariantResult,
    no_progress,
)
from qcore.repair import METHODS, check_recipe, cost, parse_methods, repair, steps_for
from qcore.tflite.evaluate import evaluate_tflite
from qcore.tflite.inspection import inspect
from qcore.tflite.names import layer_name
from qcore.tflite.variant import built

log = logging.getLogger(__name__)

# one per-layer error run against one conversion (it calibrates, converts and runs the debug samples
# through both models): the repair job's time estimate, measured on the tests' MobileNet-like network
# (1.5-2x under load)
LAYER_ERROR_COST = 1.8
# the stage name of the model before any repair
PLAIN = "plain"

# structured progress a job shows while it runs (the time estimate); the task passes its own
Live = Callable[[dict[str, Any]], None]


def _no_live(_data: dict[str, Any]) -> None:
    return None


def weights_granularity(tflite: bytes) -> str:
    """"per-channel" when some int8 weight tensor has several different scales, else "per-tensor".

    Both engines store a per-tensor Dense kernel with one scale per output channel, all equal, so a
    count of scales alone would call it per-channel.
    """
    for t in inspect(tflite).tensors:
        if t.is_constant and t.dtype == "int8" and len(set(t.scales)) > 1:
            return "per-channel"
    return "per-tensor"


def npu_words(variant: VariantResult, weights: str) -> str:
    """The NPU verdict in a few words: integer-only or not, and the weight layout."""
    if variant.npu is None:
        return "no verdict"
    return f"{'all ops integer' if variant.npu.ready else variant.npu.summary}, {weights} weights"


def check_repair(recipe: Recipe | str, engine: str, methods: str | Sequence[str]) -> tuple[Recipe, Engine]:
    """The recipe and engine of a repair, checked before any work.

    Raises:
        QlabError: for an unknown method, engine or recipe, a recipe without an int8 grid, or one the
            engine cannot express, each by name.
    """
    parse_methods(methods)
    rec = check_recipe(recipe)
    eng = get_engine(engine)
    refusal = eng.refusal(rec)
    if refusal:
        raise QlabError(f"recipe {rec.name}: {refusal}")
    return rec, eng


def estimate_conversions(methods: str | Sequence[str], layer_errors: bool = True) -> float:
    """A repair job's time in conversions of the model: the plain and repaired conversions, the repairs,
    and a per-layer error run before the repairs and after each one asked for."""
    runs = (1 + len(parse_methods(methods))) * LAYER_ERROR_COST if layer_errors else 0.0
    return 2.0 + cost(methods) + runs


def repair_and_evaluate(
    model: LoadedModel,
    dataset: Dataset,
    *,
    methods: str | Sequence[str] = defaults.REPAIR_METHODS,
    recipe: Recipe | str = defaults.REPAIR_RECIPE,
    engine: str = defaults.ENGINE,
    calibration_samples: int = defaults.CALIBRATION_SAMPLES,
    debug_samples: int = defaults.DEBUG_SAMPLES,
    settings: RepairSettings | None = None,
    layer_errors: bool = True,
    progress: Progress = no_progress,
    live: Live = _no_live,
    reference_outputs: np.ndarray | None = None,
) -> RepairReport:
    """Converts the recipe on the model and on its repaired copy, evaluates both, and measures the engine's
    per-layer error before and after each repair. Stores nothing: `qcore.lab.publish` does.

    Args:
        model, dataset: what to repair (checked to fit first); calibration uses the first N training
            samples, the per-layer error the first M test samples.
        methods: repair names (`qcore.repair.METHODS`), a list or "cle,bias".
        recipe: the full-integer recipe whose grid the repairs target, made on both models.
        engine: who converts and measures the per-layer error (`qcore.engines.ENGINES`).
        settings: the repairs' knobs (`RepairSettings`).
        layer_errors: measure the per-layer error of each stage (the float-layer search skips it).
        progress: fraction and message; the message says the time left once one conversion was timed.
        live: receives {"estimate_s", "elapsed_s", "stage"} as the job goes.
        reference_outputs: the float model's test outputs when the caller has them.

    Returns:
        Both variants (the repaired one of kind `repair`, named for its repairs, e.g.
        "int8-per-tensor + CLE + bias"), the repairs' record and every stage's per-layer table.

    Raises:
        QlabError: for an unknown method, engine or recipe, a recipe the repairs cannot target or the
            engine cannot express, data that does not fit, or a model the repairs cannot read.
    """
    started = time.perf_counter()
    rec, eng = check_repair(recipe, engine, methods)
    chosen = parse_methods(methods)
    if calibration_samples < 1:
        raise QlabError(f"calibration samples must be at least 1, got {calibration_samples}")
    if debug_samples < 1:
        raise QlabError(f"debug samples must be at least 1, got {debug_samples}")
    check_fits(model, dataset)
    steps = steps_for(chosen)
    total = estimate_conversions(chosen, layer_errors)
    done = 0.0
    per_conversion: float | None = None

    def advance(units: float, message: str) -> None:
        nonlocal done
        done = min(total, done + units)
        report(0.0, message)

    def report(within: float, message: str) -> None:
        elapsed = time.perf_counter() - started
        left = ""
        if per_conversion is not None:
            estimate = per_conversion * total
            left = f" (about {max(0.0, estimate - elapsed):.0f} s left of {estimate:.0f} s)"
            live({"estimate_s": round(estimate, 1), "elapsed_s": round(elapsed, 1), "stage": message})
        progress(min(0.99, done / total + within), message + left)

    report(0.0, "running the float Keras model")
    if reference_outputs is None:
        outputs, reference = float_reference(model, dataset)
    else:
        outputs, reference = reference_outputs, None
    calibration = dataset.calibration(calibration_samples)
    debug_x = dataset.preprocess(dataset.x_test[:debug_samples])
    if layer_errors and len(debug_x) == 0:
        raise QlabError(f"data {dataset.name!r} has no test samples to measure the per-layer error on")
    base_settings = {"recipe": rec.name, "calibration_samples": calibration_samples, "engine": eng.name}

    report(0.0, f"converting with {rec.name} on {eng.name}")
    t0 = time.perf_counter()
    session = eng.session(model, calibration)
    plain_tflite = session.convert(rec)
    per_conversion = time.perf_counter() - t0
    plain = built(variant_name(rec.name, eng.name), VariantKind.PTQ, rec.name, eng.name, plain_tflite,
                  settings=base_settings, evaluation=evaluate_tflite(plain_tflite, dataset, outputs))
    advance(1.0, f"{rec.name}: accuracy {plain.evaluation.accuracy if plain.evaluation else float('nan'):.4f}")

    stages: list[RepairStage] = []
    columns: tuple[str, ...] = ()
    timing = {"conversion": per_conversion, "layer_errors": 0.0}

    def measure(stage: str, label: str, sess: Any) -> None:
        nonlocal columns
        t = time.perf_counter()
        errors = sess.layer_errors(rec, debug_x)
        seconds = time.perf_counter() - t
        timing["layer_errors"] += seconds
        columns = errors.columns
        stages.append(RepairStage(stage, label, errors.stats, dict(errors.model_metrics), seconds))

    if layer_errors:
        report(0.0, f"per-layer error of {rec.name}")
        measure(PLAIN, rec.name, session)
        advance(LAYER_ERROR_COST, f"per-layer error of {rec.name}: {len(stages[-1].stats)} layers")

    step_index = 0

    def on_step(step: RepairStep, stepped: LoadedModel) -> None:
        nonlocal step_index
        advance(METHODS[steps[step_index]].cost, f"{step.method}: {len(step.changed)} layers changed")
        step_index += 1
        if layer_errors and not step.implied:  # a fold nobody asked for changes nothing the converter keeps
            report(0.0, f"per-layer error after {step.method}")
            measure(step.method, stepped.name, eng.session(stepped, calibration))
            advance(LAYER_ERROR_COST, f"per-layer error after {step.method}")

    def repair_progress(fraction: float, message: str) -> None:
        # inside a step: AdaRound reports each layer; the share is that step's
        if step_index < len(steps):
            within = METHODS[steps[step_index]].cost * max(0.0, min(1.0, fraction * len(steps) - step_index))
            report(within / total, message)

    result = repair(model, chosen, calibration, recipe=rec, progress=repair_progress, settings=settings,
                    on_step=on_step)
    timing["repair"] = sum(s.seconds for s in result.steps)

    report(0.0, f"converting {result.label} on {eng.name}")
    repaired_tflite = eng.session(result.model, calibration).convert(rec)
    record = result.to_dict()
    weights = weights_granularity(repaired_tflite)
    repaired = built(variant_name(result.label, eng.name), VariantKind.REPAIR, rec.name, eng.name, repaired_tflite,
                     settings={**base_settings, "methods": list(result.methods), "repair": record,
                               # what the Debugger page shows of this variant: the error before and after each repair
                               "layer_errors": {"metric": eng.metric.name, "stages": [s.stage for s in stages],
                                                "rows": layer_rows(stages)}},
                     evaluation=evaluate_tflite(repaired_tflite, dataset, outputs))
    advance(1.0, f"{result.label}: accuracy "
                 f"{repaired.evaluation.accuracy if repaired.evaluation else float('nan'):.4f}")
    timing["total"] = time.perf_counter() - started
    timing["estimate"] = per_conversion * total
    progress(1.0, f"{result.label}: {npu_words(repaired, weights)}")
    log.info("repair %s: %.1f s (estimated %.1f s)", result.label, timing["total"], timing["estimate"])
    return RepairReport(
        model=model.name, engine=eng.name, recipe=rec.name, methods=result.methods, record=record, plain=plain,
        repaired=repaired, float_accuracy=reference.accuracy if reference is not None else math.nan,
        columns=columns, metric=eng.metric.name, stages=tuple(stages), weights=weights,
        seconds={k: round(v, 3) for k, v in timing.items()}, reference=reference,
    )


def layer_rows(stages: Sequence[RepairStage]) -> list[dict[str, Any]]:
    """One row per layer with its error at every stage: {"op_name", "tensor_name", "layer", <stage>: rmse_scale, ...}.

    Rows are matched by position when every stage has the same ops in the same order (folding a
    BatchNormalization renames its output tensor but the converter folds it anyway), else by tensor
    name; the row names the last stage's tensor.
    """
    if not stages:
        return []
    first = stages[0].stats
    same_ops = all(len(s.stats) == len(first) and all(a.op_name == b.op_name for a, b in zip(s.stats, first, strict=True))
                   for s in stages)
    rows: list[dict[str, Any]] = []
    if same_ops:
        for i, last in enumerate(stages[-1].stats):
            rows.append({"op_name": last.op_name, "tensor_name": last.tensor_name,
                         "layer": layer_name(last.tensor_name, last.layer),
                         **{s.stage: _figure(s.stats[i]) for s in stages}})
        return rows
    by_name: dict[str, dict[str, Any]] = {}
    for s in stages:
        for stat in s.stats:
            row = by_name.setdefault(stat.tensor_name, {"op_name": stat.op_name, "tensor_name": stat.tensor_name,
                                                        "layer": layer_name(stat.tensor_name, stat.layer)})
            row[s.stage] = _figure(stat)
    return list(by_name.values())


def _figure(stat: LayerStat) -> float | None:
    return stat.rmse_scale if math.isfinite(stat.rmse_scale) else None
