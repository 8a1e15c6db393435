"""The one error the config service's handlers raise on purpose: a status and a message."""

from __future__ import annotations

__all__ = ["HTTPError"]


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
