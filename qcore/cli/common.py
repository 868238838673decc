"""What every `qlab` command shares: its flags, its one output on stdout, the store, and its inputs."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qcore import defaults
from qcore.engines import ENGINES
from qcore.qtyping import QlabError
from qcore.serialize import to_json

log = logging.getLogger(__name__)

EXIT_OK = 0
# 1 = the command ran but some parts failed (a recipe refused, a board target failed); the rest is stored
EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # argparse has no public name for it


def emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    """Queues JSON with --json, else the human text; `main` prints it on stdout once the engine is done.

    Handlers never print to stdout themselves: while they run, stdout belongs to no one (see
    `qcore.quiet.native_output`), so a library's print cannot break the one JSON document.
    The JSON goes through `to_json`, the one serializer (NaN and infinities become null), so job
    results, the API and the CLI print the same.
    """
    if getattr(args, "json", False):
        text = to_json(payload, indent=2)
    if hasattr(args, "stdout_text"):
        args.stdout_text.append(text)
    else:  # a handler called directly, outside main
        print(text)


def open_store(args: argparse.Namespace) -> Any:
    """The store of `--db` (default: $QLAB_DB or data/qlab.duckdb)."""
    from qcore import defaults
    from qcore.store import Store

    return Store(Path(args.db) if getattr(args, "db", None) else defaults.db_path())


def add_common(p: argparse.ArgumentParser, *, db: bool = True, json_flag: bool = True) -> None:
    """`--db` and `--json`, the flags most commands take."""
    if db:
        p.add_argument("--db", help="DuckDB file (default: $QLAB_DB or data/qlab.duckdb)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object")


def add_engine(p: argparse.ArgumentParser, text: str, *, flag: str = "--engine") -> None:
    """An engine choice (the registry's), defaulting to the one engine `qcore.defaults.ENGINE` names."""
    p.add_argument(flag, default=defaults.ENGINE, choices=tuple(ENGINES), help=text)


def add_preprocessing(p: argparse.ArgumentParser) -> None:
    """`--input-scale` and `--input-offset`: how the data becomes the model's float input."""
    p.add_argument("--input-scale", type=float, default=1.0, help="float_input = x * scale + offset (default 1)")
    p.add_argument("--input-offset", type=float, default=0.0, help="(default 0)")


def load_model_arg(spec: str) -> Any:
    """The LoadedModel of a MODEL argument ('demo' is the built-in demo CNN)."""
    from qcore.inputs.models import demo_model, load_model

    return demo_model() if spec == "demo" else load_model(spec)


def load_data_arg(args: argparse.Namespace, input_shape: Any = None) -> Any:
    """The Dataset of `--data` with `--input-scale`/`--input-offset`, checked against `input_shape`."""
    from qcore.inputs.data import load_dataset

    return load_dataset(
        args.data, input_scale=args.input_scale, input_offset=args.input_offset, input_shape=input_shape
    )


def read_tflite(path: str) -> bytes:
    """A .tflite to run: refused up front, naming the file and its ops, when LiteRT cannot run its custom ops."""
    from qcore.tflite.litert_io import check_runnable
    from qcore.tflite.litert_io import read_tflite as read

    data = read(path)
    check_runnable(data, path)
    return data


def tflite_input_shape(model: bytes) -> tuple[int | None, ...]:
    """A .tflite's input shape with the batch left open, for loading data that fits it."""
    from qcore.tflite.litert_io import make_interpreter

    shape = tuple(int(d) for d in make_interpreter(model).get_input_details()[0]["shape"])
    return (None, *shape[1:])


def log_progress(fraction: float, message: str) -> None:
    """The engine's progress callback: INFO lines, shown with -v."""
    log.info("[%3.0f%%] %s", fraction * 100, message)


def names(values: str | Sequence[str] | None) -> list[str]:
    """Comma-separated, repeatable option values as one list."""
    if isinstance(values, str):
        values = [values]
    return [n.strip() for v in values or () for n in v.split(",") if n.strip()]


def variant_ids(text: str, option: str = "--variants") -> list[int]:
    """Comma-separated variant ids.

    Raises:
        QlabError: for anything but integers, naming the option.
    """
    try:
        return [int(v) for v in names(text)]
    except ValueError:
        raise QlabError(f"{option} {text!r}: give comma-separated variant ids, e.g. 3,4,7") from None
