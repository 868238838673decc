"""Names users read: the Keras layer behind a converter's fused TFLite tensor name."""

from __future__ import annotations


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
