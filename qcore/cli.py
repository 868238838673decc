"""The `qlab` command line: every engine capability, JSON on request, exit 2 on bad input."""

from __future__ import annotations

import argparse
import json
import logging
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
    """Prints JSON with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=_json_default))
    else:
        print(text)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


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


# ---------------------------------------------------------------- QAT / debugger / tune (issue 3)
def _add_explain_commands(sub: argparse._SubParsersAction) -> None:
    """`qat`, `debug`, `compare-tensors`, `tune`."""


# ---------------------------------------------------------------- boards (issue 4)
def _add_board_commands(sub: argparse._SubParsersAction) -> None:
    """`board add|list|bench|accuracy`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlab",
        description="Quantize Keras models to TFLite, measure, explain and time them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_engine_commands(sub)
    _add_explain_commands(sub)
    _add_board_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qlab` console script.

    Returns:
        0 on success, 2 on bad input (one line on stderr, no traceback).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except QlabError as exc:
        print(f"qlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
