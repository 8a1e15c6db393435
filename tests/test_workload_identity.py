"""The workload identity: its trust bundle on real TLS handshakes (roots added to live contexts,
roots removed no longer trusted by new connections, on the server side and the client side)
and the back-off between failed renewals."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshlib.ca.svid import CaMaterial, issue_svid, issuer_key_id, key_id, make_ca
from meshlib.core.attempt import needs_mtls as outbound_mtls
from meshlib.core.snapshot import Endpoint
from meshlib.errors import CertificateUnavailableError
from meshlib.workload_identity import WorkloadIdentity

DOMAIN = "cluster.local"


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def identity(tmp_path: Path, name: str, ca: CaMaterial, roots: list[CaMaterial]) -> WorkloadIdentity:
    spiffe = f"spiffe://{DOMAIN}/ns/default/sa/{name}"
    ident = WorkloadIdentity(tmp_path / name, spiffe)
    csr = x509.load_pem_x509_csr(ident.csr_pem().encode())
    cert = issue_svid(ca, csr, spiffe, dt.timedelta(hours=1))
    ident.install([cert], [pem(r.certificate) for r in roots])
    return ident


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """A TLS connection over a socket pair; True when both sides got through and a byte
    travelled (with TLS 1.3 a refused client certificate shows up only after the handshake)."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    outcome: dict[str, bool] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                tls.sendall(b"!")
                outcome["server"] = True
        except (ssl.SSLError, OSError):
            outcome["server"] = False
            left.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right) as tls:
            outcome["client"] = tls.recv(1) == b"!"
    except (ssl.SSLError, OSError):
        outcome["client"] = False
        right.close()
    thread.join(5)
    return outcome == {"server": True, "client": True}


def test_a_removed_root_is_refused_by_new_connections_on_both_sides(tmp_path: Path) -> None:
    root_a, root_b = make_ca(DOMAIN), make_ca(DOMAIN)
    old = identity(tmp_path, "old", root_a, [root_a])  # a workload the rotation has not reached
    new = identity(tmp_path, "new", root_b, [root_a, root_b])
    assert new.issuer == key_id(root_b.certificate) == issuer_key_id(new.chain[0])
    assert old.issuer == key_id(root_a.certificate)

    # Side by side: "new" trusts both roots and talks to "old" in both directions.
    old.update_roots([pem(root_a.certificate), pem(root_b.certificate)])
    server_before, client_before = new.server_context(), new.client_context()
    assert handshake(new.server_context(), old.client_context())
    assert handshake(old.server_context(), new.client_context())
    generation = new.generation

    # The operator drops root A: "new" stops trusting it from the next connection.
    new.update_roots([pem(root_b.certificate)])
    assert new.generation == generation + 1
    assert new.roots == [pem(root_b.certificate)]
    assert new.server_context() is not server_before, "SSLContext cannot forget a root: new contexts"
    assert new.client_context() is not client_before
    assert not handshake(new.server_context(), old.client_context()), "server side refuses root A"
    assert not handshake(old.server_context(), new.client_context()), "client side refuses root A"
    assert handshake(new.server_context(), new.client_context())
    # The bundle on disk (used after a restart) is the new one too.
    assert WorkloadIdentity(tmp_path / "new", new.expected_id).roots == [pem(root_b.certificate)]


def test_an_added_root_goes_into_the_live_contexts(tmp_path: Path) -> None:
    root_a, root_b = make_ca(DOMAIN), make_ca(DOMAIN)
    old = identity(tmp_path, "old", root_a, [root_a])
    new = identity(tmp_path, "new", root_b, [root_a, root_b])
    server, client = old.server_context(), old.client_context()
    assert not handshake(server, new.client_context()), "old does not trust root B yet"
    assert not handshake(new.server_context(), client)
    old.update_roots([pem(root_a.certificate), pem(root_b.certificate)])
    assert old.server_context() is server, "the same live contexts"
    assert old.client_context() is client
    assert handshake(server, new.client_context())
    assert handshake(new.server_context(), client)


def test_the_same_bundle_changes_nothing(tmp_path: Path) -> None:
    root = make_ca(DOMAIN)
    ident = identity(tmp_path, "w", root, [root])
    context, generation = ident.server_context(), ident.generation
    ident.update_roots([pem(root.certificate)])
    ident.update_roots([])  # an empty bundle is never installed: it would refuse everyone
    assert ident.generation == generation
    assert ident.server_context() is context
    assert ident.roots == [pem(root.certificate)]


def test_key_ids_name_the_signing_ca(tmp_path: Path) -> None:
    root = make_ca(DOMAIN)
    ident = identity(tmp_path, "w", root, [root])
    cert = ident.chain[0]
    ski = root.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert key_id(root.certificate) == ski.digest.hex()[:16]
    assert issuer_key_id(cert) == key_id(root.certificate)
    assert key_id(cert) != key_id(root.certificate)


def test_failed_renewals_back_off_less_once_the_certificate_expired() -> None:
    import random

    from meshlib.workload_identity import RETRY_CAP, RETRY_CAP_EXPIRED, retry_delay

    class Top(random.Random):
        def random(self) -> float:
            return 0.999999  # the largest jittered pause

    assert retry_delay(1, True, Top()) == pytest.approx(1.0, rel=1e-3)
    assert retry_delay(20, True, Top()) == pytest.approx(RETRY_CAP, rel=1e-3)
    assert retry_delay(20, False, Top()) == pytest.approx(RETRY_CAP_EXPIRED, rel=1e-3)
    assert RETRY_CAP_EXPIRED < RETRY_CAP
    assert 0 <= retry_delay(3, False, random.Random(1)) <= 4.0


def endpoint(
    tls: bool = True, identity: str | None = "spiffe://cluster.local/ns/default/sa/reviews"
) -> Endpoint:
    return Endpoint("reviews.default.svc.cluster.local", "127.0.0.1", 8080, identity=identity, tls=tls)


def expired_identity(tmp_path: Path, ca: CaMaterial) -> WorkloadIdentity:
    spiffe = f"spiffe://{DOMAIN}/ns/default/sa/old"
    ident = WorkloadIdentity(tmp_path / "old", spiffe)
    csr = x509.load_pem_x509_csr(ident.csr_pem().encode())
    cert = issue_svid(ca, csr, spiffe, dt.timedelta(seconds=1))
    ident.install([cert], [pem(ca.certificate)])
    return ident


def test_outbound_mtls_follows_tls_mode_then_the_endpoint_and_never_downgrades(tmp_path: Path) -> None:
    ca = make_ca(DOMAIN)
    good = identity(tmp_path, "frontend", ca, [ca])
    assert good.valid()
    # Not a mesh workload, or mTLS switched off: plaintext whatever this workload holds.
    assert outbound_mtls(good, None, None) is False
    assert outbound_mtls(good, None, endpoint(identity=None)) is False
    assert outbound_mtls(good, "DISABLE", endpoint()) is False
    # Automatic: mTLS toward endpoints that serve it, from workloads with an identity.
    assert outbound_mtls(good, None, endpoint()) is True
    # SIMPLE and MUTUAL: the DestinationRule's own TLS, also toward a mesh endpoint (as in Istio).
    assert outbound_mtls(good, "SIMPLE", endpoint()) is False
    assert outbound_mtls(good, "MUTUAL", endpoint()) is False
    assert outbound_mtls(good, None, endpoint(tls=False)) is False
    assert outbound_mtls(None, None, endpoint()) is False  # no identity at all: nothing to prove
    assert outbound_mtls(good, "ISTIO_MUTUAL", endpoint(tls=False)) is True
    with pytest.raises(CertificateUnavailableError, match="no mesh identity to verify"):
        outbound_mtls(good, "ISTIO_MUTUAL", endpoint(identity=None))
    assert (
        outbound_mtls(good, "ISTIO_MUTUAL", None) is False
    )  # the requested host itself: not a mesh endpoint
    # ISTIO_MUTUAL without an identity, or an identity whose certificate is gone: refused.
    with pytest.raises(CertificateUnavailableError, match=r"ISTIO_MUTUAL .* no mesh identity"):
        outbound_mtls(None, "ISTIO_MUTUAL", endpoint())
    fresh = WorkloadIdentity(tmp_path / "fresh", f"spiffe://{DOMAIN}/ns/default/sa/fresh")
    with pytest.raises(CertificateUnavailableError, match="has none yet"):
        outbound_mtls(fresh, None, endpoint())
    assert good.valid(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=59))
    assert not good.valid(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=61)), "valid() knows the expiry"


def test_an_expired_certificate_is_refused_with_its_expiry_in_the_message(tmp_path: Path) -> None:
    ca = make_ca(DOMAIN)
    old = expired_identity(tmp_path, ca)
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    while old.valid() and dt.datetime.now(dt.UTC) < deadline:
        time.sleep(0.05)
    assert not old.valid()
    with pytest.raises(
        CertificateUnavailableError, match=r"certificate expired at \d{4}-\d\d-\d\d .* plaintext"
    ):
        outbound_mtls(old, None, endpoint())
    with pytest.raises(CertificateUnavailableError, match="expired"):
        outbound_mtls(old, "ISTIO_MUTUAL", endpoint(tls=False))


def test_the_workload_key_is_p256_made_here_and_kept_0600(tmp_path: Path) -> None:
    import os
    import stat

    from cryptography.hazmat.primitives.asymmetric import ec

    ident = identity(tmp_path, "keyed", make_ca(DOMAIN), [])
    key_file = tmp_path / "keyed" / "key.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    cert = ident.certificate
    assert cert is not None
    assert cert.public_key().public_numbers() == key.public_key().public_numbers(), "the SVID is for this key"
    again = WorkloadIdentity(tmp_path / "keyed", ident.expected_id)
    assert again.certificate == cert, "a restart reuses the saved key and certificate"
