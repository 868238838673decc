"""`qlab --server URL …`: the CLI's job commands run on a team server, the way they run here.

A job command runs through `qcore.cli.run` with the server's REST client as its lab: the same params
dataclass local mode builds is sent as `params_json`, and the job's result is the same document local
mode prints. Options that no job field takes are either honoured once the job is done (`HONOURED`) or
listed with the reason they cannot be (`LOCAL_ONLY`); tests/qcore/test_cli_remote.py walks the parser
and fails on any other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcore.cli.backups import backup_from_server
from qcore.cli.client import Bar, Remote, read_token
from qcore.cli.common import EXIT_OK, variant_ids
from qcore.cli.lab import list_document, list_text
from qcore.cli.run import JOBS, command_name, run_command
from qcore.serialize import to_json

# commands that run on the server through its API without being a job
API_COMMANDS = ("list", "report make", "report push", "backup")
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
    "restore": "it replaces this machine's lab files, which no server may hold while it runs",
}

_SERVER_STORE = "the server keeps every result in its own store"
# (command, option) → why a remote job cannot honour it; "*" is every remote command
LOCAL_ONLY: dict[tuple[str, str], str] = {
    ("convert", "--db"): _SERVER_STORE,
    ("debug", "--db"): _SERVER_STORE,
    ("tune", "--db"): _SERVER_STORE,
    ("qat", "--db"): _SERVER_STORE,
    ("repair", "--db"): _SERVER_STORE,
    ("bench", "--db"): _SERVER_STORE,
    ("compare-tensors", "--db"): _SERVER_STORE,
    ("board bench", "--db"): _SERVER_STORE,
    ("board accuracy", "--db"): _SERVER_STORE,
    ("report make", "--db"): _SERVER_STORE,
    ("list", "--db"): "it lists the server's store",
    ("backup", "--db"): "the server backs up its own store",
    ("backup", "--data-dir"): "the server backs up its own data directory",
    ("debug", "--model-explorer-out"): "AEQ writes those files on the worker, in a folder gone when the job ends",
}
# (command, option) → how the remote mode honours it itself; "*" is every remote command
HONOURED: dict[tuple[str, str], str] = {
    ("*", "--json"): "prints the job's result (or the API's answer) as one JSON document",
    ("convert", "--out"): "downloads each variant's .tflite to OUT/<variant>.tflite",
    ("qat", "--out"): "downloads the QAT variant's .tflite to OUT",
    ("tune", "--out"): "downloads the chosen variant's .tflite to OUT/<model>-tune.tflite",
    ("repair", "--out"): "downloads the repaired variant's .tflite to OUT",
    ("debug", "--selective-out"): "downloads the selective variant's .tflite to SELECTIVE_OUT",
    ("debug", "--out"): "writes the job's per-layer table as CSV",
    ("list", "--model"): "filters the server's models as local mode filters the store's",
    ("report make", "--title"): "sent in the report request",
    ("report make", "--variants"): "sent in the report request",
    ("report make", "--notes"): "sent in the report request",
    ("report push", "report_id"): "the local report whose bundle is pushed",
    ("report push", "--db"): "the local store the report is read from",
    ("backup", "dir"): "the server's backup is downloaded and unpacked into DIR",
}


def runs_remotely(args: argparse.Namespace) -> bool:
    """True when this command runs on the --server instead of here."""
    return bool(args.server) and command_name(args) in REMOTE_COMMANDS


def note_local(args: argparse.Namespace) -> None:
    """Says on stderr that a command given --server runs here, and why."""
    name = command_name(args)
    why = LOCAL_COMMANDS.get(name, "it has no server form")
    print(f"qlab {name}: runs on this machine, not on --server: {why}", file=sys.stderr)


def run(args: argparse.Namespace, server: str) -> int:
    """Runs one CLI command on the server (as a job, or an API call) and prints what local mode prints.

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
        if name == "backup":
            return backup_from_server(args, remote)
        bar = Bar(f"{name} on {server}")
        try:
            return run_command(args, remote, where=f" on {server}", progress=bar)
        finally:
            bar.done()
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
