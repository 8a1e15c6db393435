"""Turn raw data into a Resource, or into problems that name the field and the rule broken."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .base import FieldPath, iter_checks
from .resources import KINDS, Resource

__all__ = ["Problem", "format_path", "parse_resource", "resource_label"]

Problem = tuple[FieldPath, str]


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


def parse_resource(data: object, default_namespace: str = "default") -> tuple[Resource | None, list[Problem]]:
    """Validate one document: structure (pydantic), then each message's cross-field rules."""
    if not isinstance(data, Mapping):
        what = "a list" if isinstance(data, list) else type(data).__name__ if data is not None else "empty"
        return None, [
            ((), f"a resource must be a mapping with apiVersion, kind, metadata and spec; got {what}")
        ]
    kind = data.get("kind")
    if kind is None:
        return None, [(("kind",), "required field is missing")]
    info = KINDS.get(kind) if isinstance(kind, str) else None
    if info is None:
        known = ", ".join(KINDS)
        return None, [(("kind",), f"unknown kind {kind!r}; meshlib knows {known}")]
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
