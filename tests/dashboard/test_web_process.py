"""The web process never loads TensorFlow, Keras or the LiteRT runtime: every page renders without them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qcore.qtyping import LoadedModel

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from pathlib import Path
from streamlit.testing.v1 import AppTest
from dashboard.services.lab import lab
from qcore.jobs.contract import DemoParams
the_lab = lab()  # this process is the web process: it converts through a worker, then renders every page
job = the_lab.runner.submit(DemoParams(recipes="float32,int8"))
assert str(the_lab.runner.wait(job, timeout=600)) == "done", the_lab.store.job(job).error
pages = sorted(Path(sys.argv[1]).glob("*.py"))
errors = {}
for page in pages:
    at = AppTest.from_file(str(page), default_timeout=120).run()
    if at.exception:
        errors[page.stem] = [str(e.value)[:200] for e in at.exception]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization")
               or m == "ai_edge_litert.interpreter")
print(json.dumps({"pages": [p.stem for p in pages], "heavy": heavy, "errors": errors}))
"""


@pytest.mark.slow
def test_every_page_renders_without_tensorflow_or_litert(tmp_path: Path, demo: LoadedModel,
                                                          job_cluster: str) -> None:
    (tmp_path / "demo").mkdir()
    shutil.copy(demo.path, tmp_path / "demo" / "demo.h5")
    env = dict(os.environ, QLAB_DB=str(tmp_path / "qlab.duckdb"), QLAB_DATA_DIR=str(tmp_path),
               QLAB_BOOTSTRAP="0", QLAB_DASK_SCHEDULER=job_cluster, PYTHONPATH=str(REPO))
    env.pop("QLAB_AGENT_URL", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "dashboard" / "app_pages")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got["pages"]) >= 10
    assert got["errors"] == {}
    assert got["heavy"] == [], got["heavy"]
