"""LiteRT I/O: quantization of inputs, dequantization of outputs, batched runs."""

import numpy as np
import pytest

from qcore.qtyping import QlabError
from qcore.tflite.litert_io import dequantize, io_dtypes, make_interpreter, quantize, run_model


def test_quantize_rounds_to_nearest_and_clips():
    q = quantize(np.array([0.0, 0.26, 10.0, -10.0]), np.int8, 0.1, 0)
    assert q.tolist() == [0, 3, 100, -100]
    q = quantize(np.array([100.0, -100.0]), np.int8, 0.1, 0)
    assert q.tolist() == [127, -128]
    assert quantize(np.array([-1.0]), np.uint8, 1.0, 0).tolist() == [0]


def test_quantize_without_scale_for_integer_dtype_is_an_error():
    with pytest.raises(QlabError, match="no quantization scale"):
        quantize(np.zeros(2), np.int8, 0.0, 0)


def test_dequantize_roundtrip_within_half_a_step():
    x = np.linspace(-1, 1, 101)
    q = quantize(x, np.int8, 2 / 255, -1)
    assert np.max(np.abs(dequantize(q, 2 / 255, -1) - x)) <= 1 / 255 + 1e-6


def test_run_model_batched_equals_one_at_a_time(tiny_tflite, digits):
    x = digits.test_inputs()[:37]
    batched, used = run_model(tiny_tflite["int8"], x, batch_size=16)
    single, _ = run_model(tiny_tflite["int8"], x, batch_size=1)
    assert used
    assert batched.shape == (37, 10) and batched.dtype == np.float32
    np.testing.assert_array_equal(batched, single)


def test_run_model_integer_io_outputs_are_dequantized(tiny_tflite, digits):
    x = digits.test_inputs()[:50]
    f, _ = run_model(tiny_tflite["float32"], x)
    q, _ = run_model(tiny_tflite["uint8"], x)
    assert np.mean(np.argmax(f, 1) == np.argmax(q, 1)) > 0.9
    assert q.min() < 0  # raw uint8 could never be negative: these are dequantized logits
    assert np.mean(np.abs(f - q)) < 0.05 * (f.max() - f.min())


def test_run_model_wrong_shape_names_both_shapes(tiny_tflite):
    with pytest.raises(QlabError, match=r"data shape \(4, 4\) does not fit the model input shape \(8, 8\)"):
        run_model(tiny_tflite["float32"], np.zeros((3, 4, 4), np.float32))


def test_io_dtypes_reports_numpy_names(tiny_tflite):
    assert io_dtypes(tiny_tflite["int8"]) == ("int8", "int8")
    assert io_dtypes(tiny_tflite["uint8"]) == ("uint8", "uint8")
    assert io_dtypes(tiny_tflite["float32"]) == ("float32", "float32")


def test_make_interpreter_rejects_garbage():
    with pytest.raises(QlabError, match="cannot load"):
        make_interpreter(b"\x00" * 64)
