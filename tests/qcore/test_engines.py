"""The engine registry: every engine behind one interface, so a third one is a module and a registry line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from qcore import engines
from qcore.engines import tf
from qcore.engines.base import NO_OPTIONS, DebugOptions, LayerErrorMetric, LayerErrors
from qcore.explain.debugger import run_debugger
from qcore.lab.convert import convert_and_evaluate
from qcore.lab.publish import publish
from qcore.qtyping import Dataset, LoadedModel, QlabError, Recipe
from qcore.recipes import get_recipe


class FloatOnlySession:
    """A third engine's session: float32 through the TF converter, nothing quantized."""

    def __init__(self, model: LoadedModel, calibration: np.ndarray) -> None:
        self.model, self.calibration = model, calibration

    @property
    def calibration_samples(self) -> int:
        return len(self.calibration)

    def convert(self, recipe: Recipe, keep_float: Sequence[str] = (), keep_ops: Sequence[str] = ()) -> bytes:
        return tf.convert(self.model, "float32", self.calibration)

    def layer_errors(self, recipe: Recipe, x: np.ndarray, *, keep_float: Sequence[str] = (),
                     keep_ops: Sequence[str] = (), options: DebugOptions = NO_OPTIONS) -> LayerErrors:
        raise QlabError("engine float-only has no per-layer error: nothing is quantized")

    def float_outputs(self, recipe: Recipe) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class FloatOnlyEngine:
    name: str = "float-only"
    label: str = "Float only"
    blurb: str = "a test engine"
    suffix: str = "@float-only"
    metric: LayerErrorMetric = LayerErrorMetric("none", "", 0.0, "", 1.0, False)
    model_explorer: bool = False
    debug_options: frozenset[str] = frozenset()

    def refusal(self, recipe: Recipe) -> str:
        return "" if recipe.name == "float32" else "the float-only engine makes float32 only"

    def session(self, model: LoadedModel, calibration: np.ndarray) -> FloatOnlySession:
        return FloatOnlySession(model, calibration)


@pytest.fixture()
def third_engine(monkeypatch: pytest.MonkeyPatch) -> engines.Engine:
    """The float-only engine added to the registry with one line, as a new module would be."""
    engine = FloatOnlyEngine()
    monkeypatch.setitem(engines.ENGINES, engine.name, engine)
    return engine


def test_registry_lists_tf_and_aeq_under_their_names() -> None:
    assert list(engines.ENGINES) == ["tf", "aeq"]
    assert all(name == e.name for name, e in engines.ENGINES.items())
    assert engines.variant_name("int8", "tf") == "int8" and engines.variant_name("int8", "aeq") == "int8@aeq"


def test_a_third_engine_converts_names_and_publishes_through_the_registry(third_engine: engines.Engine,
                                                                         demo: LoadedModel, digits: Dataset,
                                                                         tmp_store) -> None:
    recipes = engines.resolve_recipes("all", third_engine.name)
    assert [r.name for r in recipes] == ["float32"]  # "all" is what the engine says it can make
    report = convert_and_evaluate(demo, digits, [*recipes, get_recipe("int8")], engine=third_engine.name)
    made, refused = report.variants
    assert made.name == "float32@float-only" and made.engine == "float-only" and made.npu is not None
    assert refused.status == "failed" and "float32 only" in refused.error
    stored = publish(tmp_store, report, made_from=(demo, digits))
    row = tmp_store.variant(stored.variants[0].variant_id)
    assert (row["variant"], row["engine"]) == ("float32@float-only", "float-only")


def test_a_third_engine_reaches_the_cli_choices_and_refuses_debugging_in_words(third_engine: engines.Engine,
                                                                              demo: LoadedModel,
                                                                              digits: Dataset) -> None:
    from qcore.cli import build_parser

    args = build_parser().parse_args(["convert", "m.h5", "--data", "digits", "--engine", third_engine.name])
    assert args.engine == "float-only"
    with pytest.raises(QlabError, match="no per-layer error"):
        run_debugger(demo, digits, engine=third_engine.name, calibration_samples=5, debug_samples=5)


def test_unknown_engine_is_refused_by_name(demo: LoadedModel, digits: Dataset) -> None:
    with pytest.raises(QlabError, match="unknown engine 'onnx'; known engines: tf, aeq"):
        convert_and_evaluate(demo, digits, [get_recipe("int8")], engine="onnx")


def test_layer_error_metrics_one_threshold_rule_on_each_engines_scale() -> None:
    """Layer by layer, rounding (0.289) is the yardstick; whole model, the model's own median is."""
    from qcore.engines import ENGINES

    tf_metric, aeq_metric = ENGINES["tf"].metric, ENGINES["aeq"].metric
    even = [0.28, 0.29, 0.30, 0.31]
    threshold, stands_out = tf_metric.suspect_threshold(even)
    assert not stands_out and threshold == pytest.approx(0.433)  # 1.5 × rounding only
    assert tf_metric.suspect_threshold([*even * 10, 3.0]) == (threshold, True)
    # AEQ's propagated figures: 10-35 on every layer is no alarm, one layer at 300 is
    spread = [10.0, 12.0, 15.0, 18.0, 20.0, 25.0, 30.0, 35.0] * 8
    threshold, stands_out = aeq_metric.suspect_threshold(spread)
    assert not stands_out and 35.0 < threshold < 150.0
    assert aeq_metric.suspect_threshold([*spread, 300.0])[1]
    assert aeq_metric.reference_of(spread) == pytest.approx(19.0) and tf_metric.reference_of(spread) < 0.29
    assert "median" in aeq_metric.reference_label(spread) and "0.289" in tf_metric.reference_label(spread)
    # each scale names its engine; NaN and empty inputs neither raise nor stand out
    assert tf_metric.title.startswith("TF debugger") and aeq_metric.title.startswith("AI Edge Quantizer")
    assert aeq_metric.suspect_threshold([float("nan")]) == (aeq_metric.threshold, False)
