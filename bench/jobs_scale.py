"""Jobs on Dask workers, measured side by side in one run.

1. Throughput on 2 workers against 1 worker (target >= 1.5x on 2 cores): MobileNetV2 (alpha 1.0, 96x96)
   int8 conversions, the realistic size, and the 0.3 s demo conversions, where the owner's per-job work shows.
2. The web process while 2 heavy jobs (MobileNetV2-sized conversions) run: a page script's p50 against
   idle (target <= 1.25x).
3. One conversion through a warm worker against the same call on that worker with no Dask in between
   (target <= 1.10x), for MobileNetV2 and for the demo.
4. The web process's memory after 20 jobs against after 0, and whether it ever imported TensorFlow.
5. A quick job (importing a .tflite) while both workers run heavy conversions, against the same import idle:
   the quick lane (QLAB_QUICK_WORKERS, default 1) keeps it from waiting behind them.

Run: make bench, or .venv/bin/python -m qcore.quiet bench/jobs_scale.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONVERSIONS = 8
# MobileNetV2 1.0 at 96x96, one int8 conversion each: several seconds of real converter work per job
HEAVY_JOBS = 6
HEAVY_CALIBRATION = 20
PAGE_RUNS = 15


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _demo_file(folder: Path) -> Path:
    """Trains the demo model once in a child process (this process must not import TensorFlow)."""
    import subprocess

    target = folder / "demo" / "demo.h5"
    if not target.exists():
        subprocess.run([sys.executable, "-c", f"from qcore.inputs.models import demo_model; demo_model({str(folder / 'demo')!r})"],
                       check=True, cwd=REPO, capture_output=True)
    return target


def _mobilenet_file(folder: Path) -> Path:
    """MobileNetV2 alpha 1.0 at 96x96 with 10 classes (random weights), saved as .h5 in a child process."""
    import subprocess

    target = folder / "mobilenet.h5"
    if not target.exists():
        code = ("import qcore, tf_keras as k; m = k.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=1.0, "
                f"weights=None, classes=10); m.save({str(target)!r})")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)
    return target


def _lab(folder: Path, demo: Path) -> Path:
    lab = Path(tempfile.mkdtemp(dir=folder))
    (lab / "demo").mkdir()
    shutil.copy(demo, lab / "demo" / "demo.h5")
    return lab


def _random_images(n: int = 160) -> bytes:
    """A labelled .npz of random 96x96x3 images in [0, 1] (timing only)."""
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((n, 96, 96, 3), dtype=np.float32)
    y = rng.integers(0, 10, n)
    buf = io.BytesIO()
    cut = n * 3 // 4
    np.savez(buf, x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])
    return buf.getvalue()


def _mobilenet_inputs(the_lab: object, folder: Path) -> tuple[int, int]:
    """MobileNetV2 and its random images, registered the way the Models page does (a load job on a worker)."""
    from dashboard.services import uploads

    path = _mobilenet_file(folder)
    model_id = uploads.add_model(the_lab, path.name, path.read_bytes(), "mobilenet_v2")  # type: ignore[arg-type]
    dataset_id = uploads.add_dataset(the_lab, "random96.npz", _random_images(), input_scale=1.0,  # type: ignore[arg-type]
                                     input_offset=0.0)
    return model_id, dataset_id


def _web_lab(folder: Path, demo: Path, workers: int) -> object:
    """This process as the web process: the dashboard's lab with its embedded cluster (as `make dashboard`)."""
    from dashboard.services import lab as lab_module

    folder_web = _lab(folder, demo)
    os.environ.update(QLAB_DB=str(folder_web / "qlab.duckdb"), QLAB_DATA_DIR=str(folder_web), QLAB_BOOTSTRAP="0",
                      QLAB_WORKERS=str(workers), QLAB_WORKER_MEMORY="4GB")
    os.environ.pop("QLAB_DASK_SCHEDULER", None)
    web = lab_module.lab()
    web.runner.cluster.wait_for_workers(workers)
    return web


def throughput(web: object, params: object, jobs: int) -> float:
    """Wall time of `jobs` identical jobs submitted at once, after each worker ran one (warm)."""
    runner = web.runner  # type: ignore[attr-defined]
    workers = len(runner.cluster.workers())
    for j in [runner.submit(params) for _ in range(workers)]:
        runner.wait(j, timeout=1800)
    started = time.perf_counter()
    ids = [runner.submit(params) for _ in range(jobs)]
    for j in ids:
        assert str(runner.wait(j, timeout=3600)) == "done", web.store.job(j).error  # type: ignore[attr-defined]
    return time.perf_counter() - started


def overhead(web: object, params: object, n: int = 5) -> tuple[float, float]:
    """(through a warm worker, the same task called on that worker directly): medians of n pairs.

    The pairs alternate, and each direct call runs on the worker the job just used, so drift in the
    machine's load and a worker's warmth fall on both sides alike.
    """
    from qcore.jobs.contract import JobSpec, kind_of
    from qcore.jobs.inputs import gather_inputs

    runner = web.runner  # type: ignore[attr-defined]
    # warm every worker (one job each, at once), so the timed jobs find their model loaded wherever they land
    for j in [runner.submit(params) for _ in range(len(runner.cluster.workers()))]:
        runner.wait(j, timeout=1800)
    kind = kind_of(params)
    files, rows = gather_inputs(web.store, kind, params)  # type: ignore[attr-defined]
    spec = JobSpec(job_id=0, kind=kind, params=params, files=files, rows=rows)
    through, direct = [], []
    for _ in range(n):
        t = time.perf_counter()
        job_id = runner.submit(params)
        runner.wait(job_id, timeout=1800)
        through.append(time.perf_counter() - t)
        worker = web.store.job(job_id).worker  # type: ignore[attr-defined]
        direct.append(runner.cluster.client.submit(_in_process, spec, pure=False, workers=[worker]).result())
    return statistics.median(through), statistics.median(direct)


def quick_import(web: object, tflite: Path) -> tuple[float, str]:
    """Seconds from submitting an import of `tflite` until it is done, and the worker that ran it."""
    from qcore.jobs.contract import ImportTfliteParams

    runner = web.runner  # type: ignore[attr-defined]
    t = time.perf_counter()
    job_id = runner.submit(ImportTfliteParams(filename=tflite.name, path=str(tflite)))
    assert str(runner.wait(job_id, timeout=3600)) == "done", web.store.job(job_id).error  # type: ignore[attr-defined]
    return time.perf_counter() - t, web.store.job(job_id).worker  # type: ignore[attr-defined]


def page_p50(at_factory: object) -> float:
    times = []
    for _ in range(PAGE_RUNS):
        t = time.perf_counter()
        at_factory()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    import argparse
    import logging

    from qcore.jobs.contract import ConvertParams, DemoParams, HostBenchParams

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer MobileNetV2 jobs (4 instead of 6)")
    parser.add_argument("--skip-throughput", action="store_true", help="measure 2-4 only (one 2-worker lab)")
    args = parser.parse_args()
    heavy_jobs = 4 if args.quick else HEAVY_JOBS
    logging.disable(logging.WARNING)
    print(f"cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="qlab-bench-jobs-") as tmp:
        folder = Path(tmp)
        demo = _demo_file(folder)
        from dashboard.services import lab as lab_module

        walls: dict[int, tuple[float, float]] = {}
        for workers in ((2,) if args.skip_throughput else (1, 2)):
            web = _web_lab(folder, demo, workers)
            web.runner.wait(web.runner.submit(DemoParams(recipes="float32")), timeout=900)  # type: ignore[attr-defined]
            model_id, dataset_id = _mobilenet_inputs(web, folder)
            heavy = ConvertParams(model_id=model_id, dataset_id=dataset_id, recipes=("int8",), bench=False,
                                  calibration_samples=HEAVY_CALIBRATION)
            light = ConvertParams(model_id=1, dataset_id=1, recipes=("int8", "uint8"), bench=False)
            if not args.skip_throughput:
                walls[workers] = (throughput(web, heavy, heavy_jobs), throughput(web, light, CONVERSIONS))
            if workers == 2:
                break
            lab_module.close(web)  # type: ignore[arg-type]
        if not args.skip_throughput:
            (h1, l1), (h2, l2) = walls[1], walls[2]
            print(f"throughput, {heavy_jobs} MobileNetV2 96x96 int8 conversions: 1 worker {h1:.1f} s, 2 workers "
                  f"{h2:.1f} s, speed-up {h1 / h2:.2f}x (target >= 1.5x)")
            print(f"throughput, {CONVERSIONS} demo conversions (int8,uint8): 1 worker {l1:.1f} s, 2 workers "
                  f"{l2:.1f} s, speed-up {l1 / l2:.2f}x")

        # the 2-worker lab stays up: it is the web process for 2-4
        from streamlit.testing.v1 import AppTest

        page = str(REPO / "dashboard" / "app_pages" / "overview.py")
        at = lambda: AppTest.from_file(page, default_timeout=120).run()  # noqa: E731
        at()
        rss0 = _rss_mb()

        # 3. overhead of one conversion through a warm worker against the same call on the worker
        for label, params, n in (("MobileNetV2 int8", heavy, 3), ("demo int8", ConvertParams(
                model_id=1, dataset_id=1, recipes=("int8",), bench=False), 7)):
            through, direct = overhead(web, params, n)
            print(f"overhead, one {label} conversion: through a warm worker {through:.2f} s, the same task on the "
                  f"worker directly {direct:.2f} s (medians of {n} alternating pairs), ratio {through / direct:.2f} "
                  "(target <= 1.10)")

        # 2. page p50 idle vs while 2 heavy jobs run (and 5: a quick import idle, then while they run)
        tflite = folder / "import-me.tflite"
        shutil.copy(str(web.store.variant(int(web.store.variant_summary()["variant_id"].iloc[0]))["path"]),  # type: ignore[attr-defined]
                    tflite)
        import_idle, _ = quick_import(web, tflite)
        idle = page_p50(at)
        # several recipes each, so both jobs are still converting when the busy page runs end
        running = [web.runner.submit(ConvertParams(model_id=model_id, dataset_id=dataset_id, recipes=recipes,  # type: ignore[attr-defined]
                                                   bench=False)) for recipes in (("int8", "uint8", "int8-per-tensor"),
                                                                                 ("uint8-per-tensor", "int8-fallback",
                                                                                  "float16"))]
        deadline = time.monotonic() + 600
        while any(str(web.store.job(j).status) != "running" for j in running) and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.2)
        import_busy, import_worker = quick_import(web, tflite)
        busy = page_p50(at)
        still = all(str(web.store.job(j).status) == "running" for j in running)  # type: ignore[attr-defined]
        lane = (web.runner.cluster.workers().get(import_worker) or {}).get("resources", {}).get("QUICK")  # type: ignore[attr-defined]
        print(f"quick lane: importing a .tflite took {import_idle:.1f} s idle and {import_busy:.1f} s while both "
              f"workers ran heavy conversions (ran on the quick-lane worker: {bool(lane)})")
        print(f"web process: overview page p50 idle {idle * 1000:.0f} ms, with 2 heavy jobs running "
              f"{busy * 1000:.0f} ms, ratio {busy / idle:.2f} (target <= 1.25; both jobs still running when the "
              f"busy runs ended: {still})")
        for j in running:
            web.runner.wait(j, timeout=1800)  # type: ignore[attr-defined]

        # 4. memory after 20 jobs
        variant = int(web.store.variant_summary()["variant_id"].iloc[0])  # type: ignore[attr-defined]
        for _ in range(20):
            web.runner.wait(web.runner.submit(HostBenchParams(variant_ids=(variant,), runs=10, warmup=1)),  # type: ignore[attr-defined]
                            timeout=600)
        rss20 = _rss_mb()
        print(f"web process RSS: {rss0:.0f} MB after 0 jobs, {rss20:.0f} MB after 20 jobs (+{rss20 - rss0:.0f} MB); "
              f"TensorFlow imported here: {'tensorflow' in sys.modules}, LiteRT runtime: "
              f"{'ai_edge_litert.interpreter' in sys.modules}")
        lab_module.close(web)  # type: ignore[arg-type]
    return 0


def _in_process(spec: object) -> float:
    """On a worker: the same task called directly, with no Dask, events or publishing in between."""
    from qcore.jobs.tasks import run_task

    t = time.perf_counter()
    run_task(spec, lambda f, m: None)  # type: ignore[arg-type]
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
