"""AudioFollow: what goes out to a client of a streamed speech body, across restarts and lost chunks."""

from __future__ import annotations

import base64

import pytest

from omnijobs.streaming.audio_follow import AudioDiverged, AudioFollow, wav_header


def audio(offset_samples: int, data: bytes, stage: str = "code2wav") -> dict:
    return {"stage": stage, "offset": offset_samples, "rate": 24000, "audio": base64.b64encode(data).decode()}


def test_chunks_in_order_go_out_as_they_come():
    f = AudioFollow("code2wav")
    assert f.event("audio", audio(0, b"aabb")) == b"aabb"
    assert f.event("audio", audio(2, b"ccdd")) == b"ccdd"
    assert f.event("audio", audio(0, b"zz", stage="other")) == b""  # another stage's audio
    assert f.final(b"aabbccdd") == b"" and f.rate == 24000


def test_a_restart_that_repeats_what_was_sent_continues_past_it():
    f = AudioFollow("code2wav")
    f.event("audio", audio(0, b"aabbcc"))
    assert f.event("restart", {"stage": "code2wav", "attempt": 2}) == b""
    assert f.event("audio", audio(0, b"aabb")) == b""  # already held by the client
    assert f.event("audio", audio(2, b"ccddee")) == b"ddee"
    assert bytes(f.sent) == b"aabbccddee"


def test_a_restart_with_other_audio_breaks_the_stream():
    f = AudioFollow("code2wav")
    f.event("audio", audio(0, b"aabbcc"))
    f.event("restart", {"stage": "code2wav", "attempt": 2})
    with pytest.raises(AudioDiverged):
        f.event("audio", audio(0, b"aaXX"))


def test_an_unannounced_new_attempt_is_compared_from_its_start():
    f = AudioFollow("code2wav")
    f.event("audio", audio(0, b"aabb"))
    assert f.event("audio", audio(0, b"aabbcc")) == b"cc"


def test_a_lost_chunk_waits_for_the_stored_audio():
    f = AudioFollow("code2wav")
    f.event("audio", audio(0, b"aabb"))
    assert f.event("audio", audio(4, b"eeff")) == b""  # samples 2..3 never came
    assert f.event("audio", audio(6, b"gghh")) == b""
    assert f.final(b"aabbccddeeffgghh") == b"ccddeeffgghh"


def test_stored_audio_that_differs_from_what_was_sent_breaks_the_stream():
    f = AudioFollow("code2wav")
    f.event("audio", audio(0, b"aabb"))
    with pytest.raises(AudioDiverged):
        f.final(b"aaXX")


def test_wav_header_of_known_and_unknown_length():
    import io
    import wave

    with wave.open(io.BytesIO(wav_header(24000, 4) + b"\x01\x00\x02\x00")) as w:
        assert (w.getframerate(), w.getnframes(), w.readframes(2)) == (24000, 2, b"\x01\x00\x02\x00")
    head = wav_header(16000)
    assert len(head) == 44 and head[4:8] == b"\xff\xff\xff\xff" and head[40:44] == b"\xff\xff\xff\xff"
