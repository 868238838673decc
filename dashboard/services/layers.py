"""Views that hold up at 150+ layers: the layer names users know, filtering, ranking and the worst N."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from qcore.engines.base import LayerErrorMetric
from qcore.engines.tf import METRIC as TF_METRIC
from qcore.tflite.names import layer_name

# rmse/scale of a uniform rounding error, sqrt(1/12): what a well-quantized tensor shows
WELL_QUANTIZED = 0.289


def short_name(tensor_name: str, known: Mapping[str, str] | None = None) -> str:
    """The name users know for a tensor: the one its debugger run recorded (`known`: tensor name → layer,
    see `known_names`), else the Keras layer behind the fused name (`qcore.tflite.names.layer_name`)."""
    return layer_name(tensor_name, (known or {}).get(str(tensor_name), ""))


def known_names(rows: pd.DataFrame, name_col: str = "tensor_name") -> dict[str, str]:
    """tensor name → recorded layer name of a run's rows (`Store.layer_stats` gives every row one)."""
    if rows.empty or "layer" not in rows or name_col not in rows:
        return {}
    return {str(t): str(n) for t, n in zip(rows[name_col], rows["layer"], strict=True)
            if isinstance(n, str) and n}


def unique_labels(names: Sequence[str], known: Mapping[str, str] | None = None) -> list[str]:
    """Short names made unique for a chart axis: a repeated layer gets " (2)", " (3)"."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        short = short_name(name, known)
        seen[short] = seen.get(short, 0) + 1
        out.append(short if seen[short] == 1 else f"{short} ({seen[short]})")
    return out


def filter_rows(df: pd.DataFrame, text: str = "", ops: Sequence[str] = (), name_col: str = "tensor_name",
                op_col: str = "op_name") -> pd.DataFrame:
    """Rows whose layer or tensor name contains `text` (case-insensitive) and whose op is one of `ops`."""
    out = df
    if text.strip() and name_col in out:
        needle = text.strip().lower()
        hit = out[name_col].astype(str).str.lower().str.contains(needle, regex=False)
        if "layer" in out:  # the recorded name ("predictions") is not always part of the tensor's
            hit |= out["layer"].astype(str).str.lower().str.contains(needle, regex=False)
        out = out[hit]
    if ops and op_col in out:
        out = out[out[op_col].isin(list(ops))]
    return out


def rank(df: pd.DataFrame, metric: str, worst_first: bool = True, higher_is_worse: bool = True) -> pd.DataFrame:
    """Rows sorted by a metric, worst first (NaN last); the row order otherwise."""
    if df.empty or metric not in df or not worst_first:
        return df
    values = pd.to_numeric(df[metric], errors="coerce").replace([np.inf, -np.inf], np.nan)
    order = values.sort_values(ascending=not higher_is_worse, na_position="last", kind="stable").index
    return df.loc[order]


def suggested_threshold(values: pd.Series, metric: LayerErrorMetric = TF_METRIC) -> tuple[float, bool]:
    """The suspect threshold of one model's figures on its engine's scale, and whether any layer exceeds it.

    The one rule every page and report uses (`LayerErrorMetric.suspect_threshold`): robust outliers
    in log scale, never below 1.5 × the scale's reference.

    Returns:
        (threshold, stands_out): stands_out is False when no value lies above the threshold.
    """
    return metric.suspect_threshold(pd.to_numeric(values, errors="coerce").tolist())


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 tick values spanning [lo, hi] for a log axis, so 20 and 30 read "20" and "30", not "2" and "3"."""
    if not (lo > 0 and hi > 0) or not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    lo, hi = min(lo, hi), max(lo, hi)
    ticks = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**k
            if lo / 2 <= t <= hi * 2:
                ticks.append(float(f"{t:.6g}"))
    # too many labels crowd the axis: keep the decades only
    if len(ticks) > 12:
        ticks = [t for t in ticks if f"{t:.6g}".lstrip("0.").startswith("1")]
    return ticks


def tick_text(values: Sequence[float]) -> list[str]:
    """Readable tick labels: 0.001, 0.02, 5, 200, 1e+04."""
    return [f"{v:g}" for v in values]
