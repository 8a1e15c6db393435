"""AuthorizationPolicy compiled into predicates, with Istio's (Envoy RBAC's) semantics.

Compiled once per snapshot and workload; per request a decision is a few closure calls and
set lookups, no allocation unless something matches. The semantics:

- a rule matches when every part it sets matches: one of its ``from`` sources, one of its
  ``to`` operations, and every ``when`` condition; a rule with no parts (``rules: [{}]``)
  matches every request; a policy with no rules matches none (so ``spec: {}`` as ALLOW
  allows nothing);
- within a source or an operation every field set must match; a field matches when any of
  its values does, a ``not*`` field when none does;
- an attribute the request does not have (no verified peer, no JWT, no such header) matches
  no value, so it always satisfies the ``not*`` form: a plaintext caller never satisfies
  ``principals`` or ``namespaces`` and always satisfies ``notPrincipals``/``notNamespaces``;
- string values are exact, ``prefix*``, ``*suffix`` or ``*`` (present and not empty); hosts
  are compared case-insensitively, with and without the port; paths may use the templates
  ``{*}`` (one segment) and ``{**}`` (the rest of the path); IP values are addresses or CIDR
  blocks.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..peer import PeerIdentity
from ..policy.resources import AuthorizationPolicy
from ..policy.security import Condition, Operation, Rule, Source, claim_path
from .call import Call

__all__ = [
    "AuthorizationCheck",
    "Authorizer",
    "AuthzView",
    "CheckCustom",
    "CompiledPolicy",
    "RequestAuth",
    "compile_authorizer",
    "compile_operation",
]

Pred = Callable[["AuthzView"], bool]
Match = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """The request's verified JWT (RequestAuthentication): ``iss/sub`` and its claims."""

    principal: str
    audiences: tuple[str, ...]
    presenter: str | None
    claims: Mapping[str, Any]


class AuthzView(Protocol):
    """What authorization reads of a request (the server stack's ``Inbound`` is one)."""

    @property
    def call(self) -> Call: ...
    @property
    def peer(self) -> PeerIdentity | None: ...
    @property
    def source_ip(self) -> str | None: ...
    @property
    def destination_ip(self) -> str | None: ...
    @property
    def sni(self) -> str | None: ...
    @property
    def request_auth(self) -> RequestAuth | None: ...


@dataclass(frozen=True, slots=True)
class AuthorizationCheck:
    """What a CUSTOM provider is asked about: one request a CUSTOM policy's rules matched."""

    provider: str
    policy: str  # namespace/name of the CUSTOM policy
    call: Call
    peer: PeerIdentity | None
    source_ip: str | None
    request_auth: RequestAuth | None


@dataclass(frozen=True, slots=True)
class CheckCustom:
    """Server-stack action: ask the CUSTOM provider; the driver sends back True (allow) or False."""

    check: AuthorizationCheck


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str  # namespace/name, as metrics and logs name the deciding policy
    action: str
    provider: str | None
    matches: Pred


@dataclass(frozen=True, slots=True)
class Authorizer:
    """The policies of one workload, by action, oldest first."""

    custom: tuple[CompiledPolicy, ...]
    deny: tuple[CompiledPolicy, ...]
    allow: tuple[CompiledPolicy, ...]
    audit: tuple[CompiledPolicy, ...]

    def denied_by(self, view: AuthzView) -> str | None:
        """DENY, then ALLOW (CUSTOM is the stack's to ask): the deciding policy's name, ``""``
        when ALLOW policies exist and none matched, None when the request is allowed."""
        for policy in self.deny:
            if policy.matches(view):
                return policy.name
        if self.allow:
            for policy in self.allow:
                if policy.matches(view):
                    return None
            return ""
        return None

    def audited_by(self, view: AuthzView) -> tuple[str, ...]:
        return tuple(p.name for p in self.audit if p.matches(view)) if self.audit else ()


def compile_authorizer(policies: Sequence[AuthorizationPolicy]) -> Authorizer | None:
    """None when no policy applies: authorization is off for the workload."""
    if not policies:
        return None
    compiled = [_compile_policy(p) for p in policies]
    by = {
        action: tuple(c for c in compiled if c.action == action)
        for action in ("CUSTOM", "DENY", "ALLOW", "AUDIT")
    }
    return Authorizer(custom=by["CUSTOM"], deny=by["DENY"], allow=by["ALLOW"], audit=by["AUDIT"])


def _compile_policy(policy: AuthorizationPolicy) -> CompiledPolicy:
    spec = policy.spec
    rules = tuple(_rule(r, policy.namespace) for r in spec.rules)
    return CompiledPolicy(
        name=f"{policy.namespace}/{policy.name}",
        action=spec.action,
        provider=spec.provider.name if spec.provider is not None else None,
        matches=_any(rules),
    )


# --- composition -------------------------------------------------------------------------


def _never(_: AuthzView) -> bool:
    return False


def _always(_: AuthzView) -> bool:
    return True


def _any(preds: Sequence[Pred]) -> Pred:
    if not preds:
        return _never
    if len(preds) == 1:
        return preds[0]
    items = tuple(preds)

    def any_of(view: AuthzView) -> bool:
        for pred in items:  # noqa: SIM110 - a loop: any() over a generator costs a frame per call
            if pred(view):
                return True
        return False

    return any_of


def _all(preds: Sequence[Pred]) -> Pred:
    if not preds:
        return _always
    if len(preds) == 1:
        return preds[0]
    items = tuple(preds)

    def all_of(view: AuthzView) -> bool:
        for pred in items:  # noqa: SIM110 - as in any_of
            if not pred(view):
                return False
        return True

    return all_of


def _rule(rule: Rule, namespace: str) -> Pred:
    parts: list[Pred] = []
    if rule.from_:
        parts.append(_any([_source(f.source, namespace) for f in rule.from_]))
    if rule.to:
        parts.append(_any([_operation(t.operation) for t in rule.to]))
    parts.extend(_condition(c) for c in rule.when)
    return _all(parts)


def _field(get: Callable[[AuthzView], str | None], match: Match, negate: bool) -> Pred:
    """A field over one attribute: any value matches (or, negated, none does); an absent
    attribute matches no value."""
    if negate:

        def none_of(view: AuthzView) -> bool:
            value = get(view)
            return value is None or not match(value)

        return none_of

    def one_of(view: AuthzView) -> bool:
        value = get(view)
        return value is not None and match(value)

    return one_of


def _pair(
    preds: list[Pred],
    get: Callable[[AuthzView], str | None],
    make: Callable[[tuple[str, ...]], Match],
    values: tuple[str, ...],
    not_values: tuple[str, ...],
) -> None:
    if values:
        preds.append(_field(get, make(values), False))
    if not_values:
        preds.append(_field(get, make(not_values), True))


# --- attributes ----------------------------------------------------------------------------


def _principal(view: AuthzView) -> str | None:
    peer = view.peer
    return peer.principal if peer is not None else None


def _namespace(view: AuthzView) -> str | None:
    peer = view.peer
    return peer.namespace if peer is not None else None


def _service_account(view: AuthzView) -> str | None:
    peer = view.peer
    return f"{peer.namespace}/{peer.service_account}" if peer is not None else None


def _trust_domain(view: AuthzView) -> str | None:
    peer = view.peer
    return peer.trust_domain if peer is not None else None


def _request_principal(view: AuthzView) -> str | None:
    auth = view.request_auth
    return auth.principal if auth is not None else None


def _presenter(view: AuthzView) -> str | None:
    auth = view.request_auth
    return auth.presenter if auth is not None else None


def _source_ip(view: AuthzView) -> str | None:
    return view.source_ip


def _destination_ip(view: AuthzView) -> str | None:
    return view.destination_ip


def _sni(view: AuthzView) -> str | None:
    return view.sni


def _method(view: AuthzView) -> str | None:
    return view.call.method


def _path(view: AuthzView) -> str | None:
    return view.call.path


def _port(view: AuthzView) -> str | None:
    port = view.call.port
    return str(port) if port is not None else None


def _host(view: AuthzView) -> str | None:
    call = view.call
    host = call.authority or call.header("host")
    return host.lower() if host else None


# --- values -------------------------------------------------------------------------------


def _strings(values: tuple[str, ...], lower: bool = False) -> Match:
    """Exact, ``prefix*``, ``*suffix`` and ``*`` (present, not empty), Istio's string forms."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    presence = False
    for raw in values:
        value = raw.lower() if lower else raw
        if value == "*":
            presence = True
        elif value.endswith("*"):
            prefixes.append(value[:-1])
        elif value.startswith("*"):
            suffixes.append(value[1:])
        else:
            exact.add(value)
    frozen, pre, suf = frozenset(exact), tuple(prefixes), tuple(suffixes)
    if not (presence or pre or suf):
        return frozen.__contains__  # exact values only: one set lookup, in C

    def match(value: str) -> bool:
        if value in frozen:
            return True
        if presence and value:
            return True
        return bool((pre and value.startswith(pre)) or (suf and value.endswith(suf)))

    return match


def _hosts(values: tuple[str, ...]) -> Match:
    """Case-insensitive, and a host given without a port matches it on any port."""
    match = _strings(values, lower=True)

    def host_match(value: str) -> bool:
        if match(value):
            return True
        name, colon, port = value.rpartition(":")
        return bool(colon) and port.isdigit() and match(name)

    return host_match


def _paths(values: tuple[str, ...]) -> Match:
    plain = tuple(v for v in values if "{" not in v)
    templates = [_template(v) for v in values if "{" in v]
    match = _strings(plain) if plain else None
    if not templates:
        assert match is not None
        return match
    patterns = tuple(templates)

    def path_match(value: str) -> bool:
        if match is not None and match(value):
            return True
        return any(p.fullmatch(value) for p in patterns)

    return path_match


def _template(path: str) -> re.Pattern[str]:
    """``{*}``: exactly one segment (not empty); ``{**}``: any number of segments (last: the
    rest of the path, possibly empty; elsewhere: at least one segment)."""
    parts = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment == "{*}":
            parts.append("[^/]+")
        elif segment == "{**}":
            parts.append(".*" if index == len(segments) - 1 else "[^/]+(?:/[^/]+)*")
        else:
            parts.append(re.escape(segment))
    return re.compile("/".join(parts))


def _ports(values: tuple[str, ...]) -> Match:
    wanted = frozenset(str(int(v)) for v in values)
    return wanted.__contains__


@functools.lru_cache(maxsize=4096)
def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.partition("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _blocks(values: tuple[str, ...]) -> Match:
    networks = tuple(ipaddress.ip_network(v, strict=False) for v in values)

    def within(value: str) -> bool:
        address = _address(value)
        if address is None:
            return False
        for network in networks:  # noqa: SIM110 - as in any_of
            if address.version == network.version and address in network:
                return True
        return False

    return within


# --- sources, operations, conditions ------------------------------------------------------------


def _source(source: Source, namespace: str) -> Pred:
    """``namespace``: the policy's, where a service account written without one lives."""
    preds: list[Pred] = []

    def accounts(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v if "/" in v else f"{namespace}/{v}" for v in values)

    _pair(preds, _principal, _strings, source.principals, source.not_principals)
    _pair(preds, _request_principal, _strings, source.request_principals, source.not_request_principals)
    _pair(preds, _namespace, _strings, source.namespaces, source.not_namespaces)
    _pair(
        preds,
        _service_account,
        _strings,
        accounts(source.service_accounts),
        accounts(source.not_service_accounts),
    )
    _pair(preds, _trust_domain, _strings, source.trust_domains, source.not_trust_domains)
    _pair(preds, _source_ip, _blocks, source.ip_blocks, source.not_ip_blocks)
    # No trusted proxies: the remote address is the connection's (X-Forwarded-For is not believed).
    _pair(preds, _source_ip, _blocks, source.remote_ip_blocks, source.not_remote_ip_blocks)
    return _all(preds)


def compile_operation(operation: Operation) -> Pred:
    """An AuthorizationPolicy operation as a predicate (RateLimit's ``match`` uses it too)."""
    return _operation(operation)


def _operation(operation: Operation) -> Pred:
    preds: list[Pred] = []
    _pair(preds, _host, _hosts, operation.hosts, operation.not_hosts)
    _pair(preds, _port, _ports, operation.ports, operation.not_ports)
    _pair(preds, _method, _strings, operation.methods, operation.not_methods)
    _pair(preds, _path, _paths, operation.paths, operation.not_paths)
    return _all(preds)


_CONDITION_ATTRIBUTES: dict[
    str, tuple[Callable[[AuthzView], str | None], Callable[[tuple[str, ...]], Match]]
] = {
    "source.ip": (_source_ip, _blocks),
    "remote.ip": (_source_ip, _blocks),
    "destination.ip": (_destination_ip, _blocks),
    "destination.port": (_port, _ports),
    "source.namespace": (_namespace, _strings),
    "source.principal": (_principal, _strings),
    "source.trustDomain": (_trust_domain, _strings),
    "request.auth.principal": (_request_principal, _strings),
    "request.auth.presenter": (_presenter, _strings),
    "connection.sni": (_sni, _strings),
}


def _condition(condition: Condition) -> Pred:
    key = condition.key
    preds: list[Pred] = []
    known = _CONDITION_ATTRIBUTES.get(key)
    if known is not None:
        get, make = known
        _pair(preds, get, make, condition.values, condition.not_values)
        return _all(preds)
    if key.startswith("request.headers["):
        name = key[len("request.headers[") : -1].lower()

        def header(view: AuthzView) -> str | None:
            return view.call.header(name)

        _pair(preds, header, _strings, condition.values, condition.not_values)
        return _all(preds)
    if key == "request.auth.audiences":
        return _many(lambda auth: auth.audiences, condition)
    path = claim_path(key)
    assert path is not None, key  # validation refused every other key

    def claim(auth: RequestAuth) -> tuple[str, ...]:
        value: Any = auth.claims
        for step in path:
            if not isinstance(value, Mapping) or step not in value:
                return ()
            value = value[step]
        if isinstance(value, list | tuple):
            return tuple(v if isinstance(v, str) else _text(v) for v in value)
        return (value if isinstance(value, str) else _text(value),)

    return _many(claim, condition)


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _many(values_of: Callable[[RequestAuth], tuple[str, ...]], condition: Condition) -> Pred:
    """A condition over a list-valued attribute (audiences, a claim): matches when any element
    matches a value, and no element matches a notValue."""
    match = _strings(condition.values) if condition.values else None
    refuse = _strings(condition.not_values) if condition.not_values else None

    def check(view: AuthzView) -> bool:
        auth = view.request_auth
        items = values_of(auth) if auth is not None else ()
        if match is not None and not any(match(item) for item in items):
            return False
        return not (refuse is not None and any(refuse(item) for item in items))

    return check
