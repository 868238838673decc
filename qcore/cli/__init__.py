"""The `qlab` command line: every engine capability, JSON on request, exit 2 on bad input."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qcore.qtyping import QlabError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2

Handler = Callable[[argparse.Namespace], int]


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    """Queues JSON with --json, else the human text; `main` prints it on stdout once the engine is done.

    Handlers never print to stdout themselves: while they run, stdout belongs to no one (see
    `qcore.quiet.native_output`), so a library's print cannot break the one JSON document.
    """
    if getattr(args, "json", False):
        from qcore.jobs.contract import (
            to_json,  # the one serializer: job results and the API print the same
        )

        text = to_json(payload, indent=2)
    if hasattr(args, "stdout_text"):
        args.stdout_text.append(text)
    else:  # a handler called directly, outside main
        print(text)


def _open_store(args: argparse.Namespace) -> Any:
    from qcore.store import Store, default_db_path

    return Store(Path(args.db) if getattr(args, "db", None) else default_db_path())


def _add_common(p: argparse.ArgumentParser, *, db: bool = True, json_flag: bool = True) -> None:
    if db:
        p.add_argument("--db", help="DuckDB file (default: $QLAB_DB or data/qlab.duckdb)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object")


# ---------------------------------------------------------------- engine commands (issue 2)
def _add_engine_commands(sub: argparse._SubParsersAction) -> None:
    """`convert`, `evaluate`, `inspect`, `bench`, `demo`."""
    p = sub.add_parser("convert", help="convert a Keras model with post-training recipes, evaluate, store")
    p.add_argument("model", help="a .keras, .h5, SavedModel directory, or 'demo'")
    p.add_argument("--data", required=True, help="a .npz (x_train, y_train, x_test, y_test), image folder/.zip, or 'digits'")
    p.add_argument("--recipes", default="all", help="'all' or a comma-separated list of recipe names")
    p.add_argument("--out", help="write <OUT>/<recipe>.tflite (default: qlab-out/<model name>)")
    _add_preprocessing(p)
    p.add_argument("--calibration-samples", type=int, default=100, help="first N training samples (default 100)")
    _add_engine(p, "tf", "tf: the TF converter, what users deploy with (default); aeq: AI Edge Quantizer, "
                "calibrated once for all recipes")
    _add_common(p)
    p.set_defaults(handler=_cmd_convert)

    p = sub.add_parser("evaluate", help="accuracy of a .tflite on a labelled test split")
    p.add_argument("tflite")
    p.add_argument("--data", required=True)
    _add_preprocessing(p)
    _add_common(p, db=False)
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser("inspect", help="ops, tensors, quantization and the i.MX8M Plus NPU lint of a .tflite")
    p.add_argument("tflite")
    _add_common(p, db=False)
    p.set_defaults(handler=_cmd_inspect)

    p = sub.add_parser("bench", help="time a .tflite on this machine")
    p.add_argument("tflite")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only")
    p.add_argument("--db", help="also store the timing in this DuckDB file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser("demo", help="write the built-in demo model and its digits .npz")
    p.add_argument("--out", default="qlab-demo", help="folder (default: qlab-demo)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_demo)


def _add_engine(p: argparse.ArgumentParser, default: str, text: str) -> None:
    p.add_argument("--engine", default=default, choices=("tf", "aeq"), help=text)


def _add_preprocessing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-scale", type=float, default=1.0, help="float_input = x * scale + offset (default 1)")
    p.add_argument("--input-offset", type=float, default=0.0, help="(default 0)")


def _load_model_arg(spec: str) -> Any:
    from qcore.inputs.models import demo_model, load_model

    return demo_model() if spec == "demo" else load_model(spec)


def _load_data_arg(args: argparse.Namespace, input_shape: Any = None) -> Any:
    from qcore.inputs.data import load_dataset

    return load_dataset(
        args.data, input_scale=args.input_scale, input_offset=args.input_offset, input_shape=input_shape
    )


def _read_tflite(path: str) -> bytes:
    """A .tflite to run: refused up front, naming the file and its ops, when LiteRT cannot run its custom ops."""
    from qcore.tflite.litert_io import check_runnable, read_tflite

    data = read_tflite(path)
    check_runnable(data, path)
    return data


def _cmd_convert(args: argparse.Namespace) -> int:
    from qcore.lab.convert import convert_and_evaluate
    from qcore.recipes import resolve_recipes

    try:
        recipes = resolve_recipes(args.recipes, args.engine)
    except ValueError as exc:
        raise QlabError(str(exc)) from None
    model = _load_model_arg(args.model)
    dataset = _load_data_arg(args, model.input_shape)
    out = Path(args.out) if args.out else Path("qlab-out") / model.name
    with _open_store(args) as store:
        report = convert_and_evaluate(
            model, dataset, recipes, store=store, out_dir=out, calibration_samples=args.calibration_samples,
            progress=_log_progress, engine=args.engine,
        )
    variants = []
    lines = [f"{report.model}: float accuracy {report.float_accuracy:.4f} on {len(dataset.y_test)} test samples"
             f" (engine {args.engine})"]
    for v in report.variants:
        ev = v.evaluation
        variants.append({
            "recipe": v.recipe, "status": str(v.status), "path": v.path, "size_bytes": v.size_bytes,
            "accuracy": ev.accuracy if ev else None, "top5": ev.top5 if ev else None,
            "agreement": ev.agreement if ev else None, "input_dtype": v.input_dtype or None,
            "output_dtype": v.output_dtype or None, "error": v.error or None, "engine": v.engine,
        })
        if ev:
            lines.append(f"  {v.recipe:<17} acc {ev.accuracy:.4f}  top5 {ev.top5:.4f}  agree {ev.agreement:.4f}  "
                         f"{v.size_bytes:>9} B  {v.input_dtype}->{v.output_dtype}  {v.path}")
        else:
            lines.append(f"  {v.recipe:<17} FAILED: {v.error}")
    payload = {"model": report.model, "float_accuracy": report.float_accuracy, "engine": args.engine,
               "variants": variants}
    _emit(args, payload, "\n".join(lines))
    failed = [v for v in report.variants if v.error]
    for v in failed:
        print(f"qlab convert: recipe {v.recipe} failed: {v.error}", file=sys.stderr)
    # 1 = some recipes were refused (the others are written and stored)
    return 1 if failed else EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from qcore.tflite.evaluate import evaluate_tflite
    from qcore.tflite.litert_io import make_interpreter

    model = _read_tflite(args.tflite)
    shape = tuple(int(d) for d in make_interpreter(model).get_input_details()[0]["shape"])
    dataset = _load_data_arg(args, (None, *shape[1:]))
    ev = evaluate_tflite(model, dataset)
    payload = {
        "model": args.tflite, "accuracy": ev.accuracy, "top5": ev.top5, "n_samples": ev.n_samples,
        "size_bytes": ev.size_bytes, "input_dtype": ev.input_dtype, "output_dtype": ev.output_dtype,
        "batched": ev.batched, "note": ev.note or None, "confusion": [list(r) for r in ev.confusion],
    }
    text = (f"{args.tflite}: accuracy {ev.accuracy:.4f}, top-5 {ev.top5:.4f} on {ev.n_samples} samples; "
            f"{ev.size_bytes} B, {ev.input_dtype} -> {ev.output_dtype}" + (f" ({ev.note})" if ev.note else ""))
    _emit(args, payload, text)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qcore.tflite.inspection import inspect

    result = inspect(Path(args.tflite))
    payload = asdict(result) | {"verdict": result.verdict}
    lines = [f"{args.tflite}: {result.size_bytes} B, {len(result.ops)} ops, {len(result.tensors)} tensors",
             "ops:"]
    lines += [f"  {o.index:>3} {o.name:<22} in {list(o.inputs)} out {list(o.outputs)}"
              + ("  [float]" if o.is_float else "") for o in result.ops]
    lines.append("tensors:")
    for t in result.tensors:
        q = ""
        if t.scales:
            q = (f" scale {t.scales[0]:.6g} zp {t.zero_points[0]}" if len(t.scales) == 1
                 else f" per-channel x{len(t.scales)} (axis {t.quantized_dimension})")
        lines.append(f"  {t.index:>3} {t.dtype:<8} {str(list(t.shape)):<18}{q}{'  const' if t.is_constant else ''}  {t.name}")
    lines.append(f"verdict: {result.verdict}")
    lines += [f"  [{f.severity}] {f.code}: {f.message}" for f in result.lint]
    _emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qcore.store import Store, sha256_bytes
    from qcore.tflite.latency import benchmark

    model = _read_tflite(args.tflite)
    lat = benchmark(model, runs=args.runs, warmup=args.warmup, threads=args.threads, xnnpack=not args.no_xnnpack)
    if args.db:
        with Store(Path(args.db)) as store:
            sha = sha256_bytes(model)
            store.add_benchmark(lat, sha256=sha, variant_id=store.variant_id_for_sha(sha))
    text = (f"{args.tflite}: {lat.threads} thread(s), XNNPACK {'on' if lat.xnnpack else 'off'}\n"
            f"  init {lat.init_ms:.3f} ms, first inference {lat.first_ms:.3f} ms\n"
            f"  {lat.runs} runs: min {lat.min_ms:.3f}  mean {lat.mean_ms:.3f}  p50 {lat.p50_ms:.3f}  "
            f"p90 {lat.p90_ms:.3f}  p99 {lat.p99_ms:.3f}  std {lat.std_ms:.3f} ms")
    _emit(args, asdict(lat), text)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from qcore.inputs.models import write_demo

    model_path, data_path = write_demo(Path(args.out))
    _emit(args, {"model": str(model_path), "data": str(data_path)},
          f"wrote {model_path} and {data_path}\ntry: qlab convert {model_path} --data {data_path}")
    return EXIT_OK


def _log_progress(fraction: float, message: str) -> None:
    log.info("[%3.0f%%] %s", fraction * 100, message)


# ---------------------------------------------------------------- QAT / debugger / tune (issue 3)
def _add_explain_commands(sub: argparse._SubParsersAction) -> None:
    """`qat`, `debug`, `compare-tensors`, `tune`."""
    p = sub.add_parser("qat", help="quantization-aware training (tfmot): fine-tune, convert, evaluate, store")
    p.add_argument("model", help="a .keras, .h5, SavedModel directory, or 'demo'")
    p.add_argument("--data", required=True, help="a .npz (x_train, y_train, x_test, y_test), image folder/.zip, or 'digits'")
    p.add_argument("--layers", default="all", help="'all', or layer classes / names to quantize, e.g. Dense,Conv2D")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="(default 32)")
    p.add_argument("--train-samples", type=int, help="fine-tune on the first N training samples (default all)")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="Adam's learning rate (default 1e-4)")
    p.add_argument("--int-io", action="store_true", help="integer-only model with int8 input and output")
    p.add_argument("--calibration-samples", type=int, default=100, help="for --int-io: first N training samples")
    _add_preprocessing(p)
    p.add_argument("--out", help="also write the .tflite here")
    _add_common(p)
    p.set_defaults(handler=_cmd_qat)

    p = sub.add_parser("debug", help="TFLite's quantization debugger: per-layer errors, suspects, selective quantization")
    p.add_argument("model", help="a .keras, .h5, SavedModel directory, or 'demo'")
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits'")
    p.add_argument("--recipe", default="int8-fallback", help="an int8 recipe (default int8-fallback); 16x8 is refused")
    p.add_argument("--calibration-samples", type=int, default=100, help="first N training samples (default 100)")
    p.add_argument("--debug-samples", type=int, default=100, help="first M test samples (default 100)")
    p.add_argument("--threshold", type=float, default=0.7, help="rmse/scale above this is a suspect (default 0.7)")
    p.add_argument("--first-k", type=int, default=0, help="also count the first K layers as suspects")
    p.add_argument("--metrics", default="", help="extra layer metrics: mean_abs_error,correlation")
    p.add_argument("--denylist-ops", action="append", default=[], help="op types to keep in float, e.g. MEAN,ADD")
    p.add_argument("--denylist-nodes", action="append", default=[],
                   help="tensor names (the debugger's tensor_name) to keep in float")
    p.add_argument("--selective-out", help="write the selective .tflite here (needs a denylist)")
    p.add_argument("--whole-model", action="store_true", help="whole-model verification: errors propagate")
    _add_preprocessing(p)
    p.add_argument("--out", help="write the statistics CSV here (the debugger's columns, then range, rmse_scale)")
    _add_engine(p, "tf", "the engine of the variant you explain: tf, TFLite's QuantizationDebugger (default); "
                "aeq: AI Edge Quantizer's validation, MSE/SNR/cosine per layer")
    p.add_argument("--model-explorer-out", help="with --engine aeq: write AEQ's comparison JSON and Model "
                   "Explorer node-data files (<model>_comparison_result_me_input_<metric>.json) to this folder")
    _add_common(p)
    p.set_defaults(handler=_cmd_debug)

    p = sub.add_parser("compare-tensors", help="tensor-by-tensor errors of a quantized .tflite against the float one")
    p.add_argument("float_tflite", metavar="FLOAT.tflite")
    p.add_argument("quant_tflite", metavar="QUANT.tflite")
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits' (its test split is used)")
    p.add_argument("--samples", type=int, default=20, help="first N test samples (default 20)")
    _add_preprocessing(p)
    _add_common(p, db=False)
    p.set_defaults(handler=_cmd_compare_tensors)

    p = sub.add_parser("tune", help="find a small set of layers to keep in float within an accuracy budget")
    p.add_argument("model", help="a .keras, .h5, SavedModel directory, or 'demo'")
    p.add_argument("--data", required=True, help="a .npz, image folder/.zip, or 'digits'")
    p.add_argument("--max-drop", type=float, required=True, help="accuracy points the result may lose against float")
    p.add_argument("--recipe", default="int8-fallback", help="an int8 recipe (default int8-fallback)")
    p.add_argument("--calibration-samples", type=int, default=100, help="first N training samples (default 100)")
    p.add_argument("--debug-samples", type=int, default=100, help="first M test samples ranking layers (default 100)")
    _add_preprocessing(p)
    p.add_argument("--out", help="write <OUT>/<model>-tune.tflite")
    _add_engine(p, "tf", "who ranks layers and runs the trials: tf (default) or aeq (calibrated once, faster); "
                "use the engine you deploy with")
    p.add_argument("--deploy-engine", default="tf", choices=("tf", "aeq"),
                   help="who makes the chosen variant (default tf): the chosen denylist is converted once more "
                   "with it when it differs from --engine")
    _add_common(p)
    p.set_defaults(handler=_cmd_tune)


def _names(values: Sequence[str]) -> list[str]:
    """Comma-separated, repeatable option values as one list."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _cmd_qat(args: argparse.Namespace) -> int:
    from qcore.lab.qat import run_qat

    model = _load_model_arg(args.model)
    dataset = _load_data_arg(args, model.input_shape)
    with _open_store(args) as store:
        r = run_qat(
            model, dataset, layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, train_samples=args.train_samples, int_io=args.int_io,
            calibration_samples=args.calibration_samples, store=store, out=args.out, progress=_log_progress,
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
    _emit(args, _finite(payload), "\n".join(lines))
    return EXIT_OK


def _cmd_debug(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qcore.explain.debugger import run_debugger, stats_csv

    nodes, ops = _names(args.denylist_nodes), _names(args.denylist_ops)
    if args.selective_out and not (nodes or ops):
        raise QlabError("--selective-out needs --denylist-nodes or --denylist-ops")
    model = _load_model_arg(args.model)
    dataset = _load_data_arg(args, model.input_shape)
    with _open_store(args) as store:
        r = run_debugger(
            model, dataset, recipe=args.recipe, calibration_samples=args.calibration_samples,
            debug_samples=args.debug_samples, extra_metrics=_names([args.metrics]), whole_model=args.whole_model,
            denylisted_nodes=nodes, denylisted_ops=ops, threshold=args.threshold, first_k=args.first_k,
            store=store, selective_out=args.selective_out, progress=_log_progress, engine=args.engine,
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
    _emit(args, _finite(payload), "\n".join(lines))
    return EXIT_OK


def _cmd_compare_tensors(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qcore.tflite.compare import compare_tensors
    from qcore.tflite.litert_io import make_interpreter

    if args.samples < 1:
        raise QlabError(f"--samples must be at least 1, got {args.samples}")
    fbytes, qbytes = _read_tflite(args.float_tflite), _read_tflite(args.quant_tflite)
    shape = tuple(int(d) for d in make_interpreter(fbytes).get_input_details()[0]["shape"])
    dataset = _load_data_arg(args, (None, *shape[1:]))
    r = compare_tensors(fbytes, qbytes, dataset.preprocess(dataset.x_test[: args.samples]), progress=_log_progress)
    payload = {"float": args.float_tflite, "quant": args.quant_tflite, "n_samples": r.n_samples,
               "matched": [asdict(d) for d in r.matched], "unmatched": [asdict(u) for u in r.unmatched]}
    lines = [f"{len(r.matched)} tensors matched on {r.n_samples} samples, {len(r.unmatched)} unmatched"]
    lines += [f"  {d.quant_dtype:<8} mse {d.mse:10.4g}  max|e| {d.max_abs_error:10.4g}  snr {d.snr_db:7.2f} dB  "
              f"cos {d.cosine:.6f}{'  const' if d.is_constant else ''}  {d.name}" for d in r.matched]
    lines += [f"  unmatched ({u.side}): {u.name}: {u.reason}" for u in r.unmatched]
    _emit(args, _finite(payload), "\n".join(lines))
    return EXIT_OK


def _cmd_tune(args: argparse.Namespace) -> int:
    from qcore.explain.search import tune

    model = _load_model_arg(args.model)
    dataset = _load_data_arg(args, model.input_shape)
    with _open_store(args) as store:
        r = tune(model, dataset, max_drop=args.max_drop, recipe=args.recipe,
                 calibration_samples=args.calibration_samples, debug_samples=args.debug_samples, store=store,
                 out_dir=args.out, progress=_log_progress, engine=args.engine, deploy_engine=args.deploy_engine)
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
    _emit(args, _finite(payload), "\n".join(lines))
    return EXIT_OK


# ---------------------------------------------------------------- boards (issue 4)
def _add_board_commands(sub: argparse._SubParsersAction) -> None:
    """`board add|list|bench|accuracy|label|history|matrix`."""
    board = sub.add_parser("board", help="i.MX8M Plus boards running the qlab agent: register, time, evaluate")
    bsub = board.add_subparsers(dest="board_command", required=True, metavar="ACTION")
    targets = "npu, cpu, cpu-plain or all (all skips unavailable targets with a note)"

    p = bsub.add_parser("add", help="register (or re-point) a board; the token is stored, never printed")
    p.add_argument("name")
    p.add_argument("url", help="the agent's URL, e.g. http://imx8mp.local:8765")
    p.add_argument("--token-file", help="file whose first line is the agent's token")
    _add_common(p)
    p.set_defaults(handler=_cmd_board_add)

    p = bsub.add_parser("list", help="registered boards with their live health")
    _add_common(p)
    p.set_defaults(handler=_cmd_board_list)

    p = bsub.add_parser("bench", help="time a .tflite on a board's NPU and CPU; stored beside host timings")
    p.add_argument("name")
    p.add_argument("tflite")
    p.add_argument("--target", default="all", help=targets + " (default all)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="per-op profile with the board's benchmark_model")
    _add_common(p)
    p.set_defaults(handler=_cmd_board_bench)

    p = bsub.add_parser("accuracy", help="accuracy of a .tflite on a board, and its agreement with this host")
    p.add_argument("name")
    p.add_argument("tflite")
    p.add_argument("--data", required=True, help="a .npz (x_train, y_train, x_test, y_test), image folder/.zip, or 'digits'")
    p.add_argument("--target", default="all", help=targets + " (default all)")
    p.add_argument("--threads", type=int, default=1)
    _add_preprocessing(p)
    _add_common(p)
    p.set_defaults(handler=_cmd_board_accuracy)


    p = bsub.add_parser("label", help="add (or --remove) labels of a board: soc=imx8mp, bsp=..., runtime=..., tag=lab")
    p.add_argument("name")
    p.add_argument("labels", nargs="*", metavar="KEY=VALUE", help="keys: soc, bsp, runtime, tag")
    p.add_argument("--remove", action="store_true", help="drop these labels instead")
    _add_common(p)
    p.set_defaults(handler=_cmd_board_label)

    p = bsub.add_parser("history", help="the last health checks of a board (or of every board)")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", type=int, default=10, help="checks per board (default 10)")
    _add_common(p)
    p.set_defaults(handler=_cmd_board_history)

    p = bsub.add_parser("matrix", help="benchmark variants x targets across a board or a pool of boards")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pool", help="a label query: 'imx8mp', 'soc=imx8mp tag=lab', or '*'")
    where.add_argument("--board", help="one registered board")
    p.add_argument("--any", action="store_true",
                   help="run each cell once on any free board of the pool (default: on every board)")
    p.add_argument("--variants", required=True, help="comma-separated variant ids (see `qlab list`)")
    p.add_argument("--targets", default="cpu", help="comma-separated: npu, cpu, cpu-plain (default cpu)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="per-op (and on npu per-NPU-operation) profile")
    _add_common(p)
    p.set_defaults(handler=_cmd_board_matrix)


def _board_targets(value: str) -> str | list[str]:
    return value if value == "all" else [t.strip() for t in value.split(",") if t.strip()]


def _cmd_board_add(args: argparse.Namespace) -> int:
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise QlabError(f"cannot read a token from {args.token_file}: {exc}") from None
        if not token:
            raise QlabError(f"token file {args.token_file} is empty")
    with _open_store(args) as store:
        store.add_board(args.name, args.url, token)
        url, _ = store.board_token(args.name)
    note = "token stored" if token else "no token"
    _emit(args, {"name": args.name, "url": url, "has_token": token is not None}, f"board {args.name} -> {url} ({note})")
    return EXIT_OK


def _cmd_board_list(args: argparse.Namespace) -> int:
    from qcore.boards.runs import board_health

    with _open_store(args) as store:
        rows = board_health(store)
    payload, lines = [], []
    for r in rows:
        b = r.board
        entry: dict[str, Any] = {"name": b.name, "url": b.url, "has_token": b.has_token, "reachable": r.reachable}
        if r.reachable and r.health is not None:
            rt = r.health.get("runtime") or {}
            entry.update(health=r.health)
            avail = r.available_targets()
            missing = [f"{t}: {i.get('reason', '?')}" for t, i in r.health.get("targets", {}).items()
                       if not i.get("available")]
            lines.append(f"{b.name:<12} {b.url:<32} ok  {rt.get('name')} {rt.get('version')}  "
                         f"targets {', '.join(avail) or 'none'}  queue {r.health.get('queue_depth', '?')}"
                         + (f"  (unavailable: {'; '.join(missing)})" if missing else ""))
        else:
            entry.update(error=r.error)
            lines.append(f"{b.name:<12} {b.url:<32} UNREACHABLE  {r.error}")
        payload.append(entry)
    _emit(args, {"boards": payload}, "\n".join(lines) if lines else "no boards; add one with `qlab board add NAME URL`")
    return EXIT_OK


def _cmd_board_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qcore.boards.runs import bench_on_board
    from qcore.store import sha256_bytes

    model = _read_tflite(args.tflite)
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    with _open_store(args) as store:
        results = bench_on_board(
            store, args.name, model, _board_targets(args.target), runs=args.runs, warmup=args.warmup,
            threads=args.threads, profile=args.profile, progress=_log_progress, failed=failed, skipped=skipped,
        )
        variant_id = store.variant_id_for_sha(sha256_bytes(model))
    lines = [f"{args.tflite} on board {args.name}: {args.threads} thread(s), {args.runs} runs",
             f"  {'target':<10}{'init ms':>10}{'first ms':>10}{'min':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'std':>8}"
             f"{'RSS MB':>8}  ops on delegate / cpu"]
    for lat in results:
        ops = lat.extra.get("ops") or {}
        where = (f"{len(ops.get('delegated', []))} / {len(ops.get('cpu', []))}" if ops.get("known")
                 else "unknown")
        cache = lat.extra.get("cache")
        if cache:
            where += f"  graph cache {'warm' if cache.get('warm') else 'cold'}"
        lines.append(f"  {lat.target:<10}{lat.init_ms:>10.3f}{lat.first_ms:>10.3f}{lat.min_ms:>9.3f}{lat.p50_ms:>9.3f}"
                     f"{lat.p90_ms:>9.3f}{lat.p99_ms:>9.3f}{lat.std_ms:>8.3f}"
                     f"{lat.extra.get('peak_rss_mb', float('nan')):>8.1f}  {where}")
        prof = lat.extra.get("profile") or {}
        if args.profile:
            if prof.get("available"):
                top = sorted(prof.get("ops", []), key=lambda o: -o.get("avg_ms", 0))[:5]
                lines += [f"      {o.get('avg_ms', 0):8.3f} ms  {o.get('node_type')}  {o.get('name', '')}" for o in top]
            else:
                lines.append(f"      profile not available: {prof.get('reason', '?')}")
            npu = prof.get("npu") or {}
            if npu.get("available"):
                lines.append(f"      NPU driver profile: {npu['ops_per_invoke']} NPU operations, {npu['total_ms']:.3f} ms "
                             f"at {npu['clock_mhz']:g} MHz ({npu['busy_ms']:.3f} ms busy), DDR read "
                             f"{npu['ddr_read_mb']:.2f} MB / write {npu['ddr_write_mb']:.2f} MB per invoke; "
                             f"mapping to TFLite ops: {npu.get('mapping_reason', '?')}")
            elif npu:
                lines.append(f"      NPU driver profile not available: {npu.get('reason', '?')}")
    lines += [f"  skipped {t}: {why}" for t, why in skipped.items()]
    lines += [f"  failed {t}: {why}" for t, why in failed.items()]
    lines.append(f"  stored {len(results)} timing(s)" + (f" for variant {variant_id}" if variant_id else ""))
    payload = {"board": args.name, "model": args.tflite, "sha256": sha256_bytes(model), "variant_id": variant_id,
               "results": [asdict(lat) for lat in results], "skipped": skipped, "failed": failed}
    _emit(args, payload, "\n".join(lines))
    # 1 = some targets failed on the board (the others are stored)
    return 1 if failed else EXIT_OK


def _cmd_board_accuracy(args: argparse.Namespace) -> int:
    from qcore.boards.client import resolve_targets
    from qcore.boards.runs import accuracy_on_board, client_for
    from qcore.store import sha256_bytes
    from qcore.tflite.litert_io import make_interpreter

    model = _read_tflite(args.tflite)
    shape = tuple(int(d) for d in make_interpreter(model).get_input_details()[0]["shape"])
    dataset = _load_data_arg(args, (None, *shape[1:]))
    with _open_store(args) as store:
        client = client_for(store, args.name)
        try:
            chosen, skipped = resolve_targets(client.health(), _board_targets(args.target))
        finally:
            client.close()
        variant_id = store.variant_id_for_sha(sha256_bytes(model))
        rows = []
        for target in chosen:
            ev, host_agreement = accuracy_on_board(store, args.name, model, dataset, target, threads=args.threads,
                                                   progress=_log_progress)
            rows.append((target, ev, host_agreement))
    lines = [f"{args.tflite} on board {args.name}, {len(dataset.y_test)} test samples of {dataset.name}"]
    lines += [f"  {t:<10} accuracy {ev.accuracy:.4f}  top-5 {ev.top5:.4f}  agreement with host {agree:.4f}  ({ev.note})"
              for t, ev, agree in rows]
    lines += [f"  skipped {t}: {why}" for t, why in skipped.items()]
    lines.append(f"  stored as evaluations of variant {variant_id}" if variant_id
                 else "  not stored: this .tflite is not a known variant (make it with `qlab convert`)")
    payload = {
        "board": args.name, "model": args.tflite, "variant_id": variant_id, "skipped": skipped,
        "results": [{"target": t, "device": f"board:{args.name}/{t}", "accuracy": ev.accuracy, "top5": ev.top5,
                     "host_agreement": agree, "n_samples": ev.n_samples, "note": ev.note,
                     "confusion": [list(r) for r in ev.confusion]} for t, ev, agree in rows],
    }
    _emit(args, payload, "\n".join(lines))
    return EXIT_OK


# ---------------------------------------------------------------- jobs of a store
def _add_jobs_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="the jobs of a store: kind, status, which worker ran them, errors")
    p.add_argument("--limit", type=int, default=20, help="newest N jobs (default 20)")
    p.add_argument("--active", action="store_true", help="only queued and running jobs")
    _add_common(p)
    p.set_defaults(handler=_cmd_jobs)


def _cmd_jobs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise QlabError(f"--limit must be at least 1, got {args.limit}")
    with _open_store(args) as store:
        jobs = store.jobs(limit=args.limit, active=args.active)
    lines = [f"{'id':>5}  {'kind':<16} {'status':<10} {'worker':<34} message"]
    for j in jobs:
        where = f"{j.worker_host} {j.worker}".strip() or "-"
        lines.append(f"{j.id:>5}  {j.kind:<16} {str(j.status):<10} {where:<34} {j.error or j.message}")
    if not jobs:
        lines = ["no jobs" + (" running" if args.active else " yet")]
    _emit(args, {"jobs": [{"id": j.id, "kind": j.kind, "status": str(j.status), "progress": j.progress,
                           "message": j.message, "error": j.error, "worker": j.worker,
                           "worker_host": j.worker_host, "created_at": j.created_at, "started_at": j.started_at,
                           "finished_at": j.finished_at} for j in jobs]}, "\n".join(lines))
    return EXIT_OK


# ---------------------------------------------------------------- per-op cost vs error (issue 12)
def _add_op_cost_commands(sub: argparse._SubParsersAction) -> None:
    """`op-cost`, `export-node-data`."""
    for name, help_text in (
        ("op-cost", "per-op debugger error (rmse/scale) beside per-op time on a board, or a labelled estimate"),
        ("export-node-data", "write Model Explorer node data (one JSON per metric) for a variant's .tflite graph"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("variant", metavar="VARIANT", help="a stored variant's id or name")
        p.add_argument("--board", help="a board with a stored per-op profile ('host' = the estimate; default: the "
                                       "first board profile, else the estimate)")
        p.add_argument("--target", help="npu, cpu or cpu-plain (default: the first with a profile)")
        p.add_argument("--debug-run", type=int, help="debugger run id (default: the newest of the variant's model)")
        if name == "export-node-data":
            p.add_argument("--out", required=True, help="directory for <variant>.<metric>.json")
            p.set_defaults(handler=_cmd_export_node_data)
        else:
            p.set_defaults(handler=_cmd_op_cost)
        _add_common(p)


def _variant_id(store: Any, ref: str) -> int:
    """A variant id from an id or a unique name."""
    if ref.strip().isdigit():
        return int(store.variant(int(ref))["variant_id"])
    rows = store.variant_summary()
    hits = rows[rows["variant"] == ref]
    if hits.empty:
        known = ", ".join(sorted(set(map(str, rows["variant"])))[:10]) or "none stored"
        raise QlabError(f"no variant named {ref!r} (known: {known})")
    if len(hits) > 1:
        ids = ", ".join(f"{int(r.variant_id)} ({r.model})" for r in hits.itertuples())
        raise QlabError(f"{len(hits)} variants are named {ref!r}: pass one id of {ids}")
    return int(hits.iloc[0]["variant_id"])


def _op_cost_for(args: argparse.Namespace, store: Any) -> Any:
    from qcore.lab.op_cost import op_cost

    return op_cost(store, _variant_id(store, args.variant), board=args.board, target=args.target,
                   debug_run_id=args.debug_run)


def _cmd_op_cost(args: argparse.Namespace) -> int:
    from qcore.lab.op_cost import report_rows

    with _open_store(args) as store:
        cost = _op_cost_for(args, store)
    table = cost.table.sort_values("time_share", ascending=False, na_position="last")
    lines = [f"variant #{cost.variant_id} {cost.variant}: time from {cost.board}/{cost.target} "
             f"[{cost.time_source}], total {cost.total_ms:.3f} ms; error from debugger run "
             f"{cost.debug_run_id if cost.debug_run_id is not None else '(none)'}",
             f"  {'op':>3}  {'layer':<28}{'rmse/scale':>11}{'time ms':>10}{'share':>8}{'float on CPU ms':>17}"]
    for r in table.itertuples():
        lines.append(f"  {r.op_index:>3}  {str(r.layer)[:27]:<28}{r.rmse_scale:>11.3f}{r.time_ms:>10.4f}"
                     f"{r.time_share * 100:>7.1f}%{r.float_on_cpu_ms:>17.4f}")
    lines += [f"  unmapped: {u.node_type} {u.time_ms:.4f} ms ({u.why})" for u in cost.unmapped.itertuples()]
    lines += [f"  note: {n}" for n in cost.notes]
    payload = {"variant_id": cost.variant_id, "variant": cost.variant, "board": cost.board, "target": cost.target,
               "time_source": cost.time_source, "total_ms": cost.total_ms, "debug_run_id": cost.debug_run_id,
               "rows": report_rows(cost), "unmapped": _finite(cost.unmapped.to_dict("records")),
               "notes": list(cost.notes)}
    _emit(args, _finite(payload), "\n".join(lines))
    return EXIT_OK


def _cmd_export_node_data(args: argparse.Namespace) -> int:
    from qcore.lab.op_cost import explorer_command, explorer_installed, write_node_data

    with _open_store(args) as store:
        cost = _op_cost_for(args, store)
        row = store.variant(cost.variant_id)
        tflite = str(row["path"]) if row.get("path") else str(store.blob_path(str(row["sha256"])))
    paths = write_node_data(cost, args.out)
    command = explorer_command(tflite, paths)
    lines = [f"wrote {len(paths)} node-data file(s) for variant #{cost.variant_id} {cost.variant} "
             f"(time: {cost.board}/{cost.target}, {cost.time_source}):", *[f"  {p}" for p in paths],
             "open the graph with them:" if explorer_installed()
             else "open the graph with them (pip install ai-edge-model-explorer):", f"  {command}"]
    _emit(args, {"variant_id": cost.variant_id, "files": [str(p) for p in paths], "graph_id": cost.graph_id,
                 "time_source": cost.time_source, "command": command}, "\n".join(lines))
    return EXIT_OK


# ---------------------------------------------------------------- bring your own .tflite (issue 11)
def _add_import_commands(sub: argparse._SubParsersAction) -> None:
    """`import-tflite`."""
    p = sub.add_parser("import-tflite", help="take in a .tflite made elsewhere as a variant of a tflite-only model")
    p.add_argument("tflite", metavar="FILE", help="the .tflite (eIQ model zoo, Ultralytics, onnx2tf, MediaPipe, ...)")
    p.add_argument("--reference", metavar="FLOAT.tflite",
                   help="a float .tflite of the same network: its accuracy and outputs are the float reference")
    p.add_argument("--name", default="", help="the model's name (default: the reference's or the file's stem)")
    p.add_argument("--data", help="evaluate on this .npz, image folder/.zip, or 'digits' (its test split)")
    _add_preprocessing(p)
    _add_common(p)
    p.set_defaults(handler=_cmd_import_tflite)


def _cmd_import_tflite(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qcore.lab.import_tflite import import_tflite, input_shape
    from qcore.tflite.litert_io import read_tflite

    # custom ops are welcome here: the file is stored and inspected, only running it is refused
    model = read_tflite(args.tflite)
    reference = read_tflite(args.reference) if args.reference else None
    dataset = _load_data_arg(args, input_shape(model, args.tflite)) if args.data else None
    with _open_store(args) as store:
        r = import_tflite(store, model, label=args.tflite, name=args.name, reference=reference,
                          reference_label=args.reference or "", dataset=dataset, progress=_log_progress)
    payload = asdict(r)
    lines = [f"{args.tflite}: model #{r.model_id} {r.model!r} (tflite-only), variant #{r.variant_id} {r.variant!r}; "
             f"{r.size_bytes} B, {r.input_dtype} -> {r.output_dtype}, {r.verdict}"]
    if r.reference_variant_id is not None:
        lines.append(f"  float reference: variant #{r.reference_variant_id} ({args.reference})")
    lines.append(f"  scored by: {'top-1 against labels' if r.scoring == 'classes' else 'MSE / cosine against the reference'}")
    ev, ref = r.evaluation, r.reference_evaluation
    if ev is not None and r.scoring == "classes":
        lines.append(f"  accuracy {ev.accuracy:.4f}  top-5 {ev.top5:.4f}"
                     + (f"  agreement {ev.agreement:.4f}" if ev.agreement is not None else "")
                     + (f"  (reference accuracy {ref.accuracy:.4f})" if ref is not None else "")
                     + f" on {ev.n_samples} samples")
    elif ev is not None:
        lines.append("  " + "  ".join(f"{k} {v:.4g}" for k, v in ev.output_metrics.items())
                     + f" on {ev.n_samples} samples")
    lines += [f"  note: {n}" for n in r.notes]
    _emit(args, _finite(payload), "\n".join(lines))
    return EXIT_OK


def _cmd_board_label(args: argparse.Namespace) -> int:
    pairs = []
    for item in args.labels:
        key, sep, value = item.partition("=")
        if not sep:
            raise QlabError(f"label {item!r} is not KEY=VALUE (keys: soc, bsp, runtime, tag)")
        pairs.append((key.strip(), value.strip()))
    with _open_store(args) as store:
        if pairs:
            store.set_board_labels(args.name, pairs, remove=args.remove)
        labels = store.board_labels(args.name)
    rows = labels.to_dict("records")
    text = "\n".join(f"{args.name}  {r['key']}={r['value']}  ({r['source']})" for r in rows) or f"{args.name}: no labels"
    _emit(args, {"board": args.name, "labels": rows}, text)
    return EXIT_OK


def _cmd_board_history(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        if args.name:
            store.board_token(args.name)
        hist = store.health_history(args.name, limit=max(1, args.n))
    rows = hist.to_dict("records")
    lines = [f"{r['board']:<12} {str(r['checked_at'])[:19]}  "
             + ("up    " + str(r['runtime'] or '') + f"  queue {r['queue_depth']}" if r["reachable"]
                else "DOWN  " + str(r["error"]))
             for r in rows]
    _emit(args, {"history": rows}, "\n".join(lines) or "no health checks yet (`qlab board list` makes one)")
    return EXIT_OK


def _cmd_board_matrix(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from qcore.boards.runs import matrix, matrix_spread
    from qcore.qtyping import Placement

    try:
        variant_ids = [int(v) for v in args.variants.split(",") if v.strip()]
    except ValueError:
        raise QlabError(f"--variants {args.variants!r}: give comma-separated variant ids, e.g. 3,4,7") from None
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    placement = Placement.BOARD if args.board else (Placement.ANY if args.any else Placement.EACH)
    with _open_store(args) as store:
        result = matrix(store, variant_ids, targets, pool=args.board or args.pool, placement=placement,
                        runs=args.runs, warmup=args.warmup, threads=args.threads, profile=args.profile,
                        progress=_log_progress)
        spread = matrix_spread(store, result.run_id)
    done = len(result.cells) - len(result.failed)
    lines = [f"board run {result.run_id}: {len(result.cells)} cell(s) on {', '.join(result.boards)} "
             f"({placement.value}), {done} done, {len(result.failed)} failed, {result.wall_s:.1f} s"]
    for c in result.cells:
        what = f"p50 {c.p50_ms:.3f} ms" if c.p50_ms is not None else f"FAILED: {c.reason}"
        moved = f"  (moved from {', '.join(a['board'] for a in c.attempts)})" if c.attempts else ""
        lines.append(f"  #{c.variant_id} {c.target:<9} {c.board or '-':<12} {what}{moved}")
    if not spread.empty and spread["boards"].max() > 1:
        lines.append("  spread across boards (p50 ms): variant target board p50 [pool min / median / max]")
        lines += [f"    #{r.variant_id} {r.target:<9} {r.board:<12} {r.p50_ms:.3f} "
                  f"[{r.pool_min_ms:.3f} / {r.pool_median_ms:.3f} / {r.pool_max_ms:.3f}]"
                  for r in spread.itertuples(index=False)]
    payload = {"run_id": result.run_id, "placement": placement.value, "pool": result.pool,
               "boards": list(result.boards), "wall_s": result.wall_s, "retries_429": result.retries_429,
               "cells": [asdict(c) for c in result.cells], "spread": spread.to_dict("records")}
    _emit(args, payload, "\n".join(lines))
    # 1 = some cells failed (their reasons are stored; the others are stored too)
    return 1 if result.failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlab",
        description="Quantize Keras models to TFLite, measure, explain and time them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--server", default=os.environ.get("QLAB_SERVER") or None, metavar="URL",
                        help="run convert, debug, tune, qat, compare-tensors, bench, board bench|accuracy and "
                             "report make|push on this qlab server (default: $QLAB_SERVER)")
    parser.add_argument("--token-file", dest="server_token_file", metavar="FILE",
                        help="the server's API token (default: $QLAB_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_engine_commands(sub)
    _add_explain_commands(sub)
    _add_board_commands(sub)
    _add_jobs_command(sub)
    _add_op_cost_commands(sub)
    _add_import_commands(sub)
    _add_report_commands(sub)
    return parser


# ---------------------------------------------------------------- reports, local or on a server
def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    """`report make|push`."""
    report = sub.add_parser("report", help="make a report of variants; push a local report to a team server")
    rsub = report.add_subparsers(dest="report_command", required=True, metavar="ACTION")
    p = rsub.add_parser("make", help="a report of these variants (here, or on --server)")
    p.add_argument("--title", required=True)
    p.add_argument("--variants", required=True, help="comma-separated variant ids")
    p.add_argument("--notes", default="", help="markdown")
    _add_common(p)
    p.set_defaults(handler=_cmd_report_make)
    p = rsub.add_parser("push", help="send a local report's bundle to the --server so it joins the team's lab")
    p.add_argument("report_id")
    _add_common(p)
    p.set_defaults(handler=_cmd_report_push)


def _cmd_report_make(args: argparse.Namespace) -> int:
    from qcore.lab.reports import make_report

    try:
        ids = [int(v) for v in args.variants.split(",") if v.strip()]
    except ValueError:
        raise QlabError(f"--variants {args.variants!r}: expected comma-separated variant ids") from None
    with _open_store(args) as store:
        report_id = make_report(store, args.title, args.notes, ids)
    _emit(args, {"id": report_id}, f"report {report_id} (open it on the dashboard with ?report={report_id})")
    return EXIT_OK


def _cmd_report_push(args: argparse.Namespace) -> int:
    raise QlabError("report push needs --server URL (or QLAB_SERVER)")


def _remote(args: argparse.Namespace) -> bool:
    """True when this command runs on the --server instead of here."""
    from qcore.cli.remote import JOBS, command_name

    return bool(args.server) and (command_name(args) in JOBS or args.command == "report")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qlab` console script.

    Returns:
        0 on success, 2 on bad input (one line on stderr, no traceback).
    """
    from qcore import quiet

    parser = build_parser()
    args = parser.parse_args(argv)
    # before any handler imports TensorFlow
    quiet.set_log_env(args.verbose)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=quiet.CurrentStderr(),  # type: ignore[arg-type]
    )
    quiet.quiet_python_logs(args.verbose)
    handler: Handler = args.handler
    args.stdout_text = []
    try:
        if _remote(args):
            # a thin HTTP client: no engine work, so nothing native can print; it prints its own result
            from qcore.cli.remote import run

            return run(args, args.server)
        with quiet.native_output(verbose=args.verbose):
            code = handler(args)
        for text in args.stdout_text:
            print(text)
        sys.stdout.flush()
        return code
    except QlabError as exc:
        print(f"qlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

