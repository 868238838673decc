"""Does a dataset fit a model? Shape, value range after the preprocessing, labels against outputs (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from qcore.qtyping import Dataset

# samples read to measure the value range: enough to see it, cheap on any dataset
PROFILE_SAMPLES = 1000
# preprocessed inputs beyond this magnitude look like raw pixels: models expect about [0, 1] or [-1, 1]
RAW_RANGE = 20.0


def profile(ds: Dataset) -> dict[str, Any]:
    """What the checks need from a dataset: sample shape, preprocessed min/max, label count."""
    x = ds.preprocess(ds.x_test[:PROFILE_SAMPLES]) if len(ds.x_test) else np.zeros((0,), np.float32)
    finite = x[np.isfinite(x)] if x.size else x
    labels = np.concatenate([ds.y_train.ravel(), ds.y_test.ravel()]) if len(ds.y_test) else ds.y_test
    return {
        "sample_shape": [int(d) for d in ds.x_test.shape[1:]],
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "classes": int(labels.max()) + 1 if len(labels) else 0,
        "scale": float(ds.input_scale), "offset": float(ds.input_offset),
        "non_finite": bool(x.size and not np.isfinite(x).all()),
    }


def _shape(value: Any) -> list[int | None]:
    loaded = json.loads(value) if isinstance(value, str) else value
    return [None if d is None else int(d) for d in (loaded or [])]


def warnings(model: Mapping[str, Any], prof: Mapping[str, Any], dataset_name: str = "the dataset"
             ) -> list[tuple[str, str]]:
    """(severity, message) for every way the dataset does not fit the model; "error" means a job will fail.

    Args:
        model: a models row (name, input_shape and output_shape as JSON text or lists).
        prof: `profile()` of the dataset.
        dataset_name: how the messages name the dataset.
    """
    out: list[tuple[str, str]] = []
    want = _shape(model.get("input_shape"))[1:]
    got = list(prof.get("sample_shape") or [])
    name = f"model {model.get('name')!r}"
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
        out.append(("error", f"{dataset_name} has samples of shape {tuple(got)} but {name} expects "
                             f"{tuple(want)}: every job on this pair will fail"))
    n_out = (_shape(model.get("output_shape")) or [None])[-1]
    classes = int(prof.get("classes") or 0)
    if n_out is not None and classes > n_out:
        out.append(("error", f"{dataset_name} has labels 0..{classes - 1} but {name} has only {n_out} outputs"))
    elif n_out is not None and 0 < classes < n_out:
        out.append(("warning", f"{dataset_name} uses {classes} of the {n_out} classes {name} predicts: "
                               "a prediction of another class counts as wrong"))
    lo, hi = prof.get("min"), prof.get("max")
    pre = f"after x · {prof.get('scale', 1.0):g} + {prof.get('offset', 0.0):g}"
    if prof.get("non_finite"):
        out.append(("error", f"{dataset_name} holds NaN or infinite values"))
    if lo is not None and hi is not None:
        if max(abs(lo), abs(hi)) > RAW_RANGE:
            out.append(("warning", f"inputs reach [{lo:g}, {hi:g}] {pre}: models usually take [0, 1] or [-1, 1]; "
                                   "for 8-bit pixels set the input scale to 1/255 = 0.00392"))
        elif hi - lo < 1e-6:
            out.append(("warning", f"every input value is {lo:g} {pre}: check the input scale and offset"))
    return out
