"""The `qlab` engine commands: the JSON contract, exit codes, and one test per bad input."""

import json
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcore.cli import main


def run(capfd, *argv):
    """Runs `qlab` in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def converted(tmp_path_factory, demo_h5, digits_npz):
    """`qlab convert --json` run once as a real subprocess (the console script's code path)."""
    root = tmp_path_factory.mktemp("cli")
    out = subprocess.run(
        [sys.executable, "-m", "qcore.cli", "convert", str(demo_h5), "--data", str(digits_npz),
         "--recipes", "float32,int8,uint8", "--out", str(root / "out"), "--db", str(root / "q.duckdb"), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    return out, root


def test_convert_json_contract(converted):
    out, root = converted
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert set(payload) == {"model", "model_id", "dataset_id", "float_accuracy", "engine", "variants"}
    v = {x["recipe"]: x for x in payload["variants"]}
    assert list(v) == ["float32", "int8", "uint8"]
    # each variant's id, for the next command a script runs (`qlab bench variant:<id>`, a board run)
    assert all(isinstance(x["variant_id"], int) for x in v.values())
    assert (root / "out" / "int8.tflite").read_bytes() == Path(v["int8"]["path"]).read_bytes()
    assert (v["uint8"]["input_dtype"], v["uint8"]["output_dtype"]) == ("uint8", "uint8")
    for key in ("recipe", "name", "path", "size_bytes", "accuracy", "top5", "agreement", "input_dtype",
                "output_dtype", "npu_ready", "npu"):
        assert key in v["int8"]
    assert v["int8"]["npu_ready"] is True and v["float32"]["npu_ready"] is False
    assert "Traceback" not in out.stderr
    from qcore.store import Store

    with Store(root / "q.duckdb") as store:
        stored = store.variant_summary().set_index("variant_id")
        assert stored.loc[v["int8"]["variant_id"], "variant"] == "int8"


def test_evaluate_json(capfd, converted, digits_npz):
    _, root = converted
    code, out, _ = run(capfd, "evaluate", str(root / "out" / "int8.tflite"), "--data", str(digits_npz), "--json")
    payload = json.loads(out)
    assert code == 0 and payload["input_dtype"] == "int8" and payload["accuracy"] > 0.8 and payload["batched"]


def test_inspect_json_verdict(capfd, converted):
    _, root = converted
    code, out, _ = run(capfd, "inspect", str(root / "out" / "int8.tflite"), "--json")
    assert code == 0 and json.loads(out)["verdict"] == "integer-only"
    code, out, _ = run(capfd, "inspect", str(root / "out" / "float32.tflite"), "--json")
    assert json.loads(out)["verdict"].startswith("float ops left")


def test_bench_json_reports_first_inference_apart(capfd, converted, tmp_path):
    _, root = converted
    db = tmp_path / "b.duckdb"
    code, out, _ = run(capfd, "bench", str(root / "out" / "int8.tflite"), "--runs", "5", "--warmup", "1",
                       "--db", str(db), "--json")
    (payload,) = json.loads(out)["timings"]
    assert code == 0 and payload["runs"] == 5 and payload["first_ms"] > 0
    assert payload["min_ms"] <= payload["p50_ms"] <= payload["p99_ms"]
    from qcore.store import Store

    with Store(db) as store:  # the file was imported as a variant and timed there
        assert len(store.benchmarks()) == 1
        assert store.benchmarks()["variant_id"].iloc[0] == payload["variant_id"]


def test_demo_writes_model_and_data(capfd, tmp_path):
    code, out, _ = run(capfd, "demo", "--out", str(tmp_path / "d"), "--json")
    paths = json.loads(out)
    assert code == 0
    with np.load(paths["data"]) as z:
        assert set(z.files) >= {"x_train", "y_train", "x_test", "y_test"}


# ---- bad input: one test each, exit 2 and one clear line


def _bad(capfd, *argv):
    code, out, err = run(capfd, *argv)
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_missing_model_file(capfd, digits_npz, tmp_path):
    line = _bad(capfd, "convert", str(tmp_path / "nope.h5"), "--data", str(digits_npz), "--db", str(tmp_path / "q"))
    assert "nope.h5: no such file" in line


def test_bad_corrupt_model(capfd, digits_npz, tmp_path):
    bad = tmp_path / "corrupt.keras"
    bad.write_bytes(b"PK\x03\x04 this is no keras file")
    line = _bad(capfd, "convert", str(bad), "--data", str(digits_npz), "--db", str(tmp_path / "q"))
    assert "corrupt.keras: cannot read this model" in line


def test_bad_data_shape_names_both_shapes(capfd, demo_h5, tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, x_train=np.zeros((3, 28, 28)), y_train=np.zeros(3, int), x_test=np.zeros((2, 28, 28)),
             y_test=np.zeros(2, int))
    line = _bad(capfd, "convert", str(demo_h5), "--data", str(path), "--db", str(tmp_path / "q"))
    assert "(28, 28)" in line and "(8, 8)" in line


def test_bad_nan_in_data(capfd, demo_h5, tmp_path):
    x = np.zeros((2, 8, 8), np.float32)
    x[0, 0, 0] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x_train=x, y_train=np.zeros(2, int), x_test=x, y_test=np.zeros(2, int))
    line = _bad(capfd, "convert", str(demo_h5), "--data", str(path), "--db", str(tmp_path / "q"))
    assert "nan.npz" in line and "NaN" in line


def test_bad_labels_out_of_range(capfd, demo_h5, tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, x_train=np.zeros((2, 8, 8)), y_train=np.array([0, 1]), x_test=np.zeros((2, 8, 8)),
             y_test=np.array([3, 10]))
    line = _bad(capfd, "convert", str(demo_h5), "--data", str(path), "--db", str(tmp_path / "q"))
    assert "label 10" in line and "10 outputs" in line


def test_bad_unknown_recipe(capfd, demo_h5, digits_npz, tmp_path):
    line = _bad(capfd, "convert", str(demo_h5), "--data", str(digits_npz), "--recipes", "int4",
                "--db", str(tmp_path / "q"))
    assert "unknown recipe 'int4'" in line and "int8-fallback" in line


def test_bad_truncated_tflite(capfd, converted, tmp_path, digits_npz):
    _, root = converted
    trunc = tmp_path / "trunc.tflite"
    trunc.write_bytes((root / "out" / "int8.tflite").read_bytes()[:300])
    assert "trunc.tflite" in _bad(capfd, "inspect", str(trunc))
    _bad(capfd, "evaluate", str(trunc), "--data", str(digits_npz))
    _bad(capfd, "bench", str(trunc))


def test_bad_database_locked_by_another_process(demo_h5, digits_npz, tmp_path):
    db = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        out = subprocess.run(
            [sys.executable, "-m", "qcore.cli", "convert", str(demo_h5), "--data", str(digits_npz),
             "--recipes", "int8", "--db", str(db)],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        holder.kill()
    assert out.returncode == 2
    assert "in use by another process" in out.stderr and "--db" in out.stderr
    assert "Traceback" not in out.stderr


def test_jobs_lists_a_store_s_jobs_with_their_worker(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qcore.qtyping import JobStatus
    from qcore.store import Store

    db = tmp_path / "q.duckdb"
    with Store(db) as store:
        done = store.create_job("convert", {"model_id": 1})
        store.update_job(done, status=JobStatus.RUNNING, worker="tcp://10.0.0.5:4000", worker_host="gpu-box")
        store.update_job(done, status=JobStatus.FAILED, error="the worker died: killed by SIGSEGV")
        store.create_job("debug", {})
    assert main(["jobs", "--db", str(db), "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)["jobs"]
    assert [(j["id"], j["status"]) for j in jobs] == [(2, "queued"), (1, "failed")]
    assert jobs[1]["worker_host"] == "gpu-box" and jobs[1]["error"].endswith("SIGSEGV")
    assert main(["jobs", "--db", str(db), "--active"]) == 0
    out = capsys.readouterr().out
    assert "debug" in out and "convert" not in out
    assert main(["jobs", "--db", str(db), "--limit", "0"]) == 2
