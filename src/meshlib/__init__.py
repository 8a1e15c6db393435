"""meshlib: an in-process service mesh for Python.

Istio's policy (VirtualService, DestinationRule, ServiceEntry, PeerAuthentication,
AuthorizationPolicy, RequestAuthentication) applied inside the process, watched
from a small config service (``meshctl serve``) or read from files.
"""

from ._version import __version__
from .core.deadline import current_deadline, deadline
from .core.snapshot import Endpoint, Snapshot, WorkloadSecurity, compile_snapshot
from .errors import ConfigError, ConfigIssue, ControlPlaneError, MeshError, UnauthorizedError
from .http.errors import (
    MeshRequestError,
    MeshTimeoutError,
    NoHealthyUpstreamError,
    NoRouteError,
    RetriesExhaustedError,
    UpstreamOverflowError,
)
from .mesh import Mesh
from .policy import LoadedResource, Resource, load_paths, load_text
from .registry import AnnouncedEndpoint, WorkloadRegistration
from .settings import MeshSettings

__all__ = [
    "AnnouncedEndpoint",
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
    "NoHealthyUpstreamError",
    "NoRouteError",
    "Resource",
    "RetriesExhaustedError",
    "Snapshot",
    "UnauthorizedError",
    "UpstreamOverflowError",
    "WorkloadRegistration",
    "WorkloadSecurity",
    "__version__",
    "compile_snapshot",
    "current_deadline",
    "deadline",
    "load_paths",
    "load_text",
]
