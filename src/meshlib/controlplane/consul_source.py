"""The Consul discovery source (``meshctl serve --consul URL``): ServiceEntries annotated
``discovery.meshlib.io/source: consul`` (policy/discovery.py) take their endpoints from
Consul's passing instances of a service, as Istio's Consul adapter did in its control plane.

One watch per Consul service (and datacenter) that some entry names, started and stopped as
entries come and go. Each is a loop of Consul blocking queries on ``/v1/health/service/<name>
?passing``, with the documented rules (Consul's "Blocking Queries"): the ``X-Consul-Index``
of an answer is the ``index`` of the next query, which Consul holds until the result changes
or ``wait`` passes; an index that goes backwards restarts at 0, one below 1 is taken as 1; a
token bucket (burst 2) bounds the loop when the result churns; failures back off, jittered.

How what it finds reaches workloads, and how replicas agree: the instances of a service are
stored through the store, as one record (``ConfigState.put_discovered``, a resource of kind
``_Discovered``) written at a new version only when they differ from the stored ones. The
write is the same versioned commit as an apply: on etcd it is a compare-and-swap on the
version, so two replicas watching the same Consul never publish the same version with
different contents; the one that loses re-reads, finds the instances already stored, and
writes nothing. Other replicas (also those without ``--consul``) read the record with the
rest of the store. Snapshots carry the records of the services in use (``discovered``) and
each workload turns them into the entry's endpoints (``protocol.decode_snapshot``).

When Consul cannot be reached the stored instances stay (the last answer), the watch says so
in the log and in ``GET /v1/discovery``, and retries with back-off. The ACL token goes in the
``X-Consul-Token`` header only; it is never logged or shown.

The client is py-consul (``meshlib[consul]``; its API builds the query and maps Consul's
errors). Its own HTTP adapters do not fit here: ``consul.std`` blocks a thread per watch for
the whole wait (and cannot be cancelled when an entry goes), and ``consul.aio`` needs aiohttp
(another HTTP stack, not a dependency of meshlib). py-consul lets a client bring its adapter
(``http_connect``), so the queries go through httpx's async client on the service's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..core.rate_limit import Bucket
from ..errors import MeshError
from ..names import check_locality
from ..policy.discovery import ConsulTarget
from ..policy.resources import ServiceEntry
from ..policy.service_entry import TLS_MODE_LABEL, _is_ip
from .state import ConfigState

__all__ = ["ConsulDiscovery", "ConsulSettings", "instances_of"]

log = logging.getLogger("meshlib.controlplane.consul")

_LABEL_KEY = re.compile(
    r"^([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$"
)
_MAX_LABEL_KEY, _MAX_LABEL_VALUE = 253, 512  # Consul bounds Service.Meta values at 512 characters


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """Where the Consul agent is and how to ask it. ``token`` is never shown (repr=False)."""

    url: str = "http://127.0.0.1:8500"
    token: str | None = field(default=None, repr=False)
    wait: float = 60.0  # seconds a blocking query is held (Consul's default: 5 min, at most 10)
    burst: int = 2  # queries in a row before the rate limit (Consul's docs: a bucket of 2)
    interval: float = 1.0  # then at most one query per this many seconds while the answer churns
    backoff: tuple[float, float] = (0.25, 30.0)  # first and longest pause after a failure
    ca_file: str | None = None  # https: the CA bundle Consul's certificate is verified by

    @classmethod
    def from_options(cls, url: str, token_file: Path | None = None) -> ConsulSettings:
        """``--consul URL [--consul-token-file F]``; else the token in ``$CONSUL_HTTP_TOKEN_FILE``
        or ``$CONSUL_HTTP_TOKEN`` and the CA in ``$CONSUL_CACERT`` (Consul's own variables)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise MeshError(f"--consul {url!r}: expected http://host:port or https://host:port")
        if parts.username is not None or parts.password is not None:
            # Never echoed back: the URL may hold a secret.
            raise MeshError(
                "--consul: a user or password in the URL is not used by Consul's API; give the ACL "
                "token with --consul-token-file (or $CONSUL_HTTP_TOKEN_FILE) instead"
            )
        if parts.query or parts.fragment:
            raise MeshError(
                f"--consul {url!r}: a query or fragment has no effect; name the datacenter per entry "
                "with the discovery.meshlib.io/consul-datacenter annotation"
            )
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise MeshError(f"--consul {url!r}: the port is not a number") from None
        file = token_file or (
            Path(os.environ["CONSUL_HTTP_TOKEN_FILE"]) if "CONSUL_HTTP_TOKEN_FILE" in os.environ else None
        )
        token = os.environ.get("CONSUL_HTTP_TOKEN") or None
        if file is not None:
            try:
                token = file.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise MeshError(f"Consul token file {file}: {exc.strerror}") from None
        return cls(url.rstrip("/"), token, ca_file=os.environ.get("CONSUL_CACERT") or None)


def instances_of(entries: Any, datacenter: str) -> list[dict[str, Any]]:
    """Consul's ``/v1/health/service`` answer as instances: address (Service.Address, else
    Node.Address), port, labels (Service.Meta, then ``key=value`` or Istio's ``key|value``
    tags, then bare tags as ``<tag>: "true"``; the first of these wins for a key), locality
    (the datacenter, as the region) and weight (Service.Weights.Passing). Sorted, so that the
    same instances always compare equal; an instance without an address or port is left out."""
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    for item in entries if isinstance(entries, list) else ():
        node = item.get("Node") if isinstance(item, dict) else None
        service = item.get("Service") if isinstance(item, dict) else None
        if not isinstance(node, dict) or not isinstance(service, dict):
            continue
        address = str(service.get("Address") or node.get("Address") or "").strip("[]")
        port = service.get("Port")
        if not address or not isinstance(port, int) or not 1 <= port <= 65535 or not _valid_address(address):
            continue
        instance: dict[str, Any] = {"address": address, "port": port, "labels": _labels(service)}
        dc = str(node.get("Datacenter") or datacenter)
        with contextlib.suppress(ValueError):
            if dc:
                instance["locality"] = check_locality(dc)
        weights = service.get("Weights")
        passing = weights.get("Passing") if isinstance(weights, dict) else None
        if isinstance(passing, int) and passing > 1:
            instance["weight"] = passing
        out[(address, port, str(service.get("ID") or ""))] = instance
    return [out[key] for key in sorted(out)]


def skipped_instances(instances: list[dict[str, Any]], entries: list[ServiceEntry]) -> dict[str, str]:
    """Entries (``namespace/name``) that cannot use some of the instances, and why: with
    resolution STATIC an endpoint is an IP address (as in Istio), so instances Consul knows by
    host name are left out of it; resolution DNS would resolve them."""
    names = sorted({str(i.get("address")) for i in instances if not _is_ip(str(i.get("address")))})
    if not names:
        return {}
    reason = (
        f"{len(names)} Consul instance address(es) are host names ({', '.join(names[:3])}"
        f"{', ...' if len(names) > 3 else ''}), which resolution STATIC does not use (it takes IP "
        "addresses only): set resolution DNS to resolve them, or register the instances by IP address"
    )
    return {f"{e.namespace}/{e.name}": reason for e in entries if e.spec.mode == "STATIC"}


def _valid_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return len(address) <= 253 and all(
            re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", part) for part in address.split(".")
        )
    return True


def _labels(service: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    meta = service.get("Meta")
    tags = service.get("Tags")
    pairs: list[tuple[str, str]] = list(meta.items()) if isinstance(meta, dict) else []
    bare: list[tuple[str, str]] = []
    for tag in tags if isinstance(tags, list) else ():
        text = str(tag)
        key, sep, value = text.partition("=") if "=" in text else text.partition("|")
        (pairs if sep else bare).append((key, value) if sep else (text, "true"))
    for key, value in (*pairs, *bare):
        key, value = str(key), str(value)
        # Consul Connect's mTLS is not the mesh's: a tlsMode label would ask for mesh mTLS.
        if key == TLS_MODE_LABEL or len(key) > _MAX_LABEL_KEY or len(value) > _MAX_LABEL_VALUE:
            continue
        if _LABEL_KEY.match(key):
            labels.setdefault(key, value)
    return dict(sorted(labels.items()))


def _client(settings: ConsulSettings) -> Any:
    """A py-consul client whose HTTP goes through httpx's async client (see the module docstring)."""
    import consul.base  # type: ignore[import-untyped]  # meshlib[consul]; imported here: others skip it

    class HttpxAdapter(consul.base.HTTPClient):  # type: ignore[misc]
        def __init__(self, host: str, port: int, scheme: str, verify: bool | str, cert: Any) -> None:
            super().__init__(host, port, scheme, verify, cert)
            self.session = httpx.AsyncClient(verify=settings.ca_file or True)
            self.headers: httpx.Headers = httpx.Headers()

        async def _get(self, callback: Any, path: str, params: Any, headers: Any) -> Any:
            # Consul holds a blocking query up to wait + wait/16 (its jitter) before answering.
            timeout = httpx.Timeout(10.0, read=settings.wait * 17 / 16 + 10.0)
            response = await self.session.get(self.uri(path, params), headers=headers, timeout=timeout)
            self.headers = response.headers
            return callback(consul.base.Response(response.status_code, response.headers, response.text))

        def get(
            self, callback: Any, path: str, params: Any = None, headers: Any = None, raw: bool = False
        ) -> Any:
            return self._get(callback, path, params, headers)

        def put(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("meshlib only reads Consul's health API")

        delete = post = put

        async def close(self) -> None:
            await self.session.aclose()

    class Client(consul.base.Consul):  # type: ignore[misc]
        def http_connect(
            self, host: str, port: int, scheme: str, verify: bool | str = True, cert: Any = None
        ) -> Any:
            return HttpxAdapter(host, port, scheme, verify, cert)

    parts = urlsplit(settings.url)
    default = 443 if parts.scheme == "https" else 8500
    return Client(host=parts.hostname, port=parts.port or default, scheme=parts.scheme)


@dataclass(slots=True)
class _Watch:
    target: ConsulTarget
    task: asyncio.Task[None] | None = None
    index: int = 0
    answers: int = 0
    last_answer: float | None = None  # wall clock of the last good answer
    last_change: float | None = None
    error: str | None = None
    failing_since: float | None = None
    known_leader: bool | None = None
    last_contact_ms: int | None = None
    instances: int | None = None

    def to_json(self, stored: list[dict[str, Any]] | None, entries: list[ServiceEntry]) -> dict[str, Any]:
        return {
            **self.target.to_json(),
            "entries": [f"{e.namespace}/{e.name}" for e in entries],
            "skipped": skipped_instances(stored or [], entries),
            "state": "failing" if self.error else ("watching" if self.answers else "starting"),
            "index": self.index,
            "instances": len(stored) if stored is not None else None,
            "lastAnswer": self.last_answer,
            "lastChange": self.last_change,
            "error": self.error,
            "failingSince": self.failing_since,
            "stale": self.error is not None,
            "knownLeader": self.known_leader,
            "lastContactMs": self.last_contact_ms,
        }


class ConsulDiscovery:
    """The watches of one config service. ``changed()`` is called (on the loop) after every new
    version a watch stored; ``reconcile()`` after the entries may have changed."""

    def __init__(self, settings: ConsulSettings, state: ConfigState, changed: Callable[[], None]) -> None:
        self.settings = settings
        self._state = state
        self._changed = changed
        self._watches: dict[ConsulTarget, _Watch] = {}
        self._client: Any = None
        self._closed = False

    def reconcile(self) -> None:
        """Start a watch for each Consul service entries name, stop those no entry names, and
        remove what is stored for them. On the service's event loop."""
        if self._closed:
            return
        wanted = self._state.consul_targets()
        for target in [t for t in self._watches if t not in wanted]:
            watch = self._watches.pop(target)
            if watch.task is not None:
                watch.task.cancel()
            log.info("Consul service %s: no ServiceEntry names it any more; watch stopped", target.name)
        if self._client is None and wanted:
            self._client = _client(self.settings)
        for target in sorted(wanted):
            if target not in self._watches:
                watch = self._watches[target] = _Watch(target)
                watch.task = asyncio.get_running_loop().create_task(self._run(watch))
        if self._state.drop_unused_discovered():
            self._changed()

    def status(self) -> list[dict[str, Any]]:
        """What ``GET /v1/discovery`` shows for each watch."""
        entries = self._state.consul_targets()
        return [
            watch.to_json(self._state.discovered(target), entries.get(target, []))
            for target, watch in sorted(self._watches.items())
        ]

    async def close(self) -> None:
        self._closed = True
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watches.clear()
        if self._client is not None:
            await self._client.http.close()

    async def _run(self, watch: _Watch) -> None:
        settings = self.settings
        bucket = Bucket(settings.burst, 1, settings.interval, time.monotonic())
        pause = settings.backoff[0]
        while True:
            delay = bucket.take(time.monotonic())
            if delay is not None:  # the answer churns: degrade to one query per interval
                await asyncio.sleep(delay)
                continue
            try:
                index, entries = await self._query(watch)
                self._answered(watch, index, entries)  # stores them: a store failure retries too
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(watch, exc)
                await asyncio.sleep(random.uniform(pause / 2, pause))  # full jitter on the back-off
                pause = min(pause * 2, settings.backoff[1])
                continue
            pause = settings.backoff[0]

    async def _query(self, watch: _Watch) -> tuple[int, Any]:
        target = watch.target
        http = self._client.http
        raw_index, entries = await self._client.health.service(
            target.service,
            index=watch.index or None,  # 0: a plain query, answered at once
            wait=f"{self.settings.wait:g}s",
            passing=True,
            dc=target.datacenter or None,
            token=self.settings.token,
        )
        headers = http.headers
        watch.known_leader = headers.get("x-consul-knownleader", "").lower() == "true"
        contact = headers.get("x-consul-lastcontact", "")
        watch.last_contact_ms = int(contact) if contact.isdigit() else None
        try:
            return int(raw_index), entries
        except (TypeError, ValueError):
            raise ValueError(f"X-Consul-Index {raw_index!r} is not a number") from None

    def _answered(self, watch: _Watch, index: int, entries: Any) -> None:
        target = watch.target
        # Backwards (a snapshot restored, a new leader): start over at 0. Never below 1
        # otherwise: a query at index 0 would not block, and the loop would spin.
        next_index = 0 if index < watch.index else max(index, 1)
        watch.answers += 1
        watch.last_answer = time.time()
        if watch.error is not None:
            log.info("Consul service %s answers again (index %d)", target.name, index)
            watch.error = watch.failing_since = None
        instances = instances_of(entries, target.datacenter)
        watch.instances = len(instances)
        changed = self._state.put_discovered(target, instances)
        # Only once stored: a failed write is asked again at the old index, at once.
        watch.index = next_index
        if changed:
            watch.last_change = watch.last_answer
            log.info(
                "Consul service %s: %d passing instance(s) at index %d: config version %d",
                target.name,
                len(instances),
                index,
                self._state.version,
            )
            for entry, reason in skipped_instances(
                instances, self._state.consul_targets().get(target, [])
            ).items():
                log.warning("ServiceEntry %s: %s", entry, reason)
            self._changed()

    def _failed(self, watch: _Watch, exc: Exception) -> None:
        reason = _describe(exc)
        stored = self._state.discovered(watch.target)
        kept = (
            f"keeping the last {len(stored)} instance(s)" if stored is not None else "no instances known yet"
        )
        if watch.error != reason:
            log.warning("Consul service %s: %s; %s, retrying", watch.target.name, reason, kept)
        if watch.failing_since is None:
            watch.failing_since = time.time()
        watch.error = reason


def _describe(exc: Exception) -> str:
    """A failure in words, without the token (it is in a header, never in a URL or a body)."""
    name = type(exc).__name__
    if isinstance(exc, httpx.HTTPError):
        return f"Consul agent unreachable ({name}: {exc})"
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if name == "ACLPermissionDenied":
        return f"Consul refused the ACL token (403 {text}): give a token with service:read"
    return f"{name}: {text}" if text else name
