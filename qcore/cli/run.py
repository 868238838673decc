"""How the job commands run: here (`qcore.cli.local.LocalLab`) or on a server (`qcore.cli.client.Remote`), alike.

A job command uploads (or registers) its inputs, builds its job's params dataclass with one function
(`convert_params`, `debug_params`, …), runs the job, honours its output options from the job's
result, and prints that result. Locally the job runs in this process and its value is published in
the `--db` store; with `--server` it runs on the team's workers. Both print the same document
(`qcore.lab.documents`), because both publish the same value.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qcore.cli.boards import board_accuracy_params, board_bench_params
from qcore.cli.common import EXIT_OK, EXIT_PARTIAL, emit
from qcore.cli.convert import bench_text, convert_params, convert_text, host_bench_params
from qcore.cli.explain import (
    compare_tensors_params,
    compare_text,
    debug_params,
    debug_text,
    qat_params,
    qat_text,
    repair_params,
    repair_text,
    tune_params,
    tune_text,
)
from qcore.jobs.contract import (
    BoardAccuracyParams,
    BoardBenchParams,
    CompareTensorsParams,
    ConvertParams,
    DebugParams,
    HostBenchParams,
    JobKind,
    QatParams,
    RepairParams,
    SelectiveParams,
    TuneParams,
    kind_of,
)
from qcore.serialize import to_json


class Lab(Protocol):
    """Where a job command runs: the server's REST client, or this process with a local store."""

    def model(self, spec: str, name: str = "") -> int: ...

    def dataset(self, spec: str, *, input_scale: float, input_offset: float, model_id: int | None) -> int: ...

    def variant(self, spec: str, *, dataset_id: int | None = None, runnable: bool = False) -> int: ...

    def download_variant(self, variant_id: int, path: Path) -> Path: ...

    def submit(self, params: Any) -> int: ...

    def follow(self, job_id: int, progress: Callable[[float, str], None] | None = None,
               announce: str = "") -> dict[str, Any]: ...


# ---------------------------------------------------------------- inputs → params
def _model_and_data(lab: Lab, args: argparse.Namespace) -> tuple[int, int]:
    """Uploads (or registers) the model and the data with its preprocessing; their ids."""
    model_id = lab.model(args.model)
    return model_id, _data(lab, args, model_id)


def _data(lab: Lab, args: argparse.Namespace, model_id: int | None = None) -> int:
    return lab.dataset(args.data, input_scale=args.input_scale, input_offset=args.input_offset, model_id=model_id)


def _convert(lab: Lab, args: argparse.Namespace) -> ConvertParams:
    return convert_params(args, *_model_and_data(lab, args))


def _debug(lab: Lab, args: argparse.Namespace) -> DebugParams | SelectiveParams:
    debug_params(args, 0, 0)  # refuse a bad combination before anything is uploaded
    return debug_params(args, *_model_and_data(lab, args))


def _tune(lab: Lab, args: argparse.Namespace) -> TuneParams:
    return tune_params(args, *_model_and_data(lab, args))


def _repair(lab: Lab, args: argparse.Namespace) -> RepairParams:
    repair_params(args, 0, 0)  # refuse a bad method, recipe or count before anything is uploaded
    return repair_params(args, *_model_and_data(lab, args))


def _qat(lab: Lab, args: argparse.Namespace) -> QatParams:
    return qat_params(args, *_model_and_data(lab, args))


def _compare_tensors(lab: Lab, args: argparse.Namespace) -> CompareTensorsParams:
    compare_tensors_params(args, 0, 0, None)  # refuse bad counts before anything is uploaded
    dataset_id = _data(lab, args)
    # a .tflite new to the lab is imported with this data, so the job compares on it either way
    return compare_tensors_params(args, lab.variant(args.float_tflite, dataset_id=dataset_id, runnable=True),
                                  lab.variant(args.quant_tflite, dataset_id=dataset_id, runnable=True), dataset_id)


def _bench(lab: Lab, args: argparse.Namespace) -> HostBenchParams:
    return host_bench_params(args, lab.variant(args.tflite, runnable=True))


def _board_bench(lab: Lab, args: argparse.Namespace) -> BoardBenchParams:
    board_bench_params(args, 0)  # refuse a bad --target before anything is uploaded
    return board_bench_params(args, lab.variant(args.tflite))


def _board_accuracy(lab: Lab, args: argparse.Namespace) -> BoardAccuracyParams:
    board_accuracy_params(args, 0, None)  # refuse a bad --target before anything is uploaded
    dataset_id = _data(lab, args)
    return board_accuracy_params(args, lab.variant(args.tflite, dataset_id=dataset_id), dataset_id)


# ---------------------------------------------------------------- output options, once the job is done
def _no_outputs(lab: Lab, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    return []


def file_name(variant: str) -> str:
    """A variant's .tflite file name: its name with the engine's '@' (int8@aeq) as '-' (int8-aeq.tflite)."""
    return variant.replace("@", "-").replace("/", "-") + ".tflite"


def _convert_outputs(lab: Lab, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--out DIR: each variant's .tflite as DIR/<variant>.tflite."""
    if not args.out:
        return []
    return [lab.download_variant(int(v["variant_id"]), Path(args.out) / file_name(str(v["name"])))
            for v in result.get("variants", []) if v.get("status") == "ok" and v.get("variant_id")]


def _qat_outputs(lab: Lab, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--out FILE: the QAT variant's .tflite."""
    if not args.out or not result.get("variant_id"):
        return []
    return [lab.download_variant(int(result["variant_id"]), Path(args.out))]


def _repair_outputs(lab: Lab, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--out FILE: the repaired variant's .tflite."""
    if not args.out or not result.get("variant_id"):
        return []
    return [lab.download_variant(int(result["variant_id"]), Path(args.out))]


def _tune_outputs(lab: Lab, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--out DIR: the chosen variant as DIR/<model>-tune.tflite."""
    if not args.out or not result.get("chosen_variant_id"):
        return []
    stem = Path(args.model).stem or Path(args.model).name
    return [lab.download_variant(int(result["chosen_variant_id"]), Path(args.out) / f"{stem}-tune.tflite")]


def _debug_outputs(lab: Lab, args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    """--selective-out FILE: the selective variant's .tflite; --out FILE: the per-layer table as CSV;
    --model-explorer-out DIR: AEQ's comparison files (only where the run was made: this process)."""
    written = []
    selective = result.get("selective") or {}
    if args.selective_out and selective.get("variant_id"):
        written.append(lab.download_variant(int(selective["variant_id"]), Path(args.selective_out)))
    if getattr(args, "out", None):
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stats_csv(result))
        written.append(path)
    if getattr(args, "model_explorer_out", None):
        written += lab.export_model_explorer(args.model_explorer_out)  # type: ignore[attr-defined]
    return written


def stats_csv(result: dict[str, Any]) -> str:
    """A debug result's per-layer table as CSV: the engine's own columns, in its order, then range and rmse_scale."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = list(result.get("columns") or [])
    writer.writerow([*columns, "range", "rmse_scale"])
    for layer in result.get("layers") or []:
        values = {**layer, **(layer.get("extra") or {})}
        writer.writerow([_cell(c, values.get(c)) for c in (*columns, "range", "rmse_scale")])
    return buf.getvalue()


def _cell(column: str, value: Any) -> str:
    if value is None:  # JSON has no NaN: a figure that could not be computed
        return "nan"
    if column == "zero_point" and isinstance(value, float) and value.is_integer():
        return str(int(value))  # zero points are integers in the debugger's dump
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    return str(value)


@dataclass(frozen=True)
class JobCommand:
    """One command as a job: `params` uploads its inputs and builds the params dataclass; `outputs`
    honours its output options from the finished job's result (the files it wrote); `text` is what it
    prints without --json."""

    params: Callable[[Lab, argparse.Namespace], Any]
    text: Callable[[dict[str, Any], argparse.Namespace], str]
    outputs: Callable[[Lab, argparse.Namespace, dict[str, Any]], list[Path]] = _no_outputs


def _json_text(result: dict[str, Any], args: argparse.Namespace) -> str:
    return to_json(result, indent=2)


# command (and board action) → how it runs as a job
JOBS: dict[str, JobCommand] = {
    "convert": JobCommand(_convert, convert_text, _convert_outputs),
    "debug": JobCommand(_debug, debug_text, _debug_outputs),
    "tune": JobCommand(_tune, tune_text, _tune_outputs),
    "qat": JobCommand(_qat, qat_text, _qat_outputs),
    "repair": JobCommand(_repair, repair_text, _repair_outputs),
    "compare-tensors": JobCommand(_compare_tensors, compare_text),
    "bench": JobCommand(_bench, bench_text),
    "board bench": JobCommand(_board_bench, _json_text),
    "board accuracy": JobCommand(_board_accuracy, _json_text),
}


# the job commands whose local mode is their job too (the board commands keep their own local handlers,
# which print each target's timing and profile as the agent sends them)
RUN_HERE = ("convert", "debug", "tune", "qat", "compare-tensors", "bench", "repair")


def command_name(args: argparse.Namespace) -> str:
    """The command as the tables name it: "convert", "board bench", "report make"."""
    sub = getattr(args, "board_command", None) or getattr(args, "report_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def partial(kind: JobKind, result: dict[str, Any]) -> bool:
    """True when a job finished with some parts failed (exit 1: the rest is stored)."""
    if kind == JobKind.CONVERT:
        return any(v.get("status") != "ok" for v in result.get("variants", []))
    if kind == JobKind.BOARD_BENCH:
        return any(r.get("failed") for r in result.get("results", []))
    if kind == JobKind.BOARD_ACCURACY:
        return any(r.get("status") == "failed" for r in result.get("results", []))
    return False


def run_command(args: argparse.Namespace, lab: Lab, *, where: str = "",
                progress: Callable[[float, str], None] | None = None) -> int:
    """Runs one job command on `lab` and prints its result (the job's document, or its text).

    Raises:
        QlabError: bad input the lab refused, or a failed job.
    """
    name = command_name(args)
    job = JOBS[name]
    params = job.params(lab, args)
    kind = kind_of(params)
    job_id = lab.submit(params)
    state = lab.follow(job_id, progress, announce=f"queued job {job_id} ({kind}){where}" if where else "")
    result = state.get("result") or {}
    for path in job.outputs(lab, args, result):
        print(f"qlab {name}: wrote {path}", file=sys.stderr)
    if kind == JobKind.CONVERT:
        for v in result.get("variants", []):
            if v.get("status") != "ok":
                print(f"qlab convert: recipe {v.get('recipe')} failed: {v.get('error')}", file=sys.stderr)
    emit(args, result, "" if getattr(args, "json", False) else job.text(result, args))
    return EXIT_PARTIAL if partial(kind, result) else EXIT_OK
