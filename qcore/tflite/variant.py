"""A .tflite a step made, as a variant result: its bytes, evaluation and NPU verdict, read once where it was made."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qcore.qtyping import Evaluation, QlabError, VariantKind, VariantResult
from qcore.tflite.inspection import npu_verdict


def built(name: str, kind: VariantKind, recipe: str | None, engine: str, tflite: bytes, *,
          settings: Mapping[str, Any] | None = None, evaluation: Evaluation | None = None,
          history: tuple[dict[str, float], ...] = ()) -> VariantResult:
    """A variant made now, with its NPU verdict read from the flatbuffer here (never again by the owner).

    A file the NPU lint cannot read gets no verdict rather than failing the step: the evaluation
    already ran it, and the Inspect page says what is wrong with it.
    """
    try:
        npu = npu_verdict(tflite)
    except QlabError:
        npu = None
    return VariantResult(name=name, kind=kind, recipe=recipe, engine=engine, settings=dict(settings or {}),
                         tflite=tflite, evaluation=evaluation, npu=npu, history=history)


def failed(name: str, kind: VariantKind, recipe: str | None, engine: str, error: str, *,
           settings: Mapping[str, Any] | None = None) -> VariantResult:
    """A variant a step could not make, kept with its reason (the store keeps a `failed` row)."""
    return VariantResult(name=name, kind=kind, recipe=recipe, engine=engine, settings=dict(settings or {}),
                         error=error)
