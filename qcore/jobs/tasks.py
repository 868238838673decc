"""What each job kind does on a worker: materialize its input bytes, call the engine, return values.

A task never opens the database. Its `store` is a `Journal` (see `qcore.jobs.journal`): the engine's
writes are recorded and come back with the result, and the owner writes them in one transaction.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from qcore import defaults
from qcore.jobs.contract import (
    AddModelParams,
    BoardAccuracyParams,
    BoardBenchParams,
    BoardMatrixParams,
    CompareTensorsParams,
    ConvertParams,
    DebugParams,
    DemoParams,
    HostBenchParams,
    ImportTfliteParams,
    JobKind,
    JobSpec,
    QatParams,
    SelectiveParams,
    TuneParams,
)
from qcore.jobs.journal import Journal
from qcore.qtyping import Dataset, LoadedModel, Progress, QlabError

# progress data (e.g. QAT's epochs) a task publishes while it runs; the runner sets it per job
Publish = Callable[[dict[str, Any]], None]


def _no_publish(_data: dict[str, Any]) -> None:
    return None


@dataclass
class Context:
    """A running task's surroundings on the worker: its spec, a scratch folder and its journal."""

    spec: JobSpec
    workdir: Path
    journal: Journal
    progress: Progress
    publish: Publish = _no_publish


def scaled(progress: Progress, start: float, end: float) -> Progress:
    """Maps a sub-step's [0, 1] progress onto [start, end] of the job."""

    def report(fraction: float, message: str) -> None:
        progress(start + (end - start) * max(0.0, min(1.0, fraction)), message)

    return report


# ---------------------------------------------------------------- inputs
def _materialize(ctx: Context, role: str) -> Path:
    """Writes an input's bytes into the scratch folder; a zip (a SavedModel) is unpacked."""
    if role not in ctx.spec.files:
        raise QlabError(f"job {ctx.spec.kind}: input {role!r} was not sent to the worker")
    name, data = ctx.spec.files[role]
    folder = ctx.workdir / role.replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PurePosixPath(name).name
    path.write_bytes(data)
    if path.suffix.lower() == ".zip" and role == "model":
        root = folder / "unpacked"
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename).parts
                if PurePosixPath(info.filename).is_absolute() or ".." in parts:
                    raise QlabError(f"{name}: entry {info.filename!r} points outside the archive")
            zf.extractall(root)
        found = sorted(p.parent for p in root.rglob("saved_model.pb"))
        if len(found) != 1:
            raise QlabError(f"{name}: the zip must hold exactly one SavedModel, found {len(found)}")
        return found[0]
    return path


def load_model_input(ctx: Context) -> LoadedModel:
    """The job's Keras model, loaded on this worker from the bytes the owner sent."""
    from qcore.inputs.models import load_model

    row = ctx.spec.rows.get("model", {})
    if row.get("format") == "tflite" or "model" not in ctx.spec.files:
        raise QlabError(
            f"model #{row.get('id')} ({row.get('name')}) is tflite-only (an imported .tflite or report): there is "
            "no Keras source to convert, debug or train again; upload its Keras file on the Models & data page"
        )
    path = _materialize(ctx, "model")
    try:
        model = load_model(path, trusted=row.get("trusted") is True)
    except QlabError as exc:  # name the user's file, not this worker's scratch copy
        raise QlabError(str(exc).replace(str(path), path.name)) from None
    return dataclasses.replace(model, name=str(row.get("name") or model.name))


def load_dataset_input(ctx: Context, role: str = "dataset") -> Dataset:
    """The job's data with its stored preprocessing, loaded from the bytes the owner sent (or digits)."""
    from qcore.inputs.data import load_stored_dataset

    row = ctx.spec.rows[role]
    path = _materialize(ctx, role) if role in ctx.spec.files else None
    shape = row.get("input_shape")
    return load_stored_dataset(row, path, tuple(shape) if shape else None)


def variant_input(ctx: Context, variant_id: int) -> tuple[dict[str, Any], bytes]:
    """A stored variant's row and its .tflite bytes, as the owner sent them."""
    key = f"variant:{int(variant_id)}"
    if key not in ctx.spec.files:
        raise QlabError(f"variant #{variant_id}: its .tflite was not sent to the worker")
    return ctx.spec.rows[key], ctx.spec.files[key][1]


# ---------------------------------------------------------------- model summary
def model_summary(model: LoadedModel) -> dict[str, Any]:
    """What pages show of a model without loading it: its layers, parameters and shapes."""
    layers = [la for la in model.keras_model.layers if type(la).__name__ != "InputLayer"]
    builtin = ("keras.", "tf_keras.", "keras_core.")
    custom = sorted({type(la).__name__ for la in layers if not type(la).__module__.startswith(builtin)})
    classes = [type(la).__name__ for la in layers]
    return {
        "layers": [[la.name, type(la).__name__] for la in layers],
        "params": int(model.keras_model.count_params()),
        "input_shape": list(model.input_shape),
        "output_shape": list(model.output_shape),
        "input_dtype": str(getattr(model.keras_model.inputs[0], "dtype", "float32")).replace("<dtype: '", "")
        .rstrip("'>"),
        "batch_norm": any("BatchNormalization" in c for c in classes),
        "custom_layers": custom,
        "keras_major": model.keras_major,
        "format": model.format,
    }


def add_model_task(ctx: Context, params: AddModelParams) -> dict[str, Any]:
    """Loads an uploaded model on the worker and records it with its summary."""
    from qcore.inputs.models import file_sha256

    ctx.progress(0.1, f"loading {params.filename}")
    path = _materialize(ctx, "model")
    from qcore.inputs.models import load_model

    try:
        model = load_model(path, trusted=params.trusted)
    except QlabError as exc:  # the message names the worker's scratch path; the user knows their file name
        raise QlabError(str(exc).replace(str(path), params.filename)) from None
    summary = model_summary(model)
    upload = ctx.spec.rows.get("upload", {})
    name = params.name.strip() or Path(params.filename).stem
    model_id = ctx.journal.add_model(
        name=name, format=model.format, sha256=file_sha256(path), source_path=str(upload.get("path", "")),
        input_shape=model.input_shape, output_shape=model.output_shape, keras_major=model.keras_major,
        trusted=params.trusted,
    )
    ctx.journal.set_model_summary(model_id, summary)
    ctx.progress(1.0, f"added {name}: {len(summary['layers'])} layers, {summary['params']:,} parameters")
    return {"model_id": model_id, "name": name, "format": model.format, "input_shape": list(model.input_shape),
            "layers": len(summary["layers"]), "params": summary["params"]}


# ---------------------------------------------------------------- conversion and host timing
def journal_tflite(journal: Journal, sha256: str) -> bytes:
    """The .tflite bytes a job already saved as a variant (the journal holds them until the owner writes)."""
    from qcore.store import sha256_bytes

    for call in journal.calls:
        data = call.kwargs.get("tflite") if call.method == "save_variant" else None
        if isinstance(data, bytes) and sha256_bytes(data) == sha256:
            return data
    raise QlabError(f"no variant with sha256 {sha256[:12]}… was saved by this job")


def _convert(ctx: Context, model: LoadedModel, dataset: Dataset, recipe_names: tuple[str, ...],
             calibration_samples: int, bench: bool, progress: Progress, engine: str = "tf") -> dict[str, Any]:
    from qcore.inputs.data import check_fits
    from qcore.lab.convert import convert_and_evaluate
    from qcore.recipes import resolve_recipes

    recipes = resolve_recipes(",".join(recipe_names), engine)
    if not recipes:
        raise QlabError("choose at least one recipe")
    check_fits(model, dataset)

    def each(variant: Any) -> None:  # each recipe's row reaches the page as it lands, with the pace so far
        row = _variant_result(variant)
        if variant.sha256:
            from qcore.tflite.inspection import npu_verdict

            verdict = npu_verdict(journal_tflite(ctx.journal, variant.sha256))
            row.update(npu=verdict.label, io=verdict.io)
        done.append(row)
        ctx.publish({"variants": list(done), "recipes_total": len(recipes),
                     "elapsed_s": round(time.monotonic() - started, 2)})

    done: list[dict[str, Any]] = []
    started = time.monotonic()
    report = convert_and_evaluate(
        model, dataset, recipes, store=ctx.journal,  # type: ignore[arg-type]
        calibration_samples=int(calibration_samples),
        progress=scaled(progress, 0.0, 0.85 if bench else 1.0), on_variant=each, engine=engine,
    )
    ok = [v for v in report.variants if v.variant_id is not None and v.status == "ok"]
    if bench and ok:
        from qcore.store import sha256_bytes
        from qcore.tflite.latency import benchmark

        step = scaled(progress, 0.85, 1.0)
        for i, v in enumerate(ok):
            step(i / len(ok), f"timing {v.recipe} on the worker's CPU ({i + 1}/{len(ok)})")
            data = journal_tflite(ctx.journal, v.sha256)
            lat = benchmark(data, runs=defaults.HOST_BENCH_RUNS, warmup=defaults.HOST_BENCH_WARMUP, threads=1,
                            xnnpack=True)
            ctx.journal.add_benchmark(lat, sha256=sha256_bytes(data), board="host", variant_id=v.variant_id)
    return {
        "model": report.model, "model_id": report.model_id, "dataset_id": report.dataset_id,
        "float_accuracy": report.float_accuracy,
        "variants": [_variant_result(v) for v in report.variants],
    }


def _variant_result(v: Any) -> dict[str, Any]:
    return {"recipe": v.recipe, "status": str(v.status), "variant_id": v.variant_id, "size_bytes": v.size_bytes,
            "accuracy": v.evaluation.accuracy if v.evaluation else None, "error": v.error,
            "engine": getattr(v, "engine", "tf")}


def convert_task(ctx: Context, params: ConvertParams) -> dict[str, Any]:
    model = load_model_input(ctx)
    dataset = load_dataset_input(ctx)
    return _convert(ctx, model, dataset, params.recipes, params.calibration_samples, params.bench, ctx.progress,
                    params.engine)


def demo_task(ctx: Context, params: DemoParams) -> dict[str, Any]:
    """First start: train the demo CNN, keep its file on the owner, register it with digits, convert."""
    from qcore.inputs.data import digits_dataset
    from qcore.inputs.models import demo_model, file_sha256

    folder = ctx.workdir / "demo"
    if "model" in ctx.spec.files:  # the owner kept the demo trained by an earlier start
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "demo.h5").write_bytes(ctx.spec.files["model"][1])
    model = demo_model(folder, progress=scaled(ctx.progress, 0.0, 0.3))
    kept = ctx.journal.keep_file(f"demo/{Path(model.path).name}", Path(model.path).read_bytes())
    model_id = ctx.journal.add_model(
        name=model.name, format="demo", sha256=file_sha256(model.path), source_path=kept,
        input_shape=model.input_shape, output_shape=model.output_shape, keras_major=model.keras_major,
    )
    ctx.journal.set_model_summary(model_id, model_summary(model))
    return _convert(ctx, model, digits_dataset(), (params.recipes,), defaults.CALIBRATION_SAMPLES, True,
                    scaled(ctx.progress, 0.3, 1.0))


def host_bench_task(ctx: Context, params: HostBenchParams) -> dict[str, Any]:
    from qcore.tflite.latency import benchmark

    out = []
    for i, vid in enumerate(params.variant_ids):
        row, data = variant_input(ctx, vid)
        ctx.progress(i / len(params.variant_ids),
                     f"timing {row['variant']} on the worker's CPU ({i + 1}/{len(params.variant_ids)})")
        lat = benchmark(data, runs=params.runs, warmup=params.warmup, threads=params.threads,
                        xnnpack=params.xnnpack)
        ctx.journal.add_benchmark(lat, sha256=str(row["sha256"]), board="host", variant_id=vid)
        out.append({"variant_id": vid, "p50_ms": lat.p50_ms, "first_ms": lat.first_ms})
    ctx.progress(1.0, "timed")
    return {"timings": out}


# ---------------------------------------------------------------- debugger, selective, search, tensors
def debug_task(ctx: Context, params: DebugParams) -> dict[str, Any]:
    from qcore.explain.debugger import run_debugger

    result = run_debugger(
        load_model_input(ctx), load_dataset_input(ctx), recipe=params.recipe,
        calibration_samples=params.calibration_samples, debug_samples=params.debug_samples,
        extra_metrics=list(params.extra_metrics), whole_model=params.whole_model,
        store=ctx.journal, progress=ctx.progress, engine=params.engine,  # type: ignore[arg-type]
    )
    return {"debug_run_id": result.debug_run_id, "layers": len(result.stats), "suspects": list(result.suspects),
            "model_metrics": result.model_metrics}


def selective_task(ctx: Context, params: SelectiveParams) -> dict[str, Any]:
    """Keeps the chosen layers in float, evaluates the selective variant, and makes sure the plain
    recipe's variant exists to compare with (the owner says whether it does)."""
    from qcore.explain.debugger import run_debugger
    from qcore.lab.convert import convert_and_evaluate
    from qcore.recipes import get_recipe

    if not params.denylisted_nodes and not params.denylisted_ops:
        raise QlabError("choose at least one layer (or op type) to keep in float")
    model, dataset = load_model_input(ctx), load_dataset_input(ctx)
    result = run_debugger(
        model, dataset, recipe=params.recipe, calibration_samples=params.calibration_samples,
        debug_samples=params.debug_samples, denylisted_nodes=list(params.denylisted_nodes),
        denylisted_ops=list(params.denylisted_ops), store=ctx.journal,  # type: ignore[arg-type]
        progress=scaled(ctx.progress, 0.0, 0.8), engine=params.engine,
    )
    baseline = ctx.spec.rows.get("baseline", {}).get("variant_id")
    if baseline is None:
        report = convert_and_evaluate(model, dataset, [get_recipe(params.recipe)],
                                      store=ctx.journal,  # type: ignore[arg-type]
                                      calibration_samples=params.calibration_samples,
                                      progress=scaled(ctx.progress, 0.8, 1.0), engine=params.engine)
        baseline = report.variants[0].variant_id
    sel = result.selective
    return {
        "debug_run_id": result.debug_run_id, "selective_variant_id": sel.variant_id if sel else None,
        "baseline_variant_id": baseline, "accuracy": sel.evaluation.accuracy if sel else None,
        "ignored_nodes": list(getattr(sel, "ignored_nodes", ()) or ()),
    }


def tune_task(ctx: Context, params: TuneParams) -> dict[str, Any]:
    from qcore.explain.search import tune

    result = tune(load_model_input(ctx), load_dataset_input(ctx), max_drop=params.max_drop, recipe=params.recipe,
                  calibration_samples=params.calibration_samples, debug_samples=params.debug_samples,
                  store=ctx.journal, progress=ctx.progress,  # type: ignore[arg-type]
                  engine=params.engine, deploy_engine=params.deploy_engine)
    return {"tune_run_id": result.tune_run_id, "chosen_variant_id": result.chosen_variant_id,
            "conversions": len(result.tried), "layers": len(result.ranking),
            "chosen": list(result.chosen.denylist) if result.chosen else None}


def compare_tensors_task(ctx: Context, params: CompareTensorsParams) -> dict[str, Any]:
    from qcore.tflite.compare import compare_tensors

    frow, fbytes = variant_input(ctx, params.float_variant_id)
    qrow, qbytes = variant_input(ctx, params.quant_variant_id)
    dataset = load_dataset_input(ctx)
    x = dataset.preprocess(dataset.x_test[: params.samples])
    cmp = compare_tensors(fbytes, qbytes, x, progress=ctx.progress)
    return {
        "float": f"{frow['model']} / {frow['variant']}", "quant": f"{qrow['model']} / {qrow['variant']}",
        "n_samples": cmp.n_samples,
        "matched": [dataclasses.asdict(d) for d in cmp.matched],
        "unmatched": [dataclasses.asdict(u) for u in cmp.unmatched],
    }


# ---------------------------------------------------------------- QAT
def qat_task(ctx: Context, params: QatParams) -> dict[str, Any]:
    """Publishes each epoch's metrics as structured data while it trains."""
    from qcore.lab.qat import run_qat

    model, dataset = load_model_input(ctx), load_dataset_input(ctx)
    history: list[dict[str, float]] = []

    def on_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        history.append({"epoch": epoch, **metrics})
        ctx.publish({"history": list(history), "epochs": epochs})

    result = run_qat(
        model, dataset, layers=params.layers if params.layers != ("all",) else "all", epochs=params.epochs,
        batch_size=params.batch_size, learning_rate=params.learning_rate,
        train_samples=params.train_samples or None, int_io=params.int_io,
        calibration_samples=params.calibration_samples, store=ctx.journal,  # type: ignore[arg-type]
        progress=ctx.progress, on_epoch=on_epoch,
    )
    return {
        "variant_id": result.variant_id, "float_accuracy": result.float_accuracy,
        "keras_accuracy": result.keras_accuracy, "tflite_accuracy": result.tflite_accuracy,
        "range_drift": result.range_drift, "warnings": list(result.warnings),
        "quantized_layers": list(result.quantized_layers), "size_bytes": result.size_bytes,
        "history": [dict(h, epoch=i + 1) for i, h in enumerate(result.history)],
    }


# ---------------------------------------------------------------- bring your own .tflite
def import_tflite_task(ctx: Context, params: ImportTfliteParams) -> dict[str, Any]:
    """Inspects, runs and scores a .tflite made elsewhere (and its float reference) on the worker."""
    from qcore.inputs.data import load_stored_dataset
    from qcore.lab.import_tflite import input_shape, run_import

    model = ctx.spec.files["tflite"][1]
    reference = ctx.spec.files["reference"][1] if "reference" in ctx.spec.files else None
    dataset = None
    if params.dataset_id is not None:
        path = _materialize(ctx, "dataset") if "dataset" in ctx.spec.files else None
        dataset = load_stored_dataset(ctx.spec.rows["dataset"], path, input_shape(model, params.filename))
    return dict(run_import(ctx.journal, params, model, reference=reference, dataset=dataset,  # type: ignore[arg-type]
                           progress=ctx.progress))


# ---------------------------------------------------------------- boards (run by the owner, see OWNER_TASKS)
def board_bench_task(store: Any, params: BoardBenchParams, progress: Progress) -> dict[str, Any]:
    """A matrix on one board: every (variant, target) cell succeeds or fails on its own, and a failed
    cell keeps its reason in the store (picking npu on a board without the NPU still stores the CPU timings)."""
    return board_matrix_task(store, BoardMatrixParams(
        pool=params.board, variant_ids=params.variant_ids, targets=params.targets, placement="board",
        runs=params.runs, warmup=params.warmup, threads=params.threads, profile=params.profile), progress)


def board_matrix_task(store: Any, params: BoardMatrixParams, progress: Progress) -> dict[str, Any]:
    from qcore.boards.runs import matrix

    result = matrix(store, list(params.variant_ids), list(params.targets), pool=params.pool,
                    placement=params.placement, runs=params.runs, warmup=params.warmup, threads=params.threads,
                    profile=params.profile, progress=progress)
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


def board_accuracy_task(store: Any, params: BoardAccuracyParams, progress: Progress) -> dict[str, Any]:
    """Each (variant, target) cell on its own; the board gets the variant's own test data."""
    import json as _json

    from qcore.boards.runs import AccuracyItem, accuracy_run, variant_model
    from qcore.inputs.data import load_stored_dataset

    if not params.variant_ids:
        raise QlabError("choose at least one variant")
    items = []
    for vid in params.variant_ids:
        row, data = variant_model(store, vid)
        dataset_id = _dataset_of(row)
        shape = store.model(int(row["model_id"])).get("input_shape")
        model_shape = tuple(_json.loads(shape)) if isinstance(shape, str) and shape else None
        dataset = load_stored_dataset(store.dataset(dataset_id), None, model_shape)
        items.append(AccuracyItem(vid, f"{row['model']} / {row['variant']}", data, dataset, dataset_id))
    targets = list(params.targets) if params.targets else [params.target]
    cells = accuracy_run(store, params.board, items, targets, threads=params.threads, progress=progress)
    if all(c.status == "failed" for c in cells):
        raise QlabError("every cell failed: " + "; ".join(dict.fromkeys(c.reason for c in cells)))
    return {"board": params.board,
            "results": [{"variant_id": c.variant_id, "target": c.target, "accuracy": c.accuracy,
                         "status": str(c.status), "reason": c.reason} for c in cells]}


def _dataset_of(row: dict[str, Any]) -> int:
    """The dataset of a variant row.

    Raises:
        QlabError: when it has none (an imported .tflite stored without data).
    """
    value = row.get("dataset_id")
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise QlabError(f"variant #{row['variant_id']} {row['variant']} has no dataset: import the .tflite "
                        "again on the Models & data page with a dataset (and its input preprocessing) "
                        "chosen") from None


TASKS: dict[JobKind, Callable[[Context, Any], dict[str, Any]]] = {
    JobKind.DEMO: demo_task,
    JobKind.ADD_MODEL: add_model_task,
    JobKind.CONVERT: convert_task,
    JobKind.HOST_BENCH: host_bench_task,
    JobKind.DEBUG: debug_task,
    JobKind.SELECTIVE: selective_task,
    JobKind.TUNE: tune_task,
    JobKind.COMPARE_TENSORS: compare_tensors_task,
    JobKind.QAT: qat_task,
    JobKind.IMPORT_TFLITE: import_tflite_task,
}

# Board runs stay in the owner process: they are HTTP calls to the boards' agents (the agent runs
# the model), and the board farm records each cell in the store as it lands, so a board that goes
# away mid-run keeps the cells before it. They get the real store.
OWNER_TASKS: dict[JobKind, Callable[[Any, Any, Progress], dict[str, Any]]] = {
    JobKind.BOARD_BENCH: board_bench_task,
    JobKind.BOARD_ACCURACY: board_accuracy_task,
    JobKind.BOARD_MATRIX: board_matrix_task,
}


@dataclass(frozen=True)
class JobOutput:
    """What a worker hands back: the JSON result (with placeholder ids) and the journal of writes."""

    result: dict[str, Any]
    journal: Journal


def run_task(spec: JobSpec, progress: Progress, publish: Publish = _no_publish) -> JobOutput:
    """Runs one job on this process (a Dask worker, or the CLI): bytes in, values out.

    Raises:
        QlabError: whatever the engine refuses, in words.
    """
    journal = Journal(
        blob_dir=spec.blob_dir,
        boards={k[len("board:"):]: (str(r["url"]), r.get("token")) for k, r in spec.rows.items()
                if k.startswith("board:")},
        variant_ids_by_sha={str(r["sha256"]): int(r["variant_id"]) for k, r in spec.rows.items()
                            if k.startswith("variant:") and r.get("sha256")},
    )
    with tempfile.TemporaryDirectory(prefix=f"qlab-job-{spec.job_id}-") as tmp:
        ctx = Context(spec=spec, workdir=Path(tmp), journal=journal, progress=progress, publish=publish)
        result = TASKS[spec.kind](ctx, spec.params)
    return JobOutput(result=json.loads(_json(result)), journal=journal)


def _json(value: Any) -> str:
    from qcore.jobs.contract import to_json

    return to_json(value)


def zip_dir(folder: Path) -> bytes:
    """A folder (a SavedModel) as zip bytes, to send it to a worker."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()
