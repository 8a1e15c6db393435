"""Deadline propagation: a request served under a deadline bounds the calls made for it.

The deadline is an absolute ``time.monotonic()`` value in a context variable, so it
follows the request through threads started with ``contextvars.copy_context`` and
through asyncio tasks. Between services it travels as the remaining milliseconds in
``x-envoy-expected-rq-timeout-ms`` (the header Envoy uses for the same purpose).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["DEADLINE_HEADER", "current_deadline", "deadline", "format_timeout_ms", "parse_timeout_ms"]

DEADLINE_HEADER = "x-envoy-expected-rq-timeout-ms"
_deadline: ContextVar[float | None] = ContextVar("meshlib_deadline", default=None)


def current_deadline() -> float | None:
    """The monotonic time by which the current request must be answered, if any."""
    return _deadline.get()


@contextmanager
def deadline(seconds: float | None, *, now: float | None = None) -> Iterator[float | None]:
    """Bound everything inside to ``seconds`` from now (never extending an outer deadline)."""
    if seconds is None:
        yield _deadline.get()
        return
    start = time.monotonic() if now is None else now
    outer = _deadline.get()
    value = start + max(0.0, seconds)
    if outer is not None and outer < value:
        value = outer
    token = _deadline.set(value)
    try:
        yield value
    finally:
        _deadline.reset(token)


def parse_timeout_ms(value: str | None) -> float | None:
    """Header value -> seconds; None for a missing or malformed value (never raises)."""
    if not value:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        return None
    return int(text) / 1000.0


def format_timeout_ms(seconds: float) -> str:
    return str(max(0, int(seconds * 1000)))
