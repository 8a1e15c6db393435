"""Discovery sources chosen per ServiceEntry: the annotations, their rules, and how the
instances a source found become the entry's endpoints. Pure: no I/O.

A ServiceEntry takes its endpoints from Consul when annotated::

    metadata:
      annotations:
        discovery.meshlib.io/source: consul
        discovery.meshlib.io/consul-service: web        # default: the first label of hosts[0]
        discovery.meshlib.io/consul-datacenter: dc2     # default: the agent's own datacenter

The config service (``meshctl serve --consul URL``) watches Consul's passing instances of
that service and sends them with every snapshot, next to the entry (``discovered``); the
workload turns each instance into one endpoint of the entry (``with_discovered``). The
entry keeps exactly one port: the port clients call; each instance is called on the port it
registered in Consul. Entries without the annotation take their endpoints as before: the
registry (workloadSelector), the ``endpoints`` listed, or DNS (resolution DNS).
discovered_endpoints.py applies what was found to the entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .base import FieldPath, iter_checks
from .service_entry import ServiceEntrySpec, WorkloadEntry, _is_ip

__all__ = [
    "CONSUL_DATACENTER_ANNOTATION",
    "CONSUL_SERVICE_ANNOTATION",
    "SOURCE_ANNOTATION",
    "ConsulTarget",
    "consul_target",
    "discovery_problems",
    "instance_entry",
]

PREFIX = "discovery.meshlib.io/"
SOURCE_ANNOTATION = PREFIX + "source"
CONSUL_SERVICE_ANNOTATION = PREFIX + "consul-service"
CONSUL_DATACENTER_ANNOTATION = PREFIX + "consul-datacenter"
_KNOWN = (SOURCE_ANNOTATION, CONSUL_SERVICE_ANNOTATION, CONSUL_DATACENTER_ANNOTATION)
# Consul accepts more in a service name, but only these are also DNS names (and safe in a URL).
_CONSUL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True, order=True, slots=True)
class ConsulTarget:
    """One Consul service in one datacenter ("": the agent's own): one blocking watch."""

    service: str
    datacenter: str = ""

    @property
    def name(self) -> str:
        """``web`` or ``web@dc2``: the key of its record in the store and in snapshots."""
        return f"{self.service}@{self.datacenter}" if self.datacenter else self.service

    def to_json(self) -> dict[str, str]:
        return {"service": self.service, "datacenter": self.datacenter}


def _derived_service(hosts: Sequence[str]) -> str:
    return hosts[0].split(".", 1)[0] if hosts else ""


def consul_target(annotations: Mapping[str, str], hosts: Sequence[str]) -> ConsulTarget | None:
    """The Consul service a ServiceEntry takes its endpoints from; None if another source."""
    if annotations.get(SOURCE_ANNOTATION) != "consul":
        return None
    service = annotations.get(CONSUL_SERVICE_ANNOTATION) or _derived_service(hosts)
    return ConsulTarget(service, annotations.get(CONSUL_DATACENTER_ANNOTATION, ""))


def _annotation_path(key: str) -> FieldPath:
    return ("metadata", "annotations", key)


def discovery_problems(
    annotations: Mapping[str, str], spec: ServiceEntrySpec
) -> Iterator[tuple[FieldPath, str]]:
    """Every ``discovery.meshlib.io/`` annotation of a ServiceEntry is applied or refused here."""
    for key in annotations:
        if key.startswith(PREFIX) and key not in _KNOWN:
            yield (
                _annotation_path(key),
                f"unknown annotation {key!r}: meshlib knows {', '.join(_KNOWN)}",
            )
    source = annotations.get(SOURCE_ANNOTATION)
    if source is None:
        for key in (CONSUL_SERVICE_ANNOTATION, CONSUL_DATACENTER_ANNOTATION):
            if key in annotations:
                yield (
                    _annotation_path(key),
                    f"{key} has effect only with {SOURCE_ANNOTATION}: consul; add that annotation "
                    "or remove this one",
                )
        return
    if source != "consul":
        yield (
            _annotation_path(SOURCE_ANNOTATION),
            f"unknown discovery source {source!r}: the only source named here is consul (the registry, "
            "listed endpoints and DNS are chosen by workloadSelector, endpoints and resolution)",
        )
        return
    yield from _consul_problems(annotations, spec)


def _consul_problems(
    annotations: Mapping[str, str], spec: ServiceEntrySpec
) -> Iterator[tuple[FieldPath, str]]:
    where = f"{SOURCE_ANNOTATION}: consul"
    for key in (CONSUL_SERVICE_ANNOTATION, CONSUL_DATACENTER_ANNOTATION):
        value = annotations.get(key)
        if value is not None and not _CONSUL_NAME.match(value):
            yield (
                _annotation_path(key),
                f"invalid {key} {value!r}: use letters, digits, '-', '_' and '.', starting and ending "
                "with a letter or digit",
            )
    if CONSUL_SERVICE_ANNOTATION not in annotations:
        derived = _derived_service(spec.hosts)
        if not _CONSUL_NAME.match(derived):
            yield (
                _annotation_path(SOURCE_ANNOTATION),
                f"no Consul service name can be taken from host {spec.hosts[0]!r}: name it with "
                f"{CONSUL_SERVICE_ANNOTATION}",
            )
    mode = spec.mode
    if mode not in ("STATIC", "DNS"):
        yield (
            ("spec", "resolution"),
            f"{where} needs resolution STATIC (instances registered with IP addresses) or DNS "
            f"(instances registered by host name); {mode} would not use the instances Consul returns",
        )
    if spec.endpoints:
        yield (
            ("spec", "endpoints"),
            f"{where} takes the endpoints from Consul's passing instances: remove the listed endpoints, "
            f"or remove {SOURCE_ANNOTATION} to use them",
        )
    if spec.workload_selector is not None:
        yield (
            ("spec", "workloadSelector"),
            f"{where} takes the endpoints from Consul, not from the registry: remove workloadSelector",
        )
    if len(spec.ports) != 1:
        yield (
            ("spec", "ports"),
            f"{where} needs exactly one port (got {len(spec.ports)}): the port clients call; each Consul "
            "instance is called on the port it registered. For another port, register another Consul "
            "service and give it its own ServiceEntry",
        )
    for index, port in enumerate(spec.ports):
        if port.target_port is not None:
            yield (
                ("spec", "ports", index, "targetPort"),
                f"{where}: each instance is called on the port it registered in Consul; remove targetPort",
            )


def instance_entry(instance: Mapping[str, Any], port_name: str, *, static: bool) -> WorkloadEntry | None:
    """One discovered instance (``{address, port, labels, locality, weight}``, as the config
    service sends it) as an endpoint of an entry whose one port is ``port_name``; None when the
    instance cannot be one (resolution STATIC and an address that is a name, or invalid data)."""
    data = {
        "address": instance.get("address"),
        "ports": {port_name: instance.get("port")},
        "labels": instance.get("labels") or {},
        "locality": instance.get("locality") or None,
        "weight": instance.get("weight") or None,
    }
    try:
        entry = WorkloadEntry.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError:
        return None
    if next(iter_checks(entry), None) is not None or not entry.address:
        return None
    if static and not _is_ip(entry.address):
        return None
    return entry
