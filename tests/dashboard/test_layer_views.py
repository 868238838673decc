"""Views for 150+ layers: short names, filters, ranking, the derived suspect threshold, log ticks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.services import debug_view, layers


def test_short_name_keras_layer_from_fused_name() -> None:
    fused = ("mobilenetv2_0.35_32/block_7_depthwise_relu/Relu6;mobilenetv2_0.35_32/block_7_depthwise_BN/"
             "FusedBatchNormV3;mobilenetv2_0.35_32/block_7_depthwise/depthwise1")
    assert layers.short_name(fused) == "block_7_depthwise_relu"
    assert layers.short_name("serving_default_input_1:0") == "serving_default_input_1"
    assert layers.short_name("arith.constant34") == "arith.constant34"
    assert layers.short_name("") == ""


def test_unique_labels_number_repeats() -> None:
    assert layers.unique_labels(["m/a/x", "m/a/y", "m/b/z"]) == ["a", "a (2)", "b"]


def test_labels_take_the_recorded_names_and_two_outputs_stay_distinct() -> None:
    """A run's recorded names win ("predictions"); without them two outputs of one call still differ."""
    rows = pd.DataFrame({"tensor_name": ["m/conv/Relu;m/conv/BiasAdd", "StatefulPartitionedCall:0",
                                         "StatefulPartitionedCall:1"],
                         "layer": ["conv", "predictions", "aux"]})
    known = layers.known_names(rows)
    assert layers.unique_labels(rows["tensor_name"].tolist(), known) == ["conv", "predictions", "aux"]
    assert layers.unique_labels(rows["tensor_name"].tolist()) == ["conv", "StatefulPartitionedCall",
                                                                  "StatefulPartitionedCall (2)"]
    # the table, the keep-float list and a search's trials read the same names; the filter finds them too
    table = debug_view.stats_table(rows.assign(op_name="FULLY_CONNECTED", rmse_scale=0.3), [])
    assert table["layer"].tolist() == ["conv", "predictions", "aux"]
    assert table["tensor_name"].tolist() == rows["tensor_name"].tolist()
    trials = pd.DataFrame({"step": [0], "denylist": ['["StatefulPartitionedCall:0"]'], "accuracy": [0.9],
                           "size_bytes": [2048], "passed": [True]})
    assert debug_view.trials_table(trials, known)["denylist"].tolist() == ["predictions"]
    assert layers.filter_rows(rows, "predict")["tensor_name"].tolist() == ["StatefulPartitionedCall:0"]
    # a selective job's result carries the run's rows: what the quantizer left quantized reads by name too
    doc = {"layers": [{"tensor_name": t, "layer": n} for t, n in known.items()]}
    assert debug_view.document_names(doc) == known and debug_view.document_names({}) == {}


def test_filter_rows_by_name_and_op() -> None:
    df = pd.DataFrame({"tensor_name": ["m/Block_1/x", "m/block_2/y", "m/dense/z"],
                       "op_name": ["CONV_2D", "ADD", "FULLY_CONNECTED"]})
    assert layers.filter_rows(df, "block")["tensor_name"].tolist() == ["m/Block_1/x", "m/block_2/y"]
    assert layers.filter_rows(df, "", ["ADD"])["tensor_name"].tolist() == ["m/block_2/y"]


def test_rank_worst_first_nan_and_inf_last() -> None:
    df = pd.DataFrame({"v": [0.5, np.nan, 3.0, np.inf, 1.0]})
    assert layers.rank(df, "v")["v"].tolist()[:3] == [3.0, 1.0, 0.5]
    assert layers.rank(df, "v", higher_is_worse=False)["v"].tolist()[:3] == [0.5, 1.0, 3.0]
    assert layers.rank(df, "v", worst_first=False).index.tolist() == [0, 1, 2, 3, 4]


def test_suggested_threshold_finds_the_outliers_of_a_real_looking_model() -> None:
    rng = np.random.default_rng(0)
    # 150 layers near 0.3 with some spread, and three far above: only those stand out
    values = pd.Series(np.concatenate([rng.lognormal(np.log(0.3), 0.15, 147), [2.5, 4.0, 9.0]]))
    threshold, stands_out = layers.suggested_threshold(values)
    assert stands_out
    assert (values > threshold).sum() == 3


def test_suggested_threshold_no_layer_stands_out() -> None:
    threshold, stands_out = layers.suggested_threshold(pd.Series([0.28, 0.29, 0.3, 0.31, 0.0]))
    assert not stands_out and threshold >= 1.49 * layers.WELL_QUANTIZED  # 3 significant digits
    assert layers.suggested_threshold(pd.Series([], dtype=float))[1] is False


def test_log_ticks_real_values() -> None:
    ticks = layers.log_ticks(0.3, 40.0)
    assert {0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0} <= set(ticks)
    assert layers.tick_text([20.0, 0.002, 1e4]) == ["20", "0.002", "10000"]
    assert layers.log_ticks(0.0, 5.0) == []
    wide = layers.log_ticks(1e-9, 1e3)
    assert len(wide) <= 14 and 1e-6 in wide


def test_keep_float_suspects_plus_ticked_rows() -> None:
    table = pd.DataFrame({"tensor_name": ["a", "b", "c"]})
    assert debug_view.keep_float(table, [2], ["a"]) == ["a", "c"]
    assert debug_view.keep_float(table, [2, 0], ["a"], include_suspects=False) == ["c", "a"]
    assert debug_view.keep_float(table, [7], []) == []


def test_split_tensors_weights_apart_from_activations() -> None:
    matched = pd.DataFrame({"name": ["w", "x", "b"], "is_constant": [True, False, True], "snr_db": [40.0, 20.0, 60.0],
                            "mse": [1e-9, 0.1, 1e-12]})
    act, const = debug_view.split_tensors(matched)
    assert act["name"].tolist() == ["x"] and const["name"].tolist() == ["w", "b"]
    assert debug_view.matched_table(const)["name"].tolist() == ["w", "b"]  # worst (lowest SNR) first


def test_op_count_bars_most_frequent_first_split_by_compute() -> None:
    from dashboard.components.inspection import op_count_bars
    from dashboard.services.inspection import op_counts

    ops = pd.DataFrame({"op": ["ADD"] * 3 + ["CONV_2D"] * 5 + ["MEAN"],
                        "computes in": ["float", "integer", "integer"] + ["integer"] * 5 + ["float"]})
    counts = op_counts(ops)
    assert counts["op"].tolist()[0] == "CONV_2D"
    fig = op_count_bars(counts)
    assert {t.name for t in fig.data} == {"computes in float", "computes in integer"}
    assert list(fig.layout.yaxis.categoryarray) == ["CONV_2D", "ADD", "MEAN"]


def test_pace_clock_eta_and_status() -> None:
    from datetime import datetime

    from dashboard.services import pace

    assert pace.clock(42.4) == "42 s" and pace.clock(187) == "3:07" and pace.clock(3725) == "1:02:05"
    assert pace.clock(None) == "–"
    assert pace.eta(0, 9, 10.0) is None and pace.eta(3, 9, 30.0) == 60.0 and pace.eta(9, 9, 90.0) == 0.0
    status = pace.convert_status({"variants": [{}, {}, {}], "recipes_total": 9, "elapsed_s": 30.0}, 40.0)
    assert status == "3 of 9 recipes done · 40 s elapsed · about 50 s left"
    assert pace.since("2026-12-01 10:00:00", datetime(2026, 12, 1, 10, 1, 30)) == 90.0
    assert pace.since("not a time", datetime(2026, 12, 1)) is None
