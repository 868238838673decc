"""`qlab board …`: register i.MX8M Plus boards running the qlab agent, time and evaluate .tflite files on them."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qcore import defaults
from qcore.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    Subparsers,
    add_common,
    add_preprocessing,
    emit,
    load_data_arg,
    log_progress,
    names,
    open_store,
    read_tflite,
    tflite_input_shape,
    variant_ids,
)
from qcore.jobs.contract import BoardAccuracyParams, BoardBenchParams
from qcore.qtyping import QlabError


def add_commands(sub: Subparsers) -> None:
    """`board add|list|bench|accuracy|label|history|matrix`."""
    board = sub.add_parser("board", help="i.MX8M Plus boards running the qlab agent: register, time, evaluate")
    bsub = board.add_subparsers(dest="board_command", required=True, metavar="ACTION")
    targets = "npu, cpu, cpu-plain or all (all skips unavailable targets with a note)"

    p = bsub.add_parser("add", help="register (or re-point) a board; the token is stored, never printed")
    p.add_argument("name")
    p.add_argument("url", help="the agent's URL, e.g. http://imx8mp.local:8765")
    p.add_argument("--token-file", help="file whose first line is the agent's token")
    add_common(p)
    p.set_defaults(handler=_cmd_board_add)

    p = bsub.add_parser("list", help="registered boards with their live health")
    add_common(p)
    p.set_defaults(handler=_cmd_board_list)

    p = bsub.add_parser("bench", help="time a .tflite on a board's NPU and CPU; stored beside host timings")
    p.add_argument("name")
    p.add_argument("tflite")
    p.add_argument("--target", default="all", help=targets + " (default all)")
    p.add_argument("--runs", type=int, default=defaults.BENCH_RUNS)
    p.add_argument("--warmup", type=int, default=defaults.BENCH_WARMUP)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="per-op profile with the board's benchmark_model")
    add_common(p)
    p.set_defaults(handler=_cmd_board_bench)

    p = bsub.add_parser("accuracy", help="accuracy of a .tflite on a board, and its agreement with this host")
    p.add_argument("name")
    p.add_argument("tflite")
    p.add_argument("--data", required=True, help="a .npz (x_train, y_train, x_test, y_test), image folder/.zip, or 'digits'")
    p.add_argument("--target", default="all", help=targets + " (default all)")
    p.add_argument("--threads", type=int, default=1)
    add_preprocessing(p)
    add_common(p)
    p.set_defaults(handler=_cmd_board_accuracy)

    p = bsub.add_parser("label", help="add (or --remove) labels of a board: soc=imx8mp, bsp=..., runtime=..., tag=lab")
    p.add_argument("name")
    p.add_argument("labels", nargs="*", metavar="KEY=VALUE", help="keys: soc, bsp, runtime, tag")
    p.add_argument("--remove", action="store_true", help="drop these labels instead")
    add_common(p)
    p.set_defaults(handler=_cmd_board_label)

    p = bsub.add_parser("history", help="the last health checks of a board (or of every board)")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", type=int, default=10, help="checks per board (default 10)")
    add_common(p)
    p.set_defaults(handler=_cmd_board_history)

    p = bsub.add_parser("matrix", help="benchmark variants x targets across a board or a pool of boards")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pool", help="a label query: 'imx8mp', 'soc=imx8mp tag=lab', or '*'")
    where.add_argument("--board", help="one registered board")
    p.add_argument("--any", action="store_true",
                   help="run each cell once on any free board of the pool (default: on every board)")
    p.add_argument("--variants", required=True, help="comma-separated variant ids of this store "
                   "(`qlab list` shows them)")
    p.add_argument("--targets", default="cpu", help="comma-separated: npu, cpu, cpu-plain (default cpu)")
    p.add_argument("--runs", type=int, default=defaults.BENCH_RUNS)
    p.add_argument("--warmup", type=int, default=defaults.BENCH_WARMUP)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="per-op (and on npu per-NPU-operation) profile")
    add_common(p)
    p.set_defaults(handler=_cmd_board_matrix)


# ---------------------------------------------------------------- as jobs
def board_bench_params(args: argparse.Namespace, variant_id: int) -> BoardBenchParams:
    """`qlab board bench`'s arguments as the board_bench job."""
    return BoardBenchParams(board=args.name, variant_ids=(variant_id,), targets=_target_names(args.target),
                            runs=args.runs, warmup=args.warmup, threads=args.threads, profile=args.profile)


def board_accuracy_params(args: argparse.Namespace, variant_id: int, dataset_id: int | None) -> BoardAccuracyParams:
    """`qlab board accuracy`'s arguments as the board_accuracy job, one cell per target."""
    targets = _target_names(args.target)
    return BoardAccuracyParams(board=args.name, variant_ids=(variant_id,), target=targets[0], targets=targets,
                               threads=args.threads, dataset_id=dataset_id)


def _target_names(value: str) -> tuple[str, ...]:
    """--target as job targets: "all" stays "all" (the board's available targets, the others skipped).

    Raises:
        QlabError: when it names no target.
    """
    targets = tuple(names(value))
    if not targets:
        raise QlabError(f"--target {value!r}: name npu, cpu, cpu-plain or all")
    return targets


# ---------------------------------------------------------------- handlers
def _board_targets(value: str) -> str | list[str]:
    return value if value == "all" else [t.strip() for t in value.split(",") if t.strip()]


def _cmd_board_add(args: argparse.Namespace) -> int:
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise QlabError(f"cannot read a token from {args.token_file}: {exc}") from None
        if not token:
            raise QlabError(f"token file {args.token_file} is empty")
    with open_store(args) as store:
        store.add_board(args.name, args.url, token)
        url, _ = store.board_token(args.name)
    note = "token stored" if token else "no token"
    emit(args, {"name": args.name, "url": url, "has_token": token is not None}, f"board {args.name} -> {url} ({note})")
    return EXIT_OK


def _cmd_board_list(args: argparse.Namespace) -> int:
    from qcore.boards.runs import board_health

    with open_store(args) as store:
        rows = board_health(store)
    payload, lines = [], []
    for r in rows:
        b = r.board
        entry: dict[str, Any] = {"name": b.name, "url": b.url, "has_token": b.has_token, "reachable": r.reachable}
        if r.reachable and r.health is not None:
            rt = r.health.get("runtime") or {}
            entry.update(health=r.health)
            avail = r.available_targets()
            missing = [f"{t}: {i.get('reason', '?')}" for t, i in r.health.get("targets", {}).items()
                       if not i.get("available")]
            lines.append(f"{b.name:<12} {b.url:<32} ok  {rt.get('name')} {rt.get('version')}  "
                         f"targets {', '.join(avail) or 'none'}  queue {r.health.get('queue_depth', '?')}"
                         + (f"  (unavailable: {'; '.join(missing)})" if missing else ""))
        else:
            entry.update(error=r.error)
            lines.append(f"{b.name:<12} {b.url:<32} UNREACHABLE  {r.error}")
        payload.append(entry)
    emit(args, {"boards": payload}, "\n".join(lines) if lines else "no boards; add one with `qlab board add NAME URL`")
    return EXIT_OK


def _cmd_board_bench(args: argparse.Namespace) -> int:

    from qcore.boards.runs import bench_on_board
    from qcore.store import sha256_bytes

    model = read_tflite(args.tflite)
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    with open_store(args) as store:
        results = bench_on_board(
            store, args.name, model, _board_targets(args.target), runs=args.runs, warmup=args.warmup,
            threads=args.threads, profile=args.profile, progress=log_progress, failed=failed, skipped=skipped,
        )
        variant_id = store.variant_id_for_sha(sha256_bytes(model))
    lines = [f"{args.tflite} on board {args.name}: {args.threads} thread(s), {args.runs} runs",
             f"  {'target':<10}{'init ms':>10}{'first ms':>10}{'min':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'std':>8}"
             f"{'RSS MB':>8}  ops on delegate / cpu"]
    for lat in results:
        ops = lat.extra.get("ops") or {}
        where = (f"{len(ops.get('delegated', []))} / {len(ops.get('cpu', []))}" if ops.get("known")
                 else "unknown")
        cache = lat.extra.get("cache")
        if cache:
            where += f"  graph cache {'warm' if cache.get('warm') else 'cold'}"
        lines.append(f"  {lat.target:<10}{lat.init_ms:>10.3f}{lat.first_ms:>10.3f}{lat.min_ms:>9.3f}{lat.p50_ms:>9.3f}"
                     f"{lat.p90_ms:>9.3f}{lat.p99_ms:>9.3f}{lat.std_ms:>8.3f}"
                     f"{lat.extra.get('peak_rss_mb', float('nan')):>8.1f}  {where}")
        prof = lat.extra.get("profile") or {}
        if args.profile:
            if prof.get("available"):
                top = sorted(prof.get("ops", []), key=lambda o: -o.get("avg_ms", 0))[:5]
                lines += [f"      {o.get('avg_ms', 0):8.3f} ms  {o.get('node_type')}  {o.get('name', '')}" for o in top]
            else:
                lines.append(f"      profile not available: {prof.get('reason', '?')}")
            npu = prof.get("npu") or {}
            if npu.get("available"):
                lines.append(f"      NPU driver profile: {npu['ops_per_invoke']} NPU operations, {npu['total_ms']:.3f} ms "
                             f"at {npu['clock_mhz']:g} MHz ({npu['busy_ms']:.3f} ms busy), DDR read "
                             f"{npu['ddr_read_mb']:.2f} MB / write {npu['ddr_write_mb']:.2f} MB per invoke; "
                             f"mapping to TFLite ops: {npu.get('mapping_reason', '?')}")
            elif npu:
                lines.append(f"      NPU driver profile not available: {npu.get('reason', '?')}")
    lines += [f"  skipped {t}: {why}" for t, why in skipped.items()]
    lines += [f"  failed {t}: {why}" for t, why in failed.items()]
    lines.append(f"  stored {len(results)} timing(s)" + (f" for variant {variant_id}" if variant_id else ""))
    payload = {"board": args.name, "model": args.tflite, "sha256": sha256_bytes(model), "variant_id": variant_id,
               "results": [asdict(lat) for lat in results], "skipped": skipped, "failed": failed}
    emit(args, payload, "\n".join(lines))
    # some targets failed on the board (the others are stored)
    return EXIT_PARTIAL if failed else EXIT_OK


def _cmd_board_accuracy(args: argparse.Namespace) -> int:
    from qcore.boards.client import resolve_targets
    from qcore.boards.runs import accuracy_on_board, client_for
    from qcore.store import sha256_bytes

    model = read_tflite(args.tflite)
    dataset = load_data_arg(args, tflite_input_shape(model))
    with open_store(args) as store:
        client = client_for(store, args.name)
        try:
            chosen, skipped = resolve_targets(client.health(), _board_targets(args.target))
        finally:
            client.close()
        variant_id = store.variant_id_for_sha(sha256_bytes(model))
        rows = []
        for target in chosen:
            ev, host_agreement = accuracy_on_board(store, args.name, model, dataset, target, threads=args.threads,
                                                   progress=log_progress)
            rows.append((target, ev, host_agreement))
    lines = [f"{args.tflite} on board {args.name}, {len(dataset.y_test)} test samples of {dataset.name}"]
    lines += [f"  {t:<10} accuracy {ev.accuracy:.4f}  top-5 {ev.top5:.4f}  agreement with host {agree:.4f}  ({ev.note})"
              for t, ev, agree in rows]
    lines += [f"  skipped {t}: {why}" for t, why in skipped.items()]
    lines.append(f"  stored as evaluations of variant {variant_id}" if variant_id
                 else "  not stored: this .tflite is not a known variant (make it with `qlab convert`)")
    payload = {
        "board": args.name, "model": args.tflite, "variant_id": variant_id, "skipped": skipped,
        "results": [{"target": t, "device": f"board:{args.name}/{t}", "accuracy": ev.accuracy, "top5": ev.top5,
                     "host_agreement": agree, "n_samples": ev.n_samples, "note": ev.note,
                     "confusion": [list(r) for r in ev.confusion]} for t, ev, agree in rows],
    }
    emit(args, payload, "\n".join(lines))
    return EXIT_OK


def _cmd_board_label(args: argparse.Namespace) -> int:
    pairs = []
    for item in args.labels:
        key, sep, value = item.partition("=")
        if not sep:
            raise QlabError(f"label {item!r} is not KEY=VALUE (keys: soc, bsp, runtime, tag)")
        pairs.append((key.strip(), value.strip()))
    with open_store(args) as store:
        if pairs:
            store.set_board_labels(args.name, pairs, remove=args.remove)
        labels = store.board_labels(args.name)
    rows = labels.to_dict("records")
    text = "\n".join(f"{args.name}  {r['key']}={r['value']}  ({r['source']})" for r in rows) or f"{args.name}: no labels"
    emit(args, {"board": args.name, "labels": rows}, text)
    return EXIT_OK


def _cmd_board_history(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        if args.name:
            store.board_token(args.name)
        hist = store.health_history(args.name, limit=max(1, args.n))
    rows = hist.to_dict("records")
    lines = [f"{r['board']:<12} {str(r['checked_at'])[:19]}  "
             + ("up    " + str(r['runtime'] or '') + f"  queue {r['queue_depth']}" if r["reachable"]
                else "DOWN  " + str(r["error"]))
             for r in rows]
    emit(args, {"history": rows}, "\n".join(lines) or "no health checks yet (`qlab board list` makes one)")
    return EXIT_OK


def _cmd_board_matrix(args: argparse.Namespace) -> int:

    from qcore.boards.runs import matrix, matrix_spread
    from qcore.qtyping import Placement

    ids = variant_ids(args.variants)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    placement = Placement.BOARD if args.board else (Placement.ANY if args.any else Placement.EACH)
    with open_store(args) as store:
        result = matrix(store, ids, targets, pool=args.board or args.pool, placement=placement,
                        runs=args.runs, warmup=args.warmup, threads=args.threads, profile=args.profile,
                        progress=log_progress)
        spread = matrix_spread(store, result.run_id)
    done = len(result.cells) - len(result.failed)
    lines = [f"board run {result.run_id}: {len(result.cells)} cell(s) on {', '.join(result.boards)} "
             f"({placement.value}), {done} done, {len(result.failed)} failed, {result.wall_s:.1f} s"]
    for c in result.cells:
        what = f"p50 {c.p50_ms:.3f} ms" if c.p50_ms is not None else f"FAILED: {c.reason}"
        moved = f"  (moved from {', '.join(a['board'] for a in c.attempts)})" if c.attempts else ""
        lines.append(f"  #{c.variant_id} {c.target:<9} {c.board or '-':<12} {what}{moved}")
    if not spread.empty and spread["boards"].max() > 1:
        lines.append("  spread across boards (p50 ms): variant target board p50 [pool min / median / max]")
        lines += [f"    #{r.variant_id} {r.target:<9} {r.board:<12} {r.p50_ms:.3f} "
                  f"[{r.pool_min_ms:.3f} / {r.pool_median_ms:.3f} / {r.pool_max_ms:.3f}]"
                  for r in spread.itertuples(index=False)]
    payload = {"run_id": result.run_id, "placement": placement.value, "pool": result.pool,
               "boards": list(result.boards), "wall_s": result.wall_s, "retries_429": result.retries_429,
               "cells": [asdict(c) for c in result.cells], "spread": spread.to_dict("records")}
    emit(args, payload, "\n".join(lines))
    # some cells failed (their reasons are stored; the others are stored too)
    return EXIT_PARTIAL if result.failed else EXIT_OK
