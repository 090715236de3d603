"""The thinker → talker hand-off as a stream, so the talker starts speaking while the thinker writes.

One row's `hidden` stream holds, in order:
- the hand-off's prompt part (a named bundle: prompt ids and states, masks, media extras, special
  embeddings), written once the row's first token is drawn;
- reply parts (`reply_ids`, `reply_embeds`, `reply_hidden` of n tokens): each reply token's
  states exist once the next forward has consumed it (a row's last token, cut at max_tokens, never
  is: as in the recorded bundle); they go out `first_chunk` tokens first, then `chunk` a part;
- the end mark, once the row drew a stop token or reached max_tokens.

Joined (`joined_handoff`), the chunks are the recorded bundle: the talker speaks the same either way.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria

from omnijobs.engines.base import StageRequest
from omnijobs.streaming.chunks import whole_chunks

PORT = "hidden"
REPLY = ("reply_ids", "reply_embeds", "reply_hidden")


def prompt_of(bundle: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A hand-off bundle without its reply: what a stream's first chunk holds."""
    return {k: v for k, v in bundle.items() if k not in REPLY}


def reply_of(bundle: dict[str, torch.Tensor], start: int = 0, end: int | None = None) -> dict[str, torch.Tensor]:
    """Reply tokens start..end of a hand-off bundle, as a stream's reply chunk holds them."""
    return {k: bundle[k][start:end].clone() for k in REPLY}


def send_handoff(chunks, req: StageRequest, bundle: dict[str, torch.Tensor]) -> None:
    """A whole hand-off as one stream: for a thinker that holds the states only once the row ended."""
    rows: list[tuple[Any, str, Any, bool]] = [(req, PORT, prompt_of(bundle), False)]
    if bundle["reply_ids"].shape[0]:
        rows.append((req, PORT, reply_of(bundle), False))
    chunks.emit_many([*rows, (req, PORT, None, True)])


def joined_handoff(chunks: list[Any]) -> dict[str, torch.Tensor]:
    """The bundle a talker reads from a stream's chunks so far: the prompt part (the first chunk
    must be there) and the reply tokens that came."""
    prompt = chunks[0]
    width = prompt["prompt_embeds"].shape[-1]
    replies = [c for c in chunks[1:] if c is not None]
    if not replies:
        return {**prompt, "reply_ids": torch.zeros(0, dtype=torch.long), "reply_embeds": torch.zeros((0, width)),
                "reply_hidden": torch.zeros((0, width))}
    return {**prompt, **{k: torch.cat([c[k] for c in replies]) for k in REPLY}}


class HiddenStream(StoppingCriteria):
    """Writes the `hidden` stream of the rows of one transformers `generate` call that speak.

    A forward hook keeps the states of the last forward (all of the prefill's); this criterion,
    called once each row has drawn its next token, sends what they gave and never stops a row.
    """

    def __init__(self, engine, chunks, requests: list[StageRequest], rows: list[dict[str, Any]],
                 max_tokens: list[int], speaks: list[bool], prompt_len: int, stop_ids: list[int], should_stop):
        self.engine, self.chunks, self.requests, self.rows = engine, chunks, requests, rows
        self.max_tokens, self.prompt_len, self.stop_ids, self.should_stop = max_tokens, prompt_len, set(stop_ids), should_stop
        self.stream = chunks.outgoing[PORT]
        self.done = [not s for s in speaks]
        self.held: list[list[dict[str, torch.Tensor]]] = [[] for _ in requests]  # reply tokens not sent yet
        self.sent = [0] * len(requests)  # reply tokens sent
        self.first: tuple | None = None  # the prefill's hidden states (every layer), until sent
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, D) input and layer states it consumed
        self.layer = engine.hidden_layer()
        self.forwards = 0
        self._hook = engine.model.register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        states = output.hidden_states
        self.forwards += 1
        if self.forwards == 1:
            self.first = states
        else:
            self.last = states[0][:, -1], states[self.layer][:, -1]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.prompt_len
        out = []
        for j, req in enumerate(self.requests):
            if self.done[j]:
                continue
            if self.should_stop(req.run_id):  # canceled: its talker is canceled too
                self.done[j] = True
                continue
            if n == 1:
                out.append((req, PORT, self.engine.prompt_part(self.first, j, self.rows[j], self.prompt_len), False))
            else:  # token n-2, which this step's forward consumed
                embeds, hidden = self.last
                self.held[j].append({"reply_ids": input_ids[j, -2:-1].long().cpu(),
                                     "reply_embeds": embeds[j: j + 1].float().cpu(),
                                     "reply_hidden": hidden[j: j + 1].float().cpu()})
            ends = int(input_ids[j, -1]) in self.stop_ids or n >= self.max_tokens[j]
            held = self.sent[j] + len(self.held[j])
            cut = whole_chunks(self.sent[j], held, self.stream)
            upto = held if ends else (cut[-1][1] if cut else self.sent[j])
            if upto > self.sent[j]:  # whole chunks while the row runs, the rest with its end
                part, self.held[j] = self.held[j][: upto - self.sent[j]], self.held[j][upto - self.sent[j]:]
                out.append((req, PORT, {k: torch.cat([t[k] for t in part]) for k in REPLY}, False))
                self.sent[j] = upto
            if ends:
                out.append((req, PORT, None, True))
                self.done[j] = True
        if n == 1:
            self.first = None  # generate keeps its own copy for the recorded bundle
        if out:
            self.chunks.emit_many(out)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def close(self) -> None:
        self._hook.remove()
