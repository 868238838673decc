"""The repair entry point: methods from a registry, applied in a fixed order to a copy of the Keras model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcore.inputs.keras_bridge import is_keras3, to_tf_keras
from qcore.qtyping import (
    FloatDrift,
    LoadedModel,
    Progress,
    QlabError,
    Recipe,
    RepairMethod,
    RepairResult,
    RepairSettings,
    RepairStep,
    no_progress,
)
from qcore.recipes import RECIPES, get_recipe
from qcore.repair.adaround import adaround
from qcore.repair.bias import correct_bias, mode_for
from qcore.repair.equalize import absorb, cle
from qcore.repair.fold import fold
from qcore.repair.graph import Draft, predict
from qcore.repair.state import RepairState, StepOutcome

log = logging.getLogger(__name__)

# outputs compared for the Keras 3 -> tf_keras rebuild check (keras_bridge's own default is 8 random samples)
BRIDGE_CHECK_SAMPLES = 8


@dataclass(frozen=True)
class MethodSpec:
    """One repair in the registry."""

    label: str  # how the repaired model's name says it, e.g. "CLE"
    summary: str  # one line users see
    run: Callable[[RepairState], StepOutcome]
    # BN must be folded first: CLE and absorption scale what the converter would fold, and the
    # grid-aware repairs must see the weights the converter will quantize
    needs_fold: bool
    needs_data: bool
    # its time against one int8-per-tensor conversion of the same model, from bench/repair.py (MobileNetV2
    # 0.35 at 32x32: CLE 0.13x with its fold, CLE + absorb 0.18x, CLE + bias 0.25x, AdaRound 2.3x): the
    # repair job's time estimate
    cost: float


METHODS: dict[RepairMethod, MethodSpec] = {
    RepairMethod.FOLD: MethodSpec("fold", "Fold BatchNormalization into the conv/depthwise/dense before it.", fold,
                                  False, False, 0.03),
    RepairMethod.CLE: MethodSpec("CLE", "Cross-layer equalization: balance channel ranges across ReLU-joined pairs "
                                        "(ReLU6 there becomes ReLU).", cle, True, False, 0.10),
    RepairMethod.ABSORB: MethodSpec("absorb", "High-bias absorption: move what a ReLU's input never goes below into "
                                              "the next layer's bias.", absorb, True, False, 0.05),
    RepairMethod.ADAROUND: MethodSpec("AdaRound", "Adaptive rounding of every kernel onto the converter's int8 grid, "
                                                  "from the calibration samples.", adaround, True, True, 2.2),
    RepairMethod.BIAS: MethodSpec("bias", "Bias correction: remove the mean output shift weight rounding causes.",
                                  correct_bias, True, False, 0.12),
}


def parse_methods(methods: str | Sequence[str]) -> tuple[RepairMethod, ...]:
    """RepairMethod names (a list or a comma-separated string) in the order `repair` applies them, without repeats.

    Raises:
        QlabError: for an empty choice or an unknown name, listing the known ones.
    """
    names = [m.strip().lower() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    known = ", ".join(m.value for m in METHODS)
    if not names:
        raise QlabError(f"no repair method given; known methods: {known}")
    chosen: set[RepairMethod] = set()
    for name in names:
        try:
            chosen.add(RepairMethod(name))
        except ValueError:
            raise QlabError(f"unknown repair method {name!r}; known methods: {known}") from None
    return tuple(m for m in METHODS if m in chosen)


def steps_for(methods: str | Sequence[str]) -> tuple[RepairMethod, ...]:
    """The steps `repair` runs for these methods, in order: fold first when another method needs it.

    Raises:
        QlabError: as `parse_methods`.
    """
    chosen = parse_methods(methods)
    if RepairMethod.FOLD not in chosen and any(METHODS[m].needs_fold for m in chosen):
        return (RepairMethod.FOLD, *chosen)
    return chosen


def cost(methods: str | Sequence[str]) -> float:
    """The repairs' expected time in conversions of the same model (`MethodSpec.cost`, from the bench)."""
    return sum(METHODS[m].cost for m in steps_for(methods))


def targetable_recipes() -> tuple[str, ...]:
    """The recipes whose int8 weight grid the repairs can target (static, calibrated, int8 weights)."""
    return tuple(r.name for r in RECIPES.values() if r.representative)


def check_recipe(recipe: str | Recipe) -> Recipe:
    """The recipe if the repairs can target its grid.

    Raises:
        QlabError: for an unknown recipe, or one without a calibrated int8 weight grid (float32,
            float16, dynamic, weight-only), listing the ones that work.
    """
    try:
        rec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    except ValueError as exc:
        raise QlabError(str(exc)) from None
    if rec.name not in targetable_recipes():
        raise QlabError(
            f"recipe {rec.name}: the repairs target the int8 weight grid and calibrated activations of a "
            f"full-integer recipe, which {rec.name} does not have; recipes they can target: "
            + ", ".join(targetable_recipes())
        )
    return rec


def _check_calibration(model: LoadedModel, calibration: np.ndarray | None) -> np.ndarray | None:
    if calibration is None:
        return None
    x = np.asarray(calibration)
    if x.dtype.kind not in "fiu":
        raise QlabError(f"calibration samples must be numbers, got dtype {x.dtype}")
    want = tuple(model.input_shape[1:])
    got = tuple(x.shape[1:])
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
        raise QlabError(f"calibration samples have shape {got} but model {model.name!r} expects {want}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise QlabError("calibration samples contain NaN or infinite values")
    return x if len(x) else None


def _drift(reference: np.ndarray, outputs: np.ndarray) -> FloatDrift:
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    top = float(np.abs(reference).max(initial=0.0))
    max_abs = float(diff.max(initial=0.0))
    return FloatDrift(max_abs=max_abs, mean_abs=float(diff.mean()) if diff.size else 0.0,
                      max_rel=max_abs / top if top > 0 else max_abs, samples=int(len(reference)))


def _keras2(model: LoadedModel, calibration: np.ndarray | None) -> Any:
    """The tf_keras model to repair: Keras 3 models are rebuilt in tf_keras (outputs checked) first."""
    if model.keras_major == 3 or is_keras3(model.keras_model):
        check = calibration[:BRIDGE_CHECK_SAMPLES] if calibration is not None else None
        return to_tf_keras(model, check_inputs=check)
    return model.keras_model


def repair(
    model: LoadedModel,
    methods: str | Sequence[str],
    calibration: np.ndarray | None,
    *,
    recipe: str | Recipe,
    progress: Progress = no_progress,
    settings: RepairSettings | None = None,
    on_step: Callable[[RepairStep, LoadedModel], None] | None = None,
) -> RepairResult:
    """Repairs a Keras model for one recipe's int8 grid, so it converts with its accuracy back.

    The repairs run on a copy, in a fixed order whatever order they are asked in: fold, cle,
    absorb, adaround, bias. Fold runs first whenever another repair is asked for (it is then
    recorded as implied). Structures a repair cannot handle are skipped by name, with the reason,
    in `RepairResult.skipped`; their layers keep their weights.

    Args:
        model: a tf_keras Sequential or Functional model; a Keras 3 one is rebuilt in tf_keras
            first (qcore.keras_bridge, which checks the outputs), and the result is tf_keras.
        methods: names from METHODS, as a list or "cle,bias".
        calibration: preprocessed input samples; needed by adaround and empirical bias
            correction, used by absorption when given, and the float drift is measured on them.
            None or empty runs the data-free repairs only.
        recipe: the recipe the repaired model is for: its weight grid (per-channel or per-tensor)
            is what adaround snaps to and bias correction corrects for.
        progress: called with a fraction and a message between and inside steps (AdaRound per layer).
        settings: the repairs' knobs; defaults from `RepairSettings`.
        on_step: called after each step with its record and the model as it stands then (the
            repair job measures each step's per-layer error on it); the model may change in place
            after the call returns.

    Returns:
        The repaired model (named e.g. "int8-per-tensor + CLE + bias"), the steps with their
        settings, changed layers and times, what was skipped and why, and the float drift.

    Raises:
        QlabError: for an unknown method or recipe, a recipe without an int8 grid, missing or
            misshapen calibration samples for a method that needs them, or a model whose graph
            cannot be read (subclassed, unbuilt, several inputs).
    """
    started = time.perf_counter()
    chosen = parse_methods(methods)
    rec = check_recipe(recipe)
    settings = settings or RepairSettings()
    x = _check_calibration(model, calibration)
    for m in chosen:
        if METHODS[m].needs_data and x is None:
            raise QlabError(f"repair method {m.value} needs calibration samples, and none were given")
    state = RepairState(Draft.from_model(_keras2(model, x)), rec, settings, x)
    for info in state.draft.graph:
        if info.nested_model:
            state.skip("all", info.name, "nested model: the repairs do not look inside it, so its layers keep "
                                         "their weights")
    if RepairMethod.BIAS in chosen:
        mode_for(state)  # refuse empirical-without-data before any work
    steps_to_run = list(steps_for(chosen))
    reference = predict(model.keras_model, x) if x is not None else None
    steps: list[RepairStep] = []
    for i, method in enumerate(steps_to_run):
        base, width = i / len(steps_to_run), 1.0 / len(steps_to_run)
        state.progress = _scaled(progress, base, width, method)
        progress(base, f"{method.value}: starting")
        t0 = time.perf_counter()
        outcome = METHODS[method].run(state)
        seconds = time.perf_counter() - t0
        built = state.draft.build()
        drift = _drift(reference, predict(built, x)) if x is not None and reference is not None else None
        settings_used = dict(outcome.settings)
        if method == RepairMethod.BIAS:
            settings_used.setdefault("mode", str(mode_for(state)))
        steps.append(RepairStep(method.value, settings_used, tuple(outcome.changed), seconds, tuple(outcome.notes),
                                drift, implied=method not in chosen))
        if on_step is not None:
            on_step(steps[-1], _loaded(" + ".join([rec.name, *(METHODS[m].label for m in steps_to_run[: i + 1])]),
                                       model, built))
        log.info("repair %s: %d layers changed in %.2f s", method.value, len(outcome.changed), seconds)
    progress(1.0, "repairs done")
    label = " + ".join([rec.name, *(METHODS[m].label for m in chosen)])
    repaired = _loaded(label, model, state.draft.build())
    return RepairResult(
        model=repaired, source=model.name, recipe=rec.name, methods=tuple(m.value for m in chosen),
        steps=tuple(steps), skipped=tuple(state.skipped), drift=steps[-1].drift if steps else None,
        relu6_replaced=tuple(state.relu6_replaced), settings=settings, seconds=time.perf_counter() - started,
    )


def _loaded(name: str, original: LoadedModel, keras_model: Any) -> LoadedModel:
    """A repaired tf_keras model as a LoadedModel (in memory: no path)."""
    return LoadedModel(
        name=name, path="", format=original.format, keras_model=keras_model,
        input_shape=tuple(None if d is None else int(d) for d in keras_model.input_shape),
        output_shape=tuple(None if d is None else int(d) for d in keras_model.output_shape), keras_major=2,
    )


def _scaled(progress: Progress, base: float, width: float, method: RepairMethod) -> Progress:
    def inner(fraction: float, message: str) -> None:
        progress(base + width * min(max(fraction, 0.0), 1.0), message)

    return inner
