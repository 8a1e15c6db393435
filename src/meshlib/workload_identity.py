"""A workload's own identity: its key, its X.509-SVID from the mesh CA, and rotation.

The private key is ECDSA P-256, made in this process; it never leaves it (it is kept 0600
in MESH_DATA_DIR only so that a restart can reuse a still-valid certificate). The
certificate is renewed at half its life, with jitter; a renewal goes into the *live* TLS
contexts (``load_cert_chain`` on an ``SSLContext`` in use makes every new handshake use
the new certificate), so no server restarts and no connection drops. The trust bundle
is exactly the config service's latest: a root it drops is no longer trusted. When the CA is
unreachable the workload keeps its certificate; once it expires, servers that require
mTLS fail closed and never fall back to plaintext.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._files import atomic_write, write_secret
from .ca.svid import issuer_key_id, spiffe_id_of
from .errors import ControlPlaneError, UnauthorizedError

__all__ = ["WorkloadIdentity"]

log = logging.getLogger("meshlib")
KEY_FILE, CERT_FILE, BUNDLE_FILE = "key.pem", "cert.pem", "roots.pem"
RETRY_CAP, RETRY_CAP_EXPIRED = 30.0, 5.0  # seconds: longest pause between failed renewals


class WorkloadIdentity:
    """Holds the key, the certificate chain, the trust bundle and the live TLS contexts."""

    def __init__(self, data_dir: Path, expected_id: str, ttl: float | None = None) -> None:
        self.data_dir = data_dir
        self.expected_id = expected_id
        self.ttl = ttl
        self._key = self._load_or_make_key()
        self.chain: list[x509.Certificate] = []
        self._window = (0.0, 0.0)  # the leaf's validity as POSIX times: valid() is per request
        self.roots: list[str] = []
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None
        self.generation = 0  # counts installed certificates and trust bundles: TLS stacks that
        # cannot reload a live context (grpcio) rebuild their credentials when it moves on
        self._load_saved()

    # --- state ----------------------------------------------------------------------

    @property
    def certificate(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None

    @property
    def issuer(self) -> str | None:
        """Key id of the CA that signed the certificate (which root a rotation has reached)."""
        cert = self.certificate
        return issuer_key_id(cert) if cert is not None else None

    @property
    def expires(self) -> dt.datetime | None:
        cert = self.certificate
        return cert.not_valid_after_utc if cert is not None else None

    def valid(self, now: dt.datetime | None = None) -> bool:
        start, end = self._window
        moment = time.time() if now is None else now.timestamp()
        return start <= moment < end

    def unusable(self) -> str:
        """Why there is no certificate to present, for error messages."""
        cert = self.certificate
        if cert is None:
            return "it has none yet (the CA has not issued one)"
        if time.time() < self._window[0]:
            return f"its certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        return (
            f"its certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC "
            "(renewal resumes when the CA is reachable)"
        )

    def _set_chain(self, chain: list[x509.Certificate]) -> None:
        self.chain = chain
        leaf = chain[0]
        self._window = (leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp())

    def anchored(self, roots: list[str]) -> bool:
        """Does the certificate chain up to one of ``roots`` (PEM)? A certificate saved from
        another CA (the config service's data was replaced) must not be presented."""
        if not self.chain:
            return False
        try:
            anchors = [x509.load_pem_x509_certificate(r.encode()) for r in roots]
        except ValueError:
            return False
        top = self.chain[-1]
        for root in anchors:
            if top == root:
                return True
            try:
                top.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    def renew_at(self, rng: random.Random) -> dt.datetime | None:
        """Half-way through the certificate's life, give or take 5% of it."""
        cert = self.certificate
        if cert is None:
            return None
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        return cert.not_valid_before_utc + life * (0.5 + rng.uniform(-0.05, 0.05))

    # --- talking to the CA ----------------------------------------------------------

    def csr_pem(self) -> str:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(self._key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def request(self, client: httpx.Client, url: str, token: str) -> None:
        """Get a certificate for this key from the CA; install it everywhere."""
        try:
            response = client.post(
                f"{url}/v1/certificates",
                json={"csr": self.csr_pem(), **({"ttl": f"{self.ttl}s"} if self.ttl else {})},
                headers={"authorization": f"Bearer {token}"},
                timeout=10.0,
            )
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"CA at {url} unreachable: {exc}") from None
        if response.status_code == 401:
            raise UnauthorizedError(
                f"CA at {url} refused the bootstrap token: {_error(response)}", status_code=401
            )
        if response.status_code != 200:
            raise ControlPlaneError(
                f"CA at {url}: {response.status_code} {_error(response)}", status_code=response.status_code
            )
        body = response.json()
        self.install(
            [x509.load_pem_x509_certificate(p.encode()) for p in body["certificateChain"]],
            list(body["trustBundle"]),
        )

    def install(self, chain: list[x509.Certificate], roots: list[str]) -> None:
        got = spiffe_id_of(chain[0])
        if got != self.expected_id:
            raise ControlPlaneError(f"the CA issued {got}, but this workload is {self.expected_id}")
        self._set_chain(chain)
        self.generation += 1
        self.update_roots(roots, persist=False)
        self._save()
        for context in (self._server, self._client):
            if context is not None:
                context.load_cert_chain(self.data_dir / CERT_FILE, self.data_dir / KEY_FILE)
        log.info("certificate for %s installed; expires %s", self.expected_id, self.expires)

    def update_roots(self, roots: list[str], *, persist: bool = True) -> None:
        """Trust exactly ``roots`` (the bundle the config service sends) from the next handshake.

        During a root rotation the bundle holds the old and the new root side by side; once
        the operator drops the old one, it is no longer trusted here either. Additions go into
        the live contexts; ``SSLContext`` cannot forget a root, so a removal makes new contexts,
        which every new connection picks up (servers and clients ask for the context per
        connection). Connections already open stay open, as in Envoy."""
        if not roots or roots == self.roots:
            return
        added = [r for r in roots if r not in self.roots]
        removed = [r for r in self.roots if r not in roots]
        self.roots = list(roots)
        self.generation += 1
        if removed:
            self._server = self._client = None
        elif added:
            for context in (self._server, self._client):
                if context is not None:
                    context.load_verify_locations(cadata="".join(added))
        log.info("trust bundle: %d roots (%d added, %d removed)", len(roots), len(added), len(removed))
        if persist:
            self._save()

    # --- PEM, for TLS stacks that take bytes (grpcio) ----------------------------------

    def pem(self) -> tuple[bytes, bytes, bytes]:
        """(private key, certificate chain, trust bundle) as PEM bytes."""
        key = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)
        return key, chain, "".join(self.roots).encode()

    # --- TLS contexts ---------------------------------------------------------------

    def server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        """For a server: our certificate; client certificates verified against the mesh roots."""
        context = self._server
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.sni_callback = _remember_server_name
            self._prepare(context)
            self._server = context
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return context

    def client_context(self) -> ssl.SSLContext:
        """For a client: our certificate; the server's chain verified against the mesh roots.
        Host names do not apply (servers are named by SPIFFE ID, checked after the handshake)."""
        context = self._client
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = False
            context.verify_mode = ssl.CERT_REQUIRED
            self._prepare(context)
            self._client = context
        return context

    def _prepare(self, context: ssl.SSLContext) -> None:
        if self.roots:
            context.load_verify_locations(cadata="".join(self.roots))
        if self.chain:
            context.load_cert_chain(self.data_dir / CERT_FILE, self.data_dir / KEY_FILE)

    # --- files ----------------------------------------------------------------------

    def _load_or_make_key(self) -> ec.EllipticCurvePrivateKey:
        path = self.data_dir / KEY_FILE
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if isinstance(loaded, ec.EllipticCurvePrivateKey):
                return loaded
            log.warning("%s is not an ECDSA key; making a new one", path)
            path.unlink()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        write_secret(
            path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
        )
        return key

    def _load_saved(self) -> None:
        try:
            chain = x509.load_pem_x509_certificates((self.data_dir / CERT_FILE).read_bytes())
            roots = (self.data_dir / BUNDLE_FILE).read_text()
        except (OSError, ValueError):
            return
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        mine = self._key.public_key().public_bytes(serialization.Encoding.DER, spki)
        if chain[0].public_key().public_bytes(serialization.Encoding.DER, spki) != mine:
            return  # a certificate for another key: useless
        if spiffe_id_of(chain[0]) != self.expected_id:
            return
        self._set_chain(chain)
        self.roots = [
            f"-----BEGIN CERTIFICATE-----{part}" for part in roots.split("-----BEGIN CERTIFICATE-----")[1:]
        ]

    def _save(self) -> None:
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain)
        atomic_write(self.data_dir / CERT_FILE, pem)
        atomic_write(self.data_dir / BUNDLE_FILE, "".join(self.roots))


def _remember_server_name(connection: Any, name: str | None, context: ssl.SSLContext) -> None:
    """The server name the client asked for (``connection.sni`` in AuthorizationPolicy)."""
    connection.meshlib_sni = name


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]


def retry_delay(failures: int, valid: bool, rng: random.Random) -> float:
    """Fully jittered exponential back-off after ``failures`` failed renewals. Without a
    valid certificate mTLS is down, so the pause is capped lower than while it still works."""
    cap = RETRY_CAP if valid else RETRY_CAP_EXPIRED
    return rng.random() * min(cap, 0.5 * 2.0**failures)


async def keep_renewed(
    identity: WorkloadIdentity,
    urls: list[str],
    token: str,
    rng: random.Random,
    renewed: Callable[[], Awaitable[None]] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Renew at half-life (with jitter) until cancelled. A failed renewal is retried after a
    fully jittered exponential back-off (up to 30 s, 5 s once the certificate has expired),
    moving through the config service URLs (the one that answered is asked first next time);
    meanwhile the current certificate stays in use. ``renewed`` runs after each renewal."""
    failures = 0
    index = 0
    while True:
        if failures:
            delay = retry_delay(failures, identity.valid(), rng)
        else:
            due = identity.renew_at(rng)
            delay = 0.0 if due is None else (due - dt.datetime.now(dt.UTC)).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        url = urls[index % len(urls)]
        try:
            await asyncio.to_thread(_renew, identity, url, token, verify)
        except ControlPlaneError as exc:
            failures += 1
            index += 1
            log.log(
                logging.WARNING if failures == 1 else logging.DEBUG,
                "certificate renewal failed (attempt %d): %s",
                failures,
                exc,
            )
        else:
            failures = 0
            if renewed is not None:
                await renewed()


def _renew(identity: WorkloadIdentity, url: str, token: str, verify: ssl.SSLContext | bool) -> None:
    with httpx.Client(verify=verify) as client:
        identity.request(client, url, token)
