"""Istio-compatible policy: models, validation and the YAML loader."""

from .destination_rule import DestinationRuleSpec, TrafficPolicy
from .duration import format_duration, parse_duration
from .loader import MAX_SOURCE_BYTES, LoadedResource, load_paths, load_text
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
from .validate import format_path, parse_resource
from .virtual_service import HTTPRoute, VirtualServiceSpec

__all__ = [
    "KINDS",
    "MAX_SOURCE_BYTES",
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "DestinationRule",
    "DestinationRuleSpec",
    "HTTPRoute",
    "LoadedResource",
    "PeerAuthentication",
    "PeerAuthenticationSpec",
    "RequestAuthentication",
    "RequestAuthenticationSpec",
    "Resource",
    "ResourceKey",
    "ServiceEntry",
    "ServiceEntrySpec",
    "TrafficPolicy",
    "VirtualService",
    "VirtualServiceSpec",
    "find_kind",
    "format_duration",
    "format_path",
    "load_paths",
    "load_text",
    "parse_duration",
    "parse_resource",
]
