"""The float-layer search: bisect over how many of the worst-quantized layers to keep in float."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcore.explain import debugger as qdebugger
from qcore.inputs.data import check_fits
from qcore.lab import convert as qconvert
from qcore.qtyping import (
    Dataset,
    Engine,
    Evaluation,
    LayerStat,
    LoadedModel,
    Progress,
    QlabError,
    Recipe,
    TuneResult,
    TuneTrial,
    VariantKind,
    no_progress,
)
from qcore.store import Store, sha256_bytes
from qcore.tflite import metrics
from qcore.tflite.evaluate import evaluate_tflite

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
    recipe: Recipe | str = qdebugger.DEFAULT_RECIPE,
    calibration_samples: int = qdebugger.DEFAULT_CALIBRATION,
    debug_samples: int = qdebugger.DEFAULT_DEBUG_SAMPLES,
    store: Store | None = None,
    out_dir: str | Path | None = None,
    progress: Progress = no_progress,
    engine: str = "tf",
    deploy_engine: str | None = None,
) -> TuneResult:
    """Searches for a small set of layers to keep in float so accuracy stays within `max_drop` points.

    Ranks layers by the debugger's rmse_scale, calibrates once, then bisects over how many of the
    top-ranked layers to denylist; each trial is a selective quantization evaluated on the test split.

    Args:
        model, dataset: what to tune (checked to fit first).
        max_drop: accuracy points below the float Keras model the result may lose (0.5 = half a point).
        recipe: an int8 recipe the debugger accepts.
        calibration_samples, debug_samples: as in `debugger.run_debugger`.
        store: where to record the debug run, the search, its trials and the chosen variant.
        out_dir: also write the chosen model to `<out_dir>/<model>-tune.tflite`.
        progress: called after each step.
        engine: who ranks layers and makes the trials: "tf" (QuantizationDebugger + mlir_quantize) or
            "aeq" (AI Edge Quantizer's validation and keep-float recipes, calibrated once).
        deploy_engine: who makes the chosen variant; when it differs from `engine`, the chosen
            denylist is converted once more with it, and that model is evaluated, stored and returned
            (its accuracy may miss the target; `chosen.passed` says). Default: `engine`.

    Returns:
        Every conversion tried and the smallest passing denylist, or `chosen=None` when even
        keeping every ranked layer in float misses the target.

    Raises:
        QlabError: for a negative or non-finite max_drop, or anything `run_debugger` refuses.
    """
    if not math.isfinite(max_drop) or max_drop < 0:
        raise QlabError(f"--max-drop must be a number of accuracy points >= 0, got {max_drop}")
    check_fits(model, dataset)
    progress(0.0, "running the float Keras model")
    reference = qconvert.keras_predict(model, dataset.test_inputs())
    float_acc = metrics.accuracy(reference, dataset.y_test)
    if not math.isfinite(float_acc):
        raise QlabError(f"data {dataset.name!r} has no test samples to measure accuracy on")
    target = float_acc - max_drop / 100.0

    def sub(lo: float, hi: float) -> Progress:
        return lambda f, msg: progress(lo + (hi - lo) * f, msg)

    engine = qconvert.check_engine(engine)
    deploy = qconvert.check_engine(deploy_engine or engine)
    recipe_name = recipe if isinstance(recipe, str) else recipe.name
    if engine == Engine.AEQ:
        from qcore.engines import aeq

        session = aeq.Session(model, dataset.calibration(calibration_samples))
        debug = aeq.run_debug(model, dataset, recipe=recipe, calibration_samples=calibration_samples,
                              debug_samples=debug_samples, store=store, session=session, progress=sub(0.05, 0.4))

        def trial(names: list[str]) -> bytes:
            return session.convert(recipe_name, keep_float=names)
    else:
        cal = qdebugger.calibrate(model, dataset, recipe=recipe, calibration_samples=calibration_samples)
        debug = qdebugger.run_debugger(
            model, dataset, recipe=recipe, calibration_samples=calibration_samples, debug_samples=debug_samples,
            store=store, calibrated=cal, progress=sub(0.05, 0.4),
        )

        def trial(names: list[str]) -> bytes:
            return qdebugger.quantize_calibrated(cal, denylisted_nodes=names)
    ranking = rank_layers(debug.stats)
    models: dict[int, tuple[bytes, Evaluation]] = {}
    budget = math.ceil(math.log2(max(len(ranking), 1))) + 2

    def try_denylist(k: int) -> tuple[float, int]:
        progress(0.4 + 0.55 * min(1.0, len(models) / budget), f"trying {k} of {len(ranking)} layers in float")
        tflite = trial(ranking[:k])
        ev = evaluate_tflite(tflite, dataset, reference)
        models[k] = (tflite, ev)
        log.info("tune: %d layers in float → accuracy %.4f (target %.4f)", k, ev.accuracy, target)
        return ev.accuracy, len(tflite)

    steps, best = bisect_denylist(len(ranking), try_denylist, target)
    tried = [TuneTrial(tuple(ranking[: s.k]), s.accuracy, s.size_bytes, s.passed, error=s.error) for s in steps]

    chosen: TuneTrial | None = None
    variant_id = run_id = None
    model_id = dataset_id = None
    if store is not None:
        model_id, dataset_id = qconvert.register(store, model, dataset, reference)
    search_accuracy = None
    if best is not None:
        tflite, ev = models[best]
        step = next(s for s in steps if s.k == best)
        search_accuracy = step.accuracy
        if deploy != engine:
            progress(0.96, f"confirming {best} layers in float with the {deploy} engine")
            tflite, ev = _confirm(model, dataset, recipe, calibration_samples, ranking[:best], reference)
            step = Step(best, ev.accuracy, len(tflite), bool(ev.accuracy + _EPS >= target))
        path = ""
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            target_path = out / f"{model.name}-tune.tflite"
            target_path.write_bytes(tflite)
            path = str(target_path)
        if store is not None and model_id is not None and dataset_id is not None:
            variant_id = store.save_variant(
                model_id=model_id, dataset_id=dataset_id,
                name=f"{recipe_name} + {best} float layers (search, max drop {max_drop:g})"
                + ("" if deploy == Engine.TF else f"@{deploy}"),
                kind=VariantKind.TUNE, recipe=recipe_name,
                settings={"denylisted_nodes": list(ranking[:best]), "max_drop": max_drop,
                          "target_accuracy": target, "recipe": recipe_name,
                          "calibration_samples": calibration_samples, "conversions": len(steps),
                          "engine": deploy, "search_engine": engine, "search_accuracy": search_accuracy},
                tflite=tflite, input_dtype=ev.input_dtype, output_dtype=ev.output_dtype, evaluation=ev,
                engine=deploy,
            )
            path = path or str(store.blob_path(sha256_bytes(tflite)))
        chosen = TuneTrial(tuple(ranking[:best]), step.accuracy, step.size_bytes, step.passed, path=path)
    if store is not None and model_id is not None and dataset_id is not None:
        run_id = store.save_tune_run(
            model_id=model_id, dataset_id=dataset_id, max_drop=max_drop, float_accuracy=float_acc,
            target_accuracy=target,
            trials=[{"denylist": list(t.denylist), "accuracy": _finite(t.accuracy), "size_bytes": t.size_bytes,
                     "passed": t.passed} for t in tried],
            chosen_variant_id=variant_id,
        )
    verdict = f"{len(chosen.denylist)} layers in float" if chosen else "no denylist reaches the target"
    progress(1.0, f"searched with {len(tried)} conversions: {verdict}")
    return TuneResult(
        model=model.name,
        max_drop=max_drop,
        float_accuracy=float_acc,
        target_accuracy=target,
        ranking=tuple(ranking),
        tried=tuple(tried),
        chosen=chosen,
        chosen_variant_id=variant_id,
        tune_run_id=run_id,
        debug_run_id=debug.debug_run_id,
        engine=engine,
        deploy_engine=deploy,
        search_accuracy=search_accuracy,
    )


def _confirm(model: LoadedModel, dataset: Dataset, recipe: Recipe | str, calibration_samples: int,
             names: Sequence[str], reference: np.ndarray) -> tuple[bytes, Evaluation]:
    """The chosen denylist converted once with the TF converter (the deployment engine)."""
    cal = qdebugger.calibrate(model, dataset, recipe=recipe, calibration_samples=calibration_samples)
    known = [n for n in names if n in cal.op_outputs]
    if len(known) < len(names):
        log.warning("tune: the TF converter has no op output named %s; kept quantized",
                    [n for n in names if n not in cal.op_outputs])
    tflite = qdebugger.quantize_calibrated(cal, denylisted_nodes=known)
    return tflite, evaluate_tflite(tflite, dataset, reference)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None
