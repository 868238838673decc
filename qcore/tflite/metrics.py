"""Classification metrics as plain numpy functions, with empty sets and NaN handled."""

from __future__ import annotations

import numpy as np


def _check(outputs: np.ndarray, labels: np.ndarray) -> None:
    if len(outputs) != len(labels):
        raise ValueError(f"{len(outputs)} outputs but {len(labels)} labels")


def predictions(outputs: np.ndarray) -> np.ndarray:
    """Argmax over the last axis; rows containing NaN predict -1 (never a class)."""
    outputs = np.asarray(outputs)
    if outputs.size == 0:
        return np.zeros(len(outputs), dtype=np.int64)
    flat = outputs.reshape(len(outputs), -1)
    pred = np.argmax(np.nan_to_num(flat, nan=-np.inf), axis=1).astype(np.int64)
    pred[np.isnan(flat).any(axis=1)] = -1
    return pred


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]; NaN for an empty set."""
    _check(outputs, labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(predictions(outputs) == np.asarray(labels).astype(np.int64)))


def top_k(outputs: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Share of samples whose label is among the k highest outputs; NaN for an empty set."""
    _check(outputs, labels)
    if len(labels) == 0:
        return float("nan")
    flat = np.nan_to_num(np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1), nan=-np.inf)
    k = max(1, min(k, flat.shape[1]))
    top = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    return float(np.mean((top == np.asarray(labels).astype(np.int64)[:, None]).any(axis=1)))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of samples where two models' argmax predictions agree; NaN for an empty set."""
    _check(a, b)
    if len(a) == 0:
        return float("nan")
    return float(np.mean(predictions(a) == predictions(b)))


def confusion(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true labels, columns predictions; predictions outside [0, n) are dropped."""
    pred = np.asarray(pred).astype(np.int64)
    labels = np.asarray(labels).astype(np.int64)
    if len(pred) != len(labels):
        raise ValueError(f"{len(pred)} predictions but {len(labels)} labels")
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    ok = (pred >= 0) & (pred < num_classes) & (labels >= 0) & (labels < num_classes)
    np.add.at(out, (labels[ok], pred[ok]), 1)
    return out


# ---------------------------------------------------------------- outputs that are not class scores
# Detectors and landmark models are scored against a reference model's outputs, sample by sample.


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"outputs of shape {a64.shape} cannot be compared with reference outputs of shape {b64.shape}")
    if a64.ndim == 0:  # one scalar output: one sample
        return a64.reshape(1, 1), b64.reshape(1, 1)
    width = int(np.prod(a64.shape[1:]))
    return a64.reshape(len(a64), width), b64.reshape(len(b64), width)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference over every value; NaN for an empty set, NaN values ignored."""
    x, y = _pair(a, b)
    if x.size == 0:
        return float("nan")
    err = (x - y) ** 2
    return float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; NaN for an empty set, NaN values ignored."""
    x, y = _pair(a, b)
    err = np.abs(x - y)
    if err.size == 0 or not np.isfinite(err).any():
        return float("nan")
    return float(np.nanmax(err))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of the two outputs, in [-1, 1].

    Two all-zero samples count as identical (1), one all-zero sample against a non-zero one as
    unrelated (0); samples with NaN are left out. NaN for an empty set.
    """
    x, y = _pair(a, b)
    if len(x) == 0:
        return float("nan")
    ok = ~(np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1))
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return float("nan")
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    both_zero, one_zero = (nx == 0) & (ny == 0), (nx == 0) ^ (ny == 0)
    denom = np.where(nx * ny == 0, 1.0, nx * ny)
    sim = np.clip(np.einsum("ij,ij->i", x, y) / denom, -1.0, 1.0)
    sim = np.where(both_zero, 1.0, np.where(one_zero, 0.0, sim))
    return float(np.mean(sim))
