"""benchmark(): host timings of real .tflite files, their statistics, and bad settings."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

import qcore  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from qcore.qtyping import Latency, LoadedModel, QlabError
from qcore.store import Store, sha256_bytes
from qcore.tflite.latency import benchmark, random_input


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """The demo CNN's architecture (untrained) as float32 and int8 .tflite."""
    from qcore.engines.tf import convert
    from qcore.inputs.models import build_demo_model

    model = LoadedModel("cnn", "", "demo", build_demo_model(), (None, 8, 8), (None, 10), 2)
    calibration = np.random.default_rng(0).uniform(0, 1, (10, 8, 8)).astype(np.float32)
    return {name: convert(model, name, calibration) for name in ("float32", "int8")}


def _assert_consistent(lat: Latency) -> None:
    assert lat.init_ms > 0 and lat.first_ms > 0
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.extra["max_ms"]
    assert lat.min_ms <= lat.mean_ms <= lat.extra["max_ms"]
    assert lat.std_ms >= 0


def test_benchmark_int8_fields(models: dict[str, bytes]) -> None:
    lat = benchmark(models["int8"], runs=30, warmup=2)
    assert (lat.target, lat.threads, lat.xnnpack, lat.runs, lat.warmup) == ("host", 1, True, 30, 2)
    _assert_consistent(lat)
    assert lat.extra["inputs"] == [{"dtype": "int8", "shape": [1, 8, 8]}]
    assert lat.extra["model_bytes"] == len(models["int8"])


def test_benchmark_float32_without_xnnpack(models: dict[str, bytes]) -> None:
    lat = benchmark(models["float32"], runs=20, warmup=0, xnnpack=False)
    assert lat.xnnpack is False and lat.warmup == 0
    _assert_consistent(lat)
    assert lat.extra["inputs"] == [{"dtype": "float32", "shape": [1, 8, 8]}]


def test_benchmark_two_threads(models: dict[str, bytes]) -> None:
    lat = benchmark(models["int8"], runs=10, threads=2)
    assert lat.threads == 2
    _assert_consistent(lat)


def test_benchmark_single_run_has_no_spread(models: dict[str, bytes]) -> None:
    lat = benchmark(models["int8"], runs=1, warmup=0)
    assert lat.std_ms == 0.0
    assert lat.min_ms == lat.p50_ms == lat.p99_ms == lat.mean_ms == lat.extra["max_ms"]


def test_benchmark_stores_as_rows(models: dict[str, bytes], tmp_store: Store) -> None:
    lat = benchmark(models["int8"], runs=5, warmup=1)
    bench_id = tmp_store.add_benchmark(lat, sha256=sha256_bytes(models["int8"]))
    row = tmp_store.benchmarks().set_index("benchmark_id").loc[bench_id]
    assert row["target"] == "host" and row["threads"] == 1 and bool(row["xnnpack"])
    assert row["p50_ms"] == pytest.approx(lat.p50_ms)
    assert row["first_ms"] == pytest.approx(lat.first_ms)


def test_benchmark_zero_runs(models: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match="runs=0 must be a whole number of at least 1"):
        benchmark(models["int8"], runs=0)


def test_benchmark_negative_runs(models: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match="runs=-5 must be"):
        benchmark(models["int8"], runs=-5)


def test_benchmark_fractional_runs(models: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match="runs=2.5 must be a whole number"):
        benchmark(models["int8"], runs=2.5)  # type: ignore[arg-type]


def test_benchmark_runs_as_text(models: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match="runs='10' must be a whole number"):
        benchmark(models["int8"], runs="10")  # type: ignore[arg-type]


def test_benchmark_negative_warmup(models: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match="warmup=-1 must be a whole number of at least 0"):
        benchmark(models["int8"], warmup=-1)


def test_benchmark_zero_threads(models: dict[str, bytes]) -> None:
    with pytest.raises(QlabError, match="threads=0 must be a whole number of at least 1"):
        benchmark(models["int8"], threads=0)


def test_benchmark_garbage_model() -> None:
    with pytest.raises(QlabError, match="cannot load this model"):
        benchmark(b"\x00\x00\x00\x00TFL3" + bytes(100), runs=1)


def test_benchmark_model_as_path_string() -> None:
    with pytest.raises(TypeError, match="needs the model as bytes"):
        benchmark("model.tflite", runs=1)  # type: ignore[arg-type]


def test_random_input_is_seeded() -> None:
    a = random_input("int8", (4, 4), np.random.default_rng(0))
    b = random_input("int8", (4, 4), np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int8


def test_random_input_ranges_per_dtype() -> None:
    rng = np.random.default_rng(0)
    f = random_input(np.float32, (20000,), rng)
    assert f.dtype == np.float32 and -1 <= f.min() < -0.9 and 0.9 < f.max() <= 1
    u = random_input(np.uint8, (20000,), rng)
    assert u.dtype == np.uint8 and u.min() == 0 and u.max() == 127
    i = random_input(np.int32, (20000,), rng)
    assert i.dtype == np.int32 and i.min() == -128 and i.max() == 127
    flags = random_input(np.bool_, (20000,), rng)
    assert flags.dtype == np.bool_ and flags.any() and not flags.all()


def test_latency_serializes_to_json_values(models: dict[str, bytes]) -> None:
    import json

    payload = json.loads(json.dumps(asdict(benchmark(models["int8"], runs=3))))
    assert payload["target"] == "host" and payload["runs"] == 3
