"""The tables and choices behind /debugger, as pure functions over the stored rows."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from dashboard.services import layers, npu_view


def run_labels(runs: pd.DataFrame) -> dict[int, str]:
    """debug run id → a label with its recipe, layers and whether denylists were applied."""
    out = {}
    for r in runs.itertuples():
        s = settings(r)
        deny = len(s.get("denylisted_nodes", [])) + len(s.get("denylisted_ops", []))
        mode = "whole-model" if s.get("whole_model") else "layer by layer"
        extra = f", {deny} kept float" if deny else ""
        engine = str(getattr(r, "engine", None) or s.get("engine") or "tf")
        if engine == "aeq":
            mode = "AI Edge Quantizer"
        out[int(r.id)] = (f"#{r.id} · {s.get('recipe', '?')} · {r.n_layers} layers · {mode}{extra} · "
                          f"{str(r.created_at)[:16]}")
    return out


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return {}


def settings(run: Any) -> dict[str, Any]:
    return _json(run["settings"] if isinstance(run, pd.Series) else run.settings)


def model_metrics(run: pd.Series) -> dict[str, float]:
    return {k: float(v) for k, v in _json(run["model_metrics"]).items() if isinstance(v, int | float)}


def max_rmse_scale(stats: pd.DataFrame) -> float:
    values = stats["rmse_scale"].replace([np.inf, -np.inf], np.nan).dropna() if not stats.empty else pd.Series()
    return float(values.max()) if len(values) else 0.0


def suspects(stats: pd.DataFrame, threshold: float, first_k: int = 0) -> list[str]:
    """Tensor names with rmse/scale above the threshold, plus the first K rows, in layer order."""
    if stats.empty:
        return []
    chosen = set(stats.loc[stats["rmse_scale"] > threshold, "tensor_name"])
    chosen.update(stats["tensor_name"].head(max(0, first_k)))
    return list(dict.fromkeys(t for t in stats["tensor_name"] if t in chosen))


def tensor_names(stats: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(stats["tensor_name"])) if not stats.empty else []


def op_types(stats: pd.DataFrame) -> list[str]:
    return sorted(set(stats["op_name"])) if not stats.empty else []


def stats_table(stats: pd.DataFrame, suspects: list[str]) -> pd.DataFrame:
    """Per-layer rows: suspect flag, short Keras layer name, op, metrics, and the full tensor name last."""
    if stats.empty:
        return stats
    cols = [c for c in ("op_name", "rmse_scale", "range", "scale", "zero_point", "mean_squared_error",
                        "max_abs_error", "mean_error", "stddev", "num_elements", "row_idx", "tensor_idx")
            if c in stats]
    out = stats[cols].copy()
    out.insert(0, "layer", layers.unique_labels(stats["tensor_name"].tolist()))
    out.insert(0, "suspect", stats["tensor_name"].isin(suspects))
    extra = stats["extra"].map(_json) if "extra" in stats else None
    if extra is not None and extra.map(bool).any():
        out = pd.concat([out, pd.DataFrame(list(extra), index=out.index)], axis=1)
    out["tensor_name"] = stats["tensor_name"]
    return out


def ranked_stats(stats: pd.DataFrame, metric: str = "rmse_scale", worst_first: bool = True, text: str = "",
                 ops: list[str] | None = None) -> pd.DataFrame:
    """The layer rows filtered by name and op type, worst first by `metric` (or in layer order)."""
    if stats.empty:
        return stats
    return layers.rank(layers.filter_rows(stats, text, ops or ()), metric, worst_first)


def metrics(stats: pd.DataFrame) -> list[str]:
    """The numeric per-layer columns a user can rank by, rmse/scale first."""
    known = ["rmse_scale", "range", "mean_squared_error", "max_abs_error", "mean_error", "stddev"]
    return [m for m in known if m in stats and pd.to_numeric(stats[m], errors="coerce").notna().any()]


def keep_float(table: pd.DataFrame, selected_rows: list[int], suspects: list[str],
               include_suspects: bool = True) -> list[str]:
    """The tensors to keep in float: the suspects (optionally) and the rows ticked in the table.

    Args:
        table: the table as shown (its row positions are what the selection reports).
        selected_rows: positions of the ticked rows.
        suspects: the tensor names above the threshold.
        include_suspects: start from the suspects.
    """
    chosen = list(suspects) if include_suspects else []
    if not table.empty:
        names = table["tensor_name"].tolist()
        chosen += [names[i] for i in selected_rows if 0 <= i < len(names)]
    return list(dict.fromkeys(chosen))


def selective_table(variants: pd.DataFrame) -> pd.DataFrame:
    """The selective variant beside the full-integer one: accuracy, drop, size, float layers."""
    if variants.empty:
        return variants
    rows = []
    for r in variants.itertuples():
        s = _json(r.settings)
        rows.append({
            "variant": r.variant, "kind": r.kind, "accuracy": r.accuracy, "float accuracy": r.float_accuracy,
            "drop (points)": None if pd.isna(r.accuracy) else round((r.float_accuracy - r.accuracy) * 100, 2),
            "size (KiB)": round(r.size_bytes / 1024, 1) if pd.notna(r.size_bytes) else None,
            "kept float": len(s.get("denylisted_nodes", [])) + len(s.get("denylisted_ops", [])),
            "NPU": npu_view.label(r._asdict()),
            "I/O": r.npu_io if isinstance(getattr(r, "npu_io", None), str) else None,
        })
    return pd.DataFrame(rows).sort_values("kind", key=lambda k: k != "ptq").reset_index(drop=True)


def tune_labels(runs: pd.DataFrame) -> dict[int, str]:
    return {int(r.id): f"#{r.id} · max drop {r.max_drop:g} points · target {r.target_accuracy:.4f} · "
            f"{'found' if pd.notna(r.chosen_variant_id) else 'none passes'} · {str(r.created_at)[:16]}"
            for r in runs.itertuples()}


def trials_table(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:
        return trials
    out = trials.copy()
    lists = out["denylist"].map(lambda d: json.loads(d) if isinstance(d, str) else list(d))
    out["layers in float"] = lists.map(len)
    out["denylist"] = lists.map(lambda names: ", ".join(layers.short_name(n) for n in names))
    out["size (KiB)"] = (out["size_bytes"].astype(float) / 1024).round(1)
    return out[["step", "layers in float", "accuracy", "size (KiB)", "passed", "denylist"]]


def matched_table(matched: pd.DataFrame, text: str = "") -> pd.DataFrame:
    """Matched tensors worst first (lowest SNR): short layer name, dtype, SNR, cosine, MSE, full name last."""
    if matched.empty:
        return matched
    data = layers.rank(layers.filter_rows(matched, text, name_col="name"), "snr_db", higher_is_worse=False)
    cols = ["quant_dtype", "shape", "snr_db", "cosine", "mse", "max_abs_error", "per_channel"]
    out = data[[c for c in cols if c in data]].copy()
    out.insert(0, "layer", layers.unique_labels(data["name"].tolist()))
    out["name"] = data["name"]
    return out.reset_index(drop=True)


def split_tensors(matched: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(activations, weights and biases): constants (int8 weights, int32 biases) apart from what flows."""
    if matched.empty or "is_constant" not in matched:
        return matched, matched.iloc[0:0]
    constant = matched["is_constant"].astype(bool)
    return matched[~constant], matched[constant]


def default_index(options: dict[int, str], name: str, avoid: int | None = None) -> int:
    """Position of the first option whose variant name is `name` (and not `avoid`), else 0 or 1."""
    ids = list(options)
    for i, vid in enumerate(ids):
        if options[vid].endswith(f"/ {name}") and vid != avoid:
            return i
    return 1 if avoid == ids[0] and len(ids) > 1 else 0
