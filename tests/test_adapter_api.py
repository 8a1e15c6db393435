"""The adapter API (meshlib.adapter) is what other adapters build on: pinned, so that a
change to it is deliberate."""

import meshlib.adapter

EXPECTED = [
    "CONNECT_TIMEOUT",
    "DEADLINE_HEADER",
    "MIRROR_TIMEOUT",
    "AnnouncedEndpoint",
    "Answer",
    "AsyncClientIO",
    "AsyncInboundRequest",
    "Attempt",
    "Call",
    "CertificateState",
    "CertificateUnavailableError",
    "ClientIO",
    "ClientMesh",
    "Endpoint",
    "Exchange",
    "Failure",
    "HeaderOps",
    "Inbound",
    "InboundRequest",
    "MeshError",
    "Mirror",
    "Origin",
    "Outcome",
    "PeerIdentity",
    "RawHeaders",
    "Reply",
    "RoutingTable",
    "Send",
    "ServerLimits",
    "ServingMesh",
    "Sleep",
    "Synthetic",
    "TlsMaterial",
    "TlsOriginations",
    "TlsSettingsError",
    "Waiting",
    "advertise_address",
    "apply_header_ops",
    "current_deadline",
    "drive_client",
    "drive_client_async",
    "edited_headers",
    "grpc_server_options",
    "grpc_status_for_http",
    "http_status_for_grpc",
    "outbound",
    "response_ops",
    "service_dns_name",
    "shadow_authority",
    "spiffe_id_of",
    "system_root_certificates",
    "wait_learned",
    "wait_learned_async",
]


def test_all_is_pinned() -> None:
    assert sorted(meshlib.adapter.__all__) == sorted(EXPECTED)


def test_every_name_in_all_exists() -> None:
    for name in meshlib.adapter.__all__:
        assert getattr(meshlib.adapter, name) is not None, name
