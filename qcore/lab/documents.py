"""What a published value looks like as JSON: one document per result, for a job's result and the CLI's --json.

A job's `result` and `qlab … --json` print the same document for the same work, locally and with
`--server`, because both publish the same value and describe it here. Bytes never appear; NaN
becomes null when `qcore.serialize.to_json` prints it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from qcore.explain.repairs import layer_rows, npu_words
from qcore.qtyping import (
    ConvertReport,
    DebugResult,
    DemoResult,
    Evaluation,
    HostBenchResult,
    Latency,
    ModelRecord,
    QatResult,
    RepairReport,
    Scoring,
    SelectiveResult,
    TensorComparison,
    TfliteImport,
    TuneResult,
    VariantResult,
)
from qcore.tflite.names import layer_name


@functools.singledispatch
def document(value: Any) -> dict[str, Any]:
    """The JSON document of a published value (see the module docstring).

    Raises:
        TypeError: for a value that has no document.
    """
    raise TypeError(f"no document for {type(value).__name__}")


def latency_doc(lat: Latency | None) -> dict[str, Any] | None:
    """A timing's figures (milliseconds) and settings."""
    return dataclasses.asdict(lat) if lat is not None else None


def _scores(ev: Evaluation | None) -> dict[str, Any]:
    if ev is None:
        return {"accuracy": None, "top5": None, "agreement": None, "scoring": None, "n_samples": None}
    classes = ev.scoring == Scoring.CLASSES
    return {"accuracy": ev.accuracy if classes else None, "top5": ev.top5 if classes else None,
            "agreement": ev.agreement, "scoring": ev.scoring, "n_samples": ev.n_samples}


@document.register
def variant_doc(v: VariantResult) -> dict[str, Any]:
    """One variant: its id and name, what made it, its scores, size, NPU verdict and host timing."""
    return {
        "variant_id": v.variant_id, "name": v.name, "kind": str(v.kind), "recipe": v.recipe, "engine": v.engine,
        "status": str(v.status), "error": v.error or None, "path": v.path or None, "sha256": v.sha256 or None,
        "size_bytes": v.size_bytes or None, "input_dtype": v.input_dtype or None,
        "output_dtype": v.output_dtype or None, **_scores(v.evaluation),
        "npu_ready": v.npu.ready if v.npu else None, "npu": v.npu.label if v.npu else None,
        "npu_summary": v.npu.summary if v.npu else None, "io": v.npu.io if v.npu else None,
        "host_p50_ms": v.latency.p50_ms if v.latency else None,
    }


@document.register
def _(r: ConvertReport) -> dict[str, Any]:
    engines = sorted({v.engine for v in r.variants})
    return {"model": r.model, "model_id": r.model_id, "dataset_id": r.dataset_id,
            "engine": engines[0] if len(engines) == 1 else ",".join(engines),
            "float_accuracy": r.float_accuracy, "variants": [variant_doc(v) for v in r.variants]}


@document.register
def _(r: DemoResult) -> dict[str, Any]:
    return document(r.report)


def _selective_doc(sel: SelectiveResult | None) -> dict[str, Any] | None:
    if sel is None:
        return None
    return {"denylisted_nodes": list(sel.denylisted_nodes), "denylisted_ops": list(sel.denylisted_ops),
            "ignored_nodes": list(sel.ignored_nodes), **variant_doc(sel.variant),
            "baseline_variant_id": sel.baseline.variant_id if sel.baseline else sel.baseline_variant_id}


@document.register
def _(r: DebugResult) -> dict[str, Any]:
    return {"model": r.model, "model_id": r.model_id, "dataset_id": r.dataset_id, "debug_run_id": r.debug_run_id,
            "engine": r.engine, "settings": r.settings, "columns": list(r.columns),
            "layers": [{**dataclasses.asdict(s), "layer": layer_name(s.tensor_name, s.layer)} for s in r.stats],
            "model_metrics": r.model_metrics,
            "suspects": list(r.suspects), "selective": _selective_doc(r.selective)}


@document.register
def _(r: TuneResult) -> dict[str, Any]:
    chosen = r.chosen
    return {
        "model": r.model, "model_id": r.model_id, "dataset_id": r.dataset_id, "tune_run_id": r.tune_run_id,
        "debug_run_id": r.debug.debug_run_id, "engine": r.engine, "deploy_engine": r.deploy_engine,
        "max_drop": r.max_drop, "float_accuracy": r.float_accuracy, "target_accuracy": r.target_accuracy,
        "layers": len(r.ranking), "ranking": list(r.ranking),
        # tensor name → the layer name users know, for every ranked layer (the ranking run recorded them)
        "layer_names": {s.tensor_name: layer_name(s.tensor_name, s.layer) for s in r.debug.stats},
        "tried": [{"denylist": list(t.denylist), "accuracy": t.accuracy, "size_bytes": t.size_bytes,
                   "passed": t.passed, "error": t.error or None, "repairs": list(t.repairs)} for t in r.tried],
        "chosen": None if chosen is None else {"denylist": list(chosen.denylist), "accuracy": chosen.accuracy,
                                               "size_bytes": chosen.size_bytes, "passed": chosen.passed},
        "chosen_variant": variant_doc(r.chosen_variant) if r.chosen_variant else None,
        "chosen_variant_id": r.chosen_variant_id, "search_accuracy": r.search_accuracy,
        "remedy": r.remedy, "repairs": list(r.repairs),
        "repaired_variant": variant_doc(r.repaired_variant) if r.repaired_variant else None,
        "repair": r.repair_record or None, "repair_error": r.repair_error or None,
    }


@document.register
def _(r: RepairReport) -> dict[str, Any]:
    plain, repaired = r.plain.evaluation, r.repaired.evaluation
    gain = (repaired.accuracy - plain.accuracy) if plain is not None and repaired is not None else None
    return {
        "model": r.model, "model_id": r.model_id, "dataset_id": r.dataset_id, "engine": r.engine,
        "recipe": r.recipe, "methods": list(r.methods), "label": r.label, "float_accuracy": r.float_accuracy,
        "variant_id": r.repaired.variant_id, "plain_variant_id": r.plain.variant_id,
        "plain": variant_doc(r.plain), "repaired": variant_doc(r.repaired), "accuracy_gain": gain,
        "weights": r.weights, "npu_verdict": npu_words(r.repaired, r.weights),
        "metric": r.metric, "columns": list(r.columns),
        "stages": [{"stage": s.stage, "label": s.label, "model_metrics": s.model_metrics, "seconds": s.seconds}
                   for s in r.stages],
        "layers": layer_rows(r.stages),
        "repair": r.record, "seconds": r.seconds,
    }


@document.register
def _(r: QatResult) -> dict[str, Any]:
    return {
        "model": r.model, "model_id": r.model_id, "dataset_id": r.dataset_id, "layers": list(r.layers),
        "quantized_layers": list(r.quantized_layers), "float_accuracy": r.float_accuracy,
        "keras_accuracy": r.keras_accuracy, "tflite_accuracy": r.tflite_accuracy, "range_drift": r.range_drift,
        "warnings": list(r.warnings), "history": [dict(h, epoch=i) for i, h in enumerate(r.history, start=1)],
        "variant": variant_doc(r.variant), "variant_id": r.variant.variant_id,
    }


@document.register
def _(r: TfliteImport) -> dict[str, Any]:
    ev = r.variant.evaluation
    reference_id = (r.reference_variant.variant_id if r.reference_variant is not None
                    else r.variant.variant_id if r.reference is not None else None)
    return {
        "model": r.model.name, "model_id": r.model.model_id, "dataset_id": r.dataset_id,
        "variant": variant_doc(r.variant), "variant_id": r.variant.variant_id,
        "reference_variant_id": reference_id, "reference_accuracy": r.reference.accuracy if r.reference else None,
        "scoring": r.scoring, "verdict": r.verdict, "runnable": r.runnable, "refusal": r.refusal or None,
        "custom_ops": list(r.custom_ops), "notes": list(r.notes),
        "input_shape": list(r.input_shape), "output_shapes": [list(s) for s in r.output_shapes],
        "output_metrics": dict(ev.output_metrics) if ev is not None else {},
    }


@document.register
def _(r: ModelRecord) -> dict[str, Any]:
    summary = r.summary or {}
    return {"model_id": r.model_id, "name": r.name, "format": r.format, "sha256": r.sha256,
            "input_shape": list(r.input_shape), "output_shape": list(r.output_shape),
            "layers": len(summary.get("layers", [])), "params": summary.get("params")}


@document.register
def _(r: HostBenchResult) -> dict[str, Any]:
    return {"timings": [{"variant_id": t.variant_id, "sha256": t.sha256, **(latency_doc(t.latency) or {})}
                        for t in r.timings]}


@document.register
def _(r: TensorComparison) -> dict[str, Any]:
    return {"float": r.float_path, "quant": r.quant_path, "n_samples": r.n_samples,
            "matched": [dataclasses.asdict(d) for d in r.matched],
            "unmatched": [dataclasses.asdict(u) for u in r.unmatched]}
