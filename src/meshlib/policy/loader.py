"""Load policy from multi-document YAML (a file, a folder, stdin or a string).

Every error carries the file, the line, the resource and the field path, e.g.
``canary.yaml:14: VirtualService default/reviews: spec.http[0].route[1].weight:
must be >= 0; got -20``.

Files written for Istio mix policy with Kubernetes objects and Istio kinds meshlib does not
apply (Deployment, Gateway, Sidecar, ...). Those documents are skipped, each with the reason
(skipped.py), and returned in ``LoadResult.skipped`` for the caller to report; with
``strict=True`` each of them is an error instead. A document without apiVersion or kind, or
malformed otherwise, is always an error.

Loading is all-or-nothing for the kinds meshlib applies: one bad document fails the whole
load, so a caller never applies half of what the user wrote.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ConfigError, ConfigIssue
from .base import FieldPath
from .resources import Resource, ResourceKey
from .skipped import SkippedResource
from .validate import format_path, parse_document, resource_label
from .yaml_compat import compose_documents, error_hint

__all__ = ["MAX_SOURCE_BYTES", "LoadResult", "LoadedResource", "load_paths", "load_text"]

MAX_SOURCE_BYTES = 4 * 1024 * 1024
"""Largest policy file accepted (Kubernetes caps one object at about 1.5 MB)."""
_MAX_NODES = 200_000  # bounds alias expansion ("billion laughs")
_MAX_DEPTH = 64  # far deeper than any Istio resource; bounds recursion
_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class LoadedResource:
    """A validated resource and where it was written."""

    resource: Resource
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True)
class LoadResult(Sequence[LoadedResource]):
    """The resources to apply, in the order written, and the ones skipped.

    A sequence of the resources itself, so that callers with no use for ``skipped`` (a
    workload reading MESH_CONFIG) iterate it as they always did."""

    resources: tuple[LoadedResource, ...]
    skipped: tuple[SkippedResource, ...] = ()

    def __len__(self) -> int:
        return len(self.resources)

    @overload
    def __getitem__(self, index: int) -> LoadedResource: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[LoadedResource]: ...
    def __getitem__(self, index: int | slice) -> LoadedResource | Sequence[LoadedResource]:
        return self.resources[index]

    def __iter__(self) -> Iterator[LoadedResource]:
        return iter(self.resources)


@dataclass(slots=True)
class _Document:
    data: Any
    line: int
    positions: dict[FieldPath, int]

    def line_of(self, path: FieldPath) -> int:
        """The line of the deepest part of ``path`` the document has (map keys may be ints)."""
        found: FieldPath = ()
        for part in path:
            for candidate in (part, str(part)):
                if (*found, candidate) in self.positions:
                    found = (*found, candidate)
                    break
            else:
                break
        return self.positions.get(found, self.line)


def load_text(
    text: str, source: str = "<string>", namespace: str = "default", *, strict: bool = False
) -> LoadResult:
    """Parse and validate every document in ``text``; raise ConfigError listing all problems."""
    loaded, skipped, issues = _load_one(text, source, namespace, strict)
    issues.extend(_duplicates(loaded))
    if issues:
        raise ConfigError(issues)
    return LoadResult(tuple(loaded), tuple(skipped))


def load_paths(
    paths: Sequence[str | Path], namespace: str = "default", *, strict: bool = False
) -> LoadResult:
    """Load files, folders (their *.yaml, *.yml, *.json, sorted) and ``-`` for stdin."""
    loaded: list[LoadedResource] = []
    skipped: list[SkippedResource] = []
    issues: list[ConfigIssue] = []
    for source, text in _read_sources(paths, issues):
        found, passed, problems = _load_one(text, source, namespace, strict)
        loaded.extend(found)
        skipped.extend(passed)
        issues.extend(problems)
    issues.extend(_duplicates(loaded))
    if issues:
        raise ConfigError(issues)
    if not loaded and not skipped:
        names = ", ".join(str(p) for p in paths)
        raise ConfigError(ConfigIssue(f"no resources found in {names}"))
    return LoadResult(tuple(loaded), tuple(skipped))


def _read_sources(paths: Sequence[str | Path], issues: list[ConfigIssue]) -> Iterator[tuple[str, str]]:
    for item in paths:
        if str(item) == "-":
            text = sys.stdin.read(MAX_SOURCE_BYTES + 1)
            if _too_big("<stdin>", len(text.encode()), issues):
                continue
            yield "<stdin>", text
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
            if not files:
                issues.append(ConfigIssue(f"no {', '.join(_SUFFIXES)} files in folder", source=str(path)))
        elif path.exists():
            files = [path]
        else:
            issues.append(ConfigIssue("no such file or folder", source=str(path)))
            continue
        for file in files:
            if _too_big(str(file), file.stat().st_size, issues):
                continue
            try:
                yield str(file), file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                issues.append(ConfigIssue(f"cannot read: {exc}", source=str(file)))


def _too_big(source: str, size: int, issues: list[ConfigIssue]) -> bool:
    if size <= MAX_SOURCE_BYTES:
        return False
    issues.append(
        ConfigIssue(
            f"file is {size / 1048576:.1f} MiB, larger than the {MAX_SOURCE_BYTES // 1048576} MiB limit",
            source=source,
        )
    )
    return True


def _load_one(
    text: str, source: str, namespace: str, strict: bool
) -> tuple[list[LoadedResource], list[SkippedResource], list[ConfigIssue]]:
    if len(text.encode()) > MAX_SOURCE_BYTES:
        issues: list[ConfigIssue] = []
        _too_big(source, len(text.encode()), issues)
        return [], [], issues
    try:
        documents = list(_documents(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "malformed YAML"
        column = f" (column {mark.column + 1})" if mark is not None else ""
        message = f"invalid YAML: {problem}{column}{error_hint(text, exc)}"
        return [], [], [ConfigIssue(message, source=source, line=line)]
    except _Hostile as exc:
        return [], [], [ConfigIssue(str(exc), source=source, line=exc.line)]
    except RecursionError:
        return [], [], [ConfigIssue("YAML nests too deeply to read", source=source)]
    except yaml.YAMLError as exc:
        return [], [], [ConfigIssue(f"invalid YAML: {exc}", source=source)]
    if not documents:
        return [], [], [ConfigIssue("no resources found (the file is empty)", source=source)]
    loaded: list[LoadedResource] = []
    skipped: list[SkippedResource] = []
    issues = []
    for document in documents:
        for data, base in _items(document):
            parsed, problems = parse_document(data, namespace)
            line = document.line_of(base)
            if isinstance(parsed, SkippedResource):
                if strict:
                    at = document.line_of((*base, "kind"))
                    issues.append(
                        ConfigIssue(
                            parsed.refusal, source=source, line=at, resource=parsed.label, path="kind"
                        )
                    )
                else:
                    skipped.append(dataclasses.replace(parsed, source=source, line=line))
                continue
            label = resource_label(data, namespace)
            for path, message in problems:
                issues.append(
                    ConfigIssue(
                        message,
                        source=source,
                        line=document.line_of(base + path),
                        resource=label,
                        path=format_path(path),
                    )
                )
            if parsed is not None:
                loaded.append(LoadedResource(parsed, source, line))
    return loaded, skipped, issues


def _items(document: _Document) -> Iterator[tuple[Any, FieldPath]]:
    """A document, or the items of a Kubernetes ``kind: List``."""
    data = document.data
    if isinstance(data, dict) and data.get("kind") == "List" and isinstance(data.get("items"), list):
        for index, item in enumerate(data["items"]):
            yield item, ("items", index)
    else:
        yield data, ()


def _duplicates(loaded: Iterable[LoadedResource]) -> list[ConfigIssue]:
    first: dict[ResourceKey, LoadedResource] = {}
    issues: list[ConfigIssue] = []
    for item in loaded:
        key = item.resource.key
        if key in first:
            issues.append(
                ConfigIssue(
                    f"duplicate resource: {key} is also defined at {first[key].where}",
                    source=item.source,
                    line=item.line,
                    resource=str(key),
                )
            )
        else:
            first[key] = item
    return issues


class _Hostile(Exception):
    """Input PyYAML accepts but meshlib refuses: duplicate keys, runaway nesting."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def _documents(text: str) -> Iterator[_Document]:
    for node in compose_documents(text):
        if node is None:
            continue
        builder = _Builder()
        data = builder.build(node, ())
        if data is None:
            continue  # an empty document between separators
        yield _Document(data, node.start_mark.line + 1, builder.positions)


class _Builder:
    """Node tree -> Python data, remembering the line of every key and list item."""

    def __init__(self) -> None:
        self.positions: dict[FieldPath, int] = {}
        self._constructor = SafeConstructor()
        self._count = 0

    def build(self, node: Node, path: FieldPath) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise yaml.YAMLError(f"document has more than {_MAX_NODES} nodes (alias expansion?)")
        if len(path) > _MAX_DEPTH:
            raise _Hostile(
                f"nesting deeper than {_MAX_DEPTH} levels (a recursive alias?)", node.start_mark.line + 1
            )
        self.positions.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, MappingNode):
            explicit = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
            self._constructor.flatten_mapping(node)  # merged pairs first, then the explicit ones
            merged = len(node.value) - explicit
            out: dict[Any, Any] = {}
            written: set[Any] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                if not isinstance(key_node, ScalarNode):
                    raise _Hostile("mapping keys must be scalars", key_node.start_mark.line + 1)
                key = self._scalar(key_node)
                if index >= merged:  # keys written here may override merged ones, not each other
                    if key in written:
                        raise _Hostile(f"duplicate key {key!r} in one mapping", key_node.start_mark.line + 1)
                    written.add(key)
                child = (*path, str(key))
                self.positions[child] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: Node) -> Any:
        """A scalar's value; one its explicit tag cannot hold is refused (``!!int abc``,
        ``!!timestamp 2020-13-45``, ``!!set abc``), where PyYAML's SafeConstructor would let
        ValueError, KeyError or AttributeError out, or hand back an empty collection."""
        try:
            data = self._constructor.construct_object(node)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise self._invalid(node) from exc
        if isinstance(data, dict | list | set):
            raise self._invalid(node)
        return data

    @staticmethod
    def _invalid(node: Node) -> _Hostile:
        tag = str(node.tag).rsplit(":", 1)[-1]
        return _Hostile(f"{str(node.value)[:80]!r} is not a valid {tag}", node.start_mark.line + 1)
