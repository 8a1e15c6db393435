"""meshlib: an in-process service mesh for Python.

Istio's policy (VirtualService, DestinationRule, ServiceEntry, PeerAuthentication,
AuthorizationPolicy, RequestAuthentication) applied inside the process, watched
from a small config service (``meshctl serve``) or read from files.
"""

from ._version import __version__
from .core.snapshot import Endpoint, Snapshot, WorkloadSecurity, compile_snapshot
from .errors import ConfigError, ConfigIssue, ControlPlaneError, MeshError, UnauthorizedError
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
    "MeshSettings",
    "Resource",
    "Snapshot",
    "UnauthorizedError",
    "WorkloadRegistration",
    "WorkloadSecurity",
    "__version__",
    "compile_snapshot",
    "load_paths",
    "load_text",
]
