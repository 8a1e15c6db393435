"""Keeps a workload's snapshot current: registers, long-polls the config service, ACKs/NACKs.

Runs as one asyncio task on the Mesh's background loop. A failed round is retried
with fully jittered exponential backoff (tenacity) and moves to the next config
service URL; the data plane keeps its current snapshot meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import tenacity

from .core.snapshot import Snapshot
from .errors import ConfigError, ControlPlaneError, UnauthorizedError
from .learned_egress import LearnedEgress
from .protocol import EPOCH_HEADER, MAX_WATCH_WAIT, EdgeReport, WorkloadRegistration, decode_snapshot
from .snapshot_delta import HeldSnapshot

__all__ = ["Watcher"]

log = logging.getLogger("meshlib")


class Watcher:
    """One long-poll round at a time; ``on_snapshot`` gets each new snapshot and its payload."""

    def __init__(
        self,
        urls: Sequence[str],
        registration: Callable[[], WorkloadRegistration],
        on_snapshot: Callable[[Snapshot, dict[str, Any]], None],
        *,
        token: str | None = None,
        wait: float = 30.0,
        backoff_base: float = 0.25,
        backoff_max: float = 15.0,
        verify: ssl.SSLContext | bool = True,
        egress_hosts: Sequence[str] = (),
        learned: LearnedEgress | None = None,
    ) -> None:
        self.urls = list(urls)
        self._registration = registration
        self._on_snapshot = on_snapshot
        self._wait = min(wait, MAX_WATCH_WAIT)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(5.0, read=self._wait + 10.0), verify=verify
        )
        self._index = 0
        self.version = -1
        self.connected = False
        self.last_error: str | None = None
        self._registered = False
        self._ack: int | None = None
        self._nack: tuple[int, str] | None = None
        self._hosts = list(egress_hosts)  # canonical (MeshSettings); [] = the whole registry
        # Hosts learned from traffic (they include the declared ones): a watch names them all
        # even when there are none yet, and a newly learned one ends the long poll.
        self._learned = learned
        self._scope: list[str] | None = None  # the hosts the snapshot held was asked with
        self._rescoped: asyncio.Event | None = None
        self._held: HeldSnapshot | None = None  # the last payload, by item: deltas apply to it
        self._epoch: str | None = None  # of the config service that served it
        self._failures = 0
        self._retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=backoff_base, max=backoff_max),
            retry=tenacity.retry_if_exception_type((httpx.HTTPError, ControlPlaneError)),
            before_sleep=self._failed,
            reraise=True,
        )

    @property
    def url(self) -> str:
        return self.urls[self._index]

    def registration_changed(self) -> None:
        """Send the registration again before the next watch round."""
        self._registered = False

    async def run(self) -> None:
        """Watch until cancelled."""
        while True:
            await self._retrying(self.round)

    async def round(self) -> None:
        """Register if needed, then one long poll; apply what it brings."""
        if not self._registered:
            await self._register()
        body: dict[str, Any] = {
            "version": self.version,
            "wait": self._wait,
            "workload": self._registration().id,
        }
        if self._ack is not None:
            body["ack"] = self._ack
        if self._nack is not None:
            body["nack"] = {"version": self._nack[0], "reason": self._nack[1]}
        hosts: list[str] | None = self._hosts or None
        learned = self._learned
        if learned is not None:
            self._arm(learned)
            hosts = learned.hosts()
            if hosts != self._scope:  # a wider scope: the whole snapshot of it, now
                body["version"] = -1
        if (
            body["version"] == self.version
            and self._held is not None
            and self._held.version == self.version
            and self._epoch is not None
        ):
            body["delta"], body["epoch"] = True, self._epoch
        if hosts is not None:
            body["hosts"] = hosts
        response = await self._post_watch(body)
        if response is None:
            return  # a host was learned while it waited: ask again with it
        self._check(response)
        self._ack = self._nack = None
        self._recovered()
        if response.status_code == 204:
            if learned is not None and hosts == self._scope:  # nothing new for what it holds
                learned.covered(hosts)
            return
        self._apply(response)
        if learned is not None:  # installed or refused: its waiters go on with what there is
            self._scope = hosts
            learned.covered(hosts)

    def _arm(self, learned: LearnedEgress) -> None:
        """Once, on the watcher's loop: a newly learned host wakes the long poll, and a
        request made on this thread (a snapshot listener) never waits for the watcher."""
        if self._rescoped is not None:
            return
        event = self._rescoped = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the Mesh has closed its loop
                loop.call_soon_threadsafe(event.set)

        learned.wake = wake
        learned.watcher_thread = threading.get_ident()

    async def _post_watch(self, body: dict[str, Any]) -> httpx.Response | None:
        """The long poll; None when a newly learned host ended it."""
        learned = self._learned
        if learned is None or body["version"] == -1:
            # Answered at once (nothing to wait for): a host learned meanwhile goes in the next
            # round; ending this one would only ask for the same whole snapshot again.
            return await self._client.post(f"{self.url}/v1/watch", json=body)
        event = self._rescoped
        assert event is not None  # armed by round()
        poll = asyncio.ensure_future(self._client.post(f"{self.url}/v1/watch", json=body))
        try:
            while True:
                event.clear()  # before the check: a host learned after it sets it again
                if learned.hosts() != body.get("hosts"):
                    break  # learned since the body was made: ask again with it
                rescoped = asyncio.ensure_future(event.wait())
                try:
                    await asyncio.wait((poll, rescoped), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    rescoped.cancel()
                if poll.done():
                    return poll.result()
        finally:
            if not poll.done():
                poll.cancel()  # the watch's connection is closed; the ACK it carried goes again
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await poll
        return None

    def _apply(self, response: httpx.Response) -> None:
        """A new snapshot (or a delta to the one held): decode, install, and ACK or NACK it."""
        payload = response.json()
        self._epoch = response.headers.get(EPOCH_HEADER)
        if isinstance(payload, dict) and "base" in payload:
            try:
                if self._held is None:
                    raise ConfigError("a snapshot delta came, but no snapshot is held")
                payload = self._held.apply(payload)
            except ConfigError as exc:
                log.warning("%s; asking %s for the whole snapshot", exc, self.url)
                self._held, self.version = None, -1
                return
        else:
            self._held = None
        version = payload.get("version") if isinstance(payload, dict) else None
        if self._held is None and isinstance(version, int):
            self._held = HeldSnapshot(payload)
        try:
            snapshot = decode_snapshot(payload)
        except ConfigError as exc:
            # Keep serving the current snapshot; tell the config service why not this one.
            log.error("rejected config version %s from %s: %s", version, self.url, exc)
            self.version = version if isinstance(version, int) else self.version
            self._nack = (self.version, str(exc))
            return
        self.version = snapshot.version
        self._on_snapshot(snapshot, payload)
        self._ack = snapshot.version

    async def round_register(self) -> None:
        """Send the registration now (endpoints changed)."""
        await self._register()

    async def send_edges(self, report: EdgeReport) -> None:
        """This workload's traffic summary (``meshctl top``); an unknown workload registers
        again before the next watch round."""
        workload = self._registration().id
        response = await self._client.post(
            f"{self.url}/v1/workloads/{workload}/edges", content=report.model_dump_json()
        )
        if response.status_code == 404:
            self._registered = False
        self._check(response)

    async def deregister(self) -> None:
        workload = self._registration().id
        try:
            await self._client.delete(f"{self.url}/v1/workloads/{workload}", timeout=2.0)
        except httpx.HTTPError as exc:
            log.debug("could not deregister %s: %s", workload, exc)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _register(self) -> None:
        registration = self._registration()
        response = await self._client.put(
            f"{self.url}/v1/workloads/{registration.id}", content=registration.model_dump_json()
        )
        self._check(response)
        self._registered = True

    def _check(self, response: httpx.Response) -> None:
        if response.status_code in (200, 204):
            return
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text[:200]
        error = UnauthorizedError if response.status_code in (401, 403) else ControlPlaneError
        raise error(
            f"{response.request.url}: {response.status_code} {detail}", status_code=response.status_code
        )

    def _failed(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        self.connected = False
        if self._learned is not None:
            self._learned.connected = False  # nothing waits for an answer until one comes
        self._registered = False  # the config service may have lost us (restart, failover)
        self.last_error = f"{self.url}: {error}"
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.log(level, "config service %s unreachable (%s); retrying in %.2fs", self.url, error, delay)
        self._index = (self._index + 1) % len(self.urls)

    def _recovered(self) -> None:
        if self._failures:
            log.info("config service %s reachable again after %d failed attempt(s)", self.url, self._failures)
        self._failures = 0
        self.connected = True
        if self._learned is not None:
            self._learned.connected = True
        self.last_error = None
