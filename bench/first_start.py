"""A fresh lab's first start, as `make dashboard` does it, timed from the process start.

What a new user waits for, each from the moment `python -m dashboard.serve` is started on an empty data dir
(the venv already installed): the server answers; the overview is ready in headless Chromium; the first-start
job (train the demo CNN on digits, convert every recipe, evaluate, time each variant on the host) has a worker;
it is finished; the overview shows the demo's variants without a reload. The server runs with its defaults
(workers, quick lane); the README's first-start sentence quotes this script.

Run: make bench, or .venv/bin/python -m qcore.quiet bench/first_start.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.e2e.serving import ADMIN_TOKEN, running_server  # noqa: E402

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TIMEOUT_S = 600
# what the overview shows once its script has run, and once the demo's variants are stored
READY_TEXT = "Best variant per model"
DEMO_TEXT = "demo-digits-cnn"


def _watch_job(base: str, t0: float, marks: dict[str, float], done: threading.Event) -> None:
    """Polls the first-start job (job 1 of a fresh lab) and notes when it runs and when it ends."""
    while not done.is_set() and time.monotonic() - t0 < TIMEOUT_S:
        try:
            job = requests.get(f"{base}/api/v1/jobs/1", headers=HEADERS, timeout=10).json()
        except (requests.RequestException, ValueError):
            job = {}
        status = job.get("status")
        if status == "running" and "job running" not in marks:
            marks["job running"] = time.monotonic() - t0
        if status in ("done", "failed", "cancelled"):
            marks[f"job {status}"] = time.monotonic() - t0
            done.set()
            return
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qlab-first-start-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        t0 = time.monotonic()
        # the defaults of `make dashboard`: bootstrap on, the default worker counts
        with running_server(Path(tmp), bootstrap=True, QLAB_QUICK_WORKERS="1") as base:
            marks["server answers"] = time.monotonic() - t0
            done = threading.Event()
            watcher = threading.Thread(target=_watch_job, args=(base, t0, marks, done), daemon=True)
            watcher.start()
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(base)
            page.get_by_text(READY_TEXT).first.wait_for(state="attached", timeout=TIMEOUT_S * 1000)
            marks["overview ready"] = time.monotonic() - t0
            # table cells sit under a canvas: attached, not visible
            page.get_by_text(DEMO_TEXT).first.wait_for(state="attached", timeout=TIMEOUT_S * 1000)
            marks["demo variants shown"] = time.monotonic() - t0
            done.wait(TIMEOUT_S)
            variants = requests.get(f"{base}/api/v1/variants", headers=HEADERS, timeout=30).json()
        browser.close()
    doc: dict[str, Any] = {"seconds_from_process_start": {k: round(v, 1) for k, v in marks.items()},
                           "variants": len(variants) if isinstance(variants, list) else None}
    if args.json:
        print(json.dumps(doc))
        return
    print("first start of a fresh lab (seconds from `python -m dashboard.serve`):")
    for name, t in sorted(marks.items(), key=lambda kv: kv[1]):
        print(f"  {name:<22} {t:6.1f}")
    print(f"  variants stored: {doc['variants']}")


if __name__ == "__main__":
    main()
