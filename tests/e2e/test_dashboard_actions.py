"""The admin dashboard's buttons and links in a real headless Chromium: retry a failed job, cancel a
queued one, open a job's detail page; the tables fit the page; an idle stage's chart is folded."""

from __future__ import annotations

import shutil

import pytest

from tests.cluster import isolated_cluster, wait_job
from tests.conftest import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _pipeline(name: str, about: str) -> str:
    return f"""\
name: {name}
description: {about}
inputs:
  prompt: {{type: text}}
outputs:
  text: say.text
stages:
  say:
    engine: tests.fixtures.engines:ECHO
    inputs: {{prompt: job.prompt}}
    max_attempts: 1
"""


PIPELINES = {
    "parked": _pipeline("parked", "No worker serves it, so its jobs stay queued."),
    "flaky": _pipeline("flaky", "Served. A prompt with fatal in it fails."),
    "quiet": _pipeline("quiet", "Served, and never sent a job, so its chart stays flat."),
}


@pytest.fixture(scope="module")
def board(settings_env, tmp_path_factory):
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-dashboard-actions-logs", PIPELINES,
                          tmp_path_factory.mktemp("actions-pipelines")) as cluster:
        cluster.wait_workers_ready([cluster.start_worker("flaky.say"), cluster.start_worker("quiet.say")])
        yield cluster


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (tests/run.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def test_retry_cancel_detail_layout_and_idle_charts(board, browser):
    with board.client() as client:
        failed = wait_job(client, client.post("/v1/jobs", json={"pipeline": "flaky",
                                                                "inputs": {"prompt": "fatal one"}}).json()["id"])
        assert failed["status"] == "failed", failed
        queued = client.post("/v1/jobs", json={"pipeline": "parked", "inputs": {"prompt": "wait"}}).json()
        assert queued["status"] == "queued", queued

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    assert page.goto(f"{board.api_url}/admin").status == 401
    page.fill("#key", board.admin_key["key"])
    page.click("button[type=submit]")

    # Failed jobs (the default view): a Retry button queues the job again.
    retry = page.locator(f'#jobs tr[data-job="{failed["id"]}"] button[data-action="retry"]')
    retry.wait_for(timeout=15_000)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
    retry.click()
    page.wait_for_function("() => document.querySelector('#action').textContent.startsWith('retry: job')",
                           timeout=15_000)
    assert failed["id"] in page.inner_text("#action")
    # What the retry answered: queued, or already taken by the idle worker (it claims at once).
    assert any(f"is {state}" in page.inner_text("#action") for state in ("queued", "running", "failed"))
    with board.client() as client:
        again = client.get(f"/v1/jobs/{failed['id']}").json()
    # Queued again with a fresh budget of attempts (its earlier attempt's error kept).
    assert again["status"] in ("queued", "running", "failed"), again
    assert again["stages"][0]["max_attempts"] == 2 and len(again["stages"][0]["errors"]) >= 1, again

    # Queued jobs: Cancel.
    page.select_option("#job-status", "queued")
    cancel = page.locator(f'#jobs tr[data-job="{queued["id"]}"] button[data-action="cancel"]')
    cancel.wait_for(timeout=15_000)
    cancel.click()
    page.wait_for_function("() => document.querySelector('#action').textContent.includes('canceled')",
                           timeout=15_000)
    with board.client() as client:
        assert client.get(f"/v1/jobs/{queued['id']}").json()["status"] == "canceled"

    # An idle stage's chart is folded to its title; a stage that had work keeps its chart open.
    quiet = page.locator('.chart[data-stage="quiet.say"]')
    quiet.wait_for(timeout=15_000)
    assert "idle" in quiet.get_attribute("class")
    assert not page.locator('.chart[data-stage="quiet.say"] canvas').first.is_visible()
    assert page.locator('.chart[data-stage="parked.say"] canvas').first.is_visible()

    # Every job row links to its detail page: stages, attempts, and the same buttons.
    page.select_option("#job-status", "failed")
    page.locator(f'#jobs tr[data-job="{failed["id"]}"] a').click()
    page.wait_for_url(f"**/admin/jobs/{failed['id']}")
    page.locator('#stages tr[data-stage="say"]').wait_for(timeout=15_000)
    assert page.inner_text('#facts dd[data-field="id"]') == failed["id"]
    shown = page.inner_text('#stages tr[data-stage="say"] td[data-field="status"]')
    assert shown in ("queued", "running", "failed"), shown  # retried above: queued, until a worker reruns it
    # The detail page's own buttons: Cancel while it waits, Retry once failed.
    button = "cancel" if shown in ("queued", "running") else "retry"
    assert page.locator(f'#actions button[data-action="{button}"]').count() == 1
    assert page.locator("#attempts tbody tr").count() >= 1
    assert "model rejected" in page.inner_text("#attempts")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)
    assert not errors, errors
    page.close()
