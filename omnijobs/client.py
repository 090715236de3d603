"""A small HTTP client of the OmniJobs API, for the `omnijobs` command line.

Every failure becomes one `ApiError` whose message is the API's own (`{"error": {"message"}}`),
so the command line prints one line, never a traceback or a raw JSON body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "canceled")


class ApiError(Exception):
    """A request failed; str() is the one line to show."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def error_line(resp: httpx.Response) -> str:
    """The API's error as one line: `<message> (field: <field>) [<status>]`."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        field = f" (field: {error['field']})" if error.get("field") else ""
        return f"{error['message']}{field} [{resp.status_code}]"
    text = " ".join(resp.text.split())[:300] or resp.reason_phrase
    return f"{text} [{resp.status_code}]"


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach the API at {self.url} ({exc or type(exc).__name__}); is it running? "
                           "(set OMNIJOBS_URL, or use --dir <folder of omnijobs dev>)") from None
        if resp.status_code >= 400:
            raise ApiError(error_line(resp), resp.status_code)
        return resp

    # ------------------------------------------------------------ jobs

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict:
        """POST /v1/jobs with an Idempotency-Key, so a retried submit never makes a second job."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return self.request("POST", "/v1/jobs", json=body, headers=headers).json()

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def pipelines(self) -> list[dict]:
        return self.request("GET", "/v1/pipelines").json()["data"]

    def upload(self, path: Path) -> dict:
        """POST /v1/files: the file's id is then a job input as "file:<id>"."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ApiError(f"cannot read {path}: {exc.strerror}") from None
        return self.request("POST", "/v1/files", files={"file": (path.name, data)}).json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """The job's Server-Sent Events as (event, data) until `end` (whose data is the final job)."""
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(30, read=None)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(error_line(resp), resp.status_code)
                event, data = "message", []
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield event, json.loads("\n".join(data))
                        if event == "end":
                            return
                        event, data = "message", []
        except httpx.TransportError as exc:
            reason = exc or type(exc).__name__
            raise ApiError(f"lost the event stream of job {job_id} at {self.url} ({reason})") from None

    def download(self, job_id: str, name: str, target: Path) -> int:
        """Stream a file output to `target`; returns its size in bytes."""
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/outputs/{name}") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(error_line(resp), resp.status_code)
                size = 0
                partial = target.with_name(target.name + ".part")
                with open(partial, "wb") as out:
                    for chunk in resp.iter_bytes():
                        out.write(chunk)
                        size += len(chunk)
                partial.replace(target)
                return size
        except httpx.TransportError as exc:
            raise ApiError(f"download of {name} from {self.url} failed ({exc or type(exc).__name__})") from None


def resolve_file_inputs(client: Client, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs given as `@path` are uploaded first and sent as "file:<id>"."""
    out = {}
    for name, value in inputs.items():
        if isinstance(value, str) and value.startswith("@") and len(value) > 1:
            out[name] = f"file:{client.upload(Path(value[1:]).expanduser())['id']}"
        else:
            out[name] = value
    return out


def output_filename(job: dict, name: str) -> str:
    """A file name for an output: its name and the extension of its content type."""
    import mimetypes

    ref = (job.get("outputs") or {}).get(name)
    kind = (ref.get("content_type") or "").split(";")[0].strip() if isinstance(ref, dict) else ""
    ext = {"audio/wav": ".wav", "audio/x-wav": ".wav", "image/png": ".png", "video/mp4": ".mp4"}.get(kind) \
        or mimetypes.guess_extension(kind) or ".bin"
    return f"{name}{ext}"
