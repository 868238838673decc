"""What the repairs know about each Keras layer type: its role, its channel axes, its linear part."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from qcore.repair.graph import LayerInfo


class Role(enum.StrEnum):
    """A layer's role for the repairs."""

    WEIGHTED = "weighted"  # Conv2D (groups 1), DepthwiseConv2D, Dense: the layers the repairs change
    BATCHNORM = "batchnorm"
    ACTIVATION = "activation"  # a separate activation layer (see `activation_of`)
    # per-channel and positively homogeneous, f(x / s) = f(x) / s per channel: CLE passes through
    PASS = "pass"
    INPUT = "input"
    OTHER = "other"  # anything else stops a chain: Add, Concatenate, Flatten, Reshape, custom layers


class Act(enum.StrEnum):
    """An activation as the repairs see it."""

    LINEAR = "linear"
    RELU = "relu"  # also LeakyReLU / PReLU / ReLU(negative_slope): piecewise linear through 0
    RELU6 = "relu6"  # any clipped ReLU (max_value set): not positively homogeneous
    OTHER = "other"  # sigmoid, swish, ...: not positively homogeneous


WEIGHTED = frozenset({"Conv2D", "DepthwiseConv2D", "Dense"})
_ACTIVATION_LAYERS = frozenset({"Activation", "ReLU", "LeakyReLU", "PReLU"})
# per-channel, positively homogeneous layers: max, average and interpolation of x / s are those of x, over s
_PASS = frozenset({"ZeroPadding2D", "UpSampling2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
                   "GlobalMaxPooling2D", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                   "AlphaDropout", "ActivityRegularization"})
# of those, the ones for which absorbing a constant c (x - c, then + c after the next layer) is exact:
# zero padding pads with 0, not with -c
ABSORB_PASS = _PASS - {"ZeroPadding2D"}
# of those, the ones that keep a channel's mean (analytic bias correction needs E[x]; bilinear
# upsampling keeps it up to the border rows)
MEAN_PASS = frozenset({"UpSampling2D", "AveragePooling2D", "GlobalAveragePooling2D", "Dropout", "SpatialDropout2D",
                       "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"})


def role_of(info: LayerInfo) -> Role:
    if not info.builtin:
        return Role.OTHER
    if info.class_name in WEIGHTED:
        return Role.WEIGHTED
    if info.class_name == "BatchNormalization":
        return Role.BATCHNORM
    if info.class_name in _ACTIVATION_LAYERS:
        return Role.ACTIVATION
    if info.class_name in _PASS:
        return Role.PASS
    if info.class_name == "InputLayer":
        return Role.INPUT
    return Role.OTHER


def _named_activation(name: Any) -> Act:
    return {"linear": Act.LINEAR, None: Act.LINEAR, "relu": Act.RELU, "relu6": Act.RELU6}.get(name, Act.OTHER)


def activation_of(info: LayerInfo) -> Act:
    """The activation an activation layer applies, or a weighted layer's fused activation."""
    conf = info.config
    if info.class_name in WEIGHTED or info.class_name == "Activation":
        return _named_activation(conf.get("activation"))
    if info.class_name == "ReLU":
        if float(conf.get("threshold") or 0.0) != 0.0:
            return Act.OTHER  # relu(x - t) is not homogeneous
        return Act.RELU6 if conf.get("max_value") is not None else Act.RELU
    if info.class_name in ("LeakyReLU", "PReLU"):
        return Act.RELU
    return Act.OTHER


def weighted_problem(info: LayerInfo, kernel: np.ndarray) -> str:
    """Why a Conv2D / DepthwiseConv2D / Dense cannot be repaired ('' when it can)."""
    conf = info.config
    if info.shared:
        return f"shared layer: called {len(info.calls)} times, so one set of weights serves several places"
    if info.class_name in ("Conv2D", "DepthwiseConv2D") and conf.get("data_format", "channels_last") != "channels_last":
        return "channels_first data format (TFLite runs channels_last)"
    if info.class_name == "Conv2D" and int(conf.get("groups", 1) or 1) != 1:
        return f"grouped convolution (groups={conf.get('groups')})"
    if info.class_name == "Dense" and kernel.ndim != 2:
        return "Dense with a kernel of rank other than 2"
    return ""


# ---------------------------------------------------------------- channel axes of the kernels
# Conv2D kernel (kh, kw, in, out); DepthwiseConv2D (kh, kw, channels, multiplier); Dense (in, out)


def out_channels_view(class_name: str, kernel: np.ndarray) -> np.ndarray:
    """The kernel as (rest, out channels): a view whose columns are the output channels."""
    if class_name == "DepthwiseConv2D":
        kh, kw, c, m = kernel.shape
        return kernel.reshape(kh * kw, c * m)
    return kernel.reshape(-1, kernel.shape[-1])


def out_ranges(class_name: str, kernel: np.ndarray) -> np.ndarray:
    """max |w| per output channel."""
    return np.abs(out_channels_view(class_name, kernel)).max(axis=0)


def in_ranges(class_name: str, kernel: np.ndarray) -> np.ndarray:
    """max |w| per input channel (for a depthwise layer, over the outputs its multiplier makes of it)."""
    if class_name in ("Conv2D", "DepthwiseConv2D"):
        return np.abs(kernel).max(axis=(0, 1, 3))
    return np.abs(kernel).max(axis=1)


def scale_out(class_name: str, kernel: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The kernel with each output channel multiplied by `factor`."""
    if class_name == "DepthwiseConv2D":
        return kernel * factor.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    return kernel * factor


def scale_in(class_name: str, kernel: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The kernel with each input channel multiplied by `factor`."""
    if class_name in ("Conv2D", "DepthwiseConv2D"):
        return kernel * factor.reshape(1, 1, -1, 1)
    return kernel * factor.reshape(-1, 1)


def input_sum(class_name: str, kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
    """W·x for an input that is the constant x[i] on every pixel of input channel i, per output channel.

    The output shift a constant per-channel input causes (absorption, analytic bias correction);
    exact away from zero-padded borders.
    """
    if class_name == "Conv2D":
        return np.einsum("hwio,i->o", kernel, x)
    if class_name == "DepthwiseConv2D":
        return np.einsum("hwcm,c->cm", kernel, x).reshape(-1)
    return x @ kernel


def absorbs_exactly(info: LayerInfo) -> bool:
    """A constant added to this layer's input changes every output pixel the same way (no zero-padded border)."""
    if info.class_name == "Dense":
        return True
    size = tuple(info.config.get("kernel_size") or (1, 1))
    return info.config.get("padding") == "valid" or all(int(k) == 1 for k in size)


# ---------------------------------------------------------------- the linear part, on tensors


def kernel_of(layer: Any) -> Any:
    """The layer's kernel variable (DepthwiseConv2D calls it depthwise_kernel)."""
    return layer.depthwise_kernel if type(layer).__name__ == "DepthwiseConv2D" else layer.kernel


def linear(layer: Any, x: Any, kernel: Any) -> Any:
    """The layer's output before bias and activation, with `kernel` in place of its own."""
    import tensorflow as tf

    name = type(layer).__name__
    if name == "Conv2D":
        return layer.convolution_op(x, kernel)
    if name == "DepthwiseConv2D":
        import tf_keras

        return tf_keras.backend.depthwise_conv2d(
            x, kernel, strides=layer.strides, padding=layer.padding, data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )
    if x.shape.rank == 2:
        return tf.matmul(x, kernel)
    return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])


def finish(layer: Any, pre: Any, bias: Any | None) -> Any:
    """Bias and the layer's fused activation on a pre-activation."""
    import tensorflow as tf

    if bias is not None:
        pre = tf.nn.bias_add(pre, bias)
    return layer.activation(pre)


def patches(layer: Any, x: Any) -> np.ndarray:
    """The layer's input as rows the kernel multiplies: (rows, K) for Conv2D / Dense, (rows, K, C) for depthwise.

    `patches @ kernel.reshape(K, out)` is the Conv2D / Dense output; for a depthwise layer the
    output of channel c is `patches[:, :, c] @ kernel[:, :, c, 0].reshape(K)`.
    """
    import tensorflow as tf

    name = type(layer).__name__
    if name == "Dense":
        return np.asarray(x).reshape(-1, x.shape[-1])
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    p = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1],
                                 padding=layer.padding.upper())
    rows = np.asarray(p).reshape(-1, kh * kw * int(x.shape[-1]))
    if name == "DepthwiseConv2D":
        return rows.reshape(-1, kh * kw, int(x.shape[-1]))
    return rows
