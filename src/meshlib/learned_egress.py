"""Egress hosts learned from traffic: a workload receives the endpoints of the services it calls.

With ``Mesh(learn_egress=True)`` (``MESH_EGRESS_LEARN=1``) a workload starts with the policy and
the registry entries of its declared egress hosts only. The first request to a host it has not
called yet asks for that host (and every destination its VirtualService routes to) and waits,
at most ``LEARN_TIMEOUT``, until the config service has sent a snapshot that covers it: the
watcher drops its long poll and asks again with the longer list, for the whole snapshot of the
new scope. Later requests to that host pay one set lookup. This is Linkerd's on-demand
discovery and Envoy's on-demand cluster discovery, by the same means as Istio's Sidecar
``egress.hosts`` (``meshlib.egress_scope``).

A host that no policy names and that is no ``<service>.<namespace>.svc`` name is outside the
mesh (policy comes whole; only service names are in the registry alone): it goes out at once
and is never asked for. While the config service is unreachable nothing waits: the host is
learned, and the next watch asks for it. More hosts than a watch can carry
(``MAX_EGRESS_HOSTS``) switch the workload to the whole registry, as if it had declared none.

Called from the data plane (any thread, any event loop) and from the watcher (the Mesh's loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from .core.deadline import current_deadline
from .core.hosts import CLUSTER_DOMAIN, host_candidates
from .core.routing_table import RoutingTable
from .egress_scope import MAX_EGRESS_BYTES, MAX_EGRESS_HOSTS, EgressScope, parse_egress_host

__all__ = ["LEARN_TIMEOUT", "LearnedEgress", "Waiting", "learn_limit", "wait_learned", "wait_learned_async"]

log = logging.getLogger("meshlib")

# How long the first request to a new host waits for its endpoints (Envoy's on-demand cluster
# discovery waits up to 5 s by default; a config service answers a rescoped watch in
# milliseconds, and one that is down should not hold every new host's first request long).
LEARN_TIMEOUT = 2.0

Waiting = concurrent.futures.Future[None]


class LearnedEgress:
    """The egress hosts a workload has declared and learned, and the requests waiting for them."""

    def __init__(self, declared: Sequence[str], namespace: str) -> None:
        self._namespace = namespace
        self._declared = tuple(declared)
        self._learned: dict[str, None] = {}  # canonical entries, in the order they were learned
        self._scope = EgressScope(self._declared)  # declared and learned: what a watch names
        self._size = sum(len(h) + 3 for h in self._declared)  # as JSON in each watch request
        self._whole = False  # more than a watch carries: the whole registry
        # Requested hosts (with the table's family) whose entries are all covered in the
        # snapshot ``_snapshot``; another snapshot may route them to new destinations (or,
        # rescoped, hold what they were waiting for), so each is looked at again once.
        self._seen: set[tuple[str, str]] = set()
        self._snapshot: object = None
        self._waiting: dict[str, Waiting] = {}  # entry -> resolved once a snapshot covers it
        self._lock = threading.Lock()
        self.wake: Callable[[], None] | None = None  # the watcher's: ask again, now
        self.watcher_thread: int | None = None  # a request made there must not wait for it
        # The watcher's last round reached a config service: only then is an answer coming
        # soon enough to wait for (down, or closed: learn now, ask when it is back).
        self.connected = False

    @property
    def whole_registry(self) -> bool:
        return self._whole

    def hosts(self) -> list[str] | None:
        """What the next watch asks for: declared and learned entries (None: the whole registry).
        Learned ones sorted, so that workloads calling the same hosts ask alike (the config
        service keeps one answer per distinct list)."""
        with self._lock:
            return None if self._whole else [*self._declared, *sorted(self._learned)]

    def wanted(self, table: RoutingTable, host: str, fqdn: str | None) -> Waiting | None:
        """Called for every mesh-bound request: None when nothing is to be learned for ``host``
        (a set lookup), else a future that is done once a snapshot covers what it needs."""
        if table.snapshot is self._snapshot and (host, table.family) in self._seen:
            return None
        return self._learn(table, host, fqdn)

    def _learn(self, table: RoutingTable, host: str, fqdn: str | None) -> Waiting | None:
        entries = self._entries(table, host, fqdn)
        with self._lock:
            if table.snapshot is not self._snapshot:
                self._seen, self._snapshot = set(), table.snapshot
            new = [e for e in entries if e not in self._learned and not self._covers(e)]
            if self._whole:
                new = []
            pending = [self._waiting[e] for e in entries if e in self._waiting]
            if new:
                size = self._size + sum(len(e) + 3 for e in new)
                if len(self._declared) + len(self._learned) + len(new) > MAX_EGRESS_HOSTS or (
                    size > MAX_EGRESS_BYTES
                ):
                    log.warning(
                        "this workload calls more hosts than a watch names (%d); it now receives "
                        "the whole registry",
                        MAX_EGRESS_HOSTS,
                    )
                    self._whole = True
                else:
                    self._size = size
                    self._learned.update(dict.fromkeys(new))
                    self._scope = EgressScope((*self._declared, *self._learned))
                future: Waiting = concurrent.futures.Future()
                for entry in new:
                    self._waiting[entry] = future
                pending.append(future)
            if not pending:
                self._seen.add((host, table.family))  # all covered here: the fast path from now on
        if new:
            log.debug("learned egress hosts %s from a request to %s", ", ".join(new), host)
            wake = self.wake
            if wake is not None:
                wake()
        if not pending or not self.connected or threading.get_ident() == self.watcher_thread:
            # Nothing to wait for; or no answer is coming soon (the next watch asks); or this
            # is the watcher's own thread (a snapshot listener calling out): it would wait on itself.
            return None
        if len(pending) == 1:
            return pending[0]
        return _all_of(pending)

    def _covers(self, entry: str) -> bool:
        """Is ``entry`` (``*/fqdn``) in what is declared or learned already (``payments/*``
        declared covers ``reviews.payments.svc.cluster.local``)?"""
        fqdn = entry.partition("/")[2]
        return self._scope.admits(frozenset({(_namespace_of(fqdn), fqdn)}))

    def covered(self, sent: Iterable[str] | None) -> None:
        """A snapshot asked for with ``sent`` (None: the whole registry) is installed."""
        with self._lock:
            if sent is None:
                done = list(self._waiting.values())
                self._waiting.clear()
            else:
                done = [self._waiting.pop(e) for e in sent if e in self._waiting]
        for future in done:
            if not future.done():
                future.set_result(None)

    def close(self) -> None:
        """No answer will come: nothing waits from now on, and no one waits still."""
        self.connected = False
        self.covered(None)

    def _entries(self, table: RoutingTable, host: str, fqdn: str | None) -> list[str]:
        """Canonical egress entries for a request to ``host``: the mesh host it names and every
        destination its routes send to (or mirror to); for a host no policy names, the
        service names the registry may know it by. Policy comes whole, so a host that is no
        ``<service>.<namespace>.svc`` name and that no policy names is outside the mesh: it
        is never asked for (``api.github.com`` goes out at once)."""
        if fqdn is None:
            if host.lower() == "localhost":  # the machine itself, whatever the namespace
                return []
            names = [c for c in host_candidates(host, self._namespace) if c.endswith(_SERVICE_SUFFIX)]
        else:
            names = [fqdn]
            routes = table.host_routes(fqdn)
            for route in routes.routes if routes is not None else ():
                names.extend(t.host for t in route.targets)
                names.extend(t.host for t, _ in route.mirrors)
        entries: dict[str, None] = {}
        for name in dict.fromkeys(names):
            try:
                entries[parse_egress_host(f"*/{name}", self._namespace)] = None
            except ValueError:
                continue  # not a name the registry serves (a wildcard, an odd label)
        return list(entries)


_SERVICE_SUFFIX = f".svc.{CLUSTER_DOMAIN}"


def _namespace_of(fqdn: str) -> str:
    """The namespace of ``<service>.<namespace>.svc.<domain>``; ``*`` for any other name (a
    ServiceEntry host: a declared entry covers it only for every namespace)."""
    if fqdn.endswith(_SERVICE_SUFFIX):
        labels = fqdn[: -len(_SERVICE_SUFFIX)].split(".")
        if len(labels) == 2:
            return labels[1]
    return "*"


def learn_limit(timeout: float | None = None) -> float:
    """How long a request may wait for its hosts: ``LEARN_TIMEOUT``, and never past the
    request's own ``timeout`` or the deadline it runs under (``meshlib.current_deadline``)."""
    limit = LEARN_TIMEOUT if timeout is None else min(LEARN_TIMEOUT, timeout)
    deadline = current_deadline()
    if deadline is not None:
        limit = min(limit, deadline - time.monotonic())
    return max(0.0, limit)


def wait_learned(waiting: Waiting, timeout: float | None = None) -> None:
    """Block until the hosts are covered, or ``learn_limit(timeout)``: then the request goes
    on with the snapshot there is (the config service may be slow; the next watch asks)."""
    limit = learn_limit(timeout)
    try:
        waiting.result(limit)
    except concurrent.futures.TimeoutError:
        log.warning("no snapshot with a newly called host came within %.1fs; going on without", limit)


async def wait_learned_async(waiting: Waiting, timeout: float | None = None) -> None:  # noqa: ASYNC109
    """The same on an asyncio loop. The future is shared with other requests: giving up on it
    must not cancel it (as ``asyncio.wrap_future`` would), nor may its end reach a closed loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def wake(_: Waiting) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed since
            loop.call_soon_threadsafe(settle)

    waiting.add_done_callback(wake)
    limit = learn_limit(timeout)
    try:
        await asyncio.wait_for(done, limit)
    except TimeoutError:
        log.warning("no snapshot with a newly called host came within %.1fs; going on without", limit)


def _all_of(futures: list[Waiting]) -> Waiting:
    """One future done when all of ``futures`` are."""
    combined: Waiting = concurrent.futures.Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Waiting) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last and not combined.done():
            combined.set_result(None)

    for future in futures:
        future.add_done_callback(one_done)
    return combined
