"""VirtualService delegation, resolved as Istio resolves it.

A root VirtualService (it has hosts) may hand a route over to a delegate: a VirtualService
without hosts, named by ``delegate: {name, namespace}``. The root route is replaced by the
delegate's routes, in their order, each merged with it:

- match: every match block of the delegate route must fit inside some block of the root
  route (a prefix within the root's prefix, the same exact value, no regex on both sides,
  no other port, source namespace or labels); it is then combined with each root block it
  fits, the delegate's conditions taking precedence. A delegate route that fits none is
  dropped, as Istio drops it.
- everything else the delegate route leaves unset (rewrite, timeout, retries, fault,
  mirrors, headers) comes from the root route.
- destinations in the delegate are read in the delegate's namespace.

A root route whose delegate does not exist is dropped and the next route can match (Istio).
Only one level: a delegate's own routes cannot delegate again (refused at validation).
"""

from __future__ import annotations

from ..policy.base import StringMatch
from ..policy.virtual_service import HTTPMatchRequest, HTTPRoute

__all__ = ["merge_delegate_route"]

# What a delegate route inherits from the root route when it does not set it itself.
_INHERITED = (
    "rewrite",
    "direct_response",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirror_percent",
    "mirror_percentage",
    "mirrors",
    "headers",
)


def merge_delegate_route(root: HTTPRoute, child: HTTPRoute) -> HTTPRoute | None:
    """The route a delegate route becomes under ``root``; None when their matches conflict."""
    matches = _merge_matches(root.match, child.match)
    if matches is None:
        return None
    update: dict[str, object] = {"match": matches, "name": _joined(root.name, child.name)}
    for name in _INHERITED:
        if getattr(child, name) in (None, ()):
            update[name] = getattr(root, name)
    return child.model_copy(update=update)


def _joined(root: str | None, child: str | None) -> str | None:
    if not child:
        return root
    return f"{root}-{child}" if root else child


def _merge_matches(
    root: tuple[HTTPMatchRequest, ...], child: tuple[HTTPMatchRequest, ...]
) -> tuple[HTTPMatchRequest, ...] | None:
    if not root:
        return child
    if not child:
        return root
    merged: list[HTTPMatchRequest] = []
    for leaf in child:
        fitting = [outer for outer in root if not _conflict(outer, leaf)]
        if not fitting:
            return None  # Istio: one delegate block fitting no root block drops the route
        merged.extend(_merge_block(outer, leaf) for outer in fitting)
    return tuple(merged)


def _merge_block(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> HTTPMatchRequest:
    return leaf.model_copy(
        update={
            "name": _joined(root.name, leaf.name),
            "uri": leaf.uri or root.uri,
            "scheme": leaf.scheme or root.scheme,
            "method": leaf.method or root.method,
            "authority": leaf.authority or root.authority,
            "headers": {**root.headers, **leaf.headers},
            "without_headers": {**root.without_headers, **leaf.without_headers},
            "query_params": {**root.query_params, **leaf.query_params},
            "port": leaf.port or root.port,
            "source_labels": {**root.source_labels, **leaf.source_labels},
            "source_namespace": leaf.source_namespace or root.source_namespace,
            "gateways": leaf.gateways or root.gateways,
        }
    )


def _conflict(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    """Does ``leaf`` ask for something outside ``root``? (Istio's hasConflict.)"""
    pairs = [
        (root.uri, leaf.uri),
        (root.scheme, leaf.scheme),
        (root.method, leaf.method),
        (root.authority, leaf.authority),
        *((root.headers.get(k), v) for k, v in leaf.headers.items()),
        *((root.without_headers.get(k), v) for k, v in leaf.without_headers.items()),
        *((root.query_params.get(k), v) for k, v in leaf.query_params.items()),
    ]
    if any(_string_conflict(outer, inner) for outer, inner in pairs):
        return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.source_namespace and leaf.source_namespace != root.source_namespace:
        return True
    if any(k in root.source_labels and root.source_labels[k] != v for k, v in leaf.source_labels.items()):
        return True
    return bool(root.gateways and leaf.gateways and not set(leaf.gateways) <= set(root.gateways))


def _string_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    if root is None or leaf is None or root.kind is None or leaf.kind is None:
        return False  # either side unset: the other decides
    if root.regex is not None or leaf.regex is not None:
        return True  # a regex cannot be shown to contain, or to fit in, anything else
    if root.exact is not None:
        return leaf.exact != root.exact
    assert root.prefix is not None
    inner = leaf.prefix if leaf.prefix is not None else leaf.exact
    return inner is None or not inner.startswith(root.prefix)
