"""``meshctl serve --tls``: the config service on HTTPS with a certificate of its own CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from meshlib import Mesh
from meshlib.cli.main import main as meshctl
from meshlib.control_plane_tls import cleartext_remote, control_plane_verify
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer, tls_names_for
from meshlib.errors import ConfigError, ControlPlaneError
from meshlib.settings import MeshSettings
from tests.conftest import virtual_service
from tests.servers import wait_for


def tls_workload(server: ConfigServer, token: str, data_dir: Path) -> Mesh:
    """A workload of ``server`` (started with tls), verifying it by its bundle."""
    return Mesh(
        "frontend",
        control_plane=server.url,
        control_plane_ca=server.ca_bundle_path,
        token=token,
        data_dir=data_dir,
    )


def test_workloads_and_meshctl_reach_a_tls_service_by_its_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ConfigServer(tmp_path / "cp", tls=True) as server:
        assert server.url.startswith("https://127.0.0.1:")
        bundle = server.ca_bundle_path
        assert bundle is not None
        assert (tmp_path / "cp" / "tls" / "server-key.pem").stat().st_mode & 0o777 == 0o600
        verify = control_plane_verify(bundle)
        with ControlPlaneClient(server.url, server.admin_token, verify=verify) as admin:
            version = admin.apply([virtual_service()])["version"]
            token = admin.create_token("frontend")["token"]
        with tls_workload(server, token, tmp_path / "f") as mesh:
            assert mesh.wait_for_version(version, 5)
            assert mesh.workload_identity is not None
            assert mesh.workload_identity.valid()
        code = meshctl(
            [
                "--server",
                server.url,
                "--ca-file",
                str(bundle),
                "--token-file",
                str(server.token_path),
                "get",
                "vs",
            ]
        )
        assert code == 0
        assert "reviews" in capsys.readouterr().out


def test_without_the_bundle_the_service_is_not_trusted_and_plain_http_is_not_served(tmp_path: Path) -> None:
    with ConfigServer(tmp_path / "cp", tls=True) as server:
        with (
            ControlPlaneClient(server.url, server.admin_token) as unverified,
            pytest.raises(ControlPlaneError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            unverified.health()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/v1/healthz", timeout=2.0)


def test_the_certificate_names_the_listening_address_and_chains_to_the_mesh_root(tmp_path: Path) -> None:
    with ConfigServer(tmp_path / "cp", tls=True) as server:
        assert server.state is not None
        pem = (tmp_path / "cp" / "tls" / "server.pem").read_bytes()
        leaf = x509.load_pem_x509_certificates(pem)[0]
        root = x509.load_pem_x509_certificate(server.state.trust_bundle[0].encode())
        leaf.verify_directly_issued_by(root)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == []  # no workload identity
        # The standard library's own check, as every client makes it.
        context = ssl.create_default_context(cafile=str(server.ca_bundle_path))
        with httpx.Client(verify=context) as client:
            assert client.get(f"https://localhost:{server.port}/v1/healthz").status_code == 200


@pytest.mark.parametrize(
    ("host", "extra", "names"),
    [
        ("127.0.0.1", (), ["localhost", "127.0.0.1"]),
        ("0.0.0.0", ("cp.example.internal",), ["localhost", "127.0.0.1", "::1", "cp.example.internal"]),
        ("10.1.2.3", ("10.1.2.3", "cp"), ["10.1.2.3", "cp"]),
    ],
)
def test_certificate_names(host: str, extra: tuple[str, ...], names: list[str]) -> None:
    assert tls_names_for(host, extra) == names


def test_an_unreadable_bundle_is_a_clear_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    settings = MeshSettings.from_env(
        {
            "MESH_SERVICE": "frontend",
            "MESH_CONTROL_PLANE": "https://cp:15010",
            "MESH_CONTROL_PLANE_CA": str(missing),
        }
    )
    assert settings.control_plane_ca == missing
    with pytest.raises(
        ConfigError, match=r"MESH_CONTROL_PLANE_CA: .*nope\.pem: not a readable PEM CA bundle"
    ):
        control_plane_verify(settings.control_plane_ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"garbage\.pem: not a readable PEM CA bundle"):
        control_plane_verify(garbage, "MESH_CONTROL_PLANE_CA")


def test_tokens_sent_in_the_clear_off_this_machine_are_named() -> None:
    urls = [
        "http://127.0.0.1:15010",
        "http://localhost:1",
        "http://[::1]:2",
        "https://cp:15010",
        "http://cp:15010",
    ]
    assert cleartext_remote(urls) == ["http://cp:15010"]


def served_certificate(server: ConfigServer) -> x509.Certificate:
    """The leaf a new TLS connection to the service gets (verified by the service's bundle)."""
    context = ssl.create_default_context(cafile=str(server.ca_bundle_path))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_certificate_is_renewed_at_half_its_lifetime_and_served_to_new_connections(
    tmp_path: Path,
) -> None:
    ttl = dt.timedelta(seconds=4)
    with ConfigServer(tmp_path / "cp", tls=True, tls_ttl=ttl) as server:
        first = served_certificate(server)
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        assert lifetime <= ttl + dt.timedelta(seconds=1)  # the TTL asked for (less a little skew)
        bundle = server.ca_bundle_path
        assert bundle is not None
        with ControlPlaneClient(server.url, server.admin_token, verify=control_plane_verify(bundle)) as admin:
            token = admin.create_token("frontend")["token"]
            with tls_workload(server, token, tmp_path / "f") as mesh:
                assert wait_for(lambda: served_certificate(server).serial_number != first.serial_number, 5)
                second = served_certificate(server)
                assert second.not_valid_after_utc > first.not_valid_after_utc
                on_disk = x509.load_pem_x509_certificates(
                    (tmp_path / "cp" / "tls" / "server.pem").read_bytes()
                )
                assert on_disk[0].serial_number in {
                    second.serial_number,
                    served_certificate(server).serial_number,
                }
                assert (tmp_path / "cp" / "tls" / "server-key.pem").stat().st_mode & 0o777 == 0o600
                # Past the first certificate's end: the service is still reachable and watched.
                assert wait_for(lambda: dt.datetime.now(dt.UTC) > first.not_valid_after_utc, 6)
                assert served_certificate(server).not_valid_after_utc > dt.datetime.now(dt.UTC)  # verified
                version = admin.apply([virtual_service()])["version"]
                assert mesh.wait_for_version(version, 5)
