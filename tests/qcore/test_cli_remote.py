"""`qlab --server`: every option of every command reaches the server's job, or is honoured or refused by name.

The walk reads the local parser itself, so an option added later to a command that runs as a job
fails here until its job takes it (a params field), the remote mode honours it (`remote.HONOURED`),
or `remote.LOCAL_ONLY` says why it cannot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qcore.cli import SERVER_HELP, build_parser, main, remote, run
from qcore.jobs.contract import PARAMS, job_kind, kind_of, params_json

# the value of an option that needs another one to mean anything
CONTEXT: dict[tuple[str, str], list[str]] = {("debug", "--selective-out"): ["--denylist-ops", "MEAN"],
                                             ("debug", "--model-explorer-out"): ["--engine", "aeq"]}
# another value of an option that a command checks before it uploads anything (a made-up name is refused)
OTHER: dict[tuple[str, str], str] = {("repair", "--methods"): "cle,adaround", ("repair", "--recipe"): "int8",
                                     ("tune", "--repairs"): "none"}
# each command line is also walked with these added: debug with a denylist is the selective job
MODES: dict[str, list[list[str]]] = {"debug": [[], ["--denylist-ops", "MEAN"]]}
# params fields whose value from a bare command line differs from the dataclass default, and why
DEFAULT_DIFFERS: dict[tuple[str, str], str] = {
    ("convert", "bench"): "`qlab convert` converts and evaluates; `qlab bench` times",
    ("board bench", "targets"): "the CLI's default is every available target",
    ("board accuracy", "target"): "the CLI's default is every available target",
    ("board accuracy", "targets"): "the CLI's default is every available target",
    ("debug", "denylisted_ops"): "MODES sets it to walk the selective job",
}
# a finished job's result per kind, naming the variants an output option downloads
RESULTS: dict[str, dict[str, Any]] = {
    "convert": {"model_id": 1, "variants": [{"variant_id": 5, "name": "int8@aeq", "status": "ok", "recipe": "int8",
                                             "engine": "aeq"}]},
    "qat": {"variant_id": 6},
    "repair": {"variant_id": 9},
    "tune": {"chosen_variant_id": 7},
    "selective": {"selective": {"variant_id": 8}},
}


class FakeRemote:
    """The REST client as the remote mode uses it, recording uploads, downloads and calls (no server).

    Ids come from the uploaded spec, so two command lines that upload different things get
    different ids in their params.
    """

    def __init__(self) -> None:
        self.uploads: list[tuple[Any, ...]] = []
        self.downloads: list[tuple[int, str]] = []

    @staticmethod
    def _id(*key: Any) -> int:
        return zlib.crc32(repr(key).encode()) % 1_000_000 + 1

    def model(self, spec: str, name: str = "") -> int:
        self.uploads.append(("model", spec, name))
        return self._id("model", spec, name)

    def dataset(self, spec: str, *, input_scale: float, input_offset: float, model_id: int | None) -> int:
        self.uploads.append(("dataset", spec, input_scale, input_offset, model_id))
        return self._id("dataset", spec, input_scale, input_offset, model_id)

    def variant(self, spec: str, *, dataset_id: int | None = None, runnable: bool = False) -> int:
        self.uploads.append(("variant", spec, dataset_id, runnable))
        return self._id("variant", spec)

    def download_variant(self, variant_id: int, path: Path) -> Path:
        self.downloads.append((variant_id, str(path)))
        return path

    def call(self, method: str, path: str, **kw: Any) -> Any:
        if method == "GET" and path.startswith("/variants"):
            return [{"variant_id": 5, "variant": "int8@aeq"}]
        raise AssertionError(f"unexpected call {method} {path}")


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every leaf command of the parser as ("board bench", its subparser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from commands(sub, full)
                else:
                    yield full, sub


def options(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]


def key(action: argparse.Action) -> str:
    """How the tables name an option: its long flag, or a positional's dest."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings or [action.dest])[0]


def value(action: argparse.Action, other: bool) -> str:
    """A value for a required argument (`other` picks a second, different one)."""
    if action.type is int:
        return "7" if other else "5"
    if action.type is float:
        return "0.75" if other else "0.5"
    return f"{'y' if other else 'x'}-{action.dest}"


def required_argv(sub: argparse.ArgumentParser, skip: str = "") -> list[str]:
    argv: list[str] = []
    for a in options(sub):
        if key(a) == skip:
            continue
        if not a.option_strings:
            argv.append(value(a, False))
        elif a.required:
            argv += [a.option_strings[0], value(a, False)]
    return argv


def changed_argv(sub: argparse.ArgumentParser, action: argparse.Action) -> list[str]:
    """The command's required arguments with `action` set to a value other than its default."""
    if not action.option_strings:  # a positional: another value in its place
        return [value(a, a is action) for a in options(sub) if not a.option_strings] + [
            x for a in options(sub) if a.option_strings and a.required for x in (a.option_strings[0], value(a, False))]
    base = required_argv(sub, skip=key(action))
    flag = action.option_strings[0]
    if (command_of(sub), key(action)) in OTHER:
        return [*base, flag, OTHER[(command_of(sub), key(action))]]
    if isinstance(action, argparse._StoreTrueAction):
        return [*base, flag]
    if isinstance(action, argparse._AppendAction):
        return [*base, flag, f"z-{action.dest}"]
    if action.choices:
        return [*base, flag, next(str(c) for c in action.choices if c != action.default)]
    if action.type in (int, float):
        if action.required:
            return [*base, flag, value(action, True)]
        return [*base, flag, str((action.default or 0) + (3 if action.type is int else 0.25))]
    return [*base, flag, f"z-{action.dest}"]


def command_of(sub: argparse.ArgumentParser) -> str:
    """The command name of a subparser, as the tables name it ("board bench")."""
    return sub.prog.split(maxsplit=1)[1]


def parse(name: str, argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(["--server", "http://lab.example", *name.split(), *argv])
    assert run.command_name(args) == name
    return args


def sent(name: str, args: argparse.Namespace) -> tuple[str, dict[str, Any], list[tuple[Any, ...]]]:
    """What the remote mode sends for a command line: (job kind, params JSON, uploads)."""
    fake = FakeRemote()
    params = run.JOBS[name].params(fake, args)  # type: ignore[arg-type]
    assert dataclasses.is_dataclass(params) and type(params) in PARAMS.values()
    return kind_of(params).value, params_json(params), fake.uploads


def downloads(name: str, args: argparse.Namespace, kind: str) -> list[Any]:
    """What the output step does with a finished job: the variants it downloads and the files it writes."""
    fake = FakeRemote()
    written = run.JOBS[name].outputs(fake, args, RESULTS.get(kind, {}))  # type: ignore[arg-type]
    return [*fake.downloads, *map(str, written)]


def listed(table: dict[tuple[str, str], str], name: str, option: str) -> bool:
    return (name, option) in table or ("*", option) in table


def all_commands() -> dict[str, argparse.ArgumentParser]:
    return dict(commands(build_parser()))


@pytest.mark.parametrize("name", list(run.JOBS))
def test_every_local_option_reaches_the_remote_job(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    monkeypatch.chdir(tmp_path)  # an output option writes its file here
    sub = all_commands()[name]
    problems = []
    for mode in MODES.get(name, [[]]):
        for action in options(sub):
            option = key(action)
            extra = [*mode, *CONTEXT.get((name, option), [])]
            base_args = parse(name, [*required_argv(sub), *extra])
            args = parse(name, [*changed_argv(sub, action), *extra])
            base, got = sent(name, base_args), sent(name, args)
            if got != base:
                if listed(remote.LOCAL_ONLY, name, option):
                    problems.append(f"{option} reaches the job but remote.LOCAL_ONLY says it cannot")
                continue
            if listed(remote.HONOURED, name, option):
                if option != "--json" and downloads(name, args, got[0]) == downloads(name, base_args, got[0]):
                    problems.append(f"{option} is in remote.HONOURED but the remote mode does nothing with it")
                continue
            if not listed(remote.LOCAL_ONLY, name, option):
                with_mode = f" (with {' '.join(mode)})" if mode else ""
                problems.append(f"{option}{with_mode}: reaches no field of the {got[0]} job and is neither "
                                "honoured (remote.HONOURED) nor listed local-only (remote.LOCAL_ONLY)")
    assert not problems, f"qlab --server {name}:\n  " + "\n  ".join(dict.fromkeys(problems))


@pytest.mark.parametrize("name", list(run.JOBS))
def test_remote_job_defaults_are_the_job_contract_defaults(name: str) -> None:
    sub = all_commands()[name]
    for mode in MODES.get(name, [[]]):
        kind, params, _ = sent(name, parse(name, [*required_argv(sub), *mode]))
        for f in dataclasses.fields(PARAMS[job_kind(kind)]):
            if (f.default is dataclasses.MISSING or f.name.endswith(("_id", "_ids"))  # ids come from uploads
                    or (name, f.name) in DEFAULT_DIFFERS):
                continue
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            assert params[f.name] == default, f"qlab {name} {' '.join(mode)}: {f.name} {params[f.name]!r} != {default!r}"


def test_every_command_runs_on_the_server_or_says_why_not() -> None:
    names = set(all_commands())
    remote_names = set(remote.REMOTE_COMMANDS)
    assert not remote_names & set(remote.LOCAL_COMMANDS)
    assert names == remote_names | set(remote.LOCAL_COMMANDS), "a command is in neither table"
    for name in remote.REMOTE_COMMANDS:
        assert name.split()[-1] in SERVER_HELP, f"--server's help does not name {name}"


def test_remote_tables_name_real_options() -> None:
    """A stale entry (an option renamed or gone) fails, so the tables stay true."""
    found = {(name, key(a)) for name, sub in all_commands().items() for a in options(sub)}
    for table in (remote.LOCAL_ONLY, remote.HONOURED):
        for name, option in table:
            if name == "*":
                assert any(o == option for _, o in found), option
            else:
                assert name in remote.REMOTE_COMMANDS and (name, option) in found, (name, option)


@pytest.mark.parametrize("name", [n for n in remote.API_COMMANDS])
def test_api_commands_list_every_option(name: str) -> None:
    missing = [key(a) for a in options(all_commands()[name])
               if not (listed(remote.HONOURED, name, key(a)) or listed(remote.LOCAL_ONLY, name, key(a)))]
    assert not missing, f"qlab --server {name}: {missing} neither honoured nor listed local-only"


def test_convert_engine_reaches_the_job_and_out_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The bug that started this: `--engine aeq` must not run the TF converter on the server."""
    submitted: list[dict[str, Any]] = []

    class Server(FakeRemote):
        def __init__(self, url: str, token: str) -> None:
            super().__init__()

        def submit(self, params: Any) -> int:
            submitted.append({"kind": kind_of(params).value, "params": params_json(params)})
            return 42

        def follow(self, job_id: int, progress: Any = None, announce: str = "") -> dict[str, Any]:
            return {"status": "done", "result": RESULTS["convert"]}

        def download_variant(self, variant_id: int, path: Path) -> Path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"TFL3")
            return path

        def close(self) -> None:
            pass

    monkeypatch.setattr(remote, "Remote", Server)
    monkeypatch.setenv("QLAB_TOKEN", "t")
    code = main(["--server", "http://lab.example", "convert", "m.h5", "--data", "digits", "--engine", "aeq",
                 "--recipes", "int8", "--out", str(tmp_path / "out"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert submitted == [{"kind": "convert", "params": {
        "model_id": FakeRemote._id("model", "m.h5", ""), "dataset_id": FakeRemote._id("dataset", "digits", 1.0, 0.0,
                                                                                     FakeRemote._id("model", "m.h5", "")),
        "recipes": ["int8"], "calibration_samples": 100, "bench": False, "engine": "aeq"}}]
    assert json.loads(out) == RESULTS["convert"]
    assert (tmp_path / "out" / "int8-aeq.tflite").read_bytes() == b"TFL3" and "wrote" in err


def test_local_commands_say_they_ignore_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--server", "http://lab.example", "jobs", "--db", str(tmp_path / "q.duckdb")])
    _, err = capsys.readouterr()
    assert code == 0 and "runs on this machine" in err and "job list" in err
