"""TLS origination: a DestinationRule's ``tls`` with mode SIMPLE or MUTUAL, as the clients use it.

What Envoy does with the same settings: TLS to the upstream endpoint (also when the
application called ``http://``), verified against ``caCertificates`` or the OS roots, a
server certificate that must carry one of ``subjectAltNames`` (none listed: the SNI name,
Istio's automatic SAN validation), ``caCrl`` refusing a revoked one, ``insecureSkipVerify``
skipping all of it, and the client certificate in MUTUAL mode.

The files are read, parsed and built into what a client needs (an ``ssl.SSLContext`` for
httpx, grpc credentials for grpcio) once per distinct settings, off the request path: a
request only looks its settings up. They are looked at again (a ``stat``, on use) at most
every ``RECHECK`` seconds and rebuilt when one changed, so a rotated certificate is picked
up by new connections as Istio's agent does. A file that cannot be read or parsed fails
every request that needs it with a ``TlsSettingsError`` naming the field and the file:
nothing is sent, in plaintext or otherwise.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from .errors import TlsSettingsError
from .policy.destination_rule import ClientTLSSettings

__all__ = [
    "RECHECK",
    "Origin",
    "TlsMaterial",
    "TlsOriginations",
    "client_context",
    "names_mismatch",
    "read_material",
    "system_root_certificates",
]

RECHECK = 10.0  # seconds between looks at a rule's files (one stat each)
_MAX_IDS = 4096  # settings objects remembered by identity (a few per snapshot); then forgotten
_MAX_SETTINGS = 1024  # distinct settings kept; beyond, all are forgotten (and rebuilt when used)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The PEM bytes a rule's files hold, each checked to parse (None: not set or not used)."""

    ca: bytes | None = None
    crl: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None


def _files(settings: ClientTLSSettings) -> list[tuple[str, str]]:
    """(field, path) of the files these settings use: the client pair in MUTUAL only, the
    CA and CRL unless verification is skipped."""
    out: list[tuple[str, str]] = []
    if settings.mode == "MUTUAL":
        out.append(("clientCertificate", settings.client_certificate or ""))
        out.append(("privateKey", settings.private_key or ""))
    if not settings.insecure_skip_verify:
        if settings.ca_certificates:
            out.append(("caCertificates", settings.ca_certificates))
        if settings.ca_crl:
            out.append(("caCrl", settings.ca_crl))
    return out


def _error(field: str, path: str, problem: str) -> TlsSettingsError:
    return TlsSettingsError(
        f"DestinationRule tls.{field} {path!r}: {problem}; the request is not sent without it"
    )


def read_material(settings: ClientTLSSettings) -> TlsMaterial:
    """Read and check every file the settings use (raises TlsSettingsError naming the one
    that is wrong)."""
    found: dict[str, bytes] = {}
    for field, path in _files(settings):
        try:
            found[field] = Path(path).read_bytes()
        except OSError as error:
            raise _error(field, path, f"cannot be read ({error.strerror or error})") from error
    paths = dict(_files(settings))
    from cryptography import x509  # here, not at import: only TLS origination with files pays for it
    from cryptography.hazmat.primitives import serialization

    if "caCertificates" in found:
        _parse("caCertificates", paths, lambda: x509.load_pem_x509_certificates(found["caCertificates"]))
    if "caCrl" in found:
        _parse("caCrl", paths, lambda: x509.load_pem_x509_crl(found["caCrl"]))
    if "clientCertificate" in found:
        chain = _parse(
            "clientCertificate", paths, lambda: x509.load_pem_x509_certificates(found["clientCertificate"])
        )
        key = _parse(
            "privateKey", paths, lambda: serialization.load_pem_private_key(found["privateKey"], None)
        )
        public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if chain[0].public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
            cert = paths["clientCertificate"]
            raise _error("privateKey", paths["privateKey"], f"is not the key of clientCertificate {cert!r}")
    return TlsMaterial(
        ca=found.get("caCertificates"),
        crl=found.get("caCrl"),
        cert=found.get("clientCertificate"),
        key=found.get("privateKey"),
    )


V = TypeVar("V")


def _parse(field: str, paths: dict[str, str], parse: Callable[[], V]) -> V:
    kind = {"caCrl": "a PEM certificate revocation list", "privateKey": "an unencrypted PEM private key"}
    try:
        return parse()
    except (ValueError, TypeError) as error:
        wanted = kind.get(field, "PEM certificate")
        raise _error(field, paths[field], f"holds no {wanted} ({error})") from error
    except Exception as error:  # an unsupported key type, and the like
        raise _error(field, paths[field], f"cannot be used ({error})") from error


def client_context(settings: ClientTLSSettings, material: TlsMaterial) -> ssl.SSLContext:
    """The ``ssl.SSLContext`` for HTTP connections under these settings. With subjectAltNames
    the host name check is off: the network layer checks the names after the handshake,
    before a byte of the request is written (``names_mismatch``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Envoy's default for upstream TLS
    context.set_alpn_protocols(["http/1.1"])  # the mesh's pools speak HTTP/1.1
    if settings.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        field, path = "caCertificates", settings.ca_certificates or ""
        try:
            if material.ca is None:
                context.load_default_certs()  # the OS roots, as Envoy without caCertificates
            else:
                context.load_verify_locations(cadata=material.ca.decode("ascii", "replace"))
            if material.crl is not None:
                field, path = "caCrl", settings.ca_crl or ""
                context.load_verify_locations(cafile=path)  # CRLs load from files (cadata: certificates)
                context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        except (OSError, ssl.SSLError) as error:
            raise _error(field, path, f"cannot be used ({error})") from error
        if settings.subject_alt_names:
            context.check_hostname = False
    if material.cert is not None:
        try:
            context.load_cert_chain(settings.client_certificate or "", settings.private_key or "")
        except (OSError, ssl.SSLError) as error:
            path = settings.client_certificate or ""
            raise _error("clientCertificate", path, f"cannot be used ({error})") from error
    return context


def system_root_certificates() -> bytes | None:
    """The OS roots as one PEM bundle (honouring SSL_CERT_FILE), for clients that want bytes
    (grpcio); None when there is no such file (grpcio then uses its own bundled roots)."""
    path = ssl.get_default_verify_paths().cafile
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def names_mismatch(der: bytes | None, names: tuple[str, ...]) -> str | None:
    """None when the certificate (DER) carries one of ``names``; else what it carries.

    Envoy's rule for Istio's subjectAltNames: a name matches a URI, IP or email SAN exactly,
    or a DNS SAN ignoring case, where a DNS SAN ``*.example.com`` covers one label
    (``api.example.com``, not ``a.b.example.com``)."""
    if not der:
        return "the server presented no certificate"
    from cryptography import x509  # once per connection that checks subjectAltNames

    try:
        sans = (
            x509.load_der_x509_certificate(der)
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
    except x509.ExtensionNotFound:
        return "its certificate has no subjectAltName"
    dns = [d.lower() for d in sans.get_values_for_type(x509.DNSName)]
    exact = {
        *sans.get_values_for_type(x509.UniformResourceIdentifier),
        *sans.get_values_for_type(x509.RFC822Name),
        *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)),
    }
    for name in names:
        if name in exact or _ip(name) in exact or any(_dns_match(name.lower(), pattern) for pattern in dns):
            return None
    return "its certificate names " + (", ".join([*dns, *sorted(exact)]) or "nothing")


def _ip(name: str) -> str | None:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


def _dns_match(name: str, pattern: str) -> bool:
    if pattern.startswith("*.") and len(name) > len(pattern) - 1:
        cut = len(name) - len(pattern) + 1
        return "." not in name[:cut] and name[cut:] == pattern[1:]
    return name == pattern


class Origin(Generic[T]):
    """What one distinct ``ClientTLSSettings`` gives a client: ``value`` (an SSLContext, grpc
    credentials: the latest built), ``names`` the server certificate must carry, checked
    after the handshake (empty: the host name check covers it, or nothing is verified), a
    ``key`` for pool and channel keys (the same for equal settings, across snapshots) and the
    ``generation`` of ``value`` (it grows when changed files are rebuilt)."""

    __slots__ = ("error", "generation", "key", "names", "recheck_at", "settings", "signature", "value")

    def __init__(self, settings: ClientTLSSettings, key: int) -> None:
        self.settings = settings
        self.key = key
        self.names: tuple[str, ...] = () if settings.insecure_skip_verify else settings.subject_alt_names
        self.value: T | None = None
        self.generation = 0
        self.error: str | None = None
        self.recheck_at = 0.0
        self.signature: tuple[object, ...] | None = None

    def current(self) -> T:
        """The latest built value (for connections opened later under this origin)."""
        assert self.value is not None
        return self.value


class TlsOriginations(Generic[T]):
    """One ``Origin`` per distinct settings, built with ``build`` from the files' material.

    ``get`` is on the request path: a dictionary hit by the settings object's identity (the
    snapshot's cluster keeps the same object for all its requests), and a clock read."""

    def __init__(self, build: Callable[[ClientTLSSettings, TlsMaterial], T]) -> None:
        self._build = build
        self._by_id: dict[int, tuple[ClientTLSSettings, Origin[T]]] = {}
        self._by_value: dict[ClientTLSSettings, Origin[T]] = {}
        self._keys = itertools.count(1)
        self._lock = threading.Lock()

    def get(self, settings: ClientTLSSettings) -> Origin[T]:
        """The origin of ``settings`` (raises TlsSettingsError when its files cannot be used)."""
        pair = self._by_id.get(id(settings))
        origin = pair[1] if pair is not None and pair[0] is settings else self._lookup(settings)
        if time.monotonic() >= origin.recheck_at:
            self._refresh(origin)
        if origin.error is not None:
            raise TlsSettingsError(origin.error)
        return origin

    def _lookup(self, settings: ClientTLSSettings) -> Origin[T]:
        with self._lock:
            origin = self._by_value.get(settings)
            if origin is None:
                if len(self._by_value) >= _MAX_SETTINGS:  # policies that churn: keep memory bounded
                    self._by_value, self._by_id = {}, {}
                origin = self._by_value[settings] = Origin(settings, next(self._keys))
            if len(self._by_id) >= _MAX_IDS:
                self._by_id = {}
            self._by_id[id(settings)] = (settings, origin)  # keeps the object: its id stays its own
        return origin

    def _refresh(self, origin: Origin[T]) -> None:
        with self._lock:
            now = time.monotonic()
            if now < origin.recheck_at:
                return  # another thread just did
            signature = _signature(origin.settings)
            if signature != origin.signature:
                try:
                    value = self._build(origin.settings, read_material(origin.settings))
                except TlsSettingsError as error:
                    origin.error = str(error)  # until a file changes: fail closed, never plaintext
                else:
                    origin.value, origin.error = value, None
                    origin.generation += 1
                origin.signature = signature
            origin.recheck_at = now + RECHECK


def _signature(settings: ClientTLSSettings) -> tuple[object, ...]:
    """What tells a changed file: path, modification time, size and inode, or the error."""
    out: list[object] = []
    for _, path in _files(settings):
        try:
            info = os.stat(path)
        except OSError as error:
            out.append((path, type(error).__name__))
        else:
            out.append((path, info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(out)
