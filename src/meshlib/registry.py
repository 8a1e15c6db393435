"""What a workload announces about itself to the config service's registry.

Every field is checked where it enters: the service and namespace are DNS-1123 labels (one
spelling per service, so the identity check and the snapshot see the same name), labels
follow Kubernetes' syntax, endpoint addresses are places a client can connect to, and the
sizes are bounded (one registration can never make every watcher download megabytes).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from .names import check_address, check_dns_label, check_label_key, check_label_value, check_locality
from .policy.base import MeshModel

__all__ = [
    "MAX_ENDPOINTS_PER_WORKLOAD",
    "MAX_LABELS",
    "AnnouncedEndpoint",
    "WorkloadRegistration",
    "spiffe_id",
]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,252}")
MAX_ENDPOINTS_PER_WORKLOAD = 32
MAX_LABELS = 64


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """Istio's identity form: ``spiffe://cluster.local/ns/default/sa/reviews``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


class AnnouncedEndpoint(MeshModel):
    """An address and port where the workload serves, and whether it takes traffic now."""

    address: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    protocol: Literal["http", "https", "grpc", "tcp"] = "http"
    ready: bool = True
    tls: bool = False  # serves mutual TLS with its mesh identity (clients then use mTLS)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value, "endpoint address")


class WorkloadRegistration(MeshModel):
    """Sent by each workload when it (re)connects and whenever its endpoints change."""

    id: str
    service: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)
    endpoints: list[AnnouncedEndpoint] = Field(default_factory=list, max_length=MAX_ENDPOINTS_PER_WORKLOAD)
    hostname: str = Field(default="", max_length=253)
    pid: int = Field(default=0, ge=0)
    meshlib_version: str = Field(default="", max_length=64)
    certificate_expires: str | None = Field(default=None, max_length=64)  # ISO time; None: no certificate
    certificate_issuer: str | None = Field(default=None, max_length=128)  # key id of the signing CA
    locality: str = Field(default="", max_length=200)  # region/zone/subzone (MESH_LOCALITY)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError(f"invalid workload id {value!r}")
        return value

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        return check_dns_label(value, "service name")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return check_dns_label(value, "namespace")

    @field_validator("locality")
    @classmethod
    def _locality(cls, value: str) -> str:
        return check_locality(value)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            check_label_key(key)
            check_label_value(label)
        return value

    def effective_labels(self) -> dict[str, str]:
        """Labels that selectors see: the workload's own, plus ``app`` = service if unset."""
        return {"app": self.service, **self.labels}

    def identity(self, trust_domain: str) -> str:
        return spiffe_id(trust_domain, self.namespace, self.service)
