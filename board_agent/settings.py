"""The agent's settings: one registry of (name, default, help), overridable by QLAB_AGENT_* and flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from board_agent import protocol

ENV_PREFIX = "QLAB_AGENT_"


@dataclass(frozen=True)
class Setting:
    """One knob: its flag is --<name with dashes>, its variable QLAB_AGENT_<NAME>."""

    name: str
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def convert(self, raw: str) -> Any:
        """Parses a flag or environment value to the default's type (ValueError naming the setting)."""
        kind = type(self.default)
        try:
            if kind is bool:
                low = raw.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(raw)
            return kind(raw)
        except ValueError:
            raise ValueError(f"{self.env}/{self.flag}: {raw!r} is not a valid {kind.__name__}") from None


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", "address to listen on; binding beyond loopback requires a token"),
    Setting("port", protocol.DEFAULT_PORT, "TCP port (0: any free port, printed at start)"),
    Setting("token_file", "", f"file whose first line is the bearer token (else ${protocol.TOKEN_ENV})"),
    Setting("insecure_no_token", False, "serve without a token (refused unless bound to loopback)"),
    Setting("npu_delegate", protocol.DEFAULT_NPU_DELEGATE, "path of NXP's VX delegate for the npu target"),
    Setting("workdir", os.path.join(os.path.expanduser("~"), ".qlab-board-agent"),
            "directory for uploads, job records, outputs and the NPU graph cache"),
    Setting("max_model_mb", 64, "largest accepted .tflite, in MB (413 beyond)"),
    Setting("max_inputs_mb", 64, "largest accepted .npz of inference inputs, in MB (413 beyond)"),
    Setting("queue", 4, "jobs that may wait behind the running one (429 beyond)"),
    Setting("job_timeout", 600.0,
            "seconds one job's children (the runner and the profiler together) may take before they are killed"),
    Setting("keep_jobs", 200, "finished job records (and inference outputs) kept; older ones are dropped"),
    Setting("board_name", "", "name reported by /v1/health (default: the host name)"),
    Setting("benchmark_model", "/usr/bin/tensorflow-lite-*/examples/benchmark_model",
            "glob of NXP's benchmark_model binary, used for profile=1"),
    Setting("npu_clock_mhz", 1000.0,
            "NPU core clock for per-operation times from driver cycles (i.MX 8M Plus: 1000 overdrive, 800 nominal)"),
    Setting("max_connections", 32, "requests served at once, each on a thread of its own (503 beyond)"),
    Setting("max_pending", 256,
            "connections waiting for a request head (idle, keep-alive or slow), held without threads; "
            "beyond it the oldest is closed"),
    Setting("max_pending_per_address", 32,
            "the same, per client address, checked before authentication: slow clients close their own oldest"),
    Setting("request_timeout", 60.0, "seconds a client has to send one request's headers and body"),
    Setting("idle_timeout", 15.0, "seconds a keep-alive connection may wait for its next request"),
    Setting("log_level", "INFO", "DEBUG, INFO, WARNING or ERROR"),
)


@dataclass(frozen=True)
class Settings:
    """Resolved values of every entry of SETTINGS."""

    host: str
    port: int
    token_file: str
    insecure_no_token: bool
    npu_delegate: str
    workdir: str
    max_model_mb: int
    max_inputs_mb: int
    queue: int
    job_timeout: float
    keep_jobs: int
    board_name: str
    benchmark_model: str
    npu_clock_mhz: float
    max_connections: int
    max_pending: int
    max_pending_per_address: int
    request_timeout: float
    idle_timeout: float
    log_level: str

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def defaults(env: Mapping[str, str] | None = None) -> Settings:
    """Defaults with QLAB_AGENT_* overrides from `env` (os.environ when None)."""
    env = os.environ if env is None else env
    values = {s.name: (s.convert(env[s.env]) if s.env in env else s.default) for s in SETTINGS}
    return _validated(Settings(**values))


def build_parser() -> argparse.ArgumentParser:
    """The `python -m board_agent` parser; --help lists every setting with its variable and default."""
    p = argparse.ArgumentParser(
        prog="python -m board_agent",
        description="qlab board agent: time .tflite models on the NPU and CPU of this board over HTTP (protocol v1).",
        epilog=f"The token may also come from ${protocol.TOKEN_ENV}. Every setting can be set in its environment "
               "variable; flags win over variables.",
    )
    for s in SETTINGS:
        text = f"{s.help} [{s.env}; default: {s.default!r}]"
        if isinstance(s.default, bool):
            p.add_argument(s.flag, dest=s.name, action="store_const", const=True, default=None, help=text)
        else:
            p.add_argument(s.flag, dest=s.name, default=None, metavar=s.name.upper(), help=text)
    return p


def parse(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults, then the environment, then flags.

    Raises:
        SystemExit: via argparse, on an unknown flag or a value of the wrong type.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        base = defaults(env)
        changes: dict[str, Any] = {}
        by_name = {s.name: s for s in SETTINGS}
        for name, raw in vars(args).items():
            if raw is None:
                continue
            changes[name] = raw if isinstance(raw, bool) else by_name[name].convert(raw)
        return _validated(base.replace(**changes))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def _validated(s: Settings) -> Settings:
    checks = [
        (0 <= s.port <= 65535, f"port {s.port} is outside 0..65535 (0: any free port)"),
        (s.max_model_mb >= 1, f"max_model_mb {s.max_model_mb} must be at least 1"),
        (s.max_inputs_mb >= 1, f"max_inputs_mb {s.max_inputs_mb} must be at least 1"),
        (s.queue >= 1, f"queue {s.queue} must be at least 1"),
        (s.job_timeout > 0, f"job_timeout {s.job_timeout} must be positive"),
        (s.npu_clock_mhz > 0, f"npu_clock_mhz {s.npu_clock_mhz} must be positive"),
        (s.keep_jobs >= 1, f"keep_jobs {s.keep_jobs} must be at least 1"),
        (s.max_connections >= 1, f"max_connections {s.max_connections} must be at least 1"),
        (s.max_pending >= 1, f"max_pending {s.max_pending} must be at least 1"),
        (s.max_pending_per_address >= 1, f"max_pending_per_address {s.max_pending_per_address} must be at least 1"),
        (s.request_timeout > 0, f"request_timeout {s.request_timeout} must be positive"),
        (s.idle_timeout > 0, f"idle_timeout {s.idle_timeout} must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return s
