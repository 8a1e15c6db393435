"""Turn raw data into a Resource, or into problems that name the field and the rule broken.

A document of a kind meshlib does not apply (a Deployment, a Gateway; skipped.py has the
reasons) becomes a SkippedResource when it is otherwise well formed: it has an apiVersion,
a kind and a metadata.name. Anything less is still an error, as is an unknown kind in an
API group meshlib applies (most likely a typo of one of its kinds).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .base import FieldPath, iter_checks
from .resources import KINDS, Resource
from .skipped import SkippedResource, cluster_scoped, skip_reason, skipped_kinds, split_api_version

__all__ = ["Problem", "format_path", "parse_document", "parse_resource", "resource_label"]

Problem = tuple[FieldPath, str]

_APPLIED_GROUPS = frozenset(info.group for info in KINDS.values())


def format_path(path: FieldPath) -> str:
    """``("spec", "http", 0, "route")`` -> ``spec.http[0].route``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "").isalnum() and part[:1].isalpha():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def resource_label(data: object, default_namespace: str = "default") -> str | None:
    """``VirtualService default/reviews`` from raw data, as far as it can be read."""
    if not isinstance(data, Mapping):
        return None
    kind = data.get("kind")
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    if not isinstance(kind, str):
        return None
    if not isinstance(name, str):
        return kind
    return f"{kind} {namespace if isinstance(namespace, str) else default_namespace}/{name}"


def parse_document(
    data: object, default_namespace: str = "default"
) -> tuple[Resource | SkippedResource | None, list[Problem]]:
    """One document: a Resource of a kind meshlib applies, a SkippedResource of a kind it does
    not apply, or None and the problems found."""
    if not isinstance(data, Mapping):
        what = "a list" if isinstance(data, list) else type(data).__name__ if data is not None else "empty"
        return None, [
            ((), f"a resource must be a mapping with apiVersion, kind, metadata and spec; got {what}")
        ]
    kind = data.get("kind")
    if kind is None:
        return None, [(("kind",), "required field is missing")]
    if isinstance(kind, str) and kind in KINDS:
        return _parse_applied(data, kind, default_namespace)
    return _parse_skipped(data, kind, default_namespace)


def parse_resource(data: object, default_namespace: str = "default") -> tuple[Resource | None, list[Problem]]:
    """Validate one document that must be of a kind meshlib applies (a stored resource, say)."""
    parsed, problems = parse_document(data, default_namespace)
    if isinstance(parsed, SkippedResource):
        return None, [(("kind",), f"{parsed.kind} is not a kind meshlib applies: {parsed.reason}")]
    return parsed, problems


def _parse_applied(
    data: Mapping[str, Any], kind: str, default_namespace: str
) -> tuple[Resource | None, list[Problem]]:
    """Structure (pydantic), then each message's cross-field rules."""
    info = KINDS[kind]
    raw = dict(data)
    meta = raw.get("metadata")
    if isinstance(meta, Mapping) and meta.get("namespace") is None:
        raw["metadata"] = {**meta, "namespace": default_namespace}
    raw.pop("status", None)  # written by Kubernetes; `kubectl get -o yaml` output carries it
    try:
        resource = info.model.model_validate(raw)
    except ValidationError as exc:
        return None, [_problem(info.model, err) for err in exc.errors()]
    problems = list(iter_checks(resource))  # the envelope's rules, then the spec's
    return (None, problems) if problems else (resource, [])


def _parse_skipped(
    data: Mapping[str, Any], kind: object, default_namespace: str
) -> tuple[SkippedResource | None, list[Problem]]:
    """A kind meshlib does not apply: skipped if the envelope is sound, else the problem."""
    if not isinstance(kind, str) or not kind.strip():
        return None, [(("kind",), f"must be a kind name; got {_describe(kind)}")]
    if kind == "List":  # a well-formed List never gets here: the loader reads its items
        return None, [(("items",), "a List needs items: a list of resources")]
    api_version = data.get("apiVersion")
    if api_version is None:
        return None, [(("apiVersion",), "required field is missing")]
    if not isinstance(api_version, str) or (parts := split_api_version(api_version)) is None:
        return None, [(("apiVersion",), f"must be GROUP/VERSION or VERSION; got {_show(api_version)}")]
    reason = skip_reason(parts[0], kind, _APPLIED_GROUPS)
    if reason is None:
        return None, [(("kind",), _unknown_kind(kind, parts[0]))]
    meta = data.get("metadata")
    if meta is None:
        return None, [(("metadata",), "required field is missing")]
    if not isinstance(meta, Mapping):
        return None, [(("metadata",), f"must be a mapping; got {_describe(meta)}")]
    name, namespace = meta.get("name"), meta.get("namespace")
    if name is None:
        return None, [(("metadata", "name"), "required field is missing")]
    if not isinstance(name, str) or not name:
        return None, [(("metadata", "name"), f"must be a string; got {_show(name)}")]
    if namespace is not None and not isinstance(namespace, str):
        return None, [(("metadata", "namespace"), f"must be a string; got {_show(namespace)}")]
    scope = None if cluster_scoped(kind) else namespace or default_namespace
    return SkippedResource(api_version, kind, name, scope, reason), []


def _unknown_kind(kind: str, group: str) -> str:
    applied = [info.kind for info in KINDS.values() if info.group == group]
    candidates = [*applied, *skipped_kinds(group)]
    by_lower = {k.lower(): k for k in candidates}
    close = by_lower.get(kind.lower()) or next(iter(difflib.get_close_matches(kind, candidates, n=1)), None)
    hint = f' (did you mean "{close}"?)' if close else ""
    return f"unknown kind {kind!r} in {group}{hint}; meshlib applies {', '.join(applied)} of {group}"


def _problem(model: type[BaseModel], err: Any) -> Problem:
    loc: FieldPath = tuple(p for p in err["loc"] if p != "[key]")
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        name = loc[-1] if loc else ""
        hint = _suggest(model, loc[:-1], str(name))
        return loc, f"unknown field {name!r}{hint}"
    if kind == "missing":
        return loc, "required field is missing"
    if kind == "value_error":
        return loc, str(ctx.get("error", err["msg"]))
    if kind == "literal_error":
        return loc, f"{_show(value)} is not one of {ctx.get('expected', '')}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"must be a mapping; got {_describe(value)}"
    if kind in ("list_type", "tuple_type"):
        return loc, f"must be a list; got {_describe(value)}"
    if kind in ("string_type",):
        return loc, f"must be a string; got {_describe(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return loc, f"must be an integer; got {_describe(value)}"
    if kind in ("float_type", "float_parsing"):
        return loc, f"must be a number; got {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return loc, f"must be true or false; got {_describe(value)}"
    bounds = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return loc, f"must be {bounds[kind]} {limit}; got {_show(value)}"
    if kind == "too_short":
        return loc, f"needs at least {ctx.get('min_length', 1)} item(s)"
    return loc, f"{err['msg']}; got {_show(value)}"


def _suggest(model: type[BaseModel], parent: FieldPath, name: str) -> str:
    """' (did you mean "weight"?)' for a misspelt field, found by walking the model types."""
    current: Any = model
    for part in parent:
        origin = getattr(current, "__origin__", None)
        if isinstance(part, int) or origin in (dict, list, tuple):
            # A list index or a map key: step into the element type.
            args = [a for a in getattr(current, "__args__", ()) if a is not Ellipsis]
            current = _container_or_model(args[-1]) if args else current
            continue
        fields = getattr(current, "model_fields", None)
        match = next((f for n, f in (fields or {}).items() if (f.alias or n) == part), None)
        if match is None:
            return ""
        current = _container_or_model(match.annotation)
        if current is None:
            return ""
    fields = getattr(current, "model_fields", {})
    names = [f.alias or n for n, f in fields.items()]
    close = difflib.get_close_matches(name, names, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _container_or_model(annotation: Any) -> Any:
    """The dict/list/tuple type or model a (possibly optional) field annotation holds."""
    if getattr(annotation, "__origin__", None) in (dict, list, tuple):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if getattr(arg, "__origin__", None) in (dict, list, tuple):
            return arg
    return _model_in(annotation)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _show(value)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
