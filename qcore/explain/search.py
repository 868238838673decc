"""The float-layer search: bisect over how many of the worst-quantized layers to keep in float."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qcore import defaults
from qcore.engines import get_engine, variant_name
from qcore.explain.debugger import recipe_of, run_debugger
from qcore.inputs.data import check_fits
from qcore.inputs.models import float_reference
from qcore.qtyping import (
    Dataset,
    Evaluation,
    LayerStat,
    LoadedModel,
    Progress,
    QlabError,
    Recipe,
    Remedy,
    RepairSettings,
    TuneResult,
    TuneTrial,
    VariantKind,
    no_progress,
    progress_slice,
)
from qcore.repair import check_recipe, parse_methods, repair
from qcore.tflite.evaluate import evaluate_tflite
from qcore.tflite.variant import built

log = logging.getLogger(__name__)

# accuracies are fractions; compare with a little slack so 0.1 + 0.2 style rounding never fails a trial
_EPS = 1e-9


@dataclass(frozen=True)
class Step:
    """One probe of the bisection: keep the top `k` ranked layers in float."""

    k: int
    accuracy: float
    size_bytes: int
    passed: bool
    error: str = ""


def rank_layers(stats: Sequence[LayerStat]) -> list[str]:
    """Tensor names by rmse_scale, worst first (NaN last), each name once."""
    def key(s: LayerStat) -> float:
        return -s.rmse_scale if math.isfinite(s.rmse_scale) else math.inf

    out: list[str] = []
    for s in sorted(stats, key=key):
        if s.tensor_name not in out:
            out.append(s.tensor_name)
    return out


def bisect_denylist(
    n_layers: int,
    try_denylist: Callable[[int], tuple[float, int]],
    target: float,
) -> tuple[list[Step], int | None]:
    """Finds the smallest k such that keeping the top-k ranked layers in float reaches `target`.

    Assumes accuracy does not fall as k grows, so it needs about log2(n_layers) + 1 calls: k = 0
    first (full quantization), then bisection between the last failing and the smallest passing
    k, with k = n_layers tried only when nothing smaller passed. Each k is tried at most once.

    Args:
        n_layers: how many ranked layers there are.
        try_denylist: k → (accuracy, size in bytes); may raise QlabError, which counts as a fail.
        target: the accuracy a trial must reach to pass.

    Returns:
        (every step in the order tried, the smallest passing k or None).
    """
    steps: list[Step] = []
    seen: dict[int, bool] = {}

    def probe(k: int) -> bool:
        if k in seen:
            return seen[k]
        try:
            acc, size = try_denylist(k)
            ok = bool(acc + _EPS >= target)
            steps.append(Step(k, float(acc), int(size), ok))
        except QlabError as exc:
            ok = False
            steps.append(Step(k, float("nan"), 0, False, str(exc)))
        seen[k] = ok
        return ok

    if probe(0):
        return steps, 0
    if n_layers <= 0:
        return steps, None
    lo, hi = 0, n_layers  # lo fails; hi passes or is untried (n_layers)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid):
            hi = mid
        else:
            lo = mid
    return steps, hi if probe(hi) else None


def tune(
    model: LoadedModel,
    dataset: Dataset,
    *,
    max_drop: float,
    recipe: Recipe | str = defaults.DEBUG_RECIPE,
    calibration_samples: int = defaults.CALIBRATION_SAMPLES,
    debug_samples: int = defaults.DEBUG_SAMPLES,
    progress: Progress = no_progress,
    engine: str = defaults.ENGINE,
    deploy_engine: str | None = None,
    repairs: Sequence[str] = defaults.TUNE_REPAIRS,
    repair_settings: RepairSettings | None = None,
) -> TuneResult:
    """Searches for a small set of layers to keep in float so accuracy stays within `max_drop` points.

    Tries the plain recipe first, then (when it misses and `repairs` are given) the model repaired
    for the recipe's grid (`qcore.repair`): every op stays integer, so a repair that meets the target
    wins. Only when the repaired model still misses does it keep layers float: it ranks the working
    model's layers (the repaired one, or the original when the repairs could not run) by the engine's
    per-layer error, and bisects over how many of the top-ranked layers to keep in float; each trial
    is evaluated on the test split. `remedy` says what met the target. Stores nothing: the result
    carries the ranking run, every trial and the chosen model.

    Args:
        model, dataset: what to tune (checked to fit first).
        max_drop: accuracy points below the float Keras model the result may lose (0.5 = half a point).
        recipe: a recipe with quantized activations the engine accepts.
        calibration_samples, debug_samples: as in `debugger.run_debugger`.
        progress: called after each step.
        engine: who ranks layers and makes the trials (`qcore.engines.ENGINES`).
        deploy_engine: who makes the chosen variant; when it differs from `engine`, the chosen
            denylist is converted once more with it, and that model is evaluated and returned
            (its accuracy may miss the target; `chosen.passed` says). Default: `engine`.
        repairs: repair methods to try before keeping any layer float (`qcore.repair.METHODS`);
            empty: none. A recipe the repairs cannot target or a model they cannot read skips them
            (`repair_error` says why).
        repair_settings: the repairs' knobs.

    Returns:
        Every conversion tried and the smallest passing denylist, or `chosen=None` when even
        keeping every ranked layer in float misses the target.

    Raises:
        QlabError: for a negative or non-finite max_drop, an unknown engine, or anything
            `run_debugger` refuses.
    """
    if not math.isfinite(max_drop) or max_drop < 0:
        raise QlabError(f"--max-drop must be a number of accuracy points >= 0, got {max_drop}")
    check_fits(model, dataset)
    search, deploy = get_engine(engine), get_engine(deploy_engine or engine)
    rec = recipe_of(recipe)
    progress(0.0, "running the float Keras model")
    outputs, reference = float_reference(model, dataset)
    float_acc = reference.accuracy
    if not math.isfinite(float_acc):
        raise QlabError(f"data {dataset.name!r} has no test samples to measure accuracy on")
    target = float_acc - max_drop / 100.0
    methods = tuple(m.value for m in parse_methods(repairs)) if repairs else ()
    calibration = dataset.calibration(calibration_samples)
    session = search.session(model, calibration)

    # the plain recipe first: it is also the search's k = 0 when no repair runs
    progress(0.02, f"converting with {rec.name}")
    plain = session.convert(rec)
    plain_ev = evaluate_tflite(plain, dataset, outputs)
    plain_passed = bool(plain_ev.accuracy + _EPS >= target)
    working, label, repair_record, repair_error, pre = model, rec.name, {}, "", []
    models: dict[int, tuple[bytes, Evaluation]] = {0: (plain, plain_ev)}
    if methods and not plain_passed:
        try:
            check_recipe(rec)
            progress(0.05, f"{rec.name} misses the target ({plain_ev.accuracy:.4f} < {target:.4f}): repairing with "
                           + ", ".join(methods))
            fixed = repair(model, methods, calibration, recipe=rec, settings=repair_settings,
                           progress=progress_slice(progress, 0.05, 0.2))
            working, label, repair_record = fixed.model, fixed.label, fixed.to_dict()
            session = search.session(working, calibration)
            repaired = session.convert(rec)
            models = {0: (repaired, evaluate_tflite(repaired, dataset, outputs))}
            pre.append(TuneTrial((), plain_ev.accuracy, len(plain), False))
            log.info("tune: %s → accuracy %.4f (target %.4f)", label, models[0][1].accuracy, target)
        except QlabError as exc:  # the search keeps layers of the original model float instead
            repair_error = str(exc)
            log.info("tune: repairs skipped: %s", exc)
    repaired_ok = bool(repair_record) and models[0][1].accuracy + _EPS >= target
    debug = run_debugger(working, dataset, engine=search.name, recipe=rec, calibration_samples=calibration_samples,
                         debug_samples=debug_samples, session=session, progress=progress_slice(progress, 0.2, 0.4))
    if repair_record:
        debug = dataclasses.replace(debug, model=model.name, settings={**debug.settings, "repairs": list(methods)})
    ranking = rank_layers(debug.stats)
    budget = math.ceil(math.log2(max(len(ranking), 1))) + 2

    def try_denylist(k: int) -> tuple[float, int]:
        if k in models:
            return models[k][1].accuracy, len(models[k][0])
        progress(0.4 + 0.55 * min(1.0, len(models) / budget), f"trying {k} of {len(ranking)} layers in float")
        tflite = session.convert(rec, keep_float=ranking[:k])
        ev = evaluate_tflite(tflite, dataset, outputs)
        models[k] = (tflite, ev)
        log.info("tune: %d layers in float → accuracy %.4f (target %.4f)", k, ev.accuracy, target)
        return ev.accuracy, len(tflite)

    steps, best = bisect_denylist(len(ranking), try_denylist, target)
    applied = methods if repair_record else ()
    tried = [*pre, *(TuneTrial(tuple(ranking[: s.k]), s.accuracy, s.size_bytes, s.passed, error=s.error,
                               repairs=applied) for s in steps)]

    chosen: TuneTrial | None = None
    variant = None
    search_accuracy = None
    if best is not None:
        tflite, ev = models[best]
        step = next(s for s in steps if s.k == best)
        search_accuracy = step.accuracy
        names = list(ranking[:best])
        if deploy.name != search.name:
            progress(0.96, f"confirming {best} layers in float with the {deploy.label}")
            deploy_session = deploy.session(working, calibration)
            known = deploy_session.float_outputs(rec)
            if any(n not in known for n in names):
                log.warning("tune: the %s has no op output named %s; kept quantized", deploy.label,
                            [n for n in names if n not in known])
            tflite = deploy_session.convert(rec, keep_float=[n for n in names if n in known])
            ev = evaluate_tflite(tflite, dataset, outputs)
            step = Step(best, ev.accuracy, len(tflite), bool(ev.accuracy + _EPS >= target))
        settings = {"denylisted_nodes": names, "max_drop": max_drop, "target_accuracy": target,
                    "recipe": rec.name, "calibration_samples": calibration_samples, "conversions": len(tried),
                    "engine": deploy.name, "search_engine": search.name, "search_accuracy": search_accuracy}
        if repaired_ok and best == 0:  # the repairs alone met it: a repaired variant, every op integer
            variant = built(variant_name(label, deploy.name), VariantKind.REPAIR, rec.name, deploy.name, tflite,
                            settings={**settings, "methods": list(applied), "repair": repair_record},
                            evaluation=ev)
        else:
            if repair_record:
                settings.update(methods=list(applied), repair=repair_record)
            variant = built(variant_name(f"{label} + {best} float layers (search, max drop {max_drop:g})",
                                         deploy.name), VariantKind.TUNE, rec.name, deploy.name, tflite,
                            settings=settings, evaluation=ev)
        chosen = TuneTrial(tuple(names), step.accuracy, step.size_bytes, step.passed, repairs=applied)
    remedy = (Remedy.MISSED if chosen is None else Remedy.NONE if plain_passed
              else (Remedy.REPAIR if best == 0 else Remedy.REPAIR_FLOAT) if repair_record else Remedy.FLOAT)
    repaired_variant = None
    if repair_record and not (repaired_ok and best == 0):
        tflite, ev = models[0]
        repaired_variant = built(variant_name(label, search.name), VariantKind.REPAIR, rec.name, search.name,
                                 tflite, settings={"recipe": rec.name, "calibration_samples": calibration_samples,
                                                   "engine": search.name, "methods": list(applied),
                                                   "repair": repair_record}, evaluation=ev)
    elif repair_record:
        repaired_variant = variant
    verdict = {Remedy.NONE: f"{rec.name} as it is", Remedy.REPAIR: f"{label}, every op integer",
               Remedy.REPAIR_FLOAT: f"{label} with {best} layers in float",
               Remedy.FLOAT: f"{best} layers in float", Remedy.MISSED: "nothing reaches the target"}[remedy]
    progress(1.0, f"searched with {len(tried)} conversions: {verdict}")
    return TuneResult(
        model=model.name,
        max_drop=max_drop,
        float_accuracy=float_acc,
        target_accuracy=target,
        ranking=tuple(ranking),
        tried=tuple(tried),
        chosen=chosen,
        debug=debug,
        chosen_variant=variant,
        engine=search.name,
        deploy_engine=deploy.name,
        search_accuracy=search_accuracy,
        reference=reference,
        remedy=remedy.value,
        repairs=methods,
        repaired_variant=repaired_variant,
        repair_record=repair_record,
        repair_error=repair_error,
    )
