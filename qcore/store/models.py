"""Models, datasets and their float reference: the rows every variant hangs off."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from qcore.qtyping import QlabError
from qcore.store.actor import ACTOR
from qcore.store.base import StoreBase, dump_json, load_json


class ModelRows(StoreBase):
    """Models (Keras, SavedModel, the demo, or a bare .tflite), datasets with their preprocessing, and
    the float reference accuracy of each (model, dataset) pair."""

    def add_model(
        self,
        *,
        name: str,
        format: str,
        sha256: str,
        source_path: str,
        input_shape: Sequence[int | None],
        output_shape: Sequence[int | None],
        keras_major: int | None,
        trusted: bool = False,
    ) -> int:
        """Registers a model; the same bytes twice give the same id.

        Args:
            trusted: an admin vouched for it, so jobs load it without the safety checks.
        """
        with self.transaction() as cur:
            row = cur.execute("SELECT id FROM models WHERE sha256 = ?", [sha256]).fetchone()
            if row:
                if trusted:
                    cur.execute("UPDATE models SET trusted = true WHERE id = ?", [row[0]])
                return int(row[0])
            row = cur.execute(
                "INSERT INTO models (name, format, sha256, source_path, input_shape, output_shape, keras_major,"
                " trusted, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [name, format, sha256, source_path, json.dumps(list(input_shape)),
                 json.dumps(list(output_shape)), keras_major, bool(trusted), ACTOR.get()],
            ).fetchone()
            assert row is not None
            return int(row[0])

    def add_dataset(
        self,
        *,
        name: str,
        source: str,
        sha256: str,
        input_scale: float,
        input_offset: float,
        n_train: int,
        n_test: int,
        num_classes: int,
        stored_path: str | None = None,
        image_shape: Sequence[int | None] | None = None,
    ) -> int:
        """Registers a dataset with its preprocessing; the same data and preprocessing give the same id.

        Args:
            image_shape: for a folder or zip of images, the model input shape they were read at,
                so jobs read them the same way again.
        """
        with self.transaction() as cur:
            row = cur.execute(
                "SELECT id, stored_path FROM datasets WHERE sha256 = ? AND input_scale = ? AND input_offset = ?",
                [sha256, input_scale, input_offset],
            ).fetchone()
            if row:
                # the same data from a file that is here now, where the one it was first read from is gone
                if stored_path and (not row[1] or not Path(str(row[1])).exists()):
                    cur.execute("UPDATE datasets SET stored_path = ? WHERE id = ?", [stored_path, row[0]])
                return int(row[0])
            row = cur.execute(
                "INSERT INTO datasets (name, source, sha256, input_scale, input_offset, n_train, n_test,"
                " num_classes, stored_path, image_shape, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                [name, source, sha256, input_scale, input_offset, n_train, n_test, num_classes, stored_path,
                 None if image_shape is None else json.dumps(list(image_shape)), ACTOR.get()],
            ).fetchone()
            assert row is not None
            return int(row[0])

    def models(self) -> pd.DataFrame:
        return self.query("SELECT * FROM models ORDER BY id DESC")

    def datasets(self) -> pd.DataFrame:
        return self.query("SELECT * FROM datasets ORDER BY id DESC")

    def model(self, model_id: int) -> dict[str, Any]:
        df = self.query("SELECT * FROM models WHERE id = ?", [model_id])
        if df.empty:
            raise QlabError(f"no model with id {model_id}")
        return dict(df.iloc[0])

    def dataset(self, dataset_id: int) -> dict[str, Any]:
        df = self.query("SELECT * FROM datasets WHERE id = ?", [dataset_id])
        if df.empty:
            raise QlabError(f"no dataset with id {dataset_id}")
        return dict(df.iloc[0])

    def set_reference(self, model_id: int, dataset_id: int, accuracy: float, top5: float, n: int) -> None:
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO reference_runs (model_id, dataset_id, accuracy, top5, n_samples)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (model_id, dataset_id) DO UPDATE SET"
                " accuracy = excluded.accuracy, top5 = excluded.top5, n_samples = excluded.n_samples,"
                " created_at = now()",
                [model_id, dataset_id, accuracy, top5, n],
            )

    def reference(self, model_id: int, dataset_id: int) -> float | None:
        row = self._one(
            "SELECT accuracy FROM reference_runs WHERE model_id = ? AND dataset_id = ?", [model_id, dataset_id]
        )
        return None if row is None else float(row[0])

    def set_model_summary(self, model_id: int, summary: dict[str, Any]) -> None:
        """Records what a worker read of a model (layers, parameters, shapes) for pages to show."""
        with self.transaction() as cur:
            cur.execute("UPDATE models SET summary = ? WHERE id = ?", [dump_json(summary), model_id])

    def model_summary(self, model_id: int) -> dict[str, Any] | None:
        """A model's recorded summary, or None when no worker has read it yet."""
        row = self._one("SELECT summary FROM models WHERE id = ?", [model_id])
        return None if row is None else load_json(row[0])
