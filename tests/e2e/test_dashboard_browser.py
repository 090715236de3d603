"""The admin dashboard in a real headless Chromium (Debian's): sign in, see the stages, watch a queue grow."""

from __future__ import annotations

import shutil

import pytest

from tests.cluster import isolated_cluster
from tests.conftest import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PIPELINE = """\
name: board
description: A stage no worker serves, so what is submitted stays in its queue.
inputs:
  prompt: {type: text}
outputs:
  text: wait.text
stages:
  wait:
    engine: tests.fixtures.engines:ECHO
    inputs: {prompt: job.prompt}
"""


@pytest.fixture(scope="module")
def board(settings_env, tmp_path_factory):
    with isolated_cluster(settings_env, ARTIFACTS / "e2e-dashboard-logs", {"board": PIPELINE},
                          tmp_path_factory.mktemp("board-pipelines")) as cluster:
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


def test_dashboard_signs_in_shows_stages_and_a_live_queue_depth(board, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    first = page.goto(f"{board.api_url}/admin")
    assert first.status == 401  # no key yet: the sign-in page
    page.fill("#key", board.admin_key["key"])
    page.click("button[type=submit]")
    depth = page.locator('#queues tr[data-stage="board.wait"] td[data-field="depth"]')
    depth.wait_for(timeout=15_000)
    assert depth.inner_text() == "0"
    stages = page.locator("#queues tbody tr").evaluate_all("rows => rows.map(r => r.dataset.stage)")
    assert {"board.wait", "echo.say", "chat.generate"} <= set(stages)
    assert page.evaluate("typeof uPlot") == "function"

    with board.client() as client:
        for i in range(3):
            resp = client.post("/v1/jobs", json={"pipeline": "board", "inputs": {"prompt": f"wait {i}"}})
            assert resp.status_code == 202, resp.text
    # The page refreshes itself (every 2 s): no reload.
    page.wait_for_function(
        """() => document.querySelector('#queues tr[data-stage="board.wait"] td[data-field="depth"]')
                 ?.textContent === "3" """, timeout=15_000)
    assert page.locator('#queues tr[data-stage="board.wait"] td[data-field="queued"]').inner_text() == "3"
    chart = page.locator('.chart[data-stage="board.wait"] canvas')
    assert chart.count() >= 1 and chart.first.bounding_box()["width"] > 100
    assert page.evaluate("document.body.dataset.refreshed") is not None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert not errors, errors
    page.close()
