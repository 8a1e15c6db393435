"""Durations as Istio writes them in YAML: ``1.5s``, ``250ms``, ``1m``, ``1h30m``.

Istio accepts Go's ``time.ParseDuration`` syntax; models keep the value as float
seconds (what the data plane computes with) and write it back in a canonical form.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = ["Duration", "format_duration", "parse_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_MAX = (2**63 - 1) / 1e9  # Go's time.Duration: int64 nanoseconds, about 292 years
_HINT = "expected a number with a unit (h, m, s, ms, us, ns), e.g. 1.5s, 250ms, 1m"


def parse_duration(value: object) -> float:
    """Parse a duration string into seconds; raise ValueError naming the value."""
    if isinstance(value, bool) or not isinstance(value, str):
        # A bare number is ambiguous (seconds? ms?); Istio rejects it too.
        raise ValueError(f"invalid duration {value!r}: {_HINT}")
    text = value.strip()
    if not text:
        raise ValueError(f"invalid duration {value!r}: {_HINT}")
    if text == "0":
        return 0.0
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {value!r}: {_HINT}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not math.isfinite(total) or total > _MAX:
        raise ValueError(f"invalid duration {value!r}: longer than the largest duration (about 292 years)")
    return total


def format_duration(seconds: float) -> str:
    """Write seconds back in the shortest exact form Istio would accept."""
    if seconds == 0:
        return "0s"
    nanos = round(seconds * 1e9)
    for unit, size in (
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ):
        if nanos % size == 0:
            return f"{nanos // size}{unit}"
    return f"{nanos}ns"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "examples": ["1.5s", "250ms", "1m"]}),
]
"""A duration field: float seconds in Python, an Istio duration string in YAML/JSON."""
