"""The protocol-neutral view of one request, as the router and policies see it.

Adapters (httpx, ASGI, WSGI, gRPC) fill it in; the core never touches a socket.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

__all__ = ["Call", "RawHeaders"]


@dataclass(slots=True)
class Call:
    """One request. ``header`` looks a header up by lower-case name (None when absent)."""

    method: str
    scheme: str
    host: str
    port: int | None
    path: str
    query: str
    header: Callable[[str], str | None]
    authority: str = ""
    protocol: str = "http"  # or "grpc"
    _query_params: Mapping[str, str] | None = field(default=None, repr=False)

    @property
    def query_params(self) -> Mapping[str, str]:
        """Query parameters (first value wins), parsed only when a route asks for them."""
        if self._query_params is None:
            params: dict[str, str] = {}
            for key, value in parse_qsl(self.query, keep_blank_values=True):
                params.setdefault(key, value)
            self._query_params = params
        return self._query_params

    def has_query_param(self, name: str) -> bool:
        return name in self.query_params


class RawHeaders:
    """Lookups by lower-case name over raw (bytes, bytes) header pairs, as httpx, httpcore and
    ASGI carry them (a list: it may be read more than once). The first three lookups scan the
    list (a route asks for one header or none, then tracing for ``traceparent`` and metrics for
    ``content-length``); from the fourth on, a dict is built once.
    httpx.Headers.get would scan and decode every header on each lookup."""

    __slots__ = ("_lookups", "_map", "_raw")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None
        self._lookups = 0

    def __call__(self, name: str) -> str | None:
        found = self._map
        if found is not None:
            return found.get(name)
        if self._lookups < 3:
            self._lookups += 1
            try:
                key = name.encode("latin-1")
            except UnicodeEncodeError:
                return None  # no header on the wire can carry this name
            size = len(key)
            found_raw: bytes | None = None
            for k, v in self._raw:
                if len(k) == size and k.lower() == key:
                    found_raw = v if found_raw is None else found_raw + b"," + v
            return found_raw.decode("latin-1") if found_raw is not None else None
        found = self._map = {}
        for key, value in self._raw:
            lower = key.decode("latin-1").lower()
            text = value.decode("latin-1")
            found[lower] = f"{found[lower]},{text}" if lower in found else text
        return found.get(name)
