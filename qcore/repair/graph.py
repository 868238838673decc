"""Reads a tf_keras functional graph from its config, edits layers and weights, rebuilds it, and runs it layer by layer."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcore.qtyping import QlabError

log = logging.getLogger(__name__)

# what `Graph.consumers_of` says for a tensor the model returns
MODEL_OUTPUT = "(model output)"
# config "module" values of the layers tf_keras ships; anything else is a custom layer
_BUILTIN_MODULES = ("keras.layers", "tf_keras.layers", "keras.src.layers", "tf_keras.src.layers")
_NESTED_MODELS = frozenset({"Functional", "Sequential", "Model"})


@dataclass(frozen=True)
class Ref:
    """One tensor of the graph: the `tensor`-th output of `layer`'s `node`-th call."""

    layer: str
    node: int = 0
    tensor: int = 0


@dataclass(frozen=True, eq=False)
class LayerInfo:
    """One layer of the graph as its config describes it."""

    name: str
    class_name: str
    module: str
    config: Mapping[str, Any]
    calls: tuple[tuple[Ref, ...], ...]  # the tensors each call of the layer reads

    @property
    def builtin(self) -> bool:
        """A layer class tf_keras ships (custom classes have no module, or their own, in the config)."""
        return self.module.startswith(_BUILTIN_MODULES) and self.class_name not in _NESTED_MODELS

    @property
    def nested_model(self) -> bool:
        return self.class_name in _NESTED_MODELS

    @property
    def shared(self) -> bool:
        """Called more than once: its weights serve several places of the graph."""
        return len(self.calls) > 1

    @property
    def single_input(self) -> Ref | None:
        """The one tensor this layer reads, when it is called once on one tensor."""
        if len(self.calls) == 1 and len(self.calls[0]) == 1:
            return self.calls[0][0]
        return None


@dataclass(frozen=True, eq=False)
class Graph:
    """A functional model's layers in topological order, who reads each tensor, and the outputs."""

    layers: Mapping[str, LayerInfo]
    consumers: Mapping[Ref, tuple[str, ...]]
    outputs: tuple[Ref, ...]

    def consumers_of(self, name: str) -> tuple[str, ...]:
        """Who reads the first output of `name`'s first call (MODEL_OUTPUT for the model's outputs)."""
        return self.consumers.get(Ref(name), ())

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self.layers.values())


def _is_ref(value: Any) -> bool:
    return (isinstance(value, list) and len(value) in (3, 4) and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int))


def _refs_in(value: Any, names: Collection[str]) -> list[Ref]:
    """Tensor references anywhere in a call's arguments (TFOpLambda keeps extra tensors in its kwargs)."""
    if _is_ref(value) and value[0] in names:
        return [Ref(value[0], value[1], value[2]), *(_refs_in(value[3], names) if len(value) > 3 else [])]
    if isinstance(value, list):
        return [r for v in value for r in _refs_in(v, names)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs_in(v, names)]
    return []


def _parse_calls(entry: Mapping[str, Any], names: Collection[str]) -> tuple[tuple[Ref, ...], ...]:
    calls: list[tuple[Ref, ...]] = []
    for call in entry.get("inbound_nodes") or []:
        # a call is a list of [layer, node, tensor, kwargs]; TFOpLambda writes its one call as that list itself
        if not isinstance(call, list) or not (_is_ref(call) or all(_is_ref(r) for r in call)):
            raise QlabError(
                f"layer {entry.get('name')!r}: its config records its inputs in a form the repair cannot read "
                "(expected tf_keras's [layer, node, tensor, kwargs] lists)"
            )
        calls.append(tuple(_refs_in(call, names)))
    return tuple(calls)


def read_graph(config: Mapping[str, Any]) -> Graph:
    """The graph of a functional model config (what `Model.get_config()` returns).

    Raises:
        QlabError: for a config that is not a functional graph tf_keras wrote.
    """
    entries = config.get("layers")
    if not isinstance(entries, list) or "output_layers" not in config:
        raise QlabError("the model config is not a functional graph (no layers / output_layers)")
    names = {entry["name"] for entry in entries}
    raw: dict[str, LayerInfo] = {}
    for entry in entries:
        raw[entry["name"]] = LayerInfo(
            name=entry["name"],
            class_name=str(entry.get("class_name", "")),
            module=str(entry.get("module") or ""),
            config=entry.get("config") or {},
            calls=_parse_calls(entry, names),
        )
    outputs = tuple(Ref(o[0], o[1], o[2]) for o in config["output_layers"])
    consumers: dict[Ref, list[str]] = {}
    for info in raw.values():
        for call in info.calls:
            for ref in call:
                consumers.setdefault(ref, []).append(info.name)
    for ref in outputs:
        consumers.setdefault(ref, []).append(MODEL_OUTPUT)
    return Graph(_topological(raw), {k: tuple(v) for k, v in consumers.items()}, outputs)


def _topological(raw: dict[str, LayerInfo]) -> dict[str, LayerInfo]:
    """Kahn's order over layers, ties kept in config order.

    A shared layer can read, in a later call, what it produced in an earlier one, which is a cycle
    between layers (not between calls); the layers left then keep tf_keras's own order, which is by
    depth. The repairs skip shared layers, so their place in this order does not matter.
    """
    pending = {name: {r.layer for call in info.calls for r in call} for name, info in raw.items()}
    ordered: dict[str, LayerInfo] = {}
    while pending:
        ready = [n for n, deps in pending.items() if deps <= ordered.keys()] or list(pending)
        for name in ready:
            ordered[name] = raw[name]
            del pending[name]
    return ordered


# ---------------------------------------------------------------- the editable model


def functional(keras_model: Any) -> Any:
    """The model as a tf_keras functional graph (a built Sequential becomes one over the same layers).

    Raises:
        QlabError: for a subclassed model, or a Sequential that was never built on an input shape.
    """
    if getattr(keras_model, "_is_graph_network", False) and type(keras_model).__name__ != "Sequential":
        return keras_model
    if type(keras_model).__name__ == "Sequential":
        try:
            inputs, outputs = keras_model.inputs, keras_model.outputs
        except AttributeError:
            inputs = outputs = None
        if not inputs or not outputs:
            raise QlabError(f"model {keras_model.name!r}: a Sequential without an input shape has no graph to repair")
        import tf_keras

        return tf_keras.Model(inputs, outputs, name=keras_model.name)
    raise QlabError(
        f"model {getattr(keras_model, 'name', '?')!r} is a subclassed {type(keras_model).__name__}: the repairs "
        "need a Sequential or Functional graph, whose layers and connections they can read"
    )


def _custom_objects(keras_model: Any) -> dict[str, Any]:
    """Every layer class of the model by name, so from_config finds custom classes the loader had."""
    out: dict[str, Any] = {}
    stack = list(keras_model.layers)
    while stack:
        layer = stack.pop()
        out.setdefault(type(layer).__name__, type(layer))
        if type(layer).__name__ in _NESTED_MODELS:
            stack.extend(layer.layers)
    return out


class Draft:
    """A functional model being repaired: its config and its weights by layer name, built on demand.

    Edits change the config and the weight lists; `build` makes a fresh tf_keras model from them, so
    the model the draft started from is never touched.
    """

    def __init__(self, config: dict[str, Any], weights: dict[str, list[np.ndarray]],
                 custom_objects: dict[str, Any]) -> None:
        self.config = config
        self.weights = weights
        self.custom_objects = custom_objects
        self._graph: Graph | None = None
        self._model: Any = None
        # layers whose weights changed since the cached model was built (its structure still fits)
        self._stale: set[str] = set()

    @classmethod
    def from_model(cls, keras_model: Any) -> Draft:
        """A draft of a tf_keras Sequential or Functional model (deep copies of config and weights).

        Raises:
            QlabError: for a subclassed model or an unbuilt Sequential.
        """
        net = functional(keras_model)
        config = copy.deepcopy(net.get_config())
        weights = {layer.name: [np.array(w, copy=True) for w in layer.get_weights()] for layer in net.layers}
        return cls(config, weights, _custom_objects(net))

    def copy(self) -> Draft:
        out = Draft(copy.deepcopy(self.config), {k: [w.copy() for w in v] for k, v in self.weights.items()},
                    self.custom_objects)
        out._graph = self._graph
        return out

    # ------------------------------------------------------------ reading
    @property
    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = read_graph(self.config)
        return self._graph

    def params(self, name: str) -> dict[str, Any]:
        """The layer's own config dict (edits change the draft)."""
        for entry in self.config["layers"]:
            if entry["name"] == name:
                conf: dict[str, Any] = entry["config"]
                return conf
        raise KeyError(name)

    def kernel(self, name: str) -> np.ndarray:
        return self.weights[name][0]

    def bias(self, name: str) -> np.ndarray:
        """The layer's bias, zeros when it has none (`set_bias` then switches use_bias on)."""
        ws = self.weights[name]
        if self.params(name).get("use_bias", True) and len(ws) > 1:
            return ws[1]
        kernel = ws[0]
        channels = kernel.shape[-1] if self.graph.layers[name].class_name != "DepthwiseConv2D" \
            else kernel.shape[-2] * kernel.shape[-1]
        return np.zeros(channels, dtype=kernel.dtype)

    # ------------------------------------------------------------ editing
    def _edited(self) -> None:
        """The structure changed: the graph is re-read and the next build starts from the config."""
        self._graph = None
        self._model = None
        self._stale.clear()

    def set_kernel(self, name: str, kernel: np.ndarray) -> None:
        old = self.weights[name][0]
        if kernel.shape != old.shape:
            raise ValueError(f"{name}: kernel shape {kernel.shape} != {old.shape}")
        self.weights[name][0] = kernel.astype(old.dtype)
        self._stale.add(name)

    def set_bias(self, name: str, bias: np.ndarray) -> None:
        conf = self.params(name)
        ws = self.weights[name]
        if conf.get("use_bias", True) and len(ws) > 1:
            ws[1] = bias.astype(ws[1].dtype)
            self._stale.add(name)
            return
        conf["use_bias"] = True
        self.weights[name] = [ws[0], bias.astype(ws[0].dtype), *ws[1:]]
        self._edited()

    def set_params(self, name: str, **changes: Any) -> None:
        self.params(name).update(changes)
        self._edited()

    def remove(self, name: str) -> None:
        """Drops a single-input layer; whatever read its output reads its input instead."""
        info = self.graph.layers[name]
        src = info.single_input
        if src is None:
            raise ValueError(f"{name}: only a layer called once on one tensor can be removed")
        replacement = [src.layer, src.node, src.tensor]

        def rewire(value: Any) -> Any:
            if _is_ref(value) and value[0] == name:
                return [*replacement, *value[3:]]
            if isinstance(value, list):
                return [rewire(v) for v in value]
            if isinstance(value, dict):
                return {k: rewire(v) for k, v in value.items()}
            return value

        self.config["layers"] = [e for e in self.config["layers"] if e["name"] != name]
        for entry in self.config["layers"]:
            entry["inbound_nodes"] = rewire(entry.get("inbound_nodes") or [])
        self.config["output_layers"] = rewire(self.config["output_layers"])
        self.weights.pop(name, None)
        self._edited()

    # ------------------------------------------------------------ building
    def build(self) -> Any:
        """A tf_keras functional model of the draft, fresh from its config after a structural edit.

        Weight-only edits update the cached model's layers in place, so a model `build` returned
        earlier follows later weight edits: take `copy()` first to keep one.

        Raises:
            QlabError: when tf_keras cannot rebuild a layer from its config.
        """
        if self._model is not None:
            # only weights changed since it was built (from_config takes seconds on a MobileNet)
            for name in self._stale:
                self._model.get_layer(name).set_weights(self.weights[name])
            self._stale.clear()
            return self._model
        import tf_keras
        from tf_keras.src.saving.serialization_lib import SafeModeScope

        try:
            # a Lambda's code is rebuilt from the config of a model this process already loaded and runs:
            # qlab refuses untrusted files with Lambda layers at load time (qcore.model_safety), so safe
            # mode here would only refuse what is already running
            with SafeModeScope(safe_mode=False):
                model = tf_keras.Model.from_config(copy.deepcopy(self.config), custom_objects=self.custom_objects)
        except Exception as exc:  # from_config raises many types for a layer it cannot rebuild
            raise QlabError(f"cannot rebuild the model from its config: {str(exc).splitlines()[0][:300]}") from None
        for layer in model.layers:
            if layer.name in self.weights and self.weights[layer.name]:
                layer.set_weights(self.weights[layer.name])
        self._model = model
        self._stale.clear()
        return model


# ---------------------------------------------------------------- running layer by layer

# replaces one layer's call: (layer, its input tensor in each stream) -> its output in each stream
Intercept = Callable[[Any, list[Any]], list[Any]]


def run_streams(keras_model: Any, inputs: Sequence[np.ndarray], intercepts: Mapping[str, Intercept] | None = None,
                after: Callable[[str, list[Any]], list[Any]] | None = None) -> list[np.ndarray]:
    """Runs a functional model node by node on several input streams at once.

    The repairs that need data run two streams through the same graph: the float model's, and
    the one whose weights already sit on the quantization grid. At an intercepted layer the
    callback sees the layer's input in every stream and returns its output in every stream, so
    it can measure, decide new weights, and pass on the outputs those weights give. This is
    tf_keras's own `Functional._run_internal_graph` loop (tensors freed after their last reader).

    Args:
        keras_model: a built tf_keras functional model with one input.
        inputs: one array per stream, each a batch for the model's input.
        intercepts: layer name -> callback; only single-input layers can be intercepted.
        after: called with each layer's name and its outputs in every stream; returns the outputs
            to pass on (the quantized stream's activations get rounded here).

    Returns:
        The model's first output in each stream.
    """
    import tensorflow as tf

    intercepts = intercepts or {}
    n = len(inputs)
    if len(keras_model.inputs) != 1:
        raise QlabError(f"model {keras_model.name!r} has {len(keras_model.inputs)} inputs; the repairs take one")
    usage = keras_model._tensor_usage_count  # noqa: SLF001  (tf_keras's own bookkeeping)
    dicts: list[dict[str, list[Any]]] = []
    ref_input = keras_model.inputs[0]
    for x in inputs:
        t = keras_model._conform_to_reference_input(tf.constant(x), ref_input=ref_input)  # noqa: SLF001
        dicts.append({str(id(ref_input)): [t] * usage[str(id(ref_input))]})
    by_depth = keras_model._nodes_by_depth  # noqa: SLF001
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.is_input or any(t not in dicts[0] for t in node.flat_input_ids):
                continue
            mapped = [node.map_arguments(d) for d in dicts]
            name = node.layer.name
            if name in intercepts:
                outs = intercepts[name](node.layer, [args[0] for args, _ in mapped])
            else:
                outs = [node.layer(*args, **kwargs) for args, kwargs in mapped]
            if after is not None:
                outs = after(name, list(outs))
            for d, out in zip(dicts, outs, strict=True):
                for x_id, y in zip(node.flat_output_ids, tf.nest.flatten(out), strict=True):
                    d[x_id] = [y] * usage[x_id]
    out_id = str(id(keras_model.outputs[0]))
    return [np.asarray(dicts[i][out_id].pop()) for i in range(n)]


def predict(keras_model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's first output on `x`, in eager batches (no tf.function traced onto the model)."""
    outs = []
    for i in range(0, len(x), batch_size):
        y = keras_model(x[i : i + batch_size], training=False)
        outs.append(np.asarray(y[0] if isinstance(y, list | tuple) else y, dtype=np.float32))
    return np.concatenate(outs)
