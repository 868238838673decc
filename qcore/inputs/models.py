"""Loading Keras models (.keras, .h5, SavedModel) and the built-in demo CNN (TensorFlow's MNIST tutorial CNN, sized for digits)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import numpy as np

from qcore import defaults
from qcore.qtyping import (
    Dataset,
    LoadedModel,
    ModelRecord,
    Progress,
    QlabError,
    Reference,
    first_line,
    no_progress,
)
from qcore.tflite import metrics

log = logging.getLogger(__name__)

DEMO_NAME = "demo-digits-cnn"
# ~3 s of training on 1,437 digits; the held-out last 20% of the file then scores ~92%
DEMO_EPOCHS = 40
DEMO_SEED = 0
_demo_lock = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a directory's relative paths and contents (a SavedModel)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(f.read_bytes())
    else:
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_sha256(model: LoadedModel) -> str:
    """The source file's digest, or for an in-memory model, a digest of its layers and weights."""
    if model.path and Path(model.path).exists():
        return file_sha256(model.path)
    h = hashlib.sha256(model.name.encode())
    for layer in model.keras_model.layers:  # get_config() fails on some Lambda layers; names are enough
        h.update(f"{type(layer).__name__}:{layer.name}".encode())
    for w in model.keras_model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _shape(shape: Any) -> tuple[int | None, ...]:
    if isinstance(shape, list):  # multi-input models report a list of shapes
        if len(shape) != 1:
            raise QlabError(f"qlab handles single-input models; this one has {len(shape)} inputs")
        shape = shape[0]
    return tuple(None if d is None else int(d) for d in shape)


def _wrap(keras_model: Any, path: Path, fmt: str, major: int, name: str | None = None) -> LoadedModel:
    return LoadedModel(
        name=name or path.stem or path.name,
        path=str(path),
        format=fmt,
        keras_model=keras_model,
        input_shape=_shape(keras_model.input_shape),
        output_shape=_shape(keras_model.output_shape),
        keras_major=major,
    )


def load_model(path: str | os.PathLike[str], *, trusted: bool = False) -> LoadedModel:
    """Loads a Keras model.

    An untrusted model is first inspected without loading (see `qcore.inputs.safety`): Lambda
    layers, custom objects, foreign modules and file/process graph ops are refused, and `.keras`
    files load with Keras 3's safe_mode.

    Args:
        path: a `.keras` file (Keras 3, or tf_keras's own .keras), an `.h5` file (Keras 2 /
            tf_keras), or a SavedModel directory.
        trusted: skip those checks (an admin vouched for this upload); Lambda layers then run.

    Returns:
        The model with its shapes and Keras major version.

    Raises:
        QlabError: naming the path and the reason when it cannot be read or is refused.
    """
    from qcore.inputs.safety import check_model_file

    p = Path(path)
    if not p.exists():
        raise QlabError(f"{p}: no such file or directory")
    suffix = "" if p.is_dir() else p.suffix.lower()
    if p.is_dir() and not (p / "saved_model.pb").exists():
        raise QlabError(f"{p}: a directory but not a SavedModel (no saved_model.pb inside)")
    if not p.is_dir() and suffix not in (".h5", ".hdf5", ".keras"):
        raise QlabError(f"{p}: unsupported model file {suffix!r}; give a .keras, .h5 or SavedModel directory")
    if not trusted:
        check_model_file(p)
    try:
        if p.is_dir():
            import tf_keras

            return _wrap(tf_keras.models.load_model(str(p), compile=False), p, "savedmodel", 2)
        if suffix in (".h5", ".hdf5"):
            import tf_keras

            return _wrap(tf_keras.models.load_model(str(p), compile=False), p, "h5", 2)
        return _load_dot_keras(p, trusted)
    except QlabError:
        raise
    except Exception as exc:  # Keras raises many types for unreadable files
        raise QlabError(f"{p}: cannot read this model: {first_line(exc)}") from None


def _load_dot_keras(p: Path, trusted: bool) -> LoadedModel:
    import keras  # Keras 3, installed beside tf_keras

    try:
        return _wrap(keras.saving.load_model(str(p), compile=False, safe_mode=not trusted), p, "keras", 3)
    except Exception as keras3_error:
        # tf_keras also writes .keras zips; try it only when the config names nothing but Keras's own
        # modules and built-in classes (checked above), so it cannot import anything the file names
        try:
            import tf_keras

            return _wrap(tf_keras.models.load_model(str(p), compile=False, safe_mode=not trusted), p, "keras", 2)
        except Exception:
            raise QlabError(f"{p}: cannot read this model: {first_line(keras3_error)}") from None



def build_demo_model() -> Any:
    """The tutorial's small CNN, sized for 8×8 digits: Reshape → Conv2D(12, 3×3) → MaxPool → Flatten → Dense(10)."""
    import tf_keras

    return tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer(input_shape=(8, 8), name="image"),
            tf_keras.layers.Reshape(target_shape=(8, 8, 1), name="reshape"),
            tf_keras.layers.Conv2D(filters=12, kernel_size=(3, 3), activation="relu", name="conv"),
            tf_keras.layers.MaxPooling2D(pool_size=(2, 2), name="pool"),
            tf_keras.layers.Flatten(name="flatten"),
            tf_keras.layers.Dense(10, name="logits"),
        ],
        name=DEMO_NAME,
    )


def demo_dir(folder: str | os.PathLike[str] | None = None) -> Path:
    """Where the demo model is kept: `folder`, else `demo/` in the lab's data directory."""
    return Path(folder) if folder else defaults.data_dir() / "demo"


def demo_model(data_dir: str | os.PathLike[str] | None = None, progress: Progress = no_progress) -> LoadedModel:
    """The demo CNN trained on scikit-learn's digits, cached as `<data_dir>/demo.h5`.

    Args:
        data_dir: the cache folder; defaults to `<QLAB_DATA_DIR or data>/demo`.
        progress: called per epoch while training (only the first time).
    """
    folder = demo_dir(data_dir)
    path = folder / "demo.h5"
    with _demo_lock:
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            model = train_demo(progress)
            tmp = folder / f".demo.{secrets.token_hex(8)}.h5"  # unique even across processes and threads
            model.save(str(tmp))
            os.replace(tmp, path)
    loaded = load_model(path)
    return LoadedModel(
        name=DEMO_NAME,
        path=loaded.path,
        format="demo",
        keras_model=loaded.keras_model,
        input_shape=loaded.input_shape,
        output_shape=loaded.output_shape,
        keras_major=2,
    )


def train_demo(progress: Progress = no_progress, epochs: int = DEMO_EPOCHS) -> Any:
    """Trains the demo CNN on the digits train split (deterministic seed)."""
    import tf_keras

    from qcore.inputs.data import digits_dataset

    tf_keras.utils.set_random_seed(DEMO_SEED)
    ds = digits_dataset()
    model = build_demo_model()
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=3e-3),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    class _Report(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            acc = (logs or {}).get("accuracy", float("nan"))
            progress((epoch + 1) / epochs, f"training demo model: epoch {epoch + 1}/{epochs}, accuracy {acc:.3f}")

    model.fit(
        ds.preprocess(ds.x_train), ds.y_train, epochs=epochs, batch_size=32, verbose=0, callbacks=[_Report()]
    )
    return model


def write_demo(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Writes the demo model and its data for `qlab demo`.

    Returns:
        (the model's .h5 path, the digits .npz path).
    """
    from qcore.inputs.data import digits_dataset, save_npz

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = demo_model()
    model_path = out / "demo.h5"
    model.keras_model.save(str(model_path))
    data_path = out / "digits.npz"
    save_npz(digits_dataset(), data_path)
    return model_path, data_path


def predict(model: LoadedModel, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Float outputs of the Keras model."""
    if len(x) == 0:
        return np.zeros((0, *(d or 1 for d in model.output_shape[1:])), dtype=np.float32)
    # eager calls, not Model.predict: predict traces a tf.function (~0.4 s) and attaches it to the
    # model, which every later TFLite conversion then has to serialize again
    outs = [np.asarray(model.keras_model(x[i : i + batch_size], training=False), dtype=np.float32)
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def float_reference(model: LoadedModel, dataset: Dataset) -> tuple[np.ndarray, Reference]:
    """The float Keras model's test outputs and its accuracy: what every variant is compared with."""
    outputs = predict(model, dataset.test_inputs())
    return outputs, Reference(metrics.accuracy(outputs, dataset.y_test), metrics.top_k(outputs, dataset.y_test),
                              len(dataset.y_test))


def model_record(model: LoadedModel, *, trusted: bool = False) -> ModelRecord:
    """A loaded model as the owner records it: its digest, shapes and where it came from."""
    return ModelRecord(name=model.name, format=model.format, sha256=model_sha256(model), source_path=model.path,
                       input_shape=model.input_shape, output_shape=model.output_shape,
                       keras_major=model.keras_major, trusted=trusted)
