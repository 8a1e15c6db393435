"""The config service as an ASGI app (Starlette): the versioned /v1 API.

| method and path                         | who      | what                                   |
|-----------------------------------------|----------|----------------------------------------|
| GET    /v1/healthz                       | anyone   | liveness and current version           |
| POST   /v1/apply                         | admin    | validate and store resources, atomic   |
| GET    /v1/resources[?kind=&namespace=]  | anyone   | list stored resources                  |
| GET    /v1/resources/{kind}/{ns}/{name}  | anyone   | one resource                           |
| DELETE /v1/resources/{kind}/{ns}/{name}  | admin    | remove one resource                    |
| GET    /v1/snapshot                      | anyone   | the current snapshot                   |
| POST   /v1/watch                         | workload | long poll for a newer snapshot; ACK/NACK |
| PUT    /v1/workloads/{id}                | workload | register or update a workload (token*) |
| DELETE /v1/workloads/{id}                | workload | deregister (token*)                    |
| GET    /v1/workloads                     | anyone   | registry and acknowledged versions     |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..ca.tokens import TokenError, TokenRegistry
from ..errors import ConfigError
from ..policy.resources import ResourceKey, find_kind
from ..policy.validate import format_path
from ..registry import WorkloadRegistration
from .auth import check_bearer
from .protocol import MAX_BODY_BYTES, ApplyRequest, WatchRequest
from .state import ConfigState

__all__ = [
    "HTTPError",
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


class VersionNotifier:
    """Wakes every waiting watch at once; bursts of registry changes are coalesced."""

    def __init__(self, coalesce: float = 0.05) -> None:
        self._future: asyncio.Future[None] | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._coalesce = coalesce
        self.closing = False

    def arm(self) -> asyncio.Future[None]:
        """The future the next change resolves. Take it *before* checking the version: a
        change landing between the check and the wait then still wakes the waiter."""
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    def notify(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    def close(self) -> None:
        """Shutting down: release every waiting watch now instead of at its timeout."""
        self.closing = True
        self.notify()

    def notify_soon(self) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self._coalesce, self.notify)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPError(413, f"request body is larger than {MAX_BODY_BYTES // 1048576} MiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPError(413, f"request body is larger than {MAX_BODY_BYTES // 1048576} MiB")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None


def parse_model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(f"{format_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HTTPError(400, f"invalid {model.__name__}: {detail}") from None


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
    """Errors the handler raises on purpose become JSON answers with their status."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except HTTPError as exc:
            return _error(exc.status, str(exc))
        except ConfigError as exc:
            return _error(422, "invalid resources", issues=[i.to_json() for i in exc.issues])

    return wrapped


def create_app(
    state: ConfigState,
    admin_token: str,
    *,
    reap_interval: float = 5.0,
    extra_routes: list[Route] | None = None,
    tokens: TokenRegistry | None = None,
) -> Starlette:
    """The /v1 API over ``state``; writes need ``Authorization: Bearer <admin token>``.

    With ``tokens``, the registry is bound to identities: a workload that sends its
    bootstrap token may register (or deregister) only as the token's identity, and once an
    identity has tokens, nobody registers or deregisters it without one. So no caller on
    the network can announce itself as, or withdraw, a service that uses mesh identity
    (clients would otherwise send it plaintext). Identities without tokens stay open, for
    meshes that do not use the CA."""
    notifier = VersionNotifier()

    def check_identity(request: Request, namespace: str, service: str) -> None:
        if tokens is None:
            return
        header = request.headers.get("authorization")
        if header:
            scheme, _, secret = header.partition(" ")
            try:
                record = tokens.verify(secret if scheme.lower() == "bearer" else None)
            except TokenError as exc:
                raise HTTPError(401, str(exc)) from None
            if (record.namespace, record.service) != (namespace, service):
                raise HTTPError(
                    403,
                    f"bootstrap token {record.id} is for {record.namespace}/{record.service}, "
                    f"not {namespace}/{service}",
                )
        elif tokens.issued_for(namespace, service):
            raise HTTPError(
                401,
                f"{namespace}/{service} has bootstrap tokens: its workloads must send theirs "
                "(Authorization: Bearer <token>)",
            )

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
        results = state.apply(body.resources, namespace=body.namespace, dry_run=body.dry_run)
        if not body.dry_run and any(r.action != "unchanged" for r in results):
            notifier.notify()
            log.info(
                "applied version %d: %s",
                state.version,
                ", ".join(f"{r.key} {r.action}" for r in results if r.action != "unchanged"),
            )
        return JSONResponse(
            {"version": state.version, "dryRun": body.dry_run, "results": [r.to_json() for r in results]}
        )

    async def list_resources(request: Request) -> Response:
        kind = request.query_params.get("kind")
        if kind is not None:
            info = find_kind(kind)
            if info is None:
                raise HTTPError(404, f"unknown kind {kind!r}")
            kind = info.kind
        items = state.resources(kind, request.query_params.get("namespace"))
        return JSONResponse({"version": state.version, "items": [i.manifest for i in items]})

    async def get_resource(request: Request) -> Response:
        item = state.get(key_of(request))
        if item is None:
            raise HTTPError(404, f"{key_of(request)} not found")
        return JSONResponse(item.manifest)

    async def delete_resource(request: Request) -> Response:
        key = key_of(request)
        if not state.delete([key]):
            raise HTTPError(404, f"{key} not found")
        notifier.notify()
        log.info("deleted %s at version %d", key, state.version)
        return JSONResponse({"version": state.version, "deleted": key._asdict()})

    async def snapshot(request: Request) -> Response:
        return Response(state.payload(), media_type="application/json")

    async def watch(request: Request) -> Response:
        body = parse_model(WatchRequest, await read_json(request))
        workload = body.workload
        if workload is not None:
            nacked = (body.nack.version, body.nack.reason) if body.nack is not None else None
            if state.seen(workload, acked=body.ack, nacked=nacked, watching=1):
                notifier.notify_soon()
        try:
            deadline = time.monotonic() + body.wait
            while True:
                waiter = notifier.arm()  # before the check, so no change can slip in between
                if state.version != body.version:
                    break
                if notifier.closing:
                    return _error(503, "config service is shutting down")
                remaining = deadline - time.monotonic()
                if remaining <= 0 or await request.is_disconnected():
                    return Response(status_code=204)
                # asyncio.wait never cancels the shared future when one waiter times out.
                await asyncio.wait((waiter,), timeout=min(remaining, 5.0))
            return Response(state.payload(), media_type="application/json")
        finally:
            if workload is not None:
                state.seen(workload, watching=-1)

    async def put_workload(request: Request) -> Response:
        registration = parse_model(WorkloadRegistration, await read_json(request))
        if registration.id != request.path_params["id"]:
            raise HTTPError(400, f"workload id {registration.id!r} does not match the URL")
        check_identity(request, registration.namespace, registration.service)
        previous = state.registration(registration.id)
        if previous is not None and (previous.namespace, previous.service) != (
            registration.namespace,
            registration.service,
        ):
            check_identity(request, previous.namespace, previous.service)
        if state.register(registration):
            notifier.notify_soon()
        return JSONResponse({"version": state.version, "identity": registration.identity(state.trust_domain)})

    async def delete_workload(request: Request) -> Response:
        previous = state.registration(request.path_params["id"])
        if previous is not None:
            check_identity(request, previous.namespace, previous.service)
        if state.deregister(request.path_params["id"]):
            notifier.notify_soon()
        return JSONResponse({"version": state.version})

    async def list_workloads(request: Request) -> Response:
        return JSONResponse({"version": state.version, "items": [w.to_json() for w in state.workloads()]})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def housekeeping() -> None:
            while True:
                await asyncio.sleep(reap_interval)
                try:
                    if state.reap():
                        notifier.notify_soon()
                    state.flush()
                except Exception:
                    log.exception("registry housekeeping failed; will retry")

        task = asyncio.create_task(housekeeping())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        *(extra_routes or []),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.notifier = notifier
    return app
