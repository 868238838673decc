"""Jobs on Dask workers, measured side by side in one run.

1. Throughput: 8 demo conversions (int8, uint8) on 2 workers against 1 worker (target >= 1.5x on 2 cores).
2. The web process while 2 heavy jobs (MobileNetV2-sized conversions) run: a page script's p50 against
   idle (target <= 1.25x).
3. One demo conversion through a warm worker against the same call in-process (target <= 1.10x).
4. The web process's memory after 20 jobs against after 0, and whether it ever imported TensorFlow.

Run: .venv/bin/python bench/jobs_scale.py
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


def throughput(folder: Path, demo: Path, workers: int) -> float:
    from qcore.jobs.contract import ConvertParams, DemoParams
    from qcore.jobs.runner import ClusterSettings, local_runner
    from qcore.store import Store

    lab = _lab(folder, demo)
    store = Store(lab / "qlab.duckdb")
    settings = ClusterSettings(workers=workers, memory_limit="4GB", threads_per_worker_pool=max(1, (os.cpu_count() or 1) // workers),
                               worker_log=str(lab / "workers.log"))
    with local_runner(store, lab, settings) as runner:
        first = runner.submit(DemoParams(recipes="float32"))  # registers the model; warms every worker below
        runner.wait(first, timeout=900)
        warm = [runner.submit(ConvertParams(model_id=1, dataset_id=1, recipes=("float32",), bench=False))
                for _ in range(workers)]
        for j in warm:
            runner.wait(j, timeout=900)
        started = time.perf_counter()
        ids = [runner.submit(ConvertParams(model_id=1, dataset_id=1, recipes=("int8", "uint8"), bench=False))
               for _ in range(CONVERSIONS)]
        for j in ids:
            assert str(runner.wait(j, timeout=1800)) == "done", store.job(j).error
        wall = time.perf_counter() - started
    store.close()
    return wall


def page_p50(at_factory: object) -> float:
    times = []
    for _ in range(PAGE_RUNS):
        t = time.perf_counter()
        at_factory()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    import logging

    logging.disable(logging.WARNING)
    print(f"cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="qlab-bench-jobs-") as tmp:
        folder = Path(tmp)
        demo = _demo_file(folder)

        # 1. throughput
        one = throughput(folder, demo, 1)
        two = throughput(folder, demo, 2)
        print(f"throughput: {CONVERSIONS} demo conversions (int8,uint8): 1 worker {one:.1f} s, 2 workers {two:.1f} s, "
              f"speed-up {one / two:.2f}x (target >= 1.5x)")

        # 2-4: this process is the web process, with its own embedded cluster of 2 workers (as `make dashboard`)
        from streamlit.testing.v1 import AppTest

        from dashboard.services.lab import lab as the_lab
        from qcore.jobs.contract import ConvertParams, DemoParams, HostBenchParams, JobKind, JobSpec
        from qcore.jobs.runner import gather_inputs

        folder_web = _lab(folder, demo)
        os.environ.update(QLAB_DB=str(folder_web / "qlab.duckdb"), QLAB_DATA_DIR=str(folder_web), QLAB_BOOTSTRAP="0",
                          QLAB_WORKERS="2", QLAB_WORKER_MEMORY="4GB")
        os.environ.pop("QLAB_DASK_SCHEDULER", None)
        web = the_lab()
        web.runner.cluster.wait_for_workers(2)
        web.runner.wait(web.runner.submit(DemoParams(recipes="float32,int8")), timeout=900)
        page = str(REPO / "dashboard" / "app_pages" / "overview.py")
        at = lambda: AppTest.from_file(page, default_timeout=120).run()  # noqa: E731
        at()
        rss0 = _rss_mb()

        # 3. overhead of one conversion through a warm worker against the same call in-process on a worker
        params = ConvertParams(model_id=1, dataset_id=1, recipes=("int8",), bench=False)
        web.runner.wait(web.runner.submit(params), timeout=900)  # warm
        through = []
        for _ in range(3):
            t = time.perf_counter()
            web.runner.wait(web.runner.submit(params), timeout=900)
            through.append(time.perf_counter() - t)
        files, rows = gather_inputs(web.store, JobKind.CONVERT, params)
        spec = JobSpec(job_id=0, kind=JobKind.CONVERT, params=params, files=files, rows=rows)
        direct = web.runner.cluster.client.submit(_in_process, spec, 3, pure=False).result()
        print(f"overhead: one demo conversion through a warm worker {statistics.median(through):.2f} s, the same call "
              f"in-process {direct:.2f} s (medians of 3), ratio {statistics.median(through) / direct:.2f} "
              "(target <= 1.10)")

        # 2. page p50 idle vs while 2 heavy jobs run
        idle = page_p50(at)
        model_id = _add(web, _mobilenet_file(folder))
        dataset_id = _images(web, folder)
        heavy = [web.runner.submit(ConvertParams(model_id=model_id, dataset_id=dataset_id, recipes=(r,), bench=False))
                 for r in ("int8", "uint8")]
        deadline = time.monotonic() + 600
        while any(str(web.store.job(j).status) != "running" for j in heavy) and time.monotonic() < deadline:
            time.sleep(0.2)
        busy = page_p50(at)
        still = all(str(web.store.job(j).status) == "running" for j in heavy)
        print(f"web process: overview page p50 idle {idle * 1000:.0f} ms, with 2 heavy jobs running "
              f"{busy * 1000:.0f} ms, ratio {busy / idle:.2f} (target <= 1.25; both jobs still running when the "
              f"busy runs ended: {still})")
        for j in heavy:
            web.runner.wait(j, timeout=1800)

        # 4. memory after 20 jobs
        for _ in range(20):
            web.runner.wait(web.runner.submit(HostBenchParams(variant_ids=(2,), runs=10, warmup=1)),
                            timeout=600)
        rss20 = _rss_mb()
        print(f"web process RSS: {rss0:.0f} MB after 0 jobs, {rss20:.0f} MB after 20 jobs (+{rss20 - rss0:.0f} MB); "
              f"TensorFlow imported here: {'tensorflow' in sys.modules}, LiteRT runtime: "
              f"{'ai_edge_litert.interpreter' in sys.modules}")
        web.runner.shutdown()
    return 0


def _add(web: object, path: Path) -> int:
    from dashboard.services import uploads

    return uploads.add_model(web, path.name, path.read_bytes(), "mobilenet_v2")  # type: ignore[arg-type]


def _in_process(spec: object, n: int) -> float:
    """On a worker: the same task called directly (warm, then the median of n), with no Dask in between."""
    from qcore.jobs.tasks import run_task

    run_task(spec, lambda f, m: None)  # type: ignore[arg-type]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run_task(spec, lambda f, m: None)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _images(web: object, folder: Path) -> int:
    """A labelled .npz of random 96x96x3 images in [0, 1] (timing only), stored as a dataset."""
    import io

    import numpy as np

    from dashboard.services import uploads

    rng = np.random.default_rng(0)
    x = rng.random((160, 96, 96, 3), dtype=np.float32)
    y = rng.integers(0, 10, 160)
    buf = io.BytesIO()
    np.savez(buf, x_train=x[:120], y_train=y[:120], x_test=x[120:], y_test=y[120:])
    return uploads.add_dataset(web, "random96.npz", buf.getvalue(), input_scale=1.0,  # type: ignore[arg-type]
                               input_offset=0.0)


if __name__ == "__main__":
    sys.exit(main())
