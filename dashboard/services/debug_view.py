"""The tables and choices behind /debugger, as pure functions over the stored rows."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashboard.services import follow, layers, npu_view
from qcore import defaults
from qcore.engines import ENGINES
from qcore.qtyping import VariantKind

# recipes the debugger accepts (int8 activations with calibration data); AEQ also compares 16x8
DEBUG_RECIPES = ("int8-fallback", "int8", "uint8", "int8-per-tensor", "uint8-per-tensor", "int16x8")
# what each engine is called wherever a per-layer table, chart or search result names its maker
ENGINE_NAMES = {name: e.label for name, e in ENGINES.items()}
# session keys /debugger preselects from the variant it explains
ENGINE_KEY, RECIPE_KEY, DEPLOY_KEY, RUN_KEY = ("debugger_engine", "debugger_recipe", "debugger_deploy_engine",
                                               "debugger_run")
_EXPLAINED_KEY = "debugger_explained"


def engine_name(engine: Any) -> str:
    """An engine as users read it; a run stored before engines were recorded was TF's."""
    key = str(engine) if isinstance(engine, str) and engine else defaults.ENGINE
    return ENGINE_NAMES.get(key, key)


@dataclass(frozen=True)
class ExplainTarget:
    """What /debugger explains: a stored variant and the engine and recipe that made it.

    With no variant the debugger can explain, `variant_id` is None and the defaults stand in.
    """

    model_id: int
    variant_id: int | None
    variant: str
    engine: str
    recipe: str

    @property
    def words(self) -> str:
        """One line for the page: which variant, engine and recipe the explain loop follows."""
        if self.variant_id is None:
            return (f"No int8 variant of this model to explain yet (convert one on Quantize): the debugger "
                    f"runs recipe **{self.recipe}** with the **{engine_name(self.engine)}**, the default.")
        return (f"Explains variant **#{self.variant_id} {self.variant}**: recipe **{self.recipe}** made with the "
                f"**{engine_name(self.engine)}**. The debugger, keep-float and the search use the same engine.")


def explainable(variants: pd.DataFrame) -> dict[int, str]:
    """variant id → label of the variants the debugger can explain: converted by a recipe it accepts."""
    if variants.empty:
        return {}
    ok = variants[(variants["status"] == "ok") & (variants["kind"] == VariantKind.PTQ.value)
                  & variants["recipe"].isin(DEBUG_RECIPES)]
    return {int(r.variant_id): f"#{r.variant_id} {r.variant} · {engine_name(r.engine)}"
            + (f" · {r.dataset}" if isinstance(getattr(r, "dataset", None), str) else "")
            + (f" · {100 * float(r.accuracy):.2f}%" if pd.notna(getattr(r, "accuracy", None)) else "")
            for r in ok.itertuples()}


def explain_target(model_id: int, variants: pd.DataFrame, variant_id: int | None) -> ExplainTarget:
    """The engine and recipe of the chosen variant (its stored `engine` and `recipe` columns), or the defaults."""
    row = variants[variants["variant_id"] == variant_id] if variant_id is not None and not variants.empty else None
    if row is None or row.empty:
        return ExplainTarget(int(model_id), None, "", defaults.ENGINE, defaults.DEBUG_RECIPE)
    r = row.iloc[0]
    engine = r["engine"] if isinstance(r["engine"], str) and r["engine"] else defaults.ENGINE
    return ExplainTarget(int(model_id), int(r["variant_id"]), str(r["variant"]), engine, str(r["recipe"]))


def preselect(state: MutableMapping[str, Any] | Any, target: ExplainTarget) -> None:
    """Sets the page's engine, recipe and deploy engine to the target's when the target changes.

    The user may still change them; the page then says it explains another model than the variant.
    The chosen debugger result is dropped too, so the newest run of the target's engine is shown.

    Args:
        state: `st.session_state` (or a dict in a test).
        target: what the page explains now.
    """
    key = (target.model_id, target.variant_id)
    # Streamlit forgets a widget's value when its page was not shown; set it again then
    if state.get(_EXPLAINED_KEY) == key and all(k in state for k in (ENGINE_KEY, RECIPE_KEY, DEPLOY_KEY)):
        return
    state[_EXPLAINED_KEY] = key
    state[ENGINE_KEY], state[RECIPE_KEY], state[DEPLOY_KEY] = target.engine, target.recipe, target.engine
    state.pop(RUN_KEY, None)


def mismatch(target: ExplainTarget, engine: str, recipe: str) -> str:
    """Words when the chosen engine or recipe is not the one that made the explained variant, else ""."""
    if target.variant_id is None or (engine, recipe) == (target.engine, target.recipe):
        return ""
    return (f"This runs recipe {recipe} with the {engine_name(engine)}, but variant #{target.variant_id} "
            f"{target.variant} was made by recipe {target.recipe} with the {engine_name(target.engine)}: "
            "the suspects would be those of a model other than the one you explain.")


def run_engine(run: Any) -> str:
    """The engine a debugger run stored (its `engine` column)."""
    value = run["engine"] if isinstance(run, pd.Series) else getattr(run, "engine", None)
    return str(value) if isinstance(value, str) and value else defaults.ENGINE


def run_labels(runs: pd.DataFrame) -> dict[int, str]:
    """debug run id → a label with its recipe, engine, layers and whether denylists were applied."""
    out = {}
    for r in runs.itertuples():
        s = settings(r)
        deny = len(s.get("denylisted_nodes", [])) + len(s.get("denylisted_ops", []))
        mode = " · whole-model" if s.get("whole_model") else ""
        extra = f", {deny} kept float" if deny else ""
        out[int(r.id)] = (f"#{r.id} · {s.get('recipe', '?')} · {engine_name(run_engine(r))} · {r.n_layers} layers"
                          f"{mode}{extra} · {str(r.created_at)[:16]}")
    return out


def run_index(runs: pd.DataFrame, target: ExplainTarget) -> int:
    """Position of the newest run made with the target's engine and recipe (runs come newest first), else 0."""
    for i, r in enumerate(runs.itertuples()):
        if run_engine(r) == target.engine and settings(r).get("recipe") == target.recipe:
            return i
    return 0


def run_source(run: Any) -> str:
    """What made a debugger run's per-layer rows: "run #3 · TF converter · int8"."""
    recipe = settings(run).get("recipe", "?")
    run_id = run["id"] if isinstance(run, pd.Series) else run.id
    return f"run #{int(run_id)} · {engine_name(run_engine(run))} · {recipe}"


def run_mismatch(run: Any, target: ExplainTarget) -> str:
    """Words when the shown run was made with another engine or recipe than the explained variant, else ""."""
    recipe = settings(run).get("recipe")
    if target.variant_id is None or (run_engine(run), recipe) == (target.engine, target.recipe):
        return ""
    return (f"This result ({run_source(run)}) is not of the variant you explain (#{target.variant_id}, "
            f"{target.recipe} with the {engine_name(target.engine)}): run the debugger above for its suspects.")


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return {}


def settings(run: Any) -> dict[str, Any]:
    return _json(run["settings"] if isinstance(run, pd.Series) else run.settings)


def model_metrics(run: pd.Series) -> dict[str, float]:
    return {k: float(v) for k, v in _json(run["model_metrics"]).items() if isinstance(v, int | float)}


def threshold(stats: pd.DataFrame, engine: str) -> tuple[float, bool]:
    """The suspect threshold of a run's rows on its engine's scale (the one rule of every page and report),
    and whether any layer stands out."""
    values = stats["rmse_scale"] if not stats.empty and "rmse_scale" in stats else pd.Series(dtype=float)
    return layers.suggested_threshold(values, ENGINES[engine].metric if engine in ENGINES else layers.TF_METRIC)


# the newest debugger run the page has seen: a newer one (a job just ended) is shown at once
SEEN_KEY = "debugger_seen_newest_run"


def follow_newest(state: MutableMapping[str, Any] | Any, runs: pd.DataFrame, key: str = RUN_KEY,
                  seen_key: str = SEEN_KEY) -> bool:
    """Selects the newest debugger run when one appeared since the page last looked (runs come newest first).

    Returns:
        True when the newest run was just selected (the selectbox then opens on position 0).
    """
    return follow.follow_newest(state, None if runs.empty else int(runs["id"].iloc[0]), key, seen_key)


def max_rmse_scale(stats: pd.DataFrame) -> float:
    values = stats["rmse_scale"].replace([np.inf, -np.inf], np.nan).dropna() if not stats.empty else pd.Series()
    return float(values.max()) if len(values) else 0.0


def suspects(stats: pd.DataFrame, threshold: float, first_k: int = 0) -> list[str]:
    """Tensor names with rmse/scale above the threshold, plus the first K rows, in layer order."""
    if stats.empty:
        return []
    chosen = set(stats.loc[stats["rmse_scale"] > threshold, "tensor_name"])
    chosen.update(stats["tensor_name"].head(max(0, first_k)))
    return list(dict.fromkeys(t for t in stats["tensor_name"] if t in chosen))


def document_names(doc: dict[str, Any]) -> dict[str, str]:
    """tensor name → recorded layer name from a debugger job's result (its per-layer rows, `layers.known_names`)."""
    return layers.known_names(pd.DataFrame([r for r in doc.get("layers") or [] if isinstance(r, dict)]))


def tensor_names(stats: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(stats["tensor_name"])) if not stats.empty else []


def op_types(stats: pd.DataFrame) -> list[str]:
    return sorted(set(stats["op_name"])) if not stats.empty else []


def stats_table(stats: pd.DataFrame, suspects: list[str]) -> pd.DataFrame:
    """Per-layer rows: suspect flag, short Keras layer name, op, metrics, and the full tensor name last."""
    if stats.empty:
        return stats
    cols = [c for c in ("op_name", "rmse_scale", "range", "scale", "zero_point", "mean_squared_error",
                        "max_abs_error", "mean_error", "stddev", "num_elements", "row_idx", "tensor_idx")
            if c in stats]
    out = stats[cols].copy()
    out.insert(0, "layer", layers.unique_labels(stats["tensor_name"].tolist(), layers.known_names(stats)))
    out.insert(0, "suspect", stats["tensor_name"].isin(suspects))
    extra = stats["extra"].map(_json) if "extra" in stats else None
    if extra is not None and extra.map(bool).any():
        out = pd.concat([out, pd.DataFrame(list(extra), index=out.index)], axis=1)
    out["tensor_name"] = stats["tensor_name"]
    return out


def ranked_stats(stats: pd.DataFrame, metric: str = "rmse_scale", worst_first: bool = True, text: str = "",
                 ops: list[str] | None = None) -> pd.DataFrame:
    """The layer rows filtered by name and op type, worst first by `metric` (or in layer order)."""
    if stats.empty:
        return stats
    return layers.rank(layers.filter_rows(stats, text, ops or ()), metric, worst_first)


def metrics(stats: pd.DataFrame) -> list[str]:
    """The numeric per-layer columns a user can rank by, rmse/scale first."""
    known = ["rmse_scale", "range", "mean_squared_error", "max_abs_error", "mean_error", "stddev"]
    return [m for m in known if m in stats and pd.to_numeric(stats[m], errors="coerce").notna().any()]


def keep_float(table: pd.DataFrame, selected_rows: list[int], suspects: list[str],
               include_suspects: bool = True) -> list[str]:
    """The tensors to keep in float: the suspects (optionally) and the rows ticked in the table.

    Args:
        table: the table as shown (its row positions are what the selection reports).
        selected_rows: positions of the ticked rows.
        suspects: the tensor names above the threshold.
        include_suspects: start from the suspects.
    """
    chosen = list(suspects) if include_suspects else []
    if not table.empty:
        names = table["tensor_name"].tolist()
        chosen += [names[i] for i in selected_rows if 0 <= i < len(names)]
    return list(dict.fromkeys(chosen))


# recipes whose input and output stay float: never NPU-ready, whatever is kept float inside
FLOAT_IO_RECIPES = frozenset({"int8-fallback"})
# recipes with int16 activations: the i.MX8M Plus NPU runs none of them
CPU_ONLY_RECIPES = frozenset({"int16x8"})


def npu_outlook(recipe: str, kept_float: int) -> tuple[bool, str]:
    """Before running keep-float or the search: will the result be NPU-ready, and why not.

    Args:
        recipe: the recipe the result is converted with.
        kept_float: how many layers (or op types) it keeps in float; for the search, the most it may keep.

    Returns:
        (ready, one sentence for the page).
    """
    if recipe in FLOAT_IO_RECIPES:
        return False, (f"Not NPU-ready: {recipe} keeps float input and output (the CPU converts them); pick int8 "
                       "or uint8 for int8 I/O.")
    if recipe in CPU_ONLY_RECIPES:
        return False, f"Not NPU-ready: {recipe} has 16-bit activations, which the NPU cannot run."
    if kept_float > 0:
        layers = f"the {kept_float} layers kept in float run" if kept_float != 1 else "the layer kept in float runs"
        return False, (f"Not NPU-ready: {layers} on the CPU, with a round trip to float around each; the rest "
                       "stays on the NPU.")
    return True, f"NPU-ready: {recipe} is integer-only with int8/uint8 I/O and keeps nothing in float."


def deploy_recipe_index(recipe: str) -> int:
    """Where the recipe sits in DEBUG_RECIPES; a float-I/O recipe defaults to int8, the NPU's I/O."""
    wanted = "int8" if recipe in FLOAT_IO_RECIPES else recipe
    return DEBUG_RECIPES.index(wanted) if wanted in DEBUG_RECIPES else 0


def selective_table(variants: pd.DataFrame) -> pd.DataFrame:
    """The selective variant beside the full-integer one: accuracy, drop, size, float layers."""
    if variants.empty:
        return variants
    rows = []
    for r in variants.itertuples():
        s = _json(r.settings)
        rows.append({
            "variant": r.variant, "kind": r.kind, "engine": engine_name(r.engine), "accuracy": r.accuracy,
            "float accuracy": r.float_accuracy,
            # Compare's sign: the variant's accuracy minus float's (negative = accuracy lost)
            "Δ vs float (points)": None if pd.isna(r.accuracy) else round((r.accuracy - r.float_accuracy) * 100, 2),
            "size (KiB)": round(r.size_bytes / 1024, 1) if pd.notna(r.size_bytes) else None,
            "kept float": len(s.get("denylisted_nodes", [])) + len(s.get("denylisted_ops", [])),
            "NPU": npu_view.label(r._asdict()),
            "I/O": r.npu_io if isinstance(getattr(r, "npu_io", None), str) else None,
        })
    return pd.DataFrame(rows).sort_values("kind", key=lambda k: k != "ptq").reset_index(drop=True)


def tune_source(run: Any) -> str:
    """Who ranked and tried in a float-layer search, and who deployed when another engine did:
    "AI Edge Quantizer (deployed with TF converter)"."""
    get = run.get if isinstance(run, pd.Series | dict) else lambda k: getattr(run, k, None)
    engine, deploy = get("engine"), get("deploy_engine")
    if not isinstance(engine, str) or not engine:
        return "engine not recorded (a search the CLI ran that chose nothing)"
    if isinstance(deploy, str) and deploy and deploy != engine:
        return f"{engine_name(engine)} (deployed with {engine_name(deploy)})"
    return engine_name(engine)


def tune_labels(runs: pd.DataFrame) -> dict[int, str]:
    return {int(r.id): f"#{r.id} · {tune_source(r)} · max drop {r.max_drop:g} points · "
            f"target {r.target_accuracy:.4f} · {'found' if pd.notna(r.chosen_variant_id) else 'none passes'} · "
            f"{str(r.created_at)[:16]}"
            for r in runs.itertuples()}


def trials_table(trials: pd.DataFrame, known: dict[str, str] | None = None) -> pd.DataFrame:
    """Every conversion a search tried; its float layers by the names its ranking run recorded (`known`)."""
    if trials.empty:
        return trials
    out = trials.copy()
    lists = out["denylist"].map(lambda d: json.loads(d) if isinstance(d, str) else list(d))
    out["layers in float"] = lists.map(len)
    out["denylist"] = lists.map(lambda names: ", ".join(layers.short_name(n, known) for n in names))
    out["size (KiB)"] = (out["size_bytes"].astype(float) / 1024).round(1)
    return out[["step", "layers in float", "accuracy", "size (KiB)", "passed", "denylist"]]


def matched_table(matched: pd.DataFrame, text: str = "") -> pd.DataFrame:
    """Matched tensors worst first (lowest SNR): short layer name, dtype, SNR, cosine, MSE, full name last."""
    if matched.empty:
        return matched
    data = layers.rank(layers.filter_rows(matched, text, name_col="name"), "snr_db", higher_is_worse=False)
    cols = ["quant_dtype", "shape", "snr_db", "cosine", "mse", "max_abs_error", "per_channel"]
    out = data[[c for c in cols if c in data]].copy()
    out.insert(0, "layer", layers.unique_labels(data["name"].tolist(), layers.known_names(data, "name")))
    out["name"] = data["name"]
    return out.reset_index(drop=True)


def split_tensors(matched: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(activations, weights and biases): constants (int8 weights, int32 biases) apart from what flows."""
    if matched.empty or "is_constant" not in matched:
        return matched, matched.iloc[0:0]
    constant = matched["is_constant"].astype(bool)
    return matched[~constant], matched[constant]


def default_index(options: dict[int, str], name: str, avoid: int | None = None) -> int:
    """Position of the first option whose variant name is `name` (and not `avoid`), else 0 or 1."""
    ids = list(options)
    for i, vid in enumerate(ids):
        label = options[vid]
        if (label.endswith(f"/ {name}") or f"/ {name} · " in label) and vid != avoid:
            return i
    return 1 if avoid == ids[0] and len(ids) > 1 else 0
