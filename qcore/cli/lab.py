"""`qlab list`, `jobs`, `import-tflite`, `op-cost`, `export-node-data`: what a lab's store holds, and what it adds."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qcore.cli.common import (
    EXIT_OK,
    Subparsers,
    add_common,
    add_preprocessing,
    emit,
    log_progress,
    open_store,
)
from qcore.cli.local import LocalLab
from qcore.jobs.contract import ImportTfliteParams
from qcore.lab.import_tflite import input_shape
from qcore.qtyping import QlabError, npu_label_words
from qcore.serialize import frame_records
from qcore.tflite.litert_io import read_tflite as read_file

# `qlab list --json`: the same fields locally (the store's v_variant_summary) and with --server (GET
# /api/v1/models and /variants, the same view), so a script reads one document shape either way
MODEL_FIELDS = ("model_id", "model", "format", "variants")
VARIANT_FIELDS = ("variant_id", "variant", "model_id", "model", "dataset_id", "dataset", "kind", "recipe", "engine",
                  "status", "error", "accuracy", "float_accuracy", "size_bytes", "npu_ready", "npu_label", "sha256")


def add_commands(sub: Subparsers) -> None:
    """`list`, `jobs`, `import-tflite`, `op-cost`, `export-node-data`."""
    p = sub.add_parser("list", help="models and their variants: ids, engine, recipe, accuracy, size, NPU verdict "
                       "(with --server: the server's)")
    p.add_argument("--model", metavar="NAME|ID", help="only this model's variants (a name or an id)")
    add_common(p)
    p.set_defaults(handler=_cmd_list)
    _add_jobs_command(sub)
    _add_op_cost_commands(sub)
    _add_import_commands(sub)


# ---------------------------------------------------------------- list
def list_document(models: Sequence[dict[str, Any]], variants: Sequence[dict[str, Any]],
                  model: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """`qlab list`'s document from model rows (id, name, format) and v_variant_summary rows, as JSON records.

    The local store and the API give the same rows (`frame_records` of the same queries), so the
    document is the same locally and with --server.

    Args:
        model: keep only the models with this id (digits) or name.

    Raises:
        QlabError: when `model` matches no model, naming the known ones.
    """
    if model is not None:
        spec = model.strip()
        chosen = [m for m in models if (str(m["id"]) == spec if spec.isdigit() else m["name"] == spec)]
        if not chosen:
            known = ", ".join(f"#{m['id']} {m['name']}" for m in sorted(models, key=lambda m: m["id"])[:10])
            raise QlabError(f"--model {model!r}: no such model (known: {known or 'none stored'})")
        models = chosen
    ids = {int(m["id"]) for m in models}
    rows = sorted((v for v in variants if int(v["model_id"]) in ids),
                  key=lambda v: (int(v["model_id"]), int(v["variant_id"])))
    counts = {i: sum(1 for v in rows if int(v["model_id"]) == i) for i in ids}
    return {
        "models": [{"model_id": int(m["id"]), "model": m["name"], "format": m["format"],
                    "variants": counts[int(m["id"])]} for m in sorted(models, key=lambda m: int(m["id"]))],
        "variants": [{k: v.get(k) for k in VARIANT_FIELDS} for v in rows],
    }


def list_text(doc: dict[str, list[dict[str, Any]]]) -> str:
    """`qlab list` for people: one block per model, one line per variant."""
    if not doc["models"]:
        return "no models yet (`qlab convert MODEL --data DATA` adds one)"
    lines = []
    for m in doc["models"]:
        lines.append(f"model #{m['model_id']} {m['model']} ({m['format']}): {m['variants']} variant(s)")
        for v in (v for v in doc["variants"] if v["model_id"] == m["model_id"]):
            head = f"  #{v['variant_id']:<5} {str(v['variant'])[:24]:<24} {str(v['engine'] or '-'):<4}"
            if v["status"] != "ok":
                lines.append(f"{head} FAILED: {v['error'] or v['status']}")
                continue
            acc = f"{v['accuracy']:.4f}" if v["accuracy"] is not None else "-"
            lines.append(f"{head} acc {acc:<7} {v['size_bytes'] or 0:>10} B  {npu_label_words(v['npu_label']) or '-'}  "
                         f"({v['dataset'] or 'no dataset'})")
    return "\n".join(lines)


def _cmd_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        models = frame_records(store.models())
        variants = frame_records(store.variant_summary())
    doc = list_document(models, variants, args.model)
    emit(args, doc, list_text(doc))
    return EXIT_OK


# ---------------------------------------------------------------- jobs of a store
def _add_jobs_command(sub: Subparsers) -> None:
    """`jobs`."""
    p = sub.add_parser("jobs", help="the jobs of a store: kind, status, which worker ran them, errors")
    p.add_argument("--limit", type=int, default=20, help="newest N jobs (default 20)")
    p.add_argument("--active", action="store_true", help="only queued and running jobs")
    add_common(p)
    p.set_defaults(handler=_cmd_jobs)


def _cmd_jobs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise QlabError(f"--limit must be at least 1, got {args.limit}")
    with open_store(args) as store:
        jobs = store.jobs(limit=args.limit, active=args.active)
    lines = [f"{'id':>5}  {'kind':<16} {'status':<10} {'worker':<34} message"]
    for j in jobs:
        where = f"{j.worker_host} {j.worker}".strip() or "-"
        lines.append(f"{j.id:>5}  {j.kind:<16} {str(j.status):<10} {where:<34} {j.error or j.message}")
    if not jobs:
        lines = ["no jobs" + (" running" if args.active else " yet")]
    emit(args, {"jobs": [{"id": j.id, "kind": j.kind, "status": str(j.status), "progress": j.progress,
                           "message": j.message, "error": j.error, "worker": j.worker,
                           "worker_host": j.worker_host, "created_at": j.created_at, "started_at": j.started_at,
                           "finished_at": j.finished_at} for j in jobs]}, "\n".join(lines))
    return EXIT_OK


# ---------------------------------------------------------------- per-op cost vs error (issue 12)
def _add_op_cost_commands(sub: Subparsers) -> None:
    """`op-cost`, `export-node-data`."""
    for name, help_text in (
        ("op-cost", "per-op debugger error (rmse/scale) beside per-op time on a board, or a labelled estimate"),
        ("export-node-data", "write Model Explorer node data (one JSON per metric) for a variant's .tflite graph"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("variant", metavar="VARIANT", help="a stored variant's id or name")
        p.add_argument("--board", help="a board with a stored per-op profile ('host' = the estimate; default: the "
                                       "first board profile, else the estimate)")
        p.add_argument("--target", help="npu, cpu or cpu-plain (default: the first with a profile)")
        p.add_argument("--debug-run", type=int, help="debugger run id (default: the newest of the variant's model)")
        if name == "export-node-data":
            p.add_argument("--out", required=True, help="directory for <variant>.<metric>.json")
            p.set_defaults(handler=_cmd_export_node_data)
        else:
            p.set_defaults(handler=_cmd_op_cost)
        add_common(p)


def _variant_id(store: Any, ref: str) -> int:
    """A variant id from an id or a unique name."""
    if ref.strip().isdigit():
        return int(store.variant(int(ref))["variant_id"])
    rows = store.variant_summary()
    hits = rows[rows["variant"] == ref]
    if hits.empty:
        known = ", ".join(sorted(set(map(str, rows["variant"])))[:10]) or "none stored"
        raise QlabError(f"no variant named {ref!r} (known: {known})")
    if len(hits) > 1:
        ids = ", ".join(f"{int(r.variant_id)} ({r.model})" for r in hits.itertuples())
        raise QlabError(f"{len(hits)} variants are named {ref!r}: pass one id of {ids}")
    return int(hits.iloc[0]["variant_id"])


def _op_cost_for(args: argparse.Namespace, store: Any) -> Any:
    from qcore.lab.op_cost import op_cost

    return op_cost(store, _variant_id(store, args.variant), board=args.board, target=args.target,
                   debug_run_id=args.debug_run)


def _cmd_op_cost(args: argparse.Namespace) -> int:
    from qcore.lab.op_cost import report_rows

    with open_store(args) as store:
        cost = _op_cost_for(args, store)
    table = cost.table.sort_values("time_share", ascending=False, na_position="last")
    lines = [f"variant #{cost.variant_id} {cost.variant}: time from {cost.board}/{cost.target} "
             f"[{cost.time_source}], total {cost.total_ms:.3f} ms; error from debugger run "
             f"{cost.debug_run_id if cost.debug_run_id is not None else '(none)'}",
             f"  {'op':>3}  {'layer':<28}{'rmse/scale':>11}{'time ms':>10}{'share':>8}{'float on CPU ms':>17}"]
    for r in table.itertuples():
        lines.append(f"  {r.op_index:>3}  {str(r.layer)[:27]:<28}{r.rmse_scale:>11.3f}{r.time_ms:>10.4f}"
                     f"{r.time_share * 100:>7.1f}%{r.float_on_cpu_ms:>17.4f}")
    lines += [f"  unmapped: {u.node_type} {u.time_ms:.4f} ms ({u.why})" for u in cost.unmapped.itertuples()]
    lines += [f"  note: {n}" for n in cost.notes]
    payload = {"variant_id": cost.variant_id, "variant": cost.variant, "board": cost.board, "target": cost.target,
               "time_source": cost.time_source, "total_ms": cost.total_ms, "debug_run_id": cost.debug_run_id,
               "rows": report_rows(cost), "unmapped": cost.unmapped.to_dict("records"),
               "notes": list(cost.notes)}
    emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _cmd_export_node_data(args: argparse.Namespace) -> int:
    from qcore.lab.op_cost import explorer_command, explorer_installed, write_node_data

    with open_store(args) as store:
        cost = _op_cost_for(args, store)
        row = store.variant(cost.variant_id)
        tflite = str(row["path"]) if row.get("path") else str(store.blob_path(str(row["sha256"])))
    paths = write_node_data(cost, args.out)
    command = explorer_command(tflite, paths)
    lines = [f"wrote {len(paths)} node-data file(s) for variant #{cost.variant_id} {cost.variant} "
             f"(time: {cost.board}/{cost.target}, {cost.time_source}):", *[f"  {p}" for p in paths],
             "open the graph with them:" if explorer_installed()
             else "open the graph with them (pip install ai-edge-model-explorer):", f"  {command}"]
    emit(args, {"variant_id": cost.variant_id, "files": [str(p) for p in paths], "graph_id": cost.graph_id,
                 "time_source": cost.time_source, "command": command}, "\n".join(lines))
    return EXIT_OK


# ---------------------------------------------------------------- bring your own .tflite (issue 11)
def _add_import_commands(sub: Subparsers) -> None:
    """`import-tflite`."""
    p = sub.add_parser("import-tflite", help="take in a .tflite made elsewhere as a variant of a tflite-only model")
    p.add_argument("tflite", metavar="FILE", help="the .tflite (eIQ model zoo, Ultralytics, onnx2tf, MediaPipe, ...)")
    p.add_argument("--reference", metavar="FLOAT.tflite",
                   help="a float .tflite of the same network: its accuracy and outputs are the float reference")
    p.add_argument("--name", default="", help="the model's name (default: the reference's or the file's stem)")
    p.add_argument("--data", help="evaluate on this .npz, image folder/.zip, or 'digits' (its test split)")
    add_preprocessing(p)
    add_common(p)
    p.set_defaults(handler=_cmd_import_tflite)


def _cmd_import_tflite(args: argparse.Namespace) -> int:
    # custom ops are welcome here: the file is stored and inspected, only running it is refused
    model = read_file(args.tflite)
    reference = read_file(args.reference) if args.reference else None
    with open_store(args) as store:
        lab = LocalLab(store, store.path.parent)
        dataset_id = None
        if args.data:
            lab.remember_input_shape(0, input_shape(model, args.tflite))
            dataset_id = lab.dataset(args.data, input_scale=args.input_scale, input_offset=args.input_offset,
                                     model_id=0)
        doc = lab.run(ImportTfliteParams(
            filename=args.tflite, path=str(Path(args.tflite).resolve()), name=args.name,
            dataset_id=dataset_id, reference_filename=args.reference or "",
            reference_path=str(Path(args.reference).resolve()) if reference else ""), log_progress)
    v = doc["variant"]
    lines = [f"{args.tflite}: model #{doc['model_id']} {doc['model']!r} (tflite-only), variant #{doc['variant_id']} "
             f"{v['name']!r}; {v['size_bytes']} B, {v['input_dtype']} -> {v['output_dtype']}, {doc['verdict']}"]
    if doc.get("reference_variant_id") is not None and args.reference:
        lines.append(f"  float reference: variant #{doc['reference_variant_id']} ({args.reference})")
    lines.append(f"  scored by: {'top-1 against labels' if doc['scoring'] == 'classes' else 'MSE / cosine against the reference'}")
    if v.get("accuracy") is not None:
        lines.append(f"  accuracy {v['accuracy']:.4f}  top-5 {v['top5']:.4f}"
                     + (f"  agreement {v['agreement']:.4f}" if v.get("agreement") is not None else "")
                     + (f"  (reference accuracy {doc['reference_accuracy']:.4f})"
                        if doc.get("reference_accuracy") is not None else ""))
    elif doc.get("output_metrics"):
        lines.append("  " + "  ".join(f"{k} {val:.4g}" for k, val in doc["output_metrics"].items()))
    lines += [f"  note: {n}" for n in doc.get("notes") or []]
    emit(args, doc, "\n".join(lines))
    return EXIT_OK
