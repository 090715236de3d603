
import pytest

from omnijobs.artifacts import FileConnector, ShmConnector, connector_for_uri, make_connector
from omnijobs.settings import Settings


def test_make_connector_by_setting(tmp_path):
    assert isinstance(make_connector(Settings(artifacts="file", artifacts_dir=tmp_path)), FileConnector)
    assert isinstance(make_connector(Settings(artifacts="shm")), ShmConnector)
    s3 = make_connector(Settings(artifacts="s3", s3_bucket="b1", s3_endpoint_url="http://127.0.0.1:1"))
    assert s3.scheme == "s3" and s3.bucket == "b1"


def test_reads_a_uri_whatever_wrote_it(tmp_path):
    settings = Settings(artifacts="shm", artifacts_dir=tmp_path)
    uri = FileConnector(tmp_path).put("job/s/p-x", b"data")
    assert connector_for_uri(uri, settings).get(uri) == b"data"
    with pytest.raises(ValueError):
        connector_for_uri("ftp://x/y", settings)
