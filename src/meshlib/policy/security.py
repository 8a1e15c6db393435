"""security.istio.io: PeerAuthentication, AuthorizationPolicy, RequestAuthentication."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from typing import ClassVar, Literal

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
    "claim_path",
]

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTLS(MeshModel):
    mode: MtlsMode = "UNSET"


class PeerAuthenticationSpec(MeshModel):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: dict[int, MutualTLS] = Field(default_factory=dict)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if "port_level_mtls" in self.model_fields_set and not self.port_level_mtls:
            yield ("portLevelMtls",), "needs at least one port (or leave portLevelMtls out)"
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
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if not any(getattr(self, name) for name in type(self).model_fields):
            yield (
                (),
                "an empty source: set at least one field (Istio refuses it too), or drop the `from` entry",
            )
        if (self.service_accounts or self.not_service_accounts) and (
            self.principals or self.not_principals or self.namespaces or self.not_namespaces
        ):
            yield ("serviceAccounts",), ("serviceAccounts cannot be combined with principals or namespaces")
        for name in ("principals", "request_principals", "namespaces", "trust_domains"):
            for key in (name, "not_" + name):
                yield from _globs(key, getattr(self, key))
        for key in ("service_accounts", "not_service_accounts"):
            for index, value in enumerate(getattr(self, key)):
                if value.count("/") > 1 or "*" in value or value.startswith("/") or value.endswith("/"):
                    yield (
                        (_camel(key), index),
                        f"{value!r} is not <serviceaccount> or <namespace>/<serviceaccount> (exact values)",
                    )
        for key in ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks"):
            yield from _ip_values(key, getattr(self, key))


class Operation(MeshModel):
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if not any(getattr(self, name) for name in type(self).model_fields):
            yield (
                (),
                "an empty operation: set at least one field (Istio refuses it too), or drop the `to` entry",
            )
        for key in ("hosts", "not_hosts", "methods", "not_methods"):
            yield from _globs(key, getattr(self, key))
        for key in ("ports", "not_ports"):
            yield from _port_values(key, getattr(self, key))
        for key in ("paths", "not_paths"):
            for index, value in enumerate(getattr(self, key)):
                templated = "{" in value or "}" in value
                problem = _template_problem(value) if templated else _glob_problem(value)
                if problem is not None:
                    yield (_camel(key), index), problem


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
        key = self.key
        if key.startswith("experimental."):
            yield (
                ("key",),
                (
                    f"{key!r}: experimental Envoy filter metadata does not exist in meshlib; "
                    "match on request.headers[...] or request.auth.claims[...] instead"
                ),
            )
            return
        if key not in CONDITION_KEYS and not _HEADER_KEY.fullmatch(key) and claim_path(key) is None:
            yield (
                ("key",),
                (
                    f"unknown condition key {key!r}; supported: {', '.join(sorted(CONDITION_KEYS))}, "
                    "request.headers[<name>], request.auth.claims[<name>]([<nested>]...)"
                ),
            )
            return
        for field in ("values", "not_values"):
            values = getattr(self, field)
            if key in ("source.ip", "remote.ip", "destination.ip"):
                yield from _ip_values(field, values)
            elif key == "destination.port":
                yield from _port_values(field, values)
            else:
                yield from _globs(field, values)


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
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "presence": (
            "to require a token, add an AuthorizationPolicy with requestPrincipals: ['*'] (Istio's "
            "way before presence); remove presence"
        ),
    }

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
    presence: Literal["OPTIONAL", "REQUIRED"] | None = None  # newer istio/api

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.jwks is not None and self.jwks_uri is not None:
            yield ("jwks",), "set only one of jwks and jwksUri"
        if self.jwks_uri is not None and not self.jwks_uri.startswith(("https://", "http://")):
            yield ("jwksUri",), f"{self.jwks_uri!r} is not an http(s) URL"
        if self.jwks is None and self.jwks_uri is None:
            yield (
                ("jwksUri",),
                (
                    "set jwks or jwksUri: meshlib does not discover keys from the issuer "
                    "(OpenID discovery); give the issuer's jwks_uri"
                ),
            )
        if self.jwks is not None:
            try:
                keys = json.loads(self.jwks).get("keys")
            except (ValueError, AttributeError):
                keys = None
            if not isinstance(keys, list):
                yield ("jwks",), "not a JWKS document (JSON with a 'keys' list)"


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


CONDITION_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "source.trustDomain",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
"""The ``when`` keys Istio documents (besides request.headers[...] and request.auth.claims[...])."""

_HEADER_KEY = re.compile(r"request\.headers\[[!#$%&'*+.^_`|~0-9A-Za-z-]+\]")
_CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")


def claim_path(key: str) -> tuple[str, ...] | None:
    """``request.auth.claims[a][b]`` → ("a", "b"); None for any other key."""
    found = _CLAIM_KEY.fullmatch(key)
    if found is None:
        return None
    return tuple(found.group(1)[1:-1].split("]["))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _glob_problem(value: str) -> str | None:
    if not value:
        return "an empty value matches nothing; remove it"
    if "*" in value[1:-1] or (value.count("*") > 1 and value != "*"):
        return f"{value!r}: '*' is allowed only alone, as a prefix (abc*) or as a suffix (*abc)"
    return None


def _globs(field: str, values: tuple[str, ...]) -> Iterator[tuple[FieldPath, str]]:
    for index, value in enumerate(values):
        problem = _glob_problem(value)
        if problem is not None:
            yield (_camel(field), index), problem


def _template_problem(value: str) -> str | None:
    if "*" in value.replace("{*}", "").replace("{**}", ""):
        return f"{value!r}: a path template ({{*}}, {{**}}) cannot also use '*' globs"
    segments = value.split("/")
    if not value.startswith("/"):
        return f"{value!r}: a path template must start with '/'"
    if value.count("{**}") > 1:
        return f"{value!r}: only one {{**}} is allowed in a path template"
    for segment in segments:
        if ("{" in segment or "}" in segment) and segment not in ("{*}", "{**}"):
            return f"{value!r}: {{*}} and {{**}} must each be a whole path segment"
    return None


def _ip_values(field: str, values: tuple[str, ...]) -> Iterator[tuple[FieldPath, str]]:
    for index, value in enumerate(values):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            yield (_camel(field), index), f"{value!r} is not an IP address or CIDR block"


def _port_values(field: str, values: tuple[str, ...]) -> Iterator[tuple[FieldPath, str]]:
    for index, value in enumerate(values):
        if not value.isdigit() or not 1 <= int(value) <= 65535:
            yield (_camel(field), index), f"{value!r} is not a port number (1-65535)"


def _one_target(
    selector: WorkloadSelector | None,
    target_ref: PolicyTargetReference | None,
    target_refs: tuple[PolicyTargetReference, ...],
) -> Iterator[tuple[FieldPath, str]]:
    if sum((selector is not None, target_ref is not None, bool(target_refs))) > 1:
        yield ("targetRefs",), "set at most one of selector, targetRef and targetRefs"
    refs: list[tuple[FieldPath, PolicyTargetReference]] = (
        [(("targetRef",), target_ref)] if target_ref is not None else []
    )
    refs += [(("targetRefs", i), ref) for i, ref in enumerate(target_refs)]
    for path, ref in refs:
        if ref.kind != "Service" or ref.group not in ("", "core"):
            yield (
                (*path, "kind"),
                (
                    f"targetRef {ref.group or 'core'}/{ref.kind} is not supported: meshlib has no "
                    'gateways or waypoints; target a Service (group "", kind Service) or use a selector'
                ),
            )
