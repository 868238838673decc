"""Names users read: a model output's signature key, else the Keras layer behind a fused TFLite tensor name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from qcore.qtyping import LayerStat


def keras_layer_name(tensor_name: str) -> str:
    """The Keras layer a TFLite tensor belongs to, from the converter's fused name.

    "model/block_7_depthwise_relu/Relu6;model/block_7_depthwise_BN/FusedBatchNormV3;…" gives
    "block_7_depthwise_relu"; a name without a scope ("serving_default_input_1:0") stays as is,
    without its ":0" output suffix.
    """
    first = str(tensor_name).split(";", 1)[0]
    parts = [p for p in first.split("/") if p]
    # the first scope is the model's name; the second the layer's
    name = parts[1] if len(parts) >= 2 else (parts[0] if parts else str(tensor_name))
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isdigit() else name


def layer_name(tensor_name: str, recorded: Any = "", outputs: Mapping[str, str] | None = None) -> str:
    """The one name a page, report or the CLI shows for a layer.

    Args:
        tensor_name: the TFLite tensor name (what keep-float passes to the engines).
        recorded: the name stored with the row (`LayerStat.layer`); a run stored before names were
            recorded has none (NULL, NaN, "").
        outputs: tensor name → signature output key of the model at hand (`inspection.output_names`).

    Returns:
        The recorded name, else the output key, else the Keras layer of the fused tensor name.
    """
    if isinstance(recorded, str) and recorded:
        return recorded
    if outputs and str(tensor_name) in outputs:
        return outputs[str(tensor_name)]
    return keras_layer_name(tensor_name)


def named_stats(stats: Sequence[LayerStat], outputs: Mapping[str, str]) -> tuple[LayerStat, ...]:
    """The rows with `layer` set: a model output's signature key, else the Keras layer of the tensor name."""
    return tuple(dataclasses.replace(s, layer=layer_name(s.tensor_name, s.layer, outputs)) for s in stats)
