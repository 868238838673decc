"""qcore's board client and `qlab board` against a real agent on 127.0.0.1, storing into a real DuckDB."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qcore.boards import client as board_client
from qcore.boards import runs as board_runs
from qcore.boards.client import BoardClient, latency_from_result, resolve_targets
from qcore.boards.runs import accuracy_on_board, bench_on_board, board_health
from qcore.cli import main
from qcore.qtyping import Dataset, LoadedModel, QlabError
from qcore.store import Store, sha256_bytes
from tests.board_agent.harness import TOKEN, RunningAgent, running_agent

NPU_REASON = "VX delegate /usr/lib/libvx_delegate.so not found (no i.MX NPU stack on this host)"


@pytest.fixture()
def board(tmp_path: Path) -> Iterator[RunningAgent]:
    """A real agent on loopback playing the i.MX8M Plus (no NPU here)."""
    with running_agent(tmp_path / "agent") as running:
        yield running


@pytest.fixture()
def store_with_board(tmp_store: Store, board: RunningAgent) -> Store:
    """The temp store with the agent registered as board 'imx'."""
    tmp_store.add_board("imx", board.url, TOKEN)
    return tmp_store


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _variant(store: Store, demo: LoadedModel, digits: Dataset, model: bytes, name: str = "int8") -> tuple[int, int]:
    from qcore.lab.publish import register

    model_id, dataset_id = register(store, demo, digits)
    vid = store.save_variant(model_id=model_id, dataset_id=dataset_id, name=name, kind="ptq", recipe=name,
                             tflite=model)
    return vid, dataset_id


# ---------------------------------------------------------------------- the client
def test_boardclient_health_reports_targets(board: RunningAgent) -> None:
    health = BoardClient(board.url, TOKEN, name="imx").health()
    assert health["targets"]["npu"] == {"available": False, "reason": NPU_REASON}


def test_boardclient_unreachable_names_the_url() -> None:
    url = _closed_port_url()
    with pytest.raises(QlabError, match=f"board imx at {url} is unreachable: .*Connection refused"):
        BoardClient(url, TOKEN, name="imx", retries=0).health()


def test_boardclient_wrong_token_says_401(board: RunningAgent, tiny_tflite: dict[str, bytes]) -> None:
    client = BoardClient(board.url, "wrong", name="imx")
    with pytest.raises(QlabError, match="-> 401: missing or wrong bearer token"):
        client.submit_benchmark(tiny_tflite["int8"], target="cpu")


def test_boardclient_infer_returns_float_outputs(board: RunningAgent, tiny_tflite: dict[str, bytes],
                                                 digits: Dataset) -> None:
    x = digits.test_inputs()[:20]
    outputs, result = BoardClient(board.url, TOKEN).infer(tiny_tflite["uint8"], x, target="cpu-plain")
    assert len(outputs) == 1 and outputs[0].shape == (20, 10) and outputs[0].dtype == np.float32
    assert result["io"]["input_dtype"] == "uint8" and result["n_samples"] == 20


def test_boardclient_repr_hides_the_token() -> None:
    assert TOKEN not in repr(BoardClient("http://b:1", TOKEN, name="b"))


def test_resolve_targets_all_skips_unavailable_with_reason() -> None:
    health = {"board": "imx", "targets": {"npu": {"available": False, "reason": "no delegate"},
                                          "cpu": {"available": True}, "cpu-plain": {"available": True}}}
    assert resolve_targets(health, "all") == (["cpu", "cpu-plain"], {"npu": "no delegate"})


def test_resolve_targets_unknown_target_raises() -> None:
    with pytest.raises(QlabError, match="unknown target 'gpu'; known: npu, cpu, cpu-plain, all"):
        resolve_targets({"targets": {}}, ["gpu"])


def test_latency_from_result_garbled_raises() -> None:
    with pytest.raises(QlabError, match="benchmark result lacks or garbles field 'p50_ms'"):
        latency_from_result({"init_ms": 1, "first_ms": 1, "min_ms": 1, "mean_ms": 1}, board="imx")


# ---------------------------------------------------------------------- benchmarks into the store
def test_bench_on_board_all_stores_cpu_and_cpu_plain(store_with_board: Store, tiny_tflite: dict[str, bytes],
                                                     demo: LoadedModel, digits: Dataset) -> None:
    vid, _ = _variant(store_with_board, demo, digits, tiny_tflite["int8"])
    skipped: dict[str, str] = {}
    lats = bench_on_board(store_with_board, "imx", tiny_tflite["int8"], "all", runs=20, warmup=2, threads=2,
                          skipped=skipped)
    assert [lat.target for lat in lats] == ["cpu", "cpu-plain"]
    assert skipped == {"npu": NPU_REASON}
    assert all(lat.runs == 20 and lat.threads == 2 and lat.p50_ms > 0 for lat in lats)
    assert lats[0].extra["ops"]["delegated"] and lats[0].extra["board"] == "imx"
    rows = store_with_board.benchmarks(board="imx")
    assert sorted(rows["target"]) == ["cpu", "cpu-plain"]
    assert set(rows["variant_id"]) == {vid}
    assert set(rows["sha256"]) == {sha256_bytes(tiny_tflite["int8"])}
    assert (rows["peak_rss_mb"] > 0).all() and rows["p50_ms"].notna().all()
    # host rows stay apart
    assert store_with_board.benchmarks(board="host").empty


def test_bench_on_board_unreachable_stores_nothing(tmp_store: Store, tiny_tflite: dict[str, bytes]) -> None:
    url = _closed_port_url()
    tmp_store.add_board("gone", url, TOKEN)
    with pytest.raises(QlabError, match=f"at {url} is unreachable"):
        bench_on_board(tmp_store, "gone", tiny_tflite["int8"], "cpu")
    assert tmp_store.benchmarks().empty


def test_bench_on_board_npu_on_host_raises_with_reason(store_with_board: Store,
                                                       tiny_tflite: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match="target npu is unavailable on testboard: VX delegate"):
        bench_on_board(store_with_board, "imx", tiny_tflite["int8"], "npu")
    assert store_with_board.benchmarks().empty


def test_bench_on_board_unknown_board_lists_known(store_with_board: Store, tiny_tflite: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match=r"no board named 'rpi' \(known: imx\)"):
        bench_on_board(store_with_board, "rpi", tiny_tflite["int8"], "cpu")


def test_bench_on_board_failed_job_is_recorded_and_nothing_stored(tmp_path: Path, tmp_store: Store) -> None:
    from tests.board_agent.harness import build_tiny_models

    hang = build_tiny_models()["hang"]
    with running_agent(tmp_path / "slow", job_timeout=1.0) as slow:
        tmp_store.add_board("slow", slow.url, TOKEN)
        failed: dict[str, str] = {}
        with pytest.raises(QlabError, match="every target failed: .*timed out after 1 s"):
            bench_on_board(tmp_store, "slow", hang, "cpu", failed=failed)
        assert list(failed) == ["cpu"]
    assert tmp_store.benchmarks().empty


# ---------------------------------------------------------------------- accuracy on the board
def test_accuracy_on_board_matches_host_and_stores_evaluation(store_with_board: Store,
                                                              tiny_tflite: dict[str, bytes], demo: LoadedModel,
                                                              digits: Dataset) -> None:
    from qcore.tflite import metrics
    from qcore.tflite.litert_io import run_model

    model = tiny_tflite["int8"]
    vid, dataset_id = _variant(store_with_board, demo, digits, model)
    ev, agreement = accuracy_on_board(store_with_board, "imx", model, digits, "cpu")
    host, _ = run_model(model, digits.test_inputs())
    assert ev.n_samples == len(digits.y_test)
    assert ev.accuracy == pytest.approx(metrics.accuracy(host, digits.y_test))
    assert ev.accuracy > 0.8
    # same runtime on the same CPU: the board's outputs are the host's
    assert agreement == 1.0
    assert ev.input_dtype == "int8" and ev.batched is False
    assert sum(map(sum, ev.confusion)) == ev.n_samples
    evals = store_with_board.evaluations(vid)
    row = evals[evals["device"] == "board:imx/cpu"].iloc[0]
    assert row["accuracy"] == pytest.approx(ev.accuracy) and row["host_agreement"] == 1.0
    drift = store_with_board.query(
        "SELECT value FROM eval_metrics WHERE evaluation_id = ? AND metric = 'output_max_abs_diff'",
        [int(row["evaluation_id"])])
    assert float(drift["value"].iloc[0]) == pytest.approx(0.0, abs=1e-6)
    stored = store_with_board.query("SELECT dataset_id FROM evaluations WHERE device = 'board:imx/cpu'")
    assert list(stored["dataset_id"]) == [dataset_id]


def test_accuracy_on_board_unknown_model_is_not_stored(store_with_board: Store, tiny_tflite: dict[str, bytes],
                                                       digits: Dataset) -> None:
    ev, agreement = accuracy_on_board(store_with_board, "imx", tiny_tflite["uint8"], digits, "cpu-plain")
    assert 0.0 <= ev.accuracy <= 1.0 and agreement == 1.0
    assert store_with_board.query("SELECT count(*) AS n FROM evaluations")["n"].iloc[0] == 0


def test_accuracy_on_board_wrong_data_shape_raises(store_with_board: Store, tiny_tflite: dict[str, bytes],
                                                   digits: Dataset) -> None:
    wrong = Dataset("wide", digits.x_train, digits.y_train, np.zeros((4, 28, 28), np.float32),
                    np.zeros(4, np.int64))
    with pytest.raises(QlabError, match="does not fit the model input shape"):
        accuracy_on_board(store_with_board, "imx", tiny_tflite["int8"], wrong, "cpu")


def test_board_health_reports_unreachable(store_with_board: Store) -> None:
    store_with_board.add_board("gone", _closed_port_url(), None)
    rows = {r.board.name: r for r in board_health(store_with_board)}
    assert rows["imx"].reachable and rows["imx"].available_targets() == ["cpu", "cpu-plain"]
    assert not rows["gone"].reachable and "unreachable" in rows["gone"].error


# ---------------------------------------------------------------------- `qlab board`
@pytest.fixture()
def cli_db(tmp_path: Path, board: RunningAgent) -> Path:
    """A DuckDB file with the agent registered as 'imx' through `qlab board add`."""
    db = tmp_path / "cli.duckdb"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert main(["board", "add", "imx", board.url, "--token-file", str(token_file), "--db", str(db)]) == 0
    return db


def test_cli_board_add_never_prints_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("very-secret-token\n")
    db = str(tmp_path / "q.duckdb")
    assert main(["board", "add", "imx", "http://imx8mp.local:8765/", "--token-file", str(token_file), "--db", db]) == 0
    assert main(["board", "add", "imx", "http://imx8mp.local:8765", "--token-file", str(token_file), "--db", db,
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert "very-secret-token" not in out
    assert "board imx -> http://imx8mp.local:8765 (token stored)" in out
    with Store(db) as store:
        assert store.board_token("imx") == ("http://imx8mp.local:8765", "very-secret-token")


def test_cli_board_add_bad_url_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["board", "add", "imx", "imx8mp.local:8765", "--db", str(tmp_path / "q.duckdb")]) == 2
    assert "must start with http:// or https://" in capsys.readouterr().err


def test_cli_board_list_shows_live_health_and_unreachable(cli_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["board", "add", "gone", _closed_port_url(), "--db", str(cli_db)]) == 0
    capsys.readouterr()
    assert main(["board", "list", "--db", str(cli_db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("gone") and "UNREACHABLE" in line for line in lines)
    imx = next(line for line in lines if line.startswith("imx"))
    assert " ok " in imx and "targets cpu, cpu-plain" in imx and "npu: VX delegate" in imx
    assert TOKEN not in "\n".join(lines)


def test_cli_board_bench_json_stores_rows(cli_db: Path, tmp_path: Path, tiny_tflite: dict[str, bytes],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_tflite["int8"])
    capsys.readouterr()
    assert main(["board", "bench", "imx", str(model), "--runs", "10", "--profile", "--json", "--db", str(cli_db)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["target"] for r in payload["results"]] == ["cpu", "cpu-plain"]
    assert payload["skipped"] == {"npu": NPU_REASON} and payload["failed"] == {}
    assert payload["results"][0]["extra"]["profile"]["available"] is False
    with Store(cli_db) as store:
        assert len(store.benchmarks(board="imx")) == 2


def test_cli_board_bench_text_notes_skipped_npu(cli_db: Path, tmp_path: Path, tiny_tflite: dict[str, bytes],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_tflite["float32"])
    assert main(["board", "bench", "imx", str(model), "--target", "cpu", "--runs", "5", "--db", str(cli_db)]) == 0
    out = capsys.readouterr().out
    assert "\n  cpu  " in out and "stored 1 timing(s)" in out


def test_cli_board_bench_npu_on_host_exits_2(cli_db: Path, tmp_path: Path, tiny_tflite: dict[str, bytes],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_tflite["int8"])
    assert main(["board", "bench", "imx", str(model), "--target", "npu", "--db", str(cli_db)]) == 2
    assert capsys.readouterr().err.startswith("qlab board: error: target npu is unavailable on testboard")


def test_cli_board_bench_unreachable_exits_2_naming_url(tmp_path: Path, tiny_tflite: dict[str, bytes],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    db, url = str(tmp_path / "q.duckdb"), _closed_port_url()
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_tflite["int8"])
    assert main(["board", "add", "gone", url, "--db", db]) == 0
    assert main(["board", "bench", "gone", str(model), "--db", db]) == 2
    assert f"at {url} is unreachable" in capsys.readouterr().err
    with Store(db) as store:
        assert store.benchmarks().empty


def test_cli_board_accuracy_json(cli_db: Path, tmp_path: Path, tiny_tflite: dict[str, bytes], digits_npz: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_tflite["int8"])
    capsys.readouterr()
    assert main(["board", "accuracy", "imx", str(model), "--data", str(digits_npz), "--json", "--db", str(cli_db)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["device"] for r in payload["results"]] == ["board:imx/cpu", "board:imx/cpu-plain"]
    assert all(r["host_agreement"] == 1.0 and r["accuracy"] > 0.8 for r in payload["results"])
    assert payload["variant_id"] is None and payload["skipped"] == {"npu": NPU_REASON}


def test_board_client_module_never_imports_streamlit() -> None:
    for module in (board_client, board_runs):
        assert "streamlit" not in Path(module.__file__).read_text()


def test_board_client_is_http_only_and_old_imports_still_work() -> None:
    # the HTTP client never touches the store; the orchestration moved to board_runs
    assert "qcore.store" not in Path(board_client.__file__).read_text()
    assert board_client.bench_on_board is board_runs.bench_on_board


def test_health_of_a_url_that_is_not_an_agent_never_echoes_its_reply() -> None:
    """A board URL pointing at some other HTTP service (an admin page, a metadata endpoint): its reply is
    described by type and size, never quoted, whatever the status."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    secret = b"<html>internal-secret-token-1234</html>"

    class Other(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            status = 404 if "v1" in self.path else 200
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(secret)))
            self.end_headers()
            self.wfile.write(secret)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = BoardClient(f"http://127.0.0.1:{server.server_address[1]}", name="other")
        with pytest.raises(QlabError, match=r"not a qlab board agent's \(text/html, 39 bytes\)") as got:
            client.health()
        assert "secret" not in str(got.value)
    finally:
        server.shutdown()
        server.server_close()


def test_board_networks_refuse_a_url_outside_before_connecting(monkeypatch: pytest.MonkeyPatch,
                                                               board: RunningAgent) -> None:
    monkeypatch.setenv("QLAB_BOARD_NETWORKS", "10.0.0.0/8")
    with pytest.raises(QlabError, match=r"127.0.0.1, outside QLAB_BOARD_NETWORKS \(10.0.0.0/8\)"):
        BoardClient(board.url, token=TOKEN, name="imx").health()
    monkeypatch.setenv("QLAB_BOARD_NETWORKS", "10.0.0.0/8,127.0.0.0/8")
    assert BoardClient(board.url, token=TOKEN, name="imx").health()["status"] == "ok"
