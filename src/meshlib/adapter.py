"""The adapter API: what an adapter for a protocol or framework builds on (meshlib's own
gRPC package uses nothing else). Pinned by a test; everything else in meshlib is internal.

An outbound adapter turns its request into a ``Call``, makes the ``Exchange`` with
``outbound``, runs the client stack with ``drive_client`` / ``drive_client_async`` and an
object that performs the decided ``Send`` and ``Mirror`` actions, then turns the ``Reply``
into its own answer or error. An inbound adapter makes an ``InboundRequest`` (or
``AsyncInboundRequest``) per request: ``admit()`` (a local ``Answer``, or None: run the
application inside ``scope()``), then ``end(status)``. A workload that learns its egress
hosts (``ClientMesh.learned_egress``) asks ``wanted()`` before routing a request and, when it
gets a ``Waiting``, waits for it with ``wait_learned`` / ``wait_learned_async``.
"""

from __future__ import annotations

from ._net import advertise_address
from .ca.svid import service_dns_name, spiffe_id_of
from .core.attempt import (
    CONNECT_TIMEOUT,
    MIRROR_TIMEOUT,
    CertificateState,
    apply_header_ops,
    response_ops,
    shadow_authority,
)
from .core.call import Call, RawHeaders
from .core.deadline import DEADLINE_HEADER, current_deadline
from .core.exchange import Attempt, Exchange, Mirror, Outcome, Reply, Send, Sleep, Synthetic
from .core.grpc_status import grpc_status_for_http, http_status_for_grpc
from .core.retry_policy import Failure
from .core.routing_table import HeaderOps, RoutingTable
from .core.server_stack import Answer, Inbound, edited_headers
from .core.snapshot import Endpoint
from .drivers import (
    AsyncClientIO,
    AsyncInboundRequest,
    ClientIO,
    ClientMesh,
    InboundRequest,
    ServingMesh,
    drive_client,
    drive_client_async,
    outbound,
)
from .errors import CertificateUnavailableError, MeshError, TlsSettingsError
from .learned_egress import Waiting, wait_learned, wait_learned_async
from .peer import PeerIdentity
from .registry import AnnouncedEndpoint
from .server.limits import ServerLimits, grpc_server_options
from .tls_origination import Origin, TlsMaterial, TlsOriginations, system_root_certificates

__all__ = [
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
