"""Make the README's dashboard screenshots (docs/dashboard-*.png).

Starts ``scheduler serve --dashboard-port`` on the embedded store, makes a few instances with the
official SDK (completed, delayed, waiting for an event, failed, with a sub-orchestration, a timer and
an entity), and photographs the pages with headless chromium (Debian's, driven by Playwright):

    .venv/bin/python scripts/dashboard_screenshots.py [--out docs] [--chromium /usr/bin/chromium]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from durabletask import client, task, worker
from durabletask.entities import EntityContext, EntityInstanceId
from playwright.sync_api import sync_playwright

from scheduler.testing import free_port, start_server


def fetch_invoice(ctx: task.ActivityContext, order: str) -> str:
    return f"invoice of {order}"


def charge_card(ctx: task.ActivityContext, invoice: str) -> str:
    if "declined" in invoice:
        raise ValueError("card declined")
    return f"charged {invoice}"


def ship(ctx: task.OrchestrationContext, order: str):
    yield ctx.create_timer(timedelta(milliseconds=300))
    return f"shipped {order}"


def checkout(ctx: task.OrchestrationContext, order: str):
    invoice = yield ctx.call_activity(fetch_invoice, input=order)
    receipt = yield ctx.call_activity(charge_card, input=invoice)
    shipped = yield ctx.call_sub_orchestrator(ship, input=order)
    ctx.signal_entity(EntityInstanceId("orders", "today"), "count", 1)
    return [receipt, shipped]


def approval(ctx: task.OrchestrationContext, order: str):
    ctx.set_custom_status({"waiting_for": "manager approval", "order": order})
    answer = yield ctx.wait_for_external_event("approved")
    return answer


def orders(ctx: EntityContext, amount: int):
    ctx.set_state(ctx.get_state(int, 0) + amount)


def make_instances(address: str) -> str:
    w = worker.TaskHubGrpcWorker(host_address=address)
    for fn in (checkout, ship, approval):
        w.add_orchestrator(fn)
    for fn in (fetch_invoice, charge_card):
        w.add_activity(fn)
    w.add_entity(orders)
    w.start()
    c = client.TaskHubGrpcClient(host_address=address)
    try:
        done = c.schedule_new_orchestration(checkout, input="order-1001", instance_id="checkout-1001")
        c.schedule_new_orchestration(checkout, input="order-1002-declined", instance_id="checkout-1002")
        c.schedule_new_orchestration(approval, input="order-1003", instance_id="approval-1003")
        now = datetime.now(timezone.utc)
        for n, minutes in ((1004, 5), (1005, 90)):
            c.schedule_new_orchestration(checkout, input=f"order-{n}", instance_id=f"checkout-{n}",
                                         start_at=now + timedelta(minutes=minutes))
        c.wait_for_orchestration_completion(done, timeout=30)
        c.wait_for_orchestration_completion("checkout-1002", timeout=30)
        time.sleep(0.5)  # let the entity signal land (a picture, not a test)
    finally:
        c.close()
        w.stop()
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    port = free_port()
    server = start_server(None, "--dashboard-port", str(port), "--task-hub", "orders")
    try:
        done = make_instances(server.address)
        url = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            for name, path, ready, height in (("list", "/", "#instances", 640),
                                              ("instance", f"/instances/{done}", "#timeline", 900)):
                page = browser.new_page(viewport={"width": 1200, "height": height})
                page.goto(url + path)
                page.locator(ready).wait_for()
                page.screenshot(path=str(out / f"dashboard-{name}.png"))
            browser.close()
    finally:
        server.stop()
    print(f"screenshots in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
