"""The one place that reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNIJOBS_", env_file=None, extra="ignore")

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/omnijobs"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # With broker_url "filesystem://" (one machine, no server): the folder holding the queues.
    broker_dir: Path = Path("~/.cache/omnijobs/broker").expanduser()

    models_dir: Path = Path("~/.cache/omnijobs/models").expanduser()
    # Extra folders of pipeline YAML files, loaded after the shipped ones.
    pipelines_path: str = ""  # os.pathsep-separated folders

    artifacts: Literal["file", "shm", "s3"] = "file"
    artifacts_dir: Path = Path("~/.cache/omnijobs/artifacts").expanduser()
    s3_bucket: str = "omnijobs"
    s3_endpoint_url: str | None = None  # None: AWS itself
    s3_access_key: str | None = None  # None: boto3's default credential chain
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    # Values whose JSON is larger than this go through the connector instead of the row.
    inline_max_bytes: int = 64 * 1024

    # Requests larger than this are refused with 413 before they are parsed.
    max_body_bytes: int = 8 * 1024 * 1024

    # Media inputs (uploads, data URIs, URLs). An upload or a data URI may not exceed upload_max_bytes.
    upload_max_bytes: int = 32 * 1024 * 1024
    media_max_pixels: int = 40_000_000
    max_media_inputs: int = 8
    url_fetch_timeout_s: float = 20.0
    url_fetch_max_bytes: int = 32 * 1024 * 1024
    # URL fetches running at once in one API process, in all and per key; over either: 429. 0 = no cap.
    url_fetch_concurrency: int = 16
    url_fetch_per_key: int = 4
    # A job's metadata, as JSON, may not exceed this.
    metadata_max_bytes: int = 16 * 1024
    # Hosts or IPs exempt from the private-address check of outbound URLs, comma-separated.
    allowed_private_hosts: str = ""

    @property
    def private_hosts_allowed(self) -> frozenset[str]:
        return frozenset(h.strip() for h in self.allowed_private_hosts.split(",") if h.strip())

    # Worker process settings.
    torch_threads: int = 1
    # AR stages (chat, Qwen2.5-VL): "auto" hosts them on vLLM where it is installed, else on transformers.
    ar_engine: Literal["auto", "transformers", "vllm"] = "auto"
    worker_hostname: str | None = None

    # Durability: leases and the reconciler.
    lease_grace_s: float = 30.0
    requeue_after_s: float = 300.0
    reconcile_interval_s: float = 10.0
    # Broker redelivery of unacknowledged messages; must exceed the longest stage timeout.
    visibility_timeout_s: int = 4 * 3600

    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0

    api_base_url: str = ""
    # Without api_base_url, job URLs use the request's Host only when it is one of these
    # (comma-separated host names, no port); otherwise job URLs are paths without a host.
    trusted_hosts: str = "127.0.0.1,localhost,::1"

    # Webhooks. Jobs without an owner (no API keys) are signed with these `whsec_` secrets,
    # comma-separated, newest first: several sign at once while one is rotated.
    webhook_secret: str = ""
    webhook_timeout_s: float = 15.0
    # Seconds before each retry; after the last one the delivery is given up.
    webhook_retry_schedule_s: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    webhook_jitter: float = 0.1
    webhook_concurrency: int = 8
    # Sends to one key's receivers at once in one webhook process: a slow receiver cannot take every thread.
    webhook_per_key_concurrency: int = 2
    webhook_relay_interval_s: float = 1.0
    # A send not recorded this long after it began is taken as lost and retried.
    webhook_lease_s: float = 60.0

    # Retention: artifacts of jobs finished longer ago than this are deleted (the rows stay); 0 = keep.
    retention_s: float = 7 * 24 * 3600.0
    retention_batch: int = 200

    # Admission control of POST /v1/jobs: a stage queue deeper than its bound, or a key over its rate,
    # gets 429 with Retry-After. Bounds by "<pipeline>.<stage>", e.g. '{"chat.generate": 500}'; 0 = none.
    queue_max_depth: int = 10_000
    queue_bounds: dict[str, int] = {}
    queue_full_retry_after_s: int = 5
    rate_limit_per_s: float = 50.0  # submissions per key per second, refilled continuously; 0 = off
    rate_limit_burst: int = 200

    # Stage worker registry: a worker silent for longer than worker_dead_after_s is shown dead.
    worker_heartbeat_s: float = 5.0
    # Send Celery task events for stage tasks (Flower's Tasks page counts them): three broker
    # messages per run, so off unless an operator watches with Flower (compose turns it on).
    task_events: bool = False
    worker_dead_after_s: float = 20.0
    # A rotated webhook secret keeps signing-verification valid this long.
    webhook_secret_grace_s: float = 24 * 3600

    # Per-job event channel (a Redis stream on the broker's Redis; none with other brokers): entries
    # kept per job, expiry after the last write and after the job's end, and how often a follower
    # re-reads the store when the channel stays quiet.
    stream_maxlen: int = 10_000
    stream_ttl_s: int = 3600
    stream_ended_ttl_s: int = 300
    events_poll_s: float = 2.0
    # `Prefer: wait=N` on POST /v1/jobs holds the answer at most this long.
    prefer_wait_max_s: float = 60.0
    # OpenAI-compatible routes: how long a synchronous request waits for its job (then an error naming
    # the job, which goes on), and whether a client that disconnects cancels its job.
    openai_wait_s: float = 600.0
    openai_cancel_on_disconnect: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
