"""Elapsed time and an ETA for a running job, from its own published pace (pure, no clock of its own)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def clock(seconds: float | None) -> str:
    """"42 s", "3:07", "1:02:05"."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def since(created_at: str, now: datetime) -> float | None:
    """Seconds from a job row's created_at text (the store's local time) to `now`."""
    try:
        start = datetime.fromisoformat(str(created_at))
    except ValueError:
        return None
    if start.tzinfo is not None:
        start = start.replace(tzinfo=None)
    return max(0.0, (now - start).total_seconds())


def eta(done: int, total: int, elapsed_s: float | None) -> float | None:
    """Time left if the remaining steps go at the pace of those done; None before the first one."""
    if not done or elapsed_s is None or total <= done:
        return None if total > done else 0.0
    return elapsed_s / done * (total - done)


def convert_status(partial: dict[str, Any], elapsed_s: float | None) -> str:
    """"3 of 9 recipes done · 1:12 elapsed · about 2:30 left" for a running conversion."""
    done = len(partial.get("variants") or [])
    total = int(partial.get("recipes_total") or 0)
    parts = [f"{done} of {total} recipes done" if total else f"{done} recipes done", f"{clock(elapsed_s)} elapsed"]
    # the pace up to the last landed recipe, so the estimate does not drift while one converts
    left = eta(done, total, partial.get("elapsed_s"))
    if left is not None and total:
        since_last = max(0.0, (elapsed_s or 0.0) - float(partial.get("elapsed_s") or 0.0))
        parts.append(f"about {clock(max(0.0, left - since_last))} left")
    return " · ".join(parts)
