"""The one exception hierarchy of meshlib.

Every message names what is wrong: the file and line, the resource, the field
path and the offending value, so a user can fix it without reading our code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "CertificateUnavailableError",
    "ConfigError",
    "ConfigIssue",
    "ControlPlaneError",
    "MeshError",
    "TlsSettingsError",
    "UnauthorizedError",
]


class MeshError(Exception):
    """Base class of every error meshlib raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in policy input.

    ``source`` is a file name (or ``<stdin>``), ``line`` is 1-based, ``resource``
    reads like ``VirtualService default/reviews`` and ``path`` like
    ``spec.http[0].route[1].weight``. Any of them may be unknown (None/empty).
    """

    message: str
    source: str | None = None
    line: int | None = None
    resource: str | None = None
    path: str = ""

    def __str__(self) -> str:
        parts: list[str] = []
        if self.source is not None:
            parts.append(f"{self.source}:{self.line}" if self.line else self.source)
        if self.resource:
            parts.append(self.resource)
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)

    def to_json(self) -> dict[str, object]:
        return {
            "message": self.message,
            "source": self.source,
            "line": self.line,
            "resource": self.resource,
            "path": self.path,
        }


class ConfigError(MeshError, ValueError):
    """Policy input is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: Iterable[ConfigIssue] | ConfigIssue | str) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(issues)]
        elif isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues: Sequence[ConfigIssue] = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid configuration")


class ControlPlaneError(MeshError):
    """The config service could not be reached or answered with an error."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class UnauthorizedError(ControlPlaneError):
    """The config service refused the credentials (missing or wrong token)."""


class CertificateUnavailableError(MeshError):
    """Mutual TLS is wanted toward an endpoint, but this workload holds no valid certificate."""


class TlsSettingsError(CertificateUnavailableError):
    """A DestinationRule's TLS origination (mode SIMPLE or MUTUAL) cannot be set up: a file it
    names is unreadable or holds no usable PEM. The request is not sent (in plaintext or
    otherwise); the message names the field and the file."""
