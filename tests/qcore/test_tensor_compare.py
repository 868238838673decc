"""Tensor comparison of a float .tflite with quantized ones: matching, metrics, unmatched tensors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qcore.qtyping import Dataset, LoadedModel, QlabError
from qcore.tflite.compare import _dequantize, compare_tensors


@pytest.fixture(scope="module")
def int16x8(demo: LoadedModel, digits: Dataset) -> bytes:
    """The demo converted with 16-bit activations (which the debugger cannot take)."""
    from qcore.engines.tf import convert

    return convert(demo, "int16x8", digits.calibration(20))


def _names(model: bytes) -> set[str]:
    from qcore.tflite.litert_io import make_interpreter

    return {str(t["name"]) for t in make_interpreter(model).get_tensor_details()}


def test_compare_tensors_int8_activations_and_weights(tiny_tflite: dict[str, bytes], digits: Dataset,
                                                     demo: LoadedModel) -> None:
    r = compare_tensors(tiny_tflite["float32"], tiny_tflite["int8"], digits.test_inputs()[:8])
    assert r.n_samples == 8
    conv = next(d for d in r.matched if d.quant_dtype == "int8" and not d.is_constant and "conv/Relu" in d.name)
    assert 20.0 < conv.snr_db < 90.0
    assert 0.99 < conv.cosine <= 1.0 + 1e-9
    assert conv.mse > 0.0 and conv.max_abs_error > 0.0
    kernel = next(d for d in r.matched if d.name.endswith("conv/Conv2D"))
    assert kernel.is_constant and kernel.per_channel and kernel.quant_dtype == "int8"
    # int8 weights keep ~7 bits of the float kernel: tiny but non-zero error
    assert 0.0 < kernel.mse < 1e-4
    # each tensor by the name users know: the conv's Keras layer, the output by the demo's last Dense layer
    assert conv.layer == "conv"
    out = next(d for d in r.matched if d.name.startswith("StatefulPartitionedCall"))
    assert out.layer == demo.keras_model.layers[-1].name


def test_compare_tensors_identical_models(tiny_tflite: dict[str, bytes], digits: Dataset) -> None:
    r = compare_tensors(tiny_tflite["float32"], tiny_tflite["float32"], digits.test_inputs()[:3])
    assert r.matched
    for d in r.matched:
        assert d.mse == 0.0 and d.max_abs_error == 0.0
        assert math.isinf(d.snr_db) and d.snr_db > 0
        assert d.cosine == pytest.approx(1.0)


def test_compare_tensors_never_drops_a_tensor(tiny_tflite: dict[str, bytes], int16x8: bytes, digits: Dataset) -> None:
    float_model = tiny_tflite["float32"]
    r = compare_tensors(float_model, int16x8, digits.test_inputs()[:4])
    float_seen = {d.name for d in r.matched} | {u.name for u in r.unmatched if u.side == "float"}
    quant_seen = {d.quant_name for d in r.matched} | {u.name for u in r.unmatched if u.side == "quant"}
    assert float_seen == _names(float_model)
    assert quant_seen == _names(int16x8)
    # 16x8 adds int16 copies of input and output the float model has no name for
    extra = [u for u in r.unmatched if u.side == "quant" and u.name.endswith("_int16")]
    assert extra and all(u.reason for u in extra)
    assert any(d.quant_dtype == "int16" for d in r.matched)


def test_compare_tensors_from_paths(tiny_tflite: dict[str, bytes], digits: Dataset, tmp_path: Path) -> None:
    fpath, qpath = tmp_path / "f.tflite", tmp_path / "q.tflite"
    fpath.write_bytes(tiny_tflite["float32"])
    qpath.write_bytes(tiny_tflite["uint8"])
    r = compare_tensors(fpath, qpath, digits.test_inputs()[:2])
    assert r.float_path == str(fpath) and r.quant_path == str(qpath)
    assert any(d.quant_dtype in ("int8", "uint8") for d in r.matched)


def test_dequantize_per_channel_uses_each_scale() -> None:
    q = np.array([[10, 10], [-10, -10]], dtype=np.int8)
    detail = {"quantization_parameters": {"scales": [0.5, 2.0], "zero_points": [0, 0], "quantized_dimension": 1}}
    np.testing.assert_allclose(_dequantize(q, detail), [[5.0, 20.0], [-5.0, -20.0]])


def test_dequantize_per_tensor_zero_point() -> None:
    q = np.array([0, 128, 255], dtype=np.uint8)
    detail = {"quantization_parameters": {"scales": [0.1], "zero_points": [128], "quantized_dimension": 0}}
    np.testing.assert_allclose(_dequantize(q, detail), [-12.8, 0.0, 12.7], atol=1e-6)


def test_compare_tensors_not_a_tflite(tiny_tflite: dict[str, bytes], digits: Dataset, tmp_path: Path) -> None:
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"this is not a flatbuffer")
    with pytest.raises(QlabError, match="not a TFLite model"):
        compare_tensors(tiny_tflite["float32"], bogus, digits.test_inputs()[:2])


def test_compare_tensors_missing_file(tiny_tflite: dict[str, bytes], digits: Dataset, tmp_path: Path) -> None:
    with pytest.raises(QlabError, match="no such"):
        compare_tensors(tmp_path / "absent.tflite", tiny_tflite["int8"], digits.test_inputs()[:2])


def test_compare_tensors_wrong_input_shape(tiny_tflite: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match=r"\(4, 4\).*\(8, 8\)"):
        compare_tensors(tiny_tflite["float32"], tiny_tflite["int8"], np.zeros((2, 4, 4), np.float32))


def test_compare_tensors_no_samples(tiny_tflite: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match="at least one sample"):
        compare_tensors(tiny_tflite["float32"], tiny_tflite["int8"], np.zeros((0, 8, 8), np.float32))
