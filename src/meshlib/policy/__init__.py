"""Istio-compatible policy: models, validation and the YAML loader."""

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
