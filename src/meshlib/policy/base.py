"""Building blocks shared by every policy model: the model base and Istio's common types."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, Self, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from ..names import check_address, check_dns_label, check_host

__all__ = [
    "Address",
    "FieldPath",
    "Host",
    "MeshModel",
    "Percent",
    "PolicyTargetReference",
    "PortSelector",
    "StringMatch",
    "WorkloadSelector",
    "check_export_to",
    "export_set",
    "iter_checks",
]

FieldPath = tuple[str | int, ...]

Host = Annotated[str, AfterValidator(check_host)]
"""A host in a resource: a DNS name (short or fully qualified), ``*``/``*.suffix``, or an IP."""
Address = Annotated[str, AfterValidator(lambda value: check_address(value, srv=True))]
"""Where an endpoint is reached: an IP address, a DNS name, or an SRV name (resolution DNS)."""


class MeshModel(BaseModel):
    """Frozen, camelCase on the wire, unknown fields rejected — like Istio's CRDs."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        defer_build=True,
        str_strip_whitespace=False,
    )

    UNSUPPORTED: ClassVar[Mapping[str, str]] = {}
    """Fields Istio documents that meshlib does not enforce (python name -> why, and what to
    do instead). Setting one to anything but its default is a validation error: a field is
    enforced or refused, never accepted and ignored. docs/istio-fields.md lists them all."""

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        """Cross-field rules of this message; paths are relative to it. None by default."""
        return iter(())


def iter_checks(model: BaseModel, path: FieldPath = ()) -> Iterator[tuple[FieldPath, str]]:
    """Run ``_check`` on a model and on every model nested in it, yielding full paths."""
    found: list[tuple[FieldPath, str]] = []
    _collect_checks(model, path, found)
    return iter(found)


def _collect_checks(model: BaseModel, path: FieldPath, found: list[tuple[FieldPath, str]]) -> None:
    checks, nested = _walk_plan(type(model))
    if checks and isinstance(model, MeshModel):
        for sub, message in (*_unsupported(model), *model._check()):
            found.append((path + sub, message))
    for name, key in nested:
        value = getattr(model, name)
        if value is None:
            continue
        if isinstance(value, BaseModel):
            _collect_checks(value, (*path, key), found)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _collect_checks(item, (*path, key, index), found)
        elif isinstance(value, dict):
            for item_key, item in value.items():
                if isinstance(item, BaseModel):
                    _collect_checks(item, (*path, key, str(item_key)), found)


_PLANS: dict[type[BaseModel], tuple[bool, tuple[tuple[str, str], ...]]] = {}


def _walk_plan(cls: type[BaseModel]) -> tuple[bool, tuple[tuple[str, str], ...]]:
    """What ``iter_checks`` does on a model of ``cls``: whether it has checks of its own, and
    the fields (python name, wire key) whose type can hold a model. Worked out once per class:
    a workload checks every resource of each snapshot it receives, and walking every field of
    every message (most of them strings or unset) was half of that (33 of 60 µs for a small
    VirtualService)."""
    plan = _PLANS.get(cls)
    if plan is None:
        checks = issubclass(cls, MeshModel) and (bool(cls.UNSUPPORTED) or cls._check is not MeshModel._check)
        nested = tuple(
            (name, info.alias or name)
            for name, info in cls.model_fields.items()
            if _may_hold_model(info.annotation)
        )
        plan = _PLANS[cls] = (checks, nested)
    return plan


def _may_hold_model(annotation: Any) -> bool:
    """Whether a value of this type can be or contain a model (unsure: yes)."""
    if annotation is Any or annotation is object:
        return True
    args = get_args(annotation)
    if isinstance(annotation, type) and not args:  # (list[X] passes for a type: it has args)
        return issubclass(annotation, BaseModel)
    origin = get_origin(annotation)
    if annotation is None or origin is Literal:
        return False
    if origin is Annotated:
        return _may_hold_model(args[0])
    if not args:  # Any, a TypeVar, an unresolved forward reference: look at run time
        return True
    return any(_may_hold_model(arg) for arg in args if arg is not Ellipsis)


def _unsupported(model: MeshModel) -> Iterator[tuple[FieldPath, str]]:
    refused = model.UNSUPPORTED
    if not refused:
        return
    fields = type(model).model_fields
    for name in refused:
        if name not in model.model_fields_set:
            continue
        info = fields[name]
        value = getattr(model, name)
        # Identity for False: a zero (Envoy's ttl 0s, a session cookie) asks for something.
        if value is None or value is False or value in ((), {}) or value == info.get_default():
            continue  # written out, but as the default: nothing to enforce
        key = info.alias or name
        yield (key,), f"{key} is not supported by meshlib: {refused[name]}"


def check_export_to(export_to: Sequence[str]) -> Iterator[tuple[FieldPath, str]]:
    """Istio's rules for exportTo (VirtualService, DestinationRule, ServiceEntry): '.', '*',
    '~' or namespace names, no duplicates, '*' and '~' alone."""
    seen: set[str] = set()
    for index, value in enumerate(export_to):
        if value in seen:
            yield ("exportTo", index), f"duplicate entries in exportTo for entry {value}"
        seen.add(value)
        if value not in (".", "*", "~"):
            try:
                check_dns_label(value, "exportTo namespace")
            except ValueError as exc:
                yield ("exportTo", index), str(exc)
    if len(export_to) > 1 and seen & {"*", "~"}:
        yield ("exportTo",), "'*' and '~' cannot be combined with other exportTo entries"


def export_set(export_to: Sequence[str], namespace: str) -> frozenset[str] | None:
    """The namespaces a resource of ``namespace`` is visible in (None: every one); '~': none."""
    if not export_to or "*" in export_to:
        return None
    if "~" in export_to:
        return frozenset()
    return frozenset(namespace if n == "." else n for n in export_to)


class StringMatch(MeshModel):
    """Istio StringMatch: exactly one of exact, prefix or regex (RE2 syntax)."""

    ONEOF: ClassVar[tuple[str, ...]] = ("exact", "prefix", "regex")

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        chosen = [n for n in self.ONEOF if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"set only one of exact, prefix, regex; got {', '.join(chosen)}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        return self

    @property
    def kind(self) -> str | None:
        """Which of exact / prefix / regex is set (None for an empty match)."""
        for name in self.ONEOF:
            if getattr(self, name) is not None:
                return name
        return None


class Percent(MeshModel):
    """Istio Percent: a double between 0 and 100."""

    value: float = Field(default=0.0, ge=0.0, le=100.0)


class PortSelector(MeshModel):
    number: int = Field(ge=0, le=65535)


class WorkloadSelector(MeshModel):
    """Selects workloads by labels; an empty selector selects every workload in scope."""

    match_labels: dict[str, str] = Field(default_factory=dict)

    def matches(self, labels: dict[str, str] | Any) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())


class PolicyTargetReference(MeshModel):
    """Istio's targetRef (Gateway API style); accepted for compatibility."""

    group: str = ""
    kind: str
    name: str
    namespace: str = ""
