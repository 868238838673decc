"""The pandas behind the pages' tables, as pure functions (DataFrame in, DataFrame out)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dashboard.services import npu_view
from qcore.engines import ENGINES
from qcore.qtyping import SCORING_LABELS, Job, npu_label_words

# the question a user asks first ("does it run on the NPU, and what does it cost?") reads left to right
# without scrolling at 1440 px: name, NPU verdict, accuracy and its change, size, latency; details after
COMPARE_COLUMNS = {
    "variant_id": "id",
    "model": "model",
    "variant": "variant",
    "npu": "NPU",
    "accuracy": "accuracy (%)",
    "drop_points": "Δ vs float (points)",
    "size_kib": "size (KiB)",
    "board_p50_ms": "board p50 (ms)",
    "host_p50_ms": "host p50 (ms)",
    "engine": "engine",
    "kind": "kind",
    "dataset": "dataset",
    "io": "I/O",
    "size_vs_float": "size vs float (×)",
    "top5": "top-5 (%)",
    "agreement": "agreement (%)",
    "scored_by": "scored by",
    "output_mse": "output MSE",
    "status": "status",
    "error": "error",
}
# the accuracy a user gives up for the NPU unless they say otherwise: points below the float model
NPU_BUDGET_POINTS = 1.0


def compare_table(df: pd.DataFrame) -> pd.DataFrame:
    """The /compare table: accuracy, top-5, agreement (or output MSE), size, host and board latency per variant."""
    if df.empty:
        return pd.DataFrame(columns=list(COMPARE_COLUMNS.values()))
    out = df.copy()
    # imported detectors and landmark models are scored against their reference, not by top-1
    scoring = out["scoring"] if "scoring" in out else pd.Series("classes", index=out.index)
    out["scored_by"] = scoring.map(SCORING_LABELS).fillna(SCORING_LABELS["classes"])
    if "output_mse" not in out:
        out["output_mse"] = float("nan")
    if "dataset" not in out:
        out["dataset"] = None
    if "engine" not in out:  # rows from a store before migration 0009 or an imported report
        out["engine"] = "tf"
    out["engine"] = out["engine"].fillna("tf")
    out["size_kib"] = (out["size_bytes"].astype(float) / 1024.0).round(1)
    # negative: the variant lost accuracy against the float Keras model
    out["drop_points"] = ((out["accuracy"].astype(float) - out["float_accuracy"].astype(float)) * 100).round(2)
    # one accuracy format everywhere: percent with 2 decimals
    for col in ("accuracy", "top5", "agreement"):
        out[col] = (out[col].astype(float) * 100).round(2)
    records = out.to_dict("records")
    out["npu"] = [npu_view.label(r) for r in records]
    out["io"] = [r.get("npu_io") if isinstance(r.get("npu_io"), str)
                 else f"{r.get('input_dtype') or '?'} → {r.get('output_dtype') or '?'}" for r in records]
    out["size_vs_float"] = [npu_view.size_ratio(r.get("size_bytes"), r.get("float_size_bytes")) for r in records]
    for col in ("host_p50_ms", "board_p50_ms"):
        out[col] = out[col].astype(float).round(4)
    return out[list(COMPARE_COLUMNS)].rename(columns=COMPARE_COLUMNS).reset_index(drop=True)


@dataclass(frozen=True)
class NpuPick:
    """The variant to ship on the NPU among some, or why there is none."""

    variant_id: int | None
    variant: str  # "" when none
    words: str  # one line the page shows: the pick and why, or what to do instead


def npu_pick(df: pd.DataFrame, budget_points: float = NPU_BUDGET_POINTS,
             latency: Mapping[int, float] | None = None, where: str = "") -> NpuPick:
    """Best for the NPU: NPU-ready, within `budget_points` of the float model, fastest where timed, else smallest.

    Args:
        df: rows of v_variant_summary.
        budget_points: the accuracy the user accepts to lose, in points below float (accuracy − float ≥ −budget).
        latency: variant id → p50 ms on the chosen board; the fastest timed candidate wins when any is timed.
        where: the board (and target) those times come from, named in the words.
    """
    ok = df[df["status"] == "ok"] if not df.empty else df
    ready = ok[[npu_view.ready(r) is True for r in ok.to_dict("records")]] if not ok.empty else ok
    if ready.empty:
        return NpuPick(None, "", "No NPU-ready variant here: convert with int8, uint8 or a per-tensor recipe "
                                 "(integer-only, int8/uint8 I/O).")
    drop = (ready["accuracy"].astype(float) - ready["float_accuracy"].astype(float)) * 100
    within = ready[drop.notna() & (drop >= -float(budget_points) - 1e-9)]
    if within.empty:
        closest = ready.loc[drop.idxmax()] if drop.notna().any() else ready.iloc[0]
        lost = drop.max()
        how = f"loses {-lost:.2f} points" if lost == lost else "has no accuracy yet"
        return NpuPick(None, "", f"No NPU-ready variant is within {budget_points:g} points of float: the closest, "
                                 f"{closest['variant']} (#{int(closest['variant_id'])}), {how}. Try keep-float or "
                                 "the search on the Debugger page, or QAT.")
    timed = {int(v): float(latency[int(v)]) for v in within["variant_id"] if latency and int(v) in latency}
    if timed:
        vid = min(timed, key=lambda v: (timed[v], v))
        row = within[within["variant_id"] == vid].iloc[0]
        why = f"fastest of {len(within)} NPU-ready within budget: {timed[vid]:.3g} ms p50" + (
            f" on {where}" if where else "")
    else:
        row = within.sort_values(["size_bytes", "variant_id"], kind="stable").iloc[0]
        vid = int(row["variant_id"])
        why = f"smallest of {len(within)} NPU-ready within budget ({float(row['size_bytes']) / 1024:.1f} KiB; " \
              "time them on a board to pick by speed)"
    change = (float(row["accuracy"]) - float(row["float_accuracy"])) * 100
    return NpuPick(vid, str(row["variant"]),
                   f"Best for the NPU: {row['variant']} (#{vid}, {engine_label(row.get('engine'))}): "
                   f"accuracy {float(row['accuracy']) * 100:.2f}% ({change:+.2f} points vs float, within the "
                   f"{budget_points:g}-point budget); {why}.")


def board_latency(timings: pd.DataFrame, board: str) -> tuple[dict[int, float], str]:
    """variant id → p50 ms on `board` (its NPU target when timed there, else its fastest target), and where.

    Args:
        timings: rows of v_bench_wide (variant_id, board, target, p50_ms), newest first.
        board: the board chosen.
    """
    rows = timings[timings["board"] == board] if not timings.empty else timings
    if rows.empty:
        return {}, board
    npu = rows[rows["target"] == "npu"]
    use = npu if not npu.empty else rows
    # newest timing per variant and target, then the fastest target per variant
    latest = use.drop_duplicates(["variant_id", "target"])
    best = latest.groupby("variant_id")["p50_ms"].min()
    return {int(v): float(t) for v, t in best.items() if t == t}, f"{board} / {'npu' if not npu.empty else 'fastest target'}"


def engine_label(engine: Any) -> str:
    """The engine as users read it ("TF converter"); an unknown name stays as it is."""
    name = str(engine) if isinstance(engine, str) and engine else "tf"
    return ENGINES[name].label if name in ENGINES else name


def last_worked_model(df: pd.DataFrame) -> int | None:
    """The model of the newest variant (made, imported or re-run last): where Compare opens."""
    if df.empty:
        return None
    order = df.sort_values(["updated_at", "variant_id"], kind="stable") if "updated_at" in df else df.sort_values(
        "variant_id")
    return int(order["model_id"].iloc[-1])


def last_dataset(variants: pd.DataFrame) -> int | None:
    """The dataset a model's newest variant was made with (its last valid pair), or None."""
    if variants.empty or "dataset_id" not in variants:
        return None
    made = variants.dropna(subset=["dataset_id"])
    if made.empty:
        return None
    order = made.sort_values(["updated_at", "variant_id"], kind="stable") if "updated_at" in made else made
    return int(order["dataset_id"].iloc[-1])


def model_label(row: Mapping[str, Any]) -> str:
    """A model as a selector shows it, unique and telling apart: "#3 mnv2 (h5, 2026-12-06 21:40)";
    a bundle's copy says where it came from: "#5 mnv2 (tflite, from report 'int8 for the NPU', ...)"."""
    source = str(row.get("source_path") or "")
    where = f", from report {source.removeprefix('imported:').strip()!r}" if source.startswith("imported:") else ""
    made = str(row.get("created_at") or "")[:16]
    return f"#{row.get('id')} {row.get('name')} ({row.get('format')}{where}{', ' + made if made else ''})"


def variant_label(row: Mapping[str, Any]) -> str:
    """A variant as a selector shows it: id, model / name, then the dataset it was made on and its accuracy,
    so a second "mnv2 / int8@aeq" made on other data reads differently: "#12 mnv2 / int8@aeq · digits32 · 92.00%"."""
    parts = [f"#{row.get('variant_id')} {row.get('model')} / {row.get('variant')}"]
    dataset = row.get("dataset")
    if isinstance(dataset, str) and dataset:
        parts.append(dataset)
    acc = row.get("accuracy")
    try:
        if acc is not None and float(acc) == float(acc):
            parts.append(f"{100 * float(acc):.2f}%")
    except (TypeError, ValueError):
        pass
    if row.get("status") not in (None, "ok"):
        parts.append(str(row.get("status")))
    return " · ".join(parts)


def best_per_model(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: the most accurate variant, the smallest, and the fastest on this host.

    Ties on accuracy go to the smaller file; failed variants never win. Vectorised: the
    overview runs this over every variant of the store.
    """
    cols = ["model_id", "model", "variants", "best for the NPU", "most accurate", "accuracy (%)", "smallest",
            "size (KiB)", "fastest (host)", "host p50 (ms)"]
    ok = df[df["status"] == "ok"] if not df.empty else df
    if ok.empty:
        return pd.DataFrame(columns=cols)

    def first(by: list[str], ascending: list[bool], value: str, name: str, out: str) -> pd.DataFrame:
        ranked = ok.dropna(subset=[by[0]]).sort_values(by, ascending=ascending, kind="stable")
        top = ranked.drop_duplicates("model_id")[["model_id", "variant", value]]
        return top.rename(columns={"variant": name, value: out})

    out = ok.groupby(["model_id", "model"], sort=False).size().rename("variants").reset_index()
    for part in (first(["accuracy", "size_bytes"], [False, True], "accuracy", "most accurate", "accuracy"),
                 first(["size_bytes"], [True], "size_bytes", "smallest", "size (KiB)"),
                 first(["host_p50_ms"], [True], "host_p50_ms", "fastest (host)", "host p50 (ms)")):
        out = out.merge(part, on="model_id", how="left")
    out["accuracy (%)"] = (out["accuracy"].astype(float) * 100).round(2)
    out["size (KiB)"] = (out["size (KiB)"].astype(float) / 1024).round(1)
    out["host p50 (ms)"] = out["host p50 (ms)"].astype(float).round(4)
    out["fastest (host)"] = out["fastest (host)"].astype(object).where(out["fastest (host)"].notna(), None)
    # NPU-ready within the default budget, fastest on a board where timed, else smallest (Compare's pick)
    picks = {}
    for model_id, part in ok.groupby("model_id", sort=False):
        board = part["board_p50_ms"].astype(float) if "board_p50_ms" in part else pd.Series(dtype=float)
        timed = {int(v): float(t) for v, t in zip(part["variant_id"], board, strict=False) if t == t}
        pick = npu_pick(part, latency=timed, where="a board")
        none = "no NPU-ready variant" if pick.words.startswith("No NPU-ready variant here") else (
            f"none within {NPU_BUDGET_POINTS:g} point of float")
        picks[int(model_id)] = pick.variant or none
    out["best for the NPU"] = out["model_id"].map(picks)
    return out[cols]


def jobs_table(jobs: Sequence[Job]) -> pd.DataFrame:
    """Recent jobs as rows: status, progress, message or error, which worker ran it, times."""
    return pd.DataFrame(
        [{"id": j.id, "kind": j.kind, "status": str(j.status), "progress": round(j.progress, 2),
          "message": j.error if j.error else j.message,
          "worker": f"{j.worker_host} ({j.worker})" if j.worker else "", "by": j.created_by or "",
          "created": j.created_at[:19], "elapsed": elapsed(j)} for j in jobs],
        columns=["id", "kind", "status", "progress", "message", "worker", "by", "created", "elapsed"],
    )


def landed_table(variants: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The recipes a running conversion has finished so far, as its worker reported them."""
    return pd.DataFrame(
        [{"variant": v.get("recipe"), "NPU": npu_label_words(v.get("npu")), "status": v.get("status"),
          "accuracy (%)": _pct(v.get("accuracy")), "size (KiB)": _kib(v.get("size_bytes")), "I/O": v.get("io", ""),
          "engine": v.get("engine", "tf"), "error": v.get("error") or ""}
         for v in variants],
        columns=["variant", "NPU", "status", "accuracy (%)", "size (KiB)", "I/O", "engine", "error"],
    )


def _pct(x: Any) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):.2f}"


def _kib(n: Any) -> str:
    return "–" if not n else f"{float(n) / 1024:.1f}"


def elapsed(job: Job) -> str:
    """How long a job has run (or ran): "1 min 05 s", "12 s"; "" before it starts."""
    if not job.started_at:
        return ""
    try:
        start = dt.datetime.fromisoformat(job.started_at)
        end = dt.datetime.fromisoformat(job.finished_at) if job.finished_at else None
    except ValueError:
        return ""
    if end is None:
        end = dt.datetime.now(start.tzinfo) if start.tzinfo else dt.datetime.now()
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def bench_for_plot(bench: pd.DataFrame, variants: pd.DataFrame) -> pd.DataFrame:
    """Benchmarks joined with "model / variant" labels, newest first, for components.latency."""
    if bench.empty:
        return bench.assign(label=pd.Series(dtype=str))
    labels = variants.set_index("variant_id")
    out = bench.copy()
    out["label"] = [
        f"{labels.at[v, 'model']} / {labels.at[v, 'variant']}" if v in labels.index else f"sha {s[:8]}"
        for v, s in zip(out["variant_id"], out["sha256"], strict=True)
    ]
    out["target"] = [("host" if b == "host" else t) for b, t in zip(out["board"], out["target"], strict=True)]
    return out.sort_values("benchmark_id", ascending=False).reset_index(drop=True)


def drift_table(evals: pd.DataFrame, variants: pd.DataFrame) -> pd.DataFrame:
    """On-board accuracy beside the host's, with the drift in points and the output agreement."""
    cols = ["variant", "device", "n", "accuracy", "host accuracy", "drift (points)", "agreement with host"]
    if evals.empty:
        return pd.DataFrame(columns=cols)
    host = evals[evals["device"] == "host"].set_index("variant_id")["accuracy"]
    names = variants.set_index("variant_id")
    rows = []
    for r in evals[evals["device"] != "host"].itertuples():
        h = host.get(r.variant_id)
        label = (f"{names.at[r.variant_id, 'model']} / {names.at[r.variant_id, 'variant']}"
                 if r.variant_id in names.index else f"#{r.variant_id}")
        rows.append({
            "variant": label, "device": r.device.removeprefix("board:"), "n": r.n_samples,
            "accuracy": r.accuracy, "host accuracy": h,
            "drift (points)": None if h is None or pd.isna(h) else round((r.accuracy - h) * 100, 2),
            "agreement with host": r.host_agreement,
        })
    return pd.DataFrame(rows, columns=cols)
