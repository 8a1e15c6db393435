"""httpx transports that send requests through the mesh."""

from .transport import AsyncMeshTransport, MeshTransport

__all__ = ["AsyncMeshTransport", "MeshTransport"]
