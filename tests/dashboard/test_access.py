"""The rule book every page action and API route passes through: roles, owners, the per-person job limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.services import access, uploads
from dashboard.services.access import Action
from dashboard.services.lab import Lab
from qcore.jobs.contract import AddModelParams, ConvertParams
from qcore.qtyping import JobStatus, QlabError, Role
from qcore.store import ACTOR
from qcore.store.accounts import Principal

VIEWER = Principal("viewer@lab.example", Role.VIEWER)
MEMBER = Principal("member@lab.example", Role.MEMBER)
MEMBER2 = Principal("member2@lab.example", Role.MEMBER)
ADMIN = Principal("admin@lab.example", Role.ADMIN)


def _queued_row(the_lab: Lab, who: Principal) -> int:
    """A job row `who` queued (no worker runs it: the limit counts rows, not work)."""
    token = ACTOR.set(who.email)
    try:
        return the_lab.store.create_job("convert", {})
    finally:
        ACTOR.reset(token)


@pytest.mark.parametrize("action", list(Action))
def test_allowed_every_action_has_a_role_and_viewers_only_read(action: Action) -> None:
    assert action in access.NEEDS
    assert access.allowed(VIEWER, action) is (action in (Action.READ, Action.TOKENS))
    assert access.allowed(ADMIN, action)


def test_check_cancel_owner_or_admin_only() -> None:
    access.check(MEMBER, Action.CANCEL, owner=MEMBER.email)
    access.check(ADMIN, Action.CANCEL, owner=MEMBER.email)
    with pytest.raises(access.Denied, match="job 7 is member@lab.example's; only they or an admin"):
        access.check(MEMBER2, Action.CANCEL, owner=MEMBER.email, what="job 7")
    with pytest.raises(access.Denied, match="viewer@lab.example has the viewer role; job 7 needs member"):
        access.check(VIEWER, Action.CANCEL, owner=VIEWER.email, what="job 7")


def test_submit_viewer_refused_and_nothing_queued(empty_lab: Lab) -> None:
    with pytest.raises(access.Denied, match="viewer role; a convert job needs member"):
        access.submit(empty_lab, VIEWER, ConvertParams(model_id=1, dataset_id=1))
    assert empty_lab.store.jobs() == []


def test_submit_limit_per_person_429_in_words(empty_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(access.ENV_MAX_ACTIVE, "2")
    for _ in range(2):
        _queued_row(empty_lab, MEMBER)
    with pytest.raises(access.TooManyJobs, match=r"member@lab.example already has 2 job\(s\) queued or running, "
                                                 r"the limit per person \(QLAB_MAX_ACTIVE_JOBS=2\)") as got:
        access.submit(empty_lab, MEMBER, ConvertParams(model_id=1, dataset_id=1))
    assert got.value.status == 429
    assert len(empty_lab.store.jobs()) == 2
    # the limit is per person, and admins are exempt unless QLAB_MAX_ACTIVE_JOBS_ADMIN says otherwise
    assert access.max_active_jobs(MEMBER2) == 2 and access.max_active_jobs(ADMIN) is None
    monkeypatch.setenv(access.ENV_MAX_ACTIVE_ADMIN, "1")
    _queued_row(empty_lab, ADMIN)
    with pytest.raises(access.TooManyJobs, match="QLAB_MAX_ACTIVE_JOBS=1"):
        access.submit(empty_lab, ADMIN, ConvertParams(model_id=1, dataset_id=1))


def test_submit_records_who_and_counts_toward_the_limit(empty_lab: Lab, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv(access.ENV_MAX_ACTIVE, "1")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not a model")
    params = AddModelParams(filename="garbage.h5")
    extra = {"upload_path": str(garbage), "source_path": str(garbage)}
    job_id = access.submit(empty_lab, MEMBER2, params, extra=extra)
    assert empty_lab.store.job(job_id).created_by == MEMBER2.email
    with pytest.raises(access.TooManyJobs):
        empty_lab.runner.wait(access.submit(empty_lab, MEMBER2, params, extra=extra), timeout=120)
    empty_lab.runner.wait(job_id, timeout=120)  # not a model: it fails, and frees the slot
    assert empty_lab.store.job(job_id).status is JobStatus.FAILED
    empty_lab.runner.wait(access.submit(empty_lab, MEMBER2, params, extra=extra), timeout=120)


def test_max_active_jobs_bad_value_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(access.ENV_MAX_ACTIVE, "lots")
    with pytest.raises(QlabError, match="QLAB_MAX_ACTIVE_JOBS='lots': expected a whole number"):
        access.max_active_jobs(MEMBER)


def test_cancel_someone_elses_job_refused_and_it_stays_queued(empty_lab: Lab) -> None:
    job_id = _queued_row(empty_lab, MEMBER)
    with pytest.raises(access.Denied, match=f"job {job_id} is member@lab.example's"):
        access.cancel(empty_lab, MEMBER2, job_id)
    with pytest.raises(access.Denied):
        access.cancel(empty_lab, VIEWER, job_id)
    assert empty_lab.store.job(job_id).status is JobStatus.QUEUED


def test_uploads_refused_to_a_viewer_and_trust_to_a_member(empty_lab: Lab) -> None:
    with pytest.raises(access.Denied, match="adding a dataset needs member"):
        uploads.add_digits(empty_lab, input_scale=1.0, input_offset=0.0, who=VIEWER)
    with pytest.raises(access.Denied, match="a trusted upload needs admin"):
        uploads.add_model(empty_lab, "m.h5", b"x", trusted=True, who=MEMBER)
    with pytest.raises(access.Denied, match="importing a .tflite needs member"):
        uploads.add_tflite(empty_lab, "m.tflite", b"x", who=VIEWER)
    assert empty_lab.store.datasets().empty and not (empty_lab.data_dir / "uploads").exists()


def test_register_board_admin_only_and_inside_the_allowed_networks(empty_lab: Lab,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(access.Denied, match="registering a board needs admin"):
        access.register_board(empty_lab, MEMBER, "b", "http://127.0.0.1:9", None)
    monkeypatch.setenv("QLAB_BOARD_NETWORKS", "10.0.0.0/8, 192.168.1.0/24")
    with pytest.raises(QlabError, match=r"board URL http://169.254.169.254/: 169.254.169.254 is 169.254.169.254, "
                                        r"outside QLAB_BOARD_NETWORKS \(10.0.0.0/8, 192.168.1.0/24\)"):
        access.register_board(empty_lab, ADMIN, "metadata", "http://169.254.169.254/", None)
    with pytest.raises(QlabError, match="localhost is 127.0.0.1, outside"):
        access.register_board(empty_lab, ADMIN, "me", "http://localhost:8501", None)
    access.register_board(empty_lab, ADMIN, "lab-1", "http://10.1.2.3:8765", None)
    assert [b.name for b in empty_lab.store.boards()] == ["lab-1"]
    monkeypatch.setenv("QLAB_BOARD_NETWORKS", "10.0.0.0/33")
    with pytest.raises(QlabError, match="QLAB_BOARD_NETWORKS: '10.0.0.0/33' is not a network"):
        access.register_board(empty_lab, ADMIN, "lab-2", "http://10.1.2.4:8765", None)
