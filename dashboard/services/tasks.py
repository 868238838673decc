"""What each background job kind does: load from the store, call qcore, store the result.

Each task takes its JSON params and a progress callback and returns a small JSON result for the
jobs table; the engine stores the real results (variants, layer stats, benchmarks) itself.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from qcore.qtyping import ConvertedVariant, Dataset, LoadedModel, Progress, QlabError

if TYPE_CHECKING:
    from dashboard.services.jobs import JobFn
    from dashboard.services.lab import Lab

log = logging.getLogger(__name__)

# host timing right after a conversion: enough runs for a stable p50 of a small model
HOST_BENCH_RUNS = 30
HOST_BENCH_WARMUP = 3


def scaled(progress: Progress, start: float, end: float) -> Progress:
    """Maps a sub-step's [0, 1] progress onto [start, end] of the job."""

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * max(0.0, min(1.0, fraction)), message)

    return report


# ---------------------------------------------------------------- loading what the store points at
def load_model_row(the_lab: Lab, model_id: int) -> LoadedModel:
    """The Keras model of a stored model row.

    Raises:
        QlabError: when the row has no Keras source (an imported bundle) or the file is gone.
    """
    from qcore.models import demo_model, load_model

    row = the_lab.store.model(int(model_id))
    if row["format"] == "demo":
        return demo_model(the_lab.data_dir / "demo")
    if row["format"] == "tflite":
        raise QlabError(
            f"model #{model_id} ({row['name']}) is tflite-only (an imported .tflite or report): there is no Keras "
            "source to convert, debug or train again; upload its Keras file on the Models & data page"
        )
    model = load_model(row["source_path"], trusted=bool(row.get("trusted") is True))
    return LoadedModel(
        name=str(row["name"]), path=model.path, format=model.format, keras_model=model.keras_model,
        input_shape=model.input_shape, output_shape=model.output_shape, keras_major=model.keras_major,
    )


def load_dataset_row(the_lab: Lab, dataset_id: int,
                     model_shape: tuple[int | None, ...] | None = None) -> Dataset:
    """The data of a stored dataset row, with its stored preprocessing.

    Args:
        model_shape: the job's model input shape: images of a folder/zip dataset stored before their
            size was recorded are read at it.

    Raises:
        QlabError: when the stored file is gone (a row never reads a path other than its own upload).
    """
    from qcore.data import digits_dataset, load_dataset

    row = the_lab.store.dataset(int(dataset_id))
    scale, offset = float(row["input_scale"]), float(row["input_offset"])
    stored = row.get("stored_path")
    image_shape = row.get("image_shape")
    shape = tuple(json.loads(image_shape)) if isinstance(image_shape, str) and image_shape else model_shape
    if isinstance(stored, str) and stored:
        if not Path(stored).exists():
            raise QlabError(f"dataset #{dataset_id} ({row['name']}): its file is missing from the data directory")
        ds = load_dataset(stored, input_scale=scale, input_offset=offset, input_shape=shape)
    elif row["source"] == "digits":
        ds = digits_dataset(input_scale=scale, input_offset=offset)
    else:
        raise QlabError(f"dataset #{dataset_id} ({row['name']}) has no stored data here (imported from a "
                        "report?); upload its file on the Models & data page")
    return Dataset(
        name=str(row["name"]), x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
        input_scale=ds.input_scale, input_offset=ds.input_offset, source=ds.source, class_names=ds.class_names,
    )


def _model_shape(the_lab: Lab, variant_row: dict[str, Any]) -> tuple[int | None, ...] | None:
    """The input shape recorded for a variant's model (images of older folder datasets are read at it)."""
    shape = the_lab.store.model(int(variant_row["model_id"])).get("input_shape")
    return tuple(json.loads(shape)) if isinstance(shape, str) and shape else None


def variant_bytes(the_lab: Lab, variant_id: int) -> tuple[dict[str, Any], bytes]:
    """A stored variant's row and its .tflite bytes."""
    row = the_lab.store.variant(int(variant_id))
    if row["status"] != "ok" or not row.get("sha256"):
        raise QlabError(f"variant #{variant_id} ({row['variant']}) has no .tflite: {row.get('error') or 'failed'}")
    path = Path(str(row["path"])) if row.get("path") else the_lab.store.blob_path(str(row["sha256"]))
    if not path.exists():
        raise QlabError(f"variant #{variant_id}: its file {path} is missing from the data directory")
    return row, path.read_bytes()


def _dataset_of(*rows: dict[str, Any]) -> int:
    """The dataset of the first variant row that has one.

    Raises:
        QlabError: when none has (an imported .tflite stored without data).
    """
    for row in rows:
        value = row.get("dataset_id")
        if value is not None and not pd.isna(value):  # NA when the view's row has no dataset
            return int(value)
    names = ", ".join(f"#{r['variant_id']} {r['variant']}" for r in rows)
    raise QlabError(f"variant {names} has no dataset: import the .tflite again on the Models & data page "
                    "with a dataset (and its input preprocessing) chosen")


# ---------------------------------------------------------------- conversion and host timing
def _convert(the_lab: Lab, model: LoadedModel, dataset: Dataset, recipe_names: list[str] | str,
             calibration_samples: int, bench: bool, progress: Progress, engine: str = "tf") -> dict[str, Any]:
    from dashboard.services.jobs import publish
    from qcore.convert import convert_and_evaluate
    from qcore.data import check_fits
    from qcore.recipes import get_recipe, resolve_recipes

    recipes = (resolve_recipes(recipe_names, engine) if isinstance(recipe_names, str)
               else [get_recipe(n) for n in recipe_names])
    if not recipes:
        raise QlabError("choose at least one recipe")
    check_fits(model, dataset)
    started = time.monotonic()
    landed: list[dict[str, Any]] = []

    def publish_landed(v: ConvertedVariant) -> None:
        # each recipe's row appears on the page as soon as it is stored, with the pace so far
        landed.append(_variant_result(v))
        publish({"variants": list(landed), "recipes_total": len(recipes),
                 "elapsed_s": round(time.monotonic() - started, 2)})

    report = convert_and_evaluate(
        model, dataset, recipes, store=the_lab.store, calibration_samples=int(calibration_samples),
        progress=scaled(progress, 0.0, 0.85 if bench else 1.0), on_variant=publish_landed, engine=engine,
    )
    ok = [v for v in report.variants if v.variant_id is not None and v.status == "ok"]
    if bench and ok:
        _host_bench(the_lab, [int(v.variant_id) for v in ok if v.variant_id is not None],
                    runs=HOST_BENCH_RUNS, warmup=HOST_BENCH_WARMUP, threads=1, xnnpack=True,
                    progress=scaled(progress, 0.85, 1.0))
    return {
        "model": report.model, "model_id": report.model_id, "dataset_id": report.dataset_id,
        "float_accuracy": report.float_accuracy,
        "variants": [_variant_result(v) for v in report.variants],
    }


def _variant_result(v: ConvertedVariant) -> dict[str, Any]:
    return {"recipe": v.recipe, "status": str(v.status), "variant_id": v.variant_id, "size_bytes": v.size_bytes,
            "accuracy": v.evaluation.accuracy if v.evaluation else None, "error": v.error, "engine": v.engine}


def convert_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: model_id, dataset_id, recipes (names), calibration_samples, bench (host timing after), engine."""
    model = load_model_row(the_lab, params["model_id"])
    dataset = load_dataset_row(the_lab, params["dataset_id"], model.input_shape)
    return _convert(the_lab, model, dataset, list(params["recipes"]), int(params.get("calibration_samples", 100)),
                    bool(params.get("bench", True)), progress, str(params.get("engine", "tf")))


def demo_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """First start: train (or load) the demo CNN, register it with digits, convert every recipe."""
    from qcore.data import digits_dataset
    from qcore.models import demo_model

    model = demo_model(the_lab.data_dir / "demo", progress=scaled(progress, 0.0, 0.3))
    return _convert(the_lab, model, digits_dataset(), str(params.get("recipes", "all")), 100, True,
                    scaled(progress, 0.3, 1.0))


def _host_bench(the_lab: Lab, variant_ids: list[int], *, runs: int, warmup: int, threads: int,
                xnnpack: bool, progress: Progress) -> list[dict[str, Any]]:
    from qcore.latency import benchmark

    out = []
    for i, vid in enumerate(variant_ids):
        row, data = variant_bytes(the_lab, vid)
        progress(i / len(variant_ids), f"timing {row['variant']} on this host ({i + 1}/{len(variant_ids)})")
        lat = benchmark(data, runs=runs, warmup=warmup, threads=threads, xnnpack=xnnpack)
        the_lab.store.add_benchmark(lat, sha256=str(row["sha256"]), board="host", variant_id=vid)
        out.append({"variant_id": vid, "p50_ms": lat.p50_ms, "first_ms": lat.first_ms})
    progress(1.0, "timed")
    return out


def host_bench_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: variant_ids, runs, warmup, threads, xnnpack."""
    rows = _host_bench(
        the_lab, [int(v) for v in params["variant_ids"]], runs=int(params.get("runs", 50)),
        warmup=int(params.get("warmup", 5)), threads=int(params.get("threads", 1)),
        xnnpack=bool(params.get("xnnpack", True)), progress=progress,
    )
    return {"timings": rows}


# ---------------------------------------------------------------- debugger, selective, search, tensors
def debug_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: model_id, dataset_id, recipe, calibration_samples, debug_samples, extra_metrics, whole_model, engine."""
    from qcore.debugger import run_debugger

    model = load_model_row(the_lab, params["model_id"])
    dataset = load_dataset_row(the_lab, params["dataset_id"], model.input_shape)
    result = run_debugger(
        model, dataset, recipe=str(params.get("recipe", "int8")),
        calibration_samples=int(params.get("calibration_samples", 100)),
        debug_samples=int(params.get("debug_samples", 100)), extra_metrics=list(params.get("extra_metrics", [])),
        whole_model=bool(params.get("whole_model", False)), store=the_lab.store, progress=progress,
        engine=str(params.get("engine", "tf")),
    )
    return {"debug_run_id": result.debug_run_id, "layers": len(result.stats), "suspects": list(result.suspects),
            "model_metrics": result.model_metrics}


def _full_int8_variant(the_lab: Lab, model: LoadedModel, dataset: Dataset, model_id: int, dataset_id: int,
                       recipe: str, calibration_samples: int, progress: Progress, engine: str = "tf") -> int | None:
    """The plain-recipe variant (same engine) the selective one is compared with; converted now if missing."""
    from qcore.convert import convert_and_evaluate
    from qcore.recipes import get_recipe

    rows = the_lab.store.variant_summary(model_ids=[model_id])
    name = recipe if engine == "tf" else f"{recipe}@{engine}"
    same = rows[(rows["dataset_id"] == dataset_id) & (rows["variant"] == name) & (rows["status"] == "ok")]
    if len(same):
        return int(same["variant_id"].iloc[0])
    report = convert_and_evaluate(model, dataset, [get_recipe(recipe)], store=the_lab.store,
                                  calibration_samples=calibration_samples, progress=progress, engine=engine)
    return report.variants[0].variant_id


def selective_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: model_id, dataset_id, recipe, denylisted_nodes, denylisted_ops, calibration_samples, debug_samples.

    Keeps the chosen layers in float, evaluates and stores the selective variant, and makes sure
    the full-integer variant of the same recipe exists to compare with.
    """
    from qcore.debugger import run_debugger

    nodes, ops = list(params.get("denylisted_nodes", [])), list(params.get("denylisted_ops", []))
    if not nodes and not ops:
        raise QlabError("choose at least one layer (or op type) to keep in float")
    model_id, dataset_id = int(params["model_id"]), int(params["dataset_id"])
    model = load_model_row(the_lab, model_id)
    dataset = load_dataset_row(the_lab, dataset_id, model.input_shape)
    recipe = str(params.get("recipe", "int8"))
    samples = int(params.get("calibration_samples", 100))
    engine = str(params.get("engine", "tf"))
    result = run_debugger(
        model, dataset, recipe=recipe, calibration_samples=samples,
        debug_samples=int(params.get("debug_samples", 100)), denylisted_nodes=nodes, denylisted_ops=ops,
        store=the_lab.store, progress=scaled(progress, 0.0, 0.8), engine=engine,
    )
    baseline = _full_int8_variant(the_lab, model, dataset, model_id, dataset_id, recipe, samples,
                                  scaled(progress, 0.8, 1.0), engine)
    sel = result.selective
    return {
        "debug_run_id": result.debug_run_id, "selective_variant_id": sel.variant_id if sel else None,
        "baseline_variant_id": baseline, "accuracy": sel.evaluation.accuracy if sel else None,
        "ignored_nodes": list(getattr(sel, "ignored_nodes", ()) or ()),
    }


def tune_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: model_id, dataset_id, max_drop (points), recipe, calibration_samples, debug_samples, engine,
    deploy_engine."""
    from qcore.tune import tune

    model = load_model_row(the_lab, params["model_id"])
    dataset = load_dataset_row(the_lab, params["dataset_id"], model.input_shape)
    result = tune(model, dataset, max_drop=float(params["max_drop"]), recipe=str(params.get("recipe", "int8")),
                  calibration_samples=int(params.get("calibration_samples", 100)),
                  debug_samples=int(params.get("debug_samples", 100)), store=the_lab.store, progress=progress,
                  engine=str(params.get("engine", "tf")), deploy_engine=str(params.get("deploy_engine", "tf")))
    return {"tune_run_id": result.tune_run_id, "chosen_variant_id": result.chosen_variant_id,
            "conversions": len(result.tried), "layers": len(result.ranking),
            "chosen": list(result.chosen.denylist) if result.chosen else None}


def compare_tensors_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: float_variant_id, quant_variant_id, samples. The comparison is the job's result."""
    from qcore.tensor_compare import compare_tensors

    frow, fbytes = variant_bytes(the_lab, params["float_variant_id"])
    qrow, qbytes = variant_bytes(the_lab, params["quant_variant_id"])
    dataset = load_dataset_row(the_lab, _dataset_of(frow, qrow), _model_shape(the_lab, frow))
    x = dataset.preprocess(dataset.x_test[: int(params.get("samples", 20))])
    cmp = compare_tensors(fbytes, qbytes, x, progress=progress)
    return {
        "float": f"{frow['model']} / {frow['variant']}", "quant": f"{qrow['model']} / {qrow['variant']}",
        "n_samples": cmp.n_samples,
        "matched": [dataclasses.asdict(d) for d in cmp.matched],
        "unmatched": [dataclasses.asdict(u) for u in cmp.unmatched],
    }


# ---------------------------------------------------------------- QAT
# qcore.qat reports each epoch as "QAT epoch i/n: loss L, accuracy A"; the page draws them live
_EPOCH = re.compile(r"epoch (\d+)/(\d+): loss ([-+\w.]+), accuracy ([-+\w.]+)")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def qat_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: model_id, dataset_id, layers ("all" or names), epochs, batch_size, learning_rate,
    train_samples (0 = all), int_io. Publishes the epochs so far while it trains."""
    from dashboard.services.jobs import publish
    from qcore.qat import run_qat

    model = load_model_row(the_lab, params["model_id"])
    dataset = load_dataset_row(the_lab, params["dataset_id"], model.input_shape)
    history: list[dict[str, float]] = []

    def watch(fraction: float, message: str) -> None:
        m = _EPOCH.search(message)
        if m and int(m.group(1)) == len(history) + 1:
            history.append({"epoch": int(m.group(1)), "loss": _number(m.group(3)),
                            "accuracy": _number(m.group(4))})
            publish({"history": history, "epochs": int(m.group(2))})
        progress(fraction, message)

    train_samples = int(params.get("train_samples") or 0)
    result = run_qat(
        model, dataset, layers=params.get("layers", "all"), epochs=int(params.get("epochs", 3)),
        batch_size=int(params.get("batch_size", 32)), learning_rate=float(params.get("learning_rate", 1e-4)),
        train_samples=train_samples or None, int_io=bool(params.get("int_io", False)), store=the_lab.store,
        progress=watch,
    )
    return {
        "variant_id": result.variant_id, "float_accuracy": result.float_accuracy,
        "keras_accuracy": result.keras_accuracy, "tflite_accuracy": result.tflite_accuracy,
        "range_drift": result.range_drift, "warnings": list(result.warnings),
        "quantized_layers": list(result.quantized_layers), "size_bytes": result.size_bytes,
        "history": [dict(h, epoch=i + 1) for i, h in enumerate(result.history)],
    }


# ---------------------------------------------------------------- boards
def board_bench_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: board, variant_ids, targets, runs, warmup, threads, profile.

    A matrix on one board: every (variant, target) cell succeeds or fails on its own, and a
    failed cell keeps its reason in the store (picking npu on a board without the NPU still
    stores the CPU timings).
    """
    return board_matrix_task(the_lab, {**params, "pool": params["board"], "placement": "board"}, progress)


def board_matrix_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: pool (a board for placement "board", else a label query), placement, variant_ids, targets, ...."""
    from qcore.board_runs import matrix

    targets = params.get("targets", ["cpu"])
    result = matrix(
        the_lab.store, [int(v) for v in params["variant_ids"]],
        [targets] if isinstance(targets, str) else list(targets), pool=str(params["pool"]),
        placement=str(params.get("placement", "each")), runs=int(params.get("runs", 50)),
        warmup=int(params.get("warmup", 5)), threads=int(params.get("threads", 1)),
        profile=bool(params.get("profile", False)), progress=progress,
    )
    if result.cells and len(result.failed) == len(result.cells):
        reasons = list(dict.fromkeys(c.reason for c in result.failed))
        raise QlabError(f"every cell of board run {result.run_id} failed: " + "; ".join(reasons))
    per_variant: dict[int | None, dict[str, Any]] = {}
    for c in result.cells:
        entry = per_variant.setdefault(c.variant_id, {"variant_id": c.variant_id, "timings": {}, "failed": {}})
        key = c.target if len(result.boards) == 1 else f"{c.target}@{c.board or '-'}"
        if c.p50_ms is not None:
            entry["timings"][key] = c.p50_ms
        else:
            entry["failed"][key] = c.reason
    return {"run_id": result.run_id, "pool": result.pool, "placement": str(result.placement),
            "boards": list(result.boards), "cells": len(result.cells), "failed": len(result.failed),
            "wall_s": result.wall_s, "results": list(per_variant.values()),
            "reasons": [{"variant_id": c.variant_id, "target": c.target, "board": c.board, "reason": c.reason}
                        for c in result.failed]}


def board_accuracy_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: board, variant_ids, target (or targets), threads. Each (variant, target) cell on its own."""
    from qcore.board_runs import AccuracyItem, accuracy_run

    ids = [int(v) for v in params["variant_ids"]]
    if not ids:
        raise QlabError("choose at least one variant")
    items = []
    for vid in ids:
        row, data = variant_bytes(the_lab, vid)
        dataset_id = _dataset_of(row)
        dataset = load_dataset_row(the_lab, dataset_id, _model_shape(the_lab, row))
        items.append(AccuracyItem(vid, f"{row['model']} / {row['variant']}", data, dataset, dataset_id))
    targets = params.get("targets") or [params.get("target", "cpu")]
    cells = accuracy_run(the_lab.store, str(params["board"]), items, [str(t) for t in targets],
                         threads=int(params.get("threads", 1)), progress=progress)
    if all(c.status == "failed" for c in cells):
        raise QlabError("every cell failed: " + "; ".join(dict.fromkeys(c.reason for c in cells)))
    return {"board": params["board"],
            "results": [{"variant_id": c.variant_id, "target": c.target, "accuracy": c.accuracy,
                         "status": str(c.status), "reason": c.reason} for c in cells]}


# ---------------------------------------------------------------- bring your own .tflite
def import_tflite_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: qcore.jobs.ImportTfliteParams. Reads the uploads and the dataset, then one call into qcore."""
    from qcore.import_tflite import input_shape, run_import
    from qcore.jobs import JobKind, parse_params

    p = parse_params(JobKind.IMPORT_TFLITE, params)
    model = Path(p.path).read_bytes()
    reference = Path(p.reference_path).read_bytes() if p.reference_path else None
    dataset = (load_dataset_row(the_lab, p.dataset_id, input_shape(model, p.filename))
               if p.dataset_id is not None else None)
    return run_import(the_lab.store, p, model, reference=reference, dataset=dataset, progress=progress)


TaskFn = Callable[["Lab", dict[str, Any], Progress], dict[str, Any]]

TASKS: dict[str, TaskFn] = {
    "demo": demo_task,
    "convert": convert_task,
    "host_bench": host_bench_task,
    "debug": debug_task,
    "selective": selective_task,
    "tune": tune_task,
    "compare_tensors": compare_tensors_task,
    "qat": qat_task,
    "board_bench": board_bench_task,
    "board_accuracy": board_accuracy_task,
    "import_tflite": import_tflite_task,
    "board_matrix": board_matrix_task,
}


def make_tasks(the_lab: Lab) -> dict[str, JobFn]:
    """The job functions of one lab, for its JobRunner."""
    return {kind: functools.partial(fn, the_lab) for kind, fn in TASKS.items()}
