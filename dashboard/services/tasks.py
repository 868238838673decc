"""What each background job kind does: load from the store, call qcore, store the result.

Each task takes its JSON params and a progress callback and returns a small JSON result for the
jobs table; the engine stores the real results (variants, layer stats, benchmarks) itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcore.qtyping import Dataset, LoadedModel, Progress, QlabError

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
            f"model #{model_id} ({row['name']}) came from an imported report: only its .tflite files are "
            "here, so it cannot be converted again; upload its Keras file on the Models & data page"
        )
    model = load_model(row["source_path"])
    return LoadedModel(
        name=str(row["name"]), path=model.path, format=model.format, keras_model=model.keras_model,
        input_shape=model.input_shape, output_shape=model.output_shape, keras_major=model.keras_major,
    )


def load_dataset_row(the_lab: Lab, dataset_id: int) -> Dataset:
    """The data of a stored dataset row, with its stored preprocessing."""
    from qcore.data import digits_dataset, load_dataset

    row = the_lab.store.dataset(int(dataset_id))
    scale, offset = float(row["input_scale"]), float(row["input_offset"])
    stored = row.get("stored_path")
    if isinstance(stored, str) and stored and Path(stored).exists():
        ds = load_dataset(stored, input_scale=scale, input_offset=offset)
    elif row["source"] == "digits":
        ds = digits_dataset(input_scale=scale, input_offset=offset)
    else:
        ds = load_dataset(row["source"], input_scale=scale, input_offset=offset)
    return Dataset(
        name=str(row["name"]), x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
        input_scale=ds.input_scale, input_offset=ds.input_offset, source=ds.source, class_names=ds.class_names,
    )


def variant_bytes(the_lab: Lab, variant_id: int) -> tuple[dict[str, Any], bytes]:
    """A stored variant's row and its .tflite bytes."""
    row = the_lab.store.variant(int(variant_id))
    if row["status"] != "ok" or not row.get("sha256"):
        raise QlabError(f"variant #{variant_id} ({row['variant']}) has no .tflite: {row.get('error') or 'failed'}")
    path = Path(str(row["path"])) if row.get("path") else the_lab.store.blob_path(str(row["sha256"]))
    if not path.exists():
        raise QlabError(f"variant #{variant_id}: its file {path} is missing from the data directory")
    return row, path.read_bytes()


# ---------------------------------------------------------------- conversion and host timing
def _convert(the_lab: Lab, model: LoadedModel, dataset: Dataset, recipe_names: list[str] | str,
             calibration_samples: int, bench: bool, progress: Progress) -> dict[str, Any]:
    from qcore.convert import convert_and_evaluate
    from qcore.data import check_fits
    from qcore.recipes import get_recipe, resolve_recipes

    recipes = (resolve_recipes(recipe_names) if isinstance(recipe_names, str)
               else [get_recipe(n) for n in recipe_names])
    if not recipes:
        raise QlabError("choose at least one recipe")
    check_fits(model, dataset)
    report = convert_and_evaluate(
        model, dataset, recipes, store=the_lab.store, calibration_samples=int(calibration_samples),
        progress=scaled(progress, 0.0, 0.85 if bench else 1.0),
    )
    ok = [v for v in report.variants if v.variant_id is not None and v.status == "ok"]
    if bench and ok:
        _host_bench(the_lab, [int(v.variant_id) for v in ok if v.variant_id is not None],
                    runs=HOST_BENCH_RUNS, warmup=HOST_BENCH_WARMUP, threads=1, xnnpack=True,
                    progress=scaled(progress, 0.85, 1.0))
    return {
        "model": report.model, "model_id": report.model_id, "dataset_id": report.dataset_id,
        "float_accuracy": report.float_accuracy,
        "variants": [
            {"recipe": v.recipe, "status": str(v.status), "variant_id": v.variant_id, "size_bytes": v.size_bytes,
             "accuracy": v.evaluation.accuracy if v.evaluation else None, "error": v.error}
            for v in report.variants
        ],
    }


def convert_task(the_lab: Lab, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """params: model_id, dataset_id, recipes (names), calibration_samples, bench (host timing after)."""
    model = load_model_row(the_lab, params["model_id"])
    dataset = load_dataset_row(the_lab, params["dataset_id"])
    return _convert(the_lab, model, dataset, list(params["recipes"]), int(params.get("calibration_samples", 100)),
                    bool(params.get("bench", True)), progress)


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


TaskFn = Callable[["Lab", dict[str, Any], Progress], dict[str, Any]]

TASKS: dict[str, TaskFn] = {
    "demo": demo_task,
    "convert": convert_task,
    "host_bench": host_bench_task,
}


def make_tasks(the_lab: Lab) -> dict[str, JobFn]:
    """The job functions of one lab, for its JobRunner."""
    return {kind: functools.partial(fn, the_lab) for kind, fn in TASKS.items()}
