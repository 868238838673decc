"""Upload checks without a runtime: the flatbuffer walk and the .npz headers."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from board_agent.uploads import ArraySpec, UploadError, check_tflite, match_inputs, npz_arrays


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def test_check_tflite_summarizes_inputs_and_outputs(tiny_models: dict[str, bytes]) -> None:
    summary = check_tflite(tiny_models["int8"])
    assert summary.version == 3 and summary.subgraphs == 1 and summary.operators == 3
    assert [(t.dtype, t.shape) for t in summary.inputs] == [("int8", (1, 8, 8, 1))]
    assert [(t.dtype, t.shape) for t in summary.outputs] == [("int8", (1, 10))]


def test_check_tflite_while_model_has_three_subgraphs(tiny_models: dict[str, bytes]) -> None:
    assert check_tflite(tiny_models["hang"]).subgraphs == 3


def test_check_tflite_garbage_raises() -> None:
    with pytest.raises(UploadError, match="no 'TFL3' identifier at offset 4"):
        check_tflite(b"GIF89a-not-a-model")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_check_tflite_truncated_raises(tiny_models: dict[str, bytes], keep: float) -> None:
    model = tiny_models["float32"]
    with pytest.raises(UploadError, match="outside the|past the end"):
        check_tflite(model[: int(len(model) * keep)])


def test_check_tflite_every_truncation_is_caught(tiny_models: dict[str, bytes]) -> None:
    model = tiny_models["int8"]
    for cut in range(8, len(model), 13):
        with pytest.raises(UploadError):
            check_tflite(model[:cut])


def test_check_tflite_bad_root_offset_raises(tiny_models: dict[str, bytes]) -> None:
    model = bytearray(tiny_models["int8"])
    model[0:4] = (len(model) + 100).to_bytes(4, "little")
    with pytest.raises(UploadError, match="outside the"):
        check_tflite(bytes(model))


def test_npz_arrays_reads_headers_only() -> None:
    specs = npz_arrays(_npz(x=np.zeros((5, 8, 8, 1), np.float32), input_1=np.zeros(3, np.int8)))
    assert specs == {"x": ArraySpec("x", "float32", (5, 8, 8, 1)), "input_1": ArraySpec("input_1", "int8", (3,))}


def test_npz_arrays_not_a_zip_raises() -> None:
    with pytest.raises(UploadError, match="not an .npz"):
        npz_arrays(b"plain text")


def test_npz_arrays_object_dtype_raises() -> None:
    with pytest.raises(UploadError, match="has dtype '|O'"):
        npz_arrays(_npz(x=np.array([None, 1], dtype=object)))


def test_npz_arrays_non_npy_member_raises() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../etc/passwd", "root:x:0:0")
    with pytest.raises(UploadError, match=r"member '../../etc/passwd' is not an .npy array"):
        npz_arrays(buf.getvalue())


def test_match_inputs_counts_samples(tiny_models: dict[str, bytes]) -> None:
    summary = check_tflite(tiny_models["float32"])
    assert match_inputs({"x": ArraySpec("x", "float32", (7, 8, 8, 1))}, summary) == 7
    assert match_inputs({"input_0": ArraySpec("input_0", "uint8", (2, 8, 8, 1))}, summary) == 2


@pytest.mark.parametrize(("arrays", "message"), [
    ({"y": ArraySpec("y", "float32", (7, 8, 8, 1))}, r"missing \['input_0'\], unexpected \['y'\]"),
    ({"x": ArraySpec("x", "float32", (7, 64))}, r"samples of shape \(64,\) but input"),
    ({"x": ArraySpec("x", "float32", ())}, "is a scalar"),
    ({"x": ArraySpec("x", "float32", (0, 8, 8, 1))}, "no samples"),
])
def test_match_inputs_mismatch_raises(tiny_models: dict[str, bytes], arrays: dict[str, ArraySpec],
                                      message: str) -> None:
    with pytest.raises(UploadError, match=message):
        match_inputs(arrays, check_tflite(tiny_models["float32"]))
