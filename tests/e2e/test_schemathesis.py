"""Fuzz the running API from its OpenAPI spec: no 5xx, and every response as the spec says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS

# Per operation; each run also stops at its time budget, so the module stays within a few minutes on a
# loaded machine (raise both for a deeper run: OMNIJOBS_FUZZ_EXAMPLES, OMNIJOBS_FUZZ_SECONDS).
MAX_EXAMPLES = int(os.environ.get("OMNIJOBS_FUZZ_EXAMPLES", "300"))
MAX_SECONDS = int(os.environ.get("OMNIJOBS_FUZZ_SECONDS", "40"))
# Every check but two that misread this API by design: positive_data_acceptance sends made-up
# cursors, pipeline names and non-media bytes as "valid" data (the schema cannot say a cursor must be
# one the API returned); allow_header_conformance wants an Allow header on the framework's 405s.
CHECKS = "all"
EXCLUDED_CHECKS = "positive_data_acceptance,allow_header_conformance"
# The OpenAI-compatible routes answer 400/404 in OpenAI's error shape without declaring those codes
# in the spec; until they do, their run checks everything else.
OPENAI_EXCLUDED_CHECKS = EXCLUDED_CHECKS + ",status_code_conformance"
OPENAI_PATHS = "^/v1/(videos|models|audio|images|chat|completions)"
# Admin operations that change other keys or other tests' jobs: the fuzzer finds real ids in list
# responses and would revoke the keys, rotate the secrets and retry the jobs the other tests use.
ADMIN_WRITES = r"/(revoke|rotate-webhook-secret|retry|cancel)$"


def _fuzz(api_url: str, key: str, name: str, *filters: str, excluded: str = EXCLUDED_CHECKS) -> None:
    report = ARTIFACTS / "schemathesis" / name
    report.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{api_url}/openapi.json",
         "--header", f"Authorization: Bearer {key}", "--checks", CHECKS, "--exclude-checks", excluded, *filters,
         "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_SECONDS),
         "--phases", "examples,coverage,fuzzing", "--workers", "1",
         # Strings from all of Unicode (lone surrogates are escaped in JSON bodies by the generator).
         "--generation-codec", "utf-8", "--generation-allow-x00", "true",
         "--seed", "20261121", "--generation-database", "none", "--request-timeout", "20", "--no-color",
         "--report", "junit", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=MAX_SECONDS * 3 + 120, check=False,
    )
    (report / "output.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "Authentication failed" not in proc.stdout, proc.stdout[-4000:]


def _key(cluster, name: str, admin: bool) -> str:
    with cluster.client() as client:
        made = client.post("/admin/api/keys", json={"name": name, "admin": admin})
    assert made.status_code == 201, made.text
    return made.json()["key"]


def test_fuzzing_the_client_api_finds_no_server_error_and_no_schema_violation(cluster):
    # A key of its own, not an admin: it sees only the jobs it made, and spends its own rate budget.
    # The event stream stays open until its job ends: fuzzed, it only measures how long jobs take.
    # /healthz and /readyz are public on purpose (the auth checks would flag them) and take no input.
    _fuzz(cluster.api_url, _key(cluster, "fuzzer", admin=False), "client",
          "--include-path-regex", "^/v1/", "--exclude-path-regex", f"/events$|{OPENAI_PATHS}")


def test_fuzzing_the_openai_routes_finds_no_server_error_and_no_schema_violation(cluster):
    _fuzz(cluster.api_url, _key(cluster, "fuzzer-openai", admin=False), "openai",
          "--include-path-regex", OPENAI_PATHS, excluded=OPENAI_EXCLUDED_CHECKS)


def test_fuzzing_the_admin_api_finds_no_server_error_and_no_schema_violation(cluster):
    # The dashboard page itself is HTML for browsers, not part of the API.
    _fuzz(cluster.api_url, _key(cluster, "fuzzer-admin", admin=True), "admin",
          "--include-path-regex", "^/(admin/api|metrics)", "--exclude-path-regex", ADMIN_WRITES)


# Server errors the fuzzer found once, kept as explicit cases.
@pytest.mark.parametrize("name", ["a\x00b", "x\ud800y"], ids=["NUL", "lone surrogate"])
def test_a_key_name_postgres_cannot_store_is_422(cluster, name):
    with cluster.client() as admin:
        resp = admin.post("/admin/api/keys", content=json.dumps({"name": name}),
                          headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == "name"
