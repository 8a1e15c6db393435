"""Istio's standard metric labels for one workload, built once per peer and reused.

The source side of an outbound request and the destination side of an inbound one are this
workload (its service, namespace, labels and SPIFFE identity). The other side comes from the
chosen endpoint (outbound: its labels, its identity) or from the verified peer certificate
(inbound: namespace and service account; a plaintext caller is ``unknown``). Label sets are
cached by the few values they depend on, so recording a request looks one up by a short tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..core.metrics import IstioLabels
from ..peer import PeerIdentity

if TYPE_CHECKING:
    from ..core.exchange import Exchange

__all__ = ["LabelSets", "service_parts"]

UNKNOWN = "unknown"
_MAX_CACHED = 4096  # label sets per side; past it the cache starts over (cardinality is bounded anyway)


def service_parts(fqdn: str) -> tuple[str, str]:
    """(service name, namespace) of a mesh host ``name.ns.svc.<domain>``; an external host
    is its own name, namespace unknown."""
    parts = fqdn.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return parts[0], parts[1]
    return fqdn, UNKNOWN


class LabelSets:
    def __init__(
        self,
        service: str,
        namespace: str,
        labels: Mapping[str, str],
        identity: Callable[[], str | None],
    ) -> None:
        self.service = service
        self.namespace = namespace
        self.app = labels.get("app", service)
        self.version = labels.get("version", UNKNOWN)
        self.canonical_service = labels.get("service.istio.io/canonical-name", self.app)
        self.canonical_revision = labels.get(
            "service.istio.io/canonical-revision", labels.get("version", "latest")
        )
        self._identity = identity
        self._outbound: dict[tuple[object, ...], IstioLabels] = {}
        self._inbound: dict[tuple[object, ...], IstioLabels] = {}

    def outbound(self, ex: Exchange) -> IstioLabels:
        endpoint = ex.endpoint
        if endpoint is not None:
            key: tuple[object, ...] = (
                ex.fqdn,
                ex.call.protocol,
                endpoint.identity,
                endpoint.labels.get("version"),
                endpoint.labels.get("app"),
                ex.mtls,
            )
        else:
            key = (ex.fqdn, ex.call.protocol)
        found = self._outbound.get(key)
        if found is None:
            found = self._build_outbound(ex)
            if len(self._outbound) >= _MAX_CACHED:
                self._outbound.clear()
            self._outbound[key] = found
        return found

    def _build_outbound(self, ex: Exchange) -> IstioLabels:
        endpoint = ex.endpoint
        name, namespace = service_parts(ex.fqdn)
        if endpoint is not None:
            peer = PeerIdentity.parse(endpoint.identity) if endpoint.identity else None
            app = endpoint.labels.get("app", name if peer is not None else UNKNOWN)
            version = endpoint.labels.get("version", UNKNOWN)
            workload = app if peer is not None or "app" in endpoint.labels else UNKNOWN
            principal = endpoint.identity or UNKNOWN
            workload_namespace = peer.namespace if peer is not None else namespace
        else:
            app = version = workload = principal = UNKNOWN
            workload_namespace = namespace
        return IstioLabels(
            reporter="source",
            source_workload=self.service,
            source_workload_namespace=self.namespace,
            source_principal=self._identity() or UNKNOWN,
            source_app=self.app,
            source_version=self.version,
            source_canonical_service=self.canonical_service,
            source_canonical_revision=self.canonical_revision,
            destination_workload=workload,
            destination_workload_namespace=workload_namespace,
            destination_principal=principal,
            destination_app=app,
            destination_version=version,
            destination_service=ex.fqdn,
            destination_service_name=name,
            destination_service_namespace=namespace,
            destination_canonical_service=app if app != UNKNOWN else name,
            destination_canonical_revision=version if version != UNKNOWN else "latest",
            request_protocol=ex.call.protocol,
            connection_security_policy="mutual_tls" if ex.mtls else UNKNOWN,
        )

    def inbound(self, fqdn: str, peer: PeerIdentity | None, protocol: str) -> IstioLabels:
        key = (peer.spiffe_id if peer is not None else None, protocol)
        found = self._inbound.get(key)
        if found is None:
            if peer is not None:
                source = (peer.service_account, peer.namespace, peer.spiffe_id)
            else:
                source = (UNKNOWN, UNKNOWN, UNKNOWN)
            workload, namespace, principal = source
            found = IstioLabels(
                reporter="destination",
                source_workload=workload,
                source_workload_namespace=namespace,
                source_principal=principal,
                source_app=workload,
                source_version=UNKNOWN,
                source_canonical_service=workload,
                source_canonical_revision="latest",
                destination_workload=self.service,
                destination_workload_namespace=self.namespace,
                destination_principal=self._identity() or UNKNOWN,
                destination_app=self.app,
                destination_version=self.version,
                destination_service=fqdn,
                destination_service_name=self.service,
                destination_service_namespace=self.namespace,
                destination_canonical_service=self.canonical_service,
                destination_canonical_revision=self.canonical_revision,
                request_protocol=protocol,
                connection_security_policy="mutual_tls" if peer is not None else "none",
            )
            if len(self._inbound) >= _MAX_CACHED:
                self._inbound.clear()
            self._inbound[key] = found
        return found
