"""The admin token: created at first start, kept 0600 in the data dir, never logged."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from .._files import write_secret

__all__ = ["ADMIN_TOKEN_FILE", "check_bearer", "ensure_admin_token"]

ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret


def ensure_admin_token(data_dir: Path) -> tuple[str, Path, bool]:
    """Return (token, its path, whether it was just created)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        write_secret(path, secrets.token_urlsafe(32) + "\n")
        created = True
    except FileExistsError:
        created = False
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise ValueError(f"{path} holds no usable token; delete it to have a new one created")
    return token, path, created


def check_bearer(header: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())
