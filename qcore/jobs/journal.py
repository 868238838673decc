"""A job's writes as a value: a worker records them in a `Journal`, the owner replays them in one transaction.

Workers never open the DuckDB file (only one process may). The engine's functions take a
`store`; on a worker that store is a `Journal`: it has the same write methods, returns
placeholder ids, and answers the few reads a job needs from rows the owner sent along. The
owner's `replay` writes every recorded call with the real `Store`, in one transaction, and
maps placeholder ids (also inside the job's result) to the real ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qcore.qtyping import QlabError

if TYPE_CHECKING:
    from qcore.store import Store

# placeholder ids live far above any real id, so they cannot be mistaken for one
PLACEHOLDER_BASE = 7_000_000_000_000_000_000
# a placeholder path the owner replaces with where it kept a file the job made
PATH_PREFIX = "qlab-journal-file:"

# the Store methods a job may call to write; each is replayed as it was called
WRITES = (
    "add_model", "add_dataset", "set_reference", "save_variant", "add_evaluation", "add_benchmark",
    "save_debug_run", "save_tune_run", "set_model_summary", "free_variant_name",
)
# a placeholder string the owner replaces with what a call returned at write time (e.g. a free name)
VALUE_PREFIX = "qlab-journal-value:"


@dataclass(frozen=True)
class Call:
    """One recorded write: the Store method, its arguments, and the placeholder it returned."""

    method: str
    kwargs: dict[str, Any]
    args: tuple[Any, ...] = ()
    returned: int | str | None = None


@dataclass(frozen=True)
class KeptFile:
    """A file a job made that the owner keeps under its data directory (e.g. the trained demo model)."""

    placeholder: str
    relpath: str
    data: bytes


@dataclass
class Journal:
    """Stands in for the Store on a worker: records writes, answers reads from rows sent along.

    Args:
        blob_dir: the owner's blob folder, only to name paths in results (never opened here).
        boards: board name → (url, token), resolved by the owner.
        variant_ids_by_sha: the owner's sha256 → variant id of the variants this job touches.
    """

    blob_dir: str = ""
    boards: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    variant_ids_by_sha: dict[str, int] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    files: list[KeptFile] = field(default_factory=list)
    _next: int = 0

    def _placeholder(self) -> int:
        self._next += 1
        return PLACEHOLDER_BASE + self._next

    def _record(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], returns: bool = True) -> Any:
        returned = self._placeholder() if returns else None
        self.calls.append(Call(method=method, args=args, kwargs=kwargs, returned=returned))
        return returned

    # ---------------------------------------------------------------- writes (the Store's signatures)
    def add_model(self, **kwargs: Any) -> int:
        return int(self._record("add_model", (), kwargs))

    def add_dataset(self, **kwargs: Any) -> int:
        return int(self._record("add_dataset", (), kwargs))

    def set_reference(self, *args: Any, **kwargs: Any) -> None:
        self._record("set_reference", args, kwargs, returns=False)

    def save_variant(self, **kwargs: Any) -> int:
        return int(self._record("save_variant", (), kwargs))

    def add_evaluation(self, *args: Any, **kwargs: Any) -> int:
        return int(self._record("add_evaluation", args, kwargs))

    def add_benchmark(self, *args: Any, **kwargs: Any) -> int:
        return int(self._record("add_benchmark", args, kwargs))

    def save_debug_run(self, **kwargs: Any) -> int:
        return int(self._record("save_debug_run", (), kwargs))

    def save_tune_run(self, **kwargs: Any) -> int:
        return int(self._record("save_tune_run", (), kwargs))

    def set_model_summary(self, *args: Any, **kwargs: Any) -> None:
        self._record("set_model_summary", args, kwargs, returns=False)

    def free_variant_name(self, *args: Any, **kwargs: Any) -> str:
        """A name the owner picks when it writes (it alone sees the variants already stored)."""
        self._next += 1
        placeholder = f"{VALUE_PREFIX}{self._next}"
        self.calls.append(Call(method="free_variant_name", args=args, kwargs=kwargs, returned=placeholder))
        return placeholder

    def keep_file(self, relpath: str, data: bytes) -> str:
        """Asks the owner to keep `data` at `<data dir>/<relpath>`; returns a path placeholder."""
        placeholder = f"{PATH_PREFIX}{len(self.files) + 1}"
        self.files.append(KeptFile(placeholder=placeholder, relpath=relpath, data=data))
        return placeholder

    # ---------------------------------------------------------------- reads a job may make
    def blob_path(self, sha256: str, suffix: str = ".tflite") -> Path:
        return Path(self.blob_dir or "blobs") / f"{sha256}{suffix}"

    def board_token(self, name: str) -> tuple[str, str | None]:
        if name not in self.boards:
            raise QlabError(f"no board named {name!r}; known: {', '.join(sorted(self.boards)) or 'none'}")
        return self.boards[name]

    def variant_id_for_sha(self, sha256: str) -> int | None:
        return self.variant_ids_by_sha.get(sha256)


def _substitute(value: Any, ids: Mapping[int, int], paths: Mapping[str, str]) -> Any:
    """`value` with placeholder ids and paths replaced, through dicts, lists, tuples and dataclasses."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return ids.get(value, value) if value > PLACEHOLDER_BASE else value
    if isinstance(value, str):
        return paths.get(value, value) if value.startswith((PATH_PREFIX, VALUE_PREFIX)) else value
    if isinstance(value, dict):
        return {k: _substitute(v, ids, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, ids, paths) for v in value]
    if isinstance(value, tuple):
        return tuple(_substitute(v, ids, paths) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _substitute(getattr(value, f.name), ids, paths) for f in dataclasses.fields(value)
                   if f.init}
        return dataclasses.replace(value, **changes)
    return value


def replay(journal: Journal, store: Store, data_dir: str | os.PathLike[str], result: Any = None) -> Any:
    """Writes a journal's calls with the real store in one transaction; returns `result` with real ids.

    Files the job asked to keep are written first (content-addressed, so a rollback leaves at
    most an unreferenced file, never a row that points nowhere).

    Raises:
        QlabError: for a call that is not a known write (nothing is written then).
    """
    for call in journal.calls:
        if call.method not in WRITES:
            raise QlabError(f"a job asked to write with {call.method!r}, which is not a store write")
    paths: dict[str, str] = {}
    root = Path(data_dir).resolve()
    for kept in journal.files:
        target = (root / kept.relpath).resolve()
        if root not in target.parents:
            raise QlabError(f"a job asked to keep a file outside the data directory: {kept.relpath!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != kept.data:
            from qcore.store import write_atomic

            write_atomic(target, kept.data)
        paths[kept.placeholder] = str(target)
    ids: dict[int, int] = {}
    with store.transaction():
        for call in journal.calls:
            args = _substitute(call.args, ids, paths)
            kwargs = _substitute(call.kwargs, ids, paths)
            got = getattr(store, call.method)(*args, **kwargs)
            if isinstance(call.returned, str):
                paths[call.returned] = str(got)
            elif call.returned is not None:
                ids[call.returned] = int(got)
    return _substitute(result, ids, paths)


def placeholders_in(values: Sequence[Any]) -> bool:
    """True when any value is still a placeholder id (a replay that missed one)."""
    return any(isinstance(v, int) and not isinstance(v, bool) and v > PLACEHOLDER_BASE for v in values)
