"""API keys and their webhook signing secrets.

A key is 256 random bits shown once; only its sha256 is stored. A plain hash (not a slow KDF)
is enough for a key of that entropy, and it makes lookup an index probe.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, or_, select, update

from omnijobs.errors import InvalidInput, NotFound
from omnijobs.store.db import make_sessions
from omnijobs.store.tables import ApiKey, WebhookSecret

KEY_PREFIX = "omk_"
SECRET_PREFIX = "whsec_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id (the owner of its jobs), its name, and whether it is an admin."""

    id: str
    name: str
    admin: bool


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    admin: bool
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewKey:
    """What `create` hands back once: the plaintext key and webhook secret are not stored readable."""

    id: str
    key: str
    webhook_secret: str
    info: KeyInfo


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    # Standard Webhooks: whsec_ + base64 of the signing key bytes.
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _now() -> datetime:
    return datetime.now(UTC)


class KeyStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = make_sessions(engine)

    def create(self, name: str, admin: bool = False) -> NewKey:
        name = name.strip()
        if not name or len(name) > 128:
            raise InvalidInput("a key name must be 1 to 128 characters", field="name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        now = _now()
        secret = new_webhook_secret()
        with self._sessions.begin() as s:
            row = ApiKey(id=key_id, name=name, admin=admin, key_hash=hash_key(key), prefix=key[:12],
                         created_at=now, revoked_at=None)
            s.add(row)
            s.flush()
            s.add(WebhookSecret(id=uuid.uuid4(), owner=key_id, secret=secret, created_at=now, expires_at=None))
            info = _info(row)
        return NewKey(key_id, key, secret, info)

    def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            q = q.where(ApiKey.revoked_at.is_(None))
        with self._sessions() as s:
            return [_info(r) for r in s.scalars(q)]

    def get(self, key_id: str) -> KeyInfo:
        with self._sessions() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no key '{key_id}'", field="id")
            return _info(row)

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoking is immediate: the next request with the key gets 401. Revoking twice is a no-op."""
        with self._sessions.begin() as s:
            row = s.get(ApiKey, key_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no key '{key_id}'", field="id")
            if row.revoked_at is None:
                row.revoked_at = _now()
            return _info(row)

    def verify(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None for anything else."""
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        digest = hash_key(key)
        with self._sessions() as s:
            row = s.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
        # The index probe already matched; the constant-time compare keeps the check itself timing-safe.
        if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
            return None
        return Principal(row.id, row.name, row.admin)

    # ---------------------------------------------------------------- webhook secrets

    def rotate_webhook_secret(self, key_id: str, grace_s: float = 24 * 3600) -> str:
        """A new current secret; the previous ones stay valid for `grace_s` so receivers can switch."""
        now = _now()
        secret = new_webhook_secret()
        with self._sessions.begin() as s:
            if s.get(ApiKey, key_id, with_for_update=True) is None:
                raise NotFound(f"no key '{key_id}'", field="id")
            s.execute(
                update(WebhookSecret)
                .where(WebhookSecret.owner == key_id,
                       or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now + timedelta(seconds=grace_s)))
                .values(expires_at=now + timedelta(seconds=grace_s))
            )
            s.add(WebhookSecret(id=uuid.uuid4(), owner=key_id, secret=secret, created_at=now, expires_at=None))
        return secret

    def webhook_secrets(self, owner_id: str) -> list[str]:
        """The owner's valid `whsec_` secrets, newest first (more than one while a rotation's grace runs)."""
        now = _now()
        with self._sessions() as s:
            rows = s.scalars(
                select(WebhookSecret.secret)
                .where(WebhookSecret.owner == owner_id,
                       or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now))
                .order_by(WebhookSecret.created_at.desc(), WebhookSecret.expires_at.desc().nulls_first())
            )
            return list(rows)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.admin, row.prefix, row.created_at, row.revoked_at)
