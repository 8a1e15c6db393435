"""Istio's HTTPMatchRequest compiled into predicates over a Call.

Rules (Istio/Envoy): conditions inside one match block are ANDed, blocks are ORed;
a route with no match blocks matches everything. ``uri`` matches the path without
the query string; ``ignoreUriCase`` applies to exact and prefix uri matches. A
header matcher written as ``{}`` only asks that the header is present; under
``withoutHeaders`` it asks that it is absent. A query parameter with ``exact: ""``
asks that the key is present with an empty value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from ..policy.base import StringMatch
from ..policy.virtual_service import HTTPMatchRequest
from .call import Call

__all__ = ["Predicate", "compile_match", "compile_matches", "string_predicate"]

Predicate = Callable[[Call], bool]
StringPredicate = Callable[[str], bool]


def _always(_: object) -> bool:
    return True


def string_predicate(match: StringMatch, ignore_case: bool = False) -> StringPredicate:
    """exact / prefix / regex (full match, like Envoy's RE2 safe_regex) on one string."""
    if match.exact is not None:
        wanted = match.exact.lower() if ignore_case else match.exact
        if ignore_case:
            return lambda value: value.lower() == wanted
        return wanted.__eq__
    if match.prefix is not None:
        prefix = match.prefix.lower() if ignore_case else match.prefix
        if ignore_case:
            return lambda value: value.lower().startswith(prefix)
        return lambda value: value.startswith(prefix)
    if match.regex is not None:
        pattern = re.compile(match.regex)
        return lambda value: pattern.fullmatch(value) is not None
    return _always  # {}: presence only


def _header(name: str, match: StringMatch) -> Predicate:
    test = string_predicate(match)
    key = name.lower()

    def check(call: Call) -> bool:
        value = call.header(key)
        return value is not None and test(value)

    return check


def _without_header(name: str, match: StringMatch) -> Predicate:
    present = _header(name, match)
    return lambda call: not present(call)


def _query(name: str, match: StringMatch) -> Predicate:
    test = string_predicate(match)

    def check(call: Call) -> bool:
        value = call.query_params.get(name)
        return value is not None and test(value)

    return check


def compile_match(block: HTTPMatchRequest) -> Predicate:
    """One match block -> a predicate; conditions are ANDed."""
    checks: list[Predicate] = []
    if block.uri is not None:
        uri = string_predicate(block.uri, block.ignore_uri_case and block.uri.regex is None)
        checks.append(lambda call: uri(call.path))
    if block.scheme is not None:
        scheme = string_predicate(block.scheme)
        checks.append(lambda call: scheme(call.scheme))
    if block.method is not None:
        method = string_predicate(block.method)
        checks.append(lambda call: method(call.method))
    if block.authority is not None:
        authority = string_predicate(block.authority)
        checks.append(lambda call: authority(call.authority))
    if block.port is not None:
        port = block.port
        checks.append(lambda call: call.port == port)
    for name, match in block.headers.items():
        if name.lower() not in ("uri", "scheme", "method", "authority"):  # Istio ignores these keys
            checks.append(_header(name, match))
    for name, match in block.without_headers.items():
        checks.append(_without_header(name, match))
    for name, match in block.query_params.items():
        checks.append(_query(name, match))
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)
    return lambda call: all(check(call) for check in frozen)


def applies_to_source(block: HTTPMatchRequest, namespace: str, labels: Mapping[str, str]) -> bool:
    """sourceLabels / sourceNamespace / gateways select callers, known when compiling."""
    if block.gateways and "mesh" not in block.gateways:
        return False
    if block.source_namespace is not None and block.source_namespace != namespace:
        return False
    return all(labels.get(k) == v for k, v in block.source_labels.items())


def compile_matches(
    blocks: Sequence[HTTPMatchRequest], namespace: str, labels: Mapping[str, str]
) -> Predicate | None:
    """A route's match blocks ORed, keeping only blocks that apply to this caller.

    None means no block applies to this caller: the route is dropped."""
    if not blocks:
        return _always
    live = [compile_match(b) for b in blocks if applies_to_source(b, namespace, labels)]
    if not live:
        return None
    if len(live) == 1:
        return live[0]
    frozen = tuple(live)
    return lambda call: any(check(call) for check in frozen)
