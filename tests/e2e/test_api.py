"""The REST API contract over real HTTP on 127.0.0.1, against the server `make dashboard` runs."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pytest
import requests

from qcore.qtyping import LoadedModel, Role
from qcore.store import Store, accounts
from tests.e2e.serving import ADMIN_TOKEN, running_server

pytestmark = pytest.mark.slow
JOB_TIMEOUT_S = 240
# the server's per-person limit of queued + running jobs in this module
MAX_ACTIVE = 2
# where report links point (a reverse proxy's address), whatever Host a request names
PUBLIC_URL = "https://qlab.example.test"


class Api:
    """A base URL and the tokens of one admin, one member and one viewer."""

    def __init__(self, base: str, tokens: dict[str, str], data: Path) -> None:
        self.base = base
        self.tokens = tokens
        self.data = data

    def __call__(self, method: str, path: str, who: str | None = "admin", **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return requests.request(method, f"{self.base}/api/v1{path}", headers=headers, timeout=60, **kw)

    def wait(self, job_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            job = self("GET", f"/jobs/{job_id}").json()
            if job["status"] in ("done", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish in {JOB_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A fresh server whose store already knows a member and a viewer, each with a personal token."""
    data = tmp_path_factory.mktemp("api-data")
    tokens = {"admin": ADMIN_TOKEN}
    with Store(data / "qlab.duckdb") as store:
        for name, role in (("boss", Role.ADMIN), ("member", Role.MEMBER), ("viewer", Role.VIEWER)):
            email = f"{name}@lab.example"
            accounts.sign_in(store, email)  # the first one on a fresh store becomes admin
            if role is not Role.ADMIN:
                accounts.set_role(store, email, role)
            tokens[name] = accounts.create_token(store, email, "test")
    with running_server(data, QLAB_MAX_ACTIVE_JOBS=str(MAX_ACTIVE), QLAB_PUBLIC_URL=PUBLIC_URL) as base:
        yield Api(base, tokens, data)


@pytest.fixture(scope="module")
def uploaded(api: Api, demo: LoadedModel) -> dict[str, int]:
    """The demo .h5 uploaded and digits registered through the API, by the member."""
    with open(demo.path, "rb") as fh:
        model = api("POST", "/models", "member", files={"file": ("demo.h5", fh)}, data={"name": "ci-demo"})
    assert model.status_code == 201, model.text
    dataset = api("POST", "/datasets", "member", data={"source": "digits", "input_scale": "1", "input_offset": "0"})
    assert dataset.status_code == 201, dataset.text
    return {"model_id": model.json()["id"], "dataset_id": dataset.json()["id"]}


def test_health_needs_no_token(api: Api) -> None:
    r = api("GET", "/health", None)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"]


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer not-a-token", "Basic dXNlcjpwYXNz"])
def test_routes_without_a_valid_token_get_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = requests.get(f"{api.base}/api/v1/models", headers=headers, timeout=10)
    assert r.status_code == 401 and "error" in r.json()
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_viewer_token_reads_but_cannot_upload_or_run(api: Api) -> None:
    assert api("GET", "/models", "viewer").status_code == 200
    r = api("POST", "/jobs", "viewer", json={"kind": "convert", "params": {"model_id": 1, "dataset_id": 1}})
    assert r.status_code == 403 and "viewer" in r.json()["error"]
    r = api("POST", "/models", "viewer", files={"file": ("m.h5", b"x")})
    assert r.status_code == 403
    r = api("POST", "/models", "member", files={"file": ("m.h5", b"x")}, data={"trusted": "true"})
    assert r.status_code == 403 and "admin" in r.json()["error"]


def test_bad_job_requests_get_422_naming_the_field(api: Api, uploaded: dict[str, int]) -> None:
    r = api("POST", "/jobs", json={"kind": "bake", "params": {}})
    assert r.status_code == 422 and "bake" in r.json()["error"]
    r = api("POST", "/jobs", json={"kind": "convert", "params": {**uploaded, "recipez": ["int8"]}})
    assert r.status_code == 422 and "recipez" in r.json()["error"]
    r = api("POST", "/jobs", json={"kind": "convert", "params": {**uploaded, "recipes": ["int9"]}})
    assert r.status_code == 422 and "int9" in r.json()["error"]
    r = api("POST", "/jobs", json={"kind": "convert", "params": {"model_id": 999, "dataset_id": 1}})
    assert r.status_code == 422 and "999" in r.json()["error"]
    r = api("POST", "/jobs", json={"kind": "host_bench", "params": {"variant_ids": "1"}})
    assert r.status_code == 422 and "variant_ids" in r.json()["error"]
    r = api("POST", "/jobs", json={"kind": "debug", "params": {**uploaded, "engine": "onnx"}})
    assert r.status_code == 422 and "params.engine: unknown engine 'onnx'" in r.json()["error"]
    r = api("POST", "/jobs", json={"kind": "tune", "params": {**uploaded, "deploy_engine": "trt"}})
    assert r.status_code == 422 and "params.deploy_engine" in r.json()["error"]
    r = api("POST", "/jobs", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    assert api("GET", "/jobs/424242").status_code == 404
    r = api("POST", "/jobs", json={"kind": "import_tflite", "params": {"filename": "x", "path": "/etc/passwd"}})
    assert r.status_code == 422 and "import_tflite" in r.json()["error"]


def test_bad_uploads_are_refused_in_words(api: Api) -> None:
    r = api("POST", "/models", "member", files={"file": ("model.pkl", b"\x80\x04junk")})
    assert r.status_code == 422 and "model.pkl" in r.json()["error"]
    r = api("POST", "/models", "member", files={"file": ("broken.h5", b"not hdf5")})
    assert r.status_code == 422 and "broken.h5" in r.json()["error"]
    r = api("POST", "/datasets", "member", data={"source": "digits", "input_scale": "lots"})
    assert r.status_code == 422 and "input_scale" in r.json()["error"]
    r = api("POST", "/models", "member", json={"file": "x"})
    assert r.status_code == 422 and "multipart" in r.json()["error"]


def test_upload_over_the_cap_gets_413_before_it_is_read(api: Api) -> None:
    """A 300 MB Content-Length is refused from the header; the body is never sent."""
    host, port = urlsplit(api.base).hostname, urlsplit(api.base).port
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall((f"POST /api/v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
                   "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 314572800\r\n\r\n").encode())
        answer = b""
        while b"limit" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        answer_text = answer.decode(errors="replace")
    assert answer_text.startswith("HTTP/1.1 413"), answer_text[:200]
    assert "200 MB limit" in answer_text


def test_convert_job_end_to_end(api: Api, uploaded: dict[str, int]) -> None:
    r = api("POST", "/jobs", "member", json={"kind": "convert", "params": {
        **uploaded, "recipes": ["float32", "int8"], "calibration_samples": 20, "bench": False}})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    job = api.wait(r.json()["id"])
    assert job["status"] == "done", job
    assert job["kind"] == "convert" and job["created_by"] == "member@lab.example"
    accs = {v["recipe"]: v["accuracy"] for v in job["result"]["variants"]}
    assert set(accs) == {"float32", "int8"} and accs["int8"] > 0.8

    variants = api("GET", f"/variants?model_id={uploaded['model_id']}", "viewer").json()
    assert {v["variant"] for v in variants} >= {"float32", "int8"}
    table = pd.read_parquet(io.BytesIO(api("GET", f"/variants?model_id={uploaded['model_id']}&format=parquet").content))
    assert set(table["variant"]) >= {"float32", "int8"}
    assert api("GET", "/variants?format=csv").status_code == 422
    models = api("GET", "/models").json()
    assert any(m["name"] == "ci-demo" and m["created_by"] == "member@lab.example" for m in models)

    int8 = next(v["variant_id"] for v in variants if v["variant"] == "int8")
    r = api("POST", "/jobs", "member", json={"kind": "host_bench", "params": {"variant_ids": [int8], "runs": 5,
                                                                               "warmup": 1}})
    assert api.wait(r.json()["id"])["status"] == "done"
    bench = api("GET", f"/benchmarks?variant_id={int8}").json()
    assert bench and bench[-1]["p50_ms"] > 0

    r = api("POST", "/reports", "member", json={"title": "CI run", "variant_ids": [int8], "notes": "from CI"},
            headers={"Host": "attacker.example"})
    assert r.status_code == 201, r.text
    report = r.json()
    assert report["url"] == f"{PUBLIC_URL}/reports?report={report['id']}"  # QLAB_PUBLIC_URL, never the Host
    bundle = api("GET", f"/reports/{report['id']}/bundle", "viewer")
    assert bundle.status_code == 200 and bundle.content[:2] == b"PK"
    again = api("POST", "/reports/import", "member", files={"file": ("b.zip", bundle.content)})
    assert again.status_code == 201 and again.json()["id"] != report["id"]
    assert api("GET", "/reports/nope/bundle").status_code == 404


def test_debug_job_keeps_its_engine_and_its_layers_name_it(api: Api, uploaded: dict[str, int]) -> None:
    """The engine a client asks for reaches the worker (not the default), and every per-layer row names it."""
    r = api("POST", "/jobs", "member", json={"kind": "debug", "params": {
        **uploaded, "recipe": "int8", "engine": "aeq", "calibration_samples": 20, "debug_samples": 20}})
    assert r.status_code == 202, r.text
    job = api.wait(r.json()["id"])
    assert job["status"] == "done", job
    layers = api("GET", f"/debug_runs/{job['result']['debug_run_id']}/layers", "viewer").json()
    assert layers and {row["engine"] for row in layers} == {"aeq"}
    assert api("GET", "/debug_runs/424242/layers").status_code == 404


def test_import_a_tflite_made_elsewhere(api: Api, tiny_tflite: dict[str, bytes]) -> None:
    r = api("POST", "/variants", "member", files={"file": ("elsewhere.tflite", tiny_tflite["int8"])},
            data={"name": "from-elsewhere"})
    assert r.status_code == 202, r.text
    job = api.wait(r.json()["id"])
    assert job["status"] == "done", job
    variant_id = job["result"]["variant_id"]
    assert any(v["variant_id"] == variant_id for v in api("GET", "/variants").json())
    r = api("POST", "/variants", "member", files={"file": ("notes.txt", b"TFL3 is not enough")})
    assert r.status_code == 422 and "notes.txt" in r.json()["error"]


def test_delete_cancels_a_running_job(api: Api, uploaded: dict[str, int]) -> None:
    r = api("POST", "/jobs", "member", json={"kind": "qat", "params": {**uploaded, "epochs": 500}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert api("DELETE", f"/jobs/{job_id}", "viewer").status_code == 403
    r = api("DELETE", f"/jobs/{job_id}", "member")
    assert r.status_code == 200, r.text
    assert api.wait(job_id)["status"] == "cancelled"
    r = api("DELETE", f"/jobs/{job_id}", "member")
    assert r.status_code == 409 and "already finished" in r.json()["error"]


def test_ctrl_c_in_qlab_server_cancels_the_remote_job(api: Api, demo: LoadedModel) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys

    from tests.e2e.serving import REPO

    env = dict(os.environ, QLAB_TOKEN=api.tokens["member"])
    proc = subprocess.Popen([sys.executable, "-m", "qcore.cli", "-v", "--server", api.base, "qat", str(demo.path),
                             "--data", "digits", "--epochs", "500", "--json"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = None
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.search(r"queued job (\d+)", line)
        if m:
            job_id = int(m.group(1))
            break
    assert job_id is not None, "qlab never said which job it queued"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"cancelled job {job_id}" in err
    assert api.wait(job_id)["status"] == "cancelled"


def test_cancel_a_finished_job_is_a_conflict(api: Api, uploaded: dict[str, int]) -> None:
    r = api("POST", "/jobs", json={"kind": "compare_tensors", "params": {"float_variant_id": 1,
                                                                         "quant_variant_id": 1, "samples": 2}})
    if r.status_code == 422:  # no variants yet in this module order; any finished job will do
        pytest.skip("needs a variant")
    job = api.wait(r.json()["id"])
    r = api("DELETE", f"/jobs/{job['id']}", "member")
    assert r.status_code in (403, 409) and "error" in r.json()


def test_openapi_document_lists_every_route_and_job_kind(api: Api) -> None:
    doc = api("GET", "/openapi.json", None).json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/jobs", "/api/v1/models", "/api/v1/jobs/{id}", "/api/v1/reports/import"} <= set(doc["paths"])
    kinds = [arm["properties"]["kind"]["enum"][0] for arm in doc["components"]["schemas"]["JobRequest"]["oneOf"]]
    assert "convert" in kinds and "board_bench" in kinds
    convert = doc["components"]["schemas"]["ConvertParams"]
    assert convert["required"] == ["model_id", "dataset_id"] and convert["properties"]["calibration_samples"]["default"] == 100


def test_unknown_api_path_is_json_404(api: Api) -> None:
    r = api("GET", "/nothing/here")
    assert r.status_code == 404 and "openapi.json" in r.json()["error"]


def test_server_refuses_a_public_address_without_sign_in(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.e2e.serving import REPO

    env = dict(os.environ, QLAB_HOST="0.0.0.0", QLAB_DATA_DIR=str(tmp_path), QLAB_SECRETS_FILE=str(tmp_path / "none"))
    out = subprocess.run([sys.executable, "-m", "dashboard.serve"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "QLAB_HOST=0.0.0.0" in lines[0] and "sign-in" in lines[0]
    assert "Traceback" not in out.stderr


def test_jobs_past_the_limit_per_person_get_429_in_words(api: Api, uploaded: dict[str, int]) -> None:
    long_job = {"kind": "qat", "params": {**uploaded, "epochs": 500}}
    queued = []
    try:
        for _ in range(MAX_ACTIVE):
            r = api("POST", "/jobs", "member", json=long_job)
            assert r.status_code == 202, r.text
            queued.append(r.json()["id"])
        r = api("POST", "/jobs", "member", json=long_job)
        assert r.status_code == 429 and r.headers["Retry-After"].isdigit()
        assert r.json()["error"] == (f"member@lab.example already has {MAX_ACTIVE} job(s) queued or running, the "
                                     f"limit per person (QLAB_MAX_ACTIVE_JOBS={MAX_ACTIVE}); wait for one to finish "
                                     "or cancel one, then try again")
        # another person, and an admin, are not held back by the member's jobs
        r = api("POST", "/jobs", "boss", json=long_job)
        assert r.status_code == 202, r.text
        queued.append(r.json()["id"])
        # the boss (an admin) may cancel the member's job; the limit frees as soon as it ends
        assert api("DELETE", f"/jobs/{queued[0]}", "boss").status_code == 200
        assert api.wait(queued[0])["status"] == "cancelled"
        r = api("POST", "/jobs", "member", json=long_job)
        assert r.status_code == 202, r.text
        queued.append(r.json()["id"])
    finally:
        for job_id in queued:
            api("DELETE", f"/jobs/{job_id}", "boss")
        for job_id in queued:
            api.wait(job_id)


def _header_bomb(path: Path, header_mb: int = 256) -> bytes:
    """An .npz whose x_train.npy declares a `header_mb` MB header of spaces (about 1 MB compressed)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x_train.npy", "w", force_zip64=True) as f:
        length = header_mb * 2**20
        f.write(b"\x93NUMPY\x02\x00" + length.to_bytes(4, "little"))
        chunk = b" " * 2**20
        for _ in range(header_mb):
            f.write(chunk)
    return path.read_bytes()


def _server_process(base: str) -> Any:
    import psutil

    port = urlsplit(base).port
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "streamlit" in " ".join(cmd) and str(port) in cmd:
            return proc
    raise AssertionError(f"no streamlit process serves port {port}")


def test_three_npy_header_bombs_at_once_grow_the_server_by_less_than_100_mb(api: Api, tmp_path: Path) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    bomb = _header_bomb(tmp_path / "bomb.npz")
    assert len(bomb) < 2 * 2**20

    def send(_: int) -> requests.Response:
        return api("POST", "/datasets", "member", files={"file": ("bomb.npz", bomb)})

    first = send(0)  # warms the upload path (imports, thread pool) before the baseline
    assert first.status_code == 422 and "declares a 268,435,456-byte .npy header" in first.json()["error"], first.text
    server = _server_process(api.base)
    baseline = server.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(send, range(3)))
    finally:
        done.set()
        sampler.join()
    assert all(a.status_code == 422 and "refused unread" in a.json()["error"] for a in answers)
    grown_mb = (peak - baseline) / 2**20
    assert grown_mb < 100, f"the web process grew by {grown_mb:.0f} MB during three header bombs"
    assert list((api.data / "uploads").glob("*.npz")) == []  # refused uploads are deleted
