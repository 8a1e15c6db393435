"""How a workload or meshctl verifies a config service that serves TLS (``meshctl serve --tls``):
by the CA bundle the service wrote (``<data-dir>/tls/ca-bundle.pem``), given as
``MESH_CONTROL_PLANE_CA`` / ``Mesh(control_plane_ca=...)`` / ``meshctl --ca-file``."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError, ConfigIssue

__all__ = ["cleartext_remote", "control_plane_verify"]


def cleartext_remote(urls: Sequence[str]) -> list[str]:
    """The ``http://`` URLs of ``urls`` that leave this machine (a token sent there can be read
    on the way); loopback addresses and ``localhost`` stay on it."""
    out = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "http":
            continue
        host = (parts.hostname or "").lower()
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost"
        if not local:
            out.append(url)
    return out


def control_plane_verify(
    ca_file: Path | None, setting: str = "MESH_CONTROL_PLANE_CA"
) -> ssl.SSLContext | bool:
    """What httpx's ``verify`` gets for the config service: the system's roots without a file
    (plain http is unaffected), else a context that trusts only the roots in ``ca_file``."""
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            ConfigIssue(f"{setting}: {ca_file}: not a readable PEM CA bundle ({exc})")
        ) from None
