"""Edges of auth found by attack: the dashboard cookie outside /admin, the pages' security headers."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest

from tests.conftest import REPO


@pytest.fixture()
def cookie_only(cluster):
    """A client holding the admin key only as the dashboard's cookie."""
    with httpx.Client(base_url=cluster.api_url, timeout=30, cookies={"omnijobs_key": cluster.admin_key["key"]}) as c:
        yield c


@pytest.mark.parametrize("path", ["/v1/jobs", "/metrics", "/v1/pipelines", "/v1/files/x"])
def test_the_dashboard_cookie_opens_nothing_outside_admin(cookie_only, path):
    resp = cookie_only.get(path)
    assert resp.status_code == 401, (path, resp.status_code, resp.text[:200])


def test_the_dashboard_cookie_opens_the_dashboard_and_its_api(cookie_only):
    assert cookie_only.get("/admin/api/queues").status_code == 200
    assert cookie_only.get("/admin").status_code == 200
    # Never for a state change, even under /admin.
    assert cookie_only.post("/admin/api/keys", json={"name": "x"}).status_code == 401


def _assert_locked_down(resp: httpx.Response) -> str:
    h = resp.headers
    assert h["x-frame-options"] == "DENY"
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    csp = h["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    return csp


def test_the_dashboard_allows_only_its_own_scripts(cookie_only):
    csp = _assert_locked_down(cookie_only.get("/admin"))
    assert "script-src 'self'" in csp


def test_the_login_page_allows_only_its_own_inline_script_by_hash(cluster):
    resp = httpx.get(f"{cluster.api_url}/admin", headers={"Accept": "text/html"})
    assert resp.status_code == 401 and "<form" in resp.text
    csp = _assert_locked_down(resp)
    page = (REPO / "api" / "static" / "login.html").read_text()
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert "SameSite=Strict" in page and "path=/admin" in page
