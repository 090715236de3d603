"""Token deltas join to the final text, hold back split characters, and are batched per step."""

from __future__ import annotations

import torch

from api.follow import prefer_wait
from omnijobs.engines.deltas import StepDeltas
from omnijobs.streaming.channel import decode, encode
from omnijobs.streaming.deltas import TextDeltas
from omnijobs.streaming.follow import _valid_id

# A byte-level "tokenizer": token t is byte t, so a multi-byte character spans several tokens.
def byte_decode(tokens) -> str:
    return bytes(tokens).decode("utf-8", errors="replace")


def test_deltas_join_to_the_final_text_and_hold_back_split_characters():
    text = "héllo wörld ✓"
    tokens = list(text.encode())
    d = TextDeltas(byte_decode, 1)
    pieces = []
    for k in range(1, len(tokens) + 1):
        new = d.step(0, tokens[:k])
        if new is not None:
            assert "\ufffd" not in new[0]
            pieces.append(new)
    rest = d.finish(0, tokens, text)
    joined = "".join(p[0] for p in pieces) + (rest[0] if rest else "")
    assert joined == text
    assert sum(len(p[1]) for p in pieces) + (len(rest[1]) if rest else 0) == len(tokens)
    assert len(pieces) > 5  # one per completed character, not one lump at the end


def test_finish_sends_text_the_steps_could_not():
    d = TextDeltas(lambda toks: "ab" if len(toks) < 3 else "aXb", 1)  # a decode that rewrites its past
    assert d.step(0, [1, 2]) == ("ab", [1, 2])
    assert d.step(0, [1, 2, 3]) is None  # not an extension of what was sent: held
    assert d.finish(0, [1, 2, 3, 4], "abc") == ("c", [3, 4])


def test_step_deltas_emit_one_call_per_step_with_a_delta_per_live_row():
    calls = []
    reqs = ["r0", "r1"]
    hook = StepDeltas(reqs, max_tokens=[3, 1], stop_ids=[0], decode=byte_decode, emit=calls.append)
    prompt = torch.tensor([[104, 105], [104, 105]])
    seq = prompt
    for step_tokens in ([97, 98], [99, 100], [0, 101]):  # row 0 stops at token 0; row 1 has max_tokens 1
        seq = torch.cat([seq, torch.tensor([step_tokens]).T], dim=1)
        assert not hook(seq, None).any()  # never stops a row itself
    assert [[(r, d["text"]) for r, d in call] for call in calls] == [[("r0", "a"), ("r1", "b")], [("r0", "c")]]
    hook.finish([(0, [97, 99], "ac"), (1, [98], "b")])
    final = calls[-1]
    assert [(r, d["text"], d["done"], d["finish_reason"]) for r, d in final] == [
        ("r0", "", True, "stop"), ("r1", "", True, "length")]


def test_channel_entries_round_trip():
    kind, data = decode({k.encode(): v.encode() for k, v in encode("delta", {"text": "hé", "n": [1]}).items()})
    assert (kind, data) == ("delta", {"text": "hé", "n": [1]})


def test_prefer_wait_and_last_event_id_parsing():
    assert prefer_wait("wait=5") == 5.0
    assert prefer_wait("respond-async, wait=2.5") == 2.5
    assert prefer_wait("return=minimal") is None and prefer_wait(None) is None
    assert _valid_id("1700000000000-3") == "1700000000000-3"
    assert _valid_id("garbage") is None and _valid_id("") is None
