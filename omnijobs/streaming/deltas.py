"""Incremental detokenisation: the text a row gained since the last step, joining to the final text."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextDeltas:
    """Per row, the decoded text sent so far; `step` returns what is new.

    Text is held back while its tail is an incomplete character (a byte-level token split a
    multi-byte one) or while the new decode does not extend what was sent (tokenizers may clean
    up spaces differently once more tokens follow); `finish` sends the rest of the final text, so
    the deltas of a row always join to exactly the text the stage stores.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], rows: int):
        self.decode = decode
        self.sent = [""] * rows
        self.counts = [0] * rows

    def step(self, j: int, tokens: Sequence[int]) -> tuple[str, list[int]] | None:
        """(new text, new token ids) of row j given all its tokens so far, or None if nothing to send."""
        if len(tokens) <= self.counts[j]:
            return None
        text = self.decode(tokens)
        if text.endswith("\ufffd") or not text.startswith(self.sent[j]) or len(text) == len(self.sent[j]):
            return None
        new_ids = list(tokens[self.counts[j]:])
        delta = text[len(self.sent[j]):]
        self.sent[j], self.counts[j] = text, len(tokens)
        return delta, new_ids

    def finish(self, j: int, tokens: Sequence[int], final_text: str) -> tuple[str, list[int]] | None:
        """The rest of row j once its final text is known (None if everything was sent)."""
        new_ids = list(tokens[self.counts[j]:])
        sent = self.sent[j]
        rest = final_text[len(sent):] if final_text.startswith(sent) else ""
        self.sent[j], self.counts[j] = final_text if final_text.startswith(sent) else sent, len(tokens)
        if not rest and not new_ids:
            return None
        return rest, new_ids
