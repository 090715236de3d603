"""Qwen2.5-Omni's hand-offs (hidden states, codec codes, the WAV) through shared memory and real S3."""

from __future__ import annotations

import uuid

import pytest

from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS
from tests.e2e.test_artifacts_http import _eventually_empty
from tests.e2e.test_omni import download_wav, png_uri, submit, wav_uri
from tests.s3server import artifact_env, run_s3_server

STAGES = ["qwen2_5_omni.thinker", "qwen2_5_omni.talker", "qwen2_5_omni.token2wav"]


@pytest.fixture(scope="module", params=["shm", "s3"])
def omni(request, settings_env, tmp_path_factory):
    with run_s3_server(tmp_path_factory.mktemp("s3")) as s3:
        env = {**settings_env, **artifact_env(request.param, s3, f"omni-{uuid.uuid4().hex[:8]}")}
        c = Cluster(env, ARTIFACTS / f"e2e-logs-omni-{request.param}")
        try:
            started = [c.start_worker(stage) for stage in STAGES]
            c.start_api()
            c.wait_workers_ready(started, timeout=240)
            yield request.param, c, env
        finally:
            c.stop()


def test_omni_job_through_the_connector(omni):
    kind, cluster, env = omni
    with cluster.client() as http:
        job_id = submit(http, {
            "pipeline": "qwen2_5_omni",
            "inputs": {"prompt": "What do you see and hear?", "image": png_uri("blue"), "audio": wav_uri()},
            "params": {"thinker": {"max_tokens": 5, "seed": 3}, "talker": {"min_tokens": 6, "max_tokens": 6},
                       "token2wav": {"num_steps": 2}},
        })
        job = wait_job(http, job_id, timeout=120)
        assert job["status"] == "succeeded", job
        # The talker reads the thinker's states as they are written (a stream); the recorded hand-off
        # went through the connector all the same.
        thinker = next(s for s in job["stages"] if s["name"] == "thinker")
        assert thinker["outputs"]["hidden"]["type"] == "tensor" and thinker["outputs"]["hidden"]["bytes"] > 0
        assert download_wav(http, job) == (24000, 480 * 6)
        # The hand-offs are freed once the job is done; the WAV stays downloadable.
        assert _eventually_empty(kind, env, job_id, intermediates=("thinker/hidden", "talker/codes")) == []
        assert download_wav(http, job) == (24000, 480 * 6)
