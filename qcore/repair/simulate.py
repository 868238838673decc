"""Activation quantization as the converter calibrates it, simulated on the quantized stream of a two-stream run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qcore.qtyping import Recipe
from qcore.repair.graph import MODEL_OUTPUT, Graph
from qcore.repair.layers import Act, Role, activation_of, role_of

# the converter fuses these into the conv / depthwise / dense before them: no quantization in between
_FUSED = frozenset({Act.RELU, Act.RELU6, Act.LINEAR})
# int16x8's activations: symmetric 16-bit (TFLite's 16x8 scheme)
_INT16_OPS = "EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8"


def activation_bits(recipe: Recipe) -> int:
    return 16 if _INT16_OPS in recipe.supported_ops else 8


def grid_params(low: float, high: float, bits: int) -> tuple[float, int]:
    """(scale, zero point) the converter derives from a calibrated range [low, high] (0 always inside).

    8 bits: asymmetric int8, scale = (high - low) / 255, zero point -128 - low / scale rounded;
    16 bits: symmetric, scale = max(|low|, |high|) / 32767, zero point 0.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if bits == 16:
        return max(abs(low), abs(high)) / 32767.0, 0
    scale = (high - low) / 255.0
    return scale, int(np.clip(np.round(-128.0 - low / scale), -128, 127)) if scale > 0 else 0


def fake_quantize(x: Any, low: float, high: float, bits: int) -> Any:
    """x rounded onto the grid the converter derives from a calibrated [low, high]."""
    import tensorflow as tf

    scale, zero = grid_params(low, high, bits)
    if scale <= 0:
        return x
    top = 32767.0 if bits == 16 else 127.0
    bottom = -top if bits == 16 else -128.0
    return (tf.clip_by_value(tf.round(x / scale) + zero, bottom, top) - zero) * scale


def _quantized_outputs(graph: Graph) -> set[str]:
    """The layers whose output tensor the converter quantizes: all but those an activation is fused onto."""
    out: set[str] = set()
    for info in graph:
        if role_of(info) == Role.INPUT:
            continue
        readers = graph.consumers_of(info.name)
        if role_of(info) == Role.WEIGHTED and len(readers) == 1 and readers[0] != MODEL_OUTPUT:
            reader = graph.layers[readers[0]]
            if role_of(reader) == Role.ACTIVATION and activation_of(reader) in _FUSED \
                    and reader.class_name in ("ReLU", "Activation") \
                    and not float(reader.config.get("negative_slope") or 0.0):
                continue
        out.add(info.name)
    return out


def activation_quantizer(graph: Graph, recipe: Recipe) -> Callable[[str, list[Any]], list[Any]]:
    """An `after` hook for `run_streams`: the last stream's output quantized with the first stream's range.

    The converter calibrates each tensor's range on the float model over the calibration samples;
    the float stream's min and max over the whole batch are that range.
    """
    import tensorflow as tf

    bits = activation_bits(recipe)
    points = _quantized_outputs(graph)

    def after(name: str, outs: list[Any]) -> list[Any]:
        if name not in points or not isinstance(outs[0], tf.Tensor) or not outs[0].dtype.is_floating:
            return outs
        low, high = float(tf.reduce_min(outs[0])), float(tf.reduce_max(outs[0]))
        return [*outs[:-1], fake_quantize(outs[-1], low, high, bits)]

    return after


def quantized_input(x: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The model input as the converted model sees it (its input tensor quantized with the calibrated range)."""
    return np.asarray(fake_quantize(x, float(x.min()), float(x.max()), activation_bits(recipe)), dtype=np.float32)


def quantized_stream(calibration: np.ndarray, graph: Graph, recipe: Recipe,
                     enabled: bool) -> tuple[np.ndarray, Callable[[str, list[Any]], list[Any]] | None]:
    """The quantized stream's input and `run_streams` hook: activations rounded as converted, or left float."""
    if not enabled:
        return calibration, None
    return quantized_input(calibration, recipe), activation_quantizer(graph, recipe)
