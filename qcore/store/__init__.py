"""The DuckDB store: today's schema in `schema.py`, its history in `migrations.py`, one owner that writes.

`Store` is composed of one mixin per row group over `base.StoreBase` (the connection and its
transactions), the way MLflow's tracking store grows: models & datasets, variants & evaluations,
benchmarks, debug & tune runs, boards & the farm, jobs, reports. Users and tokens are in `accounts.py`.
"""

from qcore.store.actor import ACTOR
from qcore.store.base import StoreBase
from qcore.store.benchmarks import BenchmarkRows
from qcore.store.boards import BoardRows
from qcore.store.debug import DebugRows
from qcore.store.files import (
    check_sha256,
    sha256_bytes,
    write_atomic,
)
from qcore.store.jobs import JobRows
from qcore.store.migrations import MIGRATION_0008, MIGRATIONS
from qcore.store.models import ModelRows
from qcore.store.reports import ReportRows
from qcore.store.variants import VariantRows

__all__ = [
    "ACTOR",
    "MIGRATIONS",
    "MIGRATION_0008",
    "Store",
    "check_sha256",
    "sha256_bytes",
    "write_atomic",
]


class Store(ModelRows, VariantRows, BenchmarkRows, DebugRows, BoardRows, JobRows, ReportRows, StoreBase):
    """The one owner of the DuckDB file. Threads share it; each call takes its own cursor.

    Args:
        path: the database file (created if missing, brought to today's schema if older).
        blob_dir: where `.tflite` files are kept, named by sha256. Defaults to `<db dir>/blobs`.
        token_dir: where board tokens are kept, one 0600 file each. Defaults to `<db dir>/board_tokens`.

    Raises:
        QlabError: when another process holds the file.
    """
