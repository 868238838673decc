"""Schemathesis against a fresh server's API without an example limit: prints operations, cases and failures.

Runs every phase (examples, coverage, fuzzing, stateful) for --max-time seconds (default 600)
with the admin token; the bounded run is tests/e2e/test_api_schema.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.serving import running_server  # noqa: E402
from tests.e2e.test_api_schema import schemathesis  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-time", type=int, default=600, help="seconds of fuzzing (default 600)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp)) as base:
        start = time.monotonic()
        out = schemathesis(base, "--max-time", str(args.max_time))
        took = time.monotonic() - start
    summary = [ln for ln in out.stdout.splitlines() if any(w in ln for w in ("passed", "failed", "Test cases",
                                                                              "API Operations", "error"))]
    print("\n".join(summary[-12:]))
    print(f"api_fuzz: schemathesis exit {out.returncode} after {took:.0f} s")
    if out.returncode:
        print(out.stdout[-8000:])
    return out.returncode


if __name__ == "__main__":
    sys.exit(main())
