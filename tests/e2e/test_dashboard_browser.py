"""The dashboard (``--dashboard-port``) in a real browser: headless chromium (Debian's) driven by
Playwright, against a ``scheduler serve`` subprocess whose instances the official SDK client and worker
made. The list shows completed and delayed instances with their statuses (the delayed one counting
down), an instance's page shows its activities in the timeline; with a tokens file the pages show
nothing without a token, the JSON endpoints answer 401 and 403 as the gRPC calls would, actions
appear only for a role that allows them and ask for confirmation, and a revoked token stops at once."""
from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timedelta, timezone

import pytest
from durabletask import client, task
from durabletask.entities import EntityContext, EntityInstanceId
from durabletask.scheduled import ScheduleCreationOptions, ScheduledTaskClient

from dashboard_browser import browser as _browser
from dashboard_browser import dump_dom, get_json
from e2e_helpers import entity_worker, poll, sdk_on
from scheduler.testing import free_port

pytestmark = pytest.mark.e2e

Status = client.OrchestrationStatus
TOKENS = {role: f"{role}-{secrets.token_hex(12)}" for role in ("client", "reader", "worker", "elsewhere")}


def fetch_invoice(ctx: task.ActivityContext, order: str) -> str:
    return f"invoice of {order}"


def charge_card(ctx: task.ActivityContext, invoice: str) -> str:
    return f"charged {invoice}"


def checkout(ctx: task.OrchestrationContext, order: str):
    invoice = yield ctx.call_activity(fetch_invoice, input=order)
    receipt = yield ctx.call_activity(charge_card, input=invoice)
    return receipt


def waits(ctx: task.OrchestrationContext, _):
    value = yield ctx.wait_for_external_event("go")
    return value


def counter(ctx: EntityContext, amount: int):
    ctx.set_state(ctx.get_state(int, 0) + amount)


def job(ctx: task.OrchestrationContext, _):
    return "ran"


@pytest.fixture(scope="module")
def browser():
    yield from _browser()


@pytest.fixture
def page(browser):
    context = browser.new_context()  # its own sessionStorage
    yield context.new_page()
    context.close()


def test_the_list_shows_completed_and_delayed_instances_and_an_instance_its_activities(replicas, page, hub_name):
    port = free_port()
    server = replicas.start("--dashboard-port", str(port))
    url = f"http://127.0.0.1:{port}"
    with sdk_on(server.address, "ours", [checkout], [fetch_invoice, charge_card]) as c:
        done = c.schedule_new_orchestration(checkout, input="order-7")
        assert c.wait_for_orchestration_completion(done, timeout=30).runtime_status == Status.COMPLETED
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        pending = c.schedule_new_orchestration(checkout, input="order-8", start_at=later)

        # The page as chromium has it once loaded (no waiting for requests made after the load).
        listed = dump_dom(url + "/")
        assert f'data-id="{done}"' in listed and f'data-id="{pending}"' in listed
        assert "status-COMPLETED" in listed and "status-PENDING" in listed
        shown = dump_dom(f"{url}/instances/{done}")
        assert "fetch_invoice" in shown and "charge_card" in shown

        page.goto(url + "/")
        done_row = page.locator(f'#instances tr[data-id="{done}"]')
        pending_row = page.locator(f'#instances tr[data-id="{pending}"]')
        done_row.wait_for()
        assert done in done_row.inner_text() and "COMPLETED" in done_row.inner_text()
        assert pending in pending_row.inner_text() and "PENDING" in pending_row.inner_text()
        countdown = pending_row.locator(".countdown")
        poll(lambda: "starts in" in countdown.inner_text(), 5, what="the delayed start's countdown")
        first = countdown.inner_text()
        poll(lambda: countdown.inner_text() != first, 10, what="the countdown to move")
        stats = page.locator("#hub-stats").inner_text()
        assert f"Task hub {hub_name}" in stats and "PENDING" in stats and "COMPLETED" in stats

        page.locator(f'#instances a:text-is("{done}")').click()
        page.locator("#timeline").wait_for()
        assert page.url == f"{url}/instances/{done}"
        timeline = page.locator("#timeline").inner_text()
        assert "fetch_invoice" in timeline and "charge_card" in timeline
        assert "charged invoice of order-7" in page.locator("#payload-output").inner_text()
        assert "COMPLETED" in page.locator("#details").inner_text()

        page.go_back()  # the back button returns to the list
        page.locator(f'#instances tr[data-id="{pending}"]').wait_for()
        page.goto(f"{url}/?status=PENDING")  # a filter is a deep link
        page.locator(f'#instances tr[data-id="{pending}"]').wait_for()
        assert page.locator(f'#instances tr[data-id="{done}"]').count() == 0
        page.goto(f"{url}/?pageSize=1")  # paging by continuation token, each page a URL
        first = page.locator("#instances tbody tr").get_attribute("data-id")
        page.locator("#next-page").click()
        page.wait_for_url("**token=**")
        page.locator("#instances tbody tr").wait_for()
        second = page.locator("#instances tbody tr").get_attribute("data-id")
        assert {first, second} == {done, pending}
        page.go_back()
        page.locator(f'#instances tr[data-id="{first}"]').wait_for()

        page.goto(f"{url}/instances/{pending}")
        page.locator("#details").wait_for()
        assert "PENDING" in page.locator("#details").inner_text()
        assert "starts in" in page.locator("#details .countdown").inner_text()


def test_entities_and_schedules_pages(replicas, page):
    port = free_port()
    server = replicas.start("--dashboard-port", str(port))
    url = f"http://127.0.0.1:{port}"
    with entity_worker(server.address, orchestrators=(job,), entities=(counter,), scheduled=True):
        c = client.TaskHubGrpcClient(host_address=server.address)
        try:
            c.signal_entity(EntityInstanceId("counter", "apples"), "add", 5)
            poll(lambda: c.get_entity(EntityInstanceId("counter", "apples")), 20, what="the entity")
            ScheduledTaskClient(c, operation_timeout=30).create_schedule(ScheduleCreationOptions(
                schedule_id="nightly-report", orchestration_name="job", interval=timedelta(hours=6)))
        finally:
            c.close()
    page.goto(url + "/entities")
    page.locator("#entities").wait_for()
    poll(lambda: "@counter@apples" in page.locator("#entities").inner_text(), 5, what="the entity row")
    assert "5" in page.locator("#entities").inner_text()
    page.goto(url + "/schedules")
    page.locator("#schedules").wait_for()
    row = page.locator("#schedules tr", has_text="nightly-report").inner_text()
    assert "job" in row and "Active" in row and "06:00:00" in row


def test_the_dapr_twin_is_an_entry_of_its_own(replicas, page, hub_name):
    """With --dapr-port the twin of --task-hub exists: the picker offers it as "HUB (Dapr)" and its pages keep
    the flavour in their links (the JSON endpoints' Dapr path: tests/server/test_dashboard_dapr.py)."""
    port = free_port()
    replicas.start("--dashboard-port", str(port), "--dapr-port", str(free_port()))
    url = f"http://127.0.0.1:{port}"
    page.goto(url + "/")
    page.locator("#hub-stats").wait_for()
    assert page.locator("#hub-picker option").all_inner_texts() == [hub_name, f"{hub_name} (Dapr)"]
    page.locator("#hub-picker").select_option(label=f"{hub_name} (Dapr)")
    page.wait_for_url("**flavour=dapr**")
    poll(lambda: f"Task hub {hub_name} (Dapr)" in page.locator("#hub-stats").inner_text(), 5, what="the Dapr entry")
    page.locator("#nav a", has_text="Entities").click()
    page.wait_for_url(f"{url}/entities?hub={hub_name}&flavour=dapr")
    page.locator("#entities").wait_for()
    assert page.locator("#hub-picker option:checked").inner_text() == f"{hub_name} (Dapr)"


class TokensFile:
    """The tokens file: a client, a reader and a worker of the test's hub, and a reader of another hub."""

    def __init__(self, path, hub: str) -> None:
        self.path, self.hub = path, hub
        self.write("client", "reader", "worker", "elsewhere")

    def write(self, *roles: str) -> None:
        hubs = {"elsewhere": ["another-hub"]}
        self.path.write_text(json.dumps({"tokens": [
            {"name": f"dash-{role}", "sha256": hashlib.sha256(TOKENS[role].encode()).hexdigest(),
             "role": "reader" if role == "elsewhere" else role, "hubs": hubs.get(role, [self.hub])}
            for role in roles]}))


@pytest.fixture
def tokens_file(tmp_path, hub_name) -> TokensFile:
    return TokensFile(tmp_path / "tokens.json", hub_name)


def sign_in(page, url: str, token: str) -> None:
    page.goto(url + "/")
    page.locator("#login input").fill(token)
    page.locator("#login button").click()


def test_with_a_tokens_file_nothing_without_a_token_and_actions_by_role(replicas, browser, tokens_file):
    port = free_port()
    server = replicas.start("--auth-tokens-file", str(tokens_file.path), "--dashboard-port", str(port))
    url = f"http://127.0.0.1:{port}"
    with sdk_on(server.address, "ours", [waits], [],
                metadata=[("authorization", f"Bearer {TOKENS['worker']}")]) as _:
        c = client.TaskHubGrpcClient(host_address=server.address,
                                     metadata=[("authorization", f"Bearer {TOKENS['client']}")])
        try:
            iid = c.schedule_new_orchestration(waits)
            c.wait_for_orchestration_start(iid, timeout=30)

            # The JSON endpoints: 401 without a token or with an unknown one, 403 outside the role or hubs.
            for path in ("/api/session", "/api/hubs", "/api/stats", "/api/instances", f"/api/instances/{iid}",
                         "/api/entities", "/api/schedules"):
                assert get_json(url + path)[0] == 401, path
                assert get_json(url + path, "not-a-token")[0] == 401, path
            assert get_json(url + "/api/instances", TOKENS["elsewhere"])[0] == 403  # another task hub
            assert get_json(url + "/api/stats", TOKENS["elsewhere"])[0] == 403
            assert get_json(url + f"/api/instances/{iid}", TOKENS["worker"])[0] == 403  # a worker may not query
            status, body = get_json(url + f"/api/instances/{iid}/terminate", TOKENS["reader"], "POST", {})
            assert status == 403 and "TerminateInstance" in body["error"]
            assert c.get_orchestration_state(iid).runtime_status == Status.RUNNING
            status, body = get_json(url + "/api/instances", TOKENS["reader"])
            assert status == 200 and iid in [i["id"] for i in body["instances"]]

            # Without a token the page asks for one and shows nothing else.
            reader = browser.new_context().new_page()
            reader.goto(url + "/")
            reader.locator("#login").wait_for()
            assert iid not in reader.content()
            assert reader.locator("#instances").count() == 0
            sign_in(reader, url, TOKENS["reader"])
            reader.locator(f'#instances tr[data-id="{iid}"]').wait_for()
            reader.goto(f"{url}/instances/{iid}")
            reader.locator("#details").wait_for()
            assert "RUNNING" in reader.locator("#details").inner_text()
            assert reader.locator("[data-action]").count() == 0  # a reader gets no actions

            # A client sees the actions; terminating asks first, and a "no" changes nothing.
            clerk = browser.new_context().new_page()
            sign_in(clerk, url, TOKENS["client"])
            clerk.locator(f'#instances tr[data-id="{iid}"]').wait_for()
            clerk.goto(f"{url}/instances/{iid}")
            terminate = clerk.locator('button[data-action="terminate"]')
            terminate.wait_for()
            assert clerk.locator('button[data-action="purge"]').count() == 0  # purge is an admin's
            # Only what applies to a running instance: no resume (not suspended), no rewind (not failed).
            assert clerk.locator('button[data-action="suspend"]').count() == 1
            assert clerk.locator('button[data-action="resume"]').count() == 0
            assert clerk.locator('button[data-action="rewind"]').count() == 0
            asked = []
            clerk.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
            terminate.click()
            poll(lambda: asked, 5, what="the confirmation")
            assert iid in asked[0]
            assert c.get_orchestration_state(iid).runtime_status == Status.RUNNING
            clerk.once("dialog", lambda dialog: dialog.accept())
            terminate.click()
            poll(lambda: c.get_orchestration_state(iid).runtime_status == Status.TERMINATED, 15,
                 what="the termination")
            poll(lambda: "TERMINATED" in clerk.locator("#details").inner_text(), 10, what="the page to show it")

            # Revocation bites at once: the reader's token is gone from the file.
            tokens_file.write("client", "worker", "elsewhere")
            poll(lambda: get_json(url + "/api/instances", TOKENS["reader"])[0] == 401, 5, what="the revocation")
            reader.reload()
            reader.locator("#login").wait_for()
            assert iid not in reader.locator("main").inner_text()
        finally:
            c.close()
