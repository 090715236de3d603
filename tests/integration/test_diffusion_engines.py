"""Diffusion engines in-process on tiny real-class diffusers models built once for this module."""

from __future__ import annotations

import io
import time
import wave

import av
import pytest
from PIL import Image

from omnijobs.engines.base import Media, StageRequest
from omnijobs.errors import FatalStageError, InvalidInput

FOLDERS = ["tiny/qwen_image", "tiny/qwen_image_edit", "tiny/qwen_image_layered", "tiny/z_image_turbo", "tiny/longcat_image",
           "tiny/wan2_2_t2v", "tiny/stable_audio"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from omnijobs.engines.torch_runtime import configure_threads
    from omnijobs.models.tiny import build_tiny

    configure_threads(1)  # as a worker does: on a shared CPU more threads make tiny models slower
    path = tmp_path_factory.mktemp("diffusion-models")
    start = time.monotonic()
    build_tiny(path, only=FOLDERS)
    print(f"built {len(FOLDERS)} tiny diffusion models in {time.monotonic() - start:.1f}s")
    return path


@pytest.fixture(scope="module")
def registry():
    from omnijobs.pipelines import load_registry

    return load_registry("")


class Recorder:
    """The runner's side of the context: progress per run id, and which runs are canceled."""

    def __init__(self):
        self.progress: dict[str, list[dict]] = {}
        self.stop: set[str] = set()
        self.stop_after_step: dict[str, int] = {}

    def report(self, run_id, progress):
        self.progress.setdefault(run_id, []).append(dict(progress))
        if progress["step"] >= self.stop_after_step.get(run_id, 10**9):
            self.stop.add(run_id)

    def should_stop(self, run_id):
        return run_id in self.stop


def load(models, registry, pipeline: str, stage: str, recorder: Recorder | None = None):
    from omnijobs.engines.factory import create_engine

    recorder = recorder or Recorder()
    spec = registry.get(pipeline).stage(stage)
    engine = create_engine(spec, "cpu", models, report_progress=recorder.report, should_stop=recorder.should_stop)
    engine.load()
    engine.recorder = recorder
    engine.defaults = spec.default_params()
    return engine


def req(engine, run_id, inputs, **params):
    return StageRequest(run_id, inputs, {**engine.defaults, **params})


def timed(engine, batch):
    start = time.monotonic()
    out = engine.run(batch)
    print(f"{type(engine).__name__}: {len(batch)} rows in {time.monotonic() - start:.2f}s")
    return out


def png_size(media: Media) -> tuple[int, int]:
    assert media.content_type == "image/png"
    image = Image.open(io.BytesIO(media.data))
    assert image.format == "PNG"
    return image.size


@pytest.fixture(scope="module")
def qwen(models, registry):
    return {s: load(models, registry, "qwen_image", s) for s in ("encode", "denoise", "decode")}


def chain(qwen, rows: list[tuple[str, str, dict]]):
    enc, den, dec = qwen["encode"], qwen["denoise"], qwen["decode"]
    embeds = timed(enc, [req(enc, rid, {"prompt": prompt}) for rid, prompt, _ in rows])
    latents = timed(den, [req(den, rid, {"embeds": e["embeds"]}, **p) for (rid, _, p), e in zip(rows, embeds)])
    return timed(dec, [req(dec, rid, {"latents": lat["latents"]}) for (rid, _, _), lat in zip(rows, latents)])


def test_qwen_image_three_stages_same_seed_same_bytes(qwen):
    first = chain(qwen, [("a", "a red fox", {"seed": 7}), ("b", "a red fox", {"seed": 8})])
    again = chain(qwen, [("c", "a red fox", {"seed": 7})])
    assert png_size(first[0]["image"]) == (32, 32)
    assert first[0]["image"].data == again[0]["image"].data
    assert first[0]["image"].data != first[1]["image"].data


def test_qwen_image_tensors_between_stages(qwen):
    enc, den = qwen["encode"], qwen["denoise"]
    [short, long] = enc.run([req(enc, "s", {"prompt": "fox"}, negative_prompt="blurry"),
                             req(enc, "l", {"prompt": "a fox jumps over the lazy dog at dawn"})])
    assert set(short["embeds"]) == {"prompt_embeds", "negative_prompt_embeds"}
    assert set(long["embeds"]) == {"prompt_embeds"}
    # Padding is removed per prompt: each row's embeddings keep their own length.
    assert short["embeds"]["prompt_embeds"].shape[0] < long["embeds"]["prompt_embeds"].shape[0]
    [out] = den.run([req(den, "s", {"embeds": short["embeds"]}, height=64, width=32, seed=1)])
    assert tuple(out["latents"]["latents"].shape) == (4, 1, 8, 4)


def test_compatible_rows_batch_and_another_size_still_finishes(qwen):
    den = qwen["denoise"]
    calls = []
    original = type(den.pipe).__call__

    def counting(pipe, *args, **kwargs):
        calls.append((kwargs["height"], kwargs["width"], len(kwargs["generator"])))
        return original(pipe, *args, **kwargs)

    embeds = qwen["encode"].run([req(qwen["encode"], "e", {"prompt": "a boat"})])[0]["embeds"]
    rows = [req(den, f"r{i}", {"embeds": embeds}, seed=i) for i in range(3)]
    rows.insert(1, req(den, "big", {"embeds": embeds}, seed=0, height=64, width=64))
    type(den.pipe).__call__ = counting
    try:
        out = timed(den, rows)
    finally:
        type(den.pipe).__call__ = original
    assert sorted(calls) == [(32, 32, 3), (64, 64, 1)]
    assert [tuple(o["latents"]["latents"].shape[-2:]) for o in out] == [(4, 4), (8, 8), (4, 4), (4, 4)]


def test_progress_and_cancel_between_steps(qwen):
    den = qwen["denoise"]
    rec = den.recorder
    embeds = qwen["encode"].run([req(qwen["encode"], "e", {"prompt": "a boat"})])[0]["embeds"]
    rec.stop_after_step["stopped"] = 2
    rec.stop_after_step["alone"] = 1
    [stopped, kept] = den.run([req(den, "stopped", {"embeds": embeds}, num_inference_steps=6, seed=1),
                               req(den, "kept", {"embeds": embeds}, num_inference_steps=6, seed=2)])
    [alone] = den.run([req(den, "alone", {"embeds": embeds}, num_inference_steps=6, seed=3)])
    assert isinstance(stopped, FatalStageError) and "canceled" in str(stopped)
    assert "latents" in kept  # a batch mate of a canceled row still finishes
    assert rec.progress["kept"][-1] == {"step": 6, "steps": 6}
    assert rec.progress["kept"][0] == {"step": 0, "steps": 6}
    # Alone in its call, the canceled row stops the denoise loop after the step that saw it.
    assert isinstance(alone, FatalStageError)
    assert [p["step"] for p in rec.progress["alone"]] == [0, 1]


@pytest.mark.parametrize("pipeline", ["longcat_image", "wan2_2_t2v", "stable_audio"])
def test_cancel_in_single_stage_engines(models, registry, pipeline):
    """The three ways in between steps: callback_on_step_end (Wan), the older callback (Stable Audio),
    and the wrapped scheduler step (LongCat, whose pipeline takes no callback)."""
    rec = Recorder()
    engine = load(models, registry, pipeline, "generate", rec)
    rec.stop_after_step["x"] = 2
    [out] = engine.run([req(engine, "x", {"prompt": "storm"}, seed=1, num_inference_steps=6)])
    assert isinstance(out, FatalStageError) and "canceled" in str(out)
    assert [p["step"] for p in rec.progress["x"]] == [0, 1, 2]


def test_qwen_image_edit(models, registry):
    edit = load(models, registry, "qwen_image_edit", "edit")
    source = Image.new("RGB", (64, 32), (200, 30, 30))
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    image = Media(buf.getvalue(), "image/png")
    out = timed(edit, [
        req(edit, "a", {"image": image, "prompt": "make it blue"}, seed=1),
        req(edit, "b", {"image": image, "prompt": "make it blue"}, seed=1),
        req(edit, "c", {"image": image, "prompt": "make it green"}, seed=2, height=32, width=32),
        req(edit, "d", {"image": Media(b"not an image", "image/png"), "prompt": "x"}),
    ])
    # 2:1 at the 4096-pixel condition area, sides rounded to 32: 96x32 (not ~1024x1024).
    assert png_size(out[0]["image"]) == (96, 32)
    assert out[0]["image"].data == out[1]["image"].data
    assert png_size(out[2]["image"]) == (32, 32)
    assert isinstance(out[3], FatalStageError)


def png_of(image) -> Media:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Media(buf.getvalue(), "image/png")


def test_qwen_image_layered_gives_one_rgba_frame_per_layer(models, registry):
    engine = load(models, registry, "qwen_image_layered", "decompose")
    image = png_of(Image.new("RGBA", (64, 32), (200, 30, 30, 128)))
    out = timed(engine, [
        req(engine, "a", {"image": image, "prompt": "a red card"}, seed=1, layers=3),
        req(engine, "b", {"image": image, "prompt": "a red card"}, seed=1, layers=3),
        req(engine, "c", {"image": image, "prompt": "a red card"}, seed=2, layers=2),
    ])
    assert out[0]["layers"].data == out[1]["layers"].data
    for result, layers in ((out[0], 3), (out[2], 2)):
        apng = Image.open(io.BytesIO(result["layers"].data))
        assert apng.format == "PNG" and apng.n_frames == layers
        for k in range(layers):
            apng.seek(k)
            assert apng.mode == "RGBA" and apng.size == (96, 32)


@pytest.mark.parametrize("pipeline", ["z_image_turbo", "longcat_image"])
def test_text_to_image(models, registry, pipeline):
    engine = load(models, registry, pipeline, "generate")
    out = timed(engine, [
        req(engine, "a", {"prompt": "a lighthouse"}, seed=5),
        req(engine, "b", {"prompt": "a lighthouse"}, seed=5, guidance_scale=2.0, negative_prompt="fog"),
        req(engine, "c", {"prompt": "a lighthouse"}, seed=5),
        req(engine, "d", {"prompt": "a lighthouse"}, seed=5, height=48, width=32),
    ])
    assert png_size(out[0]["image"]) == (32, 32)
    assert out[0]["image"].data == out[2]["image"].data
    assert png_size(out[3]["image"]) == (32, 48)
    steps = engine.defaults["num_inference_steps"]
    assert engine.recorder.progress["a"][-1] == {"step": steps, "steps": steps}


def test_wan_video_has_the_asked_frames(models, registry):
    engine = load(models, registry, "wan2_2_t2v", "generate")
    assert engine.pipe.transformer_2 is not None and engine.pipe.config.boundary_ratio == 0.875
    out = timed(engine, [
        req(engine, "a", {"prompt": "waves"}, seed=1, num_frames=9),
        req(engine, "b", {"prompt": "waves"}, seed=1, num_frames=5),
        req(engine, "c", {"prompt": "waves"}, seed=1, num_frames=6),
    ])
    for result, frames in ((out[0], 9), (out[1], 5)):
        assert result["video"].content_type == "video/mp4"
        with av.open(io.BytesIO(result["video"].data)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(decoded) == frames and decoded[0].shape == (32, 32, 3)
    assert isinstance(out[2], FatalStageError) and "4k+1" in str(out[2])


def test_stable_audio_wav(models, registry):
    engine = load(models, registry, "stable_audio", "generate")
    out = timed(engine, [
        req(engine, "a", {"prompt": "rain"}, seed=1, seconds=1.5),
        req(engine, "b", {"prompt": "wind"}, seed=2, seconds=1.5),
        req(engine, "c", {"prompt": "rain"}, seed=1, seconds=30.0),
    ])
    again = engine.run([req(engine, "d", {"prompt": "rain"}, seed=1, seconds=1.5),
                        req(engine, "e", {"prompt": "wind"}, seed=2, seconds=1.5)])
    assert out[0]["audio"].content_type == "audio/wav"
    with wave.open(io.BytesIO(out[0]["audio"].data)) as clip:
        assert (clip.getframerate(), clip.getnchannels(), clip.getsampwidth()) == (8000, 2, 2)
        assert clip.getnframes() == 12000
    assert out[0]["audio"].data == again[0]["audio"].data
    assert out[0]["audio"].data != out[1]["audio"].data
    assert isinstance(out[2], FatalStageError)


def test_params_outside_the_pipeline_bounds_are_refused(registry):
    from omnijobs.submission import validate_params

    with pytest.raises(InvalidInput) as exc:
        validate_params(registry.get("qwen_image"), {"height": 4096})
    assert exc.value.field == "params.height"
    with pytest.raises(InvalidInput):
        validate_params(registry.get("wan2_2_t2v"), {"num_frames": 6})
    with pytest.raises(InvalidInput):
        validate_params(registry.get("stable_audio"), {"seconds": 0})
    assert validate_params(registry.get("qwen_image"), {"height": 64, "negative_prompt": "x"}) == {
        "denoise": {"height": 64}, "encode": {"negative_prompt": "x"}}
