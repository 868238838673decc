"""`qlab list`: models and variants with their ids, locally and with --server, as one document shape."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from pathlib import Path
from typing import Any

import pytest

from qcore.cli import main, remote
from qcore.cli.lab import MODEL_FIELDS, VARIANT_FIELDS


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory: pytest.TempPathFactory, demo_h5: Path, digits_npz: Path,
           tiny_tflite: dict[str, bytes]) -> Path:
    """A store with the demo converted (float32, int8) and a .tflite imported as a second, tflite-only model."""
    root = tmp_path_factory.mktemp("list")
    db = root / "q.duckdb"
    assert main(["convert", str(demo_h5), "--data", str(digits_npz), "--recipes", "float32,int8",
                 "--out", str(root / "out"), "--db", str(db)]) == 0
    (root / "elsewhere.tflite").write_bytes(tiny_tflite["uint8"])
    assert main(["import-tflite", str(root / "elsewhere.tflite"), "--db", str(db)]) == 0
    return db


def _list(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["list", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_json_has_ids_engine_accuracy_size_and_npu_verdict(capsys: pytest.CaptureFixture[str],
                                                                 lab_db: Path) -> None:
    code, out, err = _list(capsys, "--db", str(lab_db), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"models", "variants"}
    assert [set(m) for m in doc["models"]] == [set(MODEL_FIELDS)] * 2
    assert all(set(v) == set(VARIANT_FIELDS) for v in doc["variants"])
    demo = doc["models"][0]
    assert demo["variants"] == 2 and demo["format"] in ("h5", "demo")
    by_name = {v["variant"]: v for v in doc["variants"] if v["model_id"] == demo["model_id"]}
    assert set(by_name) == {"float32", "int8"}
    int8 = by_name["int8"]
    assert isinstance(int8["variant_id"], int) and int8["engine"] == "tf" and int8["recipe"] == "int8"
    assert int8["accuracy"] > 0.8 and int8["size_bytes"] > 0 and int8["dataset"]
    assert int8["npu_ready"] is True and int8["npu_label"]
    assert by_name["float32"]["npu_ready"] is False


def test_list_model_filter_by_name_or_id(capsys: pytest.CaptureFixture[str], lab_db: Path) -> None:
    _, out, _ = _list(capsys, "--db", str(lab_db), "--json")
    everything = json.loads(out)
    demo = everything["models"][0]
    for spec in (str(demo["model_id"]), demo["model"]):
        code, out, err = _list(capsys, "--db", str(lab_db), "--model", spec, "--json")
        doc = json.loads(out)
        assert code == 0, err
        assert doc["models"] == [demo] and {v["model_id"] for v in doc["variants"]} == {demo["model_id"]}


def test_list_unknown_model_exits_2_naming_the_known(capsys: pytest.CaptureFixture[str], lab_db: Path) -> None:
    code, _, err = _list(capsys, "--db", str(lab_db), "--model", "nope")
    assert code == 2 and "'nope'" in err and "#1 " in err and "Traceback" not in err


def test_list_text_shows_every_variant_id(capsys: pytest.CaptureFixture[str], lab_db: Path) -> None:
    _, out, _ = _list(capsys, "--db", str(lab_db), "--json")
    ids = [v["variant_id"] for v in json.loads(out)["variants"]]
    code, text, _ = _list(capsys, "--db", str(lab_db))
    assert code == 0 and all(f"#{i} " in text for i in ids) and "model #" in text


def test_remote_list_is_the_local_document(capsys: pytest.CaptureFixture[str], lab_db: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`qlab --server URL list --json` through the API's own route handlers equals `qlab list --json`."""
    from types import SimpleNamespace

    from starlette.requests import Request

    from dashboard.api import routes
    from qcore.store import Store

    code, local, err = _list(capsys, "--db", str(lab_db), "--json")
    assert code == 0, err

    class Api:
        """The REST client answering from the API's handlers in this process."""

        def __init__(self, url: str, token: str) -> None:
            self.store = Store(lab_db)

        def call(self, method: str, path: str, **kw: Any) -> Any:
            route, _, query = path.partition("?")
            handler = {"/models": routes.list_models, "/variants": routes.list_variants}[route]
            scope = {"type": "http", "method": method, "path": route, "query_string": query.encode(),
                     "headers": [], "path_params": {}}
            monkeypatch.setattr(routes, "lab", lambda: SimpleNamespace(store=self.store))
            # a thread of its own: the e2e tests' Playwright may hold this thread's event loop
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return json.loads(pool.submit(asyncio.run, handler(Request(scope))).result().body)

        def close(self) -> None:
            self.store.close()

    monkeypatch.setattr(remote, "Remote", Api)
    monkeypatch.setenv("QLAB_TOKEN", "t")
    assert main(["--server", "http://lab.example", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(local)
