"""security.istio.io: PeerAuthentication, AuthorizationPolicy, RequestAuthentication."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from .base import FieldPath, MeshModel, PolicyTargetReference, WorkloadSelector
from .duration import Duration

__all__ = [
    "AuthorizationPolicySpec",
    "Condition",
    "JWTHeader",
    "JWTRule",
    "MutualTLS",
    "Operation",
    "PeerAuthenticationSpec",
    "RequestAuthenticationSpec",
    "Rule",
    "Source",
]

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTLS(MeshModel):
    mode: MtlsMode = "UNSET"


class PeerAuthenticationSpec(MeshModel):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: dict[int, MutualTLS] = Field(default_factory=dict)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.port_level_mtls and (self.selector is None or not self.selector.match_labels):
            yield ("portLevelMtls",), "port-level mTLS needs a workload selector"
        for port in self.port_level_mtls:
            if not 1 <= port <= 65535:
                yield ("portLevelMtls", str(port)), f"port {port} is outside 1-65535"


class Source(MeshModel):
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if (self.service_accounts or self.not_service_accounts) and (
            self.principals or self.not_principals or self.namespaces or self.not_namespaces
        ):
            yield ("serviceAccounts",), ("serviceAccounts cannot be combined with principals or namespaces")


class Operation(MeshModel):
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


class RuleFrom(MeshModel):
    source: Source


class RuleTo(MeshModel):
    operation: Operation


class Condition(MeshModel):
    key: str = Field(min_length=1)
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if not self.values and not self.not_values:
            yield (), "set at least one of values and notValues"


class Rule(MeshModel):
    from_: tuple[RuleFrom, ...] = Field(default=(), alias="from")
    to: tuple[RuleTo, ...] = ()
    when: tuple[Condition, ...] = ()


class ExtensionProvider(MeshModel):
    name: str


class AuthorizationPolicySpec(MeshModel):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    rules: tuple[Rule, ...] = ()
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ExtensionProvider | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.action == "CUSTOM" and self.provider is None:
            yield ("provider",), "action CUSTOM needs a provider"
        if self.action != "CUSTOM" and self.provider is not None:
            yield ("provider",), "provider is only allowed with action CUSTOM"
        yield from _one_target(self.selector, self.target_ref, self.target_refs)


class JWTHeader(MeshModel):
    name: str = Field(min_length=1)
    prefix: str | None = None


class ClaimToHeader(MeshModel):
    header: str = Field(min_length=1)
    claim: str = Field(min_length=1)


class JWTRule(MeshModel):
    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = ()
    jwks_uri: str | None = None
    jwks: str | None = None
    from_headers: tuple[JWTHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str | None = None
    forward_original_token: bool | None = None
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    timeout: Duration | None = None
    space_delimited_claims: tuple[str, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.jwks is not None and self.jwks_uri is not None:
            yield ("jwks",), "set only one of jwks and jwksUri"
        if self.jwks_uri is not None and not self.jwks_uri.startswith(("https://", "http://")):
            yield ("jwksUri",), f"{self.jwks_uri!r} is not an http(s) URL"


class RequestAuthenticationSpec(MeshModel):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    jwt_rules: tuple[JWTRule, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        yield from _one_target(self.selector, self.target_ref, self.target_refs)
        issuers: dict[str, int] = {}
        for index, rule in enumerate(self.jwt_rules):
            if rule.issuer in issuers:
                yield ("jwtRules", index, "issuer"), f"issuer {rule.issuer!r} appears twice"
            issuers[rule.issuer] = index


def _one_target(
    selector: WorkloadSelector | None,
    target_ref: PolicyTargetReference | None,
    target_refs: tuple[PolicyTargetReference, ...],
) -> Iterator[tuple[FieldPath, str]]:
    if sum((selector is not None, target_ref is not None, bool(target_refs))) > 1:
        yield ("targetRefs",), "set at most one of selector, targetRef and targetRefs"
