"""The official `openai` client against a real cluster: models, chat and text completions, streams."""

from __future__ import annotations

import base64
import io
import time

import openai
import pytest
import redis
from PIL import Image

from omnijobs.streaming import channel_key
from tests.cluster import Cluster, wait_job
from tests.conftest import ARTIFACTS


@pytest.fixture(scope="module")
def vl_worker(cluster, settings_env):
    """A Qwen2.5-VL worker beside the shared cluster (same database and broker)."""
    extra = Cluster(settings_env, ARTIFACTS / "e2e-logs-openai")
    try:
        extra.wait_workers_ready([extra.start_worker("qwen2_5_vl.generate")])
        yield extra
    finally:
        extra.stop()


@pytest.fixture(scope="module")
def ai(cluster):
    return openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key=cluster.admin_key["key"], max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def other(cluster):
    key = cluster.create_key("openai-other")
    return key, openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key=key["key"], max_retries=0, timeout=120)


def png_data_uri(size=(32, 32)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_models_list_and_retrieve(ai):
    ids = {m.id for m in ai.models.list()}
    assert {"chat", "draft_rewrite", "qwen2_5_vl", "qwen2_5_omni", "qwen_image", "wan2_2_t2v"} <= ids
    assert "echo" in ids  # a fixture pipeline with a text prompt and a text output serves chat too
    assert ai.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError):
        ai.models.retrieve("no-such-model")


def test_chat_completion_is_a_job_the_owner_sees(ai, other, client, cluster):
    key, other_ai = other
    raw = other_ai.chat.completions.with_raw_response.create(
        model="chat", max_tokens=8, seed=11, user="u-1",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    reply = raw.parse()
    job_id = raw.headers["omnijobs-job-id"]
    assert reply.id == f"chatcmpl-{job_id}" and reply.object == "chat.completion" and reply.model == "chat"
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    job = client.get(f"/v1/jobs/{job_id}").json()  # the admin sees every job
    assert job["status"] == "succeeded" and job["pipeline"] == "chat"
    assert choice.message.content == job["outputs"]["text"]
    assert job["inputs"]["system"] == "Be brief." and job["inputs"]["prompt"] == "Hello there"
    assert job["metadata"]["user"] == "u-1" and job["stages"][0]["params"]["seed"] == 11
    usage = job["stages"][0]["outputs"]["usage"]
    assert reply.usage.completion_tokens == usage["completion_tokens"] <= 8
    assert reply.usage.total_tokens == usage["prompt_tokens"] + usage["completion_tokens"]
    # The key's own job list has it; another key (not admin) cannot see it.
    with cluster.client(headers={"Authorization": f"Bearer {key['key']}"}) as mine:
        assert job_id in [j["id"] for j in mine.get("/v1/jobs").json()["data"]]
    third = cluster.create_key("openai-third")
    with cluster.client(headers={"Authorization": f"Bearer {third['key']}"}) as stranger:
        assert stranger.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/admin/api/jobs/{job_id}").json()["id"] == job_id  # the admin view


def test_history_goes_to_the_chat_template(ai, client):
    raw = ai.chat.completions.with_raw_response.create(model="chat", max_tokens=4, messages=[
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"}])
    job = client.get(f"/v1/jobs/{raw.headers['omnijobs-job-id']}").json()
    assert job["inputs"]["history"] == [{"role": "user", "content": "My name is Ada."},
                                        {"role": "assistant", "content": "Hello Ada."}]
    # The template framed every turn: the prompt holds more tokens than the last message alone.
    alone = ai.chat.completions.create(model="chat", max_tokens=4, messages=[
        {"role": "user", "content": "What is my name?"}])
    assert raw.parse().usage.prompt_tokens > alone.usage.prompt_tokens


def test_chat_stream_sends_deltas_that_join_to_the_stored_text(ai, client):
    stream = ai.chat.completions.create(model="chat", max_tokens=40, seed=5, temperature=1.0, stream=True,
                                        stream_options={"include_usage": True},
                                        messages=[{"role": "user", "content": "Count to ten"}])
    chunks = list(stream)
    job_id = chunks[0].id.removeprefix("chatcmpl-")
    job = wait_job(client, job_id)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1  # token by token from the stage, not the whole text at the end
    assert "".join(content) == job["outputs"]["text"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(
        job["stages"][0]["outputs"]["token_ids"])


def test_completions_plain_and_streamed(ai, client):
    raw = ai.completions.with_raw_response.create(model="chat", prompt="Once upon a time", max_tokens=6, seed=2)
    done = raw.parse()
    job = client.get(f"/v1/jobs/{raw.headers['omnijobs-job-id']}").json()
    assert done.object == "text_completion" and done.choices[0].text == job["outputs"]["text"]
    parts = list(ai.completions.create(model="chat", prompt="Once upon a time", max_tokens=20, seed=2, stream=True))
    text = "".join(p.choices[0].text for p in parts if p.choices)
    job = wait_job(client, parts[0].id.removeprefix("cmpl-"))
    assert text == job["outputs"]["text"] and sum(1 for p in parts if p.choices and p.choices[0].text) > 1


def test_chat_with_an_image(ai, vl_worker, client):
    raw = ai.chat.completions.with_raw_response.create(model="qwen2_5_vl", max_tokens=6, messages=[{
        "role": "user", "content": [{"type": "text", "text": "What is this?"},
                                    {"type": "image_url", "image_url": {"url": png_data_uri()}}]}])
    reply = raw.parse()
    job = client.get(f"/v1/jobs/{raw.headers['omnijobs-job-id']}").json()
    assert job["status"] == "succeeded" and job["inputs"]["image"]["type"] == "image"
    assert reply.choices[0].message.content == job["outputs"]["text"]


@pytest.mark.parametrize(("kwargs", "error", "param"), [
    ({"model": "nope"}, openai.NotFoundError, "model"),
    ({"model": "qwen_image"}, openai.BadRequestError, "model"),
    ({"n": 2}, openai.BadRequestError, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri()}}]}]},
     openai.BadRequestError, "messages[0].content[0].image_url"),
    ({"model": "qwen2_5_omni", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "not base64!!", "format": "wav"}}]}]},
     openai.BadRequestError, "messages[0].content[0].input_audio.data"),
    ({"model": "qwen2_5_vl", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]}]},
     openai.BadRequestError, "messages[0].content[0].image_url"),
    ({"max_tokens": 0}, openai.BadRequestError, "max_tokens"),
    ({"stop": ["\n"]}, openai.BadRequestError, "stop"),
    ({"modalities": ["text", "audio"], "audio": {"format": "wav"}}, openai.BadRequestError, "modalities"),
])
def test_bad_requests_raise_the_clients_4xx_and_write_nothing(cluster, kwargs, error, param):
    key = cluster.create_key("openai-bad")
    bad = openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key=key["key"], max_retries=0)
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(error) as info:
        bad.chat.completions.create(**body)
    err = info.value.body
    assert err["param"] == param, err
    assert param.split("[")[0].split(".")[0] in err["message"] or param == "model" or err["message"]
    with cluster.client(headers={"Authorization": f"Bearer {key['key']}"}) as mine:
        assert mine.get("/v1/jobs").json()["data"] == []


def test_a_bad_key_is_an_authentication_error(cluster):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="omk_wrong", max_retries=0).models.list()


def test_a_client_leaving_a_stream_cancels_its_job(ai, client, settings):
    stream = ai.chat.completions.create(
        model="chat", max_tokens=900, seed=8, temperature=1.0, stream=True,
        messages=[{"role": "user", "content": "Write a very long story"}])
    got = 0
    job_id = None
    for chunk in stream:
        job_id = chunk.id.removeprefix("chatcmpl-")
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 3:
                break
    stream.close()
    job = wait_job(client, job_id, timeout=60)
    assert job["status"] == "canceled", job
    assert job["stages"][0]["status"] == "canceled"
    # The worker stopped generating (it notices at its next heartbeat): the channel stops growing
    # well before max_tokens deltas.
    r = redis.Redis.from_url(settings.broker_url)
    sizes = [r.xlen(channel_key(job_id))]
    while len(sizes) < 60 and not (len(sizes) >= 3 and sizes[-1] == sizes[-3]):
        time.sleep(0.5)
        sizes.append(r.xlen(channel_key(job_id)))
    assert sizes[-1] == sizes[-3] and 3 <= sizes[-1] < 900, sizes
