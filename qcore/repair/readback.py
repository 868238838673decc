"""Reads the int8 weights a converter wrote into a .tflite back, per Keras layer, in Keras kernel layout."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from qcore.tflite import litert_io

# the ops whose input 1 is the weight tensor, by the Keras layer type that becomes them
_WEIGHT_OPS = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "FULLY_CONNECTED": "Dense"}


def _to_keras(class_name: str, q: np.ndarray, kernel_shape: tuple[int, ...]) -> np.ndarray:
    if class_name == "Conv2D":  # TFLite [out, kh, kw, in]
        return np.transpose(q, (1, 2, 3, 0))
    if class_name == "DepthwiseConv2D":  # TFLite [1, kh, kw, channels * multiplier]
        return q.reshape(kernel_shape)
    return q.T  # TFLite [out, in]


def int8_weights(tflite: bytes, layers: Iterable[tuple[str, str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """The integers the .tflite holds for each named Keras layer's kernel.

    A weight tensor belongs to a layer when the converter named it under the layer's scope
    (`<model>/<layer>/Conv2D`) and it is input 1 of a CONV_2D, DEPTHWISE_CONV_2D or
    FULLY_CONNECTED op.

    Args:
        tflite: the converted model.
        layers: (layer name, Keras class name, Keras kernel shape) for each layer to read.

    Returns:
        Layer name -> int32 array in the Keras kernel's layout; a layer not found is left out.
    """
    it = litert_io.make_interpreter(tflite)
    it.allocate_tensors()
    details = {int(d["index"]): d for d in it.get_tensor_details()}
    weights: list[tuple[str, int, str]] = []
    for op in it._get_ops_details():  # noqa: SLF001  (LiteRT has no public op listing)
        if op["op_name"] in _WEIGHT_OPS and len(op["inputs"]) > 1:
            index = int(op["inputs"][1])
            weights.append((str(details[index]["name"]), index, _WEIGHT_OPS[op["op_name"]]))
    out: dict[str, np.ndarray] = {}
    for name, class_name, shape in layers:
        for tensor_name, index, op_class in weights:
            segments = tensor_name.split(";")[0].split("/")
            if op_class == class_name and name in segments[:-1] and details[index]["dtype"] == np.int8:
                q = np.asarray(it.get_tensor(index)).astype(np.int32)
                out[name] = _to_keras(class_name, q, shape)
                break
    return out
