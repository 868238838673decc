"""Shareable reports: a snapshot of chosen variants and their results, exported as HTML or a zip bundle.

A report's content is a JSON snapshot taken when it is made, so a link shows what was shared
even after the variants are re-run. The bundle (report.json + Parquet tables + the .tflite
files) is what another qlab imports: new rows in its store, blobs named by sha256.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import secrets
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Protocol

import duckdb
import pandas as pd

from qcore import __version__, defaults
from qcore.engines import ENGINES
from qcore.lab.import_tflite import IMPORTED_ENGINE
from qcore.lab.svg_figures import figure_svg
from qcore.qtyping import (
    SCORING_LABELS,
    Evaluation,
    Latency,
    NpuVerdict,
    QlabError,
    Scoring,
    VariantStatus,
    npu_label_words,
    npu_mark,
)
from qcore.recipes import RECIPES
from qcore.serialize import finite
from qcore.store import Store, check_sha256, sha256_bytes
from qcore.tflite.inspection import inspect, npu_verdict

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "qlab-report-bundle"
BUNDLE_VERSION = 1
# a bundle is untrusted input: cap what it may unpack to (counted as it unpacks, so lying headers
# do not help), its entries, its report.json, and any single .tflite
MAX_BUNDLE_UNPACKED_BYTES = 256 << 20
MAX_BUNDLE_ENTRIES = 2000
MAX_REPORT_JSON_BYTES = 16 << 20
MAX_BUNDLE_TFLITE_BYTES = 128 << 20
# free text from a bundle (names, titles, notes) is cut to this length
MAX_TEXT = 10_000
TABLES = ("variants", "evaluations", "benchmarks")

VARIANT_COLUMNS = [
    "variant_id", "model_id", "model", "dataset_id", "dataset", "variant", "kind", "recipe", "engine", "status",
    "error",
    "size_bytes", "sha256", "input_dtype", "output_dtype", "settings", "float_accuracy", "accuracy", "top5",
    "agreement", "batched", "host_p50_ms", "board_p50_ms", "npu_ready", "npu_label", "npu_verdict", "npu_io",
    "float_size_bytes", "scoring", "output_mse",
]
BENCH_COLUMNS = [
    "benchmark_id", "variant_id", "sha256", "board", "target", "threads", "xnnpack", "runs", "warmup",
    "init_ms", "first_ms", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms", "peak_rss_mb",
    "created_at",
]
MODEL_COLUMNS = ["id", "name", "format", "sha256", "input_shape", "output_shape", "keras_major"]
DATASET_COLUMNS = ["id", "name", "source", "sha256", "input_scale", "input_offset", "n_train", "n_test",
                   "num_classes"]


def _records(df: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """JSON-safe rows: NaN → null, timestamps → ISO text."""
    cols = [c for c in columns if c in df.columns]
    if df.empty:
        return []
    return json.loads(df[cols].to_json(orient="records", date_format="iso"))


def build_content(store: Store, variant_ids: Sequence[int]) -> dict[str, Any]:
    """Snapshots the chosen variants with their evaluations (host and boards), confusions and timings.

    Raises:
        QlabError: when no variant is chosen or an id is unknown.
    """
    ids = sorted({int(v) for v in variant_ids})
    if not ids:
        raise QlabError("a report needs at least one variant")
    variants = store.variant_summary(variant_ids=ids)
    missing = sorted(set(ids) - set(int(v) for v in variants["variant_id"]))
    if missing:
        raise QlabError(f"no variant with id {', '.join(map(str, missing))}")
    models = store.models()
    datasets = store.datasets()
    evaluations = store.device_evaluations(ids)
    return {
        "qlab_version": __version__,
        "snapshot_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "variants": _records(variants, VARIANT_COLUMNS),
        "models": _records(models[models["id"].isin(variants["model_id"])], MODEL_COLUMNS),
        "datasets": _records(datasets[datasets["id"].isin(variants["dataset_id"])], DATASET_COLUMNS),
        "evaluations": _records(evaluations, list(evaluations.columns)),
        "confusion": {str(v): m for v in ids if (m := store.confusion(v)) is not None},
        "benchmarks": _records(store.benchmarks(variant_ids=ids), BENCH_COLUMNS),
        "op_cost": op_cost_content(store, ids),
        "debugger": debugger_content(store, variants),
        "qat": qat_content(store, variants),
    }


# the worst layers a report lists per debugger run
DEBUG_WORST = 10


def debugger_content(store: Store, variants: pd.DataFrame) -> list[dict[str, Any]]:
    """The newest debugger run of each (model, dataset) in the report: its worst layers by rmse/scale."""
    out: list[dict[str, Any]] = []
    for (model_id, dataset_id), part in variants.groupby(["model_id", "dataset_id"], sort=False):
        runs = store.debug_runs(int(model_id))
        runs = runs[runs["dataset_id"] == dataset_id]
        if runs.empty:
            continue
        run = runs.iloc[0]
        stats = store.layer_stats(int(run["id"]))
        if stats.empty:
            continue
        settings = json.loads(run["settings"]) if isinstance(run["settings"], str) else (run["settings"] or {})
        ranked = stats.assign(_r=pd.to_numeric(stats["rmse_scale"], errors="coerce")).sort_values(
            "_r", ascending=False, na_position="last")
        out.append({
            "model": str(part["model"].iloc[0]), "debug_run_id": int(run["id"]),
            "recipe": settings.get("recipe"), "layers": len(stats),
            "engine": str(run.get("engine") or settings.get("engine") or defaults.ENGINE),
            "worst": [{"layer": str(r.layer), "op": r.op_name, "rmse_scale": finite(r.rmse_scale),
                       "range": finite(r.range)} for r in ranked.head(DEBUG_WORST).itertuples()],
        })
    return out


def qat_content(store: Store, variants: pd.DataFrame) -> list[dict[str, Any]]:
    """Each QAT variant of the report: what was trained, the last epoch, Keras against TFLite accuracy."""
    out: list[dict[str, Any]] = []
    for r in variants[variants["kind"] == "qat"].itertuples():
        settings = json.loads(r.settings) if isinstance(r.settings, str) else (r.settings or {})
        history = store.training_history(int(r.variant_id))
        last = history.iloc[-1] if not history.empty else None
        out.append({
            "variant": f"{r.model} / {r.variant}", "layers": settings.get("layers"),
            "epochs": settings.get("epochs"), "train_samples": settings.get("train_samples"),
            "final_loss": finite(last["loss"]) if last is not None and "loss" in last else None,
            "keras_accuracy": finite(settings.get("keras_accuracy")), "tflite_accuracy": finite(r.accuracy),
            "range_drift": finite(settings.get("range_drift")), "warnings": list(settings.get("warnings") or []),
        })
    return out


def variant_names(content: dict[str, Any]) -> dict[int, str]:
    """variant id → "model / variant" from the snapshot, so tables never show bare ids."""
    return {int(v["variant_id"]): f"{v.get('model')} / {v.get('variant')}" for v in content.get("variants", [])
            if v.get("variant_id") is not None}


def latency_table(content: dict[str, Any]) -> pd.DataFrame:
    """Every timing of the report: variant by name, where it ran (board and target), threads, p50 and first."""
    bench = frames(content)["benchmarks"]
    cols = ["variant", "board", "target", "threads", "runs", "first (ms)", "p50 (ms)", "p90 (ms)"]
    if bench.empty:
        return pd.DataFrame(columns=cols)
    names = variant_names(content)
    return pd.DataFrame({
        "variant": [names.get(int(v), f"#{v}") if pd.notna(v) else "–" for v in bench["variant_id"]],
        "board": ["this host" if b == "host" else b for b in bench["board"]],
        "target": ["CPU (LiteRT)" if t == "host" else t for t in bench["target"]],
        "threads": bench["threads"], "runs": bench["runs"],
        "first (ms)": bench["first_ms"].astype(float).round(3), "p50 (ms)": bench["p50_ms"].astype(float).round(3),
        "p90 (ms)": bench["p90_ms"].astype(float).round(3),
    })


def board_accuracy_table(content: dict[str, Any]) -> pd.DataFrame:
    """On-board accuracy with variants by name and the board/target spelled out."""
    evals = frames(content)["evaluations"]
    boards = evals[evals["device"] != "host"]
    host = evals[evals["device"] == "host"].set_index("variant_id")["accuracy"].astype(float)
    names = variant_names(content)
    accuracy = boards["accuracy"].astype(float)
    return pd.DataFrame({
        "variant": [names.get(int(v), f"#{v}") for v in boards["variant_id"]],
        "board / target": [str(d).removeprefix("board:") for d in boards["device"]],
        "samples": boards["n_samples"], "accuracy (%)": (accuracy * 100).round(2),
        # negative: the board lost accuracy against the same file on this host
        "drift vs host (points)": ((accuracy - boards["variant_id"].map(host)) * 100).round(2),
        "agreement with host (%)": (boards["host_agreement"].astype(float) * 100).round(2),
    })


def debugger_tables(content: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """(caption, worst layers) per debugger run in the report."""
    out = []
    for run in content.get("debugger") or []:
        engine = ENGINES.get(str(run.get("engine") or defaults.ENGINE))
        scale = (f"{engine.label}, {engine.metric.name}; {engine.metric.reference_words}" if engine is not None
                 else f"engine {run.get('engine')}")
        caption = (f"{run.get('model')}: the {len(run.get('worst') or [])} worst of {run.get('layers')} layers "
                   f"({run.get('recipe')}, debugger run #{run.get('debug_run_id')}; {scale})")
        out.append((caption, pd.DataFrame(run.get("worst") or [], columns=["layer", "op", "rmse_scale", "range"])))
    return out


def qat_table(content: dict[str, Any]) -> pd.DataFrame:
    """One row per QAT variant: layers trained, epochs, Keras vs TFLite accuracy, range drift, warnings."""
    rows = content.get("qat") or []
    return pd.DataFrame([{
        "variant": q.get("variant"), "layers": ", ".join(q.get("layers") or []), "epochs": q.get("epochs"),
        "final loss": q.get("final_loss"),
        "Keras accuracy (%)": None if q.get("keras_accuracy") is None else round(100 * q["keras_accuracy"], 2),
        "TFLite accuracy (%)": None if q.get("tflite_accuracy") is None else round(100 * q["tflite_accuracy"], 2),
        "range drift": q.get("range_drift"), "warnings": "; ".join(q.get("warnings") or []) or "none",
    } for q in rows])


def notes_html(notes: str) -> str:
    """The notes' markdown as HTML (CommonMark; raw HTML in the notes is escaped, never run)."""
    from markdown_it import MarkdownIt

    return str(MarkdownIt("commonmark", {"html": False}).render(notes))


def op_cost_content(store: Store, variant_ids: Sequence[int]) -> dict[str, Any]:
    """Per-op error beside per-op time for the variants that have a debugger run or a board profile."""
    from qcore.lab.op_cost import op_cost, report_rows
    from qcore.qtyping import TimeSource

    out: dict[str, Any] = {}
    for vid in variant_ids:
        try:
            cost = op_cost(store, vid)
        except QlabError as exc:  # a failed variant has no graph to cost
            log.info("no op cost for variant %s: %s", vid, exc)
            continue
        rows = report_rows(cost)
        run_id = cost.debug_run_id
        if not quantized_activations(store.variant(vid)):
            # a float variant has no quantization error of its own: the model's debugger run is another file's
            run_id = None
            rows = [{**r, "rmse_scale": None, "range": None} for r in rows]
        if run_id is None and cost.time_source == TimeSource.ESTIMATE:
            continue  # nothing measured about this variant's layers: an estimate alone is no finding
        out[str(vid)] = {"variant": cost.variant, "board": cost.board, "target": cost.target,
                         "time_source": cost.time_source, "total_ms": cost.total_ms,
                         "debug_run_id": run_id, "engine": _run_engine(store, vid, run_id),
                         "notes": list(cost.notes), "rows": rows}
    return out


def quantized_activations(variant: dict[str, Any]) -> bool:
    """Whether a stored variant quantizes its activations (per-layer error means something for it).

    float32, float16, dynamic range and weight-only keep float activations; QAT, selective and
    imported variants, and unknown recipes, are taken as quantized.
    """
    recipe = variant.get("recipe")
    if variant.get("kind") == "ptq" and isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe].representative
    return True


def _run_engine(store: Store, variant_id: int, run_id: int | None) -> str | None:
    if run_id is None:
        return None
    runs = store.debug_runs(int(store.variant(variant_id)["model_id"]))
    hit = runs[runs["id"] == run_id]
    if hit.empty:
        return None
    engine = hit["engine"].iloc[0]
    return str(engine) if isinstance(engine, str) and engine else defaults.ENGINE


# the rows a report's per-layer table shows; the full table sits folded under it
TABLE_TOP = 10


def op_cost_tables(content: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """(caption, table) per variant of the report's per-op error and time, as the HTML shows them."""
    out = []
    for entry in (content.get("op_cost") or {}).values():
        df = pd.DataFrame(entry.get("rows") or [])
        if df.empty:
            continue
        df = df.rename(columns={"time_share": "share of time", "float_on_cpu_ms": "kept float on CPU (ms)",
                                "float_extra_ms": "extra if float (ms)"})
        engine = ENGINES.get(str(entry.get("engine") or ""))
        error = (f"; error: {engine.metric.title}, debugger run #{entry.get('debug_run_id')}" if engine is not None
                 else "; no per-layer error (float activations)" if entry.get("debug_run_id") is None else "")
        caption = (f"{entry.get('variant')}: time on {entry.get('board')} / {entry.get('target')} "
                   f"[{entry.get('time_source')}], total {float(entry.get('total_ms') or 0):.3f} ms{error}")
        df = df.sort_values("share of time", ascending=False, na_position="last", kind="stable")
        out.append((caption, df.reset_index(drop=True)))
    return out


def make_report(store: Store, title: str, notes: str, variant_ids: Sequence[int]) -> str:
    """Stores a report of these variants; returns its id (used in `?report=<id>`)."""
    if not title.strip():
        raise QlabError("a report needs a title")
    return store.save_report(title, notes, build_content(store, variant_ids))


def frames(content: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The snapshot's tables as DataFrames (variants, evaluations, benchmarks, models, datasets)."""
    columns = {"variants": VARIANT_COLUMNS, "benchmarks": BENCH_COLUMNS, "models": MODEL_COLUMNS,
               "datasets": DATASET_COLUMNS, "evaluations": ["variant_id", "device", "n_samples", "accuracy",
                                                            "top5", "agreement", "host_agreement"]}
    return {name: pd.DataFrame(content.get(name) or [], columns=cols) for name, cols in columns.items()}


# ---------------------------------------------------------------- HTML
_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#1B1F24;overflow-wrap:break-word}
h1{margin-bottom:.2rem} .meta{color:#5F6368;margin-bottom:1.5rem} .notes{background:#F3F5F8;padding:.5rem 1rem;
border-radius:6px} .notes pre{overflow-x:auto} .wrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}
th,td{border:1px solid #DADCE0;padding:.3rem .5rem;text-align:right;white-space:nowrap;overflow-wrap:normal;
word-break:normal}
details{margin:-.5rem 0 1rem} summary{cursor:pointer;color:#0F6CBD}
.npu .mark{display:inline-block;min-width:7.5rem;padding:0 .4rem;border-radius:4px;font-size:.8rem;text-align:center}
.npu .ready .mark{background:#E6F4EA;color:#137333} .npu .cpu .mark{background:#FEF7E0;color:#B06000}
.npu .unknown .mark{background:#F1F3F4;color:#5F6368}
th{background:#F3F5F8} td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}
.fig{margin:1.5rem 0;max-width:100%;overflow:hidden} .npu li{margin:.2rem 0}
.fig svg{width:100%;height:auto;display:block} .fig-note{color:#B06000}
@media print{.fig{break-inside:avoid}}
"""


class _HasToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


# a Plotly figure (anything with to_dict()) or its dict: the export needs only the data
PlotlyFigure = Mapping[str, Any] | _HasToDict


def _table_html(df: pd.DataFrame, top: int = 0, what: str = "rows") -> str:
    """A table that scrolls inside its box; with `top`, the first `top` rows and the whole table folded below."""
    if df.empty:
        return "<p><em>none</em></p>"

    def html_of(part: pd.DataFrame) -> str:
        part = part.infer_objects().astype(object).where(part.notna(), float("nan"))  # None reads "–" too
        table = part.to_html(index=False, border=0, na_rep="–", float_format=lambda v: f"{v:.4g}", escape=True)
        # a wide table scrolls inside its box, never the page
        return f"<div class='wrap'>{table}</div>"

    if top <= 0 or len(df) <= top:
        return html_of(df)
    return (html_of(df.head(top)) + f"<details><summary>all {len(df)} {html.escape(what)}</summary>"
            + html_of(df) + "</details>")


def summary_table(content: dict[str, Any]) -> pd.DataFrame:
    """The report's main table: one row per variant."""
    v = frames(content)["variants"]
    if v.empty:
        return v
    out = pd.DataFrame({
        "model": v["model"], "variant": v["variant"], "kind": v["kind"],
        # reports made before migration 0009 have no engine: the TF converter made every variant then
        "engine": v["engine"].fillna("tf"),
        "accuracy (%)": (v["accuracy"].astype(float) * 100).round(2),
        "top-5 (%)": (v["top5"].astype(float) * 100).round(2),
        "agreement (%)": (v["agreement"].astype(float) * 100).round(2),
        "Δ vs float (points)": ((v["accuracy"].astype(float) - v["float_accuracy"].astype(float)) * 100).round(2),
        "NPU": [npu_label_words(x) or "–" for x in v["npu_label"]],
        "I/O": [x if isinstance(x, str) and x else f"{i or '?'} → {o or '?'}"
                for x, i, o in zip(v["npu_io"], v["input_dtype"], v["output_dtype"], strict=True)],
        "size (KiB)": (v["size_bytes"].astype(float) / 1024).round(1),
        "size vs float (×)": (v["size_bytes"].astype(float) / v["float_size_bytes"].astype(float)).round(3),
        "host p50 (ms)": v["host_p50_ms"], "board p50 (ms)": v["board_p50_ms"], "status": v["status"],
    })
    if (v["scoring"] == "outputs").any():  # detectors, landmarks: scored against the reference, not top-1
        out.insert(3, "scored by", v["scoring"].map(SCORING_LABELS).fillna(SCORING_LABELS["classes"]))
        out.insert(7, "output MSE", v["output_mse"])
    return out


def npu_lines(content: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(variant name, ready or None when not linted, verdict text) for each variant of a report."""
    v = frames(content)["variants"]
    out: list[tuple[str, bool | None, str]] = []
    for r in v.itertuples():
        name = f"{r.model} / {r.variant}"
        if not isinstance(r.npu_verdict, str) or not r.npu_verdict:
            out.append((name, None, "no NPU verdict stored"))
            continue
        io = f" · I/O {r.npu_io}" if isinstance(r.npu_io, str) else ""
        out.append((name, bool(r.npu_ready), f"{r.npu_verdict}{io}"))
    return out


def render_html(report: dict[str, Any], figures: Sequence[tuple[str, PlotlyFigure]] = ()) -> str:
    """One self-contained HTML page: tables, notes and the given figures drawn as inline SVG, no JavaScript.

    Args:
        report: a row of `Store.report()` (id, title, notes, content, created_at).
        figures: (caption, figure) pairs, each a Plotly figure dict (`fig.to_dict()`) or anything with
            `to_dict()`; drawn by `svg_figures`, so the file is small, works offline and prints.
    """
    content = report["content"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(report['title'])} · qlab report</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report['title'])}</h1>",
        f"<div class='meta'>qlab report {html.escape(str(report.get('id', '')))} · made "
        f"{html.escape(str(report.get('created_at', ''))[:19])} · qlab {html.escape(str(content.get('qlab_version')))}"
        "</div>",
    ]
    if report.get("notes"):
        parts.append(f"<div class='notes'>{notes_html(report['notes'])}</div>")
    parts += ["<h2>Variants</h2>", _table_html(summary_table(content))]
    parts.append("<h2>Will it run on the NPU?</h2><ul class='npu'>")
    for name, ready, text in npu_lines(content):
        cls = "ready" if ready else ("cpu" if ready is False else "unknown")
        parts.append(f"<li class='{cls}'><span class='mark'>{npu_mark(ready)}</span> <b>{html.escape(name)}</b>: "
                     f"{html.escape(text)}</li>")
    parts.append("</ul>")
    boards = board_accuracy_table(content)
    if not boards.empty:
        parts += ["<h2>On-board accuracy</h2>", _table_html(boards)]
    bench = latency_table(content)
    if not bench.empty:
        parts += ["<h2>Latency</h2>", _table_html(bench)]
    debugged = debugger_tables(content)
    if debugged:
        parts.append("<h2>Debugger: the worst layers</h2>")
    for caption, worst in debugged:
        parts += [f"<h3>{html.escape(caption)}</h3>", _table_html(worst)]
    qat = qat_table(content)
    if not qat.empty:
        parts += ["<h2>Quantization-aware training</h2>", _table_html(qat)]
    op_tables = op_cost_tables(content)
    if op_tables:
        parts.append("<h2>Per-layer error and time</h2>")
        for caption, df in op_tables:
            parts += [f"<h3>{html.escape(caption)}</h3>", _table_html(df, TABLE_TOP, "ops")]
    for i, (caption, fig) in enumerate(figures):
        head = f"<div class='fig'><h3>{html.escape(caption)}</h3>"
        try:
            drawn = figure_svg(fig if isinstance(fig, Mapping) else fig.to_dict(), ident=f"fig{i}")
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as exc:
            # one odd figure never costs the reader the rest of the export; it says so where it would be
            log.warning("report %s: figure %r not drawn", report.get("id"), caption, exc_info=True)
            parts.append(f"{head}<p class='fig-note'>This figure could not be drawn in this export "
                         f"({html.escape(type(exc).__name__)}: {html.escape(str(exc)[:200])}).</p></div>")
            continue
        parts.append(head + drawn.svg)
        parts += [f"<p class='fig-note'>Not drawn in this export: {html.escape(note)}.</p>" for note in drawn.notes]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- bundle
def export_bundle(store: Store, report_id: str) -> bytes:
    """A zip: report.json, one Parquet file per table, and `tflite/<sha256>.tflite` for each variant."""
    report = store.report(report_id)
    content = report["content"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "id": report["id"], "title": report["title"],
                "notes": report["notes"], "created_at": str(report["created_at"]), "content": content}
        zf.writestr("report.json", json.dumps(meta, indent=1))
        for name, df in frames(content).items():
            data = io.BytesIO()
            df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(data, index=False)
            zf.writestr(f"{name}.parquet", data.getvalue())
        for v in content.get("variants", []):
            sha = v.get("sha256")
            if not sha:
                continue
            path = store.blob_path(sha)
            if path.exists():
                zf.writestr(f"tflite/{sha}.tflite", path.read_bytes())
            else:
                log.warning("report %s: the .tflite of variant %s is missing; bundled without it", report_id,
                            v.get("variant_id"))
    return buf.getvalue()


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, budget: list[int]) -> bytes:
    """An entry's bytes, counted as they are decompressed against its own limit and the bundle's."""
    if info.file_size > limit:
        raise QlabError(f"bundle entry {info.filename} unpacks to {info.file_size} bytes, over the limit of {limit}")
    out = bytearray()
    try:
        with zf.open(info) as f:
            while block := f.read(1 << 20):
                out += block
                budget[0] -= len(block)
                if len(out) > min(limit, info.file_size) or budget[0] < 0:
                    raise QlabError(f"bundle entry {info.filename} unpacks to more than it declares or the "
                                    f"bundle's {MAX_BUNDLE_UNPACKED_BYTES >> 20} MB limit; refused")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        raise QlabError(f"bundle entry {info.filename} cannot be unpacked ({exc})") from None
    return bytes(out)


def _read_bundle(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise QlabError("not a qlab report bundle: the file is not a zip") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_BUNDLE_ENTRIES:
            raise QlabError(f"the bundle holds {len(infos)} entries, over the limit of {MAX_BUNDLE_ENTRIES}")
        if sum(i.file_size for i in infos) > MAX_BUNDLE_UNPACKED_BYTES:
            raise QlabError(f"the bundle unpacks to more than {MAX_BUNDLE_UNPACKED_BYTES >> 20} MB; refusing it")
        budget = [MAX_BUNDLE_UNPACKED_BYTES]
        by_name = {i.filename: i for i in infos}
        if "report.json" not in by_name:
            raise QlabError("not a qlab report bundle: report.json is missing")
        try:
            meta = json.loads(_read_entry(zf, by_name["report.json"], MAX_REPORT_JSON_BYTES, budget))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise QlabError(f"report.json in the bundle is not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise QlabError("not a qlab report bundle: report.json has no format 'qlab-report-bundle'")
        if meta.get("version") != BUNDLE_VERSION:
            raise QlabError(f"report bundle version {meta.get('version')!r} is not supported (this qlab reads "
                            f"{BUNDLE_VERSION})")
        blobs: dict[str, bytes] = {}
        for name, info in by_name.items():
            if name.startswith("tflite/") and name.endswith(".tflite"):
                sha = name.removeprefix("tflite/").removesuffix(".tflite")
                check_sha256(sha, f"bundle entry {name}: name")
                body = _read_entry(zf, info, MAX_BUNDLE_TFLITE_BYTES, budget)
                if sha256_bytes(body) != sha:
                    raise QlabError(f"bundle entry {name}: its content does not match its sha256 name")
                try:
                    inspect(body)  # magic and a full flatbuffer parse, in Python
                except QlabError as exc:
                    raise QlabError(f"bundle entry {name}: {exc}") from None
                blobs[sha] = body
    for key in ("title", "content"):
        if key not in meta:
            raise QlabError(f"report.json in the bundle has no {key!r}")
    if not isinstance(meta["title"], str) or not meta["title"].strip():
        raise QlabError("report.json in the bundle has no title text")
    if not isinstance(meta["content"], dict) or not isinstance(meta["content"].get("variants"), list):
        raise QlabError("report.json in the bundle has no list of variants")
    return meta, blobs


def _text(value: Any, what: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if not isinstance(value, str | int | float):
        raise QlabError(f"bundle {what} is not text: {str(value)[:60]!r}")
    return str(value)[:MAX_TEXT]


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or pd.isna(value) or int(value) != value:
        raise QlabError(f"bundle {what} is not a whole number: {str(value)[:60]!r}")
    return int(value)


def _shape(value: Any, what: str) -> list[int | None]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise QlabError(f"bundle {what} is not a shape: {value[:60]!r}") from None
    if not isinstance(value, list | tuple) or len(value) > 8 or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31) for d in value):
        raise QlabError(f"bundle {what} is not a shape: {str(value)[:60]!r}")
    return list(value)


def _check_content(content: dict[str, Any], blobs: dict[str, bytes]) -> None:
    """Every field import_bundle will write, checked before the first write."""
    models = content.get("models") or []
    datasets = content.get("datasets") or []
    for key, rows in (("models", models), ("datasets", datasets), ("evaluations", content.get("evaluations") or []),
                      ("benchmarks", content.get("benchmarks") or [])):
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise QlabError(f"report.json in the bundle: {key} is not a list of records")
    model_keys = {_int(m.get("id"), "model id") for m in models}
    dataset_keys = {_int(d.get("id"), "dataset id") for d in datasets}
    for m in models:
        check_sha256(m.get("sha256"), f"model {_text(m.get('name'), 'model name')!r}: sha256")
        _shape(m.get("input_shape"), "model input_shape")
        _shape(m.get("output_shape"), "model output_shape")
    for d in datasets:
        check_sha256(d.get("sha256"), f"dataset {_text(d.get('name'), 'dataset name')!r}: sha256")
        for k in ("input_scale", "input_offset"):
            if not isinstance(d.get(k), int | float) or not math.isfinite(float(d[k])):
                raise QlabError(f"bundle dataset {d.get('name')!r}: {k} is not a finite number")
        for k in ("n_train", "n_test", "num_classes"):
            _int(d.get(k), f"dataset {k}")
    known = {str(s) for s in VariantStatus}
    for v in content["variants"]:
        if not isinstance(v, dict):
            raise QlabError("report.json in the bundle: a variant is not a record")
        label = f"bundle variant {_text(v.get('variant'), 'variant name')!r}"
        _int(v.get("variant_id"), "variant id")
        # an imported .tflite stored before any data was chosen has no dataset
        no_dataset = v.get("dataset_id") is None
        if v.get("model_id") not in model_keys or not (no_dataset or v.get("dataset_id") in dataset_keys):
            raise QlabError(f"{label} names a model or dataset the bundle does not hold")
        if v.get("status") not in known:
            raise QlabError(f"{label}: status {v.get('status')!r} is not one of {', '.join(sorted(known))}")
        sha = v.get("sha256")
        if sha is not None and not (isinstance(sha, float) and pd.isna(sha)):
            check_sha256(sha, f"{label}: sha256")
            if v["status"] == "ok" and sha not in blobs:
                raise QlabError(f"{label}: its .tflite ({sha[:12]}…) is not in the bundle")
        elif v["status"] == "ok":
            raise QlabError(f"{label}: an ok variant without a sha256")
    for b in content.get("benchmarks") or []:
        check_sha256(b.get("sha256"), "bundle benchmark sha256")


def import_bundle(store: Store, data: bytes) -> str:
    """Imports a bundle exported by any qlab: models, datasets, variants, results and the report.

    A bundle is untrusted: every field is checked before the first write, every .tflite must be
    inside it (a sha256 never borrows a file already on this server), and the whole import is one
    transaction, so a bad bundle leaves no rows and no new files behind. Each bundled model
    becomes a new `tflite` model row of its own, even when a model with the same sha256 exists
    here: an import never attaches variants to a teammate's model.

    Returns:
        The id of the imported report in this store.

    Raises:
        QlabError: for anything that is not a valid bundle, naming what is wrong.
    """
    meta, blobs = _read_bundle(data)
    content = meta["content"]
    _check_content(content, blobs)
    f = frames(content)
    title = _text(meta["title"], "title").strip()
    new_blobs = [sha for sha in blobs if not store.blob_dir.joinpath(f"{sha}.tflite").exists()]
    nonce = secrets.token_hex(8)
    try:
        with store.transaction():
            return _write_import(store, meta, content, f, title, nonce, blobs)
    except (ValueError, TypeError, KeyError, AttributeError, duckdb.Error) as exc:
        _drop_blobs(store, new_blobs)
        raise QlabError(f"report.json in the bundle is malformed: {type(exc).__name__}: {str(exc)[:200]}") from None
    except BaseException:
        _drop_blobs(store, new_blobs)
        raise


def _drop_blobs(store: Store, shas: list[str]) -> None:
    """Removes the blobs an import wrote for rows that were rolled back."""
    for sha in shas:
        store.blob_path(sha).unlink(missing_ok=True)


def _write_import(store: Store, meta: dict[str, Any], content: dict[str, Any], f: dict[str, pd.DataFrame],
                  title: str, nonce: str, blobs: dict[str, bytes]) -> str:
    model_ids: dict[int, int] = {}
    for m in f["models"].itertuples():
        # the bundle's own copy: a fresh identity derived from the sha it claims, never the existing row
        own_sha = sha256_bytes(f"imported:{nonce}:{m.sha256}".encode())
        model_ids[int(m.id)] = store.add_model(
            name=_text(m.name, "model name") or "imported", format="tflite", sha256=own_sha,
            source_path=f"imported: {title}"[:MAX_TEXT], input_shape=_shape(m.input_shape, "input_shape"),
            output_shape=_shape(m.output_shape, "output_shape"),
            keras_major=None if pd.isna(m.keras_major) else int(m.keras_major),
        )
    dataset_ids: dict[int, int] = {}
    for d in f["datasets"].itertuples():
        # the source is a label here, never a path this server would read
        source = "digits" if d.source == "digits" else f"imported: {PurePosixPath(_text(d.source, 'source')).name}"
        dataset_ids[int(d.id)] = store.add_dataset(
            name=_text(d.name, "dataset name") or "imported", source=source, sha256=str(d.sha256),
            input_scale=float(d.input_scale), input_offset=float(d.input_offset), n_train=int(d.n_train),
            n_test=int(d.n_test), num_classes=int(d.num_classes), stored_path=None,
        )
    confusion = content.get("confusion") or {}
    if not isinstance(confusion, dict):
        raise QlabError("report.json in the bundle: confusion is not a mapping")
    evals = f["evaluations"]
    variant_ids: dict[int, int] = {}
    taken: set[tuple[int, int | None, str]] = set()
    for v in content["variants"]:
        old = int(v["variant_id"])
        model_id = model_ids[v["model_id"]]
        dataset_id = None if v.get("dataset_id") is None else dataset_ids[v["dataset_id"]]
        sha = v.get("sha256") if isinstance(v.get("sha256"), str) else None
        name = _text(v.get("variant"), "variant name") or f"variant {old}"
        candidate, n = name, 2
        while (model_id, dataset_id, candidate) in taken:
            candidate, n = f"{name} ({n})", n + 1
        taken.add((model_id, dataset_id, candidate))
        host = evals[(evals["variant_id"] == old) & (evals["device"] == "host")]
        variant_ids[old] = store.save_variant(
            model_id=model_id, dataset_id=dataset_id, name=candidate,
            kind="imported", recipe=_text(v.get("recipe"), "recipe") or None,
            settings={"imported_from": title, "original": v.get("settings"),
                      "original_kind": _text(v.get("kind"), "kind"),
                      "scoring": _text(v.get("scoring"), "scoring") or Scoring.CLASSES.value},
            status=VariantStatus(v["status"]), error=_text(v.get("error"), "error"),
            tflite=blobs.get(sha) if sha and v["status"] == "ok" else None,
            npu=_verdict(blobs.get(sha)) if sha and v["status"] == "ok" else None,
            input_dtype=_text(v.get("input_dtype"), "input_dtype"),
            output_dtype=_text(v.get("output_dtype"), "output_dtype"),
            evaluation=None if dataset_id is None else _evaluation(host.iloc[0] if len(host) else None, v,
                                                                   confusion.get(str(old))),
            engine=_engine(_text(v.get("engine"), "engine")),
        )
        for e in evals[(evals["variant_id"] == old) & (evals["device"] != "host")].itertuples():
            if dataset_id is None:
                break
            board_ev = _evaluation(pd.Series(e._asdict()), v, None)
            if board_ev is not None:
                store.add_evaluation(
                    variant_ids[old], dataset_id, board_ev, device=_text(e.device, "device"),
                    extra_metrics={"host_agreement": None if pd.isna(e.host_agreement) else float(e.host_agreement)},
                )
        for b in f["benchmarks"][f["benchmarks"]["variant_id"] == old].itertuples():
            store.add_benchmark(_latency(b), sha256=str(b.sha256), board=_text(b.board, "board"),
                                variant_id=variant_ids[old])
    new_content = dict(content)
    new_content["imported_from"] = {"id": _text(meta.get("id"), "id"), "created_at": _text(meta.get("created_at"),
                                                                                          "created_at")}
    new_content["variants"] = [dict(v, variant_id=variant_ids[int(v["variant_id"])],
                                    model_id=model_ids[v["model_id"]],
                                    dataset_id=None if v.get("dataset_id") is None else dataset_ids[v["dataset_id"]])
                               for v in content["variants"]]
    new_content["models"] = [dict(m, id=model_ids[int(m["id"])]) for m in content.get("models", [])]
    new_content["datasets"] = [dict(d, id=dataset_ids[int(d["id"])]) for d in content.get("datasets", [])]
    new_content["evaluations"] = [dict(e, variant_id=variant_ids.get(int(e["variant_id"]), e["variant_id"]))
                                  for e in content.get("evaluations", [])]
    new_content["benchmarks"] = [dict(b, variant_id=variant_ids.get(int(b["variant_id"]), b["variant_id"]))
                                 for b in content.get("benchmarks", []) if b.get("variant_id") is not None]
    new_content["confusion"] = {str(variant_ids[int(k)]): m for k, m in confusion.items()
                                if str(k).isdigit() and int(k) in variant_ids}
    return store.save_report(title, _text(meta.get("notes"), "notes"), new_content)


def _num(value: Any, default: float = float("nan")) -> float:
    return default if value is None or pd.isna(value) else float(value)


def _evaluation(row: pd.Series | None, variant: dict[str, Any], matrix: Any) -> Evaluation | None:
    if variant.get("scoring") == Scoring.OUTPUTS and row is not None and variant.get("output_mse") is not None:
        return Evaluation(  # a detector or landmark model: scored against its reference, no accuracy
            accuracy=float("nan"), top5=float("nan"), agreement=None, confusion=(),
            n_samples=int(_num(row.get("n_samples"), 0)), batched=bool(variant.get("batched") or False),
            note="imported", scoring=Scoring.OUTPUTS.value, output_metrics={"output_mse": _num(variant["output_mse"])},
        )
    if row is None or pd.isna(row.get("accuracy")):
        return None
    agreement = row.get("agreement")
    return Evaluation(
        accuracy=_num(row["accuracy"]), top5=_num(row.get("top5")),
        agreement=None if agreement is None or pd.isna(agreement) else float(agreement),
        confusion=tuple(tuple(int(c) for c in r) for r in (matrix or [])),
        n_samples=int(_num(row.get("n_samples"), 0)), batched=bool(variant.get("batched") or False),
        note="imported",
    )


def _latency(b: Any) -> Latency:
    return Latency(
        target=str(b.target), threads=int(b.threads), xnnpack=bool(b.xnnpack), runs=int(b.runs),
        warmup=int(b.warmup), init_ms=_num(b.init_ms), first_ms=_num(b.first_ms), min_ms=_num(b.min_ms),
        mean_ms=_num(b.mean_ms), p50_ms=_num(b.p50_ms), p90_ms=_num(b.p90_ms), p99_ms=_num(b.p99_ms),
        std_ms=_num(b.std_ms), extra={} if pd.isna(b.peak_rss_mb) else {"peak_rss_mb": float(b.peak_rss_mb)},
    )


def _verdict(tflite: bytes | None) -> NpuVerdict | None:
    """A bundled file's NPU verdict, read once as it comes in (the bundle's files were parsed already)."""
    if tflite is None:
        return None
    try:
        return npu_verdict(tflite)
    except QlabError:
        return None


def _engine(name: str) -> str:
    """A bundled variant's engine, if it is one qlab knows (a bundle is untrusted text)."""
    return name if name in ENGINES or name == IMPORTED_ENGINE else defaults.ENGINE
