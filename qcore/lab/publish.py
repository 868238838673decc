"""The owner's one step from an engine's values to the store: files, blobs, rows and verdicts, written once.

Engines, the explain loop and QAT return frozen values (`qcore.qtyping`) that carry their bytes and
figures; they never see the store. A job's worker hands its value back, and the owner process (the
only one that may open DuckDB) calls `publish` inside one transaction: a failed write leaves no rows.
The CLI does the same in its own process. `publish` returns the value with the owner's ids set.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, TypeVar

from qcore.inputs.data import dataset_record
from qcore.inputs.models import model_record
from qcore.qtyping import (
    ConvertReport,
    Dataset,
    DatasetRecord,
    DebugResult,
    DemoResult,
    HostBenchResult,
    LoadedModel,
    ModelRecord,
    QatResult,
    QlabError,
    Reference,
    RepairReport,
    TfliteImport,
    TuneResult,
    VariantKind,
    VariantResult,
)
from qcore.store import Store, write_atomic

T = TypeVar("T")


def publish(store: Store, value: T, data_dir: str | os.PathLike[str] | None = None, *,
            made_from: tuple[LoadedModel, Dataset] | None = None) -> T:
    """Writes a job's value to the store in one transaction; returns it with the owner's ids set.

    Args:
        store: the owner's store.
        value: a result of `qcore.qtyping` (ConvertReport, DebugResult, TuneResult, QatResult,
            RepairReport, TfliteImport, ModelRecord, DemoResult, HostBenchResult); anything else has nothing to
            store and comes back as it is.
        data_dir: where files a job made are kept (the demo's model); default: the store's folder.
        made_from: the model and dataset a value was made from in this process, registered first
            (a job's value carries the owner's ids instead).

    Raises:
        QlabError: for a value that lacks the ids it must be stored under, or a file outside the
            data directory.
    """
    root = Path(data_dir) if data_dir is not None else store.path.parent
    with store.transaction():
        if made_from is not None:
            model_id, dataset_id = register(store, *made_from)
            value = dataclasses.replace(value, model_id=model_id, dataset_id=dataset_id)  # type: ignore[type-var]
        return _publish(value, store, root)  # type: ignore[no-any-return]


@functools.singledispatch
def _publish(value: Any, store: Store, root: Path) -> Any:
    return value  # a value with nothing to store (a tensor comparison, a board run's summary)


def register(store: Store, model: LoadedModel, dataset: Dataset) -> tuple[int, int]:
    """Records a model loaded here and a dataset (idempotent); returns (model_id, dataset_id).

    What a value made in this process is published under: `publish(store, replace(value, model_id=…,
    dataset_id=…))`.
    """
    with store.transaction():
        m = _publish(model_record(model), store, store.path.parent)
        d = _publish(dataset_record(dataset), store, store.path.parent)
    return int(m.model_id), int(d.dataset_id)


def _pair(value: Any) -> tuple[int, int]:
    if value.model_id is None or value.dataset_id is None:
        raise QlabError(f"{type(value).__name__} of {getattr(value, 'model', '?')!r} has no model and dataset ids "
                        "to be stored under")
    return int(value.model_id), int(value.dataset_id)


def _reference(store: Store, model_id: int, dataset_id: int, reference: Reference | None) -> None:
    if reference is not None and math.isfinite(reference.accuracy):
        store.set_reference(model_id, dataset_id, reference.accuracy, reference.top5, reference.n_samples)


def publish_variant(store: Store, variant: VariantResult, model_id: int, dataset_id: int | None) -> VariantResult:
    """One variant: its blob, its row, its NPU verdict and evaluation, its host timing if it has one.

    A keep-float build whose name is taken by another choice of float layers gets a short tag
    (the store alone knows which names are taken).
    """
    name = variant.name
    if variant.kind == VariantKind.SELECTIVE and dataset_id is not None:
        name = store.free_variant_name(model_id, dataset_id, name, variant.settings)
    variant_id = store.save_variant(
        model_id=model_id, dataset_id=dataset_id, name=name, kind=variant.kind, recipe=variant.recipe,
        settings=variant.settings, status=variant.status, error=variant.error, tflite=variant.tflite,
        input_dtype=variant.input_dtype, output_dtype=variant.output_dtype, evaluation=variant.evaluation,
        parent_variant_id=variant.parent_variant_id, history=variant.history or None, npu=variant.npu,
        engine=variant.engine,
    )
    if variant.latency is not None and variant.tflite is not None:
        store.add_benchmark(variant.latency, sha256=variant.sha256, board="host", variant_id=variant_id)
    path = str(store.blob_path(variant.sha256)) if variant.tflite is not None else ""
    return dataclasses.replace(variant, name=name, variant_id=variant_id, path=path)


@_publish.register
def _(value: ConvertReport, store: Store, root: Path) -> ConvertReport:
    model_id, dataset_id = _pair(value)
    _reference(store, model_id, dataset_id, value.reference)
    variants = tuple(publish_variant(store, v, model_id, dataset_id) for v in value.variants)
    return dataclasses.replace(value, variants=variants)


@_publish.register
def _(value: DebugResult, store: Store, root: Path) -> DebugResult:
    model_id, dataset_id = _pair(value)
    _reference(store, model_id, dataset_id, value.reference)
    run_id = store.save_debug_run(model_id=model_id, dataset_id=dataset_id, settings=value.settings,
                                  model_metrics=value.model_metrics, stats=value.stats, engine=value.engine)
    selective = value.selective
    if selective is not None:
        baseline = selective.baseline
        if baseline is not None:
            baseline = publish_variant(store, baseline, model_id, dataset_id)
        selective = dataclasses.replace(
            selective, variant=publish_variant(store, selective.variant, model_id, dataset_id), baseline=baseline,
            baseline_variant_id=baseline.variant_id if baseline is not None else selective.baseline_variant_id)
    return dataclasses.replace(value, debug_run_id=run_id, selective=selective)


@_publish.register
def _(value: TuneResult, store: Store, root: Path) -> TuneResult:
    model_id, dataset_id = _pair(value)
    debug = _publish(dataclasses.replace(value.debug, model_id=model_id, dataset_id=dataset_id), store, root)
    _reference(store, model_id, dataset_id, value.reference)
    repaired = (publish_variant(store, value.repaired_variant, model_id, dataset_id)
                if value.repaired_variant is not None else None)
    if value.chosen_variant is None:
        chosen = None
    elif repaired is not None and value.chosen_variant.name == repaired.name:
        chosen = repaired  # the repairs alone met the target: the chosen variant is the repaired one
    else:
        chosen = publish_variant(store, dataclasses.replace(
            value.chosen_variant, parent_variant_id=repaired.variant_id if repaired is not None else None),
            model_id, dataset_id)
    run_id = store.save_tune_run(
        model_id=model_id, dataset_id=dataset_id, max_drop=value.max_drop, float_accuracy=value.float_accuracy,
        target_accuracy=value.target_accuracy,
        trials=[{"denylist": list(t.denylist), "accuracy": t.accuracy if math.isfinite(t.accuracy) else None,
                 "size_bytes": t.size_bytes, "passed": t.passed} for t in value.tried],
        chosen_variant_id=chosen.variant_id if chosen is not None else None,
        engine=value.engine, deploy_engine=value.deploy_engine, debug_run_id=debug.debug_run_id,
    )
    return dataclasses.replace(value, debug=debug, chosen_variant=chosen, repaired_variant=repaired,
                               tune_run_id=run_id)


@_publish.register
def _(value: RepairReport, store: Store, root: Path) -> RepairReport:
    """The plain recipe's variant, then the repaired one beside it (its parent is the plain one)."""
    model_id, dataset_id = _pair(value)
    _reference(store, model_id, dataset_id, value.reference)
    plain = publish_variant(store, value.plain, model_id, dataset_id)
    repaired = publish_variant(store, dataclasses.replace(value.repaired, parent_variant_id=plain.variant_id),
                               model_id, dataset_id)
    return dataclasses.replace(value, plain=plain, repaired=repaired)


@_publish.register
def _(value: QatResult, store: Store, root: Path) -> QatResult:
    model_id, dataset_id = _pair(value)
    _reference(store, model_id, dataset_id, value.reference)
    return dataclasses.replace(value, variant=publish_variant(store, value.variant, model_id, dataset_id))


@_publish.register
def _(value: ModelRecord, store: Store, root: Path) -> ModelRecord:
    source = value.source_path
    if value.file is not None:
        relpath, data = value.file
        target = (root / relpath).resolve()
        if root.resolve() not in target.parents:
            raise QlabError(f"a job asked to keep a file outside the data directory: {relpath!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != data:
            write_atomic(target, data)
        source = str(target)
    model_id = store.add_model(name=value.name, format=value.format, sha256=value.sha256, source_path=source,
                               input_shape=value.input_shape, output_shape=value.output_shape,
                               keras_major=value.keras_major, trusted=value.trusted)
    if value.summary is not None:
        store.set_model_summary(model_id, value.summary)
    return dataclasses.replace(value, source_path=source, model_id=model_id, file=None)


@_publish.register
def _(value: DatasetRecord, store: Store, root: Path) -> DatasetRecord:
    dataset_id = store.add_dataset(name=value.name, source=value.source, sha256=value.sha256,
                                   input_scale=value.input_scale, input_offset=value.input_offset,
                                   n_train=value.n_train, n_test=value.n_test, num_classes=value.num_classes,
                                   stored_path=value.stored_path, image_shape=value.image_shape)
    return dataclasses.replace(value, dataset_id=dataset_id)


@_publish.register
def _(value: DemoResult, store: Store, root: Path) -> DemoResult:
    model = _publish(value.model, store, root)
    dataset = _publish(value.dataset, store, root)
    report = _publish(dataclasses.replace(value.report, model_id=model.model_id, dataset_id=dataset.dataset_id),
                      store, root)
    return DemoResult(model=model, dataset=dataset, report=report)


@_publish.register
def _(value: TfliteImport, store: Store, root: Path) -> TfliteImport:
    # the anchor's bytes (the reference, else the file) are the model's source: its blob is written
    # with its variant below
    model = _publish(dataclasses.replace(value.model, source_path=str(store.blob_path(value.model.sha256))),
                     store, root)
    dataset_id = value.dataset_id
    if dataset_id is not None:
        _reference(store, int(model.model_id), dataset_id, value.reference)
    reference = None
    if value.reference_variant is not None:
        reference = publish_variant(store, value.reference_variant, int(model.model_id), dataset_id)
    variant = publish_variant(
        store, dataclasses.replace(value.variant, parent_variant_id=reference.variant_id if reference else None),
        int(model.model_id), dataset_id)
    return dataclasses.replace(value, model=model, variant=variant, reference_variant=reference)


@_publish.register
def _(value: HostBenchResult, store: Store, root: Path) -> HostBenchResult:
    for t in value.timings:
        store.add_benchmark(t.latency, sha256=t.sha256, board="host", variant_id=t.variant_id)
    return value
