"""What an uploaded Keras model holds, read from its config and weight shapes without loading it."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcore.qtyping import LoadedModel, QlabError

# layers that run Python code of their own when the model is built
_CODE_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})
# a config larger than this is not a model config a summary should parse
MAX_CONFIG_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ModelSummary:
    """Layers by class, parameters, BatchNormalization and custom layers of a Keras model file."""

    layers: int
    classes: tuple[tuple[str, int], ...]  # (class name, count), most frequent first
    params: int | None  # None when the file holds no weights to count
    batchnorm: int
    custom: tuple[str, ...]  # classes from outside Keras, or layers that run their own code


def summarize(path: str | Path) -> ModelSummary:
    """Reads the model's config (JSON) and weight shapes (HDF5 metadata); runs none of its code.

    Args:
        path: a .h5, a .keras zip, or a SavedModel folder (layers only when it keeps Keras metadata).

    Raises:
        QlabError: naming the file when it holds no readable Keras config.
    """
    p = Path(path)
    try:
        if p.is_dir():
            meta = p / "keras_metadata.pb"
            raise QlabError(f"{p.name}: a SavedModel{' with Keras metadata' if meta.exists() else ''}; "
                            "its layers are summarized after the first conversion")
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                config = _json(zf.read("config.json"))
                weights = zf.read("model.weights.h5") if "model.weights.h5" in zf.namelist() else None
            params = _h5_params(io.BytesIO(weights)) if weights is not None else None
        else:
            import h5py

            with h5py.File(p, "r") as f:
                raw = f.attrs.get("model_config")
                if raw is None:
                    raise QlabError(f"{p.name}: the .h5 holds no model_config (weights only?)")
                config = _json(raw if isinstance(raw, bytes | str) else bytes(raw))
                params = _count(f["model_weights"]) if "model_weights" in f else None
    except QlabError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise QlabError(f"{p.name}: cannot read its Keras config ({exc})") from None
    layers = [d for d in _layers(config)]
    classes = Counter(str(d.get("class_name")) for d in layers)
    custom = sorted({str(d.get("class_name")) for d in layers if _is_custom(d)})
    return ModelSummary(layers=len(layers), classes=tuple(classes.most_common()), params=params,
                        batchnorm=classes.get("BatchNormalization", 0), custom=tuple(custom))


def _json(raw: bytes | str) -> Any:
    if len(raw) > MAX_CONFIG_BYTES:
        raise QlabError(f"the model config is {len(raw)} bytes, over {MAX_CONFIG_BYTES}")
    return json.loads(raw)


def _layers(config: Any) -> Iterator[dict[str, Any]]:
    """Every layer config, nested models included (their own entry is not counted as a layer)."""
    inner = config.get("config", {}) if isinstance(config, dict) else {}
    for layer in (inner.get("layers") or []) if isinstance(inner, dict) else []:
        if not isinstance(layer, dict):
            continue
        nested = layer.get("config", {})
        if isinstance(nested, dict) and isinstance(nested.get("layers"), list):
            yield from _layers(layer)
        elif layer.get("class_name") != "InputLayer":
            yield layer


def _is_custom(layer: dict[str, Any]) -> bool:
    name = str(layer.get("class_name"))
    module = layer.get("module")
    registered = str(layer.get("registered_name") or "")
    return (name in _CODE_LAYERS or ">" in registered
            or (isinstance(module, str) and not module.startswith(("keras", "tf_keras"))))


def _h5_params(data: io.BytesIO) -> int:
    import h5py

    with h5py.File(data, "r") as f:
        return _count(f)


def _count(group: Any) -> int:
    import h5py

    total = [0]

    def visit(_: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            size = 1
            for d in obj.shape:
                size *= int(d)
            total[0] += size

    group.visititems(visit)
    return total[0]


def loaded_summary(model: LoadedModel) -> dict[str, Any]:
    """What pages show of a model a job loaded: its layers, parameters and shapes (stored with the model)."""
    layers = [la for la in model.keras_model.layers if type(la).__name__ != "InputLayer"]
    builtin = ("keras.", "tf_keras.", "keras_core.")
    custom = sorted({type(la).__name__ for la in layers if not type(la).__module__.startswith(builtin)})
    classes = [type(la).__name__ for la in layers]
    dtype = str(getattr(model.keras_model.inputs[0], "dtype", "float32"))
    return {
        "layers": [[la.name, type(la).__name__] for la in layers],
        "params": int(model.keras_model.count_params()),
        "input_shape": list(model.input_shape),
        "output_shape": list(model.output_shape),
        "input_dtype": dtype.replace("<dtype: '", "").rstrip("'>"),
        "batch_norm": any("BatchNormalization" in c for c in classes),
        "custom_layers": custom,
        "keras_major": model.keras_major,
        "format": model.format,
    }
