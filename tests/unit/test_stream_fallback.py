"""Without Redis, streamed edges run as plain ones (no transport to carry chunks)."""

from omnijobs.orchestrator import newly_ready
from omnijobs.pipelines import load_registry
from omnijobs.settings import Settings
from omnijobs.store.states import RunStatus
from omnijobs.streaming.chunks import where_streams_run


def test_streamed_edges_are_plain_without_redis(tmp_path):
    registry = load_registry()
    running = {"thinker": RunStatus.SUCCEEDED, "talker": RunStatus.RUNNING, "code2wav": RunStatus.WAITING}
    assert newly_ready(registry.get("qwen3_omni"), running) == ["code2wav"]
    dev = where_streams_run(Settings(broker_url=f"filesystem://{tmp_path}"), registry)
    assert dev.get("qwen3_omni").stages["code2wav"].streams == {}
    assert newly_ready(dev.get("qwen3_omni"), running) == []
    assert where_streams_run(Settings(broker_url="redis://127.0.0.1:1/0"), registry) is registry
