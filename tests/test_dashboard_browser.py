"""The dashboard end to end, in headless Chromium, while a real worker runs a parent with
children.

``procstatus -A tests.support.dashboard_app dashboard --allow-actions`` runs in a process
of its own, as an operator starts it; a celery worker runs :class:`Shipment` and its
:class:`Parcel` children, each of which waits on a gate before each step of its progress.
The test opens the page, sees the counts and the children's progress change without a
reload, opens the parent's page from the list, cancels a child from its page with the
token, and sees a POST without the token refused. It writes the screenshots README
shows (``docs/dashboard-main.png``, ``docs/dashboard-parent.png``).

Debian's chromium (``/usr/bin/chromium``, installed by ``scripts/bootstrap.sh``) is driven
by playwright; no browser is downloaded. Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools import services
from devtools.services import REPO_ROOT, wait_for
from procstatus import ProcessStatus

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
APP = "tests.support.dashboard_app"
DOCS = REPO_ROOT / "docs"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def dashboard_worker(worker_env: dict, service_log_dir: Path) -> Iterator[services.Service]:
    """A worker for the dashboard models' queue: room for the three parcels at once."""
    from tests.support.dashboard_models import DASHBOARD_QUEUE

    service = services.start_worker(
        APP, service_log_dir, hostname=f"dash-{uuid.uuid4().hex[:6]}@%h",
        env={**worker_env, "PROCSTATUS_TEST_COMMAND_LOG": ""}, concurrency=3,
        queues=DASHBOARD_QUEUE,
    )
    try:
        yield service
    finally:
        service.kill_group()


@pytest.fixture(scope="module")
def dashboard(worker_env: dict, service_log_dir: Path) -> Iterator[dict[str, Any]]:
    """``procstatus -A tests.support.dashboard_app dashboard --allow-actions``: its URL and
    the token it printed."""
    port = services.free_port()
    log_path = service_log_dir / f"dashboard-{port}.log"
    env = {**os.environ, **worker_env, "PROCSTATUS_TEST_COMMAND_LOG": "", "PYTHONUNBUFFERED": "1"}
    env.pop("PROCSTATUS_DASHBOARD_TOKEN", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "procstatus", "-A", APP, "dashboard", "--port", str(port),
             "--allow-actions", "--refresh", "1"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        def printed_token() -> str | None:
            if process.poll() is not None:
                raise RuntimeError(f"the dashboard exited:\n{log_path.read_text()}")
            match = re.search(r"actions need this token: (\S+)", log_path.read_text())
            return match.group(1) if match and services.port_open("127.0.0.1", port) else None

        token = wait_for(printed_token, timeout=60, interval=0.1, what="the dashboard to start")
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "log": log_path}
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run ./scripts/bootstrap.sh (as root it "
                    "installs it with apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_gate(pk: Any, times: int = 1) -> None:
    from tests.support.dashboard_models import gate_key, redis_client

    redis_client().rpush(gate_key(pk), *([1] * times))


def test_the_dashboard_in_a_browser_while_a_worker_runs_a_parent_and_children(
    dashboard_worker, dashboard, browser, test_db, celery_app_under_test
):
    from playwright.sync_api import expect

    from tests.support.dashboard_models import Parcel, Shipment

    base, token = dashboard["url"], dashboard["token"]
    shipment = Shipment.create(name="north")
    shipment.pack(3)
    parcels: list[Any] = wait_for(
        lambda: (found := list(Parcel.objects(shipment=shipment.pk).order_by("number")))
        and len(found) == 3 and found,
        timeout=30, what="the shipment's three parcels",
    )
    p0, p1, p2 = (str(p.pk) for p in parcels)
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{base}/#token={token}")
        page.evaluate("window.__loadedOnce = true")
        assert "#token" not in page.url  # kept in the tab, out of the address
        parcel_bar = page.locator('figure[data-class="Parcel"] a[data-status="RUNNING"]')
        expect(parcel_bar).to_have_attribute("data-count", "3", timeout=WAIT_MS)
        waiting = page.locator('figure[data-class="Shipment"] a[data-status='
                               '"WAITING_FOR_RESULT"]')
        expect(waiting).to_have_attribute("data-count", "1", timeout=WAIT_MS)
        row0 = page.locator(f'#processing-list tr[data-id="{p0}"]')
        expect(row0).to_contain_text("33% 1/3", timeout=WAIT_MS)
        expect(row0).to_contain_text("weighing, step 1 of 3")

        open_gate(p0)  # parcel 0 moves to step 2: the list shows it, no reload
        # Polls until the page shows 2/3. Set within the throttle interval of 1/3, the value
        # is held back and written by the trailing write while the parcel waits on its gate.
        expect(row0).to_contain_text("67% 2/3", timeout=WAIT_MS)
        open_gate(p2, 2)  # parcel 2 runs to its end and fails
        failed_bar = page.locator('figure[data-class="Parcel"] a[data-status="FAILURE"]')
        expect(failed_bar).to_have_attribute("data-count", "1", timeout=WAIT_MS)
        expect(parcel_bar).to_have_attribute("data-count", "2", timeout=WAIT_MS)
        expect(page.locator("#failures .failure").filter(has_text="parcel 2 is torn")
               ).to_contain_text("1×", timeout=WAIT_MS)
        expect(page.locator(f'#processing-list tr[data-id="{p2}"]')).to_have_count(0)
        assert page.evaluate("window.__loadedOnce") is True  # all of it without a reload
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "dashboard-main.png"), full_page=True)

        # The parent's page, opened from the list.
        page.click(f'#processing-list a[href="/documents/Shipment/{shipment.pk}"]')
        expect(page.locator("h1")).to_contain_text(f"Shipment {shipment.pk}", timeout=WAIT_MS)
        page.evaluate("window.__loadedOnce = true")
        summary = page.locator("#children-list .csum")
        expect(summary).to_contain_text("1 of 3 done", timeout=WAIT_MS)
        expect(summary).to_contain_text("1 failed")
        expect(page.locator(f'#children-list tr[data-id="{p0}"]')).to_contain_text("67% 2/3")
        open_gate(p0)  # parcel 0 succeeds: the summary moves on, no reload
        expect(summary).to_contain_text("2 of 3 done", timeout=WAIT_MS)
        expect(summary).to_have_attribute("data-done", "2")
        expect(page.locator(f'#children-list tr[data-id="{p0}"]')).to_contain_text("SUCCESS")
        assert page.evaluate("window.__loadedOnce") is True
        page.screenshot(path=str(DOCS / "dashboard-parent.png"), full_page=True)

        # Cancel parcel 1 from its own page, with the token the address carried.
        page.click(f'#children-list a[href="/documents/Parcel/{p1}"]')
        expect(page.locator("h1")).to_contain_text(f"Parcel {p1}", timeout=WAIT_MS)
        expect(page.locator("#document .doc")).to_have_attribute("data-status", "RUNNING")
        expect(page.locator("input[name=token]")).to_have_value(token)
        page.click("button[data-action=cancel]")
        expect(page.locator("#action-result")).to_contain_text(
            f"cancelled Parcel({p1}): was RUNNING (weigh), now FAILURE", timeout=WAIT_MS)
        expect(page.locator("#document .doc")).to_have_attribute("data-status", "FAILURE",
                                                                  timeout=WAIT_MS)
        expect(page.locator("#observed")).to_contain_text("was RUNNING", timeout=WAIT_MS)
        fresh = Parcel.objects.get(pk=p1)
        assert (fresh.process_status, fresh.errors) == (ProcessStatus.FAILURE, ["cancelled"])
        open_gate(p1)  # its pool process goes on, finds the run ended, and stops
        assert shipment.block_until_complete(timeout=30) is ProcessStatus.SUCCESS
        assert Shipment.objects.get(pk=shipment.pk).packed == 1

        # A POST without the token is refused, and changes nothing.
        reset_url = f"{base}/api/documents/Parcel/{p0}/reset"
        status = page.evaluate(
            "async url => (await fetch(url, {method: 'POST'})).status", reset_url)
        assert status == 403
        assert page.request.post(reset_url).status == 403
        assert page.request.get(reset_url).status == 405
        assert Parcel.objects.get(pk=p0).process_status is ProcessStatus.SUCCESS
        log = dashboard["log"].read_text()
        assert f"dashboard cancel Parcel({p1}) from 127.0.0.1: cancelled" in log
        assert log.count(f"dashboard reset Parcel({p0}) from 127.0.0.1 refused: no token") == 2
        assert errors == [], errors
    finally:
        page.close()
        for parcel in parcels:  # nothing may stay blocked on a gate
            open_gate(parcel.pk, 2)
