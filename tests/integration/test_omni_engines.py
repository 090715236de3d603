"""Omni and VL engines in-process on tiny real-class models built once for this module."""

from __future__ import annotations

import io
import shutil
import time
import wave

import numpy as np
import pytest
import torch
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


def pcm(media: Media) -> np.ndarray:
    with wave.open(io.BytesIO(media.data)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int32)


def check_audible(media: Media) -> None:
    """Noise a listener hears: well above one 16-bit step, below clipping, not a DC offset."""
    samples = pcm(media)
    peak = int(np.abs(samples).max())
    assert 300 < peak < 32767, peak
    assert samples.std() > 100 and abs(samples.mean()) < samples.std()


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
    for w in wavs[:2]:
        check_audible(w["audio"])


def t2w_request(run_id: str, n: int, seed: int | None, speaker: str = "Chelsie", steps: int = 4) -> StageRequest:
    codes = torch.randint(0, 92, (n,), generator=torch.Generator().manual_seed(n))
    return StageRequest(run_id, {"codes": {"codes": codes}, "speaker": speaker}, {"num_steps": steps, "seed": seed})


def test_token2wav_renders_a_batch_at_once_as_each_row_alone(models):
    t2w = engine(models, "qwen2_5_omni_token2wav", "tiny/qwen2_5_omni/token2wav")
    batch = [t2w_request("a", 40, 1), t2w_request("b", 17, 2, "Ethan"), t2w_request("c", 29, 3),
             t2w_request("d", 40, 4, "Ethan"), t2w_request("e", 8, 5, steps=6)]
    together = t2w.run(batch)
    for req, out in zip(batch, together):
        alone = t2w.run([req])[0]
        assert out["usage"]["samples"] == 480 * req.inputs["codes"]["codes"].shape[0]
        assert np.abs(pcm(out["audio"]) - pcm(alone["audio"])).max() <= 1
        check_audible(out["audio"])
    # Each row's noise is its own: another seed, another waveform; the same seed, the same one.
    reseeded = t2w.run([t2w_request("a", 40, 9)])[0]
    assert np.abs(pcm(reseeded["audio"]) - pcm(together[0]["audio"])).max() > 100
    assert t2w.run([t2w_request("a", 40, 1)])[0]["audio"].data == t2w.run([batch[0]])[0]["audio"].data


def test_token2wav_batch_matches_the_models_own_render(models):
    """The batched solve is the model's own: one row through `Qwen2_5OmniToken2WavModel.forward`
    with the same noise (its global generator seeded alike) gives the same waveform."""
    t2w = engine(models, "qwen2_5_omni_token2wav", "tiny/qwen2_5_omni/token2wav")
    req = t2w_request("a", 23, 7, "Ethan", steps=5)
    ours = t2w.run([t2w_request("z", 31, 8), req])[1]
    spk = torch.load(models / "tiny/qwen2_5_omni/token2wav/spk_dict.pt", weights_only=True)["Ethan"]
    torch.manual_seed(7)
    with torch.no_grad():
        ref = t2w.model(req.inputs["codes"]["codes"].unsqueeze(0), conditioning=spk["cond"],
                        reference_mel=spk["ref_mel"], num_steps=5)
    from omnijobs.engines.media_features import encode_wav

    assert np.abs(pcm(ours["audio"]) - pcm(encode_wav(ref.reshape(-1).numpy(), 24000))).max() <= 1


def test_token2wav_unseeded_rows_differ_and_canceled_rows_fail(models):
    canceled = {"gone"}
    t2w = engine(models, "qwen2_5_omni_token2wav", "tiny/qwen2_5_omni/token2wav",
                 should_stop=lambda run_id: run_id in canceled)
    out = t2w.run([t2w_request("a", 12, None), t2w_request("b", 12, None), t2w_request("gone", 12, 1),
                   t2w_request("f", 12, 1, speaker="Nobody")])
    assert np.abs(pcm(out[0]["audio"]) - pcm(out[1]["audio"])).max() > 100
    assert isinstance(out[2], FatalStageError) and "canceled" in str(out[2])
    assert isinstance(out[3], FatalStageError) and "Nobody" in str(out[3])


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
    assert codes[0].shape == (groups, 10)  # max_tokens frames, each with its residual codes
    assert all(c.shape[0] == groups and c.shape[1] >= 1 for c in codes)

    c2w = engine(models, "qwen3_omni_code2wav", "tiny/qwen3_omni/code2wav")
    wavs = c2w.run([StageRequest(f"w{k}", {"codes": t["codes"]}, {}) for k, t in enumerate(talked)])
    frames = []
    for w in wavs:
        rate, n = parse_wav(w["audio"])
        assert rate == 24000 and n > 0
        frames.append(n)
    assert frames[0] > frames[1]
    # Decoding a row with others (zero-padded to the longest) gives the same audio as decoding it alone
    # (to one 16-bit step: a different batch shape may round the last float bit differently).
    alone = c2w.run([StageRequest("w1", {"codes": talked[1]["codes"]}, {})])[0]["audio"]
    assert np.abs(pcm(alone) - pcm(wavs[1]["audio"])).max() <= 1
    for w in wavs:
        check_audible(w["audio"])
    # A batch larger than one decoder call decodes in parts, each row as it would alone.
    doubled = c2w.run([StageRequest(f"d{k}", {"codes": t["codes"]}, {}) for k, t in enumerate(talked * 2)])
    for k, w in enumerate(doubled):
        assert np.abs(pcm(w["audio"]) - pcm(wavs[k % 3]["audio"])).max() <= 1


def test_qwen3_code2wav_pieces_decoded_with_their_context_join_to_the_whole_decode(models):
    """The streamed decode's windows (the first piece from frame 0, later ones with the transformer's
    LEFT_CONTEXT and the convolutions' measured reach, each at its own padded width) give the whole
    decode's samples, piece after piece with no gap or overlap."""
    from omnijobs.engines.chunked_audio import Window

    c2w = engine(models, "qwen3_omni_code2wav", "tiny/qwen3_omni/code2wav")
    cfg = c2w.model.config
    codes = torch.randint(0, cfg.codebook_size, (cfg.num_quantizers, 90), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # the released forward over all 90 frames at once
        whole = c2w.model(codes.unsqueeze(0)).reshape(-1).float().numpy()
    pieces = []
    for start, end in [(0, 3), (3, 8), (8, 33), (33, 34), (34, 90)]:
        first, last, skip, keep = c2w._window(start, end, 90)
        pieces.append(c2w._decode([Window(None, codes[:, first:last], first, last, start, end, skip, keep)])[0])
    joined = np.concatenate(pieces)
    assert joined.shape == whole.shape == (90 * 1920 - c2w.tail,)
    assert np.abs(joined - whole).max() <= 1e-5


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


def _head_dim(text: dict) -> int:
    return text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]


def test_tiny_models_are_shaped_for_vllm(models):
    """What vLLM needs of the tiny models it serves: CPU attention wants head_dim >= 32, an untied
    lm_head where the checkpoint has one, and no shared expert the checkpoint lacks."""
    import json

    from safetensors import safe_open

    def config(folder):
        return json.loads((models / folder / "config.json").read_text())

    texts = {
        "tiny/qwen2": config("tiny/qwen2"),
        "tiny/qwen2_5_vl": config("tiny/qwen2_5_vl")["text_config"],
        "tiny/qwen2_5_omni/thinker": config("tiny/qwen2_5_omni/thinker")["text_config"],
        "tiny/qwen3_omni/thinker": config("tiny/qwen3_omni/thinker")["text_config"],
    }
    for folder, text in texts.items():
        assert _head_dim(text) >= 32, folder
    assert texts["tiny/qwen2_5_omni/thinker"]["tie_word_embeddings"] is False
    with safe_open(models / "tiny/qwen2_5_omni/thinker/model.safetensors", "pt") as f:
        lm_head, embed = f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight")
    assert not torch.equal(lm_head, embed)
    assert texts["tiny/qwen3_omni/thinker"]["shared_expert_intermediate_size"] == 0
    talker = config("tiny/qwen3_omni/talker")["text_config"]
    assert talker["shared_expert_intermediate_size"] == 2 * talker["moe_intermediate_size"]


def _min_codes(min_tokens: list[int], eos_ids: list[int], prompt_len: int = 0):
    """A logits processor for `generate` that keeps each row from ending before its own min_tokens."""
    from transformers import LogitsProcessor

    class MinCodes(LogitsProcessor):
        def __call__(self, input_ids, scores):
            early = torch.tensor([input_ids.shape[1] - prompt_len < n for n in min_tokens])
            if early.any():
                scores[:, eos_ids] = scores[:, eos_ids].masked_fill(early.unsqueeze(1), float("-inf"))
            return scores

    return MinCodes()


def _generate_codes(talker, reqs):
    """Reference: the same rows through transformers' own `generate` (the talker's codes, (G, T) per row)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from omnijobs.engines.omni_glue import handoff_bundle, qwen3_talker_row
    from omnijobs.engines.sampling import RowSampler, RowStop
    from omnijobs.engines.talker import collate, talker_sampling

    m = talker.model
    rows = [qwen3_talker_row(handoff_bundle(r), m.config.speaker_id["ethan"], m) for r in reqs]
    sampling = [talker_sampling(r.run_id, r.params) for r in reqs]
    enc = collate(rows, 0, "cpu")
    extra = {k: enc[k] for k in ("image_grid_thw", "audio_feature_lengths") if k in enc}
    m.rope_deltas = None
    with torch.no_grad():
        out = m.generate(
            inputs_embeds=enc["inputs_embeds"], attention_mask=enc["attention_mask"], talker_input_ids=enc["input_ids"],
            trailing_text_hidden=enc["text"], tts_pad_embed=enc["pad"], do_sample=False,
            max_new_tokens=max(s["max_tokens"] for s in sampling), eos_token_id=talker.eos_ids,
            pad_token_id=m.config.codec_pad_id, suppress_tokens=talker.suppress, output_hidden_states=True,
            return_dict_in_generate=True,
            logits_processor=LogitsProcessorList([_min_codes([s["min_tokens"] for s in sampling], talker.eos_ids),
                                                  RowSampler(sampling, talker.eos_ids)]),
            stopping_criteria=StoppingCriteriaList([RowStop(0, [s["max_tokens"] for s in sampling],
                                                            [r.run_id for r in reqs], lambda _: False)]),
            **extra)
    groups = torch.stack([h[-1] for h in out.hidden_states if h[-1] is not None], dim=1)
    codes = []
    for j, s in enumerate(sampling):
        first = out.sequences[j].tolist()[: s["max_tokens"]]
        end = min(next((k for k, c in enumerate(first) if c in talker.eos_ids), len(first)), groups.shape[1])
        codes.append(groups[j, :end].T.long())
    return codes


def _joined_in_waves(talker, reqs, waves: list[list[int]]) -> dict:
    """Each row's codes when rows join the talker's running batch a wave per step, in this order."""
    codes = {}
    for wave_ in waves:
        for req in (reqs[k] for k in wave_):
            assert talker.add(req) is None
        codes.update((req.run_id, result["codes"]["codes"]) for req, result in talker.step())
    while talker.loop.rows:
        codes.update((req.run_id, result["codes"]["codes"]) for req, result in talker.step())
    return codes


def test_qwen3_talker_loop_matches_generate_whatever_joins(models):
    """The talker's own decode loop draws the codes transformers' `generate` draws for the same rows
    (media rows, greedy and sampled, own lengths), and a row's codes do not depend on which rows
    it ran with or when it joined."""
    thinker = engine(models, "qwen3_omni_thinker", "tiny/qwen3_omni/thinker", options={"hidden_layer": 1})
    batch = thinker_batch() + [StageRequest(f"r{k}", {"prompt": PROMPTS[k % 3] * (k - 1)}, {"max_tokens": 6, "seed": k})
                               for k in range(3, 6)]
    hidden = [r["hidden"] for r in thinker.run(batch)]
    talker = engine(models, "qwen3_omni_talker", "tiny/qwen3_omni/talker")
    reqs = [StageRequest(f"t{k}", {"hidden": h}, {"max_tokens": 12 + 3 * k, "min_tokens": 3, "seed": 10 + k,
                                                   "temperature": 0.0 if k % 3 == 0 else 0.9,
                                                   "top_p": 1.0 if k % 2 else 0.8})
            for k, h in enumerate(hidden)]
    reference = _generate_codes(talker, reqs)
    together = [r["codes"]["codes"] for r in talker.run(reqs)]
    for ref, got, req in zip(reference, together, reqs, strict=True):
        # `generate` stops with the longest row's last code still without residuals: a frame short.
        assert got.shape[1] == ref.shape[1] or got.shape[1] == ref.shape[1] + 1 == req.params["max_tokens"]
        assert torch.equal(got[:, : ref.shape[1]], ref)
    # Rows joining a running batch at different steps, in another order.
    solo = _joined_in_waves(talker, reqs, [[4], [0, 5], [2], [3, 1]])
    for got, req in zip(together, reqs, strict=True):
        assert torch.equal(solo[req.run_id], got), req.run_id
    # A canceled row leaves the batch; the others go on unchanged.
    for req in reqs[:3]:
        talker.add(req)
    talker.step()
    assert [r.run_id for r, _ in talker.abort({"t1"})] == ["t1"]
    rest = {}
    while talker.loop.rows:
        rest.update((req.run_id, result["codes"]["codes"]) for req, result in talker.step())
    assert set(rest) == {"t0", "t2"} and all(torch.equal(rest[k], solo[k]) for k in rest)


def _generate_codes_qwen2_5(talker, reqs):
    """Reference: Qwen2.5-Omni talker rows through transformers' own `generate` (codes (T,) per row)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from omnijobs.engines.omni_glue import handoff_bundle, qwen2_5_talker_row
    from omnijobs.engines.sampling import RowSampler, RowStop
    from omnijobs.engines.talker import collate, talker_sampling

    m = talker.model
    rows = [qwen2_5_talker_row(handoff_bundle(r), "Chelsie", m) for r in reqs]
    sampling = [talker_sampling(r.run_id, r.params) for r in reqs]
    enc = collate(rows, m.codec_pad_token, "cpu")
    prompt_len = enc["input_ids"].shape[1]
    extra = {k: enc[k] for k in ("image_grid_thw", "audio_feature_lengths") if k in enc}
    m.rope_deltas = None
    with torch.no_grad():
        out = m.generate(
            input_ids=enc["input_ids"], inputs_embeds=enc["inputs_embeds"], attention_mask=enc["attention_mask"],
            input_text_ids=enc["text_ids"], thinker_reply_part=enc["text"],
            max_new_tokens=max(s["max_tokens"] for s in sampling), do_sample=False,
            eos_token_id=talker.eos_ids, pad_token_id=m.codec_pad_token,
            suppress_tokens=[m.codec_bos_token, m.codec_mask_token],
            logits_processor=LogitsProcessorList([
                _min_codes([s["min_tokens"] for s in sampling], talker.eos_ids, prompt_len),
                RowSampler(sampling, talker.eos_ids)]),
            stopping_criteria=StoppingCriteriaList([RowStop(prompt_len, [s["max_tokens"] for s in sampling],
                                                            [r.run_id for r in reqs], lambda _: False)]),
            **extra)
    codes = []
    for j, s in enumerate(sampling):
        drawn = out[j, prompt_len:].tolist()[: s["max_tokens"]]
        end = next((k for k, c in enumerate(drawn) if c in talker.eos_ids), len(drawn))
        codes.append(torch.tensor(drawn[:end], dtype=torch.long))
    return codes


def test_qwen2_5_talker_loop_matches_generate_whatever_joins(models):
    """Qwen2.5-Omni's talker in its decode loop draws the codes `generate` draws for the same rows
    (media rows, greedy and sampled, own lengths), whichever rows it runs with and whenever they join."""
    thinker = engine(models, "qwen2_5_omni_thinker", "tiny/qwen2_5_omni/thinker")
    batch = thinker_batch() + [StageRequest(f"r{k}", {"prompt": PROMPTS[k % 3] * (k - 1)}, {"max_tokens": 6, "seed": k})
                               for k in range(3, 6)]
    hidden = [r["hidden"] for r in thinker.run(batch)]
    talker = engine(models, "qwen2_5_omni_talker", "tiny/qwen2_5_omni/talker")
    reqs = [StageRequest(f"t{k}", {"hidden": h}, {"max_tokens": 20 + 5 * k, "min_tokens": 3, "seed": 10 + k,
                                                   "temperature": 0.0 if k % 3 == 0 else 0.9,
                                                   "top_p": 1.0 if k % 2 else 0.8})
            for k, h in enumerate(hidden)]
    reference = _generate_codes_qwen2_5(talker, reqs)
    together = [r["codes"]["codes"] for r in talker.run(reqs)]
    assert any(ref.shape[0] < req.params["max_tokens"] for ref, req in zip(reference, reqs, strict=True))
    for ref, got in zip(reference, together, strict=True):
        assert torch.equal(got, ref)
    solo = _joined_in_waves(talker, reqs, [[4], [0, 5], [2], [3, 1]])
    for got, req in zip(together, reqs, strict=True):
        assert torch.equal(solo[req.run_id], got), req.run_id
