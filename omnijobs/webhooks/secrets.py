"""Which secrets sign a job's webhooks: its owner's (from the API keys), or the deployment's."""

from __future__ import annotations

from typing import Protocol


class OwnerSecrets(Protocol):
    def webhook_secrets(self, owner_id: str) -> list[str]: ...


class SecretSource:
    def __init__(self, deployment: list[str], keys: OwnerSecrets | None = None):
        self.deployment = deployment
        self.keys = keys

    def for_owner(self, owner: str | None) -> list[str]:
        """Every active secret, newest first (several while one is being rotated)."""
        if owner is not None and self.keys is not None:
            return self.keys.webhook_secrets(owner)
        return list(self.deployment)


def parse_secrets(value: str) -> list[str]:
    """OMNIJOBS_WEBHOOK_SECRET: one `whsec_` secret, or several comma-separated during a rotation."""
    return [s.strip() for s in value.split(",") if s.strip()]
