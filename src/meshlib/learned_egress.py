"""Egress hosts learned from traffic: a workload receives the endpoints of the services it calls.

With ``Mesh(learn_egress=True)`` (``MESH_EGRESS_LEARN=1``) a workload starts with the policy and
the registry entries of its declared egress hosts only. The first request to a host it has not
called yet asks for that host (and every destination its VirtualService routes to) and waits,
at most ``LEARN_TIMEOUT``, until the config service has sent a snapshot that covers it: the
watcher drops its long poll and asks again with the longer list, for the whole snapshot of the
new scope. Later requests to that host pay one set lookup. This is Linkerd's on-demand
discovery and Envoy's on-demand cluster discovery, by the same means as Istio's Sidecar
``egress.hosts`` (``meshlib.egress_scope``).

A host that is no mesh host is learned too (the answer is that there is nothing for it), once.
More hosts than a watch can carry (``MAX_EGRESS_HOSTS``) switch the workload to the whole
registry, as if it had declared none.

Called from the data plane (any thread, any event loop) and from the watcher (the Mesh's loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Sequence

from .core.hosts import host_candidates
from .core.routing_table import RoutingTable
from .egress_scope import MAX_EGRESS_BYTES, MAX_EGRESS_HOSTS, parse_egress_host

__all__ = ["LEARN_TIMEOUT", "LearnedEgress", "Waiting", "wait_learned", "wait_learned_async"]

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
        self._size = sum(len(h) + 3 for h in self._declared)  # as JSON in each watch request
        self._whole = False  # more than a watch carries: the whole registry
        # Requested hosts already looked at for the snapshot version ``_version``; a new
        # version may route a host to new destinations, so each is looked at again once.
        self._seen: set[str] = set()
        self._version = -1
        self._waiting: dict[str, Waiting] = {}  # entry -> resolved once a snapshot covers it
        self._lock = threading.Lock()
        self.wake: Callable[[], None] | None = None  # the watcher's: ask again, now
        self.watcher_thread: int | None = None  # a request made there must not wait for it

    @property
    def whole_registry(self) -> bool:
        return self._whole

    def hosts(self) -> list[str] | None:
        """What the next watch asks for: declared and learned entries (None: the whole registry)."""
        with self._lock:
            return None if self._whole else [*self._declared, *self._learned]

    def wanted(self, table: RoutingTable, host: str, fqdn: str | None) -> Waiting | None:
        """Called for every mesh-bound request: None when nothing is to be learned for ``host``
        (a set lookup), else a future that is done once a snapshot covers what it needs."""
        if host in self._seen and table.version == self._version:
            return None
        return self._learn(table, host, fqdn)

    def _learn(self, table: RoutingTable, host: str, fqdn: str | None) -> Waiting | None:
        entries = self._entries(table, host, fqdn)
        with self._lock:
            if table.version != self._version:
                self._seen, self._version = set(), table.version
            self._seen.add(host)
            if self._whole:
                return None
            new = [e for e in entries if e not in self._learned and e not in self._declared]
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
                future: Waiting = concurrent.futures.Future()
                for entry in new:
                    self._waiting[entry] = future
                pending.append(future)
        if new:
            log.debug("learned egress hosts %s from a request to %s", ", ".join(new), host)
            wake = self.wake
            if wake is not None:
                wake()
        if not pending or threading.get_ident() == self.watcher_thread:
            return None  # (a snapshot listener calling out: waiting would hold the watcher)
        if len(pending) == 1:
            return pending[0]
        return _all_of(pending)

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

    def _entries(self, table: RoutingTable, host: str, fqdn: str | None) -> list[str]:
        """Canonical egress entries for a request to ``host``: the mesh host it names and every
        destination its routes send to (or mirror to); for a host no policy names, the names
        the registry may know it by."""
        if fqdn is None:
            names = [c for c in host_candidates(host, self._namespace) if "." in c and not _is_ip(c)]
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


def wait_learned(waiting: Waiting) -> None:
    """Block until the hosts are covered, or ``LEARN_TIMEOUT``: then the request goes on with
    the snapshot there is (the config service may be unreachable; it is not asked again)."""
    try:
        waiting.result(LEARN_TIMEOUT)
    except concurrent.futures.TimeoutError:
        log.warning("no snapshot with a newly called host came within %.1fs; going on without", LEARN_TIMEOUT)


async def wait_learned_async(waiting: Waiting) -> None:
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
    try:
        await asyncio.wait_for(done, LEARN_TIMEOUT)
    except TimeoutError:
        log.warning("no snapshot with a newly called host came within %.1fs; going on without", LEARN_TIMEOUT)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


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
