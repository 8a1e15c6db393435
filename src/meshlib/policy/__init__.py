"""Istio-compatible policy: models, validation and the YAML loader.

Each name is imported on first use: a workload that only decodes snapshots never loads the
YAML loader."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .destination_rule import DestinationRuleSpec, TrafficPolicy
    from .duration import format_duration, parse_duration
    from .loader import MAX_SOURCE_BYTES, LoadedResource, LoadResult, load_paths, load_text
    from .resources import (
        KINDS,
        AuthorizationPolicy,
        DestinationRule,
        PeerAuthentication,
        RequestAuthentication,
        Resource,
        ResourceKey,
        ServiceEntry,
        VirtualService,
        find_kind,
    )
    from .security import AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec
    from .service_entry import ServiceEntrySpec
    from .skipped import SkippedResource
    from .validate import format_path, parse_document, parse_resource
    from .virtual_service import HTTPRoute, VirtualServiceSpec

_LAZY = {
    "DestinationRuleSpec": ".destination_rule",
    "TrafficPolicy": ".destination_rule",
    "format_duration": ".duration",
    "parse_duration": ".duration",
    "MAX_SOURCE_BYTES": ".loader",
    "LoadedResource": ".loader",
    "LoadResult": ".loader",
    "load_paths": ".loader",
    "load_text": ".loader",
    "KINDS": ".resources",
    "AuthorizationPolicy": ".resources",
    "DestinationRule": ".resources",
    "PeerAuthentication": ".resources",
    "RequestAuthentication": ".resources",
    "Resource": ".resources",
    "ResourceKey": ".resources",
    "ServiceEntry": ".resources",
    "VirtualService": ".resources",
    "find_kind": ".resources",
    "AuthorizationPolicySpec": ".security",
    "PeerAuthenticationSpec": ".security",
    "RequestAuthenticationSpec": ".security",
    "ServiceEntrySpec": ".service_entry",
    "SkippedResource": ".skipped",
    "format_path": ".validate",
    "parse_document": ".validate",
    "parse_resource": ".validate",
    "HTTPRoute": ".virtual_service",
    "VirtualServiceSpec": ".virtual_service",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "KINDS",
    "MAX_SOURCE_BYTES",
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "DestinationRule",
    "DestinationRuleSpec",
    "HTTPRoute",
    "LoadResult",
    "LoadedResource",
    "PeerAuthentication",
    "PeerAuthenticationSpec",
    "RequestAuthentication",
    "RequestAuthenticationSpec",
    "Resource",
    "ResourceKey",
    "ServiceEntry",
    "ServiceEntrySpec",
    "SkippedResource",
    "TrafficPolicy",
    "VirtualService",
    "VirtualServiceSpec",
    "find_kind",
    "format_duration",
    "format_path",
    "load_paths",
    "load_text",
    "parse_document",
    "parse_duration",
    "parse_resource",
]
