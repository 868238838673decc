"""Every figure builder, called without a browser: the right traces, lines and empty states."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboard.components.confusion import confusion_heatmap
from dashboard.components.debugger import (
    WELL_QUANTIZED_RMSE_SCALE,
    layer_bars,
    tensor_snr_bars,
    tune_trials_plot,
)
from dashboard.components.latency import latency_bars
from dashboard.components.qmath import mapping_plot
from dashboard.components.style import SUSPECT_COLOR
from dashboard.components.tradeoff import pareto_front, size_bars, tradeoff_scatter
from dashboard.components.training import qat_curves
from qcore.engines.aeq import METRIC as AEQ_METRIC
from qcore.engines.tf import METRIC as TF_METRIC
from qcore.tflite.qmath import mapping_table


@pytest.fixture()
def variants() -> pd.DataFrame:
    """Four variants of two models: b is dominated by a (bigger, less accurate); d has no latency."""
    return pd.DataFrame({
        "model": ["m1", "m1", "m1", "m2"],
        "variant": ["a", "b", "c", "d"],
        "size_bytes": [4096, 8192, 2048, 1024],
        "accuracy": [0.95, 0.90, 0.80, np.nan],
        "host_p50_ms": [1.0, 2.0, 0.5, np.nan],
    })


def _annotation_text(fig) -> str:
    return " ".join(a.text for a in fig.layout.annotations)


def test_pareto_front_marks_only_undominated_points(variants: pd.DataFrame) -> None:
    front = pareto_front(variants, "size_bytes", "accuracy")
    assert front.tolist() == [True, False, True, False]


def test_pareto_front_equal_points_both_stay() -> None:
    df = pd.DataFrame({"x": [1.0, 1.0], "y": [0.5, 0.5]})
    assert pareto_front(df, "x", "y").tolist() == [True, True]


def _points(fig):
    return next(t for t in fig.data if t.name == "variants")


def _legend(fig) -> list:
    return [t for t in fig.data if t.mode == "markers" and t.name != "variants"]


def test_tradeoff_scatter_draws_front_through_its_points(variants: pd.DataFrame) -> None:
    fig = tradeoff_scatter(variants, "size_bytes", "accuracy")
    front = next(t for t in fig.data if t.name == "Pareto front (labelled)")
    assert list(front.x) == [2.0, 4.0]  # KiB, sorted by size: c then a
    assert list(front.y) == [80.0, 95.0]  # percent
    # one model shown (d has no accuracy): one colour per recipe; only the front is labelled, all on hover
    points = _points(fig)
    assert list(points.text) == ["c", "a", ""] and points.cliponaxis is False
    assert len(set(points.marker.color)) == 3
    assert [c[0] for c in points.customdata] == ["m1 / c", "m1 / a", "m1 / b"]


def test_tradeoff_scatter_symbol_per_engine_fill_per_npu_verdict_and_float_line(variants: pd.DataFrame) -> None:
    df = variants.assign(npu_ready=[True, False, True, None], float_accuracy=0.97, engine=["tf", "tf", "aeq", "tf"])
    fig = tradeoff_scatter(df, "size_bytes", "accuracy")
    symbols = dict(zip([c[0] for c in _points(fig).customdata], _points(fig).marker.symbol, strict=True))
    assert symbols == {"m1 / a": "circle", "m1 / b": "circle-open", "m1 / c": "diamond"}
    keys = {t.name: t.marker.symbol for t in _legend(fig)}
    assert keys["engine tf"] == "circle" and keys["engine aeq"] == "diamond"
    assert keys["NPU-ready"] == "circle" and keys["not NPU-ready"] == "circle-open"
    assert "float model 97.00%" in _annotation_text(fig)


def test_tradeoff_scatter_readable_at_20_variants() -> None:
    """20 variants of 10 recipes on two engines: distinct colours per recipe, a short legend, labels on the front only."""
    from qcore.recipes import RECIPES

    recipes = list(RECIPES)
    df = pd.DataFrame({
        "model": "mnv2", "variant": [r + ("@aeq" if i >= 10 else "") for i, r in enumerate(recipes * 2)],
        "recipe": recipes * 2, "engine": ["tf"] * 10 + ["aeq"] * 10,
        "size_bytes": np.linspace(200_000, 1_600_000, 20), "accuracy": np.r_[np.linspace(0.90, 0.93, 10), np.linspace(0.80, 0.92, 10)],
        "npu_ready": [True, False] * 10,
    })
    fig = tradeoff_scatter(df, "size_bytes", "accuracy")
    points = _points(fig)
    colour_of = dict(zip(df.sort_values("size_bytes")["recipe"], points.marker.color, strict=False))
    assert len(set(colour_of.values())) == 10  # no colour shared by two recipes
    labelled = [t for t in points.text if t]
    assert 0 < len(labelled) < 20  # only the Pareto front carries text
    legend = [t.name for t in _legend(fig)]
    assert len(legend) == 10 + 2 + 2  # recipes, engines, NPU fill: not one entry per variant
    assert fig.layout.legend.orientation == "h"


def test_tradeoff_scatter_latency_in_microseconds_under_1ms_and_log_over_10x(variants: pd.DataFrame) -> None:
    fig = tradeoff_scatter(variants, "host_p50_ms", "accuracy")
    assert fig.layout.xaxis.title.text == "host latency p50 (ms)"  # 0.5 .. 2 ms: ms, linear
    assert fig.layout.xaxis.type == "linear"
    fast = variants.assign(host_p50_ms=[0.01, 0.2, 0.5, np.nan])
    fig = tradeoff_scatter(fast, "host_p50_ms", "accuracy", target="this host / cpu")
    xs = sorted(_points(fig).x)
    assert xs == [10.0, 200.0, 500.0]
    assert fig.layout.xaxis.title.text == "host latency p50 (µs) · this host / cpu (log)"
    assert fig.layout.xaxis.type == "log"


def test_tradeoff_scatter_empty_says_why() -> None:
    fig = tradeoff_scatter(pd.DataFrame(columns=["model", "variant", "size_bytes", "accuracy"]))
    assert not fig.data
    assert "no variant" in _annotation_text(fig)


def test_size_bars_in_kib_grouped_by_model(variants: pd.DataFrame) -> None:
    fig = size_bars(variants)
    assert [t.name for t in fig.data] == ["m1", "m2"]
    assert list(fig.data[0].y) == [4.0, 8.0, 2.0]


def test_size_bars_empty_says_why() -> None:
    assert "no converted" in _annotation_text(size_bars(pd.DataFrame()))


def test_confusion_heatmap_counts_and_accuracy() -> None:
    fig = confusion_heatmap([[3, 1], [0, 4]], "m / int8")
    assert fig.data[0].z.tolist() == [[3, 1], [0, 4]]
    assert "accuracy 0.875" in fig.layout.title.text


def test_confusion_heatmap_without_evaluation_says_why() -> None:
    assert "no evaluation" in _annotation_text(confusion_heatmap(None, "m / x"))


def test_confusion_heatmap_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        confusion_heatmap([[1, 2, 3], [4, 5, 6]])


@pytest.fixture()
def stats() -> pd.DataFrame:
    """Three layer rows; the last is badly quantized."""
    return pd.DataFrame({
        "row_idx": [0, 1, 2], "op_name": ["CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED"],
        "tensor_name": ["conv", "pool", "logits"], "range": [2.0, 2.0, 40.0], "rmse_scale": [0.29, 0.0, 2.2],
    })


def test_layer_bars_ranked_worst_first_with_short_names(stats: pd.DataFrame) -> None:
    fig = layer_bars(stats, threshold=0.7, suspects=["logits"])
    rmse_bars, range_bars = [t for t in fig.data if t.type == "bar"]
    assert list(rmse_bars.y) == ["logits", "conv", "pool"]  # worst first
    assert list(rmse_bars.x) == [2.2, 0.29, 0.0]
    assert list(range_bars.x) == [40.0, 2.0, 2.0]
    assert list(rmse_bars.marker.color)[0] == SUSPECT_COLOR
    assert list(rmse_bars.marker.color)[1] != SUSPECT_COLOR
    lines = [s.x0 for s in fig.layout.shapes]
    assert 0.7 in lines and TF_METRIC.reference in lines and abs(TF_METRIC.reference - WELL_QUANTIZED_RMSE_SCALE) < 1e-3
    # the lines' words are legend entries above the plot, never a label box over a bar
    keys = [t.name for t in fig.data if t.type == "scatter"]
    assert keys == ["suspect above 0.7", "0.289 = rounding only"]
    assert not [a for a in fig.layout.annotations if a.yref != "paper" or a.y < 1]  # only the panels' titles
    assert fig.layout.legend.yanchor == "top" and fig.layout.legend.y > 1 - fig.layout.margin.t / fig.layout.height
    assert "TF debugger: rmse/scale (layer by layer)" in _annotation_text(fig)


def test_layer_bars_whole_model_scale_draws_the_models_median_not_rounding() -> None:
    """AEQ's propagated figures (10-35 on MobileNetV2) get their own reference line and axis title."""
    rng = np.random.default_rng(0)
    values = np.exp(rng.normal(np.log(18.0), 0.3, 64))
    stats = pd.DataFrame({"row_idx": range(64), "op_name": ["CONV_2D"] * 64,
                          "tensor_name": [f"model/block_{i}/Relu6" for i in range(64)],
                          "range": np.ones(64), "rmse_scale": values})
    threshold, stands_out = AEQ_METRIC.suspect_threshold(values)
    fig = layer_bars(stats, threshold, scale=AEQ_METRIC)
    lines = sorted(s.x0 for s in fig.layout.shapes)
    assert lines == sorted([threshold, float(np.median(values))])
    assert all(line > 5 for line in lines)  # no 0.289 line beside figures of 10-35
    keys = [t.name for t in fig.data if t.type == "scatter"]
    assert keys[1].endswith("= this model's median layer") and "0.289" not in " ".join(keys)
    assert "AI Edge Quantizer: rmse/scale (whole model)" in _annotation_text(fig)
    assert not stands_out and threshold > values.max()


def test_layer_bars_top_n_of_150_layers_fused_names_log_ticks() -> None:
    n = 150
    names = [f"model/block_{i}_expand_relu/Relu6;model/block_{i}_expand_BN/FusedBatchNormV3;model/block_{i}_x/Conv2D"
             for i in range(n)]
    stats = pd.DataFrame({"row_idx": range(n), "op_name": ["CONV_2D"] * n, "tensor_name": names,
                          "range": np.linspace(1.0, 300.0, n), "rmse_scale": np.linspace(0.25, 30.0, n)})
    fig = layer_bars(stats, threshold=1.0, top_n=20)
    bars = fig.data[0]
    assert len(bars.y) == 20 and bars.y[0] == "block_149_expand_relu"
    assert max(len(label) for label in bars.y) < 30  # short Keras names, not the fused TF name
    assert "model/block_149_expand_relu/Relu6" in bars.customdata[0][1]  # the full name is in the hover
    assert "worst 20 of 150" in fig.layout.title.text
    every = layer_bars(stats, threshold=1.0, top_n=0)
    assert len(every.data[0].y) == 150
    assert every.layout.xaxis.type == "log"  # 0.25 .. 30: spans over 10x
    assert "20" in every.layout.xaxis.ticktext and "2" in every.layout.xaxis.ticktext
    assert every.layout.height >= 150 * 20  # a bar per layer stays readable
    in_order = layer_bars(stats, threshold=1.0, top_n=5, worst_first=False)
    assert list(in_order.data[0].y) == [f"block_{i}_expand_relu" for i in range(5)]


def test_layer_bars_empty_run_says_why() -> None:
    assert "no layer" in _annotation_text(layer_bars(pd.DataFrame(), 0.7))


def test_tune_trials_plot_splits_passed_and_failed() -> None:
    trials = pd.DataFrame({"step": [0, 1, 2], "denylist": ['["a"]', '["a", "b"]', "[]"],
                           "accuracy": [0.90, 0.95, 0.85], "size_bytes": [5000, 6000, 4000],
                           "passed": [False, True, False]})
    fig = tune_trials_plot(trials, float_accuracy=0.96, target_accuracy=0.955 - 0.01)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["passed"].x) == [2]
    assert sorted(by_name["failed"].x) == [0, 1]
    assert {round(s.y0, 3) for s in fig.layout.shapes} == {0.96, 0.945}


def test_tensor_snr_bars_clip_identical_tensors_worst_first() -> None:
    fig = tensor_snr_bars(pd.DataFrame({"name": ["in", "m/conv/Conv2D"], "snr_db": [math.inf, 31.5],
                                        "mse": [0.0, 1.5e-7]}))
    assert list(fig.data[0].x) == [31.5, 120.0]
    assert list(fig.data[0].y) == ["conv", "in"]
    assert fig.data[0].customdata[0][1] == "1.500e-07"  # tiny MSE in scientific notation


def test_qat_curves_loss_and_accuracy_panels() -> None:
    history = pd.DataFrame({"epoch": [1, 2], "loss": [0.5, 0.3], "accuracy": [0.8, 0.9]})
    fig = qat_curves(history)
    assert [t.name for t in fig.data] == ["loss (training)", "accuracy (training)"]
    assert list(fig.data[1].y) == [0.8, 0.9]
    # with QAT's validation figures: a dashed held-out curve beside each
    fig = qat_curves(history.assign(val_loss=[0.6, 0.45], val_accuracy=[0.75, 0.85]))
    names = [t.name for t in fig.data]
    assert names == ["loss (training)", "loss (validation)", "accuracy (training)", "accuracy (validation)"]
    assert fig.data[3].line.dash == "dash" and list(fig.data[3].y) == [0.75, 0.85]


def test_qat_curves_before_first_epoch_says_why() -> None:
    assert "no epoch" in _annotation_text(qat_curves(pd.DataFrame()))


def test_latency_bars_first_inference_apart_and_one_bar_per_target() -> None:
    bench = pd.DataFrame({
        "label": ["m / int8", "m / int8", "m / int8"], "board": ["imx", "imx", "imx"],
        "target": ["npu", "cpu", "cpu-plain"], "p50_ms": [0.4, 2.0, 3.0], "first_ms": [900.0, 2.5, 3.5],
    })
    fig = latency_bars(bench)
    names = [t.name for t in fig.data]
    assert names == ["npu", "npu", "cpu", "cpu", "cpu-plain", "cpu-plain"]
    npu_steady, npu_first = fig.data[0], fig.data[1]
    assert list(npu_steady.y) == [0.4] and list(npu_first.y) == [900.0]
    assert npu_steady.xaxis == "x" and npu_first.xaxis == "x2"


def test_latency_bars_two_boards_never_share_a_look() -> None:
    bench = pd.DataFrame({"label": ["m / int8"] * 3, "board": ["imx-1", "imx-2", "host"],
                          "target": ["cpu", "cpu", "host"], "p50_ms": [2.0, 2.2, 1.0], "first_ms": [2.5, 2.6, 1.2]})
    fig = latency_bars(bench)
    looks = {t.name: (t.marker.color, t.marker.pattern.shape) for t in fig.data}
    assert looks["imx-1 · cpu"] != looks["imx-2 · cpu"]
    assert len(set(looks.values())) == len(looks)


def test_latency_bars_keeps_newest_row_per_variant_and_target() -> None:
    bench = pd.DataFrame({"label": ["v", "v"], "board": ["b", "b"], "target": ["cpu", "cpu"],
                          "p50_ms": [1.0, 9.0], "first_ms": [1.0, 9.0]})
    assert list(latency_bars(bench).data[0].y) == [1.0]


def test_latency_bars_empty_says_why() -> None:
    empty = pd.DataFrame(columns=["label", "target", "p50_ms", "first_ms"])
    assert "no benchmark" in _annotation_text(latency_bars(empty))


def test_mapping_plot_staircase_and_marked_value() -> None:
    table = mapping_table(-2.0, 6.0, -128, 127, n=101)
    fig = mapping_plot(table, marked=(3.0, 32, 3.0117647))
    staircase, error, marker = fig.data
    assert staircase.line.shape == "hv"
    assert min(staircase.y) == -128 and max(staircase.y) == 127
    assert list(marker.y) == [32]
    assert "zero point -64" in fig.layout.title.text


def test_mapping_plot_rejects_empty_table() -> None:
    with pytest.raises(ValueError, match="empty"):
        mapping_plot(pd.DataFrame())


def test_latency_bars_names_boards_but_not_the_host() -> None:
    bench = pd.DataFrame({"label": ["v", "v"], "board": ["host", "imx"], "target": ["host", "npu"],
                          "p50_ms": [2.0, 0.0007], "first_ms": [2.5, 900.0]})
    fig = latency_bars(bench)
    assert [t.name for t in fig.data][::2] == ["imx · npu", "host"]
    assert list(fig.data[0].text) == ["0.0007"]  # tiny timings keep their digits


def test_recall_change_heatmap_points_against_float() -> None:
    from dashboard.components.confusion import recall_change_heatmap

    base = [[10, 0], [0, 10]]
    fig = recall_change_heatmap({"int8": [[9, 1], [0, 10]], "odd": [[1]]}, base)
    heat = fig.data[0]
    assert list(heat.y) == ["int8"]  # a matrix with other classes is left out
    assert np.allclose(np.asarray(heat.z)[0], [-10.0, 0.0])
    assert heat.zmid == 0


def test_confusion_diff_heatmap_counts_moved_predictions() -> None:
    from dashboard.components.confusion import confusion_diff_heatmap

    fig = confusion_diff_heatmap([[9, 1], [2, 8]], [[10, 0], [0, 10]], "int8")
    assert np.asarray(fig.data[0].z).tolist() == [[-1, 1], [2, -2]]
    assert "3 predictions moved" in fig.layout.title.text
    assert "differ" in _annotation_text(confusion_diff_heatmap([[1]], [[1, 0], [0, 1]], "x"))


def test_latency_bars_title_names_board_and_targets() -> None:
    bench = pd.DataFrame({"label": ["v", "v", "v"], "board": ["imx", "imx", "host"], "target": ["npu", "cpu", "host"],
                          "p50_ms": [0.4, 2.0, 1.0], "first_ms": [900.0, 2.5, 1.0]})
    assert latency_bars(bench).layout.title.text == "measured on board imx: npu, cpu · this host (CPU, LiteRT)"
