"""The wire contract's pure functions: framing, magic, bounded parameters."""

from __future__ import annotations

import pytest

from board_agent import protocol


def test_pack_inference_round_trips() -> None:
    model, npz = b"\0\0\0\0TFL3rest-of-model", b"PK\x03\x04npz"
    assert protocol.unpack_inference(protocol.pack_inference(model, npz)) == (model, npz)


@pytest.mark.parametrize(("body", "message"), [
    (b"QLI1", "shorter than the 12-byte frame header"),
    (b"NOPE" + (5).to_bytes(8, "little") + b"12345", "does not start with b'QLI1'"),
    (b"QLI1" + (99).to_bytes(8, "little") + b"12345", "the model has 99 bytes but the body holds 5"),
    (b"QLI1" + (0).to_bytes(8, "little") + b"12345", "the model has 0 bytes"),
])
def test_unpack_inference_bad_frames_raise(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        protocol.unpack_inference(body)


def test_has_tflite_magic_checks_offset_four() -> None:
    assert protocol.has_tflite_magic(b"\x1c\0\0\0TFL3")
    assert not protocol.has_tflite_magic(b"TFL3\0\0\0\0")
    assert not protocol.has_tflite_magic(b"\0\0\0\0TFL")


@pytest.mark.parametrize(("raw", "expected"), [(None, 50), ("", 50), ("7", 7), ("100000", 100000)])
def test_int_param_parse_accepts_defaults_and_bounds(raw: str | None, expected: int) -> None:
    assert protocol.RUNS.parse(raw) == expected


@pytest.mark.parametrize(("raw", "message"), [("0", r"runs=0 is outside \[1, 100000\]"),
                                              ("1.5", "runs='1.5' is not an integer")])
def test_int_param_parse_rejects_bad_values(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        protocol.RUNS.parse(raw)


def test_job_id_re_refuses_path_like_ids() -> None:
    assert protocol.JOB_ID_RE.match("0123456789abcdef")
    for bad in ("../../etc/passwd", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef/", ".."):
        assert not protocol.JOB_ID_RE.match(bad)
