"""inspect(): ops, tensors and NPU lint on models TF converts here, and on files that are not models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qcore  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from qcore.qtyping import Inspection, LoadedModel, QlabError
from qcore.tflite.inspection import inspect, npu_verdict

RECIPES = (
    "float32",
    "float16",
    "dynamic",
    "int8-fallback",
    "int8",
    "uint8",
    "int16x8",
    "int8-per-tensor",
)


def _wrap(keras_model: object, name: str) -> LoadedModel:
    return LoadedModel(name, "", "demo", keras_model, (None, 8, 8), (None, 10), 2)


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    """Twenty seeded 8×8 inputs in [0, 1]: enough for the converter's ranges."""
    return np.random.default_rng(0).uniform(0, 1, (20, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def converted(calibration: np.ndarray) -> dict[str, bytes]:
    """The demo CNN's architecture (untrained: weights do not matter here) converted with each recipe."""
    from qcore.engines.tf import convert
    from qcore.inputs.models import build_demo_model

    model = _wrap(build_demo_model(), "cnn")
    return {name: convert(model, name, calibration) for name in RECIPES}


@pytest.fixture(scope="module")
def with_sin(calibration: np.ndarray) -> dict[str, bytes]:
    """A CNN with a SIN op, which has no int8 kernel, converted with int8-fallback and int8.

    The converter itself, not qcore.engines.tf.convert (which refuses the int8 result): a .tflite
    made elsewhere can look like this.
    """
    import tensorflow as tf
    import tf_keras

    from qcore.engines.tf import apply_recipe, make_converter
    from qcore.recipes import get_recipe

    inp = tf_keras.Input((8, 8))
    x = tf_keras.layers.Reshape((8, 8, 1))(inp)
    x = tf_keras.layers.Conv2D(4, 3)(x)
    x = tf_keras.layers.Lambda(tf.math.sin)(x)
    x = tf_keras.layers.Flatten()(x)
    out = tf_keras.layers.Dense(10)(x)
    model = _wrap(tf_keras.Model(inp, out), "sin")
    made: dict[str, bytes] = {}
    for name in ("int8-fallback", "int8"):
        converter = make_converter(model)
        apply_recipe(converter, get_recipe(name), calibration)
        made[name] = bytes(converter.convert())
    return made


def _codes(ins: Inspection, severity: str | None = None) -> set[str]:
    return {f.code for f in ins.lint if severity is None or f.severity == severity}


def _op(ins: Inspection, name: str) -> list:
    return [op for op in ins.ops if op.name == name]


def _weights(ins: Inspection) -> list:
    """The constant int8 inputs of CONV_2D and FULLY_CONNECTED."""
    out = []
    for op in ins.ops:
        if op.name in ("CONV_2D", "FULLY_CONNECTED"):
            out += [ins.tensors[i] for i in op.inputs[1:2]]
    return out


# ------------------------------------------------------------------ real models
def test_inspect_float32_every_compute_op_is_float(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["float32"])
    assert not ins.integer_only
    assert {"CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "RESHAPE"} <= set(ins.float_ops)
    assert ins.verdict.startswith("float ops left: ")
    assert "CONV_2D" in ins.verdict
    assert {f.message.split(" × ")[1].split()[0] for f in ins.lint if f.code == "float-op"} == set(
        ins.float_ops
    )
    assert all(f.severity == "error" for f in ins.lint if f.code == "float-op")


def test_inspect_float32_shape_op_is_not_float(converted: dict[str, bytes]) -> None:
    # SHAPE reads a float tensor's shape, never its values
    ins = inspect(converted["float32"])
    assert _op(ins, "SHAPE") and not any(op.is_float for op in _op(ins, "SHAPE"))
    assert "SHAPE" not in ins.float_ops


def test_inspect_float32_tensors(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["float32"])
    (inp,) = ins.inputs
    assert ins.tensors[inp].dtype == "float32"
    assert ins.tensors[inp].shape == (1, 8, 8)
    assert not ins.tensors[inp].is_constant
    assert ins.tensors[inp].scales == ()
    kernel = _weights(ins)[0]
    assert kernel.is_constant and kernel.dtype == "float32" and kernel.shape == (12, 3, 3, 1)


def test_inspect_int8_is_integer_only(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["int8"])
    assert ins.integer_only
    assert ins.verdict == "integer-only"
    assert ins.float_ops == ()
    assert not any(op.is_float for op in ins.ops)
    assert _codes(ins, "error") == set()
    assert ins.tensors[ins.inputs[0]].dtype == "int8"
    assert ins.tensors[ins.outputs[0]].dtype == "int8"


def test_inspect_int8_io_dtype_info_suggests_uint8(converted: dict[str, bytes]) -> None:
    (io,) = [f for f in inspect(converted["int8"]).lint if f.code == "io-dtype"]
    assert io.severity == "info"
    assert "input int8, output int8" in io.message and "uint8" in io.message.split(":", 1)[1]


def test_inspect_int8_per_channel_weights(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["int8"])
    (conv,) = _op(ins, "CONV_2D")
    kernel, bias = ins.tensors[conv.inputs[1]], ins.tensors[conv.inputs[2]]
    assert kernel.dtype == "int8" and kernel.is_constant
    assert kernel.per_channel and len(kernel.scales) == 12
    assert kernel.zero_points == (0,) * 12
    assert kernel.quantized_dimension == 0
    assert bias.dtype == "int32" and len(bias.scales) == 12
    (finding,) = [f for f in ins.lint if f.code == "per-channel"]
    assert finding.severity == "warning"
    assert finding.message.startswith("2 weight tensors are quantized per channel (e.g. ")
    assert any(repr(w.name) in finding.message for w in _weights(ins))
    assert "int8-per-tensor" in finding.message and "VeriSilicon" in finding.message


def test_inspect_int8_per_tensor_has_one_scale_per_weight(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["int8-per-tensor"])
    assert ins.integer_only
    weights = _weights(ins)
    assert len(weights) == 2
    assert all(len(w.scales) == 1 and not w.per_channel for w in weights)
    assert "per-channel" not in _codes(ins)


def test_inspect_int8_activation_quantization(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["int8"])
    inp = ins.tensors[ins.inputs[0]]
    assert len(inp.scales) == 1 and inp.scales[0] > 0
    assert -128 <= inp.zero_points[0] <= 127


def test_inspect_uint8_io_has_no_float_and_no_boundary_warning(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["uint8"])
    assert ins.integer_only
    assert ins.tensors[ins.inputs[0]].dtype == "uint8"
    quantize_ops = _op(ins, "QUANTIZE")
    assert quantize_ops and not any(op.is_float for op in quantize_ops)
    assert "boundary-quant" not in _codes(ins)
    (io,) = [f for f in ins.lint if f.code == "io-dtype"]
    assert "input uint8, output uint8" in io.message and "NXP" in io.message


def test_inspect_int8_fallback_boundary_quantize_is_not_float(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["int8-fallback"])
    assert ins.tensors[ins.inputs[0]].dtype == "float32"
    first, last = ins.ops[0], ins.ops[-1]
    assert (first.name, first.is_float) == ("QUANTIZE", False)
    assert (last.name, last.is_float) == ("DEQUANTIZE", False)
    assert ins.integer_only
    (boundary,) = [f for f in ins.lint if f.code == "boundary-quant"]
    assert boundary.severity == "warning" and "int8" in boundary.message
    assert "quant-pair" not in _codes(ins)


def test_inspect_dynamic_hybrid_kernels_are_float(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["dynamic"])
    (fc,) = _op(ins, "FULLY_CONNECTED")
    assert fc.is_float
    weight = ins.tensors[fc.inputs[1]]
    assert weight.dtype == "int8" and weight.is_constant
    (finding,) = [f for f in ins.lint if f.code == "float-op" and "FULLY_CONNECTED" in f.message]
    assert "hybrid" in finding.message


def test_inspect_float16_weights_error(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["float16"])
    assert not ins.integer_only
    fp16 = [t for t in ins.tensors if t.dtype == "float16"]
    assert fp16 and all(t.is_constant for t in fp16)
    dequantize = _op(ins, "DEQUANTIZE")
    assert dequantize and all(op.is_float for op in dequantize)
    (finding,) = [f for f in ins.lint if f.code == "float16-weights"]
    assert finding.severity == "error"
    assert finding.message.startswith(f"{len(fp16)} weight tensors")


def test_inspect_int16x8_activations_error(converted: dict[str, bytes]) -> None:
    ins = inspect(converted["int16x8"])
    (conv,) = _op(ins, "CONV_2D")
    assert ins.tensors[conv.inputs[0]].dtype == "int16"
    assert ins.tensors[conv.inputs[1]].dtype == "int8"
    assert ins.integer_only  # 16x8 computes in integers; the NPU still cannot run it
    (finding,) = [f for f in ins.lint if f.code == "int16-activations"]
    assert finding.severity == "error"
    (boundary,) = [f for f in ins.lint if f.code == "boundary-quant"]
    assert "int16" in boundary.message


def test_inspect_fallback_float_op_inside_quant_pair(with_sin: dict[str, bytes]) -> None:
    ins = inspect(with_sin["int8-fallback"])
    assert not ins.integer_only
    assert "SIN" in ins.float_ops
    (sin,) = _op(ins, "SIN")
    assert sin.is_float
    (pair,) = [f for f in ins.lint if f.code == "quant-pair"]
    assert pair.severity == "warning"
    assert pair.message.startswith("2 QUANTIZE/DEQUANTIZE ops inside the graph around SIN")
    assert any(f.code == "float-op" and "SIN" in f.message for f in ins.lint)
    # the pair is reported once, under quant-pair, not again as float ops
    assert not any(f.code == "float-op" and "QUANTIZE" in f.message for f in ins.lint)


def test_inspect_int8_recipe_can_still_leave_a_float_op(with_sin: dict[str, bytes]) -> None:
    # the converter accepts the integer-only recipe and silently keeps SIN in float: only
    # reading the file tells
    ins = inspect(with_sin["int8"])
    assert ins.tensors[ins.inputs[0]].dtype == "int8"
    assert not ins.integer_only
    assert "SIN" in ins.verdict


def test_inspect_lint_sorted_by_severity(with_sin: dict[str, bytes]) -> None:
    order = {"error": 0, "warning": 1, "info": 2}
    ranks = [order[f.severity] for f in inspect(with_sin["int8-fallback"]).lint]
    assert ranks == sorted(ranks) and set(ranks) == {0, 1, 2}


def test_inspect_matches_interpreter(converted: dict[str, bytes]) -> None:
    # the C++ runtime's view of the same file: names, dtypes, shapes, quantization
    from qcore.tflite.litert_io import make_interpreter

    for recipe, model in converted.items():
        ins = inspect(model)
        details = {d["index"]: d for d in make_interpreter(model).get_tensor_details()}
        assert len(details) == len(ins.tensors), recipe
        for t in ins.tensors:
            d = details[t.index]
            assert t.name == d["name"], recipe
            assert t.dtype == np.dtype(d["dtype"]).name, (recipe, t.name)
            assert t.shape == tuple(int(s) for s in d["shape"]), (recipe, t.name)
            qp = d["quantization_parameters"]
            np.testing.assert_allclose(
                t.scales, qp["scales"], rtol=1e-7, err_msg=f"{recipe} {t.name}"
            )
            assert t.zero_points == tuple(int(z) for z in qp["zero_points"]), (recipe, t.name)


def test_inspect_path_and_bytes_agree(converted: dict[str, bytes], tmp_path: Path) -> None:
    path = tmp_path / "int8.tflite"
    path.write_bytes(converted["int8"])
    from_path, from_bytes = inspect(path), inspect(converted["int8"])
    assert from_path.path == str(path) and from_bytes.path == ""
    assert from_path.size_bytes == len(converted["int8"])
    assert (from_path.ops, from_path.tensors, from_path.lint) == (
        from_bytes.ops,
        from_bytes.tensors,
        from_bytes.lint,
    )
    assert inspect(str(path)).ops == from_path.ops


# ------------------------------------------------------------------ files that are not models
def test_inspect_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tflite"
    path.write_bytes(b"")
    with pytest.raises(QlabError, match=rf"^{path}: not a TFLite model: the file is empty$"):
        inspect(path)


def test_inspect_shorter_than_header(tmp_path: Path) -> None:
    path = tmp_path / "short.tflite"
    path.write_bytes(b"\x18\x00\x00\x00TF")
    with pytest.raises(QlabError, match="not a TFLite model: only 6 bytes long"):
        inspect(path)


def test_inspect_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.tflite"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(
        QlabError, match=rf"{path}: not a TFLite model: no 'TFL3' identifier at bytes 4..8"
    ):
        inspect(path)


def test_inspect_keras_h5_passed_by_mistake(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(512))
    with pytest.raises(QlabError, match="no 'TFL3' identifier"):
        inspect(path)


def test_inspect_truncated_model(converted: dict[str, bytes], tmp_path: Path) -> None:
    model = converted["int8"]
    path = tmp_path / "half.tflite"
    path.write_bytes(model[: len(model) // 2])
    with pytest.raises(QlabError, match=rf"^{path}: not a TFLite model: "):
        inspect(path)


def test_inspect_truncated_anywhere(converted: dict[str, bytes]) -> None:
    model = converted["int8"]
    for n in range(0, len(model), 13):
        with pytest.raises(QlabError, match="^model: not a TFLite model: "):
            inspect(model[:n])


def test_inspect_valid_identifier_garbage_body() -> None:
    body = np.random.default_rng(1).bytes(2048)
    with pytest.raises(QlabError, match="^model: not a TFLite model: "):
        inspect(b"\x10\x00\x00\x00TFL3" + body)


def test_inspect_valid_identifier_zero_body() -> None:
    with pytest.raises(QlabError, match="not a TFLite model"):
        inspect(b"\x00\x00\x00\x00TFL3" + bytes(64))


def test_inspect_corrupted_bytes_never_escape_as_other_errors(converted: dict[str, bytes]) -> None:
    # flipped bytes inside a real model either still parse or raise QlabError; nothing else
    rng = np.random.default_rng(2)
    model = converted["int8"]
    parsed = 0
    for _ in range(300):
        corrupt = bytearray(model)
        for pos in rng.integers(8, len(model), size=int(rng.integers(1, 12))):
            corrupt[pos] = int(rng.integers(0, 256))
        try:
            inspect(bytes(corrupt))
            parsed += 1
        except QlabError as exc:
            assert "not a TFLite model" in str(exc)
    assert parsed < 300  # some flips must have hit the structure


def test_inspect_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.tflite"
    with pytest.raises(QlabError, match=rf"^{path}: no such file$"):
        inspect(path)


def test_inspect_directory(tmp_path: Path) -> None:
    with pytest.raises(QlabError, match=rf"^{tmp_path}: is a directory"):
        inspect(tmp_path)


def test_inspect_buffer_running_past_the_end(converted: dict[str, bytes]) -> None:
    # a weight buffer whose length field claims more bytes than the file has left
    import struct

    from ai_edge_litert import schema_py_generated as schema

    model = bytearray(converted["int8"])
    root = schema.Model.GetRootAs(bytes(model), 0)
    j = next(j for j in range(root.BuffersLength()) if root.Buffers(j).DataLength() > 0)
    buf = root.Buffers(j)
    start = buf._tab.Vector(buf._tab.Offset(4))
    struct.pack_into("<I", model, start - 4, len(model) - start + 1)
    with pytest.raises(QlabError, match=f"buffer {j} runs past the end of the file"):
        inspect(bytes(model))


# ------------------------------------------------------------------ the compact NPU verdict
def test_npu_verdict_int8_ready_and_uint8_io(converted: dict[str, bytes]) -> None:
    v = npu_verdict(converted["int8"])
    assert v.ready and v.n_float_ops == 0 and v.summary == "NPU-ready: integer-only"
    assert v.label == "NPU-ready: integer-only" and v.weight_elements > 0
    u = npu_verdict(converted["uint8"])
    assert u.io == "uint8 → uint8"


def test_npu_verdict_float32_counts_float_ops(converted: dict[str, bytes]) -> None:
    v = npu_verdict(converted["float32"])
    ins = inspect(converted["float32"])
    assert not v.ready and "float-op" in v.problems
    assert v.n_float_ops == sum(1 for op in ins.ops if op.is_float)
    assert v.summary.startswith(f"not NPU-ready: {v.n_float_ops} float ops fall back to the CPU (")
    assert v.io == "float32 → float32"


def test_npu_verdict_fallback_names_the_float_op_and_the_quant_pair(with_sin: dict[str, bytes]) -> None:
    v = npu_verdict(with_sin["int8-fallback"])
    assert not v.ready and dict(v.float_ops) == {"SIN": 1}
    assert v.quant_ops == 2
    assert "1 float ops fall back to the CPU (1× SIN)" in v.summary and "2 QUANTIZE/DEQUANTIZE" in v.summary


def test_npu_verdict_int16x8_is_not_ready(converted: dict[str, bytes]) -> None:
    v = npu_verdict(converted["int16x8"])
    assert not v.ready and "int16-activations" in v.problems and "int16" in v.summary


def test_npu_verdict_garbage_raises_in_words() -> None:
    with pytest.raises(QlabError, match="not a TFLite model"):
        npu_verdict(b"garbage!")
