"""The engine interface: what every quantizer gives qlab (a recipe's .tflite, per-layer error, keep-float)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qcore.qtyping import LayerStat, LoadedModel, Recipe

# an int8 tensor spans 255 steps of its scale: a layer's `range`
INT8_STEPS = 255.0
# rmse/scale of a uniform rounding error, 1/sqrt(12): a well-quantized tensor, layer by layer
ROUNDING_ONLY = 1.0 / math.sqrt(12.0)
# a layer stands out when it lies this many robust standard deviations above the model's median (log scale)
OUTLIER_SIGMAS = 3.0
# 1.4826 * MAD estimates the standard deviation of normally distributed values
MAD_TO_SIGMA = 1.4826
# never call a layer a suspect below this multiple of the reference (rounding only, or the model's median)
MIN_SUSPECT_FACTOR = 1.5


def _positive(values: Iterable[float]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and f > 0:
            out.append(f)
    return out


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


@dataclass(frozen=True)
class LayerErrorMetric:
    """How an engine measures per-layer error, so pages, reports and the search read each on its own scale.

    The TF debugger verifies layer by layer (each quantized layer fed the float input) and its
    rmse/scale sits near 1/sqrt(12) for a well-quantized tensor; AI Edge Quantizer compares whole
    models, so errors propagate and the same column grows layer after layer. One threshold cannot
    serve both: each engine says what its figures mean.
    """

    name: str  # what a table column or axis says, e.g. "rmse/scale (layer by layer)"
    words: str  # one sentence a user reads beside the table
    reference: float  # the figure of a well-quantized layer on this scale (the reference line)
    reference_words: str  # what the reference line says
    threshold: float  # suspect threshold on this scale when a model's figures are not at hand
    propagates: bool  # errors accumulate through the model (whole-model comparison)
    engine: str = ""  # who measures on this scale, e.g. "TF debugger": every table, chart and caption names it

    @property
    def title(self) -> str:
        """Engine and metric in a few words, for a chart's axis or a table's caption."""
        return f"{self.engine}: {self.name}" if self.engine else self.name

    def reference_of(self, values: Iterable[float]) -> float:
        """The reference line for one model's figures.

        Layer by layer, a well-quantized layer reads `reference` (rounding only) on any model. When
        errors propagate, every later layer carries the earlier layers' error, so rounding alone is
        no yardstick: the model's own median layer is.
        """
        v = _positive(values)
        return _median(v) if self.propagates and v else self.reference

    def reference_label(self, values: Iterable[float]) -> str:
        """What the reference line says for one model's figures: "0.289 = rounding only"."""
        if not self.propagates:
            return self.reference_words
        return f"{self.reference_of(values):.3g} = this model's median layer"

    def suspect_threshold(self, values: Iterable[float]) -> tuple[float, bool]:
        """The suspect threshold of one model's figures on this scale, and whether any layer exceeds it.

        One rule for every page, report and search: a robust outlier in log scale (the median plus
        three robust standard deviations), never below 1.5 × the reference (rounding only layer by
        layer; the model's median when errors propagate), so a model whose layers are all alike gets
        "no layer stands out" instead of false alarms.

        Returns:
            (threshold to 3 significant digits, whether any figure lies above it).
        """
        v = _positive(values)
        floor = MIN_SUSPECT_FACTOR * self.reference_of(v)
        if not v:
            return float(f"{max(floor, self.threshold):.3g}"), False
        logs = [math.log(x) for x in v]
        median = _median(logs)
        mad = _median([abs(x - median) for x in logs])
        threshold = float(f"{max(floor, math.exp(median + OUTLIER_SIGMAS * MAD_TO_SIGMA * mad)):.3g}")
        return threshold, any(x > threshold for x in v)


@dataclass(frozen=True)
class DebugOptions:
    """Options of a per-layer error run; an engine refuses the ones it has no use for, by name."""

    extra_metrics: tuple[str, ...] = ()  # TF debugger only: names of `qcore.explain.debugger.LAYER_METRICS`
    whole_model: bool = False  # TF debugger only: float and quantized paths apart (errors propagate)


NO_OPTIONS = DebugOptions()


@dataclass(frozen=True)
class LayerErrors:
    """One engine's per-layer error table for one quantized model."""

    columns: tuple[str, ...]  # the engine's own columns, in its order
    stats: tuple[LayerStat, ...]
    model_metrics: dict[str, float]  # argmax_agreement, output_mse of the quantized model vs float
    settings: dict[str, Any] = field(default_factory=dict)  # engine-specific settings recorded with the run
    comparison: Any = field(default=None, repr=False, compare=False)  # AEQ's result, for Model Explorer


class Session(Protocol):
    """One model's work on one engine: calibration and the float base made once, shared by every call."""

    @property
    def calibration_samples(self) -> int:
        """How many calibration samples the session uses."""
        ...

    def convert(self, recipe: Recipe, keep_float: Sequence[str] = (), keep_ops: Sequence[str] = ()) -> bytes:
        """The recipe's .tflite, keeping the named op outputs (`keep_float`) and op types (`keep_ops`) in float.

        Raises:
            QlabError: naming the recipe and op when the engine refuses.
        """
        ...

    def layer_errors(self, recipe: Recipe, x: np.ndarray, *, keep_float: Sequence[str] = (),
                     keep_ops: Sequence[str] = (), options: DebugOptions = NO_OPTIONS) -> LayerErrors:
        """Per-layer error of the recipe's quantized model against float on the samples `x`.

        Raises:
            QlabError: for a recipe without quantized activations, an option the engine has no use for.
        """
        ...

    def float_outputs(self, recipe: Recipe) -> dict[str, str]:
        """Tensor name → op name of every op output keep-float can name."""
        ...


class Engine(Protocol):
    """A quantizer behind qlab; `qcore.engines.ENGINES` lists them."""

    @property
    def name(self) -> str:
        """"tf", "aeq": stored with every variant and per-layer table."""
        ...

    @property
    def label(self) -> str:
        """What users read: "TF converter"."""
        ...

    @property
    def blurb(self) -> str:
        """What it is for, in a few words users read beside its name."""
        ...

    @property
    def suffix(self) -> str:
        """The mark a variant's name carries: "" for the default engine, "@aeq"."""
        ...

    @property
    def metric(self) -> LayerErrorMetric:
        """How this engine's per-layer error reads."""
        ...

    @property
    def debug_options(self) -> frozenset[str]:
        """The `DebugOptions` fields this engine takes (the others it refuses by name)."""
        ...

    @property
    def model_explorer(self) -> bool:
        """Whether its per-layer comparison exports as Model Explorer node data (`LayerErrors.comparison`)."""
        ...

    def refusal(self, recipe: Recipe) -> str:
        """Why this engine cannot express `recipe`, or "" when it can."""
        ...

    def session(self, model: LoadedModel, calibration: np.ndarray) -> Session:
        """A session on `model`, calibrated (lazily) on `calibration`."""
        ...
