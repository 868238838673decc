"""REST API v1 handlers: uploads, jobs, result lists and reports, over the owner process's lab."""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dashboard.api import backup, jobspec, openapi
from dashboard.api.http import PREFIX, ApiError, ApiRoute, Error, json_response, principal
from dashboard.services import access, reads, report_links, uploads
from dashboard.services.access import Action
from dashboard.services.lab import Lab, lab
from qcore import __version__, defaults
from qcore.boards.runs import variant_model
from qcore.jobs.contract import JobParams
from qcore.lab import reports
from qcore.qtyping import JobStatus, QlabError
from qcore.serialize import frame_records, to_json
from qcore.store import accounts

# the same cap as the UI's uploads (dashboard/services/uploads.py); past it the answer is 413
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
# multipart overhead allowed on top of the file itself before Content-Length alone says 413
MULTIPART_SLACK_BYTES = 1024 * 1024
# a JSON body (a job or a report request) is small; anything bigger is a mistake or an attack
MAX_JSON_BYTES = 1024 * 1024
PARQUET = "application/vnd.apache.parquet"


# ---------------------------------------------------------------- response records (the schema's source)
@dataclass(frozen=True)
class Health:
    status: str
    version: str


@dataclass(frozen=True)
class ModelCreated:
    id: int
    name: str
    sha256: str
    format: str
    input_shape: list[int | None]
    created_by: str


@dataclass(frozen=True)
class DatasetCreated:
    id: int
    name: str
    source: str
    n_train: int
    n_test: int
    num_classes: int
    input_scale: float
    input_offset: float
    created_by: str


@dataclass(frozen=True)
class JobAccepted:
    id: int
    status: str


@dataclass(frozen=True)
class JobState:
    id: int
    kind: str
    status: str
    progress: float
    message: str
    worker: str | None
    created_by: str | None
    result: dict[str, Any] | None
    error: str


@dataclass(frozen=True)
class ReportRequest:
    title: str
    variant_ids: list[int]
    notes: str = ""


@dataclass(frozen=True)
class ReportCreated:
    id: str
    url: str


RESPONSE_TYPES = (Health, ModelCreated, DatasetCreated, JobAccepted, JobState, ReportRequest, ReportCreated, Error)


def _ref(cls: type[Any]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{cls.__name__}"}}}


LIST_CONTENT = {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                PARQUET: {"schema": {"type": "string", "format": "binary"}}}
FORMAT_PARAM = {"name": "format", "in": "query", "required": False,
                "schema": {"type": "string", "enum": ["json", "parquet"], "default": "json"}}


def _int_param(name: str, where: str = "query", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": {"type": "integer", "minimum": 1, "maximum": 2**62}}


def _int_arg(request: Request, name: str, *, path: bool = False) -> int | None:
    raw = request.path_params.get(name) if path else request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise QlabError(f"{name}: expected a positive integer, got {raw!r}") from None
    if not 1 <= value <= 2**62:
        raise QlabError(f"{name}: expected a positive integer, got {raw!r}")
    return value


# encoded list answers kept per (generation of the cached reads, path, query); a write starts a new generation
_ANSWERS: OrderedDict[tuple[int, str, str], tuple[bytes, str]] = OrderedDict()
# a few lists and their filters; older generations fall out first
MAX_ANSWERS = 64
_answers_lock = threading.Lock()
# one encoder per key: a burst of identical reads waits for the first instead of each reading the database
_encoding: dict[tuple[int, str, str], threading.Lock] = {}


async def _table(request: Request, read: Callable[[], pd.DataFrame]) -> Response:
    """A list answer: JSON records, or Parquet with ?format=parquet; read and encoded off the event loop,
    once per change of the lab (the answer is kept until the next write clears the cached reads)."""
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "parquet"):
        raise QlabError(f"format: expected 'json' or 'parquet', got {fmt!r}")
    key = (reads.generation(), request.url.path, str(request.query_params))

    def encode() -> tuple[bytes, str]:
        df = read()
        if fmt == "parquet":
            buf = io.BytesIO()
            df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(buf, index=False)
            return buf.getvalue(), PARQUET
        return to_json(frame_records(df)).encode("utf-8"), "application/json"

    def answer() -> tuple[bytes, str]:
        with _answers_lock:
            if key in _ANSWERS:
                return _ANSWERS[key]
            lock = _encoding.setdefault(key, threading.Lock())
        with lock:
            with _answers_lock:
                if key in _ANSWERS:
                    return _ANSWERS[key]
            got = encode()
            with _answers_lock:
                _ANSWERS[key] = got
                while len(_ANSWERS) > MAX_ANSWERS:
                    _ANSWERS.popitem(last=False)
                _encoding.pop(key, None)
            return got

    body, media = await run_in_threadpool(answer)
    return Response(body, media_type=media)


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_JSON_BYTES:
        raise ApiError(413, f"the JSON body is {len(body)} bytes, over the {MAX_JSON_BYTES} byte limit")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QlabError(f"body: not valid JSON ({exc})") from None


async def _form(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + MULTIPART_SLACK_BYTES:
        raise ApiError(413, f"the upload is {int(length) / 2**20:.0f} MB, over the "
                            f"{MAX_UPLOAD_BYTES // 2**20} MB limit")
    if not request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                               "application/x-www-form-urlencoded")):
        raise QlabError("body: expected multipart/form-data (a 'file' field and text fields)")
    try:
        return await request.form(max_files=2, max_fields=20)
    except Exception as exc:  # the multipart parser's own refusal (malformed body, too many parts)
        raise QlabError(f"body: not a readable multipart form ({exc})") from None


async def _file(form: Any, field: str = "file", required: bool = True) -> tuple[str, bytes] | None:
    upload = form.get(field)
    if not isinstance(upload, UploadFile):
        if required:
            raise QlabError(f"{field}: a file is required")
        return None
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ApiError(413, f"{field}: {upload.filename} is over the {MAX_UPLOAD_BYTES // 2**20} MB limit")
    return upload.filename or field, data


def _text(form: Any, field: str, default: str = "") -> str:
    value = form.get(field, default)
    if not isinstance(value, str):
        raise QlabError(f"{field}: expected text, got a file")
    return value


def _float(form: Any, field: str, default: float) -> float:
    raw = _text(form, field, "")
    if raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise QlabError(f"{field}: expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise QlabError(f"{field}: expected a finite number, got {raw!r}")
    return value


# ---------------------------------------------------------------- handlers
async def health(request: Request) -> Response:
    return json_response({"status": "ok", "version": __version__})


async def schema(request: Request) -> Response:
    return json_response(openapi.document(API, version=__version__, response_types=RESPONSE_TYPES))


async def create_model(request: Request) -> Response:
    who = principal(request)
    form = await _form(request)
    got = await _file(form)
    assert got is not None
    filename, data = got
    name = _text(form, "name")
    trusted = _text(form, "trusted", "false").strip().lower()
    if trusted not in ("true", "false", "1", "0", ""):
        raise QlabError(f"trusted: expected true or false, got {trusted!r}")
    if trusted in ("true", "1"):
        access.check(who, Action.TRUST, what="trusted: vouching for a model")
    the_lab = lab()

    def add() -> tuple[int, dict[str, Any]]:
        model_id = uploads.add_model(the_lab, filename, data, name, trusted=trusted in ("true", "1"), who=who)
        accounts.stamp(the_lab.store, "models", model_id, who.email)
        reads.clear()  # the lists show who made it
        return model_id, the_lab.store.model(model_id)

    model_id, row = await run_in_threadpool(add)
    return json_response({"id": model_id, "name": row["name"], "sha256": row["sha256"], "format": row["format"],
                          "input_shape": json.loads(row["input_shape"]),
                          "created_by": row.get("created_by") or who.email}, 201)


async def list_models(request: Request) -> Response:
    store = lab().store
    return await _table(request, lambda: store.query(
        "SELECT id, name, format, sha256, input_shape, output_shape, keras_major, created_by, created_at "
        "FROM models ORDER BY id"))


async def create_dataset(request: Request) -> Response:
    who = principal(request)
    form = await _form(request)
    scale, offset = _float(form, "input_scale", 1.0), _float(form, "input_offset", 0.0)
    source = _text(form, "source").strip()
    for_model = _int_arg_form(form, "model_id")
    the_lab = lab()
    got = await _file(form, required=source != "digits")
    if source not in ("", "digits"):
        raise QlabError(f"source: only 'digits' (scikit-learn's bundled digits) is built in, got {source!r}")
    name = _text(form, "name")

    def add() -> tuple[int, dict[str, Any]]:
        if for_model is not None:
            the_lab.store.model(for_model)  # 422 naming it when unknown
        if got is None:
            dataset_id = uploads.add_digits(the_lab, input_scale=scale, input_offset=offset, who=who)
        else:
            dataset_id = uploads.add_dataset(the_lab, got[0], got[1], input_scale=scale, input_offset=offset,
                                             name=name, for_model=for_model, who=who)
        accounts.stamp(the_lab.store, "datasets", dataset_id, who.email)
        reads.clear()  # the lists show who made it
        return dataset_id, the_lab.store.dataset(dataset_id)

    dataset_id, row = await run_in_threadpool(add)
    return json_response({k: row[k] for k in ("name", "source", "n_train", "n_test", "num_classes", "input_scale",
                                                "input_offset")}
                         | {"id": dataset_id, "created_by": row.get("created_by") or who.email}, 201)


def _int_arg_form(form: Any, field: str) -> int | None:
    raw = _text(form, field).strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 2**62:
        raise QlabError(f"{field}: expected a positive integer, got {raw!r}")
    return int(raw)


async def list_datasets(request: Request) -> Response:
    store = lab().store
    return await _table(request, lambda: store.query(
        "SELECT id, name, source, input_scale, input_offset, n_train, n_test, num_classes, created_by, created_at "
        "FROM datasets ORDER BY id"))


async def create_variant(request: Request) -> Response:
    """Queues the import of a .tflite made elsewhere (and optionally its float reference) as a job."""
    who = principal(request)
    form = await _form(request)
    got = await _file(form)
    assert got is not None
    reference = await _file(form, "reference", required=False)
    dataset_id = _int_arg_form(form, "dataset_id")
    name = _text(form, "name")
    the_lab = lab()

    def add() -> int:
        if dataset_id is not None:
            the_lab.store.dataset(dataset_id)  # 422 naming it when unknown
        return uploads.add_tflite(the_lab, got[0], got[1], reference=reference, name=name, dataset_id=dataset_id,
                                  who=who)

    job_id = await run_in_threadpool(add)
    return json_response({"id": job_id, "status": str(JobStatus.QUEUED)}, 202)


async def list_variants(request: Request) -> Response:
    model_id = _int_arg(request, "model_id")
    store = lab().store

    def read() -> pd.DataFrame:
        df = store.variant_summary(model_ids=[model_id] if model_id else None)
        return df.drop(columns=[c for c in ("path",) if c in df.columns])

    return await _table(request, read)


async def variant_tflite(request: Request) -> Response:
    """A stored variant's .tflite: what `qlab --server … convert --out DIR` writes on the client."""
    variant_id = int(_int_arg(request, "id", path=True) or 0)
    store = lab().store

    def read() -> tuple[dict[str, Any], bytes]:
        try:
            store.variant(variant_id)
        except QlabError:
            raise ApiError(404, f"no variant with id {variant_id}") from None
        return variant_model(store, variant_id)

    row, data = await run_in_threadpool(read)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{row["sha256"]}.tflite"'})


async def list_benchmarks(request: Request) -> Response:
    variant_id = _int_arg(request, "variant_id")
    store = lab().store
    return await _table(request, lambda: store.benchmarks(variant_ids=[variant_id] if variant_id else None))


async def debug_layers(request: Request) -> Response:
    run_id = _int_arg(request, "id", path=True)
    store = lab().store
    run = await run_in_threadpool(store._one, "SELECT engine FROM debug_runs WHERE id = ?", [run_id])
    if run is None:
        raise ApiError(404, f"no debug run with id {run_id}")

    def read() -> pd.DataFrame:
        stats = store.layer_stats(int(run_id or 0))
        stats.insert(0, "engine", run[0] or defaults.ENGINE)  # every per-layer row names the engine that made it
        return stats

    return await _table(request, read)


def _check_refs(the_lab: Lab, params: JobParams) -> None:
    """Unknown ids and boards are a 422 now, not a failed job later."""
    store = the_lab.store
    for name in ("model_id", "dataset_id"):
        if getattr(params, name, None) is not None:  # compare_tensors' and board_accuracy's dataset is optional
            getattr(store, name.removesuffix("_id"))(getattr(params, name))
    for name in ("float_variant_id", "quant_variant_id"):
        if hasattr(params, name):
            store.variant(getattr(params, name))
    for vid in getattr(params, "variant_ids", []):
        store.variant(vid)
    if hasattr(params, "board") and params.board not in {b.name for b in store.boards()}:
        raise QlabError(f"params.board: no board named {params.board!r}")


async def submit_job(request: Request) -> Response:
    who = principal(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise QlabError("body: expected an object {\"kind\", \"params\"}")
    unknown = sorted(set(body) - {"kind", "params"})
    if unknown:
        raise QlabError(f"{unknown[0]}: unknown field; a job is {{\"kind\", \"params\"}}")
    kind = body.get("kind")
    params = jobspec.parse(kind, body.get("params"))
    the_lab = lab()

    def queue() -> int:
        _check_refs(the_lab, params)
        return access.submit(the_lab, who, params)

    job_id = await run_in_threadpool(queue)
    return json_response({"id": job_id, "status": str(JobStatus.QUEUED)}, 202)


def _job_state(the_lab: Lab, job_id: int) -> dict[str, Any]:
    try:
        job = the_lab.store.job(job_id)
    except QlabError:
        raise ApiError(404, f"no job with id {job_id}") from None
    return {"id": job.id, "kind": job.kind, "status": str(job.status), "progress": job.progress,
            "message": job.message, "worker": getattr(job, "worker", None) or None,
            "created_by": job.created_by, "result": job.result, "error": job.error}


async def get_job(request: Request) -> Response:
    return json_response(await run_in_threadpool(_job_state, lab(), int(_int_arg(request, "id", path=True) or 0)))


async def cancel_job(request: Request) -> Response:
    who = principal(request)
    the_lab = lab()
    job_id = int(_int_arg(request, "id", path=True) or 0)

    def cancel() -> dict[str, Any]:
        _job_state(the_lab, job_id)  # 404 for an unknown job
        access.cancel(the_lab, who, job_id)
        return _job_state(the_lab, job_id)

    return json_response(await run_in_threadpool(cancel))


async def create_report(request: Request) -> Response:
    who = principal(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise QlabError("body: expected an object {\"title\", \"variant_ids\", \"notes\"}")
    unknown = sorted(set(body) - {"title", "variant_ids", "notes"})
    if unknown:
        raise QlabError(f"{unknown[0]}: unknown field of a report")
    title, notes, ids = body.get("title"), body.get("notes", ""), body.get("variant_ids")
    if not isinstance(title, str) or not title.strip():
        raise QlabError("title: required, a non-empty string")
    if not isinstance(notes, str):
        raise QlabError("notes: expected a string")
    if (not isinstance(ids, list) or not ids
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**62 for v in ids)):
        raise QlabError("variant_ids: required, a non-empty list of variant ids")
    the_lab = lab()

    def make() -> str:
        report_id = reports.make_report(the_lab.store, title, notes, ids)
        accounts.stamp(the_lab.store, "reports", report_id, who.email)
        reads.clear()  # the lists show who made it
        return report_id

    report_id = await run_in_threadpool(make)
    return json_response({"id": report_id, "url": report_links.url(report_id)}, 201)


async def report_bundle(request: Request) -> Response:
    report_id = str(request.path_params["id"])
    the_lab = lab()

    def bundle() -> bytes:
        try:
            the_lab.store.report(report_id)
        except QlabError:
            raise ApiError(404, f"no report with id {report_id!r}") from None
        return reports.export_bundle(the_lab.store, report_id)

    data = await run_in_threadpool(bundle)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="qlab-report-{report_id}.zip"'})


async def import_report(request: Request) -> Response:
    who = principal(request)
    form = await _form(request)
    got = await _file(form)
    assert got is not None
    the_lab = lab()

    def bring_in() -> str:
        report_id = reports.import_bundle(the_lab.store, got[1])
        accounts.stamp(the_lab.store, "reports", report_id, who.email)
        reads.clear()  # the lists show who made it
        return report_id

    report_id = await run_in_threadpool(bring_in)
    return json_response({"id": report_id, "url": report_links.url(report_id)}, 201)


async def not_found(request: Request) -> Response:
    raise ApiError(404, f"no API route {request.method} {request.url.path}; see {PREFIX}/openapi.json")


# ---------------------------------------------------------------- the table
def _multipart(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": fields, "required": required}}}}


_FILE = {"type": "string", "format": "binary"}
_TEXT = {"type": "string"}

API: tuple[ApiRoute, ...] = (
    ApiRoute("GET", f"{PREFIX}/health", health, "liveness and version", action=None, responses={200: _ref(Health)}),
    ApiRoute("GET", f"{PREFIX}/openapi.json", schema, "this document", action=None,
             responses={200: {"application/json": {"schema": {"type": "object"}}}}),
    ApiRoute("POST", f"{PREFIX}/models", create_model, "upload a .keras, .h5 or zipped SavedModel",
             action=Action.UPLOAD, body=_multipart({"file": _FILE, "name": _TEXT,
                                                "trusted": {"type": "string", "enum": ["true", "false"]}}, ["file"]),
             responses={201: _ref(ModelCreated)}),
    ApiRoute("GET", f"{PREFIX}/models", list_models, "stored models", parameters=(FORMAT_PARAM,),
             responses={200: LIST_CONTENT}),
    ApiRoute("POST", f"{PREFIX}/datasets", create_dataset,
             "upload a .npz or zip of class folders, or register source=digits", action=Action.UPLOAD,
             body=_multipart({"file": _FILE, "name": _TEXT, "source": {"type": "string", "enum": ["digits"]},
                              "input_scale": _TEXT, "input_offset": _TEXT, "model_id": _TEXT}, []),
             responses={201: _ref(DatasetCreated)}),
    ApiRoute("GET", f"{PREFIX}/datasets", list_datasets, "stored datasets", parameters=(FORMAT_PARAM,),
             responses={200: LIST_CONTENT}),
    ApiRoute("POST", f"{PREFIX}/variants", create_variant,
             "import a .tflite made elsewhere (a job; its result names the variant)", action=Action.UPLOAD,
             body=_multipart({"file": _FILE, "reference": _FILE, "name": _TEXT, "dataset_id": _TEXT}, ["file"]),
             responses={202: _ref(JobAccepted)}),
    ApiRoute("GET", f"{PREFIX}/variants", list_variants, "variants with their latest host results",
             parameters=(_int_param("model_id"), FORMAT_PARAM), responses={200: LIST_CONTENT}),
    ApiRoute("GET", f"{PREFIX}/variants/{{id}}/tflite", variant_tflite, "a variant's .tflite file",
             parameters=(_int_param("id", "path"),),
             responses={200: {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}),
    ApiRoute("GET", f"{PREFIX}/benchmarks", list_benchmarks, "timings on the host and on boards",
             parameters=(_int_param("variant_id"), FORMAT_PARAM), responses={200: LIST_CONTENT}),
    ApiRoute("GET", f"{PREFIX}/debug_runs/{{id}}/layers", debug_layers,
             "a debugger run's per-layer statistics, each row naming the engine that made it",
             parameters=(_int_param("id", "path"), FORMAT_PARAM), responses={200: LIST_CONTENT}),
    ApiRoute("POST", f"{PREFIX}/jobs", submit_job, "queue a job; params are the kind's dataclass fields",
             action=Action.RUN,
             body={"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}}},
             responses={202: _ref(JobAccepted)}),
    ApiRoute("GET", f"{PREFIX}/jobs/{{id}}", get_job, "a job's state and result",
             parameters=(_int_param("id", "path"),), responses={200: _ref(JobState)}),
    ApiRoute("DELETE", f"{PREFIX}/jobs/{{id}}", cancel_job, "cancel a queued or running job (its owner or an admin)",
             action=Action.CANCEL,
             parameters=(_int_param("id", "path"),),
             responses={200: _ref(JobState), 409: {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
    ApiRoute("POST", f"{PREFIX}/reports", create_report, "make a report of variants", action=Action.REPORT,
             body={"required": True, "content": _ref(ReportRequest)}, responses={201: _ref(ReportCreated)}),
    ApiRoute("GET", f"{PREFIX}/reports/{{id}}/bundle", report_bundle, "a report's bundle (zip)",
             parameters=({"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},),
             responses={200: {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}),
    ApiRoute("POST", f"{PREFIX}/reports/import", import_report, "import a report bundle (zip)", action=Action.IMPORT,
             body=_multipart({"file": _FILE}, ["file"]), responses={201: _ref(ReportCreated)}),
    *backup.ROUTES,
)


def routes() -> list[Route]:
    """Starlette routes of every API operation, then a JSON 404 for any other /api path."""
    table: dict[str, dict[str, ApiRoute]] = {}
    for r in API:
        table.setdefault(r.path, {})[r.method] = r
    out = []
    for path, by_method in table.items():
        out.append(Route(path, _dispatch(by_method), methods=list(by_method)))
    catch_all = ApiRoute("GET", "/api/{rest:path}", not_found, "no such route", action=None).endpoint
    out.append(Route("/api/{rest:path}", catch_all, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]))
    return out


def _dispatch(by_method: dict[str, ApiRoute]) -> Any:
    async def endpoint(request: Request) -> Response:
        return await by_method[request.method].endpoint(request)

    return endpoint
