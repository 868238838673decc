"""The CLI's own process as the lab: inputs registered in the `--db` store, jobs run here, values published here.

It answers what `qcore.cli.run` asks of a lab exactly as the server's REST client does, so a command
prints the same document locally and with `--server`: the same params dataclass goes through the same
task (`qcore.jobs.tasks`), and the value it returns is published and described the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qcore import defaults
from qcore.cli.common import log_progress, open_store
from qcore.cli.run import Lab, run_command
from qcore.engines import aeq
from qcore.inputs.data import dataset_record, load_dataset
from qcore.inputs.models import demo_model, load_model, model_record
from qcore.inputs.summary import loaded_summary
from qcore.jobs.boards import OWNER_TASKS
from qcore.jobs.contract import ImportTfliteParams, JobSpec, kind_of
from qcore.jobs.inputs import gather_inputs
from qcore.jobs.tasks import remember_model, run_task
from qcore.lab.documents import document
from qcore.lab.publish import publish
from qcore.qtyping import DebugResult, QlabError
from qcore.serialize import to_json
from qcore.store import Store
from qcore.tflite.litert_io import check_runnable, read_tflite


class LocalLab:
    """A lab in this process: the store of `--db`, the data directory beside it, jobs run inline.

    Args:
        store: the owner's store (this process opened it).
        data_dir: where files a job keeps go (the demo model).
    """

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir
        self._queued: dict[int, Any] = {}
        self._input_shapes: dict[int, tuple[int | None, ...]] = {}
        self.value: Any = None  # the last published value (AEQ's comparison for --model-explorer-out)

    # ------------------------------------------------------------ inputs
    def remember_input_shape(self, model_id: int, shape: tuple[int | None, ...]) -> None:
        """The input shape data for `model_id` is read at (a .tflite's, when there is no Keras model)."""
        self._input_shapes[model_id] = shape

    def model(self, spec: str, name: str = "") -> int:
        """Loads a model file (or the demo) behind the safety policy and records it; the next job reuses the load.

        Raises:
            QlabError: for a missing or refused file.
        """
        model = demo_model(self.data_dir / "demo") if spec == "demo" else load_model(spec)
        record = dataclasses.replace(model_record(model), name=name or model.name, summary=loaded_summary(model))
        record = publish(self.store, record)
        remember_model(record.sha256, model)
        self._input_shapes[int(record.model_id)] = model.input_shape  # type: ignore[arg-type]
        return int(record.model_id)  # type: ignore[arg-type]

    def dataset(self, spec: str, *, input_scale: float, input_offset: float, model_id: int | None) -> int:
        """Reads the data (checked) and records it with its preprocessing; later jobs read the file again.

        Raises:
            QlabError: naming the file or value at fault.
        """
        shape = self._input_shapes.get(model_id) if model_id is not None else None
        data = load_dataset(spec, input_scale=input_scale, input_offset=input_offset, input_shape=shape)
        folder_of_images = spec != "digits" and not spec.lower().endswith(".npz")
        record = dataset_record(data, stored_path=None if spec == "digits" else str(Path(spec).resolve()),
                                image_shape=shape if folder_of_images else None)
        return int(publish(self.store, record).dataset_id)  # type: ignore[arg-type]

    def variant(self, spec: str, *, dataset_id: int | None = None, runnable: bool = False) -> int:
        """A stored variant: `variant:<id>`, the variant whose .tflite has this file's sha256, or the one an
        import of the file makes (inspected, run and scored on `dataset_id`'s data when given).

        Args:
            runnable: the job runs it: a file with custom ops LiteRT cannot run is refused, named, first.

        Raises:
            QlabError: for an unreadable file, an unknown id, a file that cannot run, or a refused import.
        """
        if spec.startswith("variant:"):
            text = spec.removeprefix("variant:")
            if not text.isdigit():
                raise QlabError(f"{spec}: expected variant:<id>")
            self.store.variant(int(text))  # raises for an unknown id
            return int(text)
        data = read_tflite(spec, check_identifier=False)
        if runnable:
            check_runnable(data, spec)
        known = self.store.variant_id_for_sha(hashlib.sha256(data).hexdigest())
        if known is not None:
            return known
        result = self.run(ImportTfliteParams(filename=spec, path=str(Path(spec).resolve()),
                                             dataset_id=dataset_id))
        return int(result["variant_id"])

    def download_variant(self, variant_id: int, path: Path) -> Path:
        """Copies a stored variant's .tflite to `path` (its folder is made); returns the path."""
        row = self.store.variant(int(variant_id))
        source = Path(str(row["path"])) if row.get("path") else self.store.blob_path(str(row["sha256"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return path

    def export_model_explorer(self, folder: str) -> list[Path]:
        """AEQ's comparison files of the debug run just made (the comparison lives only where it was made).

        Raises:
            QlabError: when the run was not AI Edge Quantizer's.
        """
        value = self.value
        if not isinstance(value, DebugResult) or value.comparison is None:
            raise QlabError("Model Explorer export comes from AI Edge Quantizer's comparison; use --engine aeq")
        return aeq.export_model_explorer(value.comparison, folder, value.model)

    # ------------------------------------------------------------ jobs
    def submit(self, params: Any) -> int:
        """Takes a job; it runs when followed (there is no queue here)."""
        job_id = len(self._queued) + 1
        self._queued[job_id] = params
        return job_id

    def follow(self, job_id: int, progress: Callable[[float, str], None] | None = None,
               announce: str = "") -> dict[str, Any]:
        """Runs a taken job here and publishes its value; its state as the server reports a finished job."""
        return {"status": "done", "result": self.run(self._queued.pop(job_id), progress)}

    def run(self, params: Any, progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
        """Runs a job in this process: its inputs gathered from the store, the task, then publish.

        Returns:
            The job's document, as the server's job result would be.
        """
        kind = kind_of(params)
        step = progress or log_progress
        if kind in OWNER_TASKS:
            return OWNER_TASKS[kind](self.store, params, step)
        files, rows = gather_inputs(self.store, kind, params)
        value = run_task(JobSpec(job_id=0, kind=kind, params=params, files=files, rows=rows), step)
        self.value = publish(self.store, value, self.data_dir)
        return dict(json.loads(to_json(document(self.value))))


def run(args: argparse.Namespace) -> int:
    """Runs a job command in this process on the store of `--db`."""
    with open_store(args) as store:
        data_dir = store.path.parent if getattr(args, "db", None) else defaults.data_dir()
        lab: Lab = LocalLab(store, data_dir)
        return run_command(args, lab)
