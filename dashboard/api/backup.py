"""`POST /api/v1/backup`: the server, which holds the DuckDB file, backs its own lab up and sends it as a tar.

DuckDB lets one process open the file, so a backup of a running lab is made by that process: the store
checkpoints and copies its file under the lock every write takes (`qcore.store.backup`), jobs and pages
go on, and the copy is packed and streamed to the admin who asked (`qlab --server URL backup DIR`).
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from dashboard.api.http import PREFIX, ApiRoute
from dashboard.services.access import Action
from dashboard.services.lab import lab
from qcore.store.backup import backup
from qcore.store.files import disk_writes


def _pack(data_dir: Path) -> tuple[Path, Path]:
    """Backs the lab up into a temp folder under the data dir and packs it; returns (tar, folder to delete)."""
    the_lab = lab()
    tmp = Path(tempfile.mkdtemp(prefix=".backup-", dir=data_dir))
    try:
        made = backup(the_lab.store, the_lab.data_dir, tmp / "lab")
        archive = tmp / "lab.tar"
        with disk_writes(archive), tarfile.open(archive, "w") as tar:
            for path in sorted(Path(made.path).rglob("*")):
                tar.add(path, arcname=str(path.relative_to(made.path)), recursive=False)
        return archive, tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


async def make_backup(request: Request) -> Response:
    archive, tmp = await run_in_threadpool(_pack, lab().data_dir)
    return FileResponse(archive, media_type="application/x-tar", filename="qlab-backup.tar",
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


ROUTES = (
    ApiRoute("POST", f"{PREFIX}/backup", make_backup,
             "a consistent backup of this lab (database, blobs, board tokens, uploads) as a tar; "
             "`qlab --server URL backup DIR` unpacks it", action=Action.BACKUP,
             responses={200: {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}),
)
