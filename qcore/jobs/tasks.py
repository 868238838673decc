"""What each job kind does where it runs (a Dask worker, or the CLI's own process): bytes in, values out.

A task never opens the database. It returns a frozen value of `qcore.qtyping` carrying its bytes and
figures; the owner's `qcore.lab.publish` writes it once, and `qcore.lab.documents` describes it.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from qcore import defaults
from qcore.engines import get_engine, resolve_recipes, variant_name
from qcore.explain.debugger import recipe_of, run_debugger
from qcore.explain.repairs import repair_and_evaluate
from qcore.explain.search import tune
from qcore.inputs.data import check_fits, dataset_record, digits_dataset, load_stored_dataset
from qcore.inputs.models import demo_model, file_sha256, load_model
from qcore.inputs.summary import loaded_summary
from qcore.jobs.contract import (
    AddModelParams,
    CompareTensorsParams,
    ConvertParams,
    DebugParams,
    DemoParams,
    HostBenchParams,
    ImportTfliteParams,
    JobKind,
    JobSpec,
    QatParams,
    RepairParams,
    SelectiveParams,
    TuneParams,
)
from qcore.lab.convert import convert_and_evaluate
from qcore.lab.documents import variant_doc
from qcore.lab.import_tflite import analyze, input_shape
from qcore.lab.qat import run_qat
from qcore.qtyping import (
    BiasMode,
    ConvertReport,
    Dataset,
    DebugResult,
    DemoResult,
    HostBenchResult,
    HostTiming,
    LoadedModel,
    ModelRecord,
    Progress,
    QatResult,
    QlabError,
    RepairReport,
    RepairSettings,
    TensorComparison,
    TfliteImport,
    TuneResult,
    VariantResult,
    progress_slice,
)
from qcore.tflite.compare import compare_tensors
from qcore.tflite.latency import benchmark

# structured progress (each recipe's row, QAT's epochs) a task sends while it runs; the runner sets it per job
Live = Callable[[dict[str, Any]], None]


# a finished piece of a job's value (each recipe's variant, with its bytes) the owner keeps if the job is stopped
Keep = Callable[[Any], None]


def _no_live(_data: dict[str, Any]) -> None:
    return None


def _no_keep(_value: Any) -> None:
    return None


@dataclass
class Context:
    """A running task's surroundings: its spec, a scratch folder, progress and live data."""

    spec: JobSpec
    workdir: Path
    progress: Progress
    live: Live = _no_live
    keep: Keep = _no_keep


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


# a warm worker keeps the last models it loaded: the next job on the same model skips the load
# (seconds for a real network); two are enough for convert-then-debug and a second user's model
_MODEL_CACHE_SIZE = 2
_models: OrderedDict[tuple[str, bool], LoadedModel] = OrderedDict()
_models_lock = threading.Lock()


def remember_model(sha256: str, model: LoadedModel, *, trusted: bool = False) -> None:
    """Keeps a model this process loaded already for the next job on it (the CLI registers, then runs)."""
    with _models_lock:
        _models[(sha256, trusted)] = dataclasses.replace(model, path="")
        while len(_models) > _MODEL_CACHE_SIZE:
            _models.popitem(last=False)


def load_model_input(ctx: Context) -> LoadedModel:
    """The job's Keras model, loaded here from the bytes the owner sent (or kept from a job before).

    Raises:
        QlabError: for a tflite-only model (nothing to convert), or a file the loader refuses.
    """
    row = ctx.spec.rows.get("model", {})
    if row.get("format") == "tflite" or "model" not in ctx.spec.files:
        raise QlabError(
            f"model #{row.get('id')} ({row.get('name')}) is tflite-only (an imported .tflite or report): there is "
            "no Keras source to convert, debug or train again; upload its Keras file on the Models & data page"
        )
    name, data = ctx.spec.files["model"]
    key = (str(row.get("sha256") or f"{name}:{len(data)}"), row.get("trusted") is True)
    with _models_lock:
        if key in _models:
            _models.move_to_end(key)
            return dataclasses.replace(_models[key], name=str(row.get("name") or _models[key].name))
    path = _materialize(ctx, "model")
    try:
        model = load_model(path, trusted=key[1])
    except QlabError as exc:  # name the user's file, not this worker's scratch copy
        raise QlabError(str(exc).replace(str(path), path.name)) from None
    # the scratch folder goes when the job ends: the model's identity is the owner's sha, not a path
    remember_model(key[0], model, trusted=key[1])
    return dataclasses.replace(model, name=str(row.get("name") or model.name), path="")


def load_dataset_input(ctx: Context, role: str = "dataset") -> Dataset:
    """The job's data with its stored preprocessing, loaded from the bytes the owner sent (or digits)."""
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


R = TypeVar("R", ConvertReport, DebugResult, TuneResult, QatResult, RepairReport)


def _stored_as(result: R, params: Any) -> R:
    """The result with the owner's ids of the model and dataset it was made from (it is published under them)."""
    return dataclasses.replace(result, model_id=int(params.model_id), dataset_id=int(params.dataset_id))


# ---------------------------------------------------------------- models
def add_model_task(ctx: Context, params: AddModelParams) -> ModelRecord:
    """Loads an uploaded model (behind the safety policy) and records what pages show of it."""
    ctx.progress(0.1, f"loading {params.filename}")
    path = _materialize(ctx, "model")
    try:
        model = load_model(path, trusted=params.trusted)
    except QlabError as exc:  # the message names the worker's scratch path; the user knows their file name
        raise QlabError(str(exc).replace(str(path), params.filename)) from None
    summary = loaded_summary(model)
    upload = ctx.spec.rows.get("upload", {})
    name = params.name.strip() or Path(params.filename).stem
    ctx.progress(1.0, f"loaded {name}: {len(summary['layers'])} layers, {summary['params']:,} parameters")
    return ModelRecord(name=name, format=model.format, sha256=file_sha256(path), input_shape=model.input_shape,
                       output_shape=model.output_shape, keras_major=model.keras_major,
                       source_path=str(upload.get("path", "")), trusted=params.trusted, summary=summary)


# ---------------------------------------------------------------- conversion and host timing
def _convert(ctx: Context, model: LoadedModel, dataset: Dataset, recipe_names: tuple[str, ...],
             calibration_samples: int, bench: bool, progress: Progress, engine: str) -> ConvertReport:
    eng = get_engine(engine)
    recipes = resolve_recipes(",".join(recipe_names), eng.name)
    if not recipes:
        raise QlabError("choose at least one recipe")
    check_fits(model, dataset)
    done: list[VariantResult] = []
    started = time.monotonic()
    convert_share = 0.85 if bench else 1.0

    def each(variant: VariantResult) -> None:  # each recipe's row reaches the page as it lands, timed
        if bench and variant.tflite is not None:
            progress(convert_share * len(done) / len(recipes), f"timing {variant.recipe} on the worker's CPU")
            variant = dataclasses.replace(variant, latency=benchmark(
                variant.tflite, runs=defaults.HOST_BENCH_RUNS, warmup=defaults.HOST_BENCH_WARMUP, threads=1,
                xnnpack=True))
        done.append(variant)
        ctx.keep(variant)  # before its row goes live: the owner holds every variant the page shows
        ctx.live({"variants": [variant_doc(v) for v in done], "recipes_total": len(recipes),
                  "elapsed_s": round(time.monotonic() - started, 2)})

    report = convert_and_evaluate(model, dataset, recipes, calibration_samples=int(calibration_samples),
                                  progress=progress_slice(progress, 0.0, convert_share), on_variant=each,
                                  on_reference=ctx.keep, engine=eng.name)
    return dataclasses.replace(report, variants=tuple(done))


def convert_task(ctx: Context, params: ConvertParams) -> ConvertReport:
    report = _convert(ctx, load_model_input(ctx), load_dataset_input(ctx), params.recipes,
                      params.calibration_samples, params.bench, ctx.progress, params.engine)
    return _stored_as(report, params)


def demo_task(ctx: Context, params: DemoParams) -> DemoResult:
    """First start: train the demo CNN (or take the one kept before), convert it on digits."""
    folder = ctx.workdir / "demo"
    if "model" in ctx.spec.files:  # the owner kept the demo trained by an earlier start
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "demo.h5").write_bytes(ctx.spec.files["model"][1])
    model = demo_model(folder, progress=progress_slice(ctx.progress, 0.0, 0.3))
    data = Path(model.path).read_bytes()
    record = ModelRecord(name=model.name, format="demo", sha256=file_sha256(model.path),
                         input_shape=model.input_shape, output_shape=model.output_shape,
                         keras_major=model.keras_major, summary=loaded_summary(model),
                         file=(f"demo/{Path(model.path).name}", data))
    dataset = digits_dataset()
    report = _convert(ctx, model, dataset, (params.recipes,), defaults.CALIBRATION_SAMPLES, True,
                      progress_slice(ctx.progress, 0.3, 1.0), defaults.ENGINE)
    return DemoResult(model=record, dataset=dataset_record(dataset), report=report)


def host_bench_task(ctx: Context, params: HostBenchParams) -> HostBenchResult:
    timings = []
    for i, vid in enumerate(params.variant_ids):
        row, data = variant_input(ctx, vid)
        ctx.progress(i / len(params.variant_ids),
                     f"timing {row['variant']} on the worker's CPU ({i + 1}/{len(params.variant_ids)})")
        lat = benchmark(data, runs=params.runs, warmup=params.warmup, threads=params.threads,
                        xnnpack=params.xnnpack)
        timings.append(HostTiming(variant_id=int(vid), sha256=str(row["sha256"]), latency=lat))
    ctx.progress(1.0, "timed")
    return HostBenchResult(tuple(timings))


# ---------------------------------------------------------------- debugger, selective, search, tensors
def debug_task(ctx: Context, params: DebugParams) -> DebugResult:
    result = run_debugger(
        load_model_input(ctx), load_dataset_input(ctx), engine=params.engine, recipe=params.recipe,
        calibration_samples=params.calibration_samples, debug_samples=params.debug_samples,
        extra_metrics=list(params.extra_metrics), whole_model=params.whole_model, threshold=params.threshold,
        first_k=params.first_k, progress=ctx.progress,
    )
    return _stored_as(result, params)


def selective_task(ctx: Context, params: SelectiveParams) -> DebugResult:
    """Keeps the chosen layers in float, evaluates that model, and makes the plain recipe's variant to
    compare with when the store has none (the owner says whether it has)."""
    if not params.denylisted_nodes and not params.denylisted_ops:
        raise QlabError("choose at least one layer (or op type) to keep in float")
    model, dataset = load_model_input(ctx), load_dataset_input(ctx)
    eng = get_engine(params.engine)
    rec = recipe_of(params.recipe)
    session = eng.session(model, dataset.calibration(params.calibration_samples))
    result = run_debugger(
        model, dataset, engine=eng.name, recipe=rec, calibration_samples=params.calibration_samples,
        debug_samples=params.debug_samples, denylisted_nodes=list(params.denylisted_nodes),
        denylisted_ops=list(params.denylisted_ops), extra_metrics=list(params.extra_metrics),
        whole_model=params.whole_model, threshold=params.threshold, first_k=params.first_k, session=session,
        progress=progress_slice(ctx.progress, 0, 0.8),
    )
    assert result.selective is not None  # a denylist was given
    baseline_id = ctx.spec.rows.get("baseline", {}).get("variant_id")
    selective = dataclasses.replace(result.selective, baseline_variant_id=baseline_id)
    if baseline_id is None:
        ctx.progress(0.8, f"converting with {rec.name} to compare with")
        report = convert_and_evaluate(model, dataset, [rec], calibration_samples=params.calibration_samples,
                                      progress=progress_slice(ctx.progress, 0.8, 1.0), engine=eng.name)
        selective = dataclasses.replace(selective, baseline=report.variants[0])
    return _stored_as(dataclasses.replace(result, selective=selective), params)


def baseline_name(params: SelectiveParams) -> str:
    """The name of the plain recipe's variant a keep-float build is compared with."""
    return variant_name(params.recipe, params.engine)


def tune_task(ctx: Context, params: TuneParams) -> TuneResult:
    result = tune(load_model_input(ctx), load_dataset_input(ctx), max_drop=params.max_drop, recipe=params.recipe,
                  calibration_samples=params.calibration_samples, debug_samples=params.debug_samples,
                  progress=ctx.progress, engine=params.engine, deploy_engine=params.deploy_engine,
                  repairs=params.repairs)
    return _stored_as(result, params)


def compare_tensors_task(ctx: Context, params: CompareTensorsParams) -> TensorComparison:
    frow, fbytes = variant_input(ctx, params.float_variant_id)
    qrow, qbytes = variant_input(ctx, params.quant_variant_id)
    dataset = load_dataset_input(ctx)
    x = dataset.preprocess(dataset.x_test[: params.samples])
    cmp = compare_tensors(fbytes, qbytes, x, progress=ctx.progress)
    return dataclasses.replace(cmp, float_path=f"{frow['model']} / {frow['variant']}",
                               quant_path=f"{qrow['model']} / {qrow['variant']}")


def repair_settings(params: RepairParams) -> RepairSettings:
    """The repairs' knobs a repair job sets; the rest keep their defaults.

    Raises:
        QlabError: for an unknown bias mode or fewer than one AdaRound iteration, by name.
    """
    try:
        mode = BiasMode(params.bias_mode)
    except ValueError:
        raise QlabError(f"unknown bias mode {params.bias_mode!r}; known: "
                        + ", ".join(m.value for m in BiasMode)) from None
    if params.adaround_iterations < 1:
        raise QlabError(f"AdaRound iterations must be at least 1, got {params.adaround_iterations}")
    return RepairSettings(bias_mode=mode, adaround_iterations=params.adaround_iterations)


def repair_task(ctx: Context, params: RepairParams) -> RepairReport:
    """Repairs the model, converts it beside the plain recipe; the time estimate goes out as live data."""
    settings = repair_settings(params)
    result = repair_and_evaluate(
        load_model_input(ctx), load_dataset_input(ctx), methods=params.methods, recipe=params.recipe,
        engine=params.engine, calibration_samples=params.calibration_samples, debug_samples=params.debug_samples,
        settings=settings, progress=ctx.progress, live=ctx.live,
    )
    return _stored_as(result, params)


# ---------------------------------------------------------------- QAT
def qat_task(ctx: Context, params: QatParams) -> QatResult:
    """Sends each epoch's metrics as live data while it trains."""
    model, dataset = load_model_input(ctx), load_dataset_input(ctx)
    history: list[dict[str, float]] = []

    def on_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        history.append({"epoch": epoch, **metrics})
        ctx.live({"history": list(history), "epochs": epochs})

    result = run_qat(
        model, dataset, layers=params.layers if params.layers != ("all",) else "all", epochs=params.epochs,
        batch_size=params.batch_size, learning_rate=params.learning_rate,
        train_samples=params.train_samples or None, int_io=params.int_io,
        calibration_samples=params.calibration_samples, progress=ctx.progress, on_epoch=on_epoch,
    )
    return _stored_as(result, params)


# ---------------------------------------------------------------- bring your own .tflite
def import_tflite_task(ctx: Context, params: ImportTfliteParams) -> TfliteImport:
    """Inspects, runs and scores a .tflite made elsewhere (and its float reference)."""
    model = ctx.spec.files["tflite"][1]
    reference = ctx.spec.files["reference"][1] if "reference" in ctx.spec.files else None
    dataset = None
    if params.dataset_id is not None:
        path = _materialize(ctx, "dataset") if "dataset" in ctx.spec.files else None
        dataset = load_stored_dataset(ctx.spec.rows["dataset"], path, input_shape(model, params.filename))
    result = analyze(model, label=params.filename, name=params.name, reference=reference,
                     reference_label=params.reference_filename, dataset=dataset, progress=ctx.progress)
    return dataclasses.replace(result, dataset_id=params.dataset_id)


TASKS: dict[JobKind, Callable[[Context, Any], Any]] = {
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
    JobKind.REPAIR: repair_task,
}


def _convert_kept(params: ConvertParams, kept: list[Any]) -> ConvertReport | None:
    """The recipes a stopped conversion finished, as the report it would have made (None: nothing finished)."""
    heads = [v for v in kept if isinstance(v, ConvertReport)]
    variants = tuple(v for v in kept if isinstance(v, VariantResult))
    if not heads or not variants:
        return None
    return _stored_as(dataclasses.replace(heads[-1], variants=variants), params)


# what a job stopped halfway (cancelled, timed out) keeps of the pieces it sent: a conversion keeps its
# finished recipes. Other kinds keep nothing: a debugger run, a search or QAT is one result that only
# means something whole, and a model load or an import is over in seconds.
KEEPS: dict[JobKind, Callable[[Any, list[Any]], Any]] = {
    JobKind.CONVERT: _convert_kept,
}


def run_task(spec: JobSpec, progress: Progress, live: Live = _no_live, keep: Keep = _no_keep) -> Any:
    """Runs one job in this process (a Dask worker, or the CLI): bytes in, a value out.

    Raises:
        QlabError: whatever the engine refuses, in words.
    """
    with tempfile.TemporaryDirectory(prefix=f"qlab-job-{spec.job_id}-") as tmp:
        ctx = Context(spec=spec, workdir=Path(tmp), progress=progress, live=live, keep=keep)
        return TASKS[spec.kind](ctx, spec.params)


def zip_dir(folder: Path) -> bytes:
    """A folder (a SavedModel) as zip bytes, to send it to a worker."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()
