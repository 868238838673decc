"""`qlab qat`, `debug`, `compare-tensors`, `tune`, `repair`: train for quantization, explain where a variant loses
accuracy, and repair it."""

from __future__ import annotations

import argparse
from typing import Any

from qcore import defaults
from qcore.cli.common import (
    Subparsers,
    add_common,
    add_engine,
    add_preprocessing,
    names,
)
from qcore.engines import get_engine
from qcore.explain.repairs import check_repair
from qcore.jobs.contract import (
    CompareTensorsParams,
    DebugParams,
    QatParams,
    RepairParams,
    SelectiveParams,
    TuneParams,
)
from qcore.qtyping import ADAROUND_ITERATIONS, BiasMode, QlabError
from qcore.repair import METHODS
from qcore.tflite.names import layer_name

MODEL_HELP = "a .keras, .h5, SavedModel directory, or 'demo'"
METHODS_HELP = "comma-separated repairs among " + ", ".join(m.value for m in METHODS)
CALIBRATION_HELP = f"first N training samples (default {defaults.CALIBRATION_SAMPLES})"


def add_commands(sub: Subparsers) -> None:
    """`qat`, `debug`, `compare-tensors`, `tune`, `repair`."""
    p = sub.add_parser("qat", help="quantization-aware training (tfmot): fine-tune, convert, evaluate, store")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="a .npz (x_train, y_train, x_test, y_test), image folder/.zip, or 'digits'")
    p.add_argument("--layers", default="all", help="'all', or layer classes / names to quantize, e.g. Dense,Conv2D")
    p.add_argument("--epochs", type=int, default=defaults.QAT_EPOCHS,
                   help=f"fine-tuning epochs (default {defaults.QAT_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=defaults.QAT_BATCH, help=f"(default {defaults.QAT_BATCH})")
    p.add_argument("--train-samples", type=int, help="fine-tune on the first N training samples (default all)")
    p.add_argument("--learning-rate", type=float, default=defaults.QAT_LEARNING_RATE,
                   help=f"Adam's learning rate (default {defaults.QAT_LEARNING_RATE:g})")
    p.add_argument("--int-io", action="store_true", help="integer-only model with int8 input and output")
    p.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES,
                   help="for --int-io: first N training samples")
    add_preprocessing(p)
    p.add_argument("--out", help="also write the QAT variant's .tflite here")
    add_common(p)

    p = sub.add_parser("debug", help="per-layer error on an engine (TF's debugger or AEQ's "
                       "validation), suspects, selective quantization")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits'")
    p.add_argument("--recipe", default=defaults.DEBUG_RECIPE,
                   help=f"an int8 recipe (default {defaults.DEBUG_RECIPE}); 16x8 is refused")
    p.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES, help=CALIBRATION_HELP)
    p.add_argument("--debug-samples", type=int, default=defaults.DEBUG_SAMPLES,
                   help=f"first M test samples (default {defaults.DEBUG_SAMPLES})")
    p.add_argument("--threshold", type=float, default=None,
                   help="per-layer error above this is a suspect (default: this model's own outliers on the "
                        "engine's scale, the rule every page uses)")
    p.add_argument("--first-k", type=int, default=0, help="also count the first K layers as suspects")
    p.add_argument("--metrics", default="", help="extra layer metrics: mean_abs_error,correlation")
    p.add_argument("--denylist-ops", action="append", default=[], help="op types to keep in float, e.g. MEAN,ADD")
    p.add_argument("--denylist-nodes", action="append", default=[],
                   help="tensor names (the debugger's tensor_name) to keep in float")
    p.add_argument("--selective-out", help="write the selective .tflite here (needs a denylist)")
    p.add_argument("--whole-model", action="store_true", help="whole-model verification: errors propagate")
    add_preprocessing(p)
    p.add_argument("--out", help="write the statistics CSV here (the debugger's columns, then range, rmse_scale)")
    add_engine(p, "the engine of the variant you explain: tf, TFLite's QuantizationDebugger (default); "
               "aeq: AI Edge Quantizer's validation, MSE/SNR/cosine per layer")
    p.add_argument("--model-explorer-out", help="with --engine aeq: write AEQ's comparison JSON and Model "
                   "Explorer node-data files (<model>_comparison_result_me_input_<metric>.json) to this folder")
    add_common(p)

    p = sub.add_parser("compare-tensors", help="tensor-by-tensor errors of a quantized .tflite against the float one")
    p.add_argument("float_tflite", metavar="FLOAT.tflite")
    p.add_argument("quant_tflite", metavar="QUANT.tflite")
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits' (its test split is used)")
    p.add_argument("--samples", type=int, default=defaults.COMPARE_SAMPLES,
                   help=f"first N test samples (default {defaults.COMPARE_SAMPLES})")
    add_preprocessing(p)
    add_common(p)

    p = sub.add_parser("tune", help="meet an accuracy budget: repairs first, then the fewest "
                       "layers kept in float")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits'")
    p.add_argument("--max-drop", type=float, required=True, help="accuracy points the result may lose against float")
    p.add_argument("--recipe", default=defaults.DEBUG_RECIPE, help=f"an int8 recipe (default {defaults.DEBUG_RECIPE})")
    p.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES, help=CALIBRATION_HELP)
    p.add_argument("--debug-samples", type=int, default=defaults.DEBUG_SAMPLES,
                   help=f"first M test samples ranking layers (default {defaults.DEBUG_SAMPLES})")
    add_preprocessing(p)
    p.add_argument("--out", help="also write the chosen variant's .tflite as OUT/<model>-tune.tflite")
    add_engine(p, "who ranks layers and runs the trials: tf (default) or aeq (calibrated once, faster); "
               "use the engine you deploy with")
    add_engine(p, "who makes the chosen variant (default tf): the chosen denylist is converted once more "
               "with it when it differs from --engine", flag="--deploy-engine")
    p.add_argument("--repairs", default=",".join(defaults.TUNE_REPAIRS),
                   help=f"repairs tried before any layer is kept float: {METHODS_HELP}, or 'none' "
                        f"(default {','.join(defaults.TUNE_REPAIRS)})")
    add_common(p)

    p = sub.add_parser("repair", help="repair a model for an int8 recipe (CLE, bias correction, AdaRound) so it "
                                      "stays fully integer; per-layer error before and after each repair")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits'")
    p.add_argument("--methods", default=",".join(defaults.REPAIR_METHODS),
                   help=f"{METHODS_HELP} (default {','.join(defaults.REPAIR_METHODS)})")
    p.add_argument("--recipe", default=defaults.REPAIR_RECIPE,
                   help=f"the full-integer recipe whose grid the repairs target (default {defaults.REPAIR_RECIPE})")
    p.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES, help=CALIBRATION_HELP)
    p.add_argument("--debug-samples", type=int, default=defaults.DEBUG_SAMPLES,
                   help=f"first M test samples for the per-layer error (default {defaults.DEBUG_SAMPLES})")
    p.add_argument("--adaround-iterations", type=int, default=ADAROUND_ITERATIONS,
                   help=f"AdaRound's optimisation steps per layer (default {ADAROUND_ITERATIONS})")
    p.add_argument("--bias-mode", default=BiasMode.AUTO.value, choices=[m.value for m in BiasMode],
                   help="bias correction from the calibration samples (empirical), from BN statistics (analytic), "
                        "or empirical when there are samples (auto, the default)")
    add_preprocessing(p)
    p.add_argument("--out", help="also write the repaired variant's .tflite here")
    add_engine(p, "who converts and measures the per-layer error: tf (default) or aeq")
    add_common(p)


# ---------------------------------------------------------------- as jobs
def qat_params(args: argparse.Namespace, model_id: int, dataset_id: int) -> QatParams:
    """`qlab qat`'s arguments as the qat job (`--out` is where the caller writes the .tflite)."""
    return QatParams(model_id=model_id, dataset_id=dataset_id, layers=tuple(names(args.layers)), epochs=args.epochs,
                     batch_size=args.batch_size, learning_rate=args.learning_rate,
                     train_samples=args.train_samples or 0, int_io=args.int_io,
                     calibration_samples=args.calibration_samples)


def debug_params(args: argparse.Namespace, model_id: int, dataset_id: int) -> DebugParams | SelectiveParams:
    """`qlab debug`'s arguments as a debug job, or a selective job when a denylist is given.

    Raises:
        QlabError: for --selective-out without a denylist (there is nothing to write).
    """
    nodes, ops = _denylists(args)
    common = {"model_id": model_id, "dataset_id": dataset_id, "recipe": args.recipe,
              "calibration_samples": args.calibration_samples, "debug_samples": args.debug_samples,
              "extra_metrics": tuple(names(args.metrics)), "whole_model": args.whole_model,
              "threshold": args.threshold, "first_k": args.first_k, "engine": args.engine}
    if nodes or ops:
        return SelectiveParams(**common, denylisted_nodes=nodes, denylisted_ops=ops)
    return DebugParams(**common)


def tune_params(args: argparse.Namespace, model_id: int, dataset_id: int) -> TuneParams:
    """`qlab tune`'s arguments as the tune job (`--out` is where the caller writes the chosen .tflite)."""
    repairs = () if args.repairs.strip().lower() in ("", "none") else tuple(names(args.repairs))
    if repairs:
        check_repair(defaults.REPAIR_RECIPE, args.engine, repairs)  # an unknown method, by name, before any upload
    return TuneParams(model_id=model_id, dataset_id=dataset_id, max_drop=args.max_drop, recipe=args.recipe,
                      calibration_samples=args.calibration_samples, debug_samples=args.debug_samples,
                      engine=args.engine, deploy_engine=args.deploy_engine, repairs=repairs)


def repair_params(args: argparse.Namespace, model_id: int, dataset_id: int) -> RepairParams:
    """`qlab repair`'s arguments as the repair job (`--out` is where the caller writes the repaired .tflite).

    Raises:
        QlabError: for an unknown method, a recipe the repairs cannot target or the engine cannot express,
            fewer than one sample or AdaRound iteration, each by name.
    """
    methods = tuple(names(args.methods))
    check_repair(args.recipe, args.engine, methods)
    for flag, value in (("--calibration-samples", args.calibration_samples), ("--debug-samples", args.debug_samples),
                        ("--adaround-iterations", args.adaround_iterations)):
        if value < 1:
            raise QlabError(f"{flag} must be at least 1, got {value}")
    return RepairParams(model_id=model_id, dataset_id=dataset_id, methods=methods, recipe=args.recipe,
                        engine=args.engine, calibration_samples=args.calibration_samples,
                        debug_samples=args.debug_samples, adaround_iterations=args.adaround_iterations,
                        bias_mode=args.bias_mode)


def compare_tensors_params(args: argparse.Namespace, float_variant_id: int, quant_variant_id: int,
                           dataset_id: int | None) -> CompareTensorsParams:
    """`qlab compare-tensors`'s arguments as the compare_tensors job.

    Raises:
        QlabError: for fewer than one sample.
    """
    _check_samples(args)
    return CompareTensorsParams(float_variant_id=float_variant_id, quant_variant_id=quant_variant_id,
                                samples=args.samples, dataset_id=dataset_id)


def _denylists(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tensor names, op types) `qlab debug` keeps in float."""
    nodes, ops = tuple(names(args.denylist_nodes)), tuple(names(args.denylist_ops))
    if args.selective_out and not (nodes or ops):
        raise QlabError("--selective-out needs --denylist-nodes or --denylist-ops")
    if args.model_explorer_out and not get_engine(args.engine).model_explorer:
        raise QlabError(f"--model-explorer-out: the {get_engine(args.engine).label}'s per-layer error has no Model "
                        "Explorer export; use --engine aeq")
    return nodes, ops


def _check_samples(args: argparse.Namespace) -> None:
    if args.samples < 1:
        raise QlabError(f"--samples must be at least 1, got {args.samples}")


# ---------------------------------------------------------------- what the job commands print
def _num(value: Any, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def qat_text(doc: dict[str, Any], args: argparse.Namespace) -> str:
    """`qlab qat` without --json: the epochs, the three accuracies, the variant and any warning."""
    v = doc.get("variant") or {}
    return "\n".join([
        f"{doc['model']}: QAT of {', '.join(doc.get('quantized_layers') or [])}",
        *(f"  epoch {h['epoch']}: loss {_num(h.get('loss'))}, accuracy {_num(h.get('accuracy'))}, ranges moved "
          f"{_num(h.get('range_drift'), '.1%')}" for h in doc.get("history") or []),
        f"  float {_num(doc.get('float_accuracy'))}  QAT Keras {_num(doc.get('keras_accuracy'))}  TFLite "
        f"{_num(doc.get('tflite_accuracy'))}  variant #{doc.get('variant_id')} {v.get('name')}  "
        f"{v.get('size_bytes') or 0} B  {v.get('input_dtype')}->{v.get('output_dtype')}  {v.get('npu') or ''}",
        *(f"  warning: {w}" for w in doc.get("warnings") or []),
    ])


def debug_text(doc: dict[str, Any], args: argparse.Namespace) -> str:
    """`qlab debug` without --json: every layer's error on its engine's scale, suspects, the selective model."""
    settings = doc.get("settings") or {}
    mode = "whole model" if settings.get("whole_model") else "layer by layer"
    lines = [f"{doc['model']}: {len(doc.get('layers') or [])} layers debugged by {doc.get('engine')} ({mode}, "
             f"{settings.get('debug_samples')} samples), run #{doc.get('debug_run_id')}"]
    rows = doc.get("layers") or []
    # the layer users know first ("predictions"), the tensor name last: --keep-float takes tensor names
    known = {str(s["tensor_name"]): layer_name(s["tensor_name"], s.get("layer")) for s in rows}
    lines += [f"  {s['op_name']:<18} rmse/scale {_num(s.get('rmse_scale'), '7.3f')}  range "
              f"{_num(s.get('range'), '9.4g')}  {known[str(s['tensor_name'])]:<24} {s['tensor_name']}" for s in rows]
    lines.append("  model: " + ", ".join(f"{k} {_num(v, '.4g')}" for k, v in (doc.get("model_metrics") or {}).items()))
    lines.append(f"  suspects (rmse/scale > {settings.get('threshold')}): "
                 + (", ".join(known.get(str(t)) or layer_name(t) for t in doc.get("suspects") or []) or "none"))
    sel = doc.get("selective")
    if sel:
        lines.append(f"  selective: variant #{sel.get('variant_id')} {sel.get('name')}, accuracy "
                     f"{_num(sel.get('accuracy'))}, {sel.get('size_bytes') or 0} B, {sel.get('npu') or ''}")
        if sel.get("ignored_nodes"):
            lines.append("  still quantized (they share their neighbours' scale): " + ", ".join(sel["ignored_nodes"]))
    return "\n".join(lines)


def compare_text(doc: dict[str, Any], args: argparse.Namespace) -> str:
    """`qlab compare-tensors` without --json: one line per matched tensor."""
    matched, unmatched = doc.get("matched") or [], doc.get("unmatched") or []
    lines = [f"{doc.get('float')} vs {doc.get('quant')}: {len(matched)} tensors matched on {doc.get('n_samples')} "
             f"samples, {len(unmatched)} unmatched"]
    lines += [f"  {d['quant_dtype']:<8} mse {_num(d.get('mse'), '10.4g')}  max|e| {_num(d.get('max_abs_error'), '10.4g')}"
              f"  snr {_num(d.get('snr_db'), '7.2f')} dB  cos {_num(d.get('cosine'), '.6f')}"
              f"{'  const' if d.get('is_constant') else ''}  {d['name']}" for d in matched]
    lines += [f"  unmatched ({u['side']}): {u['name']}: {u['reason']}" for u in unmatched]
    return "\n".join(lines)


def tune_text(doc: dict[str, Any], args: argparse.Namespace) -> str:
    """`qlab tune` without --json: every trial, and the chosen denylist with the engine that confirmed it."""
    lines = [f"{doc['model']}: float accuracy {_num(doc.get('float_accuracy'))}, target "
             f"{_num(doc.get('target_accuracy'))} (at most {doc['max_drop']:g} points lower); {doc.get('layers')} "
             f"layers ranked by {doc.get('engine')}, {len(doc.get('tried') or [])} conversions"]
    lines += [f"  {len(t['denylist']):>3} in float: accuracy {_num(t.get('accuracy'))}  {t.get('size_bytes')} B  "
              f"{'pass' if t.get('passed') else 'fail'}" + (f"  ({t['error']})" if t.get("error") else "")
              for t in doc.get("tried") or []]
    chosen, variant = doc.get("chosen"), doc.get("chosen_variant") or {}
    if doc.get("repair_error"):
        lines.append(f"  repairs skipped: {doc['repair_error']}")
    lines.append(f"  remedy: {doc.get('remedy')}")
    if chosen is None:
        lines.append("  no denylist reaches the target, not even with every ranked layer in float")
    else:
        lines.append(f"  chosen: {len(chosen['denylist'])} layers in float, accuracy {_num(chosen.get('accuracy'))} "
                     f"({doc.get('deploy_engine')}; search on {doc.get('engine')})"
                     f"{'' if chosen.get('passed') else ' MISSES the target'}, variant #{variant.get('variant_id')} "
                     f"{variant.get('name')}, {chosen.get('size_bytes')} B")
        names = doc.get("layer_names") or {}
        lines += [f"    {layer_name(n, names.get(n)):<24} {n}" for n in chosen["denylist"]]
    return "\n".join(lines)


def repair_text(doc: dict[str, Any], args: argparse.Namespace) -> str:
    """`qlab repair` without --json: both variants, the verdict, each step, and the per-layer error per stage."""
    plain, repaired = doc.get("plain") or {}, doc.get("repaired") or {}
    stages = [s["stage"] for s in doc.get("stages") or []]
    seconds = doc.get("seconds") or {}
    lines = [f"{doc['model']}: float accuracy {_num(doc.get('float_accuracy'))} ({doc.get('engine')})"]
    for v in (plain, repaired):
        lines.append(f"  {v.get('name')}: accuracy {_num(v.get('accuracy'))}, agreement {_num(v.get('agreement'))}, "
                     f"{v.get('size_bytes') or 0} B, {v.get('npu') or ''}, variant #{v.get('variant_id')}")
    lines.append(f"  NPU: {doc.get('npu_verdict')}")
    for step in (doc.get("repair") or {}).get("steps") or []:
        drift = step.get("drift") or {}
        lines.append(f"  {step['method']}{' (implied)' if step.get('implied') else ''}: {len(step.get('changed') or [])} "
                     f"layers changed in {_num(step.get('seconds'), '.2f')} s, float drift "
                     f"{_num(drift.get('max_rel'), '.2g')}")
    for s in (doc.get("repair") or {}).get("skipped") or []:
        lines.append(f"  skipped by {s['method']}: {s['layer']}: {s['reason']}")
    lines.append(f"  time: {_num(seconds.get('total'), '.1f')} s (estimated {_num(seconds.get('estimate'), '.1f')} s; "
                 f"one conversion {_num(seconds.get('conversion'), '.1f')} s)")
    if stages:
        lines.append(f"  per-layer {doc.get('metric')}: " + " → ".join(stages))
        for row in doc.get("layers") or []:
            lines.append(f"  {row['op_name']:<18} " + "  ".join(_num(row.get(s), "7.3f") for s in stages)
                         + f"  {layer_name(row['tensor_name'], row.get('layer')):<24} {row['tensor_name']}")
    return "\n".join(lines)
