"""Per-layer error on any engine: the table, suspects, and keep-these-float (selective) builds."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from qcore import defaults
from qcore.engines import get_engine, variant_name
from qcore.engines.base import DebugOptions, Session
from qcore.inputs.data import check_fits
from qcore.inputs.models import float_reference
from qcore.qtyping import (
    Dataset,
    DebugResult,
    LayerStat,
    LoadedModel,
    Progress,
    QlabError,
    Recipe,
    SelectiveResult,
    VariantKind,
    no_progress,
)
from qcore.recipes import get_recipe
from qcore.tflite import litert_io
from qcore.tflite.evaluate import evaluate_tflite
from qcore.tflite.variant import built

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = defaults.CALIBRATION_SAMPLES
DEFAULT_DEBUG_SAMPLES = defaults.DEBUG_SAMPLES
DEFAULT_RECIPE = defaults.DEBUG_RECIPE
DEFAULT_THRESHOLD = defaults.SUSPECT_THRESHOLD


def recipe_of(recipe: Recipe | str) -> Recipe:
    """The registry's recipe of a name.

    Raises:
        QlabError: for an unknown name, listing the known ones.
    """
    if isinstance(recipe, Recipe):
        return recipe
    try:
        return get_recipe(recipe)
    except ValueError as exc:
        raise QlabError(str(exc)) from None


def float_ops(model: bytes) -> set[str]:
    """Names of op outputs that are computed in float (QUANTIZE/DEQUANTIZE excluded)."""
    it = litert_io.make_interpreter(model)
    details = {int(t["index"]): t for t in it.get_tensor_details()}
    out: set[str] = set()
    for op in it._get_ops_details():  # noqa: SLF001
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for i in op["outputs"]:
            d = details.get(int(i))
            if d is not None and np.dtype(d["dtype"]).kind == "f":
                out.add(str(d["name"]))
    return out


def suspects(stats: Sequence[LayerStat], threshold: float = DEFAULT_THRESHOLD, first_k: int = 0) -> list[str]:
    """Tensor names worth keeping in float: rmse/scale above the threshold, plus the first K layers.

    Returns:
        Names in layer order, without repeats.
    """
    chosen = {s.tensor_name for s in stats if s.rmse_scale > threshold}
    chosen.update(s.tensor_name for s in list(stats)[: max(0, first_k)])
    out: list[str] = []
    for s in stats:
        if s.tensor_name in chosen and s.tensor_name not in out:
            out.append(s.tensor_name)
    return out


def stats_csv(result: DebugResult) -> str:
    """The engine's own table (its columns, its order) plus `range` and `rmse_scale`, as CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*result.columns, "range", "rmse_scale"])
    for s in result.stats:
        values = {"op_name": s.op_name, "tensor_idx": s.tensor_idx, "num_elements": s.num_elements,
                  "stddev": s.stddev, "mean_error": s.mean_error, "max_abs_error": s.max_abs_error,
                  "mean_squared_error": s.mean_squared_error, "scale": s.scale, "zero_point": s.zero_point,
                  "tensor_name": s.tensor_name, **s.extra}
        writer.writerow([_fmt(c, values.get(c, "")) for c in result.columns]
                        + [_fmt("range", s.range), _fmt("rmse_scale", s.rmse_scale)])
    return buf.getvalue()


def _fmt(column: str, value: Any) -> str:
    # zero points are integers in the debugger's dump; everything else round-trips through repr
    if column == "zero_point" and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def selective_name(recipe: str, nodes: Sequence[str], ops: Sequence[str]) -> str:
    """What a variant with layers kept in float is called: "int8 + 4 float layers (+ float ADD)"."""
    parts = [recipe]
    if nodes:
        parts.append(f"{len(nodes)} float layer{'s' if len(nodes) != 1 else ''}")
    if ops:
        parts.append("float " + ", ".join(sorted(ops)))
    return " + ".join(parts)


def build_selective(session: Session, engine: str, rec: Recipe, dataset: Dataset, reference: np.ndarray,
                    nodes: Sequence[str], ops: Sequence[str]) -> SelectiveResult:
    """The recipe's model with `nodes` and `ops` kept in float, evaluated (a value; nothing stored).

    Raises:
        QlabError: for unknown nodes or ops, or a quantizer failure.
    """
    tflite = session.convert(rec, keep_float=nodes, keep_ops=ops)
    ev = evaluate_tflite(tflite, dataset, reference)
    kept = float_ops(tflite)
    ignored = [n for n in nodes if n not in kept]
    if ignored:
        log.warning("the quantizer kept %s quantized (ops that share their neighbours' scale)", ignored)
    settings = {"denylisted_nodes": list(nodes), "denylisted_ops": list(ops), "recipe": rec.name,
                "calibration_samples": session.calibration_samples, "ignored_nodes": ignored, "engine": engine}
    variant = built(variant_name(selective_name(rec.name, nodes, ops), engine), VariantKind.SELECTIVE, rec.name,
                    engine, tflite, settings=settings, evaluation=ev)
    return SelectiveResult(denylisted_nodes=tuple(nodes), denylisted_ops=tuple(ops), variant=variant,
                           ignored_nodes=tuple(ignored))


def run_debugger(
    model: LoadedModel,
    dataset: Dataset,
    *,
    engine: str = defaults.ENGINE,
    recipe: Recipe | str = DEFAULT_RECIPE,
    calibration_samples: int = DEFAULT_CALIBRATION,
    debug_samples: int = DEFAULT_DEBUG_SAMPLES,
    extra_metrics: Sequence[str] = (),
    whole_model: bool = False,
    denylisted_nodes: Sequence[str] = (),
    denylisted_ops: Sequence[str] = (),
    threshold: float | None = None,
    first_k: int = 0,
    session: Session | None = None,
    progress: Progress = no_progress,
) -> DebugResult:
    """Per-layer error of a recipe on an engine and, with a denylist, the selective model. Stores nothing.

    Calibration uses the first N training samples; the comparison runs on the first M test samples.
    Every per-layer row is kept, with `range = 255*scale` and `rmse_scale = sqrt(mse)/scale`, on the
    engine's scale (`Engine.metric`: the TF debugger verifies layer by layer, AI Edge Quantizer
    compares whole models, so errors propagate).

    Args:
        model, dataset: what to debug (checked to fit first).
        engine: the engine of the variant being explained (`qcore.engines.ENGINES`).
        recipe: a recipe with quantized activations the engine accepts.
        extra_metrics, whole_model: options of the TF debugger (another engine refuses them).
        denylisted_nodes, denylisted_ops: keep these in float in both the debug model and the
            selective model; with either set, the selective model is built and evaluated.
        threshold, first_k: how suspects are chosen (see `suspects`); default: the threshold of this
            model's own figures on the engine's scale (`LayerErrorMetric.suspect_threshold`).
        session: an engine session to reuse (it fixes the calibration samples).
        progress: called after each step.

    Returns:
        The statistics, model metrics, suspects and the selective model if one was built.

    Raises:
        QlabError: for a recipe or option the engine refuses, unknown denylist entries, a model with
            no layer to verify, no samples, a non-finite threshold.
    """
    eng = get_engine(engine)
    rec = recipe_of(recipe)
    if calibration_samples < 1:
        raise QlabError(f"calibration samples must be at least 1, got {calibration_samples}")
    if debug_samples < 1:
        raise QlabError(f"debug samples must be at least 1, got {debug_samples}")
    if threshold is not None and not math.isfinite(threshold):
        raise QlabError(f"threshold must be a finite number, got {threshold}")
    check_fits(model, dataset)
    debug_x = dataset.preprocess(dataset.x_test[:debug_samples])
    if len(debug_x) == 0:
        raise QlabError(f"data {dataset.name!r} has no test samples to debug with")
    progress(0.05, f"calibrating on {calibration_samples} training samples ({eng.label})")
    session = session or eng.session(model, dataset.calibration(calibration_samples))
    progress(0.2, f"comparing every layer with float on {len(debug_x)} test samples")
    errors = session.layer_errors(rec, debug_x, keep_float=denylisted_nodes, keep_ops=denylisted_ops,
                                  options=DebugOptions(tuple(extra_metrics), whole_model))
    if threshold is None:  # the model's own spread on the engine's scale: the rule every page uses
        threshold, _ = eng.metric.suspect_threshold(s.rmse_scale for s in errors.stats)
    found = suspects(errors.stats, threshold, first_k)
    settings: dict[str, Any] = {
        "recipe": rec.name, "calibration_samples": session.calibration_samples, "debug_samples": len(debug_x),
        "engine": eng.name, **errors.settings, "threshold": threshold, "first_k": first_k,
        "denylisted_nodes": list(denylisted_nodes), "denylisted_ops": list(denylisted_ops),
    }
    selective = None
    reference = None
    if denylisted_nodes or denylisted_ops:
        progress(0.85, "building and evaluating the selective model")
        outputs, reference = float_reference(model, dataset)
        selective = build_selective(session, eng.name, rec, dataset, outputs, denylisted_nodes, denylisted_ops)
    progress(1.0, f"debugged {len(errors.stats)} layers; {len(found)} suspects")
    return DebugResult(model=model.name, engine=eng.name, settings=settings, columns=errors.columns,
                       stats=errors.stats, model_metrics=errors.model_metrics, suspects=tuple(found),
                       selective=selective, reference=reference, comparison=errors.comparison)
