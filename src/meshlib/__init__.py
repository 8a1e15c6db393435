"""meshlib: an in-process service mesh for Python.

Istio's policy (VirtualService, DestinationRule, ServiceEntry, PeerAuthentication,
AuthorizationPolicy, RequestAuthentication) applied inside the process, watched
from a small config service (``meshctl serve``) or read from files.
"""

from . import asgi, wsgi
from ._version import __version__
from .core.authz import AuthorizationCheck, RequestAuth
from .core.deadline import current_deadline, deadline
from .core.snapshot import Endpoint, Snapshot, WorkloadSecurity, compile_snapshot
from .errors import (
    CertificateUnavailableError,
    ConfigError,
    ConfigIssue,
    ControlPlaneError,
    MeshError,
    UnauthorizedError,
)
from .http.errors import (
    MeshRequestError,
    MeshTimeoutError,
    NoClusterError,
    NoHealthyUpstreamError,
    NoRouteError,
    RetriesExhaustedError,
    UpstreamOverflowError,
)
from .mesh import Mesh
from .peer import PeerIdentity, current_peer
from .policy import LoadedResource, Resource, load_paths, load_text
from .registry import AnnouncedEndpoint, WorkloadRegistration
from .server.limits import ServerLimits
from .server.serving import serve_asgi, serve_wsgi
from .settings import MeshSettings

__all__ = [
    "AnnouncedEndpoint",
    "AuthorizationCheck",
    "CertificateUnavailableError",
    "ConfigError",
    "ConfigIssue",
    "ControlPlaneError",
    "Endpoint",
    "LoadedResource",
    "Mesh",
    "MeshError",
    "MeshRequestError",
    "MeshSettings",
    "MeshTimeoutError",
    "NoClusterError",
    "NoHealthyUpstreamError",
    "NoRouteError",
    "PeerIdentity",
    "RequestAuth",
    "Resource",
    "RetriesExhaustedError",
    "ServerLimits",
    "Snapshot",
    "UnauthorizedError",
    "UpstreamOverflowError",
    "WorkloadRegistration",
    "WorkloadSecurity",
    "__version__",
    "asgi",
    "compile_snapshot",
    "current_deadline",
    "current_peer",
    "deadline",
    "load_paths",
    "load_text",
    "serve_asgi",
    "serve_wsgi",
    "wsgi",
]
