"""Which connector to write with, and which one can read a given URI."""

from __future__ import annotations

from urllib.parse import urlparse

from omnijobs.artifacts.base import Connector


def _s3(settings) -> Connector:
    from omnijobs.artifacts.s3 import S3Connector

    return S3Connector(
        bucket=settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        region=settings.s3_region,
        prefix=settings.s3_prefix,
    )


def _by_scheme(scheme: str, settings) -> Connector:
    if scheme == "file":
        from omnijobs.artifacts.file import FileConnector

        return FileConnector(settings.artifacts_dir)
    if scheme == "shm":
        from omnijobs.artifacts.shm import ShmConnector

        return ShmConnector()
    if scheme == "s3":
        return _s3(settings)
    raise ValueError(f"unknown artifact connector {scheme!r}; expected file, shm or s3")


def make_connector(settings) -> Connector:
    return _by_scheme(settings.artifacts, settings)


def connector_for_uri(uri: str, settings) -> Connector:
    # Artifacts outlive a configuration change: read each URI with the store that wrote it.
    return _by_scheme(urlparse(uri).scheme, settings)
