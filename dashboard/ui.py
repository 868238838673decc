"""Small widgets every page shares: error display, job panels, pickers, number formats."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import auth
from dashboard.services import access, data_check, npu_view, reads, tables, words
from dashboard.services.access import Action
from dashboard.services.jobs import ACTIVE
from dashboard.services.lab import Lab, lab
from qcore.jobs.contract import JobParams
from qcore.qtyping import Job, JobStatus, QlabError
from qcore.store.files import disk_words, is_disk_error

# how often a page asks the jobs table for progress
POLL_SECONDS = 1.0


# the characters that let text in Streamlit's markdown make links ([..](..), <..>), :colour[..]
# directives, code or LaTeX ($); emphasis marks are left alone (at worst they restyle a word)
_MD_SPECIAL = re.compile(r"([\\`\[\]<>$])")


def md(text: Any) -> str:
    """User text (titles, names, file names in errors) made literal inside Streamlit markdown:
    no links, emphasis, LaTeX or :directives: of its own."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


@contextmanager
def guard(what: str = "") -> Iterator[None]:
    """Shows a user error (QlabError, ValueError, a write the disk refused) as `st.error` in words instead
    of a traceback."""
    try:
        yield
    except (QlabError, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and not is_disk_error(exc):
            raise
        text = md(words.for_ui(disk_words(exc) if is_disk_error(exc) else str(exc)))
        st.error(f"{what}: {text}" if what else text, icon=":material/error:")


def current() -> Lab:
    """The server's lab; a store that cannot open is shown in words and stops the page."""
    try:
        return lab()
    except QlabError as exc:
        st.error(str(exc), icon=":material/error:")
        st.stop()
        raise  # unreachable: st.stop() raises


def latest_job(the_lab: Lab, kinds: tuple[str, ...]) -> Job | None:
    """The newest job of these kinds: what the page shows, to every browser alike."""
    jobs = [j for j in the_lab.store.jobs(limit=50) if j.kind in kinds]
    return jobs[0] if jobs else None


def job_panel(
    job: Job | None,
    *,
    key: str,
    on_done: Callable[[Job], None] | None = None,
    live: Callable[[Job], None] | None = None,
) -> None:
    """Shows a job: a live progress bar while it runs (polled), then its outcome.

    Args:
        job: the job to follow (from the store, never from session state).
        key: a session-unique prefix.
        on_done: renders a finished job's result.
        live: renders a running job's partial result on every poll (e.g. QAT curves).
    """
    if job is None:
        return
    if job.status in ACTIVE:
        the_lab = current()

        @st.fragment(run_every=POLL_SECONDS)
        def _poll() -> None:
            j = the_lab.store.job(job.id)
            if j.status in ACTIVE:
                label = (j.message or "waiting for a free worker") if j.status is JobStatus.QUEUED else j.message
                st.progress(j.progress, text=f"job #{j.id} ({j.kind}): {label}")
                cols = st.columns([4, 1])
                where = f" on {j.worker_host} ({j.worker})" if j.worker else ""
                subject = job_subject(the_lab, j)
                cols[0].caption((f"{subject} · " if subject else "") + f"{j.status}{where}"
                                + (f", {tables.elapsed(j)}" if j.started_at else ""))
                cancel_button(the_lab, j, cols[1], key=f"{key}_cancel_{j.id}")
                if live is not None:
                    live(j)
            else:
                reads.clear()
                st.rerun(scope="app")

        _poll()
        return
    if job.status is JobStatus.FAILED:
        st.error(f"job #{job.id} ({job.kind}) failed: {md(words.for_ui(job.error))}", icon=":material/error:")
    elif job.status is JobStatus.CANCELLED:
        kept = (job.result or {}).get("kept") or []  # a conversion keeps the recipes it finished
        st.warning(f"job #{job.id} ({job.kind}) was cancelled"
                   + (f"; it kept {len(kept)} finished: {md(', '.join(map(str, kept)))}" if kept else ""),
                   icon=":material/cancel:")
    else:
        st.success(f"job #{job.id} ({job.kind}) finished", icon=":material/check_circle:")
    if on_done is not None and job.status is JobStatus.DONE:
        on_done(job)


def cancel_button(the_lab: Lab, job: Job, where: Any = None, *, key: str) -> None:
    """A Cancel button for a queued or running job its viewer may cancel (their own, or any for an admin);
    the job ends `cancelled` within seconds. The click passes the same check as the API's DELETE."""
    if job.status not in ACTIVE or not auth.can(Action.CANCEL, owner=job.created_by):
        return
    if (where or st).button("Cancel", key=key, icon=":material/cancel:", help=f"stop job #{job.id}"):
        with guard(f"cannot cancel job #{job.id}"):
            access.cancel(the_lab, auth.who(), job.id)
            st.toast(f"cancelling job #{job.id}")


def submit(the_lab: Lab, params: JobParams) -> int:
    """Queues a job for the signed-in user through the rule book (role, per-person limit), as the API does.

    Raises:
        access.Refused: in words, for a viewer or a user at QLAB_MAX_ACTIVE_JOBS (pages show it with `guard`).
    """
    return access.submit(the_lab, auth.who(), params)


def running_params(the_lab: Lab, kinds: tuple[str, ...]) -> dict[str, Any]:
    """The params of the newest job of these kinds while it is queued or running, else {}."""
    job = latest_job(the_lab, kinds) if kinds else None
    return dict(job.params or {}) if job is not None and job.status in ACTIVE else {}


def pick_model(the_lab: Lab, key: str, label: str = "model", follow: tuple[str, ...] = ()) -> int | None:
    """A selectbox of stored models (labels that tell them apart); returns the model id.

    Args:
        follow: job kinds whose running job's model a fresh page (a reload mid-job) opens on.
    """
    models = reads.models(the_lab.db_key)
    if models.empty:
        st.info("No model stored yet: add one on the Models & data page.", icon=":material/info:")
        return None
    names = {int(r["id"]): tables.model_label(r) for r in models.to_dict("records")}
    running = running_params(the_lab, follow).get("model_id") if key not in st.session_state else None
    index = list(names).index(int(running)) if running is not None and int(running) in names else 0
    return st.selectbox(label, list(names), index=index, format_func=names.__getitem__, key=key)


def pick_dataset(the_lab: Lab, key: str, label: str = "dataset", for_model: int | None = None,
                 follow: tuple[str, ...] = ()) -> int | None:
    """A selectbox of stored datasets; returns the dataset id.

    With `for_model`, the choice is the model's own (one per model): it opens on the running job's
    dataset for that model, else the dataset the model was last converted with, so a reload or a
    model change never pairs a model with another model's data by default.
    """
    data = reads.datasets(the_lab.db_key)
    if data.empty:
        st.info("No dataset stored yet: add one on the Models & data page.", icon=":material/info:")
        return None
    names = {
        int(r.id): f"#{r.id} {r.name} (scale {r.input_scale:g}, offset {r.input_offset:g}, {r.n_test} test)"
        for r in data.itertuples()
    }
    if for_model is None:
        return st.selectbox(label, list(names), format_func=names.__getitem__, key=key)
    widget_key = f"{key}_{for_model}"
    running = running_params(the_lab, follow)
    wanted = running.get("dataset_id") if running.get("model_id") == for_model else None
    if wanted is None:
        wanted = tables.last_dataset(reads.variants(the_lab.db_key, model_ids=(int(for_model),)))
    index = list(names).index(int(wanted)) if wanted is not None and int(wanted) in names else 0
    return st.selectbox(label, list(names), index=index if widget_key not in st.session_state else 0,
                        format_func=names.__getitem__, key=widget_key)


def job_subject(the_lab: Lab, job: Job) -> str:
    """What a job works on, in words: "model #1 mnv2 · dataset #2 digits32", or "" when it names neither."""
    params = job.params or {}
    parts = []
    if params.get("model_id") is not None:
        models = reads.models(the_lab.db_key)
        hit = models[models["id"] == int(params["model_id"])]
        parts.append(f"model #{params['model_id']}" + (f" {hit['name'].iloc[0]}" if not hit.empty else ""))
    if params.get("dataset_id") is not None:
        data = reads.datasets(the_lab.db_key)
        hit = data[data["id"] == int(params["dataset_id"])]
        parts.append(f"dataset #{params['dataset_id']}" + (f" {hit['name'].iloc[0]}" if not hit.empty else ""))
    return " · ".join(parts)


def variant_options(df: pd.DataFrame, ok_only: bool = True) -> dict[int, str]:
    """variant id → "#id model / variant · dataset · accuracy" for selectboxes (`tables.variant_label`)."""
    if ok_only and not df.empty:
        df = df[df["status"] == "ok"]
    return {int(r["variant_id"]): tables.variant_label(r) for r in df.to_dict("records")}


def kib(n: Any) -> str:
    try:
        return f"{float(n) / 1024:.1f} KiB"
    except (TypeError, ValueError):
        return "–"


def pct(x: Any) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if f != f else f"{100 * f:.2f}%"


def npu_verdict(row: Any, what: str = "") -> None:
    """The NPU verdict of one stored variant as a coloured line: ready, falls back to the CPU, or not linted."""
    row = dict(row)
    text = (f"{what}: " if what else "") + npu_view.verdict_line(row)
    state = npu_view.ready(row)
    if state is True:
        st.success(text, icon=":material/memory:")
    elif state is False:
        st.warning(text, icon=":material/memory:")
    else:
        st.caption(text)


# session keys another page reads once: the variant chosen with "Use this variant"
USE_VARIANT_KEY = "ui_use_variant"


def use_variant_button(variant_id: int, model_id: int, key: str) -> None:
    """"Use this variant": opens Compare with it selected (beside float32) and preselects it on Boards."""
    if st.button("Use this variant", key=key, icon=":material/open_in_new:",
                 help="open Compare with it selected; it is also preselected for a board benchmark"):
        st.session_state[USE_VARIANT_KEY] = (int(variant_id), int(model_id))
        st.session_state["boards_bench_variants"] = [int(variant_id)]
        st.switch_page("app_pages/compare.py")


def take_used_variant() -> tuple[int, int] | None:
    """The (variant id, model id) a "Use this variant" button passed to this page, once."""
    value = st.session_state.pop(USE_VARIANT_KEY, None)
    return (int(value[0]), int(value[1])) if value else None


def data_findings(the_lab: Lab, model_id: int | None, dataset_id: int | None) -> list[tuple[str, str]]:
    """(severity, message) of the dataset against the model (shape, value range, labels); [] when it fits."""
    if model_id is None or dataset_id is None:
        return []
    models = reads.models(the_lab.db_key)
    found = models[models["id"] == int(model_id)]
    if found.empty:
        return []
    try:
        prof = reads.dataset_profile(the_lab.db_key, int(dataset_id))
    except QlabError as exc:
        return [("warning", f"cannot check the dataset against the model: {exc}")]
    return list(data_check.warnings(dict(found.iloc[0]), prof, f"dataset #{dataset_id}"))


def show_findings(findings: list[tuple[str, str]]) -> None:
    for severity, message in findings:
        if severity == "error":
            st.error(message, icon=":material/error:")
        else:
            st.warning(message, icon=":material/warning:")


def data_fit(the_lab: Lab, model_id: int | None, dataset_id: int | None) -> bool:
    """Warns before a job fails: the dataset against the model (shape, value range, labels). True when it fits."""
    findings = data_findings(the_lab, model_id, dataset_id)
    show_findings(findings)
    return not any(severity == "error" for severity, _ in findings)


# hex digits of a sha256 a table shows: enough to tell files apart
SHA_SHOWN = 12


def short_sha(df: pd.DataFrame) -> pd.DataFrame:
    """The table with its sha256 column cut to its first 12 hex digits."""
    if "sha256" not in df:
        return df
    return df.assign(sha256=df["sha256"].astype(str).str.slice(0, SHA_SHOWN))
