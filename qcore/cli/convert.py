"""`qlab convert`, `evaluate`, `inspect`, `bench`, `demo`: make variants of a Keras model and measure .tflite files."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qcore import defaults
from qcore.cli.common import (
    EXIT_OK,
    Subparsers,
    add_common,
    add_engine,
    add_preprocessing,
    emit,
    load_data_arg,
    names,
    read_tflite,
    tflite_input_shape,
)
from qcore.jobs.contract import ConvertParams, HostBenchParams


def add_commands(sub: Subparsers) -> None:
    """`convert`, `evaluate`, `inspect`, `bench`, `demo`."""
    p = sub.add_parser("convert", help="convert a Keras model with post-training recipes, evaluate, store")
    p.add_argument("model", help="a .keras, .h5, SavedModel directory, or 'demo'")
    p.add_argument("--data", required=True, help="a .npz (x_train, y_train, x_test, y_test), image folder/.zip, or 'digits'")
    p.add_argument("--recipes", default="all", help="'all' or a comma-separated list of recipe names")
    p.add_argument("--out", help="also write each variant's .tflite as OUT/<variant>.tflite")
    add_preprocessing(p)
    p.add_argument("--calibration-samples", type=int, default=defaults.CALIBRATION_SAMPLES,
                   help=f"first N training samples (default {defaults.CALIBRATION_SAMPLES})")
    add_engine(p, "tf: the TF converter, what users deploy with (default); aeq: AI Edge Quantizer, "
               "calibrated once for all recipes")
    add_common(p)

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
    add_common(p)

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


# ---------------------------------------------------------------- what the job commands print
def _num(value: Any, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def convert_text(doc: dict[str, Any], args: argparse.Namespace) -> str:
    """`qlab convert` without --json: one line per variant, from the job's document."""
    lines = [f"{doc['model']} (model #{doc['model_id']}): float accuracy {_num(doc.get('float_accuracy'))} "
             f"(engine {doc.get('engine')})"]
    for v in doc.get("variants", []):
        if v.get("status") == "ok":
            lines.append(f"  #{v['variant_id']:<5} {v['name']:<22} acc {_num(v.get('accuracy'))}  top5 "
                         f"{_num(v.get('top5'))}  agree {_num(v.get('agreement'))}  {v.get('size_bytes') or 0:>9} B  "
                         f"{v.get('input_dtype')}->{v.get('output_dtype')}  {v.get('npu') or ''}")
        else:
            lines.append(f"  #{v.get('variant_id') or '-':<5} {v['name']:<22} FAILED: {v.get('error')}")
    return "\n".join(lines)


def bench_text(doc: dict[str, Any], args: argparse.Namespace) -> str:
    """`qlab bench` without --json: the timing of the file."""
    t = (doc.get("timings") or [{}])[0]
    return (f"{args.tflite}: {t.get('threads')} thread(s), XNNPACK {'on' if t.get('xnnpack') else 'off'}\n"
            f"  init {_num(t.get('init_ms'), '.3f')} ms, first inference {_num(t.get('first_ms'), '.3f')} ms\n"
            f"  {t.get('runs')} runs: min {_num(t.get('min_ms'), '.3f')}  mean {_num(t.get('mean_ms'), '.3f')}  "
            f"p50 {_num(t.get('p50_ms'), '.3f')}  p90 {_num(t.get('p90_ms'), '.3f')}  p99 {_num(t.get('p99_ms'), '.3f')}"
            f"  std {_num(t.get('std_ms'), '.3f')} ms")


# ---------------------------------------------------------------- handlers
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from qcore.inputs.models import write_demo

    model_path, data_path = write_demo(Path(args.out))
    emit(args, {"model": str(model_path), "data": str(data_path)},
         f"wrote {model_path} and {data_path}\ntry: qlab convert {model_path} --data {data_path}")
    return EXIT_OK
