"""Debug runs (per-layer error) and tune runs (the float-layer search with every trial)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from qcore.qtyping import LayerStat
from qcore.store.base import StoreBase, dump_json
from qcore.tflite.names import layer_name


class DebugRows(StoreBase):
    """Per-layer error runs with one row per tensor, and float-layer searches with every conversion
    they tried."""

    def save_debug_run(
        self,
        *,
        model_id: int,
        dataset_id: int,
        settings: dict[str, Any],
        model_metrics: dict[str, Any],
        stats: Sequence[LayerStat],
        engine: str = "tf",
    ) -> int:
        """Stores one per-layer error run (TF's debugger or AEQ's validation) and its rows, in one transaction."""
        with self.transaction() as cur:
            got = cur.execute(
                "INSERT INTO debug_runs (model_id, dataset_id, settings, model_metrics, engine)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                [model_id, dataset_id, dump_json(settings), dump_json(model_metrics), str(engine)],
            ).fetchone()
            assert got is not None
            run_id = int(got[0])
            rows = [
                (run_id, i, s.op_name, s.tensor_idx, s.tensor_name, s.num_elements, s.stddev, s.mean_error,
                 s.max_abs_error, s.mean_squared_error, s.scale, s.zero_point, s.range, s.rmse_scale,
                 dump_json(s.extra) if s.extra else None, layer_name(s.tensor_name, s.layer))
                for i, s in enumerate(stats)
            ]
            if rows:
                cur.executemany(
                    "INSERT INTO layer_stats (debug_run_id, row_idx, op_name, tensor_idx, tensor_name, num_elements,"
                    " stddev, mean_error, max_abs_error, mean_squared_error, scale, zero_point, range, rmse_scale,"
                    " extra, layer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
        return run_id

    def debug_runs(self, model_id: int | None = None) -> pd.DataFrame:
        sql = ("SELECT r.*, m.name AS model, d.name AS dataset, "
               "(SELECT count(*) FROM layer_stats s WHERE s.debug_run_id = r.id) AS n_layers "
               "FROM debug_runs r JOIN models m ON m.id = r.model_id JOIN datasets d ON d.id = r.dataset_id")
        params: list[Any] = []
        if model_id is not None:
            sql += " WHERE r.model_id = ?"
            params.append(model_id)
        return self.query(sql + " ORDER BY r.id DESC", params)

    def layer_stats(self, debug_run_id: int) -> pd.DataFrame:
        """A run's per-layer rows in layer order, each with `layer`, the name users read (a run stored
        before 0018 recorded none: the Keras layer of its tensor name stands in)."""
        df = self.query(
            "SELECT * EXCLUDE (debug_run_id) FROM layer_stats WHERE debug_run_id = ? ORDER BY row_idx",
            [debug_run_id],
        )
        df["layer"] = [layer_name(t, n) for t, n in zip(df["tensor_name"], df["layer"], strict=True)]
        return df

    def save_tune_run(
        self,
        *,
        model_id: int,
        dataset_id: int,
        max_drop: float,
        float_accuracy: float,
        target_accuracy: float,
        trials: Sequence[dict[str, Any]],
        chosen_variant_id: int | None,
        engine: str | None = None,
        deploy_engine: str | None = None,
        debug_run_id: int | None = None,
    ) -> int:
        """Stores the search and every conversion it tried (keys: denylist, accuracy, size_bytes, passed)."""
        with self.transaction() as cur:
            got = cur.execute(
                "INSERT INTO tune_runs (model_id, dataset_id, max_drop, float_accuracy, target_accuracy,"
                " chosen_variant_id, engine, deploy_engine, debug_run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                [model_id, dataset_id, max_drop, float_accuracy, target_accuracy, chosen_variant_id, engine,
                 deploy_engine, debug_run_id],
            ).fetchone()
            assert got is not None
            run_id = int(got[0])
            for step, t in enumerate(trials):
                cur.execute(
                    "INSERT INTO tune_trials VALUES (?, ?, ?, ?, ?, ?)",
                    [run_id, step, json.dumps(list(t["denylist"])), t.get("accuracy"), t.get("size_bytes"),
                     bool(t["passed"])],
                )
        return run_id

    def tune_trials(self, tune_run_id: int) -> pd.DataFrame:
        return self.query("SELECT * FROM tune_trials WHERE tune_run_id = ? ORDER BY step", [tune_run_id])

    def tune_runs(self, model_id: int | None = None) -> pd.DataFrame:
        """Float-layer searches, newest first (the dashboard's /debugger list).

        With `engine` (who ranked and tried) and `deploy_engine` (who made the chosen variant), read
        from the search's job, else from the chosen variant; NULL for a search the CLI ran that chose nothing.
        """
        # a search stored before 0012 names its engines through its job or its chosen variant
        sql = ("SELECT t.* EXCLUDE (engine, deploy_engine), "
               "coalesce(t.engine, json_extract_string(j.params, '$.engine'), "
               "json_extract_string(v.settings, '$.search_engine')) AS engine, "
               "coalesce(t.deploy_engine, v.engine, json_extract_string(j.params, '$.deploy_engine')) AS deploy_engine "
               "FROM tune_runs t LEFT JOIN variants v ON v.id = t.chosen_variant_id "
               "LEFT JOIN jobs j ON j.kind = 'tune' AND j.status = 'done' "
               "AND TRY_CAST(json_extract_string(j.result, '$.tune_run_id') AS BIGINT) = t.id")
        params: list[Any] = []
        if model_id is not None:
            sql += " WHERE t.model_id = ?"
            params.append(model_id)
        return self.query(sql + " ORDER BY t.id DESC", params)
