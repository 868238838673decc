"""The web process under load, measured side by side in one run against the same server idle.

1. 20 simultaneous job submissions: `/_stcore/health` p99 while they land (target < 1 s), against idle.
2. 200 concurrent API reads (`GET /api/v1/variants`): p50 (target < 300 ms), against one read alone.
3. 20 concurrent browser sessions (Playwright, headless Debian chromium) opening the overview while 2 jobs
   run: page ready p95 (target < 3 s), against one session alone with no job running.

The server is the real one (`python -m dashboard.serve`, 2 Dask workers), on a temporary data directory
holding the demo model and digits; submissions use the admin token (exempt from QLAB_MAX_ACTIVE_JOBS, so
all 20 land). Run: make bench, or .venv/bin/python -m qcore.quiet bench/server_load.py [--skip-browser]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.serving import ADMIN_TOKEN, running_server  # noqa: E402

SUBMISSIONS = 20
READS = 200
SESSIONS = 20
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# what the overview shows once its script has run (its first subheader)
READY_TEXT = "Best variant per model"
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# a session not ready after this long counts as never ready
PAGE_TIMEOUT_MS = 120_000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _demo(folder: Path) -> Path:
    """Trains the demo model once in a child process (the bench process stays free of TensorFlow)."""
    target = folder / "demo" / "demo.h5"
    code = f"from qcore.inputs.models import demo_model; demo_model({str(folder / 'demo')!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)
    return target


def _health_times(base: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        requests.get(f"{base}/_stcore/health", timeout=60).raise_for_status()
        out.append(time.perf_counter() - t)
    return out


def _cancel_all(base: str, job_ids: list[int]) -> None:
    for job_id in job_ids:
        requests.delete(f"{base}/api/v1/jobs/{job_id}", headers=HEADERS, timeout=60)
    deadline = time.monotonic() + 300
    for job_id in job_ids:
        while time.monotonic() < deadline:
            if requests.get(f"{base}/api/v1/jobs/{job_id}", headers=HEADERS, timeout=60).json()["status"] in (
                    "done", "failed", "cancelled"):
                break
            time.sleep(0.5)


def submissions(base: str, job: dict[str, object]) -> tuple[list[float], list[float], list[float], int]:
    """(idle health times, health times during the burst, submission times, accepted) for 20 submissions."""
    idle = _health_times(base, 50)
    during: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            requests.get(f"{base}/_stcore/health", timeout=120)
            during.append(time.perf_counter() - t)
            time.sleep(0.02)

    def submit(_: int) -> tuple[float, requests.Response]:
        t = time.perf_counter()
        r = requests.post(f"{base}/api/v1/jobs", headers=HEADERS, json=job, timeout=300)
        return time.perf_counter() - t, r

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    with ThreadPoolExecutor(SUBMISSIONS) as pool:
        answers = list(pool.map(submit, range(SUBMISSIONS)))
    time.sleep(2.0)  # the jobs start on the workers and report progress: the owner writes their events
    stop.set()
    poller.join()
    accepted = [r.json()["id"] for _, r in answers if r.status_code == 202]
    _cancel_all(base, accepted)
    return idle, during, [t for t, _ in answers], len(accepted)


def reads(base: str) -> tuple[list[float], list[float]]:
    """(one read at a time, 200 at once) latencies of GET /api/v1/variants."""

    def read(_: int) -> float:
        t = time.perf_counter()
        requests.get(f"{base}/api/v1/variants", headers=HEADERS, timeout=120).raise_for_status()
        return time.perf_counter() - t

    alone = [read(i) for i in range(20)]
    with ThreadPoolExecutor(READS) as pool:
        together = list(pool.map(read, range(READS)))
    return alone, together


async def _sessions(base: str, n: int) -> list[float]:
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            contexts = [await browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(n)]
            tabs = [await c.new_page() for c in contexts]

            async def one(tab: object) -> float:
                t = time.perf_counter()
                try:
                    await tab.goto(base, timeout=PAGE_TIMEOUT_MS)  # type: ignore[attr-defined]
                    await tab.get_by_text(READY_TEXT).first.wait_for(  # type: ignore[attr-defined]
                        timeout=PAGE_TIMEOUT_MS)
                except PlaywrightTimeout:
                    return float("inf")  # never ready: counted, and shown as over the timeout
                return time.perf_counter() - t

            return list(await asyncio.gather(*(one(t) for t in tabs)))
        finally:
            await browser.close()


def browsers(base: str, job: dict[str, object]) -> tuple[list[float], list[float], list[float]]:
    """(one session alone, idle; 20 sessions at once, idle; 20 sessions at once while 2 jobs run) page-ready
    times: the middle one tells the 20 browsers' own cost on this machine from the jobs' and the server's."""
    alone = [asyncio.run(_sessions(base, 1))[0] for _ in range(3)]
    crowd = asyncio.run(_sessions(base, SESSIONS))
    running = [requests.post(f"{base}/api/v1/jobs", headers=HEADERS, json=job, timeout=60).json()["id"]
               for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # both jobs on a worker, not waiting
            states = [requests.get(f"{base}/api/v1/jobs/{j}", headers=HEADERS, timeout=60).json()["status"]
                      for j in running]
            if all(s == "running" for s in states):
                break
            time.sleep(0.5)
        together = asyncio.run(_sessions(base, SESSIONS))
    finally:
        _cancel_all(base, running)
    return alone, crowd, together


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-browser", action="store_true", help="leave out the 20 browser sessions")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qlab-server-load-"))
    demo = _demo(folder)
    data = folder / "lab"
    data.mkdir()
    with running_server(data, QLAB_WORKERS="2") as base:
        with demo.open("rb") as fh:
            model = requests.post(f"{base}/api/v1/models", headers=HEADERS, files={"file": ("demo.h5", fh)},
                                  data={"name": "load-demo"}, timeout=300).json()["id"]
        dataset = requests.post(f"{base}/api/v1/datasets", headers=HEADERS, data={"source": "digits"},
                                timeout=120).json()["id"]
        convert = {"kind": "convert", "params": {"model_id": model, "dataset_id": dataset, "recipes": ["int8"],
                                                 "calibration_samples": 20, "bench": False}}
        done = requests.post(f"{base}/api/v1/jobs", headers=HEADERS, json=convert, timeout=60).json()["id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and requests.get(f"{base}/api/v1/jobs/{done}", headers=HEADERS,
                                                           timeout=60).json()["status"] in ("queued", "running"):
            time.sleep(0.5)

        idle, during, submit_times, accepted = submissions(base, convert)
        print(f"1. {SUBMISSIONS} simultaneous submissions ({accepted} accepted, each answered in p50 "
              f"{statistics.median(submit_times) * 1000:.0f} ms, max {max(submit_times) * 1000:.0f} ms): "
              f"/_stcore/health p99 {pct(during, 99) * 1000:.0f} ms over {len(during)} probes "
              f"(idle p99 {pct(idle, 99) * 1000:.0f} ms) -> {'met' if pct(during, 99) < 1 else 'MISSED'} (< 1 s)")

        alone, together = reads(base)
        p50 = statistics.median(together)
        print(f"2. {READS} concurrent API reads: p50 {p50 * 1000:.0f} ms, p99 {pct(together, 99) * 1000:.0f} ms "
              f"(one at a time: p50 {statistics.median(alone) * 1000:.0f} ms) -> "
              f"{'met' if p50 < 0.3 else 'MISSED'} (p50 < 300 ms)")

        if not args.skip_browser:
            qat = {"kind": "qat", "params": {"model_id": model, "dataset_id": dataset, "epochs": 500}}
            alone_pages, crowd, pages = browsers(base, qat)
            p95 = pct(pages, 95)
            never = sum(t == float("inf") for t in crowd + pages)
            if never:
                print(f"   {never} session(s) were not ready after {PAGE_TIMEOUT_MS // 1000} s (shown as inf)")
            print(f"3. {SESSIONS} concurrent browser sessions on the overview while 2 jobs run: page ready p95 "
                  f"{p95:.2f} s, p50 {statistics.median(pages):.2f} s (the same {SESSIONS} with no job: p95 "
                  f"{pct(crowd, 95):.2f} s; one session alone, idle: p50 {statistics.median(alone_pages):.2f} s) "
                  f"-> {'met' if p95 < 3 else 'MISSED'} (p95 < 3 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
