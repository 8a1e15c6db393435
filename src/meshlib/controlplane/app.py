"""The config service as an ASGI app (Starlette): the versioned /v1 API.

| method and path                         | who      | what                                   |
|-----------------------------------------|----------|----------------------------------------|
| GET    /v1/healthz                       | anyone   | liveness and current version           |
| POST   /v1/apply                         | admin    | validate and store resources, atomic;  |
|                                          |          | other kinds answered as skipped        |
| GET    /v1/resources[?kind=&namespace=]  | reader   | list stored resources                  |
| GET    /v1/resources/{kind}/{ns}/{name}  | reader   | one resource                           |
| DELETE /v1/resources/{kind}/{ns}/{name}  | admin    | remove one resource                    |
| GET    /v1/snapshot                      | reader   | the current snapshot                   |
| POST   /v1/watch                         | workload | long poll for a newer snapshot; ACK/NACK |
| PUT    /v1/workloads/{id}                | workload | register or update a workload          |
| DELETE /v1/workloads/{id}                | workload | deregister                             |
| GET    /v1/workloads                     | reader   | registry and acknowledged versions     |
| POST   /v1/workloads/{id}/edges          | workload | the workload's per-edge traffic summary |
| GET    /v1/edges                         | reader   | the service graph (``meshctl top``)    |
| GET    /v1/discovery                     | reader   | discovery sources: each Consul watch   |

"workload": the caller's bootstrap token must be for the workload's own identity (the admin
token may act for any); "reader": any valid token. With ``--insecure-open-registry``,
callers without credentials are readers and workloads of identities that never had a token
(workload_auth.py has the table). Every write is checked whole before anything is stored:
a refusal, and an unexpected error too, changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..ca.tokens import TokenRegistry
from ..errors import ConfigError
from ..policy.resources import ResourceKey, find_kind
from ..policy.validate import format_path
from ..protocol import (
    EPOCH_HEADER,
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    MAX_REGISTRATION_BYTES,
    ApplyRequest,
    EdgeReport,
    WatchRequest,
)
from ..registry import WorkloadRegistration
from .auth import check_bearer
from .edges import EdgeBoard
from .errors import HTTPError
from .snapshot_log import NOTHING_NEW
from .state import ConfigState, RegistryFull
from .workload_auth import WorkloadGate

if TYPE_CHECKING:
    from .consul_source import ConsulDiscovery, ConsulSettings
    from .etcd_store import EtcdStore, StoreEvent

__all__ = [
    "HTTPError",  # re-exported: the CA routes raise it too
    "VersionNotifier",
    "create_app",
    "json_errors",
    "parse_model",
    "read_json",
    "require_admin",
]

log = logging.getLogger("meshlib.controlplane")

Handler = Callable[[Request], Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)
MAX_EDGE_REPORT_BYTES = 512 * 1024  # MAX_EDGES edges of ~600 bytes each


class VersionNotifier:
    """Wakes every waiting watch at once; bursts of registry changes are coalesced.

    Each watch waits on a future of its own (cancelling one watch cancels nothing shared),
    woken by the next change or by the clock: the futures due within the same tenth of a
    second share one timer. ``asyncio.wait`` with a timeout, a timer and two callbacks per
    watch per wait, was a tenth of the service's CPU in a 5,000-watcher fan-out."""

    TICK = 0.1  # the clock wakes a watch at most this much after the time it asked for

    def __init__(self, coalesce: float = 0.05) -> None:
        # Every armed future, by the tick of the clock that wakes it if no change does first.
        self._ticks: dict[int, tuple[asyncio.TimerHandle, list[asyncio.Future[bool]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop those timers run on
        self._pending: asyncio.TimerHandle | None = None
        self._coalesce = coalesce
        self.closing = False

    def arm(self, until: float) -> asyncio.Future[bool]:
        """A future the next change resolves (with False), or the loop's clock reaching
        ``until``, a ``loop.time()`` (with True). Take it *before* checking the version: a
        change landing between the check and the wait then still wakes the waiter."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # served again on another loop: the old one's timers never fire
            self._loop, self._ticks = loop, {}
        future: asyncio.Future[bool] = loop.create_future()
        tick = math.ceil(until / self.TICK)
        armed = self._ticks.get(tick)
        if armed is None:
            armed = self._ticks[tick] = (loop.call_at(tick * self.TICK, self._tick, tick), [])
        armed[1].append(future)
        return future

    def _tick(self, tick: int) -> None:
        _, due = self._ticks.pop(tick)
        for future in due:
            if not future.done():  # (a watch cancelled while it waited has cancelled its own)
                future.set_result(True)

    def notify(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        armed, self._ticks = self._ticks, {}
        for timer, futures in armed.values():
            timer.cancel()
            for future in futures:
                if not future.done():
                    future.set_result(False)

    def close(self) -> None:
        """Shutting down: release every waiting watch now instead of at its timeout."""
        self.closing = True
        self.notify()

    @property
    def pending(self) -> bool:
        """Changes wait to be announced together (``notify_soon``)."""
        return self._pending is not None

    def notify_soon(self) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self._coalesce, self.notify)


MAX_BATCHED_REGISTRATIONS = 40  # per store write: 40 entries and 40 live keys fit one etcd transaction


class RegistrationBatches:
    """Registrations that arrive in one turn of the event loop go to the store in one write
    (a group commit). A burst of workloads starting at once was one store round trip each,
    with the event loop waiting on every one (on etcd, 3,000 registrations took 3.7 s, and
    every watch answer waited behind them); now it is one per batch. Nothing waits longer
    than before: a registration alone is written on the next turn of the loop.

    Each registration comes with its caller's check (may it replace what is registered under
    that id?), run again just before its batch is built, against the registry as it is then:
    a registration of the same id earlier in the same turn is written first."""

    def __init__(self, state: ConfigState, notifier: VersionNotifier) -> None:
        self._state = state
        self._notifier = notifier
        self._pending: list[tuple[WorkloadRegistration, Callable[[], None], asyncio.Future[bool]]] = []
        self.writes = 0  # store writes made (for tests and benchmarks)

    async def register(self, registration: WorkloadRegistration, check: Callable[[], None]) -> bool:
        """What ``ConfigState.register`` returns (or raises), once its batch is written;
        ``check`` raises when the caller may no longer make it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((registration, check, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        batch: list[tuple[WorkloadRegistration, asyncio.Future[bool]]] = []
        for registration, check, future in pending:
            if len(batch) >= MAX_BATCHED_REGISTRATIONS or any(r.id == registration.id for r, _ in batch):
                self._write(batch)
                batch = []
            try:
                check()
            except Exception as refused:
                if not future.done():
                    future.set_exception(refused)
                continue
            batch.append((registration, future))
        self._write(batch)

    def _write(self, batch: list[tuple[WorkloadRegistration, asyncio.Future[bool]]]) -> None:
        if not batch:
            return
        self.writes += 1
        try:
            results = self._state.register_many([registration for registration, _ in batch])
        except Exception as exc:  # the store failed: each of them fails as it would alone
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if any(result is True for result in results):
            self._notifier.notify_soon()  # here, not in the handlers: one may have been cancelled
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller left; the registration is written all the same
                continue
            if isinstance(result, RegistryFull):
                future.set_exception(result)
            else:
                future.set_result(result)


def _follower(
    state: ConfigState,
    store: EtcdStore,
    notifier: VersionNotifier,
    tokens: TokenRegistry | None,
    delay: float = 0.01,
    after: Callable[[], None] = lambda: None,
) -> Callable[[list[StoreEvent] | None], None]:
    """What a shared store calls (from its own thread) when another replica changed it: once
    per burst of changes, on this loop, the state takes what the store's watch told (or reads
    everything again when that is not known), and the watches are woken if what they serve
    changed. A replica used to read the whole store for every change another one made: with
    5,000 workloads registered, 130 ms of its loop each, a whole core at ten a second."""
    loop = asyncio.get_running_loop()
    pending: list[asyncio.TimerHandle] = []
    told: list[StoreEvent] = []
    unknown = [False]  # a change nobody told: read it all
    woken = [state.version]  # the version the watches were last woken for

    def resync() -> None:
        pending.clear()
        events, whole = told[:], unknown[0]
        told.clear()
        unknown[0] = False
        try:
            changes = None if whole else store.changes(events)
            served = state.resync(changes)
            announced = state.announce()  # with leases: a replica's ran out, and no version says so yet
            if tokens is not None and (changes is None or changes.tokens):
                tokens.reload()
        except Exception:
            log.exception("reading the shared store again failed; reading it all again in 1 s")
            unknown[0] = True  # what was told is taken in part at most
            with contextlib.suppress(Exception):
                store.forget()  # meanwhile every write of this replica's conflicts, and reads all
            if not pending:
                pending.append(loop.call_later(1.0, resync))
            return
        # A read since (a write of this replica's that lost a race) may have taken the new
        # version already: the watches are woken for it here all the same.
        moved = state.version != woken[0]
        woken[0] = state.version
        if changes is None or changes.policy:
            notifier.notify()
            after()
        elif served or announced or moved:
            notifier.notify_soon()  # registry changes: coalesced, as this replica's own are

    def schedule(events: list[StoreEvent] | None) -> None:
        if events is None:
            unknown[0] = True
        else:
            told.extend(events)
        if not pending:
            pending.append(loop.call_later(delay, resync))

    def changed(events: list[StoreEvent] | None) -> None:
        loop.call_soon_threadsafe(schedule, events)

    return changed


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _size(limit: int) -> str:
    return f"{limit // 1048576} MiB" if limit >= 1048576 else f"{limit // 1024} KiB"


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The request body as JSON: at most ``limit`` bytes and ``MAX_JSON_DEPTH`` levels deep."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body is larger than {_size(limit)}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is larger than {_size(limit)}")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        data = json.loads(body or b"null")
    except RecursionError:
        data = _TOO_DEEP
    except ValueError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    # Fewer brackets than the limit cannot nest deeper than it (a watch or a registration):
    # counting them is C-speed, the walk is ~4% of the service's CPU in a watch fan-out.
    if data is _TOO_DEEP or (
        body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _depth(data) > MAX_JSON_DEPTH
    ):
        raise HTTPError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


_TOO_DEEP = object()


def _depth(data: Any) -> int:
    """How deeply lists and objects nest (iterative: a deep document cannot exhaust the stack)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        if level > MAX_JSON_DEPTH:
            break
        pending.extend((child, level + 1) for child in item)
    return deepest


def parse_model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(f"{format_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HTTPError(400, f"invalid {model.__name__}: {detail}") from None


def require_admin(admin_token: str) -> Callable[[Handler], Handler]:
    """A decorator: the handler runs only for ``Authorization: Bearer <admin token>``."""

    def admin(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not check_bearer(request.headers.get("authorization"), admin_token):
                message = (
                    "missing admin token" if "authorization" not in request.headers else "wrong admin token"
                )
                return JSONResponse(
                    {"error": message},
                    status_code=401,
                    headers={"www-authenticate": 'Bearer realm="meshlib"'},
                )
            return await handler(request)

        return guarded

    return admin


def json_errors(handler: Handler) -> Handler:
    """Errors the handler raises on purpose become JSON answers with their status; anything
    else is logged and answered 500 without details (handlers check a write whole before
    storing it, so an unexpected error leaves the state as it was)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except HTTPError as exc:
            return _error(exc.status, str(exc))
        except ConfigError as exc:
            return _error(422, "invalid resources", issues=[i.to_json() for i in exc.issues])
        except ClientDisconnect:
            # The caller left before its request was read (a workload that ended a watch to
            # ask again with more hosts, one that stopped): nobody to answer, nothing changed.
            log.debug(
                "%s %s: the client disconnected before its request was read", request.method, request.url.path
            )
            return Response(status_code=499)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "internal error in the config service; nothing was changed")

    return wrapped


def create_app(
    state: ConfigState,
    admin_token: str,
    *,
    reap_interval: float = 5.0,
    extra_routes: list[Route] | None = None,
    tokens: TokenRegistry | None = None,
    open_registry: bool = False,
    consul: ConsulSettings | None = None,
) -> Starlette:
    """The /v1 API over ``state``; writes need ``Authorization: Bearer <admin token>``.

    The workload API (registration, watch, ACK/NACK) is bound to identities: a workload
    proves its identity with its bootstrap token and acts only as that identity, so no
    caller on the network can announce itself as, or withdraw, or speak for another
    workload. ``open_registry`` (``meshctl serve --insecure-open-registry``) lets callers
    without credentials register identities that never had a token, for meshes that do not
    use the CA; identities with tokens stay protected in that mode too. With ``consul`` the
    service watches Consul for the ServiceEntries that name it (consul_source.py)."""
    notifier = VersionNotifier()
    registrations = RegistrationBatches(state, notifier)
    discovery: list[ConsulDiscovery] = []  # started with the app (it needs the loop)

    def entries_changed() -> None:
        for source in discovery:
            source.reconcile()

    gate = WorkloadGate(admin_token, tokens, open_registry=open_registry)
    if tokens is not None:
        tokens.on_revoke.append(notifier.notify)  # held watches check their token again
    board = EdgeBoard()

    admin = require_admin(admin_token)
    errors = json_errors

    def key_of(request: Request) -> ResourceKey:
        params = request.path_params
        info = find_kind(params["kind"])
        if info is None:
            raise HTTPError(404, f"unknown kind {params['kind']!r}")
        return ResourceKey(info.kind, params["namespace"], params["name"])

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": state.version})

    async def apply(request: Request) -> Response:
        body = parse_model(ApplyRequest, await read_json(request))
        outcome = state.apply(
            body.resources, namespace=body.namespace, dry_run=body.dry_run, strict=body.strict
        )
        results = outcome.results
        if not body.dry_run and any(r.action != "unchanged" for r in results):
            notifier.notify()
            entries_changed()
            log.info(
                "applied version %d: %s",
                state.version,
                ", ".join(f"{r.key} {r.action}" for r in results if r.action != "unchanged"),
            )
        if outcome.skipped:
            log.info("apply skipped %s", ", ".join(s.label for s in outcome.skipped))
        return JSONResponse(
            {
                "version": state.version,
                "dryRun": body.dry_run,
                "results": [r.to_json() for r in results],
                "skipped": [s.to_json() for s in outcome.skipped],
            }
        )

    async def list_resources(request: Request) -> Response:
        gate.reader(request)
        kind = request.query_params.get("kind")
        if kind is not None:
            info = find_kind(kind)
            if info is None:
                raise HTTPError(404, f"unknown kind {kind!r}")
            kind = info.kind
        items = state.resources(kind, request.query_params.get("namespace"))
        return JSONResponse({"version": state.version, "items": [i.manifest for i in items]})

    async def get_resource(request: Request) -> Response:
        gate.reader(request)
        item = state.get(key_of(request))
        if item is None:
            raise HTTPError(404, f"{key_of(request)} not found")
        return JSONResponse(item.manifest)

    async def delete_resource(request: Request) -> Response:
        key = key_of(request)
        if not state.delete([key]):
            raise HTTPError(404, f"{key} not found")
        notifier.notify()
        entries_changed()
        log.info("deleted %s at version %d", key, state.version)
        return JSONResponse({"version": state.version, "deleted": key._asdict()})

    async def snapshot(request: Request) -> Response:
        gate.reader(request)
        return Response(state.payload(), media_type="application/json")

    async def watch(request: Request) -> Response:
        caller = gate.reader(request)
        body = parse_model(WatchRequest, await read_json(request, MAX_REGISTRATION_BYTES))
        workload = body.workload
        handle = None
        if workload is not None:
            # Reports on a workload (it is alive, it acked or refused a version) come from it.
            registered = state.registration(workload)
            if registered is not None:
                gate.speaks_for(caller, registered.namespace, registered.service)
                nacked = (body.nack.version, body.nack.reason) if body.nack is not None else None
                if state.seen(workload, acked=body.ack, nacked=nacked):
                    notifier.notify_soon()
                handle = state.watch_begin(workload)
        revocations = tokens.revocations if tokens is not None else 0
        hosts = tuple(body.hosts) if body.hosts is not None else None
        seen, answer = body.version, NOTHING_NEW
        loop = asyncio.get_running_loop()
        try:
            deadline = loop.time() + body.wait
            waited = False
            while True:
                # Before the check, so no change can slip in between; a slice of 5 s at most.
                waiter = notifier.arm(min(deadline, loop.time() + 5.0))
                if tokens is not None and tokens.revocations != revocations:
                    revocations = tokens.revocations
                    gate.reader(request)  # 401 now if this watch's own token was revoked
                # Behind, but a burst of registry changes is still being gathered: take them
                # all in one answer when it closes (within the coalescing window).
                if state.version != seen and (not notifier.pending or loop.time() >= deadline):
                    gate.reader(request)  # still valid (not revoked or expired while it waited)
                    answer = state.answer(body.version, hosts, delta=body.delta, epoch=body.epoch, since=seen)
                    if answer:
                        break
                    seen = state.version  # nothing of its egress hosts changed: wait on
                    state.current_at(handle, body.version, seen)
                if notifier.closing:
                    return _error(503, "config service is shutting down")
                remaining = deadline - loop.time()
                # A watch that has just come in is connected; asking costs an anyio cancel
                # scope per call (15% of the service's CPU in a 5,000-watcher fan-out), so
                # only a watch that has waited a whole slice asks whether its caller left.
                if remaining <= 0 or (waited and await request.is_disconnected()):
                    return Response(status_code=204)
                waited = await waiter  # True: woken by the clock, not by a change
            return Response(answer, media_type="application/json", headers={EPOCH_HEADER: state.epoch})
        finally:
            state.watch_end(handle)

    async def put_workload(request: Request) -> Response:
        caller = gate.caller(request)
        registration = parse_model(WorkloadRegistration, await read_json(request, MAX_REGISTRATION_BYTES))
        if registration.id != request.path_params["id"]:
            raise HTTPError(400, f"workload id {registration.id!r} does not match the URL")
        gate.speaks_for(caller, registration.namespace, registration.service)

        def may_replace() -> None:  # what is registered under this id now is the caller's to replace
            previous = state.registration(registration.id)
            if previous is not None and (previous.namespace, previous.service) != (
                registration.namespace,
                registration.service,
            ):
                gate.speaks_for(caller, previous.namespace, previous.service)

        may_replace()  # a refusal at once, without waiting for the batch
        try:
            await registrations.register(registration, may_replace)
        except RegistryFull as exc:
            raise HTTPError(exc.status, str(exc)) from None
        return JSONResponse({"version": state.version, "identity": registration.identity(state.trust_domain)})

    async def delete_workload(request: Request) -> Response:
        caller = gate.caller(request)
        previous = state.registration(request.path_params["id"])
        if previous is not None:
            gate.speaks_for(caller, previous.namespace, previous.service)
        elif caller.anonymous and not gate.open_registry:
            gate.reader(request)  # says what is missing
        board.drop(request.path_params["id"])
        if state.deregister(request.path_params["id"]):
            notifier.notify_soon()
        return JSONResponse({"version": state.version})

    async def put_edges(request: Request) -> Response:
        caller = gate.caller(request)
        workload = request.path_params["id"]
        registration = state.registration(workload)
        if registration is None:
            if caller.anonymous and not gate.open_registry:
                gate.reader(request)  # says what is missing
            raise HTTPError(404, f"workload {workload!r} is not registered; register it first")
        gate.speaks_for(caller, registration.namespace, registration.service)
        board.put(workload, parse_model(EdgeReport, await read_json(request, MAX_EDGE_REPORT_BYTES)))
        return Response(status_code=204)

    async def list_edges(request: Request) -> Response:
        gate.reader(request)
        return JSONResponse({"edges": board.edges()})

    async def list_discovery(request: Request) -> Response:
        gate.reader(request)
        if discovery:
            return JSONResponse({"version": state.version, "consul": discovery[0].status()})
        # Without --consul: entries that name it are served with what the store last held.
        items = [
            {
                **target.to_json(),
                "entries": [f"{e.namespace}/{e.name}" for e in entries],
                "state": "not configured",
                "instances": len(found) if (found := state.discovered(target)) is not None else None,
                "stale": True,
                "error": "this config service was started without --consul: "
                "the instances stored last are served",
            }
            for target, entries in sorted(state.consul_targets().items())
        ]
        return JSONResponse({"version": state.version, "consul": items})

    async def list_workloads(request: Request) -> Response:
        gate.reader(request)
        summary = request.query_params.get("summary")
        if summary not in (None, "true", "false"):
            raise HTTPError(400, f"summary must be true or false, not {summary!r}")
        if summary == "true":
            return JSONResponse(state.summary())
        return JSONResponse({"version": state.version, "items": [w.to_json() for w in state.workloads()]})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def housekeeping() -> None:
            while True:
                await asyncio.sleep(reap_interval)
                try:
                    if state.reap():
                        notifier.notify_soon()
                    if state.flush():
                        notifier.notify_soon()
                    entries_changed()  # also catches up after a failed reconcile
                except Exception:
                    log.exception("registry housekeeping failed; will retry")

        if consul is not None:
            from .consul_source import ConsulDiscovery

            discovery.append(ConsulDiscovery(consul, state, notifier.notify))
            entries_changed()
        elif state.consul_targets():
            for target, entries in sorted(state.consul_targets().items()):
                log.error(
                    "ServiceEntry %s names Consul service %s but this config service has no --consul: "
                    "serving the instances stored last, which nothing updates",
                    ", ".join(f"{e.namespace}/{e.name}" for e in entries),
                    target.name,
                )
        task = asyncio.create_task(housekeeping())
        follow = getattr(state.store, "follow", None)
        if follow is not None:  # a shared store: other replicas change it too
            follow(_follower(state, state.store, notifier, tokens, after=entries_changed))  # type: ignore[arg-type]
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for source in discovery:
                await source.close()
            state.flush()

    routes = [
        Route("/v1/healthz", errors(healthz), methods=["GET"]),
        Route("/v1/apply", errors(admin(apply)), methods=["POST"]),
        Route("/v1/resources", errors(list_resources), methods=["GET"]),
        Route("/v1/resources/{kind}/{namespace}/{name}", errors(get_resource), methods=["GET"]),
        Route("/v1/resources/{kind}/{namespace}/{name}", errors(admin(delete_resource)), methods=["DELETE"]),
        Route("/v1/snapshot", errors(snapshot), methods=["GET"]),
        Route("/v1/watch", errors(watch), methods=["POST"]),
        Route("/v1/workloads", errors(list_workloads), methods=["GET"]),
        Route("/v1/workloads/{id}", errors(put_workload), methods=["PUT"]),
        Route("/v1/workloads/{id}", errors(delete_workload), methods=["DELETE"]),
        Route("/v1/workloads/{id}/edges", errors(put_edges), methods=["POST"]),
        Route("/v1/edges", errors(list_edges), methods=["GET"]),
        Route("/v1/discovery", errors(list_discovery), methods=["GET"]),
        *(extra_routes or []),
    ]
    app = _ConfigApp(routes=routes, lifespan=lifespan)
    app.direct[("POST", "/v1/watch")] = errors(watch)
    app.state.notifier = notifier
    app.state.registrations = registrations
    return app


class _ConfigApp(Starlette):
    """Starlette, with the watch answered directly: every workload sends one per change, and
    the router, the two exception middlewares and ``request_response`` around it cost about a
    quarter of the service's CPU in a 5,000-watcher fan-out (each layer is also resumed again
    whenever a waiting watch wakes). ``json_errors`` already turns every exception into an
    answer, which is what those layers add."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct: dict[tuple[str, str], Handler] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.direct.get((scope["method"], scope["path"]))
            if handler is not None:
                scope["app"] = self
                response = await handler(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
