"""What a workload announces about itself to the config service's registry."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from .policy.base import MeshModel

__all__ = ["AnnouncedEndpoint", "WorkloadRegistration", "spiffe_id"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """Istio's identity form: ``spiffe://cluster.local/ns/default/sa/reviews``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


class AnnouncedEndpoint(MeshModel):
    """An address and port where the workload serves, and whether it takes traffic now."""

    address: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    protocol: Literal["http", "https", "grpc", "tcp"] = "http"
    ready: bool = True
    tls: bool = False  # serves mutual TLS with its mesh identity (clients then use mTLS)


class WorkloadRegistration(MeshModel):
    """Sent by each workload when it (re)connects and whenever its endpoints change."""

    id: str
    service: str = Field(min_length=1, max_length=63)
    namespace: str = Field(default="default", min_length=1, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    endpoints: list[AnnouncedEndpoint] = Field(default_factory=list)
    hostname: str = ""
    pid: int = 0
    meshlib_version: str = ""
    certificate_expires: str | None = None  # ISO time; None without a mesh certificate
    certificate_issuer: str | None = None  # key id of the CA that signed it (root rotations)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"invalid workload id {value!r}")
        return value

    def effective_labels(self) -> dict[str, str]:
        """Labels that selectors see: the workload's own, plus ``app`` = service if unset."""
        return {"app": self.service, **self.labels}

    def identity(self, trust_domain: str) -> str:
        return spiffe_id(trust_domain, self.namespace, self.service)
