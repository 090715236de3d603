"""Checks on loaded checkpoints."""

from __future__ import annotations

from pathlib import Path

from omnijobs.errors import EngineDead


def check_complete(path: Path, loading_info: dict) -> None:
    """Refuse a checkpoint with missing weights: transformers would run them random, with a warning."""
    missing = list(loading_info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise EngineDead(f"checkpoint {path} lacks {len(missing)} weight(s): {shown}{more}")
