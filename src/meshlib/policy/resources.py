"""The resource envelope (apiVersion, kind, metadata, spec) and the kinds meshlib knows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from pydantic import Field, field_validator

from .base import FieldPath, MeshModel
from .destination_rule import DestinationRuleSpec
from .discovery import discovery_problems
from .rate_limit import RateLimitSpec
from .security import AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec
from .service_entry import ServiceEntrySpec
from .telemetry import TelemetrySpec
from .virtual_service import VirtualServiceSpec

__all__ = [
    "KINDS",
    "AuthorizationPolicy",
    "DestinationRule",
    "KindInfo",
    "ObjectMeta",
    "PeerAuthentication",
    "RateLimit",
    "RequestAuthentication",
    "Resource",
    "ResourceKey",
    "ServiceEntry",
    "Telemetry",
    "VirtualService",
    "find_kind",
]

API_VERSIONS = ("v1", "v1beta1", "v1alpha3")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ResourceKey(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class ObjectMeta(MeshModel):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Written by the config service (as the Kubernetes API server does); accepted on
    # input so that `meshctl get -o yaml` output can be applied again, then replaced.
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    uid: str | None = None

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
            raise ValueError(
                f"invalid name {value!r}: use lower-case letters, digits, '-' and '.', "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not _DNS_LABEL.match(value)):
            raise ValueError(
                f"invalid namespace {value!r}: use lower-case letters, digits and '-', at most 63"
            )
        return value


class Resource(MeshModel):
    """One policy object. Subclasses fix ``kind``, the API group and the spec type."""

    GROUP: ClassVar[str] = ""
    KIND: ClassVar[str] = ""

    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: Any

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        group, _, version = value.partition("/")
        if group != cls.GROUP or version not in API_VERSIONS:
            allowed = ", ".join(f"{cls.GROUP}/{v}" for v in API_VERSIONS)
            raise ValueError(f"unsupported apiVersion {value!r} for {cls.KIND}; use {allowed}")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != cls.KIND:
            raise ValueError(f"kind {value!r} does not match {cls.KIND}")
        return value

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        """A targetRef names a Service of the policy's own namespace (Istio refuses others)."""
        spec = self.spec
        fields = getattr(type(spec), "model_fields", {})  # (a base Resource: spec is any data)
        if "target_ref" not in fields and "target_refs" not in fields:
            return  # (a missing attribute of a model costs pydantic's __getattr__ and an exception)
        refs: list[tuple[FieldPath, Any]] = [(("targetRef",), getattr(spec, "target_ref", None))]
        refs += [(("targetRefs", i), ref) for i, ref in enumerate(getattr(spec, "target_refs", ()))]
        for path, ref in refs:
            if ref is not None and ref.namespace not in ("", self.namespace):
                yield (
                    ("spec", *path, "namespace"),
                    f"{ref.namespace!r} is another namespace: a targetRef can only name a Service of "
                    f"the policy's own namespace ({self.namespace!r}); move the policy there",
                )

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.metadata.name)

    def manifest(self) -> dict[str, Any]:
        """The resource as YAML/JSON data, with only the fields that were written."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def content(self) -> dict[str, Any]:
        """What decides "unchanged": spec, labels and annotations, not server bookkeeping."""
        data = self.manifest()
        meta = data.get("metadata", {})
        return {
            "apiGroup": self.GROUP,
            "spec": data.get("spec", {}),
            "labels": meta.get("labels", {}),
            "annotations": meta.get("annotations", {}),
        }


class VirtualService(Resource):
    GROUP = "networking.istio.io"
    KIND = "VirtualService"
    spec: VirtualServiceSpec


class DestinationRule(Resource):
    GROUP = "networking.istio.io"
    KIND = "DestinationRule"
    spec: DestinationRuleSpec


class ServiceEntry(Resource):
    GROUP = "networking.istio.io"
    KIND = "ServiceEntry"
    spec: ServiceEntrySpec

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        yield from super()._check()
        yield from discovery_problems(self.metadata.annotations, self.spec)  # policy/discovery.py


class PeerAuthentication(Resource):
    GROUP = "security.istio.io"
    KIND = "PeerAuthentication"
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)


class AuthorizationPolicy(Resource):
    GROUP = "security.istio.io"
    KIND = "AuthorizationPolicy"
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)


class RequestAuthentication(Resource):
    GROUP = "security.istio.io"
    KIND = "RequestAuthentication"
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)


class RateLimit(Resource):
    """meshlib's own kind: local rate limits on a workload's servers (policy/rate_limit.py)."""

    GROUP = "policy.meshlib.io"
    KIND = "RateLimit"
    spec: RateLimitSpec


class Telemetry(Resource):
    """Access logging and trace sampling by policy (policy/telemetry.py)."""

    GROUP = "telemetry.istio.io"
    KIND = "Telemetry"
    spec: TelemetrySpec = Field(default_factory=TelemetrySpec)


@dataclass(frozen=True, slots=True)
class KindInfo:
    model: type[Resource]
    plural: str
    short: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.model.KIND

    @property
    def group(self) -> str:
        return self.model.GROUP

    @property
    def resource_type(self) -> str:
        """kubectl's ``virtualservice.networking.istio.io`` form."""
        return f"{self.model.KIND.lower()}.{self.model.GROUP}"


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(VirtualService, "virtualservices", ("vs",)),
        KindInfo(DestinationRule, "destinationrules", ("dr",)),
        KindInfo(ServiceEntry, "serviceentries", ("se",)),
        KindInfo(PeerAuthentication, "peerauthentications", ("pa",)),
        KindInfo(AuthorizationPolicy, "authorizationpolicies", ("ap",)),
        KindInfo(RequestAuthentication, "requestauthentications", ("ra",)),
        KindInfo(RateLimit, "ratelimits", ("rl",)),
        KindInfo(Telemetry, "telemetries", ("telemetry",)),
    )
}


def find_kind(name: str) -> KindInfo | None:
    """Look a kind up as users type it: ``VirtualService``, ``virtualservices``, ``vs``."""
    wanted = name.lower().split(".", 1)[0]
    for info in KINDS.values():
        if wanted in (info.kind.lower(), info.plural, *info.short):
            return info
    return None
