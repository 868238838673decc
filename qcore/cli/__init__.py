"""The `qlab` command line: every engine capability, JSON on request, exit 2 on bad input.

One module per command group: `convert` (convert, evaluate, inspect, bench, demo), `explain` (qat,
debug, compare-tensors, tune, repair), `boards` (board …), `lab` (list, jobs, op-cost, export-node-data,
import-tflite), `reports` (report make|push), `backups` (backup, restore); `common` holds what they share. With `--server`,
`remote` runs a command as a job on a team server through `client`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from qcore.cli import backups, boards, convert, explain, lab, local, remote, reports
from qcore.cli.common import EXIT_BAD_INPUT, Handler
from qcore.cli.run import RUN_HERE, command_name
from qcore.qtyping import QlabError
from qcore.store.files import disk_words, is_disk_error

# what `--server` runs on the server (qcore.cli.remote.REMOTE_COMMANDS); a test checks the two agree
SERVER_HELP = ("run convert, debug, tune, repair, qat, compare-tensors, bench, board bench|accuracy, list, report "
               "make|push and backup on this qlab server (default: $QLAB_SERVER)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlab",
        description="Quantize Keras models to TFLite, measure, explain and time them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--server", default=os.environ.get("QLAB_SERVER") or None, metavar="URL", help=SERVER_HELP)
    parser.add_argument("--token-file", dest="server_token_file", metavar="FILE",
                        help="the server's API token (default: $QLAB_TOKEN)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (convert, explain, boards, lab, reports, backups):
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qlab` console script.

    Returns:
        0 on success, 1 when some parts failed (the rest is stored), 2 on bad input (one line on
        stderr, no traceback), 130 on Ctrl-C.
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
    args.stdout_text = []
    try:
        if args.server and remote.runs_remotely(args):
            # a thin HTTP client: no engine work, so nothing native can print
            code = remote.run(args, args.server)
        else:
            if args.server:
                remote.note_local(args)
            # a job command runs in this process the way the server runs it; the others are handlers
            handler: Handler = local.run if command_name(args) in RUN_HERE else args.handler
            with quiet.native_output(verbose=args.verbose):
                code = handler(args)
        for text in args.stdout_text:
            print(text)
        sys.stdout.flush()
        return code
    except QlabError as exc:
        print(f"qlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        print(f"qlab {args.command}: error: {disk_words(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
