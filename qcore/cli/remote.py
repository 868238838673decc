"""`qlab --server URL …`: the CLI's commands run as jobs on a team server, with the params local mode would use.

Each job command uploads its inputs, then builds its job's params dataclass with the same function
local mode will use (`convert_params`, `debug_params`, …) and sends `params_json` of it. Options that
no job field takes are either honoured here once the job is done (`HONOURED`) or listed with the
reason they cannot be (`LOCAL_ONLY`); tests/qcore/test_cli_remote.py walks the parser and fails on
any other.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcore.cli.boards import board_accuracy_params, board_bench_params
from qcore.cli.client import Bar, Remote, read_token
from qcore.cli.common import EXIT_OK, EXIT_PARTIAL, variant_ids
from qcore.cli.convert import convert_params, host_bench_params
from qcore.cli.explain import compare_tensors_params, debug_params, qat_params, tune_params
from qcore.cli.lab import list_document, list_text
from qcore.jobs.contract import (
    BoardAccuracyParams,
    BoardBenchParams,
    CompareTensorsParams,
    ConvertParams,
    DebugParams,
    HostBenchParams,
    JobKind,
    QatParams,
    SelectiveParams,
    TuneParams,
    kind_of,
)
from qcore.serialize import to_json


# ---------------------------------------------------------------- inputs → params
def _model_and_data(remote: Remote, args: argparse.Namespace) -> tuple[int, int]:
    """Uploads the model and the data (with its preprocessing); their server ids."""
    model_id = remote.model(args.model)
    return model_id, _data(remote, args, model_id)


def _data(remote: Remote, args: argparse.Namespace, model_id: int | None = None) -> int:
    return remote.dataset(args.data, input_scale=args.input_scale, input_offset=args.input_offset,
                          model_id=model_id)


def _convert(remote: Remote, args: argparse.Namespace) -> ConvertParams:
    return convert_params(args, *_model_and_data(remote, args))


def _debug(remote: Remote, args: argparse.Namespace) -> DebugParams | SelectiveParams:
    debug_params(args, 0, 0)  # refuse a bad combination before anything is uploaded
    return debug_params(args, *_model_and_data(remote, args))


def _tune(remote: Remote, args: argparse.Namespace) -> TuneParams:
    return tune_params(args, *_model_and_data(remote, args))


def _qat(remote: Remote, args: argparse.Namespace) -> QatParams:
    return qat_params(args, *_model_and_data(remote, args))


def _compare_tensors(remote: Remote, args: argparse.Namespace) -> CompareTensorsParams:
    compare_tensors_params(args, 0, 0, None)  # refuse bad counts before anything is uploaded
    dataset_id = _data(remote, args)
    # a .tflite new to the server is imported with this data, so the job compares on it either way
    return compare_tensors_params(args, remote.variant(args.float_tflite, dataset_id=dataset_id),
                                  remote.variant(args.quant_tflite, dataset_id=dataset_id), dataset_id)


def _bench(remote: Remote, args: argparse.Namespace) -> HostBenchParams:
    return host_bench_params(args, remote.variant(args.tflite))


def _board_bench(remote: Remote, args: argparse.Namespace) -> BoardBenchParams:
    board_bench_params(args, 0)  # refuse a bad --target before anything is uploaded
    return board_bench_params(args, remote.variant(args.tflite))


def _board_accuracy(remote: Remote, args: argparse.Namespace) -> BoardAccuracyParams:
    board_accuracy_params(args, 0, None)  # refuse a bad --target before anything is uploaded
    dataset_id = _data(remote, args)
    return board_accuracy_params(args, remote.variant(args.tflite, dataset_id=dataset_id), dataset_id)


# ---------------------------------------------------------------- output options, once the job is done
def _no_outputs(remote: Remote, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    return []


def _convert_outputs(remote: Remote, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--out DIR: each variant's .tflite as DIR/<variant>.tflite, the names local convert writes."""
    if not args.out:
        return []
    ok = [v for v in result.get("variants", []) if v.get("status") == "ok" and v.get("variant_id")]
    if not ok:
        return []
    query = f"?model_id={int(result['model_id'])}" if result.get("model_id") else ""
    rows = {int(r["variant_id"]): r for r in remote.call("GET", f"/variants{query}")}
    out = []
    for v in ok:
        name = str(rows[int(v["variant_id"])]["variant"]).replace("@", "-")  # as qcore.lab.convert names files
        out.append(remote.download_variant(int(v["variant_id"]), Path(args.out) / f"{name}.tflite"))
    return out


def _qat_outputs(remote: Remote, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--out FILE: the QAT variant's .tflite."""
    if not args.out or not result.get("variant_id"):
        return []
    return [remote.download_variant(int(result["variant_id"]), Path(args.out))]


def _tune_outputs(remote: Remote, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--out DIR: the chosen variant as DIR/<model>-tune.tflite, the name local tune writes."""
    if not args.out or not result.get("chosen_variant_id"):
        return []
    stem = Path(args.model).stem or Path(args.model).name
    return [remote.download_variant(int(result["chosen_variant_id"]), Path(args.out) / f"{stem}-tune.tflite")]


def _debug_outputs(remote: Remote, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--selective-out FILE: the selective variant's .tflite."""
    if not args.selective_out or not result.get("selective_variant_id"):
        return []
    return [remote.download_variant(int(result["selective_variant_id"]), Path(args.selective_out))]


@dataclass(frozen=True)
class RemoteJob:
    """How one command runs as a job: `params` uploads its inputs and builds the job's params dataclass;
    `outputs` honours its output options from the finished job's result (the files it wrote)."""

    params: Callable[[Remote, argparse.Namespace], Any]
    outputs: Callable[[Remote, argparse.Namespace, dict[str, Any]], list[Path]] = _no_outputs


# command (and board action) → how it runs as a job
JOBS: dict[str, RemoteJob] = {
    "convert": RemoteJob(_convert, _convert_outputs),
    "debug": RemoteJob(_debug, _debug_outputs),
    "tune": RemoteJob(_tune, _tune_outputs),
    "qat": RemoteJob(_qat, _qat_outputs),
    "compare-tensors": RemoteJob(_compare_tensors),
    "bench": RemoteJob(_bench),
    "board bench": RemoteJob(_board_bench),
    "board accuracy": RemoteJob(_board_accuracy),
}
# commands that run on the server through its API without being a job
API_COMMANDS = ("list", "report make", "report push")
REMOTE_COMMANDS = (*JOBS, *API_COMMANDS)

# commands that run on this machine even with --server, and why
LOCAL_COMMANDS: dict[str, str] = {
    "evaluate": "it reads local files only",
    "inspect": "it reads a local file only",
    "demo": "it writes the demo model and data here",
    "jobs": "the API has no job list yet; it lists this machine's store (--db)",
    "import-tflite": "it imports into this machine's store; `--server` imports a .tflite as part of a job",
    "op-cost": "it reads this machine's store (--db)",
    "export-node-data": "it reads this machine's store (--db)",
    "board add": "boards are registered in this machine's store (--db)",
    "board list": "it checks the boards of this machine's store (--db)",
    "board label": "it labels boards of this machine's store (--db)",
    "board history": "it reads this machine's store (--db)",
    "board matrix": "the API has no matrix job yet; it runs on this machine's boards and store (--db)",
}

_SERVER_STORE = "the server keeps every result in its own store"
# (command, option) → why a remote job cannot honour it; "*" is every remote command
LOCAL_ONLY: dict[tuple[str, str], str] = {
    ("convert", "--db"): _SERVER_STORE,
    ("debug", "--db"): _SERVER_STORE,
    ("tune", "--db"): _SERVER_STORE,
    ("qat", "--db"): _SERVER_STORE,
    ("bench", "--db"): _SERVER_STORE,
    ("board bench", "--db"): _SERVER_STORE,
    ("board accuracy", "--db"): _SERVER_STORE,
    ("report make", "--db"): _SERVER_STORE,
    ("list", "--db"): "it lists the server's store",
    ("debug", "--out"): "the statistics CSV holds the debugger's in-memory columns; on a server read the run's "
                        "layers from GET /api/v1/debug_runs/{id}/layers (the job's debug_run_id)",
    ("debug", "--model-explorer-out"): "AEQ writes those files on the worker, in a folder gone when the job ends",
}
# (command, option) → how the remote mode honours it itself; "*" is every remote command
HONOURED: dict[tuple[str, str], str] = {
    ("*", "--json"): "prints the job's result (or the API's answer) as one JSON document",
    ("convert", "--out"): "downloads each variant's .tflite to OUT/<variant>.tflite",
    ("qat", "--out"): "downloads the QAT variant's .tflite to OUT",
    ("tune", "--out"): "downloads the chosen variant's .tflite to OUT/<model>-tune.tflite",
    ("debug", "--selective-out"): "downloads the selective variant's .tflite to SELECTIVE_OUT",
    ("list", "--model"): "filters the server's models as local mode filters the store's",
    ("report make", "--title"): "sent in the report request",
    ("report make", "--variants"): "sent in the report request",
    ("report make", "--notes"): "sent in the report request",
    ("report push", "report_id"): "the local report whose bundle is pushed",
    ("report push", "--db"): "the local store the report is read from",
}


def command_name(args: argparse.Namespace) -> str:
    """The command as the tables name it: "convert", "board bench", "report make"."""
    sub = getattr(args, "board_command", None) or getattr(args, "report_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def runs_remotely(args: argparse.Namespace) -> bool:
    """True when this command runs on the --server instead of here."""
    return bool(args.server) and command_name(args) in REMOTE_COMMANDS


def note_local(args: argparse.Namespace) -> None:
    """Says on stderr that a command given --server runs here, and why."""
    name = command_name(args)
    why = LOCAL_COMMANDS.get(name, "it has no server form")
    print(f"qlab {name}: runs on this machine, not on --server: {why}", file=sys.stderr)


def _partial(kind: JobKind, result: dict[str, Any]) -> bool:
    """True when a job finished with some parts failed (local mode's exit 1)."""
    if kind == JobKind.CONVERT:
        return any(v.get("status") != "ok" for v in result.get("variants", []))
    if kind == JobKind.BOARD_BENCH:
        return any(r.get("failed") for r in result.get("results", []))
    if kind == JobKind.BOARD_ACCURACY:
        return any(r.get("status") == "failed" for r in result.get("results", []))
    return False


def run(args: argparse.Namespace, server: str) -> int:
    """Runs one CLI command on the server (as a job, or an API call) and prints its result like local mode.

    Raises:
        QlabError: bad input the server refused, a failed job, or an unreachable server.
    """
    name = command_name(args)
    remote = Remote(server, read_token(getattr(args, "server_token_file", None)))
    try:
        if name == "report push":
            return _report_push(remote, args)
        if name == "report make":
            return _report_make(remote, args)
        if name == "list":
            return _list(remote, args)
        job = JOBS[name]
        params = job.params(remote, args)
        kind = kind_of(params)
        job_id = remote.submit(params)
        bar = Bar(f"job {job_id} {kind}")
        try:
            state = remote.follow(job_id, bar, announce=f"queued job {job_id} ({kind}) on {server}")
        finally:
            bar.done()
        result = state.get("result") or {}
        for path in job.outputs(remote, args, result):
            print(f"qlab {name}: wrote {path}", file=sys.stderr)
        if getattr(args, "json", False):
            print(to_json(result, indent=2))
        else:
            print(f"job {job_id} ({kind}) done on {server}")
            print(to_json(result, indent=2))
        return EXIT_PARTIAL if _partial(kind, result) else EXIT_OK
    finally:
        remote.close()


def _list(remote: Remote, args: argparse.Namespace) -> int:
    doc = list_document(remote.call("GET", "/models"), remote.call("GET", "/variants"), args.model)
    print(to_json(doc, indent=2) if args.json else list_text(doc))
    return EXIT_OK


def _report_make(remote: Remote, args: argparse.Namespace) -> int:
    result = remote.call("POST", "/reports", json={"title": args.title, "notes": args.notes,
                                                   "variant_ids": variant_ids(args.variants)})
    print(to_json(result, indent=2) if args.json else f"report {result['id']}: {result['url']}")
    return EXIT_OK


def _report_push(remote: Remote, args: argparse.Namespace) -> int:
    from qcore import defaults
    from qcore.lab.reports import export_bundle
    from qcore.store import Store

    with Store(Path(args.db) if args.db else defaults.db_path()) as store:
        bundle = export_bundle(store, args.report_id)
    result = remote.call("POST", "/reports/import", files={"file": (f"{args.report_id}.zip", bundle)}, timeout=600)
    print(to_json(result, indent=2) if args.json else f"pushed report {args.report_id}: {result['url']}")
    return EXIT_OK
