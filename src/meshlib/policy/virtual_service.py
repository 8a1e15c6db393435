"""VirtualService (networking.istio.io): how requests to a host are routed."""

from __future__ import annotations

import base64
import binascii
import builtins
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar, Literal

from pydantic import Field

from .base import FieldPath, Host, MeshModel, Percent, PortSelector, StringMatch, check_export_to
from .duration import Duration

__all__ = [
    "CorsPolicy",
    "Delegate",
    "Destination",
    "HTTPDirectResponse",
    "HTTPFaultInjection",
    "HTTPMatchRequest",
    "HTTPMirrorPolicy",
    "HTTPRedirect",
    "HTTPRetry",
    "HTTPRewrite",
    "HTTPRoute",
    "HTTPRouteDestination",
    "HeaderOperations",
    "Headers",
    "L4MatchAttributes",
    "RouteDestination",
    "TCPRoute",
    "TLSMatchAttributes",
    "TLSRoute",
    "VirtualServiceSpec",
]


MAX_WEIGHT = 2**31 - 1  # Istio's int32


class Destination(MeshModel):
    host: Host
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(MeshModel):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()


class Headers(MeshModel):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPMatchRequest(MeshModel):
    """Conditions inside one match block are ANDed; blocks of a route are ORed."""

    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "stat_prefix": "it names Envoy's per-route statistics, and meshlib keeps none per route; remove it",
    }

    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = Field(default_factory=dict)
    port: int | None = Field(default=None, ge=0, le=65535)
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    query_params: dict[str, StringMatch] = Field(default_factory=dict)
    ignore_uri_case: bool = False
    without_headers: dict[str, StringMatch] = Field(default_factory=dict)
    source_namespace: str | None = None
    stat_prefix: str | None = None

    def is_catch_all(self) -> bool:
        """True when this block matches every request (e.g. ``uri: {prefix: /}`` alone)."""
        uri_all = self.uri is None or self.uri.prefix in ("", "/") or self.uri.regex in (".*", "/.*")
        return uri_all and not any(
            (
                self.scheme,
                self.method,
                self.authority,
                self.headers,
                self.port,
                self.source_labels,
                self.gateways,
                self.query_params,
                self.without_headers,
                self.source_namespace,
            )
        )


class HTTPRouteDestination(MeshModel):
    destination: Destination
    weight: int = Field(default=0, ge=0, le=MAX_WEIGHT)
    headers: Headers | None = None


class RouteDestination(MeshModel):
    destination: Destination
    weight: int = Field(default=0, ge=0, le=MAX_WEIGHT)


class HTTPRedirect(MeshModel):
    uri: str | None = None
    # Newer istio/api: the matched uri prefix (or the whole path) replaced by this value.
    prefix_rewrite: str | None = None
    authority: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str | None = None
    redirect_code: int = Field(default=301, ge=300, le=399)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.port is not None and self.derive_port is not None:
            yield ("port",), "set only one of port and derivePort"
        if self.uri is not None and self.prefix_rewrite is not None:
            yield ("prefixRewrite",), "set only one of uri and prefixRewrite"
        wanted = (self.uri, self.prefix_rewrite, self.authority, self.scheme, self.port, self.derive_port)
        if not any(v is not None and v != "" for v in wanted):
            yield (), "set at least one of uri, prefixRewrite, authority, scheme, port and derivePort"
        if self.scheme is not None and self.scheme not in ("http", "https"):
            yield ("scheme",), f"{self.scheme!r} is not http or https"


class HTTPBody(MeshModel):
    string: str | None = None
    bytes: str | None = None  # base64, as protobuf JSON writes bytes

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.string is not None and self.bytes is not None:
            yield (), "set only one of string and bytes"
        if self.bytes is not None:
            try:
                decode_base64(self.bytes)
            except ValueError:
                yield ("bytes",), f"{self.bytes[:40]!r} is not base64"

    def content(self) -> builtins.bytes:
        if self.bytes is not None:
            return decode_base64(self.bytes)
        return (self.string or "").encode()


def decode_base64(text: str) -> bytes:
    """Base64 as protobuf JSON accepts it: standard or URL-safe alphabet, padding optional."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None


class HTTPDirectResponse(MeshModel):
    status: int = Field(ge=200, le=599)
    body: HTTPBody | None = None


class RegexRewrite(MeshModel):
    match: str = Field(min_length=1)
    rewrite: str

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        try:
            pattern = re.compile(self.match)
        except re.error as exc:
            yield ("match",), f"regex {self.match!r} does not compile: {exc}"
            return
        try:
            template = re2_template(self.rewrite)
        except ValueError as exc:
            yield ("rewrite",), str(exc)
            return
        for ref in re.findall(r"\\g<(\d+)>", template):
            if int(ref) > pattern.groups:
                yield (
                    ("rewrite",),
                    (f"\\{ref} refers to group {ref}, but {self.match!r} has {pattern.groups} group(s)"),
                )


def re2_template(rewrite: str) -> str:
    """An RE2 rewrite (what Envoy takes) as a Python ``re.sub`` template.

    RE2 knows ``\\0`` to ``\\9`` (one digit each; ``\\0`` is the whole match) and ``\\\\``;
    any other escape is an error. Python would read ``\\12`` as group 12 and ``\\0`` as NUL."""
    out: list[str] = []
    i = 0
    while i < len(rewrite):
        char = rewrite[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        if i + 1 >= len(rewrite):
            raise ValueError(f"rewrite {rewrite!r} ends in a lone backslash")
        escaped = rewrite[i + 1]
        if escaped.isdigit():
            out.append(f"\\g<{escaped}>")
        elif escaped == "\\":
            out.append("\\\\")
        else:
            raise ValueError(f"unknown escape \\{escaped} in rewrite {rewrite!r}: use \\0-\\9 or \\\\")
        i += 2
    return "".join(out)


class HTTPRewrite(MeshModel):
    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.uri is not None and self.uri_regex_rewrite is not None:
            yield ("uriRegexRewrite",), "set only one of uri and uriRegexRewrite"
        if self.uri is None and self.uri_regex_rewrite is None and self.authority is None:
            yield (), "set at least one of uri, uriRegexRewrite and authority"


# The retry conditions Envoy understands (x-envoy-retry-on and x-envoy-retry-grpc-on),
# which is what Istio passes through; bare status codes are accepted too.
RETRY_ON_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


class HTTPRetry(MeshModel):
    attempts: int = Field(default=0, ge=0)
    per_try_timeout: Duration | None = None
    retry_on: str | None = None
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: Duration | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.per_try_timeout is not None and self.per_try_timeout < 0.001:
            yield ("perTryTimeout",), "must be at least 1ms"
        if self.retry_on:
            for condition in self.retry_on.split(","):
                item = condition.strip()
                if item not in RETRY_ON_CONDITIONS and not (item.isdigit() and 100 <= int(item) <= 599):
                    known = ", ".join(sorted(RETRY_ON_CONDITIONS))
                    yield ("retryOn",), f"unknown retry condition {item!r}; use status codes or {known}"


class FaultDelay(MeshModel):
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {"exponential_delay": "Istio rejects it too; use fixedDelay"}

    fixed_delay: Duration | None = None
    exponential_delay: Duration | None = None
    percentage: Percent | None = None
    percent: int | None = Field(default=None, ge=0, le=100)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.exponential_delay is None and self.fixed_delay is None:
            yield ("fixedDelay",), "required field is missing"


class FaultAbort(MeshModel):
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "http2_error": "Istio rejects it too; use httpStatus or grpcStatus",
    }

    http_status: int | None = Field(default=None, ge=200, le=599)
    grpc_status: str | None = None
    http2_error: str | None = None
    percentage: Percent | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.http2_error is None and (self.http_status is None) == (self.grpc_status is None):
            yield (), "set exactly one of httpStatus and grpcStatus"


class HTTPFaultInjection(MeshModel):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.delay is None and self.abort is None:
            yield (), "set delay, abort or both"


class HTTPMirrorPolicy(MeshModel):
    destination: Destination
    percentage: Percent | None = None


class CorsPolicy(MeshModel):
    allow_origins: tuple[StringMatch, ...] = ()
    allow_origin: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: Duration | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None


class Delegate(MeshModel):
    name: str
    namespace: str | None = None


class HTTPRoute(MeshModel):
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "cors_policy": (
            "CORS is answered where a browser's request enters the mesh (an ingress gateway), and "
            "meshlib has none; use the web framework's CORS middleware (Starlette's CORSMiddleware, "
            "flask-cors)"
        ),
    }

    name: str | None = None
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Duration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    mirror_percentage: Percent | None = None
    mirror_percent: int | None = Field(default=None, ge=0, le=100)
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None

    def is_catch_all(self) -> bool:
        return not self.match or any(m.is_catch_all() for m in self.match)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        actions = [n for n in ("route", "redirect", "direct_response", "delegate") if getattr(self, n)]
        if not actions:
            yield (), "a route needs one of route, redirect, directResponse or delegate"
        elif "route" in actions and len(actions) > 1:
            yield (), "route cannot be combined with redirect, directResponse or delegate"
        if self.redirect is not None and self.rewrite is not None:
            yield ("rewrite",), "rewrite cannot be combined with redirect"
        if self.mirror is not None and self.mirrors:
            yield ("mirrors",), "set only one of mirror and mirrors"
        yield from _check_weights(self.route)


def _check_weights(
    routes: Sequence[HTTPRouteDestination | RouteDestination],
) -> Iterator[tuple[FieldPath, str]]:
    """Current Istio: weights are relative (a destination gets weight / sum of weights; one
    destination alone gets everything). ``meshctl analyze`` points out sums other than 100;
    a sum of 0 over several destinations could route nothing, so it is refused."""
    if len(routes) >= 2 and sum(r.weight for r in routes) == 0:
        yield ("route",), "every destination has weight 0, so no request could be routed; weight at least one"


class TLSMatchAttributes(MeshModel):
    sni_hosts: tuple[Host, ...] = Field(min_length=1)
    destination_subnets: tuple[str, ...] = ()
    port: int | None = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    source_namespace: str | None = None


_NO_L4 = (
    "meshlib routes HTTP and gRPC requests inside the process and has no TCP/TLS proxy; route "
    "this traffic with http routes, or bind the VirtualService to a gateway only (gateways without "
    "'mesh'), where meshlib does not apply it"
)


class TLSRoute(MeshModel):
    match: tuple[TLSMatchAttributes, ...] = Field(min_length=1)
    route: tuple[RouteDestination, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        yield from _check_weights(self.route)


class L4MatchAttributes(MeshModel):
    destination_subnets: tuple[str, ...] = ()
    port: int | None = None
    source_subnet: str | None = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: tuple[str, ...] = ()
    source_namespace: str | None = None


class TCPRoute(MeshModel):
    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        yield from _check_weights(self.route)


class VirtualServiceSpec(MeshModel):
    """No hosts: a delegate, whose routes a root VirtualService takes in (see core/delegation.py)."""

    hosts: tuple[Host, ...] = ()
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()
    tcp: tuple[TCPRoute, ...] = ()
    export_to: tuple[str, ...] = ()

    def applies_to_mesh(self) -> bool:
        """Istio: no gateways means the sidecars ('mesh'); otherwise 'mesh' must be listed."""
        return not self.gateways or "mesh" in self.gateways

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if not self.hosts:
            yield from self._check_delegate()
        elif self.applies_to_mesh():
            for name in ("tls", "tcp"):
                if getattr(self, name):
                    yield (name,), f"{name} routes are not supported for the mesh: {_NO_L4}"
        yield from check_export_to(self.export_to)

    def _check_delegate(self) -> Iterator[tuple[FieldPath, str]]:
        """Istio's rules for a VirtualService without hosts (a delegate)."""
        if not self.http:
            yield ("hosts",), "required unless this is a delegate VirtualService with http routes"
        if self.gateways:
            yield ("gateways",), "a delegate VirtualService (no hosts) takes its gateways from its root"
        for name in ("tls", "tcp"):
            if getattr(self, name):
                yield (name,), f"a delegate VirtualService (no hosts) has http routes only, not {name}"
        for index, route in enumerate(self.http):
            if route.delegate is not None:
                yield ("http", index, "delegate"), "a delegate cannot delegate again (one level only)"
