"""Reading a Server-Sent Events stream in tests, field by field as the spec frames it."""

from __future__ import annotations

import json


def events(response, comments: list | None = None):
    """Yield {"event", "data", "id", "retry"} per event of an httpx streaming response."""
    current: dict = {}
    for line in response.iter_lines():
        if line == "":
            if current:
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                yield current
            current = {}
            continue
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        current[name] = current[name] + "\n" + value if name == "data" and "data" in current else value
