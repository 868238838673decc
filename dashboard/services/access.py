"""Who may do what: the one rule book the API's routes and the pages' buttons both pass through.

Every action that changes the lab (upload, run, cancel, report, import, boards, roles, tokens) is
checked here, on the server, whether it came from a page or from `/api/v1`; a page only hides what
this module would refuse anyway.
"""

from __future__ import annotations

import enum
import os
import threading
from typing import TYPE_CHECKING, Any

from qcore.boards.client import check_board_url
from qcore.jobs.contract import KIND_OF, JobParams
from qcore.qtyping import Job, JobStatus, QlabError, Role
from qcore.store import ACTOR, accounts
from qcore.store.accounts import Principal

if TYPE_CHECKING:
    from dashboard.services.lab import Lab


class Action(enum.StrEnum):
    """Everything a person can do on the server, by what it does rather than where it is."""

    READ = "read"  # pages, lists, results, report bundles by id
    UPLOAD = "upload"  # models, datasets, .tflite imports
    RUN = "run"  # queue a job of any kind (board runs included)
    CANCEL = "cancel"  # end someone's queued or running job (their own, or anyone's for an admin)
    REPORT = "report"  # make a report
    IMPORT = "import"  # import a report bundle
    LIST_REPORTS = "list reports"  # see every report (a viewer needs a report's link instead)
    BOARDS = "boards"  # register or re-point a board
    TRUST = "trust"  # vouch for a model the loading policy refuses
    ROLES = "roles"  # change people's roles
    TOKENS = "tokens"  # make and revoke one's own API tokens
    BACKUP = "backup"  # copy the whole lab: every user's results and the board tokens


# the least role each action needs; an action missing here is refused to everyone
NEEDS: dict[Action, Role] = {
    Action.READ: Role.VIEWER,
    Action.TOKENS: Role.VIEWER,
    Action.UPLOAD: Role.MEMBER,
    Action.RUN: Role.MEMBER,
    Action.CANCEL: Role.MEMBER,
    Action.REPORT: Role.MEMBER,
    Action.IMPORT: Role.MEMBER,
    Action.LIST_REPORTS: Role.MEMBER,
    Action.BOARDS: Role.ADMIN,
    Action.TRUST: Role.ADMIN,
    Action.ROLES: Role.ADMIN,
    Action.BACKUP: Role.ADMIN,
}

# QLAB_MAX_ACTIVE_JOBS: queued + running jobs one person may have at once (0: no limit)
ENV_MAX_ACTIVE = "QLAB_MAX_ACTIVE_JOBS"
# enough for a convert, a debug run and a board run side by side; the 21st submission of a burst waits its turn
DEFAULT_MAX_ACTIVE = 8
# QLAB_MAX_ACTIVE_JOBS_ADMIN: the same for admins (and QLAB_ADMIN_TOKEN, CI's token); unset: no limit
ENV_MAX_ACTIVE_ADMIN = "QLAB_MAX_ACTIVE_JOBS_ADMIN"
# a client told 429 may ask again after this many seconds
RETRY_AFTER_S = 10


class Refused(QlabError):
    """An action this person may not take now, in words; `status` is its HTTP status."""

    status = 403


class Denied(Refused):
    """The person's role does not allow the action (403)."""

    status = 403


class TooManyJobs(Refused):
    """The person already has QLAB_MAX_ACTIVE_JOBS jobs queued or running (429)."""

    status = 429


def allowed(who: Principal, action: Action, *, owner: str | None = None) -> bool:
    """True when `who` may take this action (on a row `owner` made, for CANCEL)."""
    needed = NEEDS.get(action)
    if needed is None or not who.role.allows(needed):
        return False
    if action is Action.CANCEL and owner is not None and owner != who.email:
        return who.role.allows(Role.ADMIN)
    return True


def check(who: Principal, action: Action, *, owner: str | None = None, what: str = "") -> None:
    """Refuses an action `who` may not take, in one line naming the person, the role and the action.

    Raises:
        Denied: for a role below the action's, or a job someone else owns.
    """
    if allowed(who, action, owner=owner):
        return
    needed = NEEDS.get(action, Role.ADMIN)
    subject = what or str(action)
    if who.role.allows(needed) and action is Action.CANCEL:
        raise Denied(f"{subject} is {owner}'s; only they or an admin may cancel it")
    raise Denied(f"{who.email} has the {who.role} role; {subject} needs {needed} (an admin changes roles on "
                 "the Settings page)")


def _limit(text: str | None, default: int | None) -> int | None:
    if text is None or not text.strip():
        return default
    raw = text.strip()
    if not raw.isdigit():
        raise QlabError(f"{ENV_MAX_ACTIVE}={raw!r}: expected a whole number of jobs (0: no limit)")
    return int(raw) or None


def max_active_jobs(who: Principal) -> int | None:
    """How many jobs `who` may have queued or running at once; None for no limit.

    Raises:
        QlabError: for a QLAB_MAX_ACTIVE_JOBS(_ADMIN) value that is not a whole number.
    """
    if who.role is Role.ADMIN:
        return _limit(os.environ.get(ENV_MAX_ACTIVE_ADMIN), None)
    return _limit(os.environ.get(ENV_MAX_ACTIVE), DEFAULT_MAX_ACTIVE)


def active_jobs(the_lab: Lab, who: Principal) -> int:
    """Jobs `who` has queued or running now."""
    row = the_lab.store._one("SELECT count(*) FROM jobs WHERE created_by = ? AND status IN (?, ?)",
                             [who.email, str(JobStatus.QUEUED), str(JobStatus.RUNNING)])
    return int(row[0]) if row else 0


# one check-then-queue at a time, so a burst cannot slip past the limit between the count and the insert
_QUEUE_LOCK = threading.Lock()


def submit(the_lab: Lab, who: Principal, params: JobParams, *, extra: dict[str, Any] | None = None) -> int:
    """Queues a job for `who` after the role check and the per-person limit; the job records who made it.

    Blocking (a database write and the runner's bookkeeping): the API calls it in a worker thread.

    Returns:
        The job id.

    Raises:
        Denied: for a viewer.
        TooManyJobs: when `who` already has their limit of jobs queued or running.
    """
    kind = KIND_OF.get(type(params))
    check(who, Action.RUN, what=f"a {kind} job" if kind else "running a job")
    limit = max_active_jobs(who)
    with _QUEUE_LOCK:
        if limit is not None:
            busy = active_jobs(the_lab, who)
            if busy >= limit:
                raise TooManyJobs(f"{who.email} already has {busy} job(s) queued or running, the limit per person "
                                  f"({ENV_MAX_ACTIVE}={limit}); wait for one to finish or cancel one, then try again")
        token = ACTOR.set(who.email)
        try:
            job_id = the_lab.runner.submit(params, extra=extra)
        finally:
            ACTOR.reset(token)
    accounts.stamp(the_lab.store, "jobs", job_id, who.email)
    return job_id


def cancel(the_lab: Lab, who: Principal, job_id: int) -> Job:
    """Cancels a queued or running job if `who` owns it or is an admin; returns the job as it is now.

    Raises:
        QlabError: for an unknown job.
        Denied: for a viewer, or a member cancelling someone else's job.
        Refused: (409) for a job that already ended.
    """
    job = the_lab.store.job(job_id)
    check(who, Action.CANCEL, owner=job.created_by, what=f"job {job_id}")
    if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        raise AlreadyEnded(f"job {job_id} already finished ({job.status})")
    the_lab.runner.cancel(job_id)
    return the_lab.store.job(job_id)


class AlreadyEnded(Refused):
    """A cancel of a job that is no longer queued or running (409)."""

    status = 409


def register_board(the_lab: Lab, who: Principal, name: str, url: str, token: str | None) -> None:
    """Registers (or re-points) a board for an admin, inside QLAB_BOARD_NETWORKS when that is set.

    Raises:
        Denied: for anyone but an admin.
        QlabError: for a URL outside the allowed networks, or a bad name or URL.
    """
    check(who, Action.BOARDS, what="registering a board")
    check_board_url(url)
    the_lab.store.add_board(name, url, token)
