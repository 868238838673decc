"""`qlab --server URL …`: the CLI's commands run as jobs on a team server, printing what local mode prints."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qcore.cli.client import Bar, Remote, read_token
from qcore.qtyping import QlabError

log = logging.getLogger(__name__)

EXIT_OK = 0
# 1 = the job ran but some parts failed (a recipe refused, a board target failed), like local mode
EXIT_PARTIAL = 1


def _names(values: Any) -> list[str]:
    if isinstance(values, str):
        values = [values]
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def _inputs(remote: Remote, args: argparse.Namespace) -> tuple[int, int]:
    model_id = remote.model(args.model)
    dataset_id = remote.dataset(args.data, input_scale=args.input_scale, input_offset=args.input_offset,
                                model_id=model_id)
    return model_id, dataset_id


def _convert(remote: Remote, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    model_id, dataset_id = _inputs(remote, args)
    return "convert", {"model_id": model_id, "dataset_id": dataset_id, "recipes": _names(args.recipes),
                       "calibration_samples": args.calibration_samples, "bench": False}


def _debug(remote: Remote, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    model_id, dataset_id = _inputs(remote, args)
    nodes, ops = _names(args.denylist_nodes), _names(args.denylist_ops)
    common = {"model_id": model_id, "dataset_id": dataset_id, "recipe": args.recipe,
              "calibration_samples": args.calibration_samples, "debug_samples": args.debug_samples}
    if nodes or ops:
        return "selective", {**common, "denylisted_nodes": nodes, "denylisted_ops": ops}
    return "debug", {**common, "extra_metrics": _names([args.metrics]), "whole_model": args.whole_model}


def _tune(remote: Remote, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    model_id, dataset_id = _inputs(remote, args)
    return "tune", {"model_id": model_id, "dataset_id": dataset_id, "max_drop": args.max_drop, "recipe": args.recipe,
                    "calibration_samples": args.calibration_samples, "debug_samples": args.debug_samples}


def _qat(remote: Remote, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    model_id, dataset_id = _inputs(remote, args)
    return "qat", {"model_id": model_id, "dataset_id": dataset_id, "layers": _names([args.layers]),
                   "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                   "train_samples": args.train_samples or 0, "int_io": args.int_io,
                   "calibration_samples": args.calibration_samples}


def _compare_tensors(remote: Remote, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    return "compare_tensors", {"float_variant_id": remote.variant(args.float_tflite),
                               "quant_variant_id": remote.variant(args.quant_tflite), "samples": args.samples}


def _bench(remote: Remote, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    return "host_bench", {"variant_ids": [remote.variant(args.tflite)], "runs": args.runs, "warmup": args.warmup,
                          "threads": args.threads, "xnnpack": not args.no_xnnpack}


def _board_bench(remote: Remote, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    return "board_bench", {"board": args.name, "variant_ids": [remote.variant(args.tflite)],
                           "targets": _names([args.target]), "runs": args.runs, "warmup": args.warmup,
                           "threads": args.threads, "profile": args.profile}


def _board_accuracy(remote: Remote, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    target = args.target
    if target == "all":
        print("qlab board accuracy: with --server one target runs per job; using cpu (pass --target npu for the NPU)",
              file=sys.stderr)
        target = "cpu"
    return "board_accuracy", {"board": args.name, "variant_ids": [remote.variant(args.tflite)], "target": target,
                              "threads": args.threads}


# command (and board action) → how its arguments become a job
JOBS: dict[str, Callable[[Remote, argparse.Namespace], tuple[str, dict[str, Any]]]] = {
    "convert": _convert,
    "debug": _debug,
    "tune": _tune,
    "qat": _qat,
    "compare-tensors": _compare_tensors,
    "bench": _bench,
    "board bench": _board_bench,
    "board accuracy": _board_accuracy,
}


def command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "board_command", None) or getattr(args, "report_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def _partial(kind: str, result: dict[str, Any]) -> bool:
    """True when a job finished with some parts failed (local mode's exit 1)."""
    if kind == "convert":
        return any(v.get("status") != "ok" for v in result.get("variants", []))
    if kind == "board_bench":
        return any(r.get("failed") for r in result.get("results", []))
    return False


def run(args: argparse.Namespace, server: str) -> int:
    """Runs one CLI command on the server as a job and prints its result like local mode.

    Raises:
        QlabError: for a command that cannot run remotely, bad input the server refused, or a failed job.
    """
    from qcore.jobs.contract import to_json

    name = command_name(args)
    remote = Remote(server, read_token(getattr(args, "server_token_file", None)))
    try:
        if name == "report push":
            return _report_push(remote, args)
        if name == "report make":
            result = remote.call("POST", "/reports", json={"title": args.title, "notes": args.notes,
                                                           "variant_ids": [int(v) for v in _names([args.variants])]})
            print(to_json(result, indent=2) if args.json else f"report {result['id']}: {result['url']}")
            return EXIT_OK
        build = JOBS.get(name)
        if build is None:
            raise QlabError(f"`qlab {name}` runs only locally; with --server use one of: {', '.join(JOBS)}, "
                            "report make, report push")
        kind, params = build(remote, args)
        job_id = remote.submit(kind, params)
        bar = Bar(f"job {job_id} {kind}")
        try:
            job = remote.follow(job_id, bar, announce=f"queued job {job_id} ({kind}) on {server}")
        finally:
            bar.done()
        result = job.get("result") or {}
        if getattr(args, "json", False):
            print(to_json(result, indent=2))
        else:
            print(f"job {job_id} ({kind}) done on {server}")
            print(to_json(result, indent=2))
        return EXIT_PARTIAL if _partial(kind, result) else EXIT_OK
    finally:
        remote.close()


def _report_push(remote: Remote, args: argparse.Namespace) -> int:
    from qcore.jobs.contract import to_json
    from qcore.lab.reports import export_bundle
    from qcore.store import Store, default_db_path

    with Store(Path(args.db) if args.db else default_db_path()) as store:
        bundle = export_bundle(store, args.report_id)
    result = remote.call("POST", "/reports/import", files={"file": (f"{args.report_id}.zip", bundle)}, timeout=600)
    print(to_json(result, indent=2) if args.json else f"pushed report {args.report_id}: {result['url']}")
    return EXIT_OK
