"""Evaluation of a .tflite on a labelled test split: accuracy, top-5, agreement, confusion.

Outputs that are not class scores (detectors, landmarks) are scored against a reference model's
outputs instead: MSE, largest error and cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qcore.qtyping import Dataset, Evaluation, QlabError, Scoring
from qcore.tflite import metrics
from qcore.tflite.litert_io import DEFAULT_BATCH, io_dtypes, run_model


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
        # tolist() makes Python ints in C; a generator per cell took 0.15 s for 1000 classes
        confusion=tuple(map(tuple, cm.astype(np.int64).tolist())),
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


def scoring_for(output_shapes: Sequence[Sequence[int | None]], num_classes: int | None = None) -> Scoring:
    """Whether a model's outputs are class scores (top-1 applies) or must be compared with a reference.

    Class scores are one output of shape [N, classes] with at least two classes, and at least as
    many classes as the labels name. Anything else (several outputs, boxes, heatmaps, one
    regression value, labels beyond the output's width) is scored against the reference.
    """
    if len(output_shapes) != 1:
        return Scoring.OUTPUTS
    shape = tuple(output_shapes[0])
    if len(shape) != 2 or shape[-1] is None or int(shape[-1]) < 2:
        return Scoring.OUTPUTS
    if num_classes is not None and num_classes > int(shape[-1]):
        return Scoring.OUTPUTS
    return Scoring.CLASSES


def evaluate_against_reference(
    outputs: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    *,
    batched: bool = True,
    note: str = "",
    size_bytes: int = 0,
    input_dtype: str = "",
    output_dtype: str = "",
) -> Evaluation:
    """Scores outputs that are not class scores against the reference model's (pure numpy).

    Every output is compared with the reference's output of the same position; the model's
    figures are the mean MSE and mean cosine over outputs and the largest error of any output.
    Accuracy and top-5 do not apply and are NaN.

    Raises:
        QlabError: when the two models' outputs differ in number or shape.
    """
    if len(outputs) != len(reference):
        raise QlabError(f"the model has {len(outputs)} outputs but the reference has {len(reference)}")
    per: dict[str, float] = {}
    mses, coss, maxes = [], [], []
    for k, (out, ref) in enumerate(zip(outputs, reference, strict=True)):
        if out.shape != ref.shape:
            raise QlabError(f"output {k} has shape {tuple(out.shape[1:])} but the reference's has "
                            f"{tuple(ref.shape[1:])} (batch dimension left out)")
        mses.append(metrics.mse(out, ref))
        coss.append(metrics.cosine(out, ref))
        maxes.append(metrics.max_abs_error(out, ref))
        if len(outputs) > 1:
            per.update({f"output{k}_mse": mses[-1], f"output{k}_cosine": coss[-1]})
    finite_max = [m for m in maxes if m == m]
    summary = {
        "output_mse": float(np.mean(mses)) if mses else float("nan"),
        "output_cosine": float(np.mean(coss)) if coss else float("nan"),
        "output_max_abs_error": max(finite_max) if finite_max else float("nan"),
    }
    return Evaluation(
        accuracy=float("nan"),
        top5=float("nan"),
        agreement=None,
        confusion=(),
        n_samples=int(len(outputs[0])) if outputs else 0,
        batched=batched,
        note=note,
        size_bytes=size_bytes,
        input_dtype=input_dtype,
        output_dtype=output_dtype,
        scoring=Scoring.OUTPUTS.value,
        output_metrics=summary | per,
    )
