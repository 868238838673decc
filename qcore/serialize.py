"""The one JSON serializer of results: the CLI's --json, job results, the API and the store's JSON columns."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def json_default(obj: Any) -> Any:
    """The one `json.dumps` fallback (results, the store's JSON columns, the API): numpy values,
    dataclasses, enums, paths, datetimes, bytes; anything else as text."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "isoformat"):  # datetime, date, pandas Timestamp
        return obj.isoformat()
    if isinstance(obj, bytes):
        return f"<{len(obj)} bytes>"
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    return str(obj)  # anything else as text: a stored row or an answer never fails on an odd value


def finite(value: Any) -> float | None:
    """A number as a finite float, or None (NaN, infinities, and what is not a number): JSON has no NaN."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any, *, indent: int | None = None) -> str:
    """The one serializer of results: the CLI's `--json`, job results and the API all print this.

    NaN and infinities become null, so every document is strict JSON.
    """
    plain = json.loads(json.dumps(obj, default=json_default))
    return json.dumps(_finite(plain), indent=indent, allow_nan=False)


def frame_records(df: Any) -> list[dict[str, Any]]:
    """A DataFrame as JSON records, the way every list answer of the API and `qlab list` give them:
    ISO dates, NaN as null, floats to pandas' 10 digits (so a local and a remote list are equal)."""
    return json.loads(df.to_json(orient="records", date_format="iso")) if len(df) else []
