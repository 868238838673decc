"""`qlab qat`, `debug`, `compare-tensors`, `tune`: train for quantization, and explain where a variant loses accuracy."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from qcore import defaults
from qcore.cli.common import (
    EXIT_OK,
    Subparsers,
    add_common,
    add_engine,
    add_preprocessing,
    emit,
    load_data_arg,
    load_model_arg,
    log_progress,
    names,
    open_store,
    read_tflite,
    tflite_input_shape,
)
from qcore.jobs.contract import (
    CompareTensorsParams,
    DebugParams,
    QatParams,
    SelectiveParams,
    TuneParams,
)
from qcore.qtyping import QlabError

MODEL_HELP = "a .keras, .h5, SavedModel directory, or 'demo'"
CALIBRATION_HELP = f"first N training samples (default {defaults.CALIBRATION_SAMPLES})"


def add_commands(sub: Subparsers) -> None:
    """`qat`, `debug`, `compare-tensors`, `tune`."""
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
    p.add_argument("--out", help="also write the .tflite here")
    add_common(p)
    p.set_defaults(handler=_cmd_qat)

    p = sub.add_parser("debug", help="TFLite's quantization debugger: per-layer errors, suspects, selective quantization")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits'")
    p.add_argument("--recipe", default=defaults.DEBUG_RECIPE,
                   help=f"an int8 recipe (default {defaults.DEBUG_RECIPE}); 16x8 is refused")
    p.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES, help=CALIBRATION_HELP)
    p.add_argument("--debug-samples", type=int, default=defaults.DEBUG_SAMPLES,
                   help=f"first M test samples (default {defaults.DEBUG_SAMPLES})")
    p.add_argument("--threshold", type=float, default=defaults.SUSPECT_THRESHOLD,
                   help=f"rmse/scale above this is a suspect (default {defaults.SUSPECT_THRESHOLD})")
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
    p.set_defaults(handler=_cmd_debug)

    p = sub.add_parser("compare-tensors", help="tensor-by-tensor errors of a quantized .tflite against the float one")
    p.add_argument("float_tflite", metavar="FLOAT.tflite")
    p.add_argument("quant_tflite", metavar="QUANT.tflite")
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits' (its test split is used)")
    p.add_argument("--samples", type=int, default=defaults.COMPARE_SAMPLES,
                   help=f"first N test samples (default {defaults.COMPARE_SAMPLES})")
    add_preprocessing(p)
    add_common(p, db=False)
    p.set_defaults(handler=_cmd_compare_tensors)

    p = sub.add_parser("tune", help="find a small set of layers to keep in float within an accuracy budget")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits'")
    p.add_argument("--max-drop", type=float, required=True, help="accuracy points the result may lose against float")
    p.add_argument("--recipe", default=defaults.DEBUG_RECIPE, help=f"an int8 recipe (default {defaults.DEBUG_RECIPE})")
    p.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES, help=CALIBRATION_HELP)
    p.add_argument("--debug-samples", type=int, default=defaults.DEBUG_SAMPLES,
                   help=f"first M test samples ranking layers (default {defaults.DEBUG_SAMPLES})")
    add_preprocessing(p)
    p.add_argument("--out", help="write <OUT>/<model>-tune.tflite")
    add_engine(p, "who ranks layers and runs the trials: tf (default) or aeq (calibrated once, faster); "
               "use the engine you deploy with")
    add_engine(p, "who makes the chosen variant (default tf): the chosen denylist is converted once more "
               "with it when it differs from --engine", flag="--deploy-engine")
    add_common(p)
    p.set_defaults(handler=_cmd_tune)


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
    return TuneParams(model_id=model_id, dataset_id=dataset_id, max_drop=args.max_drop, recipe=args.recipe,
                      calibration_samples=args.calibration_samples, debug_samples=args.debug_samples,
                      engine=args.engine, deploy_engine=args.deploy_engine)


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
    return nodes, ops


def _check_samples(args: argparse.Namespace) -> None:
    if args.samples < 1:
        raise QlabError(f"--samples must be at least 1, got {args.samples}")


# ---------------------------------------------------------------- handlers
def _cmd_qat(args: argparse.Namespace) -> int:
    from qcore.lab.qat import run_qat

    model = load_model_arg(args.model)
    dataset = load_data_arg(args, model.input_shape)
    with open_store(args) as store:
        r = run_qat(
            model, dataset, layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, train_samples=args.train_samples, int_io=args.int_io,
            calibration_samples=args.calibration_samples, store=store, out=args.out, progress=log_progress,
        )
    payload = {
        "model": r.model, "layers": list(r.layers), "quantized_layers": list(r.quantized_layers),
        "float_accuracy": r.float_accuracy, "keras_accuracy": r.keras_accuracy, "tflite_accuracy": r.tflite_accuracy,
        "agreement": r.evaluation.agreement, "size_bytes": r.size_bytes, "path": r.path, "sha256": r.sha256,
        "input_dtype": r.input_dtype, "output_dtype": r.output_dtype, "history": list(r.history),
        "range_drift": r.range_drift, "warnings": list(r.warnings), "variant_id": r.variant_id,
    }
    lines = [f"{r.model}: QAT of {', '.join(r.quantized_layers)}",
             *(f"  epoch {i}: loss {h['loss']:.4f}, accuracy {h['accuracy']:.4f}, ranges moved {h['range_drift']:.1%}"
               for i, h in enumerate(r.history, start=1)),
             f"  float {r.float_accuracy:.4f}  QAT Keras {r.keras_accuracy:.4f}  TFLite {r.tflite_accuracy:.4f}  "
             f"{r.size_bytes} B  {r.input_dtype}->{r.output_dtype}  {r.path}",
             *(f"  warning: {w}" for w in r.warnings)]
    emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _cmd_debug(args: argparse.Namespace) -> int:
    from qcore.explain.debugger import run_debugger, stats_csv

    nodes, ops = _denylists(args)
    model = load_model_arg(args.model)
    dataset = load_data_arg(args, model.input_shape)
    with open_store(args) as store:
        r = run_debugger(
            model, dataset, recipe=args.recipe, calibration_samples=args.calibration_samples,
            debug_samples=args.debug_samples, extra_metrics=names(args.metrics), whole_model=args.whole_model,
            denylisted_nodes=list(nodes), denylisted_ops=list(ops), threshold=args.threshold, first_k=args.first_k,
            store=store, selective_out=args.selective_out, progress=log_progress, engine=args.engine,
            model_explorer_out=args.model_explorer_out,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(stats_csv(r))
    sel = r.selective
    payload = {
        "model": r.model, "settings": r.settings, "columns": list(r.columns),
        "layers": [asdict(s) for s in r.stats], "model_metrics": r.model_metrics, "suspects": list(r.suspects),
        "selective": None if sel is None else {
            "denylisted_nodes": list(sel.denylisted_nodes), "denylisted_ops": list(sel.denylisted_ops),
            "ignored_nodes": list(sel.ignored_nodes), "accuracy": sel.evaluation.accuracy,
            "agreement": sel.evaluation.agreement, "size_bytes": sel.size_bytes, "path": sel.path,
            "variant_id": sel.variant_id,
        },
        "debug_run_id": r.debug_run_id, "out": args.out, "engine": args.engine,
        "model_explorer_out": args.model_explorer_out,
    }
    mode = "whole model" if args.whole_model or args.engine == "aeq" else "layer by layer"
    lines = [f"{r.model}: {len(r.stats)} layers debugged by {args.engine} ({mode}"
             f", {r.settings['debug_samples']} samples)"]
    lines += [f"  {s.op_name:<18} rmse/scale {s.rmse_scale:7.3f}  range {s.range:9.4g}  {s.tensor_name}"
              for s in r.stats]
    lines.append("  model: " + ", ".join(f"{k} {v:.4g}" for k, v in r.model_metrics.items()))
    lines.append(f"  suspects (rmse/scale > {args.threshold}): " + (", ".join(r.suspects) or "none"))
    if sel is not None:
        lines.append(f"  selective: accuracy {sel.evaluation.accuracy:.4f}, {sel.size_bytes} B, {sel.path}")
        if sel.ignored_nodes:
            lines.append("  still quantized (they share their neighbours' scale): " + ", ".join(sel.ignored_nodes))
    if args.out:
        lines.append(f"  statistics written to {args.out}")
    emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _cmd_compare_tensors(args: argparse.Namespace) -> int:
    from qcore.tflite.compare import compare_tensors

    _check_samples(args)
    fbytes, qbytes = read_tflite(args.float_tflite), read_tflite(args.quant_tflite)
    dataset = load_data_arg(args, tflite_input_shape(fbytes))
    r = compare_tensors(fbytes, qbytes, dataset.preprocess(dataset.x_test[: args.samples]), progress=log_progress)
    payload = {"float": args.float_tflite, "quant": args.quant_tflite, "n_samples": r.n_samples,
               "matched": [asdict(d) for d in r.matched], "unmatched": [asdict(u) for u in r.unmatched]}
    lines = [f"{len(r.matched)} tensors matched on {r.n_samples} samples, {len(r.unmatched)} unmatched"]
    lines += [f"  {d.quant_dtype:<8} mse {d.mse:10.4g}  max|e| {d.max_abs_error:10.4g}  snr {d.snr_db:7.2f} dB  "
              f"cos {d.cosine:.6f}{'  const' if d.is_constant else ''}  {d.name}" for d in r.matched]
    lines += [f"  unmatched ({u.side}): {u.name}: {u.reason}" for u in r.unmatched]
    emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _cmd_tune(args: argparse.Namespace) -> int:
    from qcore.explain.search import tune

    model = load_model_arg(args.model)
    dataset = load_data_arg(args, model.input_shape)
    with open_store(args) as store:
        r = tune(model, dataset, max_drop=args.max_drop, recipe=args.recipe,
                 calibration_samples=args.calibration_samples, debug_samples=args.debug_samples, store=store,
                 out_dir=args.out, progress=log_progress, engine=args.engine, deploy_engine=args.deploy_engine)
    chosen = r.chosen
    payload = {
        "model": r.model, "max_drop": r.max_drop, "float_accuracy": r.float_accuracy,
        "target_accuracy": r.target_accuracy, "layers": len(r.ranking), "ranking": list(r.ranking),
        "tried": [{"denylist": list(t.denylist), "accuracy": t.accuracy, "size_bytes": t.size_bytes,
                   "passed": t.passed, **({"error": t.error} if t.error else {})} for t in r.tried],
        "chosen": None if chosen is None else {"denylist": list(chosen.denylist), "accuracy": chosen.accuracy,
                                               "size_bytes": chosen.size_bytes, "path": chosen.path,
                                               "passed": chosen.passed},
        "tune_run_id": r.tune_run_id, "chosen_variant_id": r.chosen_variant_id,
        "engine": r.engine, "deploy_engine": r.deploy_engine, "search_accuracy": r.search_accuracy,
    }
    lines = [f"{r.model}: float accuracy {r.float_accuracy:.4f}, target {r.target_accuracy:.4f} "
             f"(at most {r.max_drop:g} points lower); {len(r.ranking)} layers ranked, {len(r.tried)} conversions"]
    lines += [f"  {len(t.denylist):>3} in float: accuracy {t.accuracy:.4f}  {t.size_bytes} B  "
              f"{'pass' if t.passed else 'fail'}" + (f"  ({t.error})" if t.error else "") for t in r.tried]
    if chosen is None:
        lines.append("  no denylist reaches the target, not even with every ranked layer in float")
    else:
        lines.append(f"  chosen: {len(chosen.denylist)} layers in float, accuracy {chosen.accuracy:.4f} "
                     f"({r.deploy_engine}; search on {r.engine}){'' if chosen.passed else ' MISSES the target'}, "
                     f"{chosen.size_bytes} B  {chosen.path}")
        lines += [f"    {n}" for n in chosen.denylist]
    emit(args, payload, "\n".join(lines))
    return EXIT_OK
