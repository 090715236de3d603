"""Artifacts in any S3-compatible object store."""

from __future__ import annotations

from urllib.parse import urlparse

from omnijobs.artifacts.base import ArtifactStoreUnavailable, Connector
from omnijobs.errors import MissingExtra

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError
except ImportError:  # pragma: no cover - exercised only without the extra
    boto3 = None

# A dead store must fail a stage in seconds, not hang it for minutes of default retries.
_CONFIG = dict(
    connect_timeout=3, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"},
    signature_version="s3v4", s3={"addressing_style": "path"},
)
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def _code(exc: "ClientError") -> str:
    return exc.response.get("Error", {}).get("Code", "")


class S3Connector(Connector):
    scheme = "s3"

    def __init__(self, bucket: str, endpoint_url: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, region: str = "us-east-1", prefix: str = ""):
        if boto3 is None:
            raise MissingExtra("boto3", "s3")
        self.bucket, self.region, self.endpoint_url = bucket, region, endpoint_url
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region,
            aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
            config=Config(**_CONFIG),
        )

    def _call(self, method: str, **kwargs):
        try:
            return getattr(self.client, method)(**kwargs)
        except (BotoConnectionError, HTTPClientError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> ArtifactStoreUnavailable:
        return ArtifactStoreUnavailable(f"S3 store at {self.endpoint_url or 'AWS'} did not answer: {exc}")

    def _key_of(self, uri: str) -> str:
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        # Refuse other buckets and keys outside the prefix: URIs may come back from clients.
        if parsed.scheme != "s3" or parsed.netloc != self.bucket or not key.startswith(self.prefix):
            raise ValueError(f"{uri!r} is not in s3://{self.bucket}/{self.prefix}")
        return key

    def ensure_bucket(self) -> None:
        try:
            self._call("head_bucket", Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
        extra = {} if self.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": self.region}}
        try:
            self._call("create_bucket", Bucket=self.bucket, **extra)
        except ClientError as exc:
            # Another worker created it between our check and our create.
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        full = self.prefix + key
        args = dict(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)
        try:
            self._call("put_object", **args)
        except ClientError as exc:
            if _code(exc) != "NoSuchBucket":
                raise
            # Created lazily so a fresh store needs no setup step.
            self.ensure_bucket()
            self._call("put_object", **args)
        return f"s3://{self.bucket}/{full}"

    def get(self, uri: str) -> bytes:
        try:
            return self._call("get_object", Bucket=self.bucket, Key=self._key_of(uri))["Body"].read()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise FileNotFoundError(uri) from exc
            raise

    def delete(self, uri: str) -> None:
        self._call("delete_object", Bucket=self.bucket, Key=self._key_of(uri))

    def delete_prefix(self, prefix: str) -> int:
        folder = self.prefix + prefix.strip("/") + "/"
        count = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            for page in pages:
                # A page holds at most 1000 keys, the most one delete_objects call accepts.
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if not objects:
                    continue
                done = self._call("delete_objects", Bucket=self.bucket,
                                  Delete={"Objects": objects, "Quiet": True})
                if done.get("Errors"):
                    raise RuntimeError(f"S3 refused to delete {done['Errors'][:3]}")
                count += len(objects)
        except (BotoConnectionError, HTTPClientError) as exc:
            raise self._unavailable(exc) from exc
        except ClientError as exc:
            if _code(exc) != "NoSuchBucket":
                raise
        return count
