"""`qlab report make|push`: a report of variants, made here or on a team server, and a local report sent to one."""

from __future__ import annotations

import argparse

from qcore.cli.common import EXIT_OK, Subparsers, add_common, emit, open_store, variant_ids
from qcore.qtyping import QlabError


def add_commands(sub: Subparsers) -> None:
    """`report make|push`."""
    report = sub.add_parser("report", help="make a report of variants; push a local report to a team server")
    rsub = report.add_subparsers(dest="report_command", required=True, metavar="ACTION")
    p = rsub.add_parser("make", help="a report of these variants (here, or on --server)")
    p.add_argument("--title", required=True)
    p.add_argument("--variants", required=True, help="comma-separated variant ids (`qlab list` shows them)")
    p.add_argument("--notes", default="", help="markdown")
    add_common(p)
    p.set_defaults(handler=_cmd_report_make)
    p = rsub.add_parser("push", help="send a local report's bundle to the --server so it joins the team's lab")
    p.add_argument("report_id")
    add_common(p)
    p.set_defaults(handler=_cmd_report_push)


def _cmd_report_make(args: argparse.Namespace) -> int:
    from qcore.lab.reports import make_report

    ids = variant_ids(args.variants)
    with open_store(args) as store:
        report_id = make_report(store, args.title, args.notes, ids)
    emit(args, {"id": report_id}, f"report {report_id} (open it on the dashboard with ?report={report_id})")
    return EXIT_OK


def _cmd_report_push(args: argparse.Namespace) -> int:
    raise QlabError("report push needs --server URL (or QLAB_SERVER)")
