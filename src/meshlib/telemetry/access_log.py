"""Access logs: one JSON line per request, client and server side (Envoy's fields, JSON).

Off by default (``MESH_ACCESS_LOG=stdout|stderr|<file>`` turns it on, ``MESH_ACCESS_LOG_SAMPLING``
keeps that percentage of lines). No header is ever logged, and the path is written without
its query string: credentials (Authorization, cookies, ``?access_token=``) never reach the log.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.call import Call
    from ..core.exchange import Exchange
    from ..core.server_stack import Inbound

__all__ = ["AccessLog", "open_access_log"]


def _iso(wall: float) -> str:
    seconds = int(wall)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((wall - seconds) * 1000):03d}Z"


class AccessLog:
    """Writes a line per request to ``stream`` (thread-safe; each line written whole)."""

    def __init__(
        self,
        stream: IO[str],
        *,
        sampling: float = 100.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        close: bool = False,
    ) -> None:
        if not 0.0 <= sampling <= 100.0:
            raise ValueError(f"access log sampling {sampling!r} is not a percentage between 0 and 100")
        self._stream = stream
        self._ratio = sampling / 100.0
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._close = close

    def sampled(self) -> bool:
        ratio = self._ratio
        return ratio >= 1.0 or (ratio > 0.0 and self._rng.random() < ratio)

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=True) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def _entry(
        self, direction: str, call: Call, code: int, grpc_status: str, flags: str, duration_ms: float
    ) -> dict[str, Any]:
        """The fields both sides log."""
        return {
            "start_time": _iso(self._clock() - duration_ms / 1000.0),
            "direction": direction,
            "method": call.method,
            "authority": call.authority or call.host,
            "path": call.path,
            "protocol": call.protocol,
            "response_code": code,
            "grpc_status": grpc_status or None,
            "response_flags": flags,
            "duration_ms": round(duration_ms, 3),
        }

    def outbound(
        self,
        ex: Exchange,
        code: int,
        grpc_status: str,
        flags: str,
        duration_ms: float,
        sent: int,
        received: int,
    ) -> None:
        if not self.sampled():
            return
        endpoint, trace = ex.endpoint, ex.trace
        if trace is not None:
            trace_id: str | None = f"{trace.trace_id:032x}"
        else:
            trace_id = ex.traceparent[3:35] if ex.traceparent else None
        entry = self._entry("outbound", ex.call, code, grpc_status, flags, duration_ms)
        entry["upstream_host"] = f"{endpoint.address}:{endpoint.port}" if endpoint is not None else None
        entry["upstream_cluster"] = ex.fqdn
        entry["upstream_peer"] = endpoint.identity if endpoint is not None and ex.mtls else None
        entry["attempts"] = ex.attempts
        entry["bytes_sent"] = sent
        entry["bytes_received"] = received
        entry["trace_id"] = trace_id
        self.write(entry)

    def inbound(
        self,
        ex: Inbound,
        fqdn: str,
        code: int,
        grpc_status: str,
        flags: str,
        duration_ms: float,
        received: int,
    ) -> None:
        if not self.sampled():
            return
        trace, peer = ex.trace, ex.peer
        entry = self._entry("inbound", ex.call, code, grpc_status, flags, duration_ms)
        entry["downstream_address"] = ex.source_ip
        entry["downstream_peer"] = peer.spiffe_id if peer is not None else None
        entry["destination_service"] = fqdn
        entry["bytes_received"] = received
        entry["trace_id"] = trace.trace_id if trace is not None else None
        self.write(entry)

    def close(self) -> None:
        if self._close:
            self._stream.close()


def open_access_log(where: str, sampling: float = 100.0) -> AccessLog:
    """``stdout``, ``stderr`` or a file path (appended to)."""
    if where == "stdout":
        return AccessLog(sys.stdout, sampling=sampling)
    if where == "stderr":
        return AccessLog(sys.stderr, sampling=sampling)
    return AccessLog(open(where, "a", encoding="utf-8"), sampling=sampling, close=True)
