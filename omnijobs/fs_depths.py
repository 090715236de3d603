"""Queue depth from the file-system broker's folder (what `omnijobs dev` uses instead of Redis).

kombu's file-system transport keeps each waiting message as one file named
`<ms>_<uuid>.<queue>.msg` in the queue folder; a consumer takes one by moving it out. Counting
the names is the broker's own view of what waits. The transport has no priority lists: every
message counts at priority step 0.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path


class FolderQueueDepths:
    """The `QueueDepths` interface of the admission and monitor code, over a broker folder."""

    def __init__(self, broker_dir: Path):
        self.folder = Path(broker_dir) / "queue"

    def _counts(self) -> Counter:
        counts: Counter = Counter()
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    name = entry.name
                    if name.endswith(".msg"):
                        _, _, rest = name.partition(".")  # "<ms>_<uuid>" . "<queue>.msg"
                        counts[rest.removesuffix(".msg")] += 1
        except FileNotFoundError:
            pass
        return counts

    def by_priority(self, queues: Iterable[str]) -> dict[str, dict[int, int]]:
        counts = self._counts()
        return {q: ({0: counts[q]} if counts[q] else {}) for q in queues}

    def totals(self, queues: Iterable[str]) -> dict[str, int]:
        counts = self._counts()
        return {q: counts[q] for q in queues}
