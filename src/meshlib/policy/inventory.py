"""Every field of every kind meshlib reads, with what meshlib does with it.

The rule: a field Istio documents is enforced with Istio's (Envoy's) semantics or refused
at validation with the reason (``MeshModel.UNSUPPORTED`` or a ``_check``), never accepted
and ignored. This module walks the models and lists each field once, under the first path
that reaches it (``TrafficPolicy`` is reached from ``trafficPolicy``, ``subsets[]`` and
``portLevelSettings[]``; it is listed at ``trafficPolicy``). ``docs/istio-fields.md`` is its
output (``python -m meshlib.policy.inventory > docs/istio-fields.md``), and a test checks
that every enforced field is exercised by a test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .base import MeshModel
from .resources import KINDS

__all__ = ["Field", "fields", "render_markdown"]

# Refused in part, by a _check rather than UNSUPPORTED: the field is read, some values refused.
# Names that only label something: in Istio too they change no request.
LABELS: dict[str, str] = {
    "VirtualService.http.match.name": (
        "Istio writes it into access logs and stats only; meshlib keeps it, with the route's name, "
        "when it merges delegate routes"
    ),
}

_L4_ROUTES = ("VirtualService.tls", "VirtualService.tcp")
_L4 = "refused for the mesh (no TCP/TLS proxy in-process); allowed when bound to gateways only"
PARTLY: dict[str, str] = {
    **dict.fromkeys(_L4_ROUTES, _L4),
    "Telemetry.tracing": "one entry per resource",
    "Telemetry.tracing.match.mode": "CLIENT_AND_SERVER (both sides alike); CLIENT and SERVER are refused",
    "Telemetry.tracing.enableIstioTags": "true (meshlib always adds Istio's tags); false is refused",
    "Telemetry.accessLogging.providers.name": "'envoy' (meshlib's JSON access log); other names are refused",
    "Telemetry.accessLogging.filter.expression": (
        "a comparison of response.code (e.g. 'response.code >= 400'); other CEL is refused"
    ),
    "DestinationRule.trafficPolicy.connectionPool.http.h2UpgradePolicy": (
        "DEFAULT and DO_NOT_UPGRADE (what meshlib does); UPGRADE is refused"
    ),
}


@dataclass(frozen=True, slots=True)
class Field:
    """One field: ``path`` as a user writes it (``DestinationRule.trafficPolicy.tls.sni``)."""

    path: str
    model: type[MeshModel]
    name: str
    leaf: bool
    within: str | None = None  # the refused message this field is part of
    expanded: bool = True  # its message's fields are listed under it (False: listed elsewhere)

    @property
    def needs_test(self) -> bool:
        """Enforced, and its behaviour is its own: a leaf, or a message listed elsewhere."""
        return (self.leaf or not self.expanded) and self.status.startswith("enforced")

    @property
    def kind(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def refused(self) -> str | None:
        """Why the field is refused when set (None: it is enforced)."""
        own = self.model.UNSUPPORTED.get(self.name)
        if own is None and self.within is not None and self.within not in PARTLY:
            return f"part of `{self.within.split('.', 1)[1]}`, which is refused"
        return own

    @property
    def status(self) -> str:
        if self.refused is not None:
            return f"refused: {self.refused}"
        partly = PARTLY.get(self.path)
        if partly:
            return f"enforced in part: {partly}"
        if self.within is not None:
            return f"allowed only as part of `{self.within.split('.', 1)[1]}`, see there"
        label = LABELS.get(self.path)
        if label is not None:
            return f"a label: {label}"
        return "enforced"


def fields() -> Iterator[Field]:
    """Each field of each kind's spec once, in declaration order, depth first."""
    seen: set[type[MeshModel]] = set()

    def walk(model: type[MeshModel], path: str, within: str | None) -> Iterator[Field]:
        seen.add(model)
        for name, info in model.model_fields.items():
            inner = _models_in(info.annotation)
            here = f"{path}.{info.alias or name}"
            field = Field(here, model, name, not inner, within, expanded=any(m not in seen for m in inner))
            yield field
            refused = within
            if refused is None and (name in model.UNSUPPORTED or field.path in _L4_ROUTES):
                refused = field.path
            for sub in inner:
                if sub not in seen:
                    yield from walk(sub, field.path, refused)

    for kind, info in KINDS.items():
        for spec in _models_in(info.model.model_fields["spec"].annotation):
            yield from walk(spec, kind, None)


def _models_in(annotation: Any) -> list[type[MeshModel]]:
    if isinstance(annotation, type) and issubclass(annotation, MeshModel):
        return [annotation]
    found: list[type[MeshModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(m for m in _models_in(arg) if m not in found)
    return found


def render_markdown() -> str:
    """docs/istio-fields.md: one table per kind."""
    out = [
        "# Istio fields in meshlib",
        "",
        "Every field of the kinds meshlib applies, and what meshlib does with it. A field is",
        "enforced with Istio's (Envoy's) semantics, or refused by `meshctl validate` and",
        "`meshctl apply` with the reason below; none is accepted and ignored. A refused field",
        "written with its default value (`false`, an empty list) is accepted, since it asks",
        "for nothing. A VirtualService bound to gateways only (its `gateways` without",
        "`mesh`) is not applied by sidecars in Istio, and not by meshlib either.",
        "",
        "A message type reached from several places (`trafficPolicy` inside `subsets[]` and",
        "`portLevelSettings[]`) is listed once, where it is first reached.",
        "",
        "Generated by `python -m meshlib.policy.inventory`; a test keeps it current.",
    ]
    kind = ""
    for field in fields():
        if field.kind != kind:
            kind = field.kind
            out += ["", f"## {kind}", "", "| Field | Status |", "| --- | --- |"]
        name = field.path.split(".", 1)[1]
        shown = f"`{name}`" if field.leaf else f"`{name}` (message)"
        status = field.status.replace("|", r"\|")
        out.append(f"| {shown} | {status} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
