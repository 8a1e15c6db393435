"""Background DNS for ServiceEntry resolution DNS (Envoy STRICT_DNS), off the request path.

Every name a snapshot's resolution DNS endpoints carry is resolved on the Mesh's loop; when
an answer changes, the Mesh rebuilds its routing tables with the new addresses (each one an
endpoint, load balanced). A request never waits for DNS: before the first answer it
connects by name (an SRV name, which has no address, has no endpoints until then), after a
failed lookup the last answer stays (as Envoy keeps a cluster's hosts when a refresh fails)
and the name is asked again on a backoff, and a name that does not exist has no endpoints.

When a name is asked again (``core.dns``): an answer with a TTL (dnspython,
``dns_resolver``) when the TTL runs out (Istio's ``respect_dns_ttl``), within 1-300 s; an
answer without one every ``DNS_REFRESH_RATE`` seconds, Envoy's default ``dns_refresh_rate``:
the system resolver (``getaddrinfo``: /etc/hosts, nsswitch, search domains, as the
application itself would resolve) gives no TTL, though the system's own cache (nscd,
systemd-resolved) still honours the records' TTLs underneath.

DNS_ROUND_ROBIN (Envoy LOGICAL_DNS) needs nothing here: its one endpoint keeps the name, so
pooled connections follow the name and a new connection goes to the first address the
system resolver returns when it is opened.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping
from types import MappingProxyType

from .core.dns import FAILURE_BASE, FAILURE_MAX, DnsAnswer, FailureBackoff, NoRecords, Record, refresh_delay

__all__ = ["DNS_REFRESH_RATE", "Answers", "DnsRefresher", "Lookup", "system_lookup"]

DNS_REFRESH_RATE = 5.0  # seconds: Envoy's default dns_refresh_rate, for answers without a TTL

log = logging.getLogger("meshlib")

Lookup = Callable[[str], Awaitable[DnsAnswer | tuple[str, ...]]]
"""A name's answer (or just its addresses, without a TTL); raises ``LookupError`` when the
name does not exist (no endpoints), ``OSError`` when the lookup failed (keep the last answer)."""
Answers = Mapping[str, tuple[Record, ...]]


async def system_lookup(name: str) -> tuple[str, ...]:
    """The system resolver's answer (``getaddrinfo`` in a worker thread), first-seen order."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise LookupError(f"{name}: {exc.strerror}") from None
        raise OSError(f"{name}: {exc.strerror}") from None
    return tuple(dict.fromkeys(str(info[4][0]) for info in found))


class DnsRefresher:
    """The answers for the names in use, kept fresh in the background; ``on_change`` is
    called (on the loop) with every new set of answers."""

    def __init__(
        self,
        on_change: Callable[[Answers], None],
        lookup: Lookup = system_lookup,
        refresh: float = DNS_REFRESH_RATE,
        failure_base: float = FAILURE_BASE,
        failure_max: float = FAILURE_MAX,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.lookup = lookup
        self._on_change = on_change
        self.refresh = refresh  # for answers without a TTL
        self.failure_base = failure_base
        self.failure_max = failure_max
        self._sleep = sleep  # how the refresher waits (a test records the delays instead)
        self._lock = threading.Lock()
        self._wanted: frozenset[str] = frozenset()
        self._answers: dict[str, tuple[Record, ...]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # (generation, answers), swapped whole: the generation rises with every change.
        self.current: tuple[int, Answers] = (0, MappingProxyType({}))

    def want(self, names: Collection[str], loop: asyncio.AbstractEventLoop | None) -> None:
        """Resolve these from now on (called at each snapshot, from any thread); names no
        longer wanted are dropped."""
        with self._lock:
            self._wanted = frozenset(names)
        if loop is not None:
            loop.call_soon_threadsafe(self._sync_tasks)

    def _sync_tasks(self) -> None:
        with self._lock:
            wanted = self._wanted
        for name, task in list(self._tasks.items()):
            if name not in wanted:
                task.cancel()
                del self._tasks[name]
        if any(name not in wanted for name in self._answers):
            self._publish({n: a for n, a in self._answers.items() if n in wanted})
        for name in wanted:
            if name not in self._tasks:
                self._tasks[name] = asyncio.get_running_loop().create_task(self._keep(name))

    async def _keep(self, name: str) -> None:
        backoff = FailureBackoff(self.failure_base, self.failure_max)
        records: tuple[Record, ...]
        ttl: float | None
        while True:
            try:
                found = await self.lookup(name)
            except LookupError as exc:
                if self._answers.get(name) != ():  # said once, not at every refresh
                    log.warning("ServiceEntry DNS name %s does not resolve (%s): no endpoints", name, exc)
                records, ttl = (), exc.ttl if isinstance(exc, NoRecords) else None
            except Exception as exc:  # OSError: a timeout, SERVFAIL, ...; anything else alike
                if not backoff.failures:  # the first failure in a row is worth a warning
                    log.warning("could not resolve %s (%s); keeping its last answer", name, exc)
                else:
                    log.debug("could not resolve %s (%s); keeping its last answer", name, exc)
                await self._sleep(backoff.failed())
                continue
            else:
                records, ttl = (found.records, found.ttl) if isinstance(found, DnsAnswer) else (found, None)
            backoff.succeeded()
            if self._answers.get(name) != records:
                self._publish({**self._answers, name: records})
            await self._sleep(refresh_delay(ttl, self.refresh))

    def _publish(self, answers: dict[str, tuple[Record, ...]]) -> None:
        self._answers = answers
        self.current = (self.current[0] + 1, MappingProxyType(dict(answers)))
        try:
            self._on_change(self.current[1])
        except Exception:
            log.exception("applying new DNS answers failed")
