"""The default server stack: what happens to every inbound request before the application.

Protocol-neutral like the client stack: ASGI, WSGI and gRPC adapters drive it. The
terminal action is ``Handle``: the adapter runs the application and sends back the status
it answered with. Authorization and rate limits plug in by role (before "handle").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..peer import PeerIdentity
from .call import Call
from .deadline import DEADLINE_HEADER, parse_timeout_ms
from .flags import UT
from .stack import Flow, Next, Stack

__all__ = [
    "LIVE_PATH",
    "READY_PATH",
    "Answer",
    "Handle",
    "Inbound",
    "default_server_stack",
]

READY_PATH = "/.well-known/meshlib/ready"
LIVE_PATH = "/.well-known/meshlib/live"


@dataclass(slots=True)
class Handle:
    """Action: run the application (under ``Inbound.deadline``); the adapter sends back its status."""


@dataclass(slots=True)
class Answer:
    """How the server stack ended. ``local``: the mesh answered, the application never ran."""

    status: int
    local: bool = False
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"  # of a local answer's body
    grpc_status: str | None = None  # a local answer to a gRPC call (None: from the HTTP status)


@dataclass(slots=True)
class Inbound:
    call: Call
    clock: Callable[[], float]
    started: float
    ready: Callable[[], bool]
    peer: PeerIdentity | None = None
    report: Callable[[bool], bytes] | None = None  # the readiness probe's body (details for people)
    timeout: float | None = None  # the caller's remaining time, from the protocol (gRPC's deadline)
    deadline: float | None = None
    flags: list[str] = field(default_factory=list)


ServerFlow = Flow[Answer]
ServerNext = Next[Inbound, Answer]


def health(ex: Inbound, next: ServerNext) -> ServerFlow:
    """Readiness and liveness on reserved paths, answered before anything else runs."""
    path = ex.call.path
    if path == READY_PATH:
        ok = ex.ready()
        status = 200 if ok else 503
        if ex.report is not None:
            return Answer(status, local=True, body=ex.report(ok), content_type="application/json")
        return Answer(status, local=True, body=b"ready\n" if ok else b"not ready\n")
    if path == LIVE_PATH:
        return Answer(200, local=True, body=b"live\n")
    return (yield from next(ex))


def deadline(ex: Inbound, next: ServerNext) -> ServerFlow:
    """The caller's remaining time (gRPC's deadline, or Envoy's header): bounds the handler's
    own outbound calls; none left, 504 (gRPC: DEADLINE_EXCEEDED) without running it."""
    remaining = parse_timeout_ms(ex.call.header(DEADLINE_HEADER))
    if ex.timeout is not None and (remaining is None or ex.timeout < remaining):
        remaining = ex.timeout  # both: the tighter one (a gRPC deadline and Envoy's header)
    if remaining is not None:
        if remaining <= 0:
            ex.flags.append(UT)
            return Answer(
                504,
                local=True,
                body=b"deadline exceeded before the request was handled\n",
                grpc_status="DEADLINE_EXCEEDED",
            )
        ex.deadline = ex.started + remaining
    return (yield from next(ex))


def handle(ex: Inbound, next: ServerNext) -> ServerFlow:
    """The application itself."""
    status: int = yield Handle()
    return Answer(status)


def default_server_stack() -> Stack[Inbound, Answer]:
    """Outermost first; telemetry wraps it from the adapter, seeing every answer."""
    return Stack(
        [
            ("health", health),  # probes must answer even when everything below would refuse
            ("deadline", deadline),  # before any work: an expired request costs nothing more
            # ("authz", ...), ("ratelimit", ...): the authorization issue inserts them here
            ("handle", handle),
        ]
    )
