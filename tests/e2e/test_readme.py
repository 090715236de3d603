"""The README's shell snippets, run as written against a running `omnijobs dev`.

Every fenced block after a `<!-- readme-test: dev -->` marker runs in one bash (`set -euo
pipefail`), in the folder that holds the dev deployment's `.omnijobs-dev`, so the README cannot
drift from what the commands do. Substituted: curl gets `-f` (an HTTP error fails the block), the
example webhook URL points at a local receiver, and `photo.png` is a small real PNG.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnijobs.demo_jobs import tiny_png
from tests.cluster import REPO, free_port
from tests.procs import alive, descendants
from tests.webhook_receiver import Receiver

MARKER = "<!-- readme-test: dev -->"
EXAMPLE_HOOK = "https://example.com/hooks/omnijobs"
PIPELINES = ["chat", "z_image_turbo", "qwen2_5_vl", "qwen_image_edit", "qwen2_5_omni", "wan2_2_t2v"]


def readme_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(re.escape(MARKER) + r"\n```bash\n(.*?)```", text, re.S)]


def venv_path() -> str:
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="module")
def dev(tmp_path_factory, models_dir):
    """`omnijobs dev` with the pipelines the snippets use; Postgres and Redis settings point nowhere."""
    home = tmp_path_factory.mktemp("readme")
    folder = home / ".omnijobs-dev"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATH": venv_path(),
        "OMNIJOBS_MODELS_DIR": str(models_dir),
        "OMNIJOBS_PIPELINES_PATH": "",
        "OMNIJOBS_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/nowhere",
        "OMNIJOBS_BROKER_URL": "redis://127.0.0.1:9/0",
        "OMNIJOBS_ALLOWED_PRIVATE_HOSTS": "127.0.0.1",  # the local webhook receiver
    }
    env.pop("OMNIJOBS_DEV_DIR", None)
    log = home / "dev.out"
    args = [sys.executable, "-m", "omnijobs", "dev", "--dir", str(folder), "--port", str(free_port())]
    for name in PIPELINES:
        args += ["-p", name]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while b"OmniJobs is running at" not in log.read_bytes():
            assert proc.poll() is None, f"omnijobs dev exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"omnijobs dev not ready:\n{log.read_text()}"
            time.sleep(0.3)
        yield {"home": home, "folder": folder, "env": env, "log": log}
    finally:
        children = descendants(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in children:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_readme_snippets_run_against_omnijobs_dev(dev):
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 4, "the README lost its tested snippets"
    home = dev["home"]
    (home / "photo.png").write_bytes(tiny_png())
    with Receiver() as hooks:
        script = ["set -euo pipefail"]
        for i, block in enumerate(blocks):
            block = block.replace(EXAMPLE_HOOK, f"{hooks.url}/readme")
            # An HTTP error fails the block; but canceling the quick chat job may rightly get a 409.
            lines = block.split("\n")
            block = "\n".join(ln if "/cancel" in ln else ln.replace("curl -s ", "curl -sf ") for ln in lines)
            script += [f"echo '=== block {i}'", block]
        env = {k: v for k, v in dev["env"].items() if not k.startswith("OMNIJOBS_")}
        run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=home, env=env, capture_output=True, text=True,
                             timeout=600)
        out = run.stdout
        assert run.returncode == 0, f"README snippets failed ({run.returncode}):\n{out}\n{run.stderr}"
        assert "error:" not in run.stderr, run.stderr
        (hook,) = hooks.wait_for("/readme", 1, timeout=120)  # the webhook example's job.succeeded event
        assert '"job.succeeded"' in hook.body, hook.body

    # What the snippets left: real files, downloaded whole and in part.
    for name in ("kite.png", "edited.png"):
        assert (home / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
    edited = (home / "edited.png").read_bytes()
    assert (home / "first-100-bytes").read_bytes() == edited[:100]
    head = out.split("=== block 2")[1]
    assert re.search(r"HTTP/1.1 200", head) and re.search(rf"(?i)content-length: {len(edited)}\b", head), head
    assert re.search(r'(?i)etag: "', head), head
    assert ": canceled" in out, out  # the slow job the command line canceled

    # The key the snippet made is in the dev deployment's store (not a default Postgres), and every
    # job the command line submitted carried an Idempotency-Key.
    with sqlite3.connect(dev["folder"] / "omnijobs.db") as db:
        assert db.execute("SELECT count(*) FROM api_keys WHERE name = 'me'").fetchone()[0] == 1
        rows = db.execute("SELECT pipeline, idempotency_key, status FROM jobs").fetchall()
    by_cli = [r for r in rows if r[1] is not None]
    assert len(by_cli) >= 4, rows  # chat, z_image_turbo, qwen2_5_vl, z_image_turbo (canceled)
    assert all(status in ("succeeded", "canceled") for _, _, status in rows), rows


def test_client_commands_say_one_line(dev, tmp_path):
    """Errors print the API's message on one line, never a traceback or raw JSON."""
    env = {k: v for k, v in dev["env"].items() if not k.startswith("OMNIJOBS_")}

    def omnijobs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "omnijobs", "--dir", str(dev["folder"]), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    bad = omnijobs("submit", "chat", "prompt=Hi", "params.max_tokens=0")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("error: ") and "max_tokens" in bad.stderr and "[422]" in bad.stderr, bad.stderr
    missing = omnijobs("download", "00000000-0000-0000-0000-000000000000", "image")
    assert missing.returncode == 1 and "[404]" in missing.stderr and missing.stderr.count("\n") == 1, missing.stderr
    nofile = omnijobs("submit", "qwen2_5_vl", "prompt=Hi", "image=@nope.png")
    assert nofile.returncode == 1 and "cannot read nope.png" in nofile.stderr, nofile.stderr

    # The same Idempotency-Key twice: one job.
    first = omnijobs("submit", "chat", "prompt=Once", "--idempotency-key", "readme-once")
    second = omnijobs("submit", "chat", "prompt=Once", "--idempotency-key", "readme-once")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    import json

    assert json.loads(first.stdout)["id"] == json.loads(second.stdout)["id"]


def test_output_downloads_range_head_etag(dev):
    """What players and caches send: HEAD, one Range (206), a range past the end (416), If-None-Match (304)."""
    import httpx

    settings = _dev_settings(dev)
    url, key = settings["OMNIJOBS_URL"], settings["OMNIJOBS_API_KEY"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        job = http.post("/v1/jobs", json={"pipeline": "z_image_turbo", "inputs": {"prompt": "ranges"},
                                          "params": {"num_inference_steps": 2, "seed": 5}}).json()
        deadline = time.monotonic() + 120
        while (job := http.get(f"/v1/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.3)
        assert job["status"] == "succeeded", job
        path = f"/v1/jobs/{job['id']}/outputs/image"
        full = http.get(path)
        assert full.status_code == 200 and full.content.startswith(b"\x89PNG")
        size, etag = len(full.content), full.headers["etag"]
        assert full.headers["accept-ranges"] == "bytes" and int(full.headers["content-length"]) == size

        head = http.head(path)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == size and head.headers["etag"] == etag
        assert head.headers["content-type"] == "image/png"

        part = http.get(path, headers={"Range": "bytes=8-23"})
        assert part.status_code == 206 and part.content == full.content[8:24]
        assert part.headers["content-range"] == f"bytes 8-23/{size}"
        tail = http.get(path, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == full.content[-10:]
        past = http.get(path, headers={"Range": f"bytes={size}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"

        assert http.get(path, headers={"If-None-Match": etag}).status_code == 304
        assert http.get(path, headers={"Range": "bytes=0-3", "If-Range": '"old"'}).status_code == 200
        assert http.head(f"/v1/jobs/{job['id']}/outputs/nope").status_code == 404


def test_docs_are_served_without_a_cdn(dev):
    """/docs and /redoc load every script and style from the API itself, with no API key."""
    import httpx

    url = _dev_settings(dev)["OMNIJOBS_URL"]
    with httpx.Client(base_url=url, timeout=30) as http:
        for page in ("/docs", "/redoc"):
            resp = http.get(page)
            assert resp.status_code == 200 and "text/html" in resp.headers["content-type"], page
            assets = re.findall(r'(?:src|href)="([^"]+)"', resp.text) + re.findall(r"url: '([^']+)'", resp.text)
            assert assets, resp.text
            for asset in assets:
                assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
                got = http.get(asset)
                assert got.status_code == 200 and len(got.content) > 100, (asset, got.status_code)
            assert "//" not in "".join(a for a in assets if not a.startswith("/openapi")), assets
        assert http.get("/openapi.json").json()["info"]["title"] == "OmniJobs"


def _dev_settings(dev) -> dict[str, str]:
    import shlex

    return {name: " ".join(shlex.split(value)) for name, _, value in
            (line.partition("=") for line in (dev["folder"] / "omnijobs.env").read_text().splitlines())}


def test_dev_metrics_count_requests_and_queue_depth_from_the_broker_folder(dev):
    """In dev (no Redis): queue depth comes from the broker folder, on /admin and /metrics; the API
    counts its requests by route template; the processes share one metrics folder."""
    import httpx

    settings = _dev_settings(dev)
    with httpx.Client(base_url=settings["OMNIJOBS_URL"], timeout=30,
                      headers={"Authorization": f"Bearer {settings['OMNIJOBS_API_KEY']}"}) as http:
        for _ in range(3):
            assert http.get("/v1/pipelines").status_code == 200
        assert http.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
        queues = {q["stage"]: q for q in http.get("/admin/api/queues").json()["data"]}
        assert isinstance(queues["chat.generate"]["depth"], int), queues["chat.generate"]
        text = http.get("/metrics").text
    lines = text.splitlines()

    def value(prefix: str) -> float:
        (line,) = [ln for ln in lines if ln.startswith(prefix)]
        return float(line.rsplit(" ", 1)[1])

    assert value('omnijobs_http_requests_total{method="GET",route="/v1/pipelines",status="200"}') >= 3
    assert value('omnijobs_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"}') >= 1
    assert value('omnijobs_http_request_seconds_count{method="GET",route="/v1/pipelines"}') >= 3
    assert value('omnijobs_queue_depth{stage="chat.generate"}') >= 0
    assert not [ln for ln in lines if "00000000-0000" in ln], "a raw path became a label"
    assert any((dev["folder"] / "metrics").glob("*.db")), "the processes do not share a metrics folder"
    # Every family once: two sources never both serve one name.
    types = [ln.split()[2] for ln in lines if ln.startswith("# TYPE ")]
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)


def test_demo_says_what_each_file_holds(dev):
    """The demo of `omnijobs dev --demo`: every job succeeds, and each file output is described
    (image size and frames, WAV duration and peak level, video frames) and is neither silent nor empty."""
    import httpx

    from omnijobs.demo_jobs import run_demo_jobs
    from omnijobs.pipelines import load_registry

    settings = _dev_settings(dev)
    lines: list[str] = []
    specs = [load_registry().get(name) for name in ("z_image_turbo", "qwen2_5_omni", "wan2_2_t2v")]
    with httpx.Client(base_url=settings["OMNIJOBS_URL"], timeout=30,
                      headers={"Authorization": f"Bearer {settings['OMNIJOBS_API_KEY']}"}) as http:
        failed = run_demo_jobs(http, specs, dev["home"] / "demo", lines.append)
    text = "\n".join(lines)
    assert failed == 0, text
    assert re.search(r"image: .*\.png \(image/png, \d+ bytes: \d+x\d+ PNG, 1 frame\)", text), text
    audio = re.search(r"audio: .*\.wav \(audio/wav, \d+ bytes: ([\d.]+) s, 24000 Hz, 1 ch, peak ([\d.]+)", text)
    assert audio and float(audio.group(1)) > 0 and 0 < float(audio.group(2)) < 1, text  # audible, not clipping
    assert re.search(r"video: .*\.mp4 \(video/mp4, \d+ bytes: [1-9]\d* frames \d+x\d+ h264", text), text
    assert "WARNING" not in text, text
