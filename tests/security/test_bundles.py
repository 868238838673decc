"""Attacks through report bundles, against the real store: path-like shas, half-written imports,
server paths, fake .tflite files, decompression bombs and a teammate's model sha."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qcore.lab import reports
from qcore.qtyping import Evaluation, QlabError, VariantStatus
from qcore.store import Store, sha256_bytes
from tests.security.conftest import lie_about_size

EV = Evaluation(0.9, 1.0, 1.0, ((9, 1), (0, 10)), 20, False)


def _bundle(store: Store, tiny_tflite: dict[str, bytes]) -> bytes:
    """A real exported bundle: the demo model, an ok int8 variant and a failed one."""
    model_id = store.add_model(name="demo", format="h5", sha256=sha256_bytes(b"demo"), source_path="/x/demo.h5",
                               input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    dataset_id = store.add_dataset(name="digits", source="digits", sha256=sha256_bytes(b"digits"), input_scale=1.0,
                                   input_offset=0.0, n_train=10, n_test=20, num_classes=10)
    ok = store.save_variant(model_id=model_id, dataset_id=dataset_id, name="int8", kind="ptq", recipe="int8",
                            tflite=tiny_tflite["int8"], evaluation=EV)
    bad = store.save_variant(model_id=model_id, dataset_id=dataset_id, name="int16x8", kind="ptq",
                             status=VariantStatus.FAILED, error="refused")
    return reports.export_bundle(store, reports.make_report(store, "shared", "", [ok, bad]))


def _edit(bundle: bytes, edit: Callable[[dict[str, Any]], None], extra: dict[str, bytes] | None = None) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(bundle))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "report.json":
                meta = json.loads(body)
                edit(meta)
                body = json.dumps(meta).encode()
            zf.writestr(info.filename, body)
        for name, body in (extra or {}).items():
            zf.writestr(name, body)
    return buf.getvalue()


def _empty(store: Store) -> bool:
    return (store.models().empty and store.datasets().empty and store.variant_summary().empty
            and store.reports().empty and store.benchmarks().empty)


@pytest.fixture()
def bundle(tmp_path: Path, tiny_tflite: dict[str, bytes]) -> bytes:
    """A valid bundle exported from a throwaway store."""
    with Store(tmp_path / "src" / "qlab.duckdb") as src:
        return _bundle(src, tiny_tflite)


@pytest.fixture()
def target(tmp_path: Path) -> Store:
    """The store a bundle is imported into."""
    store = Store(tmp_path / "dst" / "qlab.duckdb")
    yield store
    store.close()


def _blobs(store: Store) -> list[str]:
    return sorted(p.name for p in store.blob_dir.iterdir())


@pytest.mark.slow
def test_bundle_valid_imports(bundle: bytes, target: Store) -> None:
    """The control: the untouched bundle imports."""
    reports.import_bundle(target, bundle)
    assert len(target.variant_summary()) == 2


@pytest.mark.slow
def test_bundle_path_sha_refused_and_blob_path_rechecks(bundle: bytes, target: Store, tmp_path: Path) -> None:
    """A failed variant whose sha256 is `../../…` is refused on import, and blob_path refuses it too,
    so an already stored report cannot export a server file either."""
    secret = tmp_path / "secret.tflite"
    secret.write_bytes(b"server secret")
    traversal = "../" * 8 + str(secret.with_suffix("")).lstrip("/")

    def point_out(meta: dict[str, Any]) -> None:
        meta["content"]["variants"][1]["sha256"] = traversal

    with pytest.raises(QlabError, match="not a sha256"):
        reports.import_bundle(target, _edit(bundle, point_out))
    assert _empty(target)
    with pytest.raises(QlabError, match="not a sha256"):
        target.blob_path(traversal)
    # a report row that already holds such a sha (written before this fix) cannot export the file
    rid = target.save_report("old", "", {"variants": [{"variant_id": 1, "sha256": traversal}]})
    with pytest.raises(QlabError, match="not a sha256"):
        reports.export_bundle(target, rid)


@pytest.mark.slow
def test_bundle_failure_midway_leaves_nothing(bundle: bytes, target: Store) -> None:
    """A bundle that breaks while rows are written (a non-numeric timing) rolls back every row and blob."""
    def bad_benchmark(meta: dict[str, Any]) -> None:
        content = meta["content"]
        content["benchmarks"] = [{"benchmark_id": 1, "variant_id": content["variants"][0]["variant_id"],
                                  "sha256": content["variants"][0]["sha256"], "board": "imx", "target": "npu",
                                  "threads": "many", "xnnpack": False, "runs": 1, "warmup": 0}]

    with pytest.raises(QlabError, match="malformed"):
        reports.import_bundle(target, _edit(bundle, bad_benchmark))
    assert _empty(target)
    assert _blobs(target) == []


@pytest.mark.slow
def test_bundle_dataset_source_is_never_a_server_path(bundle: bytes, target: Store, tmp_path: Path) -> None:
    """A dataset `source` of /etc/passwd (or any path) is stored as a label, and jobs never read it."""
    from qcore.inputs.data import load_stored_dataset

    def server_path(meta: dict[str, Any]) -> None:
        for d in meta["content"]["datasets"]:
            d["source"], d["sha256"] = "/etc/passwd", sha256_bytes(b"other")

    reports.import_bundle(target, _edit(bundle, server_path))
    row = target.datasets().iloc[0]
    assert row["source"] == "imported: passwd"
    with pytest.raises(QlabError, match="no stored data"):
        load_stored_dataset(target.dataset(int(row["id"])))
    # a row imported before this fix still holds the path: jobs refuse it all the same
    with target.transaction() as cur:
        cur.execute("UPDATE datasets SET source = '/etc/passwd' WHERE id = ?", [int(row["id"])])
    with pytest.raises(QlabError, match="no stored data"):
        load_stored_dataset(target.dataset(int(row["id"])))


@pytest.mark.slow
def test_bundle_fake_tflite_refused(bundle: bytes, target: Store) -> None:
    """A blob named by its true sha256 but not a parseable .tflite (magic and garbage) is refused."""
    fake = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4
    sha = sha256_bytes(fake)

    def use_fake(meta: dict[str, Any]) -> None:
        meta["content"]["variants"][0]["sha256"] = sha

    with pytest.raises(QlabError, match=f"tflite/{sha}.tflite"):
        reports.import_bundle(target, _edit(bundle, use_fake, {f"tflite/{sha}.tflite": fake}))
    assert _empty(target) and _blobs(target) == []


@pytest.mark.slow
def test_bundle_bomb_refused_without_the_memory(bundle: bytes, target: Store) -> None:
    """A small bundle declaring ~900 MB, or lying that it holds less, is refused with little memory used."""
    zeros = b"\0" * (300 << 20)
    sha = sha256_bytes(zeros)
    bomb = _edit(bundle, lambda meta: None, {f"tflite/{sha}.tflite": zeros, "a.bin": zeros[:1], "b.bin": zeros[:1]})
    del zeros
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(QlabError, match="more than 256 MB"):
            reports.import_bundle(target, bomb)
        liar = lie_about_size(bomb, f"tflite/{sha}.tflite", 1000)
        with pytest.raises(QlabError, match="more than it declares|cannot be unpacked"):
            reports.import_bundle(target, liar)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak traced memory while refusing a {len(bomb) >> 10} KB bundle of 300 MB: {peak / 2**20:.1f} MB")
    assert peak < 32 << 20
    assert _empty(target)


@pytest.mark.slow
def test_bundle_cannot_take_over_a_teammates_model(bundle: bytes, target: Store) -> None:
    """A bundle claiming the sha256 of a model already here gets its own model row; the teammate's
    model gains no variants."""
    mine = target.add_model(name="teammate", format="h5", sha256=sha256_bytes(b"demo"), source_path="/srv/t.h5",
                            input_shape=[None, 8, 8], output_shape=[None, 10], keras_major=2)
    reports.import_bundle(target, bundle)
    summary = target.variant_summary()
    assert len(summary) == 2
    assert mine not in set(summary["model_id"])
    models = target.models().set_index("id")
    assert models.at[mine, "name"] == "teammate" and models.at[mine, "format"] == "h5"
    assert len(models) == 2
