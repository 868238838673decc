"""The settings registry: defaults, QLAB_AGENT_* overrides, flags, --help."""

from __future__ import annotations

import pytest

from board_agent.settings import SETTINGS, build_parser, defaults, parse


def test_defaults_match_the_registry() -> None:
    s = defaults(env={})
    for setting in SETTINGS:
        assert getattr(s, setting.name) == setting.default


def test_defaults_environment_overrides_each_type() -> None:
    s = defaults(env={"QLAB_AGENT_PORT": "9000", "QLAB_AGENT_JOB_TIMEOUT": "2.5",
                      "QLAB_AGENT_INSECURE_NO_TOKEN": "yes", "QLAB_AGENT_NPU_DELEGATE": "/opt/vx.so"})
    assert (s.port, s.job_timeout, s.insecure_no_token, s.npu_delegate) == (9000, 2.5, True, "/opt/vx.so")


def test_parse_flags_win_over_environment() -> None:
    s = parse(["--port", "9100", "--queue", "2"], env={"QLAB_AGENT_PORT": "9000"})
    assert (s.port, s.queue) == (9100, 2)


def test_defaults_bad_environment_value_raises() -> None:
    with pytest.raises(ValueError, match="QLAB_AGENT_PORT/--port: 'eighty' is not a valid int"):
        defaults(env={"QLAB_AGENT_PORT": "eighty"})


@pytest.mark.parametrize("argv", [["--port", "0x"], ["--queue", "0"], ["--max-model-mb", "-1"], ["--bogus"]])
def test_parse_bad_flag_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv, env={})
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_build_parser_help_lists_every_setting_and_variable() -> None:
    text = build_parser().format_help()
    for setting in SETTINGS:
        assert setting.flag in text and setting.env in text
    assert "QLAB_AGENT_TOKEN" in text
