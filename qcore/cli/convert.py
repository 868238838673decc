"""`qlab convert`, `evaluate`, `inspect`, `bench`, `demo`: make variants of a Keras model and measure .tflite files."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from qcore import defaults
from qcore.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
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
from qcore.jobs.contract import ConvertParams, HostBenchParams
from qcore.qtyping import QlabError


def add_commands(sub: Subparsers) -> None:
    """`convert`, `evaluate`, `inspect`, `bench`, `demo`."""
    p = sub.add_parser("convert", help="convert a Keras model with post-training recipes, evaluate, store")
    p.add_argument("model", help="a .keras, .h5, SavedModel directory, or 'demo'")
    p.add_argument("--data", required=True, help="a .npz (x_train, y_train, x_test, y_test), image folder/.zip, or 'digits'")
    p.add_argument("--recipes", default="all", help="'all' or a comma-separated list of recipe names")
    p.add_argument("--out", help="write <OUT>/<recipe>.tflite (default: qlab-out/<model name>; with --server: "
                   "only when given)")
    add_preprocessing(p)
    p.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES,
                   help=f"first N training samples (default {defaults.CALIBRATION_SAMPLES})")
    add_engine(p, "tf: the TF converter, what users deploy with (default); aeq: AI Edge Quantizer, "
               "calibrated once for all recipes")
    add_common(p)
    p.set_defaults(handler=_cmd_convert)

    p = sub.add_parser("evaluate", help="accuracy of a .tflite on a labelled test split")
    p.add_argument("tflite")
    p.add_argument("--data", required=True)
    add_preprocessing(p)
    add_common(p, db=False)
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser("inspect", help="ops, tensors, quantization and the i.MX8M Plus NPU lint of a .tflite")
    p.add_argument("tflite")
    add_common(p, db=False)
    p.set_defaults(handler=_cmd_inspect)

    p = sub.add_parser("bench", help="time a .tflite on this machine (with --server: on a worker)")
    p.add_argument("tflite")
    p.add_argument("--runs", type=int, default=defaults.BENCH_RUNS)
    p.add_argument("--warmup", type=int, default=defaults.BENCH_WARMUP)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only")
    p.add_argument("--db", help="also store the timing in this DuckDB file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser("demo", help="write the built-in demo model and its digits .npz")
    p.add_argument("--out", default="qlab-demo", help="folder (default: qlab-demo)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_demo)


# ---------------------------------------------------------------- as jobs
def convert_params(args: argparse.Namespace, model_id: int, dataset_id: int) -> ConvertParams:
    """`qlab convert`'s arguments as the convert job (`--out` is where the caller writes the files)."""
    return ConvertParams(model_id=model_id, dataset_id=dataset_id, recipes=tuple(names(args.recipes)),
                         calibration_samples=args.calibration_samples, engine=args.engine,
                         bench=False)  # `qlab bench` times; convert only converts and evaluates


def host_bench_params(args: argparse.Namespace, variant_id: int) -> HostBenchParams:
    """`qlab bench`'s arguments as the host_bench job."""
    return HostBenchParams(variant_ids=(variant_id,), runs=args.runs, warmup=args.warmup, threads=args.threads,
                           xnnpack=not args.no_xnnpack)


# ---------------------------------------------------------------- handlers
def _cmd_convert(args: argparse.Namespace) -> int:
    from qcore.lab.convert import convert_and_evaluate
    from qcore.recipes import resolve_recipes

    try:
        recipes = resolve_recipes(args.recipes, args.engine)
    except ValueError as exc:
        raise QlabError(str(exc)) from None
    model = load_model_arg(args.model)
    dataset = load_data_arg(args, model.input_shape)
    out = Path(args.out) if args.out else Path("qlab-out") / model.name
    with open_store(args) as store:
        report = convert_and_evaluate(
            model, dataset, recipes, store=store, out_dir=out, calibration_samples=args.calibration_samples,
            progress=log_progress, engine=args.engine,
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
    emit(args, payload, "\n".join(lines))
    failed = [v for v in report.variants if v.error]
    for v in failed:
        print(f"qlab convert: recipe {v.recipe} failed: {v.error}", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from qcore.tflite.evaluate import evaluate_tflite

    model = read_tflite(args.tflite)
    dataset = load_data_arg(args, tflite_input_shape(model))
    ev = evaluate_tflite(model, dataset)
    payload = {
        "model": args.tflite, "accuracy": ev.accuracy, "top5": ev.top5, "n_samples": ev.n_samples,
        "size_bytes": ev.size_bytes, "input_dtype": ev.input_dtype, "output_dtype": ev.output_dtype,
        "batched": ev.batched, "note": ev.note or None, "confusion": [list(r) for r in ev.confusion],
    }
    text = (f"{args.tflite}: accuracy {ev.accuracy:.4f}, top-5 {ev.top5:.4f} on {ev.n_samples} samples; "
            f"{ev.size_bytes} B, {ev.input_dtype} -> {ev.output_dtype}" + (f" ({ev.note})" if ev.note else ""))
    emit(args, payload, text)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
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
    emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from qcore.store import Store, sha256_bytes
    from qcore.tflite.latency import benchmark

    model = read_tflite(args.tflite)
    lat = benchmark(model, runs=args.runs, warmup=args.warmup, threads=args.threads, xnnpack=not args.no_xnnpack)
    if args.db:
        with Store(Path(args.db)) as store:
            sha = sha256_bytes(model)
            store.add_benchmark(lat, sha256=sha, variant_id=store.variant_id_for_sha(sha))
    text = (f"{args.tflite}: {lat.threads} thread(s), XNNPACK {'on' if lat.xnnpack else 'off'}\n"
            f"  init {lat.init_ms:.3f} ms, first inference {lat.first_ms:.3f} ms\n"
            f"  {lat.runs} runs: min {lat.min_ms:.3f}  mean {lat.mean_ms:.3f}  p50 {lat.p50_ms:.3f}  "
            f"p90 {lat.p90_ms:.3f}  p99 {lat.p99_ms:.3f}  std {lat.std_ms:.3f} ms")
    emit(args, asdict(lat), text)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from qcore.inputs.models import write_demo

    model_path, data_path = write_demo(Path(args.out))
    emit(args, {"model": str(model_path), "data": str(data_path)},
         f"wrote {model_path} and {data_path}\ntry: qlab convert {model_path} --data {data_path}")
    return EXIT_OK
