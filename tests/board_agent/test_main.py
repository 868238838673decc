"""`python -m board_agent` as a board runs it: the folder alone, token rules, a kill and a restart."""

from __future__ import annotations

import ast
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import board_agent
from board_agent import protocol
from board_agent.__main__ import is_loopback, main, read_token
from board_agent.settings import defaults
from board_agent.settings import parse as parse_settings
from tests.board_agent.harness import runner_pids

AGENT_DIR = Path(board_agent.__file__).parent
# what the agent process may import; numpy and the runtimes only in the runner child
ALLOWED_THIRD_PARTY = {"ai_edge_litert", "tflite_runtime", "tensorflow", "numpy"}


class AgentProcess:
    """`python -S -m board_agent` started from a copy of the folder, with its port read from stdout."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str]) -> None:
        # -S: no site-packages in the agent process, so a third-party import there fails loudly
        self.proc = subprocess.Popen([sys.executable, "-S", "-m", "board_agent", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError("agent did not print its address: " + self.proc.stderr.read()) from None
        assert line.startswith("listening on http://"), line
        self.url = line.split()[-1]

    def get(self, path: str, token: str) -> dict:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: bytes, token: str) -> dict:
        req = urllib.request.Request(self.url + path, data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def board_copy(tmp_path: Path) -> Path:
    """The board_agent folder copied alone into an empty directory, as onto a board."""
    dest = tmp_path / "board"
    shutil.copytree(AGENT_DIR, dest / "board_agent", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture()
def clean_env() -> Iterator[dict[str, str]]:
    """The environment without PYTHONPATH or QLAB_AGENT_* (the board has neither)."""
    yield {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("QLAB_AGENT_")}


def test_board_agent_imports_only_stdlib_and_runtimes() -> None:
    for path in AGENT_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(), feature_version=(3, 10))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top == "board_agent", \
                    f"{path.name} imports {name}"
                assert top not in ("qcore", "requests"), f"{path.name} imports {name}"
                if top in ALLOWED_THIRD_PARTY:
                    assert path.name == "runner.py", f"{path.name} imports the runtime {name}"


def test_board_agent_uses_no_311_only_names() -> None:
    for path in AGENT_DIR.glob("*.py"):
        text = path.read_text()
        for name in ("StrEnum", "except*", "tomllib", "datetime.UTC", "typing.Self", "ExceptionGroup"):
            assert name not in text, f"{path.name} uses {name}, which Python 3.10 lacks"


def test_main_without_token_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(protocol.TOKEN_ENV, raising=False)
    assert main(["--workdir", str(tmp_path), "--port", "0"]) == 2
    assert "refusing to start without a token" in capsys.readouterr().err


def test_main_insecure_beyond_loopback_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(protocol.TOKEN_ENV, raising=False)
    assert main(["--workdir", str(tmp_path), "--host", "0.0.0.0", "--insecure-no-token"]) == 2
    assert "refusing --insecure-no-token on '0.0.0.0'" in capsys.readouterr().err


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                ("0.0.0.0", False), ("192.168.1.20", False), ("", False)])
def test_is_loopback_cases(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_read_token_empty_file_raises(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(defaults(env={}).replace(token_file=str(token_file)), env={})


def test_read_token_file_wins_over_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\nsecond line ignored\n")
    settings = defaults(env={}).replace(token_file=str(token_file))
    assert read_token(settings, env={protocol.TOKEN_ENV: "from-env"}) == "from-file"
    assert read_token(defaults(env={}), env={protocol.TOKEN_ENV: "from-env"}) == "from-env"


def test_copied_folder_serves_and_restart_fails_running_job(board_copy: Path, clean_env: dict[str, str],
                                                            tiny_models: dict[str, bytes], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    token_file.chmod(0o600)
    workdir = tmp_path / "work"
    args = ["--port", "0", "--workdir", str(workdir), "--token-file", str(token_file), "--board-name", "imx"]
    first = AgentProcess(board_copy, args, clean_env)
    try:
        health = first.get(protocol.HEALTH, "")
        assert health["board"] == "imx" and health["runtime"]["name"] == "ai_edge_litert"
        done = first.post(f"{protocol.BENCHMARKS}?target=cpu&runs=5", tiny_models["int8"], "s3cret")["id"]
        hung = None
        for _ in range(200):
            if first.get(f"{protocol.BENCHMARKS}/{done}", "s3cret")["status"] == "done":
                hung = first.post(f"{protocol.BENCHMARKS}?target=cpu", tiny_models["hang"], "s3cret")["id"]
                break
            time.sleep(0.05)
        assert hung is not None
        for _ in range(200):
            if first.get(f"{protocol.BENCHMARKS}/{hung}", "s3cret")["status"] == "running" and runner_pids(hung):
                break
            time.sleep(0.05)
        child = runner_pids(hung)
        assert len(child) == 1
        first.proc.kill()  # the agent dies mid-job (power cut, OOM killer)
        first.proc.wait()
        deadline = time.monotonic() + 10
        while runner_pids(hung) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner_pids(hung) == [], "the hung runner outlived the agent"
    finally:
        first.stop()
    second = AgentProcess(board_copy, args, clean_env)
    try:
        rec = second.get(f"{protocol.BENCHMARKS}/{hung}", "s3cret")
        assert (rec["status"], rec["error"]) == ("failed", "agent restarted")
        assert second.get(f"{protocol.BENCHMARKS}/{done}", "s3cret")["status"] == "done"
        assert os.listdir(workdir / "uploads") == []
    finally:
        second.stop()
    assert second.proc.returncode == 0


def test_service_unit_execstart_flags_parse() -> None:
    unit = (AGENT_DIR / "qlab-board-agent.service").read_text()
    line = unit.split("ExecStart=", 1)[1].split("\n\n")[0]
    argv = line.replace("\\\n", " ").split("\n")[0].split()
    assert argv[:3] == ["/usr/bin/python3", "-m", "board_agent"]
    settings = parse_settings(argv[3:], env={})
    assert (settings.host, settings.port, settings.workdir) == ("0.0.0.0", 8765, "/var/lib/qlab-board-agent")
    assert settings.token_file == "/etc/qlab-board-agent/token"


def _python310() -> str | None:
    """A Python 3.10 interpreter on this machine, if any (the oldest the board images ship)."""
    import glob

    for candidate in [shutil.which("python3.10"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))]:
        if candidate and subprocess.run([candidate, "--version"], capture_output=True, check=False).returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(_python310() is None, reason="no Python 3.10 interpreter here")
def test_copied_folder_serves_on_python_310(board_copy: Path, clean_env: dict[str, str], tmp_path: Path) -> None:
    python = _python310()
    assert python is not None
    proc = subprocess.Popen([python, "-m", "board_agent", "--port", "0", "--insecure-no-token", "--workdir",
                             str(tmp_path / "w")], cwd=board_copy, env=clean_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://"), proc.stderr.read() if proc.stderr else line
        with urllib.request.urlopen(line.split()[-1] + protocol.HEALTH, timeout=10) as resp:
            health = json.loads(resp.read())
        assert health["status"] == "ok" and health["python"].startswith("3.10")
        # without a runtime installed for 3.10 every target says why; with one, cpu is available
        assert health["targets"]["cpu"]["available"] or "no TFLite runtime" in health["targets"]["cpu"]["reason"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0
