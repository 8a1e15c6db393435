"""The drivers of the two stacks, one per concurrency model: every adapter runs its requests
through these and nothing else.

The client stack yields decided actions (``Send``, ``Sleep``, ``Mirror``); a client driver
performs each with the adapter's I/O (``ClientIO`` blocking, ``AsyncClientIO`` awaiting) and
sends the result back in. The server stack runs up to ``Handle``; the adapter runs the
application and ends the request with its status. Both drivers close the flow on every way
out (its ``finally`` blocks give back pool and retry slots), refuse an action they do not
know, and count each request once, here: outbound when the reply is in (or when a streamed
answer ends), inbound when the answer is decided.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from .core.attempt import CertificateState
from .core.authz import AuthorizationCheck, CheckCustom
from .core.call import Call
from .core.cluster_state import Clusters
from .core.deadline import _deadline
from .core.exchange import Exchange, Mirror, Outcome, Reply, Send, Sleep, record_outbound
from .core.flags import flags_label
from .core.metrics import RequestMetrics
from .core.routing_table import RoutingTable
from .core.server_stack import Answer, Handle, Inbound
from .core.stack import Flow
from .peer import PeerIdentity, _peer
from .telemetry.hub import Telemetry
from .telemetry.tracing import enter as enter_trace
from .telemetry.tracing import leave as leave_trace

if TYPE_CHECKING:
    from .learned_egress import LearnedEgress
    from .workload_identity import WorkloadIdentity

__all__ = [
    "AsyncClientIO",
    "AsyncInboundRequest",
    "AuthorizationProvider",
    "ClientIO",
    "ClientMesh",
    "InboundRequest",
    "ServingMesh",
    "drive_client",
    "drive_client_async",
    "outbound",
    "workload_identity_of",
]


log = logging.getLogger("meshlib")

AuthorizationProvider = Callable[[AuthorizationCheck], "bool | Awaitable[bool]"]
"""A CUSTOM AuthorizationPolicy's provider: True allows the request, anything else denies it
(so does raising). A coroutine function may serve asyncio servers (ASGI, grpc.aio); blocking
servers (WSGI, grpc) need a plain function."""


class ClientMesh(Protocol):
    """What the client adapters need of a Mesh."""

    clusters: Clusters
    rng: random.Random
    workload_id: str
    metrics: RequestMetrics

    @property
    def telemetry(self) -> Telemetry | None: ...

    client_stack_runner: Callable[[Exchange], Flow[Reply]]

    @property
    def workload_identity(self) -> CertificateState | None: ...

    # Egress hosts learned from traffic (None: declared, or the whole registry)
    learned_egress: LearnedEgress | None


def workload_identity_of(mesh: ClientMesh) -> WorkloadIdentity | None:
    """The mesh's X.509-SVID holder, or None. Without one, ``meshlib.workload_identity`` (and
    cryptography with it) is never imported: no instance can exist before it is."""
    module = sys.modules.get("meshlib.workload_identity")
    identity = mesh.workload_identity
    if module is not None and isinstance(identity, module.WorkloadIdentity):
        return cast("WorkloadIdentity", identity)
    return None


def outbound(
    mesh: ClientMesh,
    call: Call,
    table: RoutingTable,
    fqdn: str,
    *,
    deadline: float | None,
    replayable: bool,
    request: Any = None,
) -> Exchange:
    """One outbound request's exchange, from any adapter (the adapter's own request rides along)."""
    now = time.monotonic()
    return Exchange(
        call=call,
        table=table,
        clusters=mesh.clusters,
        rng=mesh.rng,
        clock=time.monotonic,
        fqdn=fqdn,
        source=mesh.workload_id,
        identity=mesh.workload_identity,
        started=now,
        deadline=deadline,
        replayable=replayable,
        request=request,
        telemetry=mesh.telemetry,
    )


class ClientIO(Protocol):
    """What a blocking adapter does for the client stack."""

    def send(self, ex: Exchange, send: Send) -> Outcome: ...

    def mirror(self, ex: Exchange, copy: Mirror) -> None:
        """Start the copy in the background; never wait for it."""


class AsyncClientIO(Protocol):
    """What an asyncio (or anyio) adapter does for the client stack."""

    async def send(self, ex: Exchange, send: Send) -> Outcome: ...

    def mirror(self, ex: Exchange, copy: Mirror) -> None: ...

    async def sleep(self, seconds: float) -> None: ...


def _unknown(action: object) -> TypeError:
    return TypeError(f"the stack yielded {action!r}, which no driver performs")


def drive_client(flow: Flow[Reply], ex: Exchange, io: ClientIO, metrics: RequestMetrics) -> Reply:
    """Run one outbound request's flow to its reply, with blocking I/O."""
    value: Any = None
    try:
        while True:
            action = flow.send(value)
            kind = type(action)
            if kind is Send:
                value = io.send(ex, action)
            elif kind is Sleep:
                time.sleep(action.seconds)
                value = None
            elif kind is Mirror:
                io.mirror(ex, action)
                value = None
            else:
                raise _unknown(action)
    except StopIteration as done:
        reply: Reply = done.value
    except BaseException:
        flow.close()
        record_outbound(metrics, ex, None)
        raise
    outcome = reply.outcome
    if outcome is not None and outcome.streaming:  # counted when the body ends, whole duration
        outcome.on_end = lambda: record_outbound(metrics, ex, reply)
    else:
        record_outbound(metrics, ex, reply)
    return reply


async def drive_client_async(
    flow: Flow[Reply], ex: Exchange, io: AsyncClientIO, metrics: RequestMetrics
) -> Reply:
    """The same, awaiting the I/O (the flow itself never blocks)."""
    value: Any = None
    try:
        while True:
            action = flow.send(value)
            kind = type(action)
            if kind is Send:
                value = await io.send(ex, action)
            elif kind is Sleep:
                await io.sleep(action.seconds)
                value = None
            elif kind is Mirror:
                io.mirror(ex, action)
                value = None
            else:
                raise _unknown(action)
    except StopIteration as done:
        reply: Reply = done.value
    except BaseException:
        flow.close()
        record_outbound(metrics, ex, None)
        raise
    outcome = reply.outcome
    if outcome is not None and outcome.streaming:
        outcome.on_end = lambda: record_outbound(metrics, ex, reply)
    else:
        record_outbound(metrics, ex, reply)
    return reply


class ServingMesh(Protocol):
    """What the server drivers need of a Mesh."""

    @property
    def metrics(self) -> RequestMetrics: ...

    @property
    def telemetry(self) -> Telemetry | None: ...

    @property
    def fqdn(self) -> str: ...

    def inbound(self, call: Call, started: float, peer: PeerIdentity | None = None) -> Inbound: ...

    @property
    def server_stack_runner(self) -> Callable[[Inbound], Flow[Answer]]: ...

    @property
    def authorization_providers(self) -> Mapping[str, AuthorizationProvider]: ...


class InboundRequest:
    """One inbound request through the server stack (blocking adapters: WSGI, grpc).

    ``admit()`` runs the stack up to the application: an ``Answer`` means the mesh answered
    itself (a probe, an expired deadline, a refusal) and the application must not run; None
    means run it, inside ``scope()``, then ``end(status)``. ``fail()`` when it raised."""

    __slots__ = ("_ended", "_flow", "_mesh", "_tokens", "answer", "ex")

    def __init__(
        self,
        mesh: ServingMesh,
        call: Call,
        peer: PeerIdentity | None = None,
        *,
        timeout: float | None = None,
        started: float | None = None,
        source_ip: str | None = None,
        destination_ip: str | None = None,
        sni: str | None = None,
        path_error: str | None = None,
    ) -> None:
        self._mesh = mesh
        self.ex = ex = mesh.inbound(call, time.monotonic() if started is None else started, peer)
        ex.timeout = timeout
        ex.source_ip = source_ip
        ex.destination_ip = destination_ip
        ex.sni = sni
        ex.path_error = path_error
        # Made at admit(), inside the accounting: the built-in filters are plain functions that
        # run when the flow is made, and read what the adapter has set on ``ex`` by then.
        self._flow: Flow[Answer] | None = None
        self._ended = False
        self.answer: Answer | None = None  # how the request ended, once it has

    @property
    def peer(self) -> PeerIdentity | None:
        return self.ex.peer

    def admit(self) -> Answer | None:
        action = self._step(None)
        while type(action) is CheckCustom:
            verdict = self._provider(action)(action.check)
            if inspect.isawaitable(verdict):
                close = getattr(verdict, "close", None)
                if close is not None:
                    close()  # never awaited: no "coroutine was never awaited" warning
                log.error(
                    "authorization provider %r is a coroutine function on a blocking server; "
                    "denied (give WSGI and grpc servers a plain function)",
                    action.check.provider,
                )
                verdict = False
            action = self._step(verdict is True)
        answer: Answer | None = action
        return answer

    def _provider(self, action: CheckCustom) -> Callable[[AuthorizationCheck], Any]:
        name = action.check.provider
        provider = self._mesh.authorization_providers.get(name)
        if provider is None:
            log.warning(
                "no authorization provider %r in this process (mesh.authorization_providers): denied", name
            )
            return _deny
        return _guarded(provider, name)

    def _step(self, value: Any) -> Any:
        """The stack's next action: an Answer (it ended), None (run the application) or a
        CheckCustom for the driver to perform."""
        try:
            flow = self._flow
            if flow is None:
                flow = self._flow = self._mesh.server_stack_runner(self.ex)
            action = flow.send(value)
        except StopIteration as done:
            answer: Answer = done.value
            self.answer = answer
            self._count(answer.status)
            return answer
        except BaseException:
            self.fail()
            raise
        kind = type(action)
        if kind is CheckCustom:
            return action
        if kind is not Handle:
            self.fail()
            raise _unknown(action)
        return None

    def end(self, status: int) -> Answer:
        """The application answered ``status``: the rest of the stack sees it; counted. A
        second call (the adapter saw the end twice) returns the same answer."""
        if self.answer is not None:
            return self.answer
        if self._flow is None:
            self.fail()
            raise RuntimeError("end() before admit(): the server stack never ran")
        try:
            self._flow.send(status)
        except StopIteration as done:
            answer: Answer = done.value
            self.answer = answer
            self._count(answer.status)
            return answer
        except BaseException:
            self.fail()
            raise
        self.fail()
        raise RuntimeError("the server stack went on after the application answered")

    def fail(self) -> None:
        """The stack itself failed: close the flow, count a 500."""
        if self._flow is not None:
            self._flow.close()
        if self.answer is None:
            self.answer = Answer(500)
        self._count(500)

    def _count(self, status: int) -> None:
        if self._ended:
            return
        self._ended = True
        ex, mesh = self.ex, self._mesh
        metrics = mesh.metrics
        duration_ms = (ex.clock() - ex.started) * 1000.0
        telemetry = mesh.telemetry
        if telemetry is not None:
            telemetry.inbound_done(ex, mesh.fqdn, status, duration_ms)
        else:
            metrics.record("inbound", mesh.fqdn, status, flags_label(ex.flags), duration_ms)
        if ex.denied_by is not None:
            metrics.record_denial(ex.denied_by or "none")
        elif ex.limited_by is not None:
            metrics.record_rate_limited(ex.limited_by)

    def scope(self) -> InboundRequest:
        """The application's context (``with inbound.scope():``): its outbound mesh calls carry
        the remaining deadline, and ``meshlib.current_peer()`` names the verified caller."""
        return self

    def __enter__(self) -> None:
        trace = self.ex.trace
        self._tokens = (
            _peer.set(self.ex.peer),
            _deadline.set(self.ex.deadline),
            enter_trace(trace) if trace is not None else None,
        )

    def __exit__(self, *exc: object) -> None:
        peer, deadline, trace = self._tokens
        if trace is not None:
            leave_trace(trace)
        _deadline.reset(deadline)
        _peer.reset(peer)

    def context(self) -> contextvars.Context:
        """A copy of the current context with the application's scope set (for code that runs
        step by step, such as a response stream, possibly on other threads)."""
        context = contextvars.copy_context()
        context.run(_peer.set, self.ex.peer)
        if self.ex.deadline is not None:
            context.run(_deadline.set, self.ex.deadline)
        if self.ex.trace is not None:
            context.run(enter_trace, self.ex.trace)  # left with the context itself
        return context


class AsyncInboundRequest(InboundRequest):
    """The same for asyncio adapters (ASGI, grpc.aio): stack actions other than ``Handle``
    (an external authorization call) are awaited here."""

    __slots__ = ()

    async def admit_async(self) -> Answer | None:
        action = self._step(None)
        while type(action) is CheckCustom:
            provider = self._provider(action)
            try:
                verdict = provider(action.check)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                log.exception("authorization provider %r failed: denied", action.check.provider)
                verdict = False
            action = self._step(verdict is True)
        answer: Answer | None = action
        return answer


def _deny(_: AuthorizationCheck) -> bool:
    return False


def _guarded(provider: AuthorizationProvider, name: str) -> Callable[[AuthorizationCheck], Any]:
    """A provider that raises denies (Envoy's ext_authz fails closed by default)."""

    def check(request: AuthorizationCheck) -> Any:
        try:
            return provider(request)
        except Exception:
            log.exception("authorization provider %r failed: denied", name)
            return False

    return check
