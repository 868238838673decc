"""Quantization-aware training with tfmot: annotate, fine-tune, convert, evaluate, check the moving-average range pitfall."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from qcore import defaults
from qcore.engines import tf as tf_engine
from qcore.inputs import keras_bridge
from qcore.inputs.data import check_fits
from qcore.inputs.models import float_reference
from qcore.qtyping import (
    Dataset,
    LoadedModel,
    Progress,
    QatResult,
    QlabError,
    VariantKind,
    first_line,
    no_progress,
)
from qcore.recipes import get_recipe
from qcore.tflite import metrics
from qcore.tflite.evaluate import evaluate_tflite
from qcore.tflite.variant import built

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = defaults.QAT_EPOCHS
DEFAULT_BATCH = defaults.QAT_BATCH
DEFAULT_LEARNING_RATE = defaults.QAT_LEARNING_RATE
DEFAULT_CALIBRATION = defaults.CALIBRATION_SAMPLES
# test samples QAT validates on after every epoch (val_loss, val_accuracy)
VALIDATION_SAMPLES = 512
# Keras and TFLite accuracy of a settled QAT model agree; more than a point apart means the ranges have not settled
ACCURACY_GAP = 0.01
# a moving-average range that still moves by more than 2% of its width per epoch has not settled
# (tfmot's EMA decay is 0.999, so ranges that start at ±6 take thousands of steps)
RANGE_SETTLED = 0.02
# a model of 150 layers would make an error line of thousands of characters
MAX_NAMES_SHOWN = 20


def parse_layers(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`all` or a comma-separated list of layer classes / layer names, as a tuple."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise QlabError("the layer choice is empty; give `all` or layer classes / names, e.g. Dense,Conv2D")
    if "all" in items and len(items) > 1:
        raise QlabError("the layer choice `all` cannot be combined with other names")
    return tuple(items)


def _registry() -> Any:
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


# tfmot's Default8Bit transforms quantize these chains as one layer (default_8bit_transforms.py):
# a Conv2D, DepthwiseConv2D or Dense without activation, the BatchNormalization right after it
# (folded into it by the converter), and a ReLU after that; and a ReLU right after Add/Conv2D/
# DepthwiseConv2D/Dense. Every layer of a chain must be annotated, or the transform does not match.
_FOLDS_BN = ("Conv2D", "DepthwiseConv2D", "Dense")
_BATCH_NORMS = ("BatchNormalization", "SyncBatchNormalization")
_FUSES_RELU = ("Add", "Conv2D", "DepthwiseConv2D", "Dense")


class FusedChain(NamedTuple):
    """Layers tfmot's transforms quantize as one: `head` (a conv/Dense and its BatchNormalization, or
    an Add/conv/Dense alone) and the ReLU after it, if any."""

    head: tuple[str, ...]
    relu: str | None

    @property
    def layers(self) -> tuple[str, ...]:
        return self.head + ((self.relu,) if self.relu else ())


def fused_chains(keras_model: Any) -> list[FusedChain]:
    """The layer chains tfmot quantizes as one unit, as layer names.

    Read from the model config the way tfmot's ModelTransformer reads it: a layer inside a chain
    (not its last) must have exactly one consumer, and a layer called more than once never matches.

    Returns:
        Conv/Dense → BatchNormalization [→ ReLU] chains, then Add/conv/Dense → ReLU pairs.
    """
    config = keras_model.get_config()
    specs = config.get("layers", [])
    by_name = {str(s.get("name") or s["config"]["name"]): s for s in specs}
    order = list(by_name)
    consumers: dict[str, list[str]] = {name: [] for name in by_name}
    single_call: set[str] = set()
    functional = all("inbound_nodes" in s for s in specs)
    for i, (name, spec) in enumerate(by_name.items()):
        if functional:
            nodes = spec.get("inbound_nodes") or []
            sources = [str(c[0]) for c in nodes[0]] if nodes else []
            if len(nodes) <= 1:
                single_call.add(name)
        else:  # Sequential: a chain
            sources = [order[i - 1]] if i else []
            single_call.add(name)
        for src in sources:
            consumers.setdefault(src, []).append(name)
    outputs = config.get("output_layers") or ([[order[-1]]] if order and not functional else [])
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    for out in outputs:
        consumers.setdefault(str(out[0]), []).append("<output>")

    def only_consumer(name: str) -> str | None:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0] in single_call else None

    def is_relu(name: str | None) -> bool:
        if name is None:
            return False
        spec = by_name[name]
        return bool(spec["class_name"] == "ReLU"
                    or (spec["class_name"] == "Activation" and spec["config"].get("activation") == "relu"))

    chains: list[FusedChain] = []
    taken: set[str] = set()
    for name, spec in by_name.items():
        if (spec["class_name"] not in _FOLDS_BN or name not in single_call
                or spec["config"].get("activation", "linear") != "linear"):
            continue
        bn = only_consumer(name)
        if bn is None or by_name[bn]["class_name"] not in _BATCH_NORMS:
            continue
        relu = only_consumer(bn)
        chains.append(FusedChain((name, bn), relu if is_relu(relu) else None))
        taken.update(chains[-1].layers)
    for name, spec in by_name.items():
        if spec["class_name"] not in _FUSES_RELU or name in taken or name not in single_call:
            continue
        relu = only_consumer(name)
        if is_relu(relu) and relu not in taken:
            chains.append(FusedChain((name,), relu))
    return chains


def _complete_chains(chosen: set[str], chains: Sequence[FusedChain]) -> set[str]:
    """The chosen layers plus the whole chain of every chosen conv, Dense, Add or BatchNormalization.

    A ReLU chosen alone stays alone: tfmot quantizes it without its producer.
    """
    done = set(chosen)
    for chain in chains:
        if done.intersection(chain.head):
            done.update(chain.layers)
    return done


def select_layers(keras_model: Any, layers: Sequence[str]) -> list[Any]:
    """The layers to quantize: every layer but inputs for `all`, else those matching a class or name.

    A chosen layer brings the rest of its fused chain (see `fused_chains`): "every Conv2D" of a
    Conv-BN-ReLU network also annotates the BatchNormalization and ReLU after each Conv2D, since
    tfmot only folds a BatchNormalization whose whole chain is annotated.

    Returns:
        The layers to annotate, in model order.

    Raises:
        QlabError: for a name that matches no layer (listing the classes and names there are), or
            layers tfmot cannot quantize even after its transforms (naming them).
    """
    candidates = [la for la in keras_model.layers if type(la).__name__ != "InputLayer"]
    if tuple(layers) == ("all",):
        names = {la.name for la in candidates}
    else:
        picked: set[str] = set()
        for item in layers:
            hits = [la for la in candidates if la.name == item or type(la).__name__ == item]
            if not hits:
                classes = sorted({type(la).__name__ for la in candidates})
                shown = [la.name for la in candidates][:MAX_NAMES_SHOWN]
                more = len(candidates) - len(shown)
                raise QlabError(
                    f"layer choice {item!r} matches no layer; classes: {', '.join(classes)}; names: "
                    f"{', '.join(shown)}" + (f" and {more} more" if more > 0 else "")
                )
            picked.update(la.name for la in hits)
        names = picked
    chains = fused_chains(keras_model)
    names = _complete_chains(names, chains)
    chosen = [la for la in candidates if la.name in names]
    folded = {chain.head[1] for chain in chains if len(chain.head) == 2}
    registry = _registry()
    unsupported = [la for la in chosen if la.name not in folded and not registry.supports(la)]
    if unsupported:
        raise QlabError(_unsupported_message(unsupported, candidates, registry))
    return chosen


def _unsupported_message(unsupported: Sequence[Any], candidates: Sequence[Any], registry: Any) -> str:
    named = ", ".join(f"{la.name!r} ({type(la).__name__})" for la in unsupported[:6])
    if len(unsupported) > 6:
        named += f" and {len(unsupported) - 6} more"
    hint = ""
    if any(type(la).__name__ in _BATCH_NORMS for la in unsupported):
        hint = ("; tfmot quantizes a BatchNormalization only right after a Conv2D, DepthwiseConv2D or Dense "
                "without activation whose only consumer it is (it folds into that layer)")
    ok = sorted({type(la).__name__ for la in candidates if registry.supports(la)})
    return (f"tfmot cannot quantize layer {named}{hint}; choose only supported layers"
            + (f", e.g. {', '.join(ok)}" if ok else ""))


# tfmot's RuntimeError for a layer without a quantize config: "Layer norm:<class '...LayerNormalization'> is not supported"
_TFMOT_UNSUPPORTED = re.compile(r"Layer (?P<name>[^:\s]+):<class '(?:[\w.]+\.)?(?P<cls>\w+)'> is not supported")


def build_qat_model(keras_model: Any, layers: Sequence[str]) -> tuple[Any, list[str]]:
    """A tf_keras model with fake-quantization, leaving the given model untouched.

    Returns:
        (the QAT model, names of the layers that got quantizers: the chosen ones, the rest of
        their fused chains, and the neighbours tfmot wraps so their outputs reach a quantized
        layer quantized).

    Raises:
        QlabError: see `select_layers`; or when tfmot refuses the model (e.g. a nested model),
            naming the layer when tfmot names one.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras

    chosen = select_layers(keras_model, layers)
    names = {la.name for la in chosen}
    qk = tfmot.quantization.keras
    try:
        with qk.quantize_scope():
            if tuple(layers) == ("all",):
                qat = qk.quantize_model(keras_model)
            else:
                annotated = tf_keras.models.clone_model(
                    keras_model,
                    clone_function=lambda la: qk.quantize_annotate_layer(la) if la.name in names else la,
                )
                qat = qk.quantize_apply(annotated)
    except (RuntimeError, ValueError, TypeError) as exc:
        found = _TFMOT_UNSUPPORTED.search(str(exc))
        if found:
            raise QlabError(
                f"tfmot cannot quantize layer {found['name']!r} ({found['cls']}) of model {keras_model.name!r}; "
                "choose only supported layers"
            ) from None
        raise QlabError(f"tfmot cannot quantize model {keras_model.name!r}: {first_line(exc)}") from None
    # tfmot also wraps neighbours whose outputs feed a quantized layer; report what really got quantizers
    wrapped = [la.layer.name for la in qat.layers if isinstance(getattr(la, "layer", None), tf_keras.layers.Layer)]
    return qat, wrapped or [la.name for la in chosen]


def moving_average_ranges(qat_model: Any) -> dict[str, tuple[Any, Any]]:
    """The (min, max) variables of the activation quantizers, keyed by prefix (weights' ranges excluded).

    Weight quantizers track the last value; only activation ranges are moving averages.
    """
    weight_range_ids: set[int] = set()
    for layer in qat_model.layers:
        for entry in getattr(layer, "_weight_vars", []) or []:
            for var in dict(entry[2]).values():
                weight_range_ids.add(id(var))
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    for var in qat_model.non_trainable_weights:
        if id(var) in weight_range_ids:
            continue
        name = var.name.split(":")[0]
        if name.endswith("_min"):
            mins[name[:-4]] = var
        elif name.endswith("_max"):
            maxs[name[:-4]] = var
    return {k: (mins[k], maxs[k]) for k in mins if k in maxs}


def _snapshot(ranges: dict[str, tuple[Any, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {k: (np.array(lo.numpy()), np.array(hi.numpy())) for k, (lo, hi) in ranges.items()}


def range_drift(before: dict[str, tuple[np.ndarray, np.ndarray]],
                after: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Largest move of a range end, relative to that range's width after the move."""
    worst = 0.0
    for key, (lo1, hi1) in after.items():
        if key not in before:
            continue
        lo0, hi0 = before[key]
        width = np.maximum(hi1 - lo1, 1e-12)
        move = np.maximum(np.abs(lo1 - lo0), np.abs(hi1 - hi0)) / width
        worst = max(worst, float(np.max(move)))
    return worst


def pitfall_warnings(keras_accuracy: float, tflite_accuracy: float, drift: float) -> list[str]:
    """The moving-average range pitfall: unsettled ranges make the converted model worse than the QAT model.

    Returns:
        A warning, with the advice to train longer, for an accuracy gap of more than a point
        and for ranges that still moved by more than RANGE_SETTLED of their width.
    """
    warnings: list[str] = []
    if abs(keras_accuracy - tflite_accuracy) > ACCURACY_GAP:
        warnings.append(
            f"QAT Keras accuracy {keras_accuracy:.2%} and converted TFLite accuracy {tflite_accuracy:.2%} differ by "
            f"more than {ACCURACY_GAP * 100:.0f} point: the quantization ranges have not converged; train longer "
            "(more epochs)"
        )
    if drift > RANGE_SETTLED:
        warnings.append(
            f"activation ranges still moved by up to {drift:.1%} of their width in the last epoch (settled means "
            f"below {RANGE_SETTLED:.0%}): train longer (more epochs) before trusting this model"
        )
    return warnings


def _outputs_are_probabilities(keras_model: Any, x: np.ndarray) -> bool:
    y = np.asarray(keras_model.predict(x[:16], verbose=0), dtype=np.float64)
    return bool(y.size and np.all(y >= 0) and np.all(y <= 1) and np.allclose(y.sum(axis=-1), 1.0, atol=1e-3))


def run_qat(
    model: LoadedModel,
    dataset: Dataset,
    *,
    layers: str | Sequence[str] = "all",
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    train_samples: int | None = None,
    int_io: bool = False,
    calibration_samples: int = DEFAULT_CALIBRATION,
    progress: Progress = no_progress,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
) -> QatResult:
    """Quantization-aware training: fine-tune with fake quantization, convert, evaluate. Stores nothing.

    A Keras 3 model is first rebuilt in tf_keras (`keras_bridge.to_tf_keras`). The given model is
    never modified.

    Args:
        model, dataset: what to train and evaluate on (checked to fit first).
        layers: `all` (tfmot's quantize_model), or layer classes / names to annotate.
        epochs, batch_size, learning_rate: of the fine-tuning (Adam).
        train_samples: use only the first N training samples; None for all.
        int_io: integer-only model with int8 input and output (calibrated on the first
            `calibration_samples` training samples); else float I/O.
        progress: called after every epoch and step.
        on_epoch: called after every epoch with (epoch, epochs, its metrics), for live curves.

    Returns:
        Accuracies (float model, QAT Keras model, converted TFLite), the per-epoch history, the
        last epoch's range drift and warnings when the moving-average range pitfall shows.

    Raises:
        QlabError: for bad settings, unknown or unsupported layers, a Keras 3 model that cannot be
            rebuilt, or a conversion failure.
    """
    if epochs < 1:
        raise QlabError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise QlabError(f"--batch-size must be at least 1, got {batch_size}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise QlabError(f"--learning-rate must be a positive number, got {learning_rate}")
    if train_samples is not None and train_samples < 1:
        raise QlabError(f"--train-samples must be at least 1, got {train_samples}")
    if calibration_samples < 1:
        raise QlabError(f"calibration samples must be at least 1, got {calibration_samples}")
    spec = parse_layers(layers)
    check_fits(model, dataset)
    x_train = dataset.preprocess(dataset.x_train[:train_samples])
    y_train = dataset.y_train[:train_samples]
    if len(x_train) == 0:
        raise QlabError(f"data {dataset.name!r} has no training samples to fine-tune on")
    x_test = dataset.test_inputs()

    progress(0.0, "preparing the QAT model")
    base = model.keras_model
    if model.keras_major >= 3 or keras_bridge.is_keras3(base):
        base = keras_bridge.to_tf_keras(model, check_inputs=x_test[:8])
    qat_model, quantized = build_qat_model(base, spec)
    # held-out figures per epoch beside the training ones: a curve that only falls on training data hides
    # overfitting; the first test samples keep the cost of an epoch small
    validation = (x_test[:VALIDATION_SAMPLES], dataset.y_test[:VALIDATION_SAMPLES])
    history, drift = _fine_tune(qat_model, base, x_train, y_train, epochs, batch_size, learning_rate, progress,
                                on_epoch, validation=validation)

    progress(0.8, "evaluating and converting the QAT model")
    outputs, reference = float_reference(model, dataset)
    keras_acc = metrics.accuracy(np.asarray(qat_model.predict(x_test, verbose=0)), dataset.y_test)
    tflite = _convert(qat_model, int_io, dataset.calibration(calibration_samples))
    ev = evaluate_tflite(tflite, dataset, outputs)

    warnings = pitfall_warnings(keras_acc, ev.accuracy, drift)

    settings: dict[str, Any] = {
        "layers": list(spec), "quantized_layers": quantized, "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "train_samples": len(x_train), "int_io": int_io,
        "calibration_samples": calibration_samples if int_io else 0, "keras_accuracy": keras_acc,
        "range_drift": drift, "warnings": warnings,
    }
    name = "qat" + ("" if spec == ("all",) else "-" + "+".join(spec)) + ("-int-io" if int_io else "")
    # tfmot's model goes through the TF converter: the variant is that engine's
    variant = built(name, VariantKind.QAT, "int8" if int_io else None, tf_engine.NAME, tflite, settings=settings,
                    evaluation=ev, history=tuple(history))
    progress(1.0, f"QAT done: TFLite accuracy {ev.accuracy:.2%}")
    return QatResult(
        model=model.name,
        layers=spec,
        quantized_layers=tuple(quantized),
        settings=settings,
        history=tuple(history),
        float_accuracy=reference.accuracy,
        keras_accuracy=keras_acc,
        tflite_accuracy=ev.accuracy,
        range_drift=drift,
        variant=variant,
        warnings=tuple(warnings),
        reference=reference,
    )


def _fine_tune(
    qat_model: Any,
    base: Any,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    progress: Progress,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[list[dict[str, float]], float]:
    """Trains the QAT model; returns the per-epoch history (with val_loss and val_accuracy when
    `validation` has samples) and the last epoch's range drift."""
    import tf_keras

    from_logits = not _outputs_are_probabilities(base, x)
    qat_model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    ranges = moving_average_ranges(qat_model)
    history: list[dict[str, float]] = []
    drift = [0.0]

    class _Watch(tf_keras.callbacks.Callback):
        before: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.before = _snapshot(ranges)

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            drift[0] = range_drift(self.before, _snapshot(ranges))
            history.append({"loss": float(logs.get("loss", float("nan"))),
                            "accuracy": float(logs.get("accuracy", float("nan"))),
                            **{k: float(logs[k]) for k in ("val_loss", "val_accuracy") if k in logs},
                            "range_drift": drift[0]})
            if on_epoch is not None:
                on_epoch(epoch + 1, epochs, dict(history[-1]))
            progress(0.05 + 0.75 * (epoch + 1) / epochs,
                     f"QAT epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f}, "
                     f"accuracy {history[-1]['accuracy']:.3f}")

    try:
        val = validation if validation is not None and len(validation[0]) else None
        qat_model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[_Watch()],
                      validation_data=val)
    except (ValueError, TypeError) as exc:
        raise QlabError(f"QAT fine-tuning failed: {first_line(exc)}") from None
    return history, drift[0]


def _convert(qat_model: Any, int_io: bool, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    # "dynamic" is Optimize.DEFAULT alone: with fake-quant ranges in the graph that gives full int8 inside
    tf_engine.apply_recipe(converter, get_recipe("int8" if int_io else "dynamic"), calibration)
    try:
        return bytes(converter.convert())
    except Exception as exc:
        raise QlabError(f"converting the QAT model failed: {first_line(exc)}") from None
