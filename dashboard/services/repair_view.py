"""What the Debugger page shows of repairs: repaired variants beside their plain one, per-layer error per stage,
which remedy met a search's target."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from dashboard.services import layers
from qcore.repair import METHODS, targetable_recipes

# a method's name → what the page says of it (the registry's own line)
METHOD_WORDS: dict[str, str] = {m.value: f"{spec.label}: {spec.summary}" for m, spec in METHODS.items()}
# the recipes the repairs can target, the NPU's fast path first
RECIPES: list[str] = sorted(targetable_recipes(), key=lambda r: (r != "int8-per-tensor", r))


def settings_of(row: Any) -> dict[str, Any]:
    """A variant row's settings as a dict (stored as JSON text)."""
    raw = dict(row).get("settings")
    if isinstance(raw, str) and raw:
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return raw if isinstance(raw, dict) else {}


def repaired(variants: pd.DataFrame) -> pd.DataFrame:
    """The model's repaired variants (kind `repair`), newest first."""
    if variants.empty or "kind" not in variants:
        return variants.iloc[0:0]
    return variants[variants["kind"] == "repair"].sort_values("variant_id", ascending=False)


def options(variants: pd.DataFrame) -> dict[int, str]:
    """Repaired variant id → "int8-per-tensor + CLE + bias · 0.955 · #12"."""
    out: dict[int, str] = {}
    for _, row in repaired(variants).iterrows():
        acc = row.get("accuracy")
        shown = f"{float(acc):.3f}" if acc is not None and acc == acc else "-"
        out[int(row["variant_id"])] = f"{row['variant']} · {shown} · #{int(row['variant_id'])}"
    return out


def plain_of(variants: pd.DataFrame, row: Any) -> Any | None:
    """The plain recipe's variant a repaired one was made beside (same recipe and engine, kind ptq)."""
    row = dict(row)
    same = variants[(variants["kind"] == "ptq") & (variants["recipe"] == row.get("recipe"))
                    & (variants["engine"].fillna("tf") == (row.get("engine") or "tf"))]
    return same.iloc[0] if not same.empty else None


def side_by_side(variants: pd.DataFrame, row: Any) -> pd.DataFrame:
    """The plain variant and the repaired one: accuracy, agreement, size, NPU verdict."""
    rows = [r for r in (plain_of(variants, row), row) if r is not None]
    out = pd.DataFrame([{
        "variant": r["variant"], "accuracy": r.get("accuracy"), "agreement": r.get("agreement"),
        "size (KiB)": round(float(r["size_bytes"]) / 1024, 1) if r.get("size_bytes") == r.get("size_bytes") else None,
        "NPU": r.get("npu_label"), "engine": r.get("engine") or "tf",
    } for r in (dict(x) for x in rows)])
    return out


def stage_frame(row: Any) -> tuple[pd.DataFrame, list[str], str]:
    """(one row per layer with its error at each stage, the stages in order, the metric's name) of a repaired
    variant; empty when it was stored without them (a search's repair)."""
    found = settings_of(row).get("layer_errors") or {}
    stages = [str(s) for s in found.get("stages") or []]
    frame = pd.DataFrame(found.get("rows") or [])
    if frame.empty:
        return frame, stages, str(found.get("metric") or "")
    # rows stored before layer names were recorded have no "layer": the Keras layer of the tensor name stands in
    known = layers.known_names(frame)
    frame = frame.drop(columns=["layer"], errors="ignore")
    frame.insert(0, "layer", layers.unique_labels(frame["tensor_name"].astype(str).tolist(), known))
    return frame, stages, str(found.get("metric") or "")


def steps_table(row: Any) -> pd.DataFrame:
    """Each repair step as applied: layers changed, seconds, the float model's drift, notes."""
    steps = (settings_of(row).get("repair") or {}).get("steps") or []
    return pd.DataFrame([{
        "repair": s["method"] + (" (implied)" if s.get("implied") else ""),
        "layers changed": len(s.get("changed") or []), "seconds": round(float(s.get("seconds") or 0), 2),
        "float drift (max, relative)": (s.get("drift") or {}).get("max_rel"),
        "notes": "; ".join(s.get("notes") or []),
    } for s in steps])


def skipped_table(row: Any) -> pd.DataFrame:
    """Structures the repairs left alone, by name, with the reason."""
    return pd.DataFrame((settings_of(row).get("repair") or {}).get("skipped") or [],
                        columns=["method", "layer", "reason"])


def remedy(chosen: Any | None) -> str:
    """Which remedy met a search's target, in words, from its chosen variant's row (None: nothing met it)."""
    if chosen is None:
        return "nothing met the target: not the repairs, not every ranked layer in float"
    row = dict(chosen)
    settings = settings_of(row)
    methods = " + ".join(METHODS_LABEL.get(m, m) for m in settings.get("methods") or [])
    floats = len(settings.get("denylisted_nodes") or [])
    if row.get("kind") == "repair":
        return f"the repairs ({methods}) met the target with every layer quantized"
    if methods:
        return f"the repairs ({methods}) missed it; {floats} layers kept float on the repaired model met it"
    if floats:
        return f"{floats} layers kept float met it"
    return "the plain recipe met it"


METHODS_LABEL: dict[str, str] = {m.value: spec.label for m, spec in METHODS.items()}
