"""The board farm against three real agents on 127.0.0.1, one stopped mid-run, storing into a real DuckDB."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from qcore.boards.client import BoardClient
from qcore.boards.runs import bench_on_board, matrix, matrix_spread
from qcore.qtyping import CellStatus, Dataset, LoadedModel, Placement, QlabError
from qcore.store import Store
from tests.board_agent.harness import TOKEN, AgentProcess, agent_process

NPU_REASON = "VX delegate /usr/lib/libvx_delegate.so not found (no i.MX NPU stack on this host)"
QUEUE = 1


class QueueWatch:
    """Asks every agent's /v1/health for its queue depth every 10 ms while a run goes on."""

    def __init__(self, agents: dict[str, AgentProcess]) -> None:
        self.clients = {name: BoardClient(a.url, a.token, name=name, retries=0, read_timeout=2.0)
                        for name, a in agents.items()}
        self.max_depth = {name: 0 for name in agents}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, client in self.clients.items():
                try:
                    depth = int(client.health()["queue_depth"])
                except QlabError:
                    continue  # a stopped board has no queue
                self.max_depth[name] = max(self.max_depth[name], depth)
                self.samples += 1
            time.sleep(0.01)

    def __enter__(self) -> QueueWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture()
def farm(tmp_path: Path, tmp_store: Store) -> Iterator[tuple[Store, dict[str, AgentProcess], ExitStack]]:
    """Three real agent processes (queue limit 1) registered as imx-a/b/c, labelled soc=imx8mp, tag=lab on a and b."""
    with ExitStack() as stack:
        agents = {name: stack.enter_context(agent_process(tmp_path / name, name, queue=QUEUE))
                  for name in ("imx-a", "imx-b", "imx-c")}
        for name, a in agents.items():
            tmp_store.add_board(name, a.url, TOKEN)
            tmp_store.set_board_labels(name, [("soc", "imx8mp")] + ([("tag", "lab")] if name != "imx-c" else []))
        yield tmp_store, agents, stack


def _variants(store: Store, demo: LoadedModel, digits: Dataset, tiny_tflite: dict[str, bytes]) -> list[int]:
    from qcore.lab.publish import register

    model_id, dataset_id = register(store, demo, digits)
    models = [tiny_tflite["int8"], tiny_tflite["uint8"], tiny_tflite["float32"], tiny_tflite["int8"]]
    return [store.save_variant(model_id=model_id, dataset_id=dataset_id, name=f"v{i}", kind="ptq", recipe="int8",
                               tflite=m) for i, m in enumerate(models)]


def _stop(agent: AgentProcess) -> None:
    """The board goes away (power lost): the agent and its runner child are killed."""
    agent.kill()


def _stopper(agent: AgentProcess, after: int) -> tuple[list[int], object]:
    seen: list[int] = []

    def progress(fraction: float, message: str) -> None:
        seen.append(1)
        if len(seen) == after:
            _stop(agent)

    return seen, progress


@pytest.mark.slow
def test_matrix_each_board_one_stopped_every_cell_ends(farm: tuple[Store, dict[str, AgentProcess], ExitStack],
                                                       demo: LoadedModel, digits: Dataset,
                                                       tiny_tflite: dict[str, bytes]) -> None:
    store, agents, _ = farm
    vids = _variants(store, demo, digits, tiny_tflite)
    _, progress = _stopper(agents["imx-c"], after=10)
    with QueueWatch(agents) as watch:
        result = matrix(store, vids, ["npu", "cpu"], pool="soc=imx8mp", placement="each", runs=5, warmup=1,
                        progress=progress)  # type: ignore[arg-type]
    assert result.boards == ("imx-a", "imx-b", "imx-c")
    assert len(result.cells) == 4 * 2 * 3
    # every cell has a result or a reason
    for c in result.cells:
        assert (c.status == CellStatus.DONE and c.benchmark_id is not None and c.p50_ms) or \
               (c.status == CellStatus.FAILED and c.reason), c
    # the NPU cells fail on their own, with the agent's reason; the CPU cells of live boards all ran
    npu = [c for c in result.cells if c.target == "npu"]
    assert all(c.status == CellStatus.FAILED for c in npu)
    assert all(NPU_REASON in c.reason for c in npu if c.board != "imx-c")
    live_cpu = [c for c in result.cells if c.target == "cpu" and c.board in ("imx-a", "imx-b")]
    assert len(live_cpu) == 8 and all(c.status == CellStatus.DONE for c in live_cpu)
    # the stopped board fails only its own cells, naming why
    lost = [c for c in result.cells if c.board == "imx-c" and c.target == "cpu" and c.status == CellStatus.FAILED]
    assert lost and all("imx-c" in c.reason and ("unreachable" in c.reason or "went away" in c.reason) for c in lost)
    # never overfilled: at most the running job plus QUEUE waiting per agent (a 429 can still come when the
    # agent has finished a job but not yet dequeued the next one; the farm then waits)
    assert watch.samples > 0 and all(n <= QUEUE for n in watch.max_depth.values()), watch.max_depth
    assert all(n <= QUEUE + 1 for n in result.max_inflight.values()), result.max_inflight
    # stored: one cell row per cell, the reasons kept, the spread per board
    stored = store.board_cells(result.run_id)
    assert len(stored) == 24 and (stored[stored["status"] == "failed"]["reason"] != "").all()
    spread = matrix_spread(store, result.run_id)
    row = spread[(spread["variant_id"] == vids[0]) & (spread["target"] == "cpu")]
    assert set(row["board"]) >= {"imx-a", "imx-b"}
    assert (row["pool_min_ms"] <= row["p50_ms"]).all() and (row["p50_ms"] <= row["pool_max_ms"]).all()
    # the lost board's history shows it down after the run
    hist = store.health_history("imx-c", limit=5)
    assert not hist.empty and bool(hist.iloc[0]["reachable"]) is True  # checked before the run


@pytest.mark.slow
def test_matrix_any_free_board_finishes_on_survivors(farm: tuple[Store, dict[str, AgentProcess], ExitStack],
                                                     demo: LoadedModel, digits: Dataset,
                                                     tiny_tflite: dict[str, bytes]) -> None:
    store, agents, _ = farm
    vids = _variants(store, demo, digits, tiny_tflite)
    _, progress = _stopper(agents["imx-b"], after=2)
    with QueueWatch(agents) as watch:
        result = matrix(store, vids, ["cpu", "cpu-plain"], pool="imx8mp", placement=Placement.ANY, runs=5, warmup=1,
                        progress=progress)  # type: ignore[arg-type]
    assert len(result.cells) == 8
    assert all(c.status == CellStatus.DONE for c in result.cells), [c.reason for c in result.failed]
    # cells after the stop ran on the survivors; any cell caught on imx-b moved and says so
    assert {c.board for c in result.cells} <= {"imx-a", "imx-b", "imx-c"}
    moved = [c for c in result.cells if c.attempts]
    assert all(a["board"] == "imx-b" and c.board != "imx-b" for c in moved for a in c.attempts)
    assert watch.samples > 0 and all(n <= QUEUE for n in watch.max_depth.values()), watch.max_depth
    assert sum(1 for c in result.cells if c.board in ("imx-a", "imx-c")) >= 6


def test_matrix_waits_on_429_never_fails(farm: tuple[Store, dict[str, AgentProcess], ExitStack], demo: LoadedModel,
                                         digits: Dataset, tiny_tflite: dict[str, bytes]) -> None:
    store, agents, _ = farm
    vids = _variants(store, demo, digits, tiny_tflite)[:1]
    other = BoardClient(agents["imx-a"].url, TOKEN, name="someone else")
    # another user fills imx-a: one running, one waiting (queue limit 1)
    # as many invokes as the agent allows: busy long enough on an idle machine too
    jobs = [other.submit_benchmark(tiny_tflite["int8"], target="cpu", runs=100_000, warmup=10_000)]
    deadline = time.monotonic() + 60
    while other.job(jobs[0])["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    jobs.append(other.submit_benchmark(tiny_tflite["int8"], target="cpu", runs=100_000, warmup=10_000))
    result = matrix(store, vids, ["cpu"], pool="imx-a", placement="board", runs=3, warmup=0)
    assert result.retries_429 >= 1
    assert [c.status for c in result.cells] == [CellStatus.DONE]
    for j in jobs:
        other.wait(j)


def test_matrix_pool_queries(farm: tuple[Store, dict[str, AgentProcess], ExitStack], demo: LoadedModel,
                             digits: Dataset, tiny_tflite: dict[str, bytes]) -> None:
    store, _, _ = farm
    assert store.boards_matching("soc=imx8mp tag=lab") == ["imx-a", "imx-b"]
    assert store.boards_matching("imx8mp") == ["imx-a", "imx-b", "imx-c"]
    assert store.boards_matching("imx-c") == ["imx-c"]
    with pytest.raises(QlabError, match="key 'color' is not one of soc, bsp, runtime, tag"):
        store.boards_matching("color=red")
    vids = _variants(store, demo, digits, tiny_tflite)
    with pytest.raises(QlabError, match="no board matches pool 'soc=rk3588'"):
        matrix(store, vids, ["cpu"], pool="soc=rk3588")
    with pytest.raises(QlabError, match="unknown placement 'all'"):
        matrix(store, vids, ["cpu"], pool="imx8mp", placement="all")


def test_bench_on_board_npu_cpu_cpu_plain_keeps_cpu_timings(farm: tuple[Store, dict[str, AgentProcess], ExitStack],
                                                            tiny_tflite: dict[str, bytes]) -> None:
    store, _, _ = farm
    failed: dict[str, str] = {}
    lats = bench_on_board(store, "imx-a", tiny_tflite["int8"], ["npu", "cpu", "cpu-plain"], runs=3, warmup=0,
                          failed=failed)
    assert [lat.target for lat in lats] == ["cpu", "cpu-plain"]
    assert failed == {"npu": f"target npu is unavailable on imx-a: {NPU_REASON}"}
    runs = store.board_runs()
    cells = store.board_cells(int(runs.iloc[0]["run_id"]))
    assert sorted(zip(cells["target"], cells["status"], strict=True)) == [
        ("cpu", "done"), ("cpu-plain", "done"), ("npu", "failed")]
    assert NPU_REASON in cells[cells["target"] == "npu"]["reason"].iloc[0]
    assert len(store.benchmarks(board="imx-a")) == 2


def test_all_targets_are_the_ones_the_board_can_run(farm: tuple[Store, dict[str, AgentProcess], ExitStack],
                                                     demo: LoadedModel, digits: Dataset,
                                                     tiny_tflite: dict[str, bytes]) -> None:
    """`qlab --server … board bench|accuracy` sends --target all as it is: the board's available targets run,
    the unavailable NPU is left out instead of failing its cell."""
    from qcore.boards.runs import AccuracyItem, accuracy_run

    store, _, _ = farm
    vid = _variants(store, demo, digits, tiny_tflite)[0]
    result = matrix(store, [vid], ["all"], pool="imx-a", placement="board", runs=3, warmup=0)
    assert sorted(c.target for c in result.cells) == ["cpu", "cpu-plain"] and not result.failed
    item = AccuracyItem(vid, "v0", tiny_tflite["int8"], digits, int(store.variant(vid)["dataset_id"]))
    cells = accuracy_run(store, "imx-a", [item], ["all"])
    assert sorted((c.target, str(c.status)) for c in cells) == [("cpu", "done"), ("cpu-plain", "done")]


def test_health_history_and_labels_from_health(farm: tuple[Store, dict[str, AgentProcess], ExitStack]) -> None:
    from qcore.boards.runs import board_health

    store, agents, _ = farm
    board_health(store)
    _stop(agents["imx-b"])
    board_health(store)
    hist = store.health_history("imx-b", limit=10)
    assert list(hist["reachable"]) == [False, True]
    assert "Connection refused" in hist.iloc[0]["error"]
    labels = store.board_labels("imx-a")
    runtime = labels[labels["key"] == "runtime"]
    assert runtime["source"].tolist() == ["health"] and runtime["value"].iloc[0].startswith("ai_edge_litert-")
    # the user's soc label wins over the host's (empty) SoC
    assert labels[labels["key"] == "soc"][["value", "source"]].values.tolist() == [["imx8mp", "user"]]


def test_cli_board_label_and_matrix_json(tmp_path: Path, demo: LoadedModel, digits: Dataset,
                                         tiny_tflite: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from qcore.cli import main
    from tests.board_agent.harness import running_agent

    db = str(tmp_path / "q.duckdb")
    with Store(db) as store:
        vids = _variants(store, demo, digits, tiny_tflite)[:2]
    with running_agent(tmp_path / "agent", board_name="evk") as agent:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        assert main(["board", "add", "evk", agent.url, "--token-file", str(token_file), "--db", db]) == 0
        assert main(["board", "label", "evk", "soc=imx8mp", "tag=ci", "--db", db]) == 0
        assert "evk  soc=imx8mp  (user)" in capsys.readouterr().out
        assert main(["board", "label", "evk", "colour=red", "--db", db]) == 2
        assert "label key 'colour' is not one of soc, bsp, runtime, tag" in capsys.readouterr().err
        code = main(["board", "matrix", "--pool", "imx8mp", "--variants", ",".join(map(str, vids)),
                     "--targets", "npu,cpu", "--runs", "3", "--warmup", "0", "--json", "--db", db])
        out = json.loads(capsys.readouterr().out)
    assert code == 1  # some cells failed (the npu ones), the others are stored
    assert out["boards"] == ["evk"] and len(out["cells"]) == 4
    by_target = {(c["variant_id"], c["target"]): c for c in out["cells"]}
    assert all(by_target[(v, "cpu")]["status"] == "done" and by_target[(v, "cpu")]["p50_ms"] > 0 for v in vids), \
        [(c["target"], c["status"], c["reason"][:300], c["p50_ms"]) for c in out["cells"]]
    assert all("VX delegate" in by_target[(v, "npu")]["reason"] for v in vids)
    assert main(["board", "history", "evk", "--db", db]) == 0
    assert "evk" in capsys.readouterr().out
