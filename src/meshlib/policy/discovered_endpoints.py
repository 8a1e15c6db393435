"""What a workload does with the instances a discovery source found (policy/discovery.py):
they become the endpoints of the entries that name that source; policy files, which no source
serves, may not name one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ConfigIssue
from .discovery import SOURCE_ANNOTATION, instance_entry
from .resources import ServiceEntry
from .validate import format_path

if TYPE_CHECKING:
    from .loader import LoadedResource  # YAML: not loaded by a workload that only decodes snapshots

__all__ = ["refuse_in_files", "with_instances"]


def with_instances(entry: ServiceEntry, instances: Sequence[Mapping[str, Any]]) -> ServiceEntry:
    """``entry`` with one endpoint per usable instance (the resource as written has none)."""
    port = entry.spec.ports[0].name if entry.spec.ports else ""
    static = entry.spec.mode == "STATIC"
    endpoints = tuple(
        found
        for instance in instances
        if isinstance(instance, Mapping)
        and (found := instance_entry(instance, port, static=static)) is not None
    )
    return entry.model_copy(update={"spec": entry.spec.model_copy(update={"endpoints": endpoints})})


def refuse_in_files(loaded: Iterable[LoadedResource]) -> None:
    """Policy read from files by a workload (``MESH_CONFIG``): nothing there asks Consul, so an
    entry that names it would have no endpoints; raise ConfigError instead."""
    issues = [
        ConfigIssue(
            "only the config service asks Consul (meshctl serve --consul URL, with MESH_CONTROL_PLANE "
            "pointing at it); in a policy file list the endpoints instead",
            source=item.source,
            line=item.line,
            resource=f"ServiceEntry {item.resource.namespace}/{item.resource.name}",
            path=format_path(("metadata", "annotations", SOURCE_ANNOTATION)),
        )
        for item in loaded
        if item.resource.kind == "ServiceEntry"
        and item.resource.metadata.annotations.get(SOURCE_ANNOTATION) == "consul"
    ]
    if issues:
        raise ConfigError(issues)
