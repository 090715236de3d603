"""The `openai` client's image, speech and video calls against real diffusion workers."""

from __future__ import annotations

import base64
import io
import time

import httpx
import openai
import pytest
from PIL import Image, ImageSequence

from tests.cluster import Cluster
from tests.conftest import ARTIFACTS

STAGES = ["z_image_turbo.generate", "qwen_image_edit.edit", "qwen_image_layered.decompose", "stable_audio.generate",
          "wan2_2_t2v.generate"]


@pytest.fixture(scope="module")
def ai(cluster, settings_env):
    extra = Cluster(settings_env, ARTIFACTS / "e2e-logs-openai-media")
    try:
        extra.wait_workers_ready([extra.start_worker(s) for s in STAGES], timeout=300)
        yield openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key=cluster.admin_key["key"], max_retries=0,
                            timeout=300)
    finally:
        extra.stop()


def test_images_generate_returns_a_png_of_the_asked_size(ai):
    out = ai.images.generate(model="z_image_turbo", prompt="a red square", size="48x32",
                             extra_body={"num_inference_steps": 2, "seed": 1})
    image = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
    assert image.format == "PNG" and image.size == (48, 32)


def test_images_generate_bad_size_names_the_field(ai):
    with pytest.raises(openai.BadRequestError) as info:
        ai.images.generate(model="z_image_turbo", prompt="x", size="50x32")
    assert info.value.body["param"] == "size"


def test_images_edit(ai):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 90, 200)).save(buf, format="PNG")
    out = ai.images.edit(model="qwen_image_edit", prompt="make it green", image=("in.png", buf.getvalue(), "image/png"))
    image = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
    assert image.format == "PNG"


def test_images_edit_into_layers_gives_one_rgba_png_per_layer(ai):
    buf = io.BytesIO()
    Image.new("RGB", (40, 24), (0, 90, 200)).save(buf, format="PNG")
    raw = ai.images.with_raw_response.edit(model="qwen_image_layered", prompt="a blue card",
                                           image=("in.png", buf.getvalue(), "image/png"),
                                           extra_body={"layers": 3, "num_inference_steps": 2, "seed": 4})
    out = raw.parse()
    layers = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in out.data]
    assert len(layers) == 3
    assert all(i.format == "PNG" and i.mode == "RGBA" and i.size == layers[0].size for i in layers)
    # The same layers as the job's own output (an animated PNG, a frame per layer).
    url = ai.images.edit(model="qwen_image_layered", prompt="a blue card", response_format="url",
                         image=("in.png", buf.getvalue(), "image/png"),
                         extra_body={"layers": 3, "num_inference_steps": 2, "seed": 4}).data[0].url
    job_id = raw.headers["omnijobs-job-id"]
    assert url.endswith("/outputs/layers") and job_id not in url  # a job of its own, same params
    got = httpx.get(url, headers={"Authorization": f"Bearer {ai.api_key}"}, timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(got.content)) as apng:
        assert apng.n_frames == 3
        for frame, layer in zip(ImageSequence.Iterator(apng), layers, strict=True):
            assert frame.convert("RGBA").tobytes() == layer.tobytes()  # seeded: the same layers


def test_audio_speech_returns_a_wav(ai):
    wav = ai.audio.speech.create(model="stable_audio", input="rain on a roof", voice="alloy",
                                 extra_body={"num_inference_steps": 2, "seconds": 0.5})
    data = wav.read()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def test_videos_create_retrieve_download_list_delete(ai):
    video = ai.videos.create(model="wan2_2_t2v", prompt="waves", size="32x32")
    assert video.status in ("queued", "in_progress")
    for _ in range(600):
        video = ai.videos.retrieve(video.id)
        if video.status in ("completed", "failed"):
            break
        time.sleep(0.5)
    assert video.status == "completed" and video.progress == 100
    content = ai.videos.download_content(video.id).read()
    assert content[4:8] == b"ftyp"  # an MP4
    assert video.id in [v.id for v in ai.videos.list()]
    deleted = ai.videos.delete(video.id)
    assert deleted.deleted is True and deleted.id == video.id
