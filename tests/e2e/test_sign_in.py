"""Sign-in end to end: st.login against a real OIDC provider process on 127.0.0.1, roles from the store."""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dashboard.services.children import free_port
from qcore.qtyping import LoadedModel, Role
from qcore.store import Store, accounts
from tests.e2e.serving import ADMIN_TOKEN, running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]
USERS = {"admin": Role.ADMIN, "member": Role.MEMBER, "member2": Role.MEMBER, "viewer": Role.VIEWER}
# each person's API token (made in the store before the server starts)
TOKENS: dict[str, str] = {}
# the server's per-person limit of queued + running jobs here
MAX_ACTIVE = 2
TIMEOUT_MS = 60_000
JOB_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`oidc-provider-mock` on a free loopback port, with one predefined user per role; its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port)]
    for sub in USERS:
        cmd += ["--user-claims", json.dumps({"sub": sub, "email": f"{sub}@lab.example", "name": sub.title()})]
    log = tmp_path_factory.mktemp("oidc") / "oidc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/.well-known/openid-configuration", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"oidc-provider-mock did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, provider: str, demo: LoadedModel) -> Iterator[str]:
    """The dashboard with [auth] pointing at the provider; the store knows each user's role; demo uploaded."""
    data = tmp_path_factory.mktemp("signin-data")
    with Store(data / "qlab.duckdb") as store:
        for sub, role in USERS.items():
            accounts.sign_in(store, f"{sub}@lab.example", sub.title())  # the first (admin) becomes admin
            if role is not Role.ADMIN:
                accounts.set_role(store, f"{sub}@lab.example", role)
            TOKENS[sub] = accounts.create_token(store, f"{sub}@lab.example", "e2e")
    port = free_port()
    secrets_file = data / "secrets.toml"
    secrets_file.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "qlab-test"\n'
        'client_secret = "qlab-test-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
    )
    with running_server(data, QLAB_SECRETS_FILE=str(secrets_file), QLAB_PORT=str(port),
                        QLAB_MAX_ACTIVE_JOBS=str(MAX_ACTIVE)) as base:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with open(demo.path, "rb") as fh:
            r = requests.post(f"{base}/api/v1/models", headers=headers, files={"file": ("demo.h5", fh)},
                              data={"name": "signin-demo"}, timeout=120)
        assert r.status_code == 201, r.text
        r = requests.post(f"{base}/api/v1/datasets", headers=headers, data={"source": "digits"}, timeout=60)
        assert r.status_code == 201, r.text
        yield base


# the browser is the e2e session's (tests/e2e/conftest.py): Playwright's sync API cannot run twice at once


def _tab(browser, server: str):  # one context per person: separate cookies
    tab = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    return tab


def sign_in(browser, server: str, sub: str):
    """Signs `sub` in through the provider's form; returns the tab on the overview."""
    tab = _tab(browser, server)
    tab.goto(server)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url(re.compile(r"^http://127\.0\.0\.1:\d+/oauth2/authorize"), timeout=TIMEOUT_MS)
    tab.locator(f'button[name="sub"][value="{sub}"]').click()
    tab.wait_for_url(re.compile(re.escape(server)), timeout=TIMEOUT_MS)
    tab.get_by_text(f"{sub}@lab.example").first.wait_for(state="attached")
    return tab


def test_signed_out_visitor_sees_only_sign_in(browser, server: str) -> None:
    tab = _tab(browser, server)
    for path in ("", "models", "boards", "reports?report=whatever"):
        tab.goto(f"{server}/{path}")
        tab.get_by_role("button", name="Sign in").wait_for()
        assert tab.get_by_text("Models & data").count() == 0
        assert tab.locator('[data-testid="stSidebarNav"]').count() == 0
    tab.context.close()


def test_viewer_cannot_reach_models(browser, server: str) -> None:
    tab = sign_in(browser, server, "viewer")
    tab.goto(f"{server}/models")
    tab.locator('[data-testid="stMain"]').wait_for()
    tab.wait_for_timeout(3000)
    assert tab.locator('[data-testid="stFileUploader"]').count() == 0
    assert tab.get_by_role("button", name="Add model").count() == 0
    nav = tab.locator('[data-testid="stSidebarNav"]')
    nav.get_by_text("Compare").wait_for()
    assert nav.get_by_text("Models & data").count() == 0 and nav.get_by_text("Quantize").count() == 0
    assert not tab.url.rstrip("/").endswith("/models")
    tab.context.close()


def test_member_can_convert(browser, server: str) -> None:
    tab = sign_in(browser, server, "member")
    tab.goto(f"{server}/quantize")
    tab.get_by_role("heading", name="Quantize", exact=True).wait_for()
    run = tab.get_by_role("button", name="Run", exact=True)
    tab.wait_for_function("b => !b.disabled", arg=run.element_handle(), timeout=TIMEOUT_MS)
    run.click()
    tab.get_by_text(re.compile(r"job #\d+ \(convert\) finished")).first.wait_for(state="attached",
                                                                                timeout=JOB_TIMEOUT_MS)
    # the boards page shows a member the boards but not the admin's registration form
    tab.goto(f"{server}/boards")
    tab.get_by_role("heading", name="Boards", exact=True).wait_for()
    tab.wait_for_timeout(2000)
    assert tab.get_by_text("Register a board").count() == 0
    tab.context.close()
    models = requests.get(f"{server}/api/v1/variants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                          timeout=10).json()
    assert {v["created_by"] for v in models} == {"member@lab.example"}


def test_admin_can_edit_boards(browser, server: str) -> None:
    tab = sign_in(browser, server, "admin")
    tab.goto(f"{server}/boards")
    tab.get_by_role("heading", name="Boards", exact=True).wait_for()
    tab.get_by_text("Register a board").first.click()
    tab.get_by_label("name").first.fill("imx8mp-lab-2")
    tab.get_by_label("agent URL").first.fill("http://127.0.0.1:9")
    tab.get_by_role("button", name="Register", exact=True).click()
    tab.get_by_text("board 'imx8mp-lab-2' registered").first.wait_for(state="attached")
    tab.context.close()


def test_viewer_with_a_report_link_sees_only_that_report(browser, server: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    variants = requests.get(f"{server}/api/v1/variants", headers=headers, timeout=30).json()
    r = requests.post(f"{server}/api/v1/reports", headers=headers, timeout=60,
                      json={"title": "for viewers", "variant_ids": [variants[0]["variant_id"]]})
    assert r.status_code == 201, r.text
    tab = sign_in(browser, server, "viewer")
    tab.goto(r.json()["url"])
    tab.get_by_text("for viewers").first.wait_for()
    assert tab.locator('[data-testid="stSidebarNav"]').count() == 0
    tab.goto(f"{server}/compare?report={r.json()['id']}")
    tab.get_by_text("for viewers").first.wait_for()
    assert tab.locator('[data-testid="stSidebarNav"]').count() == 0
    tab.context.close()


def _api(server: str, method: str, path: str, who: str, **kw: object) -> requests.Response:
    token = ADMIN_TOKEN if who == "admin" else TOKENS[who]
    return requests.request(method, f"{server}/api/v1{path}", headers={"Authorization": f"Bearer {token}"},
                            timeout=60, **kw)  # type: ignore[arg-type]


def _wait_job(server: str, job_id: int, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _api(server, "GET", f"/jobs/{job_id}", "admin").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end in {timeout} s")


def test_viewer_pinned_to_a_report_link_reaches_no_other_page_or_report(browser, server: str) -> None:
    variants = _api(server, "GET", "/variants", "admin").json()
    made = {}
    for title in ("shared with the viewer", "the team's own report"):
        r = _api(server, "POST", "/reports", "member", json={"title": title, "variant_ids": [variants[0]["variant_id"]]})
        assert r.status_code == 201, r.text
        made[title] = r.json()["id"]
    # a viewer without a link: the read-only pages, but no report list, no report making, no import
    tab = sign_in(browser, server, "viewer")
    tab.goto(f"{server}/reports")
    tab.get_by_text("Open a report from the link someone shared with you.").wait_for()
    assert tab.get_by_text("the team's own report").count() == 0
    assert tab.get_by_text("Make a report").count() == 0 and tab.get_by_text("Import a bundle").count() == 0
    # with the link, the browser session is pinned to that report, whatever URL comes next
    tab.goto(f"{server}/reports?report={made['shared with the viewer']}")
    tab.get_by_text("shared with the viewer").first.wait_for()
    for path in ("overview", "compare", "reports", "settings", "models", "?report=", "reports?report=%2e%2e"):
        tab.goto(f"{server}/{path}")
        tab.get_by_text("shared with the viewer").first.wait_for()
        assert tab.locator('[data-testid="stSidebarNav"]').count() == 0
        assert tab.get_by_text("the team's own report").count() == 0
        assert tab.get_by_text("Best variant per model").count() == 0
    tab.context.close()


def test_cancel_and_the_job_limit_pass_the_same_checks_on_the_pages(browser, server: str) -> None:
    r = _api(server, "GET", "/models", "admin").json()
    long_qat = {"kind": "qat", "params": {"model_id": r[0]["id"], "dataset_id": 1, "epochs": 500}}
    jobs: list[int] = []
    try:
        for _ in range(MAX_ACTIVE):
            r = _api(server, "POST", "/jobs", "member", json=long_qat)
            assert r.status_code == 202, r.text
            jobs.append(r.json()["id"])
        limit_words = f"member@lab.example already has {MAX_ACTIVE} job(s) queued or running"
        r = _api(server, "POST", "/jobs", "member", json=long_qat)
        assert r.status_code == 429 and r.json()["error"].startswith(limit_words)
        assert _api(server, "DELETE", f"/jobs/{jobs[0]}", "member2").status_code == 403
        # a second member and a viewer see the member's jobs, without a Cancel button
        for who in ("member2", "viewer"):
            tab = sign_in(browser, server, who)
            tab.goto(f"{server}/overview")
            tab.get_by_text(re.compile(rf"job #{jobs[0]} \(qat\)")).first.wait_for()
            tab.wait_for_timeout(1500)
            assert tab.locator(f".st-key-overview_cancel_{jobs[0]} button").count() == 0, who
            tab.context.close()
        # the member past the limit gets the API's words on the Quantize page
        tab = sign_in(browser, server, "member")
        tab.goto(f"{server}/quantize")
        tab.get_by_role("heading", name="Quantize", exact=True).wait_for()
        run = tab.get_by_role("button", name="Run", exact=True)
        tab.wait_for_function("b => !b.disabled", arg=run.element_handle(), timeout=TIMEOUT_MS)
        run.click()
        tab.get_by_text(re.compile(re.escape(limit_words))).first.wait_for()
        # and cancels their own job from the overview
        tab.goto(f"{server}/overview")
        cancel = tab.locator(f".st-key-overview_cancel_{jobs[0]} button").first
        cancel.wait_for()
        # the overview's job list reruns every second, so the button is often mid-rerun (inert): click it as a
        # script would rather than wait for a still moment
        cancel.dispatch_event("click")
        assert _wait_job(server, jobs[0])["status"] == "cancelled"
        tab.context.close()
    finally:
        for job_id in jobs:
            _api(server, "DELETE", f"/jobs/{job_id}", "admin")
        for job_id in jobs:
            _wait_job(server, job_id)


def test_first_sign_in_on_a_fresh_store_is_admin(tmp_path: Path) -> None:
    with Store(tmp_path / "qlab.duckdb") as store:
        assert accounts.sign_in(store, "first@lab.example").role is Role.ADMIN
        assert accounts.sign_in(store, "second@lab.example").role is Role.VIEWER
        assert accounts.sign_in(store, "boss@lab.example", admins={"boss@lab.example"}).role is Role.ADMIN
        with pytest.raises(Exception, match="last admin|no user"):
            accounts.set_role(store, "nobody@lab.example", "admin")

