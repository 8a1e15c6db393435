"""The config service's own TLS certificate (``meshctl serve --tls``): issued by its CA at
start, renewed at half its lifetime while the service runs.

The files go to ``<data-dir>/tls``: ``server.pem`` (the chain, leaf first), ``server-key.pem``
(0600) and ``ca-bundle.pem`` (what workloads and meshctl verify the service by). A renewal
writes new files and loads them into the listening socket's SSL context: connections made
after it get the new certificate, open ones keep theirs. A renewal that fails is logged and
tried again a minute later, while the current certificate is still valid.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from .._files import atomic_write
from ..ca.authority import SERVER_TTL, CertificateAuthority

__all__ = ["ServiceCertificate"]

log = logging.getLogger("meshlib.controlplane")

RETRY_AFTER = 60.0  # seconds before a failed renewal is tried again


class ServiceCertificate:
    """The service's certificate for ``names``; :meth:`renew_if_due` keeps it fresh."""

    def __init__(
        self, ca: CertificateAuthority, data_dir: Path, names: Sequence[str], ttl: dt.timedelta = SERVER_TTL
    ) -> None:
        self._ca = ca
        self.names = list(names)
        self.ttl = ttl
        folder = data_dir / "tls"
        folder.mkdir(mode=0o700, exist_ok=True)
        self.chain_path = folder / "server.pem"
        self.key_path = folder / "server-key.pem"
        self.bundle_path = folder / "ca-bundle.pem"
        self.renewals = 0
        self.renew_at = 0.0  # time.monotonic() of the next renewal
        self._issue()

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        """(certificate chain, key, CA bundle)."""
        return self.chain_path, self.key_path, self.bundle_path

    def _issue(self) -> None:
        chain, key = self._ca.server_certificate(self.names, self.ttl)
        atomic_write(self.key_path, key)  # mkstemp: 0600
        atomic_write(self.chain_path, chain)
        atomic_write(self.bundle_path, "".join(self._ca.trust_bundle()))
        self.renew_at = time.monotonic() + self.ttl.total_seconds() / 2

    def renew_if_due(self, context: ssl.SSLContext | None, now: float | None = None) -> bool:
        """A new certificate when half the current one's lifetime has passed, loaded into
        ``context`` (the listener's); True when it renewed."""
        if (time.monotonic() if now is None else now) < self.renew_at:
            return False
        try:
            self._issue()
            if context is not None:
                context.load_cert_chain(self.chain_path, self.key_path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.renew_at = time.monotonic() + RETRY_AFTER
            log.error(
                "renewing the config service's TLS certificate failed (%s); again in %.0f s", exc, RETRY_AFTER
            )
            return False
        self.renewals += 1
        log.info("renewed the config service's TLS certificate for %s", ", ".join(self.names))
        return True
