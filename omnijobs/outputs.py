"""Reading a job's file outputs (PNG, WAV, MP4...) back for download."""

from __future__ import annotations

from dataclasses import dataclass

from omnijobs.artifacts.refs import is_ref
from omnijobs.artifacts.values import StageValues, extension_for
from omnijobs.errors import Gone, NotFound


@dataclass(frozen=True)
class OutputFile:
    data: bytes
    content_type: str
    filename: str


def read_output(store, values: StageValues, job_id: str, name: str, owner: str | None = None) -> OutputFile:
    """The bytes of one named output of a job the caller may see."""
    job = store.get_job(job_id, owner=owner)
    outputs = job.outputs or {}
    if name not in outputs:
        if job.status in ("queued", "running"):
            raise NotFound(f"job is {job.status}; output '{name}' is not there yet", field="name")
        raise NotFound(f"job has no output '{name}' (outputs: {', '.join(sorted(outputs)) or 'none'})", field="name")
    ref = outputs[name]
    if not is_ref(ref):
        raise NotFound(f"output '{name}' is an inline value, not a file: read it from the job", field="name")
    if ref.get("expired"):
        raise Gone(f"output '{name}' was deleted after the retention period", field="name")
    uri = ref["artifact"]
    try:
        data = values.reader(uri).get(uri)
    except FileNotFoundError:
        raise Gone(f"output '{name}' is no longer stored", field="name") from None
    content_type = ref.get("content_type") or "application/octet-stream"
    return OutputFile(data, content_type, f"{name}{extension_for(content_type)}")
