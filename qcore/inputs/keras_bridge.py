"""Rebuilds a Keras 3 Sequential or Functional model of standard layers in tf_keras (tfmot needs Keras 2)."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from qcore.qtyping import LoadedModel, QlabError, first_line

log = logging.getLogger(__name__)

# TensorFlow's name-scope rule: a tf_keras layer whose name breaks it cannot even be called
SCOPE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")

# keyword arguments every tf_keras layer takes besides its own (tf_keras Layer.__init__)
_BASE_LAYER_KWARGS = frozenset(
    {"trainable", "name", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape", "batch_size",
     "weights", "activity_regularizer", "autocast", "implementation"}
)

# Keras 3 config keys tf_keras does not know and whose null value means "feature off"
_KERAS3_ONLY_NEUTRAL: dict[str, Any] = {
    "quantization_config": None,
    "synchronized": False,
    "lora_rank": None,
    "lora_alpha": None,
    "optional": False,
}

# relative tolerance of the output check: float32 kernels of two frameworks, same weights
OUTPUT_RTOL = 1e-4


def check_scope_names(keras_model: Any) -> None:
    """Raises when a layer name is one TensorFlow cannot take as a scope name (such a model cannot run in TF).

    Raises:
        QlabError: naming the first offending layers and the allowed characters.
    """
    bad = [layer.name for layer in getattr(keras_model, "layers", []) if not SCOPE_NAME.match(layer.name)]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:5])
        raise QlabError(
            f"layer name {shown} cannot be a TensorFlow scope name, so TensorFlow cannot trace or convert this "
            "model; rename the layer (letters, digits and _ . - / only, not starting with _ or -)"
        )


def is_keras3(keras_model: Any) -> bool:
    """True when the object is a Keras 3 model (the `keras` package), not tf_keras."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(keras_model).__mro__)


def to_tf_keras(
    model: LoadedModel | Any,
    *,
    check_inputs: np.ndarray | None = None,
    rtol: float = OUTPUT_RTOL,
) -> Any:
    """Rebuilds a Keras 3 model in tf_keras: translated layer configs, copied weights, checked outputs.

    A tf_keras model passes through unchanged.

    Args:
        model: a LoadedModel or a Keras model object.
        check_inputs: inputs to compare both models on; defaults to 8 seeded random samples.
        rtol: tolerance of the output check, relative to the largest output magnitude.

    Returns:
        A tf_keras model with the same weights.

    Raises:
        QlabError: naming the layer that blocks the rebuild (custom or Keras-3-only layer, nested
            model, a setting tf_keras lacks, a name TensorFlow cannot scope), or when the rebuilt
            model's outputs differ.
    """
    keras_model = model.keras_model if isinstance(model, LoadedModel) else model
    if not is_keras3(keras_model):
        return keras_model
    import tf_keras

    cls_name = type(keras_model).__name__
    check_scope_names(keras_model)
    config = keras_model.get_config()
    if cls_name == "Sequential":
        rebuilt = _rebuild_sequential(tf_keras, config)
    elif isinstance(config, dict) and "input_layers" in config and "output_layers" in config:
        rebuilt = _rebuild_functional(tf_keras, config)
    else:
        raise QlabError(
            f"cannot rebuild the Keras 3 model {keras_model.name!r} in tf_keras: it is a subclassed "
            f"{cls_name}; only Sequential and Functional models of standard layers can be rebuilt"
        )
    _copy_weights(keras_model, rebuilt)
    _check_outputs(keras_model, rebuilt, check_inputs, rtol)
    log.info("rebuilt Keras 3 model %s in tf_keras (%d layers)", keras_model.name, len(rebuilt.layers))
    return rebuilt


# ---------------------------------------------------------------- config translation
def _translate_value(value: Any) -> Any:
    """Keras 3 serialized sub-objects → what tf_keras's from_config accepts."""
    if isinstance(value, dict):
        cls = value.get("class_name")
        module = str(value.get("module") or "")
        if cls in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
            return value.get("config", {}).get("name", "float32")
        if module.startswith("keras.initializers"):
            # the weights are copied afterwards, so the initializer only needs a valid name
            return cls
        if "class_name" in value and "config" in value:
            return {"class_name": cls, "config": {k: _translate_value(v) for k, v in value["config"].items()}}
        return {k: _translate_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_translate_value(v) for v in value]
    return value


def _accepted_kwargs(cls: type) -> set[str]:
    names: set[str] = set(_BASE_LAYER_KWARGS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        names.update(p for p in params if p not in ("self", "kwargs", "args"))
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def _layer_from_config(tf_keras: Any, spec: dict[str, Any]) -> Any:
    cls_name = str(spec.get("class_name"))
    name = str(spec.get("config", {}).get("name", spec.get("name", "?")))
    module = str(spec.get("module") or "keras.layers")
    if cls_name in ("Functional", "Sequential", "Model"):
        raise QlabError(
            f"cannot rebuild layer {name!r}: it is a nested {cls_name} model; tfmot cannot quantize a model "
            "inside a model, so flatten it into one Functional model first"
        )
    cls = getattr(tf_keras.layers, cls_name, None)
    if spec.get("registered_name") not in (None, cls_name) or not module.startswith("keras.layers") or cls is None:
        raise QlabError(
            f"cannot rebuild layer {name!r} ({spec.get('registered_name') or cls_name}) in tf_keras: it is not a "
            "standard layer tf_keras has; rebuild the model with tf_keras yourself or save it as .h5 from tf_keras"
        )
    config = {k: _translate_value(v) for k, v in spec.get("config", {}).items()}
    config["name"] = name
    accepted = _accepted_kwargs(cls)
    for key in sorted(set(config) - accepted):
        if key in _KERAS3_ONLY_NEUTRAL and config[key] == _KERAS3_ONLY_NEUTRAL[key] or config[key] in (None, {}):
            del config[key]
        else:
            raise QlabError(
                f"cannot rebuild layer {name!r} ({cls_name}) in tf_keras: its setting {key}={config[key]!r} "
                "exists only in Keras 3"
            )
    try:
        return cls.from_config(config)
    except Exception as exc:  # tf_keras raises many types for configs it cannot read
        raise QlabError(f"cannot rebuild layer {name!r} ({cls_name}) in tf_keras: {first_line(exc)}") from None


def _input_from_config(tf_keras: Any, spec: dict[str, Any]) -> Any:
    cfg = spec.get("config", {})
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if shape is None:
        raise QlabError(f"cannot rebuild input {cfg.get('name')!r}: it has no shape")
    if cfg.get("sparse") or cfg.get("ragged"):
        raise QlabError(f"cannot rebuild input {cfg.get('name')!r}: sparse and ragged inputs are not supported")
    return tf_keras.Input(batch_shape=tuple(shape), dtype=cfg.get("dtype") or "float32",
                          name=str(cfg.get("name", "input")))


def _rebuild_sequential(tf_keras: Any, config: dict[str, Any]) -> Any:
    specs = list(config.get("layers", []))
    layers: list[Any] = []
    if specs and specs[0].get("class_name") == "InputLayer":
        layers.append(_input_from_config(tf_keras, specs.pop(0)))
    elif config.get("build_input_shape"):
        layers.append(tf_keras.Input(batch_shape=tuple(config["build_input_shape"])))
    else:
        raise QlabError("cannot rebuild an unbuilt Keras 3 Sequential model: it has no input shape")
    layers.extend(_layer_from_config(tf_keras, s) for s in specs)
    try:
        return tf_keras.Sequential(layers, name=str(config.get("name", "sequential")))
    except QlabError:
        raise
    except Exception as exc:
        raise QlabError(f"cannot rebuild the Sequential model in tf_keras: {first_line(exc)}") from None


def _history_key(tensor_spec: dict[str, Any]) -> tuple[str, int, int]:
    name, node, index = tensor_spec["config"]["keras_history"]
    return str(name), int(node), int(index)


def _map_tensors(value: Any, fn: Callable[[dict[str, Any]], Any]) -> Any:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return fn(value)
    if isinstance(value, list | tuple):
        return [_map_tensors(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _needed(value: Any) -> list[tuple[str, int, int]]:
    """The (layer, node, index) of every Keras 3 tensor reference in a node's args."""
    found: list[tuple[str, int, int]] = []
    _map_tensors(value, lambda t: found.append(_history_key(t)))
    return found


def _io_refs(refs: Any) -> list[tuple[str, int, int]]:
    if refs and isinstance(refs[0], str):  # a single [name, node, index]
        refs = [refs]
    return [(str(r[0]), int(r[1]), int(r[2])) for r in refs]


def _rebuild_functional(tf_keras: Any, config: dict[str, Any]) -> Any:
    tensors: dict[tuple[str, int, int], Any] = {}
    pending: list[tuple[Any, str, int, dict[str, Any]]] = []
    for spec in config.get("layers", []):
        name = str(spec.get("name") or spec.get("config", {}).get("name"))
        if spec.get("class_name") == "InputLayer":
            tensors[(name, 0, 0)] = _input_from_config(tf_keras, spec)
            continue
        layer = _layer_from_config(tf_keras, spec)
        for node_index, node in enumerate(spec.get("inbound_nodes", [])):
            if not isinstance(node, dict):
                raise QlabError(f"cannot rebuild layer {name!r}: unknown inbound node format (not Keras 3)")
            pending.append((layer, name, node_index, node))
    while pending:
        progressed = False
        for item in list(pending):
            layer, name, node_index, node = item
            if any(k not in tensors for k in _needed([node.get("args", []), node.get("kwargs", {})])):
                continue
            args = _map_tensors(node.get("args", []), lambda t: tensors[_history_key(t)])
            kwargs = _map_tensors(node.get("kwargs", {}), lambda t: tensors[_history_key(t)])
            try:
                out = layer(*args, **kwargs)
            except Exception as exc:
                raise QlabError(f"cannot rebuild layer {name!r} in tf_keras: {first_line(exc)}") from None
            outs = out if isinstance(out, list | tuple) else [out]
            for i, t in enumerate(outs):
                tensors[(name, node_index, i)] = t
            pending.remove(item)
            progressed = True
        if not progressed:
            raise QlabError(f"cannot rebuild layer {pending[0][1]!r}: its inputs never appear in the model graph")
    try:
        inputs = [tensors[k] for k in _io_refs(config["input_layers"])]
        outputs = [tensors[k] for k in _io_refs(config["output_layers"])]
        return tf_keras.Model(
            inputs=inputs[0] if len(inputs) == 1 else inputs,
            outputs=outputs[0] if len(outputs) == 1 else outputs,
            name=str(config.get("name", "model")),
        )
    except KeyError as exc:
        raise QlabError(f"cannot rebuild the model: its input/output {exc} is not in the graph") from None


# ---------------------------------------------------------------- weights and the check
def _copy_weights(source: Any, target: Any) -> None:
    by_name = {layer.name: layer for layer in target.layers}
    for layer in source.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        dst = by_name.get(layer.name)
        if dst is None:
            raise QlabError(f"cannot copy the weights of layer {layer.name!r}: it is missing from the rebuilt model")
        try:
            dst.set_weights(weights)
        except ValueError as exc:
            raise QlabError(
                f"cannot copy the weights of layer {layer.name!r} ({type(layer).__name__}) into tf_keras: "
                f"{first_line(exc)}"
            ) from None


def _check_outputs(source: Any, target: Any, x: np.ndarray | None, rtol: float) -> None:
    if x is None:
        shape = tuple(d or 1 for d in source.inputs[0].shape[1:])
        x = np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32)
    want = np.asarray(source.predict(x, verbose=0), dtype=np.float32)
    got = np.asarray(target.predict(x, verbose=0), dtype=np.float32)
    if want.shape != got.shape:
        raise QlabError(f"the rebuilt tf_keras model gives outputs of shape {got.shape}, the Keras 3 model {want.shape}")
    diff = float(np.max(np.abs(want - got))) if want.size else 0.0
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    if not diff <= rtol * scale:
        raise QlabError(
            f"the rebuilt tf_keras model differs from the Keras 3 model by up to {diff:.3g} "
            f"(tolerance {rtol * scale:.3g}); a layer setting did not translate"
        )
