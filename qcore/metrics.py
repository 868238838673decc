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
