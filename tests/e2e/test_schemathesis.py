"""Fuzz the running API from its OpenAPI spec: no 5xx, and every response as the spec says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ARTIFACTS

MAX_EXAMPLES = 25  # per operation: the two runs together take some twenty seconds
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
# Admin operations that change other keys or other tests' jobs: the fuzzer finds real ids in list
# responses and would revoke the keys, rotate the secrets and retry the jobs the other tests use.
ADMIN_WRITES = r"/(revoke|rotate-webhook-secret|retry|cancel)$"


def _fuzz(api_url: str, key: str, name: str, *filters: str) -> None:
    report = ARTIFACTS / "schemathesis" / name
    report.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{api_url}/openapi.json",
         "--header", f"Authorization: Bearer {key}", "--checks", CHECKS, *filters,
         "--max-examples", str(MAX_EXAMPLES), "--phases", "examples,fuzzing", "--workers", "1",
         "--seed", "20261121", "--generation-database", "none", "--request-timeout", "20", "--no-color",
         "--report", "junit", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=240, check=False,
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
    _fuzz(cluster.api_url, _key(cluster, "fuzzer", admin=False), "client",
          "--include-path-regex", "^/(v1|healthz|readyz)", "--exclude-path-regex", "/events$")


def test_fuzzing_the_admin_api_finds_no_server_error_and_no_schema_violation(cluster):
    _fuzz(cluster.api_url, _key(cluster, "fuzzer-admin", admin=True), "admin",
          "--include-path-regex", "^/(admin|metrics)", "--exclude-path-regex", ADMIN_WRITES)
