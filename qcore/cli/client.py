"""`qlab --server URL`: the team server's REST API as a client: upload inputs, queue a job, follow it."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from qcore.jobs.contract import kind_of, params_json
from qcore.qtyping import QlabError
from qcore.tflite.litert_io import check_runnable

ENV_SERVER = "QLAB_SERVER"
ENV_TOKEN = "QLAB_TOKEN"
# how often a followed job is asked for its state
POLL_S = 0.25
# uploads of large models take a while on a slow link; a job request is small
UPLOAD_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 30
FINISHED = ("done", "failed", "cancelled")

log = logging.getLogger(__name__)


class RemoteJobFailed(QlabError):
    """A remote job ended failed or cancelled; the message is the server's words."""


def read_token(token_file: str | None) -> str:
    """The API token: the first line of `token_file`, else $QLAB_TOKEN.

    Raises:
        QlabError: when neither gives one.
    """
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise QlabError(f"cannot read a token from {token_file}: {exc}") from None
        if token:
            return token
        raise QlabError(f"token file {token_file} is empty")
    token = os.environ.get(ENV_TOKEN, "").strip()
    if not token:
        raise QlabError(f"--server needs an API token: set {ENV_TOKEN} or pass --token-file "
                        "(make one on the server's settings page)")
    return token


class Remote:
    """A qlab server's API with one bearer token.

    Args:
        url: the server's base URL, e.g. http://lab.example:8501.
        token: a personal API token (or QLAB_ADMIN_TOKEN's value).
    """

    def __init__(self, url: str, token: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise QlabError(f"--server {url!r}: expected an http:// or https:// URL")
        self.base = url.rstrip("/") + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def call(self, method: str, path: str, *, timeout: float = REQUEST_TIMEOUT_S, **kw: Any) -> Any:
        """One request; the JSON answer (or bytes for binary bodies).

        Raises:
            QlabError: the server's error message, or why it could not be reached.
        """
        try:
            resp = self.session.request(method, self.base + path, timeout=timeout, **kw)
        except requests.RequestException as exc:
            raise QlabError(f"cannot reach the qlab server at {self.base}: {exc.__class__.__name__}: "
                            f"{str(exc)[:200]}") from None
        _refused(resp)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.content

    def download(self, method: str, path: str, dest: Path, *, timeout: float = REQUEST_TIMEOUT_S) -> Path:
        """Streams a binary answer into the file `dest` (never whole in memory); returns it.

        Raises:
            QlabError: the server's error message, or why it could not be reached.
        """
        try:
            with self.session.request(method, self.base + path, timeout=timeout, stream=True) as resp:
                _refused(resp)
                with dest.open("wb") as fh:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        fh.write(chunk)
        except requests.RequestException as exc:
            raise QlabError(f"cannot reach the qlab server at {self.base}: {exc.__class__.__name__}: "
                            f"{str(exc)[:200]}") from None
        return dest

    # ------------------------------------------------------------ inputs
    def model(self, spec: str, name: str = "") -> int:
        """Uploads a .keras/.h5 file or a SavedModel directory (zipped on the way); returns its id."""
        path = Path(spec)
        if spec == "demo":
            raise QlabError("'demo' is a local model; with --server run `qlab demo` first and pass its .h5")
        if path.is_dir():
            body, filename = _zip_dir(path), path.name + ".zip"
        elif path.is_file():
            body, filename = path.read_bytes(), path.name
        else:
            raise QlabError(f"{spec}: no such model file or SavedModel directory")
        got = self.call("POST", "/models", files={"file": (filename, body)}, data={"name": name or path.stem},
                        timeout=UPLOAD_TIMEOUT_S)
        return int(got["id"])

    def dataset(self, spec: str, *, input_scale: float, input_offset: float, model_id: int | None) -> int:
        """Registers 'digits' or uploads a .npz / zip of class folders; returns the dataset id."""
        form = {"input_scale": repr(float(input_scale)), "input_offset": repr(float(input_offset))}
        if model_id is not None:
            form["model_id"] = str(model_id)
        if spec == "digits":
            got = self.call("POST", "/datasets", data={**form, "source": "digits"})
            return int(got["id"])
        path = Path(spec)
        if path.is_dir():
            body, filename = _zip_dir(path), path.name + ".zip"
        elif path.is_file():
            body, filename = path.read_bytes(), path.name
        else:
            raise QlabError(f"{spec}: no such dataset file or folder")
        got = self.call("POST", "/datasets", files={"file": (filename, body)}, data=form, timeout=UPLOAD_TIMEOUT_S)
        return int(got["id"])

    def variant(self, spec: str, *, dataset_id: int | None = None, runnable: bool = False) -> int:
        """A server variant: `variant:<id>`, the variant whose .tflite has this local file's sha256, or
        the variant the server makes when it imports the file (POST /variants).

        Args:
            dataset_id: the data an imported file is evaluated on and keeps (for a later job on it).
            runnable: the job runs it: a file with custom ops LiteRT cannot run is refused, named, first.

        Raises:
            QlabError: for an unreadable file or a refused import.
        """
        if spec.startswith("variant:"):
            text = spec.removeprefix("variant:")
            if not text.isdigit():
                raise QlabError(f"{spec}: expected variant:<id>")
            return int(text)
        path = Path(spec)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise QlabError(f"{spec}: {exc.strerror or exc}") from None
        if runnable:
            check_runnable(data, spec)
        sha = hashlib.sha256(data).hexdigest()
        for row in self.call("GET", "/variants"):
            if row.get("sha256") == sha and row.get("status") == "ok":
                return int(row["variant_id"])
        # a .tflite the server has not seen: import it (a job) and use the variant it makes
        form = {} if dataset_id is None else {"dataset_id": str(dataset_id)}
        got = self.call("POST", "/variants", files={"file": (path.name, path.read_bytes())}, data=form,
                        timeout=UPLOAD_TIMEOUT_S)
        result = self.follow(int(got["id"])).get("result") or {}
        if not result.get("variant_id"):
            raise QlabError(f"{spec}: the server imported it but reported no variant")
        return int(result["variant_id"])

    def download_variant(self, variant_id: int, path: Path) -> Path:
        """Writes a server variant's .tflite to `path` (its folder is made); returns the path."""
        data = self.call("GET", f"/variants/{int(variant_id)}/tflite", timeout=UPLOAD_TIMEOUT_S)
        if not isinstance(data, bytes):
            raise QlabError(f"variant #{variant_id}: the server sent no .tflite")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    # ------------------------------------------------------------ jobs
    def submit(self, params: Any) -> int:
        """Queues a job from its params dataclass (the kind is the dataclass's); returns the job id."""
        body = {"kind": kind_of(params).value, "params": params_json(params)}
        return int(self.call("POST", "/jobs", json=body)["id"])

    def follow(self, job_id: int, progress: Callable[[float, str], None] | None = None,
               announce: str = "") -> dict[str, Any]:
        """Waits for a job, reporting its progress; Ctrl-C cancels it on the server.

        Returns:
            The finished job's state (its `result` is what the CLI prints with --json).

        Raises:
            RemoteJobFailed: when it failed or was cancelled.
            KeyboardInterrupt: after cancelling the remote job.
        """
        try:
            if announce:  # said inside the try, so a Ctrl-C right after it still cancels the job
                log.info("%s", announce)
            while True:
                job = self.call("GET", f"/jobs/{job_id}")
                if progress is not None:
                    progress(float(job.get("progress") or 0.0), str(job.get("message") or job["status"]))
                if job["status"] in FINISHED:
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            try:
                self.call("DELETE", f"/jobs/{job_id}", timeout=10)
                print(f"cancelled job {job_id} on the server", file=sys.stderr)
            except QlabError as exc:
                print(f"could not cancel job {job_id} on the server: {exc}", file=sys.stderr)
            raise
        if job["status"] != "done":
            raise RemoteJobFailed(f"job {job_id} ({job['kind']}) {job['status']}: {job.get('error') or ''}".strip())
        return job

    def run(self, params: Any, progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
        """Submits and follows a job from its params dataclass; returns its result."""
        return self.follow(self.submit(params), progress).get("result") or {}


def _zip_dir(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    return buf.getvalue()


class Bar:
    """A one-line progress bar on stderr (a terminal), or nothing (a pipe or CI log)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, fraction: float, message: str) -> None:
        if not self.tty:
            return
        width = 24
        filled = int(round(max(0.0, min(1.0, fraction)) * width))
        line = f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}% {message[:60]:<60}"
        if line != self.last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self.last = line

    def done(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _refused(resp: requests.Response) -> None:
    """Raises the server's own words for an error answer (its JSON `error`, else the start of its body)."""
    if resp.status_code < 400:
        return
    try:
        message = resp.json().get("error") or resp.text
    except ValueError:
        message = resp.text[:200]
    raise QlabError(f"the server answered {resp.status_code}: {message}")
