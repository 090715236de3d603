"""The audio a client already holds, grown from a job's `audio` events, never spliced across attempts.

Bytes that went out cannot be taken back. After a `restart` the new attempt's audio comes again
from sample 0: it is only passed on past what the client holds, and only while it repeats what
the client holds sample for sample (a retried decoder of the same codes does). Where it differs,
the two attempts cannot be joined and the stream must end as broken (`AudioDiverged`). A chunk
that is missing (the channel is best effort) stops the live feed; the stored WAV, read at the
end, supplies the rest under the same rule.
"""

from __future__ import annotations

import base64
import struct


class AudioDiverged(RuntimeError):
    """The job's final audio no longer starts with the bytes already sent."""


class AudioFollow:
    def __init__(self, stage: str):
        self.stage = stage
        self.sent = bytearray()  # what the client holds
        self.held = bytearray()  # the current attempt's audio, as far as it came
        self.checked = 0  # bytes of `held` already compared with `sent`
        self.rate: int | None = None
        self.lost = False  # a chunk went missing: wait for the stored audio

    def event(self, kind: str, data: dict) -> bytes:
        """New PCM bytes to send for one `audio` or `restart` event (empty when there are none)."""
        if data.get("stage") != self.stage:
            return b""
        if kind == "restart":
            self.held, self.checked, self.lost = bytearray(), 0, False
            return b""
        if kind != "audio" or self.lost:
            return b""
        offset = int(data["offset"]) * 2
        if offset == 0 and self.held:  # a new attempt whose restart event was not seen
            self.held, self.checked = bytearray(), 0
        if offset != len(self.held):
            self.lost = True
            return b""
        self.rate = int(data["rate"])
        self.held += base64.b64decode(data["audio"])
        return self._advance()

    def final(self, pcm: bytes) -> bytes:
        """The rest of the stored audio, once the job ended."""
        self.held, self.checked, self.lost = bytearray(pcm), 0, False
        return self._advance()

    def _advance(self) -> bytes:
        end = min(len(self.held), len(self.sent))
        if self.held[self.checked:end] != self.sent[self.checked:end]:
            raise AudioDiverged(f"the audio of a new attempt differs from the {len(self.sent) // 2} samples "
                                "already sent")
        new = bytes(self.held[len(self.sent):])
        self.sent += new
        self.checked = len(self.held)  # held is now a prefix of sent, or sent itself
        return new


def wav_header(rate: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit mono WAV header; of unknown length (sizes all ones, as streamed WAV is written) by default."""
    size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", size))
