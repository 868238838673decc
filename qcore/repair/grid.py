"""The int8 weight grid the TFLite converter and AI Edge Quantizer put each kernel on, and snapping onto it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.qtyping import Recipe

# measured on TF 2.21 and AEQ 0.10 (tests/qcore/test_repair.py reads the .tflite back): int8 weights are
# symmetric, narrow range [-127, 127], scale = max|w| / 127 per output channel or per tensor
QMAX = 127


def per_channel_for(class_name: str, recipe: Recipe) -> bool:
    """Whether the converter gives this layer type one scale per output channel under `recipe`.

    Every weighted layer type follows the recipe. (Measured: under the per-tensor recipes both
    engines store FULLY_CONNECTED weights with one scale per output channel, but all of them
    equal the tensor's max|w| / 127, so the grid is per-tensor.)
    """
    return recipe.per_channel


def _scale_shape(class_name: str, kernel: np.ndarray, per_channel: bool) -> tuple[int, ...]:
    if not per_channel:
        return (1,) * kernel.ndim
    if class_name == "DepthwiseConv2D":
        return (1, 1, kernel.shape[2], kernel.shape[3])
    return (1,) * (kernel.ndim - 1) + (kernel.shape[-1],)


@dataclass(frozen=True)
class Grid:
    """One kernel's grid: w = q * scale with integer q in [-127, 127]."""

    scale: np.ndarray  # broadcastable to the kernel; 0 for an all-zero channel

    def levels(self, kernel: np.ndarray) -> np.ndarray:
        """kernel / scale (0 where the scale is 0)."""
        out = np.zeros(kernel.shape, dtype=np.float64)
        np.divide(kernel, self.scale, out=out, where=np.broadcast_to(self.scale > 0, kernel.shape))
        return out

    def nearest(self, kernel: np.ndarray) -> np.ndarray:
        """The converter's own rounding: to nearest, ties away from zero, clipped to ±127."""
        v = self.levels(kernel)
        return np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -QMAX, QMAX).astype(np.int32)

    def snap(self, q: np.ndarray) -> np.ndarray:
        """The float kernel q * scale, which the converter turns back into exactly q."""
        return (q.astype(np.float32) * self.scale.astype(np.float32)).astype(np.float32)

    def pinned(self, kernel: np.ndarray) -> np.ndarray:
        """The elements whose |w| sets their channel's (or tensor's) scale: they must stay at ±127.

        The converter recomputes the scale from the weights it is given, so the largest |w| of each
        channel has to stay exactly 127 steps out, or the whole channel lands on another grid.
        """
        v = np.abs(self.levels(kernel))
        return (v >= QMAX - 1e-3) & np.broadcast_to(self.scale > 0, kernel.shape)


def grid_of(class_name: str, kernel: np.ndarray, per_channel: bool) -> Grid:
    """The grid the converter computes for this kernel (scale = max|w| / 127)."""
    shape = _scale_shape(class_name, kernel, per_channel)
    axes = tuple(i for i, n in enumerate(shape) if n == 1)
    top = np.abs(kernel.astype(np.float64)).max(axis=axes, keepdims=True) if axes else np.abs(kernel)
    return Grid((top / QMAX).astype(np.float64))


def quantized(class_name: str, kernel: np.ndarray, per_channel: bool) -> np.ndarray:
    """The float kernel the converter's round-to-nearest will compute with (w rounded onto its grid)."""
    g = grid_of(class_name, kernel, per_channel)
    return g.snap(g.nearest(kernel))
