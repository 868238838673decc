"""Uploads that are programs: Lambda bytecode, file-writing graph ops, configs naming modules.

Each test performs the attack through the real upload path (dashboard.services.uploads →
qcore.inputs.models) and checks that nothing ran: no marker file, no imported module, no stored row,
no file left in uploads/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dashboard.services import children, uploads
from dashboard.services.lab import Lab
from qcore.qtyping import QlabError
from tests.dashboard.conftest import empty_lab  # noqa: F401 - fixture

REPO_ROOT = Path(__file__).resolve().parents[2]


def _uploads_left(the_lab: Lab) -> list[str]:
    folder = the_lab.data_dir / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _lambda_h5(tmp_path: Path, marker: Path) -> bytes:
    """A tf_keras .h5 whose Lambda layer writes `marker` whenever it is deserialized and called."""
    import tf_keras

    body = eval(f"lambda x: (open({str(marker)!r}, 'w').write('pwned'), x)[1]")  # noqa: S307 - the attack
    model = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(4,)), tf_keras.layers.Lambda(body),
                                 tf_keras.layers.Dense(2)])
    path = tmp_path / "lambda.h5"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran it once; the upload must not
    return path.read_bytes()


@pytest.mark.slow
def test_upload_lambda_h5_refused_and_runs_nothing(empty_lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    marker = tmp_path / "lambda-ran"
    data = _lambda_h5(tmp_path, marker)
    with pytest.raises(QlabError, match="Lambda") as err:
        uploads.add_model(empty_lab, "evil.h5", data)
    assert "evil.h5" in str(err.value)
    assert not marker.exists()
    assert empty_lab.store.models().empty
    assert _uploads_left(empty_lab) == []  # the refused upload is deleted
    # the attack is real: the same bytes, marked trusted by an admin, do run the Lambda
    uploads.add_model(empty_lab, "evil.h5", data, trusted=True)
    assert marker.exists()
    assert bool(empty_lab.store.models().iloc[0]["trusted"]) is True


def _write_file_savedmodel_zip(tmp_path: Path, marker: Path) -> bytes:
    """A zipped tf_keras SavedModel whose layer's traced call has a WriteFile op writing `marker`."""
    import tensorflow as tf
    import tf_keras

    class Leak(tf_keras.layers.Layer):
        def call(self, x):  # type: ignore[no-untyped-def]
            tf.io.write_file(str(marker), "pwned")
            return x

    model = tf_keras.Sequential([tf_keras.layers.InputLayer(input_shape=(4,)), Leak(), tf_keras.layers.Dense(2)])
    model(tf.zeros((1, 4)))
    folder = tmp_path / "leak_savedmodel"
    model.save(folder, save_format="tf")
    marker.unlink(missing_ok=True)
    archive = tmp_path / "leak.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.rglob("*"):
            zf.write(f, f.relative_to(tmp_path))
    return archive.read_bytes()


@pytest.mark.slow
def test_upload_savedmodel_with_writefile_refused(empty_lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    marker = tmp_path / "writefile-ran"
    data = _write_file_savedmodel_zip(tmp_path, marker)
    with pytest.raises(QlabError, match="WriteFile") as err:
        uploads.add_model(empty_lab, "leak.zip", data)
    assert "leak.zip" in str(err.value)
    assert not marker.exists()
    assert empty_lab.store.models().empty
    assert _uploads_left(empty_lab) == []
    # the attack is real: trusted, the model loads and running it (a float reference, calibration)
    # writes the file
    import numpy as np

    from qcore.inputs.models import load_model

    model_id = uploads.add_model(empty_lab, "leak.zip", data, trusted=True)
    loaded = load_model(empty_lab.store.model(model_id)["source_path"], trusted=True)
    loaded.keras_model(np.zeros((1, 4), np.float32))
    assert marker.exists()


def _keras3_file(tmp_path: Path) -> Path:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "plain.keras"
    model.save(path)
    return path


def _rewrite_config(src: Path, dest: Path, edit) -> bytes:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(body)
                edit(config)
                body = json.dumps(config).encode()
            zout.writestr(info, body)
    return dest.read_bytes()


@pytest.mark.slow
def test_upload_keras_config_naming_a_module_refused(empty_lab: Lab, tmp_path: Path,  # noqa: F811
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "module-imported"
    evil_dir = tmp_path / "site"
    evil_dir.mkdir()
    (evil_dir / "qlab_evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\nclass Pwn:\n    pass\n")
    monkeypatch.syspath_prepend(str(evil_dir))

    def point_at_module(config: dict) -> None:  # type: ignore[type-arg]
        layer = config["config"]["layers"][-1]
        layer["module"], layer["class_name"], layer["registered_name"] = "qlab_evil_mod", "Pwn", "Pwn"

    data = _rewrite_config(_keras3_file(tmp_path), tmp_path / "evil.keras", point_at_module)
    with pytest.raises(QlabError, match="qlab_evil_mod") as err:
        uploads.add_model(empty_lab, "evil.keras", data)
    assert "evil.keras" in str(err.value)
    assert not marker.exists()
    assert "qlab_evil_mod" not in sys.modules
    assert _uploads_left(empty_lab) == []


@pytest.mark.slow
def test_upload_keras_lambda_refused(empty_lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """A Keras 3 Lambda (its bytecode in config.json) is refused before Keras sees it."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)])
    path = tmp_path / "lam.keras"
    model.save(path)
    with pytest.raises(QlabError, match="Lambda"):
        uploads.add_model(empty_lab, "lam.keras", path.read_bytes())


@pytest.mark.slow
def test_upload_plain_models_still_load(empty_lab: Lab, tmp_path: Path, demo_h5: Path) -> None:  # noqa: F811
    """Real architectures pass the policy: the demo .h5, a Keras 3 .keras and MobileNetV2 as a SavedModel zip."""
    import tf_keras

    assert uploads.add_model(empty_lab, "demo.h5", demo_h5.read_bytes())
    assert uploads.add_model(empty_lab, "plain.keras", _keras3_file(tmp_path).read_bytes())
    net = tf_keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10)
    folder = tmp_path / "mnv2"
    net.save(folder, save_format="tf")
    archive = shutil.make_archive(str(tmp_path / "mnv2"), "zip", tmp_path, "mnv2")
    assert uploads.add_model(empty_lab, "mnv2.zip", Path(archive).read_bytes())
    assert len(empty_lab.store.models()) == 3


def test_unpacked_uploads_cannot_be_imported(empty_lab: Lab, tmp_path: Path, demo_h5: Path) -> None:  # noqa: F811
    """An upload's zip is unpacked under a dotted name, so even with the data dir's parent on
    sys.path no module inside it can be imported (Keras configs name modules by dotted path)."""
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("evilpkg/__init__.py", "raise SystemExit('imported')\n")
    with pytest.raises(QlabError):
        uploads.add_model(empty_lab, "pkg.zip", archive.read_bytes())  # no SavedModel inside: refused
    stored, _ = uploads.store_upload(empty_lab, archive.read_bytes(), ".zip")
    unpacked = uploads.safe_extract(stored, uploads.unpacked_dir(stored))
    assert "." in unpacked.name
    rel = unpacked.relative_to(empty_lab.data_dir.parent)
    dotted = ".".join(rel.parts) + ".evilpkg"
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1])\n"
            "try:\n importlib.import_module(sys.argv[2])\nexcept ImportError:\n print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code, str(empty_lab.data_dir.parent), dotted],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused", out


def test_dashboard_children_do_not_see_the_repo_on_sys_path(tmp_path: Path) -> None:
    """`make dashboard` starts Streamlit with -P and no PYTHONPATH, so data/ (under the repo by
    default) is never an import root; the packages come from the install."""
    root = children.import_root()
    try:
        env = children.child_env(tmp_path / "data", tmp_path / "data" / "qlab.duckdb", root)
        assert env["PYTHONPATH"] == str(root)
        code = "import json, sys, qcore, dashboard; print(json.dumps([qcore.__file__, sys.path]))"
        out = subprocess.run([*children.python_command(), "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    finally:
        shutil.rmtree(root)
    assert out.returncode == 0, out.stderr[-2000:]
    qcore_file, sys_path = json.loads(out.stdout.strip().splitlines()[-1])
    assert qcore_file.startswith(str(root))  # this checkout's packages, through the links
    paths = {str(Path(p or ".").resolve()) for p in sys_path}
    assert str(REPO_ROOT) not in paths
    assert str((REPO_ROOT / "data").resolve()) not in paths
