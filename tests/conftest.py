"""Session fixtures shared by every test package: a trained demo model, digits, a fresh store, tiny .tflite files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import qcore  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from qcore.qtyping import Dataset, LoadedModel
from qcore.store import Store


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir for the whole session, so the demo model is trained once."""
    return tmp_path_factory.mktemp("qlab-data")


@pytest.fixture(scope="session")
def demo(session_data_dir: Path) -> LoadedModel:
    """The built-in demo CNN, trained on digits once per session (a few seconds)."""
    from qcore.models import demo_model

    return demo_model(session_data_dir / "demo")


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's bundled digits in [0, 1]."""
    from qcore.data import digits_dataset

    return digits_dataset()


@pytest.fixture(scope="session")
def digits_npz(session_data_dir: Path, digits: Dataset) -> Path:
    """The digits written as a Keras-convention .npz."""
    from qcore.data import save_npz

    path = session_data_dir / "digits.npz"
    if not path.exists():
        save_npz(digits, path)
    return path


@pytest.fixture(scope="session")
def demo_h5(demo: LoadedModel) -> Path:
    """The demo model's .h5 file on disk."""
    return Path(demo.path)


@pytest.fixture(scope="session")
def tiny_tflite(demo: LoadedModel, digits: Dataset) -> dict[str, bytes]:
    """The demo converted with float32, int8 and uint8 (recipe name → .tflite bytes)."""
    from qcore.convert import convert

    calibration = digits.calibration(20)
    return {name: convert(demo, name, calibration) for name in ("float32", "int8", "uint8")}


@pytest.fixture()
def tmp_store(tmp_path: Path) -> Iterator[Store]:
    """A fresh Store on a temporary DuckDB file, closed after the test."""
    store = Store(tmp_path / "qlab.duckdb")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture()
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """QLAB_DB and QLAB_DATA_DIR pointed at a temp dir for code that reads the defaults."""
    monkeypatch.setenv("QLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QLAB_DB", str(tmp_path / "data" / "qlab.duckdb"))
    os.makedirs(tmp_path / "data", exist_ok=True)
    return tmp_path
