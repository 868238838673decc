"""The NPU verdict as words for every place a variant appears (read from the stored lint, never the model)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from qcore.qtyping import npu_label_words

NOT_LINTED = "no NPU verdict yet (this variant was stored before verdicts existed)"


def _number(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def size_change(size_bytes: Any, float_size_bytes: Any) -> str:
    """"-73% vs float (1.54 MiB → 0.42 MiB)", or "" when either size is unknown."""
    size, base = _number(size_bytes), _number(float_size_bytes)
    if size is None or not base:
        return ""
    change = 100.0 * (size / base - 1.0)
    return f"{change:+.0f}% vs float ({_mib(base)} → {_mib(size)})".replace("-", "−")


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def size_ratio(size_bytes: Any, float_size_bytes: Any) -> float | None:
    """size / float size, e.g. 0.27 for a 4× smaller file."""
    size, base = _number(size_bytes), _number(float_size_bytes)
    return None if size is None or not base else round(size / base, 3)


def ready(row: Mapping[str, Any]) -> bool | None:
    """True / False from the stored verdict, None when the variant has none."""
    value = row.get("npu_ready")
    # DuckDB hands a nullable boolean column over as pd.NA, which bool() refuses
    if value is None or bool(pd.isna(value)):
        return None
    return bool(value)


def verdict_line(row: Mapping[str, Any]) -> str:
    """One line for a variant: the verdict, its I/O dtypes and the size change against float."""
    if ready(row) is None:
        return NOT_LINTED
    parts = [str(row.get("npu_verdict") or "")]
    if row.get("npu_io"):
        parts.append(f"I/O {row['npu_io']}")
    size = size_change(row.get("size_bytes"), row.get("float_size_bytes"))
    if size:
        parts.append(f"size {size}")
    return " · ".join(p for p in parts if p)


def label(row: Mapping[str, Any]) -> str:
    """A table cell in words: "NPU-ready: integer-only", "not NPU-ready: 12 float ops → CPU", or "–"."""
    return npu_label_words(row.get("npu_label")) or "–"
