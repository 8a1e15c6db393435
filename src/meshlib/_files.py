"""Files that hold secrets or must never be seen half-written; below every package that
writes them (the CA, the config service, the workload identity, meshctl)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "read_secret_file", "write_secret"]


def write_secret(path: Path, text: str) -> None:
    """Create a file readable by its owner only; never widen an existing file's mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_secret_file(path: Path, option: str) -> str:
    """A password or passphrase given as a file (``option`` names it in errors): its text
    without the trailing newline; never empty. The secret itself is in no message."""
    from .errors import ConfigError

    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{option} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {path}: not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{option} {path}: the file is empty")
    return secret


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` at once: a reader sees the old content or the new, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
