"""Omni and VL engines in-process on tiny real-class models built once for this module."""

from __future__ import annotations

import io
import shutil
import time
import wave

import numpy as np
import pytest
from PIL import Image

from omnijobs.engines.base import Media, StageRequest
from omnijobs.errors import EngineDead, FatalStageError
from omnijobs.pipelines.spec import StageSpec

FOLDERS = ["tiny/qwen2_5_omni", "tiny/qwen3_omni", "tiny/qwen2_5_vl"]


@pytest.fixture(scope="module")
def models(models_dir):
    # The session's tiny models include these families (built once for the whole suite).
    from omnijobs.models.tiny import build_tiny

    start = time.monotonic()
    build_tiny(models_dir, only=FOLDERS)  # no-op unless a folder is missing
    print(f"tiny omni/VL families ready in {time.monotonic() - start:.1f}s")
    return models_dir


def png(color: str, size: tuple[int, int] = (56, 56)) -> Media:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return Media(buf.getvalue(), "image/png")


def wav(seconds: float = 1.0, rate: int = 22050, freq: float = 440.0) -> Media:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * freq * t) * 0.5 * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return Media(buf.getvalue(), "audio/wav")


def engine(models, engine_name: str, folder: str, options=None, should_stop=None):
    from omnijobs.engines.factory import create_engine

    stage = StageSpec(name="s", engine=engine_name, model=folder, options=options or {})
    extra = {"should_stop": should_stop} if should_stop else {}
    eng = create_engine(stage, "cpu", models, **extra)
    eng.load()
    return eng


def parse_wav(media: Media) -> tuple[int, int]:
    assert media.content_type == "audio/wav"
    assert media.data[:4] == b"RIFF" and media.data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(media.data)) as w:
        assert w.getnchannels() == 1
        return w.getframerate(), w.getnframes()


PROMPTS = ["describe the picture and the sound", "write a short poem about the sea", "hello world"]


def thinker_batch():
    return [
        StageRequest("r0", {"prompt": PROMPTS[0], "image": png("red"), "audio": wav()},
                     {"max_tokens": 6, "temperature": 0.8, "seed": 1}),
        StageRequest("r1", {"prompt": PROMPTS[1], "system": "Be brief."}, {"max_tokens": 4, "seed": 2}),
        StageRequest("r2", {"prompt": PROMPTS[2], "image": png("blue", (84, 60))}, {"max_tokens": 5, "seed": 3}),
    ]


def check_thinker(eng, results):
    assert len(results) == 3
    for k, (res, max_tokens) in enumerate(zip(results, (6, 4, 5))):
        assert not isinstance(res, BaseException), res
        assert isinstance(res["text"], str) and 1 <= len(res["token_ids"]) <= max_tokens
        bundle = res["hidden"]
        n_prompt = bundle["prompt_ids"].shape[0]
        assert res["usage"]["prompt_tokens"] == n_prompt
        dim = bundle["prompt_embeds"].shape[1]
        assert bundle["prompt_hidden"].shape == (n_prompt, dim)
        assert bundle["reply_embeds"].shape == (bundle["reply_ids"].shape[0], dim)
        # Each row's hand-off holds its own prompt, not a neighbour's.
        assert PROMPTS[k] in eng.tokenizer.decode(bundle["prompt_ids"].tolist())
    mm = [int(r["hidden"]["prompt_mm_mask"].sum()) for r in results]
    assert mm[0] > mm[2] > 0 and mm[1] == 0  # image + audio, no media, image only
    assert "audio_feature_lengths" in results[0]["hidden"] and "image_grid_thw" in results[2]["hidden"]
    assert "image_grid_thw" not in results[1]["hidden"]


def check_solo_matches_batch(eng, batch, results):
    """A row's tokens depend on its own prompt and seed, not on its batch neighbours."""
    solo = eng.run([batch[1]])[0]
    assert solo["token_ids"] == results[1]["token_ids"]
    assert solo["hidden"]["reply_ids"].tolist() == results[1]["hidden"]["reply_ids"].tolist()


def test_qwen2_5_omni_thinker_talker_token2wav(models):
    thinker = engine(models, "qwen2_5_omni_thinker", "tiny/qwen2_5_omni/thinker")
    batch = thinker_batch()
    results = thinker.run(batch)
    check_thinker(thinker, results)
    check_solo_matches_batch(thinker, batch, results)

    talker = engine(models, "qwen2_5_omni_talker", "tiny/qwen2_5_omni/talker")
    talk_params = [{"max_tokens": 12, "min_tokens": 12, "seed": 5, "speaker": "Ethan"},
                   {"max_tokens": 7, "min_tokens": 3, "seed": 6},
                   {"max_tokens": 9, "min_tokens": 9, "seed": 7, "speaker": "Nobody"}]
    talked = talker.run([StageRequest(f"t{k}", {"hidden": r["hidden"]}, p)
                         for k, (r, p) in enumerate(zip(results, talk_params))])
    assert talked[0]["codes"]["codes"].shape == (12,) and talked[0]["speaker"] == "Ethan"
    assert 3 <= talked[1]["codes"]["codes"].shape[0] <= 7 and talked[1]["speaker"] == "Chelsie"
    # An unknown speaker fails its own row only.
    assert isinstance(talked[2], FatalStageError) and "Nobody" in str(talked[2])

    t2w = engine(models, "qwen2_5_omni_token2wav", "tiny/qwen2_5_omni/token2wav")
    wavs = t2w.run([StageRequest(f"w{k}", {"codes": t["codes"], "speaker": t["speaker"]}, {"num_steps": 4})
                    for k, t in enumerate(talked[:2])]
                   + [StageRequest("w2", {"codes": {"codes": talked[0]["codes"]["codes"] + 1000}}, {})])
    for k in range(2):
        rate, frames = parse_wav(wavs[k]["audio"])
        # 480 samples of 24 kHz audio per code.
        assert rate == 24000 and frames == 480 * talked[k]["codes"]["codes"].shape[0] > 0
    assert isinstance(wavs[2], FatalStageError) and "codebook" in str(wavs[2])


def test_text_only_rows_make_no_handoff(models):
    thinker = engine(models, "qwen2_5_omni_thinker", "tiny/qwen2_5_omni/thinker")
    out = thinker.run([
        StageRequest("a", {"prompt": "hi", "modalities": ["text"]}, {"max_tokens": 3, "seed": 1}),
        StageRequest("b", {"prompt": "hi", "modalities": ["text", "audio"]}, {"max_tokens": 3, "seed": 1}),
    ])
    assert "hidden" not in out[0] and out[0]["token_ids"]
    assert "hidden" in out[1]


def test_canceled_row_stops_early(models):
    canceled = {"stop-me"}
    thinker = engine(models, "qwen2_5_omni_thinker", "tiny/qwen2_5_omni/thinker",
                     should_stop=lambda run_id: run_id in canceled)
    out = thinker.run([
        StageRequest("stop-me", {"prompt": "a"}, {"max_tokens": 40, "seed": 1, "ignore_eos": True}),
        StageRequest("keep", {"prompt": "b"}, {"max_tokens": 40, "seed": 2, "ignore_eos": True}),
    ])
    assert len(out[0]["token_ids"]) <= 1
    assert len(out[1]["token_ids"]) == 40


def test_bad_media_fails_only_its_row(models):
    thinker = engine(models, "qwen2_5_omni_thinker", "tiny/qwen2_5_omni/thinker")
    truncated = wav().data[:30]
    out = thinker.run([
        StageRequest("a", {"prompt": "x", "image": Media(b"not an image", "image/png")}, {"max_tokens": 2}),
        StageRequest("b", {"prompt": "x", "audio": Media(truncated, "audio/wav")}, {"max_tokens": 2}),
        StageRequest("c", {"prompt": "fine"}, {"max_tokens": 2, "seed": 1}),
    ])
    assert isinstance(out[0], FatalStageError) and "image" in str(out[0])
    assert isinstance(out[1], FatalStageError) and "WAV" in str(out[1])
    assert out[2]["token_ids"]


def test_qwen3_omni_thinker_talker_code2wav(models):
    thinker = engine(models, "qwen3_omni_thinker", "tiny/qwen3_omni/thinker", options={"hidden_layer": 1})
    batch = thinker_batch()
    batch[0] = StageRequest("r0", {**batch[0].inputs, "image": png("red", (64, 64))}, batch[0].params)
    results = thinker.run(batch)
    check_thinker(thinker, results)
    check_solo_matches_batch(thinker, batch, results)

    talker = engine(models, "qwen3_omni_talker", "tiny/qwen3_omni/talker")
    groups = talker.model.config.num_code_groups
    talked = talker.run([
        StageRequest("t0", {"hidden": results[0]["hidden"]}, {"max_tokens": 10, "min_tokens": 10, "seed": 1}),
        StageRequest("t1", {"hidden": results[1]["hidden"]},
                     {"max_tokens": 6, "min_tokens": 2, "seed": 2, "speaker": "chelsie"}),
        StageRequest("t2", {"hidden": results[2]["hidden"]}, {"max_tokens": 8, "min_tokens": 4, "seed": 3}),
    ])
    codes = [t["codes"]["codes"] for t in talked]
    assert codes[0].shape[0] == groups and codes[0].shape[1] == 9  # the last drawn code has no residuals yet
    assert all(c.shape[0] == groups and c.shape[1] >= 1 for c in codes)

    c2w = engine(models, "qwen3_omni_code2wav", "tiny/qwen3_omni/code2wav")
    wavs = c2w.run([StageRequest(f"w{k}", {"codes": t["codes"]}, {}) for k, t in enumerate(talked)])
    frames = []
    for w in wavs:
        rate, n = parse_wav(w["audio"])
        assert rate == 24000 and n > 0
        frames.append(n)
    assert frames[0] > frames[1]
    # Decoding a row with others (zero-padded to the longest) gives the same audio as decoding it alone.
    alone = c2w.run([StageRequest("w1", {"codes": talked[1]["codes"]}, {})])[0]["audio"].data
    assert alone == wavs[1]["audio"].data


def test_qwen2_5_vl_images_and_text(models):
    vl = engine(models, "qwen2_5_vl", "tiny/qwen2_5_vl")
    out = vl.run([
        StageRequest("a", {"prompt": "compare", "image": png("red"), "image_2": png("green", (90, 40))},
                     {"max_tokens": 5, "seed": 1}),
        StageRequest("b", {"prompt": "no image"}, {"max_tokens": 3, "seed": 2}),
        StageRequest("c", {"prompt": "one", "image": png("blue")}, {"max_tokens": 4, "seed": 3}),
        StageRequest("d", {"prompt": "bad", "image": Media(b"\x89PNG broken", "image/png")}, {}),
    ])
    assert [len(out[k]["token_ids"]) <= m for k, m in enumerate((5, 3, 4))] == [True] * 3
    # Two images take twice the image tokens of one (both resize to 56x56 here).
    assert out[0]["usage"]["prompt_tokens"] > out[2]["usage"]["prompt_tokens"] > out[1]["usage"]["prompt_tokens"]
    assert "hidden" not in out[0]
    assert isinstance(out[3], FatalStageError)


def _drop_weight(src, dst, prefix: str) -> str:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    dropped = next(k for k in sorted(weights) if k.startswith(prefix))
    del weights[dropped]
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dropped


@pytest.mark.parametrize(("engine_name", "folder", "prefix"), [
    ("qwen2_5_omni_token2wav", "tiny/qwen2_5_omni/token2wav", "code2wav_bigvgan_model."),
    ("qwen2_5_omni_talker", "tiny/qwen2_5_omni/talker", "model.layers.1."),
    ("qwen3_omni_code2wav", "tiny/qwen3_omni/code2wav", "decoder."),
])
def test_checkpoint_missing_a_weight_is_refused(models, tmp_path, engine_name, folder, prefix):
    dropped = _drop_weight(models / folder, tmp_path / "partial", prefix)
    with pytest.raises(EngineDead, match="lacks 1 weight"):
        engine(models, engine_name, str(tmp_path / "partial"))
    assert dropped
