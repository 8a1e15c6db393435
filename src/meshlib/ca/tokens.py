"""Bootstrap tokens: each proves exactly one workload identity to the CA.

A token reads ``mtk_<id>.<secret>``; only the SHA-256 of the whole token is stored, so the
config service's data cannot be replayed as tokens. A token is shown once, when created.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ..errors import MeshError
from ..names import check_dns_label

__all__ = ["MAX_TOKEN_TTL", "MIN_TOKEN_TTL", "BootstrapToken", "TokenError", "TokenRegistry", "TokenStore"]

MIN_TOKEN_TTL = 1.0  # seconds
MAX_TOKEN_TTL = 366 * 24 * 3600.0


class TokenStore(Protocol):
    """Where token records live (the config service's store)."""

    def load_tokens(self) -> list[dict[str, Any]]: ...

    def put_token(self, token: dict[str, Any]) -> None: ...


class TokenError(MeshError):
    """A token the CA does not accept (missing, unknown, expired or revoked)."""


@dataclass(frozen=True)
class BootstrapToken:
    id: str
    digest: str
    namespace: str
    service: str
    created: float
    expires: float
    revoked: int = 0

    def public(self) -> dict[str, object]:
        """Everything but the digest, for listings."""
        data = asdict(self)
        del data["digest"]
        data["revoked"] = bool(self.revoked)
        return data


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRegistry:
    def __init__(self, store: TokenStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._tokens = {t["id"]: BootstrapToken(**t) for t in store.load_tokens()}
        self.revocations = 0
        """How many revocations this registry has seen: a long-held request (a watch) checks
        its credential again when this moves."""
        self.on_revoke: list[Callable[[], None]] = []
        """Called (on the service's loop) after a revocation, here or read from the store."""

    def _revoked(self) -> None:
        self.revocations += 1
        for listener in self.on_revoke:
            listener()

    def reload(self) -> None:
        """Read the tokens again (a shared store: another replica created or revoked some).
        A revocation known here stays, whatever the store says."""
        loaded = {t["id"]: BootstrapToken(**t) for t in self._store.load_tokens()}
        for token_id, record in self._tokens.items():
            if record.revoked and token_id in loaded and not loaded[token_id].revoked:
                loaded[token_id] = record
        newly = any(t.revoked and not getattr(self._tokens.get(i), "revoked", 0) for i, t in loaded.items())
        self._tokens = loaded
        if newly:  # another replica revoked one
            self._revoked()

    def create(self, service: str, namespace: str, ttl: float) -> tuple[BootstrapToken, str]:
        for label, value in (("service", service), ("namespace", namespace)):
            try:
                check_dns_label(value, label)
            except ValueError as exc:
                raise MeshError(str(exc)) from None
        if not (math.isfinite(ttl) and MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL):
            raise MeshError(
                f"token TTL {ttl:g}s is out of range: from {MIN_TOKEN_TTL:g}s to {MAX_TOKEN_TTL / 3600:g}h"
            )
        token_id = secrets.token_hex(6)
        secret = f"mtk_{token_id}.{secrets.token_urlsafe(32)}"
        now = self._clock()
        record = BootstrapToken(token_id, _digest(secret), namespace, service, now, now + ttl)
        self._store.put_token(asdict(record))
        self._tokens[token_id] = record
        return record, secret

    def verify(self, secret: str | None) -> BootstrapToken:
        if not secret:
            raise TokenError("missing bootstrap token")
        match = re.fullmatch(r"mtk_([0-9a-f]{12})\.[A-Za-z0-9_-]+", secret.strip())
        record = self._tokens.get(match.group(1)) if match else None
        if record is None or not hmac.compare_digest(record.digest, _digest(secret.strip())):
            raise TokenError("unknown bootstrap token")
        if record.revoked:
            raise TokenError(f"bootstrap token {record.id} was revoked")
        if self._clock() >= record.expires:
            raise TokenError(f"bootstrap token {record.id} expired")
        return record

    def revoke(self, token_id: str) -> BootstrapToken:
        record = self._tokens.get(token_id)
        if record is None:
            raise MeshError(f"no bootstrap token {token_id!r}")
        revoked = BootstrapToken(**{**asdict(record), "revoked": 1})
        self._store.put_token(asdict(revoked))
        self._tokens[token_id] = revoked
        self._revoked()
        return revoked

    def issued_for(self, namespace: str, service: str) -> bool:
        """Has this identity ever had a token (even one since revoked or expired)?"""
        return any(t.namespace == namespace and t.service == service for t in self._tokens.values())

    def list(self) -> list[BootstrapToken]:
        return sorted(self._tokens.values(), key=lambda t: t.created)
