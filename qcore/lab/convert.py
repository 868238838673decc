"""Keras → TFLite with the recipe registry on any engine: each recipe's variant, evaluated, as a value."""

from __future__ import annotations

import logging
from collections.abc import Callable

from qcore import defaults
from qcore.engines import get_engine, variant_name
from qcore.inputs.data import check_fits
from qcore.inputs.models import float_reference
from qcore.qtyping import (
    ConvertReport,
    Dataset,
    LoadedModel,
    Progress,
    QlabError,
    Recipe,
    VariantKind,
    VariantResult,
    no_progress,
)
from qcore.tflite.evaluate import evaluate_tflite
from qcore.tflite.variant import built, failed

log = logging.getLogger(__name__)


def convert_and_evaluate(
    model: LoadedModel,
    dataset: Dataset,
    recipes: list[Recipe],
    *,
    calibration_samples: int = defaults.CALIBRATION_SAMPLES,
    progress: Progress = no_progress,
    engine: str = defaults.ENGINE,
    on_variant: Callable[[VariantResult], None] | None = None,
    on_reference: Callable[[ConvertReport], None] | None = None,
) -> ConvertReport:
    """Converts with every recipe and evaluates each variant. Stores nothing: `qcore.lab.publish` does.

    A recipe that fails gives a failed variant with its error; the others still run.

    Args:
        model, dataset: what to convert and evaluate on (checked to fit first).
        recipes: from the registry.
        calibration_samples: the first N training samples calibrate integer recipes.
        progress: called after each step.
        engine: a name of `qcore.engines.ENGINES`; a recipe the engine cannot express fails by name.
        on_variant: called with each recipe's result as soon as it is made, so a page can show
            the rows that have landed while the others still convert.
        on_reference: called once the float reference is measured, with the report so far (no
            variants yet), so a job stopped halfway can keep the recipes it finished.

    Raises:
        QlabError: when the data does not fit the model, calibration_samples < 1, or an unknown engine.
    """
    eng = get_engine(engine)
    if calibration_samples < 1:
        raise QlabError(f"calibration samples must be at least 1, got {calibration_samples}")
    check_fits(model, dataset)
    steps = len(recipes) + 1
    progress(0.0, "running the float Keras model")
    outputs, reference = float_reference(model, dataset)
    if on_reference is not None:
        on_reference(ConvertReport(model.name, reference.accuracy, (), reference=reference))
    session = eng.session(model, dataset.calibration(calibration_samples))
    results: list[VariantResult] = []
    for i, recipe in enumerate(recipes, start=1):
        progress(i / steps, f"converting with {recipe.name} on {eng.name} ({i}/{len(recipes)})")
        name = variant_name(recipe.name, eng.name)
        settings = {"recipe": recipe.name, "calibration_samples": calibration_samples, "engine": eng.name}
        try:
            refusal = eng.refusal(recipe)
            if refusal:
                raise QlabError(f"recipe {recipe.name}: {refusal}")
            tflite = session.convert(recipe)
            ev = evaluate_tflite(tflite, dataset, outputs)
        except QlabError as exc:  # the result carries the refusal; the caller says it once
            log.info("%s", exc)
            results.append(failed(name, VariantKind.PTQ, recipe.name, eng.name, str(exc), settings=settings))
        else:
            results.append(built(name, VariantKind.PTQ, recipe.name, eng.name, tflite, settings=settings,
                                 evaluation=ev))
        if on_variant is not None:
            on_variant(results[-1])
    progress(1.0, "done")
    return ConvertReport(model.name, reference.accuracy, tuple(results), reference=reference)
