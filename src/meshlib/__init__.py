"""meshlib: an in-process service mesh for Python.

Istio's policy (VirtualService, DestinationRule, ServiceEntry, PeerAuthentication,
AuthorizationPolicy, RequestAuthentication) applied inside the process, watched
from a small config service (``meshctl serve``) or read from files.

``import meshlib`` loads only what is asked for: each public name is imported on first use
(PEP 562), so a client-only process never loads the server stack, the config service, the
CA or the policy models it does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__
from .errors import (
    CertificateUnavailableError,
    ConfigError,
    ConfigIssue,
    ControlPlaneError,
    MeshError,
    UnauthorizedError,
)

if TYPE_CHECKING:
    from . import asgi, wsgi
    from .core.authz import AuthorizationCheck, RequestAuth
    from .core.deadline import current_deadline, deadline
    from .core.snapshot import Endpoint, Snapshot, WorkloadSecurity, compile_snapshot
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

_LAZY: dict[str, str] = {
    "asgi": ".asgi",
    "wsgi": ".wsgi",
    "AuthorizationCheck": ".core.authz",
    "RequestAuth": ".core.authz",
    "current_deadline": ".core.deadline",
    "deadline": ".core.deadline",
    "Endpoint": ".core.snapshot",
    "Snapshot": ".core.snapshot",
    "WorkloadSecurity": ".core.snapshot",
    "compile_snapshot": ".core.snapshot",
    "MeshRequestError": ".http.errors",
    "MeshTimeoutError": ".http.errors",
    "NoClusterError": ".http.errors",
    "NoHealthyUpstreamError": ".http.errors",
    "NoRouteError": ".http.errors",
    "RetriesExhaustedError": ".http.errors",
    "UpstreamOverflowError": ".http.errors",
    "Mesh": ".mesh",
    "PeerIdentity": ".peer",
    "current_peer": ".peer",
    "LoadedResource": ".policy",
    "Resource": ".policy",
    "load_paths": ".policy",
    "load_text": ".policy",
    "AnnouncedEndpoint": ".registry",
    "WorkloadRegistration": ".registry",
    "ServerLimits": ".server.limits",
    "serve_asgi": ".server.serving",
    "serve_wsgi": ".server.serving",
    "MeshSettings": ".settings",
}
"""Public name -> the module that defines it, imported by ``__getattr__`` on first use."""


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

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
