"""Compose YAML as Kubernetes reads it, where PyYAML and go-yaml disagree.

kubectl and Istio read YAML with go-yaml, whose flow collections let a plain scalar hold a
``:`` that is not followed by a space: ``addresses: [1.2.3.4, 2001:db8::]`` is the list of
two addresses (Istio's own valid test data writes it so). libyaml refuses the second item
("found unexpected ':'") and PyYAML's pure-Python scanner quietly reads it as the mapping
``{"2001:db8:": null}``. The C loader is used whenever it reads a text; only a text it
refuses for that reason is read again with the scanner below, which follows go-yaml's rule
for ``:`` and is PyYAML's in every other respect.

A value that *starts* with ``:`` in a flow collection (``[::1]``) is refused by go-yaml as
well (there ``:`` opens a mapping value); ``error_hint`` says to quote it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import Node
from yaml.scanner import ScannerError
from yaml.tokens import ScalarToken

__all__ = ["compose_documents", "error_hint"]

_BREAKS = "\0 \t\r\n\x85\u2028\u2029"
_FLOW_INDICATORS = ",?[]{}"


class _GoFlowColonLoader(yaml.SafeLoader):
    """SafeLoader whose plain scalars end at ``:`` only before a space or a line end, as in
    go-yaml; everything else (``#``, flow indicators, indentation) is PyYAML's."""

    def scan_plain(self) -> ScalarToken:
        # PyYAML's Scanner.scan_plain with one change: in a flow collection, ":" followed by
        # one of ",[]{}" stays in the scalar (the indicator after it then ends the scalar).
        chunks: list[str] = []
        start_mark = self.get_mark()
        end_mark = start_mark
        indent = self.indent + 1
        spaces: list[str] = []
        while self.peek() != "#":
            length = 0
            while True:
                ch = self.peek(length)
                if (
                    ch in _BREAKS
                    or (ch == ":" and self.peek(length + 1) in _BREAKS)
                    or (self.flow_level and ch in _FLOW_INDICATORS)
                ):
                    break
                length += 1
            if length == 0:
                break
            self.allow_simple_key = False
            chunks.extend(spaces)
            chunks.append(self.prefix(length))
            self.forward(length)
            end_mark = self.get_mark()
            spaces = self.scan_plain_spaces(indent, start_mark) or []  # None at a document end
            if not spaces or self.peek() == "#" or (not self.flow_level and self.column < indent):
                break
        return ScalarToken("".join(chunks), True, start_mark, end_mark)


_CLoader: Any = getattr(yaml, "CSafeLoader", None)


def compose_documents(text: str) -> list[Node | None]:
    """Every document of ``text`` as a node tree (None for an empty one)."""
    if _CLoader is None:
        return list(yaml.compose_all(text, Loader=_GoFlowColonLoader))
    try:
        return list(yaml.compose_all(text, Loader=_CLoader))
    except ScannerError as exc:
        if exc.problem != "found unexpected ':'":
            raise
        return list(yaml.compose_all(text, Loader=_GoFlowColonLoader))


def error_hint(text: str, exc: yaml.MarkedYAMLError) -> str:
    """Advice to append to a YAML error where the usual cause is known; else ``""``."""
    mark = exc.problem_mark
    if mark is None or "flow" not in (exc.context or ""):
        return ""
    lines = text.splitlines()
    if mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == ":":
        return (
            "; a value starting with ':' (an IPv6 address like ::1) must be quoted in [...] or {...}: \"::1\""
        )
    return ""
