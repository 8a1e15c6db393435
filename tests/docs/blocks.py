"""The fenced code blocks of docs/*.md and docs/reference/*.md, with the marker before each.

A block's marker is an HTML comment on the line just before its opening fence:

- ``<!-- not run: why -->``: a bash or python block that cannot run here (an install, a
  production host); the reason is required.
- ``<!-- fragment -->``: a yaml or python block that is part of something bigger (a field of a
  resource, a function): yaml is only parsed as YAML, python only compiled.
- ``<!-- invalid: text -->``: a yaml block meshlib refuses; the refusal must contain ``text``.
- ``<!-- file: path -->``: the block is that file (relative to docs/), word for word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LANGUAGES = frozenset({"bash", "python", "yaml", "text"})

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*(not run|fragment|invalid|file)\s*(?::\s*(.*?))?\s*-->\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None = None  # "not run", "fragment", "invalid", "file"
    argument: str = ""  # what follows the marker's colon

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + sorted((DOCS / "reference").glob("*.md"))


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order; an unclosed fence is an error."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        if index >= len(lines):
            raise AssertionError(f"{page.relative_to(ROOT)}:{start + 1}: a fence that never closes")
        marker = _MARKER.match(lines[start - 1]) if start > 0 else None
        found.append(
            Block(
                page,
                start + 1,
                opening.group(1),
                "\n".join(body) + "\n",
                marker.group(1) if marker else None,
                (marker.group(2) or "") if marker else "",
            )
        )
        index += 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page)]
