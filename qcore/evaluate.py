"""Evaluation of a .tflite on a labelled test split: accuracy, top-5, agreement, confusion."""

from __future__ import annotations

import numpy as np

from qcore import metrics
from qcore.litert_io import DEFAULT_BATCH, io_dtypes, run_model
from qcore.qtyping import Dataset, Evaluation


def evaluate_outputs(
    outputs: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    reference: np.ndarray | None = None,
    batched: bool = True,
    note: str = "",
    size_bytes: int = 0,
    input_dtype: str = "",
    output_dtype: str = "",
) -> Evaluation:
    """Turns model outputs into an Evaluation (pure numpy; used for host and board outputs alike)."""
    n_classes = max(num_classes, int(outputs.shape[-1]) if outputs.ndim > 1 else 0)
    pred = metrics.predictions(outputs)
    cm = metrics.confusion(pred, labels, n_classes)
    return Evaluation(
        accuracy=metrics.accuracy(outputs, labels),
        top5=metrics.top_k(outputs, labels, 5),
        agreement=None if reference is None else metrics.agreement(outputs, reference),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
        n_samples=int(len(labels)),
        batched=batched,
        note=note,
        size_bytes=size_bytes,
        input_dtype=input_dtype,
        output_dtype=output_dtype,
    )


def evaluate_tflite(
    model: bytes,
    dataset: Dataset,
    reference: np.ndarray | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    threads: int = 1,
) -> Evaluation:
    """Runs the whole test split through a .tflite and scores it.

    Args:
        model: the .tflite bytes.
        dataset: labelled data; its preprocessing is applied here.
        reference: the float Keras model's outputs on the same test split, for agreement.

    Raises:
        QlabError: when the data does not fit the model or the runtime fails.
    """
    outputs, batched = run_model(model, dataset.test_inputs(), batch_size=batch_size, threads=threads)
    in_dtype, out_dtype = io_dtypes(model)
    note = "" if batched else "the model could not be resized to a batch; evaluated one sample at a time"
    return evaluate_outputs(
        outputs,
        dataset.y_test,
        num_classes=dataset.num_classes,
        reference=reference,
        batched=batched,
        note=note,
        size_bytes=len(model),
        input_dtype=in_dtype,
        output_dtype=out_dtype,
    )
