"""Where large artifacts live between stages: local files, shared memory or S3."""

from omnijobs.artifacts.base import ArtifactStoreUnavailable, Connector, new_key
from omnijobs.artifacts.factory import connector_for_uri, make_connector
from omnijobs.artifacts.file import FileConnector
from omnijobs.artifacts.shm import ShmConnector
from omnijobs.artifacts.tensors import bytes_to_tensors, tensors_to_bytes

__all__ = [
    "ArtifactStoreUnavailable", "Connector", "FileConnector", "ShmConnector",
    "bytes_to_tensors", "connector_for_uri", "make_connector", "new_key", "tensors_to_bytes",
]


def __getattr__(name: str):
    # boto3 is an optional extra: only touching S3Connector needs it.
    if name == "S3Connector":
        from omnijobs.artifacts.s3 import S3Connector

        return S3Connector
    raise AttributeError(name)
