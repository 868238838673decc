"""Every `--json` stdout is exactly one JSON document, and library log noise stays out unless -v."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcore.cli import main
from qcore.qtyping import Dataset, LoadedModel

# what TensorFlow, absl, Keras 3 and LiteRT print natively when nobody silences them
NOISE = ("I0000", "W0000", "E0000", "oneDNN", "absl::InitializeLog", "Saved artifact", "XNNPACK delegate")


def _one_json(capfd: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    """Runs `qlab ... --json` in-process (fd-level capture) and parses stdout as one document."""
    code = main([*argv, "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def keras3_file(tmp_path_factory: pytest.TempPathFactory, digits: Dataset) -> Path:
    """A small Keras 3 MLP on digits, saved as .keras (its conversion prints "Saved artifact at ...")."""
    import keras

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(10)], name="k3_json")
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(digits.x_train, digits.y_train, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("k3") / "k3_json.keras"
    net.save(path)
    return path


def test_convert_keras3_json(capfd: pytest.CaptureFixture[str], keras3_file: Path, digits_npz: Path,
                             tmp_path: Path) -> None:
    doc = _one_json(capfd, "convert", str(keras3_file), "--data", str(digits_npz), "--recipes", "float32,int8",
                    "--out", str(tmp_path / "out"), "--db", str(tmp_path / "q.duckdb"))
    assert [v["recipe"] for v in doc["variants"]] == ["float32", "int8"]  # type: ignore[index]


def test_convert_savedmodel_json(capfd: pytest.CaptureFixture[str], demo: LoadedModel, digits_npz: Path,
                                 tmp_path: Path) -> None:
    demo.keras_model.save(tmp_path / "demo_sm", save_format="tf")
    doc = _one_json(capfd, "convert", str(tmp_path / "demo_sm"), "--data", str(digits_npz), "--recipes", "int8",
                    "--out", str(tmp_path / "out"), "--db", str(tmp_path / "q.duckdb"))
    assert doc["variants"][0]["accuracy"] > 0.5  # type: ignore[index]


def test_qat_json(capfd: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path, tmp_path: Path) -> None:
    doc = _one_json(capfd, "qat", str(demo_h5), "--data", str(digits_npz), "--epochs", "1", "--train-samples", "100",
                    "--db", str(tmp_path / "q.duckdb"))
    assert len(doc["history"]) == 1  # type: ignore[arg-type]


def test_debug_json(capfd: pytest.CaptureFixture[str], demo_h5: Path, digits_npz: Path, tmp_path: Path) -> None:
    doc = _one_json(capfd, "debug", str(demo_h5), "--data", str(digits_npz), "--calibration-samples", "20",
                    "--debug-samples", "20", "--db", str(tmp_path / "q.duckdb"))
    assert doc["layers"]


def test_json_through_a_real_process_is_clean(keras3_file: Path, digits_npz: Path, tmp_path: Path) -> None:
    """The console script's path: TensorFlow imported fresh prints its import-time lines, all kept out."""
    done = subprocess.run(
        [sys.executable, "-m", "qcore.cli", "convert", str(keras3_file), "--data", str(digits_npz), "--recipes",
         "float32", "--out", str(tmp_path / "out"), "--db", str(tmp_path / "q.duckdb"), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["variants"][0]["recipe"] == "float32"
    assert not [n for n in NOISE if n in done.stdout + done.stderr], done.stderr


def test_verbose_shows_native_logs_on_stderr(tmp_path: Path, tiny_tflite: dict[str, bytes], digits_npz: Path) -> None:
    path = tmp_path / "int8.tflite"
    path.write_bytes(tiny_tflite["int8"])
    argv = [sys.executable, "-m", "qcore.cli", "evaluate", str(path), "--data", str(digits_npz), "--json"]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    loud = subprocess.run(argv[:3] + ["-v"] + argv[3:], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    # LiteRT announces its XNNPACK delegate natively; -v lets it through, on stderr only
    assert "XNNPACK" in loud.stderr and "XNNPACK" not in quiet.stderr
    assert json.loads(quiet.stdout) == json.loads(loud.stdout)
    np.testing.assert_equal(json.loads(loud.stdout)["n_samples"], 360)
