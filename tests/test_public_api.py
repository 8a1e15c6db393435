"""The public surface is what __all__ says; this pins it so changes are deliberate."""

import meshlib

EXPECTED = [
    "AnnouncedEndpoint",
    "AuthorizationCheck",
    "RequestAuth",
    "CertificateUnavailableError",
    "ConfigError",
    "ConfigIssue",
    "ControlPlaneError",
    "Endpoint",
    "LoadedResource",
    "Mesh",
    "PeerIdentity",
    "MeshError",
    "MeshRequestError",
    "MeshTimeoutError",
    "NoClusterError",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "RetriesExhaustedError",
    "UpstreamOverflowError",
    "asgi",
    "current_deadline",
    "current_peer",
    "deadline",
    "MeshSettings",
    "Resource",
    "ServerLimits",
    "Snapshot",
    "UnauthorizedError",
    "WorkloadRegistration",
    "WorkloadSecurity",
    "__version__",
    "compile_snapshot",
    "load_paths",
    "load_text",
    "serve_asgi",
    "serve_wsgi",
    "wsgi",
]


def test_all_is_pinned() -> None:
    assert sorted(meshlib.__all__) == sorted(EXPECTED)


def test_every_name_in_all_exists() -> None:
    for name in meshlib.__all__:
        assert getattr(meshlib, name) is not None, name
