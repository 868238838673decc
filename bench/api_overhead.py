"""A demo conversion through `qlab --server` on loopback vs the same conversion local, end to end.

Both sides are the `qlab` command as a user runs it (a fresh process each time): local mode loads
TensorFlow, converts and stores into its own DuckDB file; remote mode uploads the .h5, queues the
job on a warm server (one conversion done before timing) and follows it. Prints the medians and
the ratio remote / local (target: at most 1.15).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.serving import ADMIN_TOKEN, running_server  # noqa: E402

REPEATS = 3
RECIPES = "float32,int8,uint8"
CALIBRATION = "50"


def qlab(*argv: str, env: dict[str, str] | None = None) -> tuple[float, dict]:
    """Runs `qlab ... --json` once; returns (seconds, its JSON)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "qcore.cli", *argv, "--json"], cwd=REPO, capture_output=True,
                         text=True, env=env or dict(os.environ), timeout=900)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"qlab {' '.join(argv)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return took, json.loads(out.stdout)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        qlab("demo", "--out", str(work / "demo"))
        model = str(work / "demo" / "demo.h5")
        (work / "server").mkdir()
        with running_server(work / "server") as base:
            env = dict(os.environ, QLAB_TOKEN=ADMIN_TOKEN)
            remote_args = ("--server", base, "convert", model, "--data", "digits", "--recipes", RECIPES,
                           "--calibration-samples", CALIBRATION)
            qlab(*remote_args, env=env)  # warm: the server has imported TensorFlow and converted once
            local_times, remote_times = [], []
            for i in range(REPEATS):  # interleaved, so both see the same machine load
                t, result = qlab("convert", model, "--data", "digits", "--recipes", RECIPES, "--calibration-samples",
                                 CALIBRATION, "--db", str(work / f"local{i}.duckdb"), "--out", str(work / f"out{i}"))
                local_times.append(t)
                assert all(v["status"] == "ok" for v in result["variants"])
                t, result = qlab(*remote_args, env=env)
                remote_times.append(t)
                assert all(v["status"] == "ok" for v in result["variants"])
    local, remote = statistics.median(local_times), statistics.median(remote_times)
    print(f"demo conversion ({RECIPES}, {CALIBRATION} calibration samples), median of {REPEATS}, end to end:")
    print(f"  local  qlab convert:            {local:6.2f} s  {' '.join(f'{t:.2f}' for t in local_times)}")
    print(f"  remote qlab --server convert:   {remote:6.2f} s  {' '.join(f'{t:.2f}' for t in remote_times)}")
    print(f"  remote / local: {remote / local:.2f}x (target <= 1.15x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
