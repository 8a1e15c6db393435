"""Process configuration from MESH_* environment variables (12-factor)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .core.hosts import CLUSTER_DOMAIN
from .errors import ConfigError, ConfigIssue
from .names import check_dns_label, check_label_key, check_label_value, check_locality
from .paths import default_workload_dir

__all__ = ["MeshSettings", "parse_labels"]


def parse_labels(text: str, variable: str = "MESH_LABELS") -> dict[str, str]:
    """``version=v1,zone=a`` -> ``{"version": "v1", "zone": "a"}``."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError(ConfigIssue(f"{variable}: {item!r} is not key=value (e.g. version=v1,zone=a)"))
        try:
            labels[check_label_key(key)] = check_label_value(value)
        except ValueError as exc:
            raise ConfigError(ConfigIssue(f"{variable}: {exc}")) from None
    return labels


@dataclass(frozen=True)
class MeshSettings:
    """Everything a Mesh needs to know about the process it runs in."""

    service: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    control_plane: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)
    config: Path | None = None
    data_dir: Path | None = None
    trust_domain: str = CLUSTER_DOMAIN
    locality: str = ""  # region/zone/subzone, for locality load balancing

    def __post_init__(self) -> None:
        try:
            check_locality(self.locality)
        except ValueError as exc:
            raise ConfigError(ConfigIssue(f"MESH_LOCALITY: {exc}")) from None
        for variable, value in (("MESH_SERVICE", self.service), ("MESH_NAMESPACE", self.namespace)):
            try:
                check_dns_label(value)
            except ValueError as exc:
                raise ConfigError(ConfigIssue(f"{variable}: {exc}")) from None
        for key, value in self.labels.items():
            try:
                check_label_key(key)
                check_label_value(value)
            except ValueError as exc:
                raise ConfigError(ConfigIssue(f"MESH_LABELS: {exc}")) from None
        for url in self.control_plane:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(ConfigIssue(f"MESH_CONTROL_PLANE: {url!r} is not an http(s) URL"))

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or default_workload_dir(self.service, self.namespace)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MeshSettings:
        env = os.environ if environ is None else environ
        service = env.get("MESH_SERVICE", "").strip()
        if not service:
            raise ConfigError(ConfigIssue("MESH_SERVICE is required: the name of this workload's service"))
        urls = tuple(u.strip().rstrip("/") for u in env.get("MESH_CONTROL_PLANE", "").split(",") if u.strip())
        config = env.get("MESH_CONFIG", "").strip()
        data_dir = env.get("MESH_DATA_DIR", "").strip()
        return cls(
            service=service,
            namespace=env.get("MESH_NAMESPACE", "").strip() or "default",
            labels=parse_labels(env.get("MESH_LABELS", "")),
            control_plane=urls,
            token=env.get("MESH_TOKEN") or None,
            config=Path(config) if config else None,
            data_dir=Path(data_dir) if data_dir else None,
            trust_domain=env.get("MESH_TRUST_DOMAIN", "").strip() or CLUSTER_DOMAIN,
            locality=env.get("MESH_LOCALITY", "").strip(),
        )
