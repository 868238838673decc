"""The tables and choices behind /debugger, as pure functions over the stored rows."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from dashboard.services import npu_view


def run_labels(runs: pd.DataFrame) -> dict[int, str]:
    """debug run id → a label with its recipe, layers and whether denylists were applied."""
    out = {}
    for r in runs.itertuples():
        s = settings(r)
        deny = len(s.get("denylisted_nodes", [])) + len(s.get("denylisted_ops", []))
        mode = "whole-model" if s.get("whole_model") else "layer by layer"
        extra = f", {deny} kept float" if deny else ""
        out[int(r.id)] = f"#{r.id} · {s.get('recipe', '?')} · {r.n_layers} layers · {mode}{extra} · {str(r.created_at)[:16]}"
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
    """Tensor names with rmse/scale above the threshold, plus the first K rows, in layer order (004_*)."""
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
    """Every per-layer row with the suspect flag first (the dataframe sorts by any column)."""
    if stats.empty:
        return stats
    cols = [c for c in ("row_idx", "op_name", "tensor_name", "range", "rmse_scale", "scale", "zero_point",
                        "mean_squared_error", "max_abs_error", "mean_error", "stddev", "num_elements", "tensor_idx")
            if c in stats]
    out = stats[cols].copy()
    out.insert(0, "suspect", out["tensor_name"].isin(suspects))
    extra = stats["extra"].map(_json) if "extra" in stats else None
    if extra is not None and extra.map(bool).any():
        out = pd.concat([out, pd.DataFrame(list(extra), index=out.index)], axis=1)
    return out


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
    out["denylist"] = lists.map(", ".join)
    out["size (KiB)"] = (out["size_bytes"].astype(float) / 1024).round(1)
    return out[["step", "layers in float", "accuracy", "size (KiB)", "passed", "denylist"]]


def matched_table(matched: pd.DataFrame) -> pd.DataFrame:
    if matched.empty:
        return matched
    cols = ["name", "quant_dtype", "shape", "snr_db", "cosine", "mse", "max_abs_error", "per_channel", "is_constant"]
    return matched[[c for c in cols if c in matched]]


def default_index(options: dict[int, str], name: str, avoid: int | None = None) -> int:
    """Position of the first option whose variant name is `name` (and not `avoid`), else 0 or 1."""
    ids = list(options)
    for i, vid in enumerate(ids):
        if options[vid].endswith(f"/ {name}") and vid != avoid:
            return i
    return 1 if avoid == ids[0] and len(ids) > 1 else 0
