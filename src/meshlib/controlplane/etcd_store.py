"""The config service's state in etcd, shared by every replica (``meshctl serve --store etcd://...``).

Layout under one prefix (``/meshlib/``): ``version`` (the global version, decimal),
``trust_bundle`` (the digest last served), ``resources/<kind>/<namespace>/<name>``,
``workloads/<id>``, ``live/<id>`` (the replica keeping that workload live, under its lease),
``tokens/<id>`` (JSON each), ``claims/<name>`` (what the first
replica to start settles for all: the CA, the admin token) and, only while a change too large
for one etcd transaction is being written out, ``pending`` (that change, whole).

Replicas agree on versions through etcd: a write that moves the version is a transaction
that compares the stored version with the one the replica holds, so two replicas can never
both publish version N with different contents; the loser gets ``StoreConflict``, re-reads
(``ConfigState.resync``) and tries again. Writes that keep the version (acks, last-seen
times, tokens) go through without the comparison. Each replica watches the prefix and is
told (``follow``) of every change another replica made, at most a few milliseconds later.

The client is aetcd (asyncio, etcd's v3 gRPC API) on a private loop thread, because the
store interface is synchronous: each call costs one round trip to etcd (about 1 ms here);
only the config service's write paths make them, never a workload's request.

TLS towards etcd (``EtcdTls``; ``meshctl serve --etcd-cacert/--etcd-cert/--etcd-key``, as
etcdctl's ``--cacert/--cert/--key``): the server's certificate is verified by the given CA
bundle, and with a client certificate etcd's ``--client-cert-auth`` lets only holders of one
in. Without it the CA's private key, the tokens and the policy cross to etcd in the clear: use
plain etcd only on 127.0.0.1 or a private network.

etcd's own authentication (``EtcdAuth``; ``--etcd-user NAME`` with the password from
``--etcd-password-file`` or ``$ETCDCTL_PASSWORD``): the replica authenticates on every connect
and sends the token etcd hands out with each request. A token etcd no longer knows (it expires
after ``--auth-token-ttl`` of disuse, 300 s by default, or the member restarted) is answered
with UNAUTHENTICATED; the replica then authenticates again and repeats the request once. The
user needs read and write on the prefix only (a role with ``readwrite /meshlib/ --prefix``).
The password is read once and never logged or shown.

Registry leases: each replica holds one etcd lease (``LEASE_TTL``, kept alive every third of
it) and puts ``live/<id>`` under it for each workload that registered or watches through it. A
registered workload with no live key is lost, for every replica alike. The holder ends the key
when its workload has been silent for the registry's TTL (and moves the version with it); etcd
ends all of a replica's keys when the replica dies or loses etcd for ``LEASE_TTL``, and the
other replicas, told by their watch, move the version so that workloads hear. A workload that
fails over is taken over by the replica it watches next (its key is put again under that
replica's lease) within one flush, well before the dead replica's lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .._files import read_secret_file
from .._loop import LoopThread
from ..errors import ConfigError, MeshError
from ..policy.resources import ResourceKey
from .store import StoreChanges, StoreConflict, StoredResource, StoredWorkload, StoreState

__all__ = ["EtcdAuth", "EtcdStore", "EtcdTls", "StoreEvent", "parse_etcd_url"]

log = logging.getLogger("meshlib.controlplane.etcd")
T = TypeVar("T")

DEFAULT_PREFIX = "/meshlib/"
_OWN_REVISIONS = 4096  # revisions of this replica's own writes remembered (to skip their events)
_TXN_OPS = 100  # puts and deletes per transaction: etcd refuses more than --max-txn-ops (128 by default)
_INTENT_BYTES = 1_400_000  # etcd refuses requests over --max-request-bytes (1.5 MiB by default)
LEASE_TTL = 15  # seconds: a dead replica's workloads are withdrawn this long after it went

StoreEvent = tuple[bytes, bytes | None, int]
"""One change the watch saw another replica make: key, value (None: deleted), mod revision."""


def parse_etcd_url(url: str) -> list[tuple[str, int]]:
    """``etcd://host:port[,host:port...]`` as (host, port) pairs, in order of preference."""
    parts = urlsplit(url)
    if "@" in parts.netloc:  # never echoed back: it may hold a password
        raise MeshError(
            "--store: a user or password in the etcd URL is not used; give --etcd-user and the "
            "password in --etcd-password-file (or $ETCDCTL_PASSWORD) instead"
        )
    if parts.scheme != "etcd" or not parts.netloc:
        raise MeshError(f"--store {url!r}: expected etcd://host:port[,host:port...]")
    endpoints = []
    for item in parts.netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise MeshError(f"--store {url!r}: {item!r} is not host:port")
        endpoints.append((host.strip("[]"), int(port)))
    return endpoints


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """TLS towards etcd: the CA bundle its certificate is verified by, and optionally this
    replica's client certificate (PEM chain) and key. ``credentials()`` reads them, raising
    ConfigError naming the option of a file it cannot use."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> Any:
        import grpc

        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("--etcd-cert and --etcd-key go together: give both, or neither")
        ca = _read(self.ca_file, "--etcd-cacert", b"-----BEGIN CERTIFICATE-----")
        cert = (
            _read(self.cert_file, "--etcd-cert", b"-----BEGIN CERTIFICATE-----") if self.cert_file else None
        )
        key = _read(self.key_file, "--etcd-key", b"PRIVATE KEY-----") if self.key_file else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


@dataclass(frozen=True, slots=True)
class EtcdAuth:
    """etcd's user/password authentication. The password is left out of ``repr``."""

    user: str
    password: str = field(repr=False)

    @classmethod
    def from_options(cls, user: str, password_file: Path | None = None) -> EtcdAuth:
        """``--etcd-user NAME [--etcd-password-file F]``; without the file the password is in
        ``$ETCDCTL_PASSWORD`` (etcdctl's own variable). Never on the command line, where every
        user of the machine could read it."""
        if not user or ":" in user:
            raise ConfigError(
                "--etcd-user: give the user name only; the password goes in --etcd-password-file "
                "(or $ETCDCTL_PASSWORD)"
            )
        if password_file is not None:
            password = read_secret_file(password_file, "--etcd-password-file")
        else:
            password = os.environ.get("ETCDCTL_PASSWORD", "")
            if not password:
                raise ConfigError(
                    f"--etcd-user {user}: no password: "
                    "give --etcd-password-file FILE or set $ETCDCTL_PASSWORD"
                )
        return cls(user, password)


def _read(path: Path, option: str, marker: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{option} {path}: {exc.strerror}") from None
    if marker not in data:
        raise ConfigError(f"{option} {path}: not a PEM file ({marker.decode().strip('-')} expected)")
    return data


def _tls_client_class(aetcd: Any) -> Any:
    """aetcd's Client over a TLS channel. aetcd 1.0 opens only plaintext channels, in
    ``connect``; this does what that method does on ``grpc.aio.secure_channel`` (it uses aetcd's
    attributes, hence the pin to aetcd 1.0.x in pyproject)."""
    rpc, watcher = aetcd.rpc, aetcd.watcher

    class TlsClient(aetcd.Client):  # type: ignore[misc]
        def __init__(self, *args: Any, credentials: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._credentials = credentials

        async def connect(self) -> None:
            if self._connected.is_set():
                return
            channel = rpc.secure_channel(
                f"{self._host}:{self._port}", self._credentials, options=self._options.items()
            )
            try:
                self.channel = channel
                if self._username is not None and self._password is not None:  # as aetcd's connect
                    self.auth_stub = rpc.AuthStub(channel)
                    request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                    reply = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                    self.metadata = (("token", reply.token),)
                self.kvstub = rpc.KVStub(channel)
                self.clusterstub = rpc.ClusterStub(channel)
                self.leasestub = rpc.LeaseStub(channel)
                self.maintenancestub = rpc.MaintenanceStub(channel)
                self._watcher = watcher.Watcher(
                    rpc.WatchStub(channel), timeout=self._timeout, metadata=self.metadata
                )
                self._connected.set()
            except BaseException:
                await channel.close()
                raise

    return TlsClient


class EtcdStore:
    """The Store protocol over etcd v3; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        tls: EtcdTls | None = None,
        auth: EtcdAuth | None = None,
        lease_ttl: int = LEASE_TTL,
    ) -> None:
        import aetcd  # type: ignore[import-untyped]  # meshlib[etcd]; imported here: SQLite users skip it

        if not endpoints:
            raise MeshError("an etcd store needs at least one endpoint")
        self._aetcd = aetcd
        self._client_class: Any = aetcd.Client
        self._client_options: dict[str, Any] = {}
        if tls is not None:
            self._client_class = _tls_client_class(aetcd)
            self._client_options["credentials"] = tls.credentials()
        self._user = auth.user if auth is not None else None
        if auth is not None:
            self._client_options.update(username=auth.user, password=auth.password)
        self._endpoints = list(endpoints)
        self._current = 0
        self._prefix = prefix.encode()
        self._timeout = timeout
        self._loop = LoopThread("meshlib-etcd")
        self._client: Any = None
        self._own: set[int] = set()
        self._revision = 0  # the revision this replica's view was last loaded at
        self._held = 0  # the version this replica last loaded or wrote
        self._seen: dict[bytes, int] = {}  # key -> the mod revision this replica last read or wrote
        # key -> the revision it was deleted at, by this replica or as told since the last load:
        # an older event of that key, told later, must not bring it back.
        self._gone: dict[bytes, int] = {}
        self._follower: asyncio.Task[None] | None = None
        self._closed = False
        self.holder: str | None = secrets.token_hex(8)  # this replica, as the holder of live keys
        self._lease_ttl = lease_ttl
        self._lease = 0
        self._holding: set[bytes] = set()  # the live keys this replica put (again, under a new lease)
        self._in_flight = 0  # transactions sent and not answered yet
        self._unsure: list[StoreEvent] = []  # events seen by the watch while some were in flight
        self._told: list[StoreEvent] = []  # events to tell, once the watch has handed over all it has
        self._changed: Callable[[list[StoreEvent] | None], None] | None = None  # what ``follow`` calls
        self._call(self._connect())
        self._call(self._grant())
        self._keeper = self._loop.submit(self._keep())

    # --- plumbing -----------------------------------------------------------------------

    def _key(self, *parts: str) -> bytes:
        return self._prefix + "/".join(parts).encode()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        # Not cancelled when given up on: a cancel could land inside a failover's connect or a
        # lease renewal and leave a client open or live keys not put again (a call that runs
        # on after its caller was told it failed may still commit: its event is then judged
        # as any write of unknown outcome is).
        return self._loop.submit(coro).result(self._timeout * 2)

    async def _connect(self) -> None:
        """Connect to the first endpoint that answers, starting with the current one."""
        problems = []
        for attempt in range(len(self._endpoints)):
            host, port = self._endpoints[(self._current + attempt) % len(self._endpoints)]
            client = self._client_class(host=host, port=port, timeout=self._timeout, **self._client_options)
            try:
                await client.connect()
                await client.status()
            except Exception as exc:
                detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                if (
                    isinstance(exc, self._aetcd.exceptions.InvalidArgumentError)
                    and "authentication" in detail
                ):
                    with contextlib.suppress(Exception):
                        await client.close()
                    # The members of one cluster share their users: no other endpoint would differ.
                    raise ConfigError(
                        f"etcd {host}:{port} refused --etcd-user {self._user}: {detail}"
                    ) from None
                problems.append(f"{host}:{port}: {exc.__class__.__name__}{f' ({detail})' if detail else ''}")
                with contextlib.suppress(Exception):
                    await client.close()
                continue
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.close()
            self._client = client
            self._current = (self._current + attempt) % len(self._endpoints)
            return
        raise MeshError(f"no etcd endpoint answers ({'; '.join(problems)})")

    async def _retrying(self, op: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Run ``op(client)``; on a connection failure move to the next endpoint and run it once more."""
        try:
            return await op(self._client)
        except self._aetcd.exceptions.ClientError as exc:
            refused = self._aetcd.exceptions
            host, port = self._endpoints[self._current]
            if isinstance(exc, refused.InvalidArgumentError) and "user name is empty" in str(exc):
                raise ConfigError(
                    f"etcd {host}:{port} has authentication on: give --etcd-user NAME and its "
                    "password in --etcd-password-file (or $ETCDCTL_PASSWORD)"
                ) from None
            if isinstance(exc, refused.PreconditionFailedError | refused.InvalidArgumentError):
                raise  # etcd answered and refused the request: another endpoint would too
            if _code_of(exc) == "PERMISSION_DENIED":
                who = f"etcd user {self._user}" if self._user else "this replica (no --etcd-user)"
                raise ConfigError(
                    f"{who} may not use the keys under {self._prefix.decode()} ({exc}): grant it a role "
                    f"with readwrite on that prefix (etcdctl role grant-permission ROLE readwrite "
                    f"{self._prefix.decode()} --prefix)"
                ) from None
            if isinstance(exc, refused.UnauthenticatedError):
                # The token lapsed (unused for --auth-token-ttl, or the member restarted):
                # authenticate again, on the same endpoint, and repeat the request once.
                log.info("etcd %s:%d: %s; authenticating again", host, port, exc)
            else:
                log.warning("etcd %s:%d failed (%s): trying the next endpoint", host, port, exc)
                self._current = (self._current + 1) % len(self._endpoints)
            await self._connect()
            return await op(self._client)

    async def _grant(self) -> None:
        lease = await self._retrying(lambda c: c.lease(self._lease_ttl))
        self._lease = int(lease.id)

    async def _renew(self, lost: int) -> None:
        """Lease ``lost`` ran out (etcd unreachable for its TTL): take a new one, put this
        replica's live keys again under it, and read the store again (the other replicas saw
        those workloads lost meanwhile, and may have moved on)."""
        if self._lease != lost:
            return  # renewed already
        log.warning("this replica's etcd lease ran out: its %d workloads are live again", len(self._holding))
        await self._grant()
        held = sorted(self._holding)
        for i in range(0, len(held), _TXN_OPS):
            await self._txn([], [], [], held[i : i + _TXN_OPS])
        if self._changed is not None:
            self._changed(None)

    async def _keep(self) -> None:
        """Keep this replica's lease alive (every third of its TTL, and every second after a
        failure, so that a short outage does not cost it); renew it when it ran out."""
        delay = self._lease_ttl / 3
        while not self._closed:
            await asyncio.sleep(delay)
            lease = self._lease
            try:
                reply = await self._retrying(partial(_refresh, lease=lease))
                if reply is None or int(reply.TTL) <= 0:
                    await self._renew(lease)
                delay = self._lease_ttl / 3
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(1.0, self._lease_ttl / 3)
                if not self._closed:
                    log.warning("keeping this replica's etcd lease alive failed (%s); trying again", exc)

    async def _txn(
        self,
        compare: list[Any],
        puts: list[tuple[bytes, bytes]],
        deletes: list[bytes],
        leased: Sequence[bytes] = (),
    ) -> bool:
        """One transaction: ``puts`` and ``deletes``, and ``leased`` (live keys put under this
        replica's lease), if every comparison holds. Its revision is remembered as this
        replica's own, so the watch does not report it back."""

        async def run(client: Any) -> bool:
            tx = client.transactions
            holder = (self.holder or "").encode()
            ops = [tx.put(key, value) for key, value in puts]
            ops += [tx.put(key, holder, lease=self._lease) for key in leased]
            ops += [tx.delete(key) for key in deletes]
            self._in_flight += 1
            try:
                succeeded, responses = await client.transaction(compare=compare, success=ops, failure=[])
            except BaseException:
                self._in_flight -= 1
                self._judge_unsure()  # it wrote nothing: what the watch brought meanwhile is foreign
                raise
            self._in_flight -= 1
            if succeeded:
                self._holding.update(leased)
                self._holding.difference_update(deletes)
                revision = _revision_of(responses)
                if revision is not None:
                    for key in [*(k for k, _ in puts), *leased]:
                        self._seen[key] = revision
                        self._gone.pop(key, None)
                    for key in deletes:
                        self._seen.pop(key, None)
                        self._gone[key] = revision
                    self._own.add(revision)
                    if len(self._own) > _OWN_REVISIONS:
                        self._own = set(sorted(self._own)[-_OWN_REVISIONS // 2 :])
            self._judge_unsure()
            return bool(succeeded)

        try:
            return await self._retrying(run)
        except self._aetcd.exceptions.ClientError as exc:
            if not leased or "lease not found" not in str(exc):
                raise
            await self._renew(self._lease)  # it ran out before the keep-alive noticed
            return await self._retrying(run)

    async def _still_held(self, owned: Sequence[bytes]) -> None:
        """Refuse a release when another replica holds any of ``owned`` now (it took the
        workload over since this replica last read), as the compare in a smaller one does.
        A read just before the write, not a compare in it: a take-over in between (a few
        milliseconds) is not seen."""
        found = await self._retrying(lambda c: c.get_prefix(self._key("live/")))
        mine, wanted = (self.holder or "").encode(), set(owned)
        if any(bytes(kv.key) in wanted and bytes(kv.value) != mine for kv in found):
            raise StoreConflict("another replica holds some of these workloads now")

    async def _write(
        self,
        version: int,
        puts: list[tuple[bytes, bytes]],
        deletes: list[bytes],
        leased: Sequence[bytes] = (),
        owned: Sequence[bytes] = (),
    ) -> None:
        """A change at ``version``. When that is not the version this replica last read or
        wrote, it moves the global version: written only over the version before it.
        ``leased``: live keys to put under this replica's lease, in the same transaction (the
        first piece) when it is small, else first on their own (a live key of a workload nobody
        has registered means nothing). ``owned``: live keys deleted only while this replica
        still holds them (another replica may have taken a workload over since it last read)."""
        key = self._key("version")
        tx = self._client.transactions
        pending = self._key("pending")
        held_here = [tx.value(k) == (self.holder or "").encode() for k in owned]
        if len(held_here) >= _TXN_OPS:  # etcd takes at most --max-txn-ops comparisons too
            await self._still_held(owned)  # checked by a read just before, instead
            held_here = []
        if leased and len(puts) + len(deletes) + len(leased) >= _TXN_OPS:
            for i in range(0, len(leased), _TXN_OPS):
                if not await self._txn([tx.version(pending) == 0], [], [], leased[i : i + _TXN_OPS]):
                    raise StoreConflict("a large change is being written out by another replica")
            leased = ()
        if version == self._held:
            # Only over what this replica last read or wrote of each key: a registration
            # another replica changed meanwhile is never overwritten with an older copy
            # (the loser re-reads, keeps its own acks and last-seen times, and writes again).
            # In pieces (etcd's --max-txn-ops); a piece already written is simply current.
            # Never while a large change is half written (the re-read finishes it first).
            for n, (some_puts, some_deletes) in enumerate(
                _pieces(puts, deletes) or [([], [])] * bool(leased)
            ):
                compare = [tx.version(pending) == 0, *([] if n else held_here)]
                compare += [tx.mod(k) == self._seen.get(k, 0) for k, _ in some_puts]
                if not await self._txn(compare, some_puts, some_deletes, () if n else leased):
                    raise StoreConflict("another replica changed these entries since they were read")
            return
        _check_size(puts)
        compare = [tx.value(key) == str(version - 1).encode(), tx.version(pending) == 0, *held_here]
        if version == 1:  # the first version: over no version key at all, or over "0"
            current = await self._retrying(lambda c: c.get(key))
            if current is None:
                compare[0] = tx.version(key) == 0
        moved = (key, str(version).encode())
        if len(puts) + len(deletes) + len(leased) < _TXN_OPS:
            if not await self._txn(compare, [*puts, moved], deletes, leased):
                raise StoreConflict(f"another replica moved the version past {version - 1}")
        else:
            # Too many for one transaction: the whole change goes in first as one intent,
            # with the version; then its keys, piece by piece. Until the intent is gone no
            # replica moves the version, and any replica that reads it finishes the job.
            written = [[k.decode(), v.decode()] for k, v in puts]
            intent = json.dumps({"puts": written, "deletes": [k.decode() for k in deletes]}).encode()
            _check_size([(pending, intent)])
            if not await self._txn(compare, [(pending, intent), moved], []):
                raise StoreConflict(f"another replica moved the version past {version - 1}")
            self._held = version  # committed: whoever reads the intent writes it out
            try:
                await self._finish(self._seen[pending], puts, deletes)
            except self._aetcd.exceptions.ClientError as exc:
                log.warning(
                    "writing out version %d failed (%s); the next replica to read finishes it", version, exc
                )
        self._held = version

    async def _finish(self, revision: int, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        """Write out the intent stored at ``revision``, then remove it; each piece only while
        that intent is still there (whoever finishes first, the others stop)."""
        pending = self._key("pending")
        tx = self._client.transactions
        for some_puts, some_deletes in _pieces(puts, deletes):
            if not await self._txn([tx.mod(pending) == revision], some_puts, some_deletes):
                return
        await self._txn([tx.mod(pending) == revision], [], [pending])

    # --- the Store protocol ---------------------------------------------------------------

    def load(self) -> StoreState:
        return self._call(self._load())

    async def _load(self) -> StoreState:
        found = await self._retrying(lambda c: c.get_prefix(self._prefix))
        for kv in found:
            if bytes(kv.key) == self._key("pending"):  # a large change half written: finish it first
                intent = json.loads(kv.value)
                puts = [(k.encode(), v.encode()) for k, v in intent["puts"]]
                await self._finish(int(kv.mod_revision), puts, [k.encode() for k in intent["deletes"]])
                return await self._load()
        self._revision = int(found.header.revision) if found.header is not None else 0
        live: dict[str, str] = {}
        state = StoreState(live=live)
        self._held = 0
        resources: list[StoredResource] = []
        self._seen = {bytes(kv.key): int(kv.mod_revision) for kv in found}
        self._gone = {}
        for kv in found:
            name = kv.key[len(self._prefix) :].decode()
            if name == "version":
                state.version = int(kv.value)
                self._held = state.version
            elif name == "trust_bundle":
                state.trust_bundle = kv.value.decode()
            elif name.startswith("resources/"):
                kind, namespace, resource = name.split("/", 3)[1:]
                data = json.loads(kv.value)
                resources.append(
                    StoredResource(ResourceKey(kind, namespace, resource), data["manifest"], data["version"])
                )
            elif name.startswith("workloads/"):
                data = json.loads(kv.value)
                state.workloads.append(StoredWorkload(**data))
            elif name.startswith("live/"):
                live[name[len("live/") :]] = kv.value.decode()
        # Keys another replica has taken over since are no longer this replica's to put again
        # (those gone with a lease that ran out still are: ``_renew`` puts them back).
        self._holding -= {self._key("live", i) for i, holder in live.items() if holder != self.holder}
        state.resources = sorted(resources, key=lambda r: (r.version, *r.key))
        state.workloads.sort(key=lambda w: w.first_seen)
        return state

    def commit(self, version: int, put: Sequence[StoredResource], delete: Sequence[ResourceKey]) -> None:
        puts = [
            (
                self._key("resources", *item.key),
                json.dumps({"manifest": item.manifest, "version": item.version}, sort_keys=True).encode(),
            )
            for item in put
        ]
        self._call(self._write(version, puts, [self._key("resources", *key) for key in delete]))

    def save_workloads(
        self,
        version: int,
        put: Sequence[StoredWorkload],
        delete: Sequence[str],
        *,
        hold: Sequence[str] = (),
        release: Sequence[str] = (),
    ) -> None:
        puts = [(self._key("workloads", item.id), _workload_json(item)) for item in put]
        deletes = [self._key(section, i) for i in delete for section in ("workloads", "live")]
        released = [self._key("live", i) for i in release]
        leased = [self._key("live", i) for i in hold]
        self._call(self._write(version, puts, deletes + released, leased, released))

    def save_trust_bundle(self, version: int, digest: str) -> None:
        self._call(self._write(version, [(self._key("trust_bundle"), digest.encode())], []))

    def load_tokens(self) -> list[dict[str, Any]]:
        found = self._call(self._retrying(lambda c: c.get_prefix(self._key("tokens/"))))
        tokens = [json.loads(kv.value) for kv in found]
        return sorted(tokens, key=lambda t: t["created"])

    def put_token(self, token: dict[str, Any]) -> None:
        data = json.dumps(token, sort_keys=True).encode()
        self._call(self._txn([], [(self._key("tokens", str(token["id"])), data)], []))

    def claim(self, name: str, value: bytes) -> bytes:
        """``value`` stored under ``claims/<name>`` unless a replica stored one first; the one that holds."""
        return self._call(self._claim(name, value))

    async def _claim(self, name: str, value: bytes) -> bytes:
        key = self._key("claims", name)
        tx = self._client.transactions
        await self._txn([tx.version(key) == 0], [(key, value)], [])
        held = await self._retrying(lambda c: c.get(key))
        if held is None:
            raise MeshError(f"etcd lost the claim {name!r} just written")
        return bytes(held.value)

    # --- following the other replicas -----------------------------------------------------

    def follow(self, changed: Callable[[list[StoreEvent] | None], None]) -> None:
        """Call ``changed(events)`` (on the store's thread) after every change another replica
        makes, from the revision of the last ``load`` on, with the events of whole etcd
        revisions (``changes`` reads them); ``changed(None)`` when what happened meanwhile is
        not known (the watch was lost, or this replica's lease ran out): read everything again."""
        self._follower = self._loop.submit(self._follow(changed))  # type: ignore[assignment]

    def _judge_unsure(self) -> None:
        if self._in_flight or not self._unsure:
            return
        foreign = [event for event in self._unsure if event[2] not in self._own]
        self._unsure = []
        if foreign:
            self._told += foreign  # after any still to tell: in revision order
            self._tell()

    def _tell(self) -> None:
        batch, self._told = self._told, []
        if batch and self._changed is not None:
            self._changed(batch)

    async def _follow(self, changed: Callable[[list[StoreEvent] | None], None]) -> None:
        self._changed = changed
        start = self._revision + 1
        delay = 0.1
        while not self._closed:
            try:
                watch = await self._client.watch_prefix(self._prefix, start_revision=start)
                delay = 0.1
                async for event in watch:
                    revision = int(event.kv.mod_revision)
                    start = max(start, revision + 1)
                    if revision in self._own:
                        continue
                    value = None if event.kind == "DELETE" else bytes(event.kv.value)
                    item = (bytes(event.kv.key), value, revision)
                    if self._in_flight:
                        # The event of a write of ours can come before its answer: judge it
                        # once the writes in flight have answered (``_judge_unsure``).
                        self._unsure.append(item)
                        continue
                    if not self._told:
                        # Told once the watch has handed over every event it holds: aetcd
                        # queues a response's events together, so a batch never ends
                        # inside one revision.
                        asyncio.get_running_loop().call_soon(self._tell)
                    self._told.append(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                log.warning("etcd watch lost (%s); taking it up again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                with contextlib.suppress(Exception):
                    await self._connect()
                self._told = []
                with contextlib.suppress(Exception):
                    start = max(start, await self._head())
                changed(None)  # whatever happened meanwhile (from before ``start`` on): read it all

    def changes(self, events: Sequence[StoreEvent]) -> StoreChanges | None:
        """What ``events`` (told by ``follow``, in order) change for this replica, taking them
        as read: each entry as it is now, leaving out what the last load or a write of this
        replica already holds. None when only a whole read will do (a large change half
        written, a key this meshlib does not know)."""
        return self._call(self._changes(events))

    async def _changes(self, events: Sequence[StoreEvent]) -> StoreChanges | None:
        out = StoreChanges()
        # What this replica will hold once the state has taken ``out``: committed only when
        # ``out`` is returned. On None the state reads everything instead, and until it has,
        # the compares of this replica's writes must stay those of what it holds.
        seen: dict[bytes, int] = {}
        gone: dict[bytes, int] = {}
        let_go: set[bytes] = set()
        held: int | None = None
        latest = 0
        for key, value, revision in events:
            name = key[len(self._prefix) :].decode()
            section, _, rest = name.partition("/")
            # Whatever read took it first, the state has not reloaded tokens or policy for it.
            out.tokens = out.tokens or section == "tokens"
            out.policy = out.policy or section == "resources"
            newest = max(seen.get(key, self._seen.get(key, 0)), gone.get(key, self._gone.get(key, 0)))
            if revision <= self._revision or revision <= newest:
                continue  # read or written here since: what this replica holds is newer
            latest = max(latest, revision)
            if value is None:
                seen[key], gone[key] = 0, revision
            else:
                seen[key], gone[key] = revision, 0
            if name == "version" and value is not None:
                out.version = held = int(value)
            elif section == "resources" and rest.count("/") >= 2:
                kind, namespace, resource = rest.split("/", 2)
                rkey = ResourceKey(kind, namespace, resource)
                if value is None:
                    out.resources[rkey] = None
                else:
                    data = json.loads(value)
                    out.resources[rkey] = StoredResource(rkey, data["manifest"], data["version"])
            elif section == "workloads" and rest:
                out.workloads[rest] = None if value is None else StoredWorkload(**json.loads(value))
            elif section == "live" and rest:
                holder = None if value is None else value.decode()
                out.live[rest] = holder
                if holder is not None and holder != self.holder:
                    let_go.add(key)  # taken over: no longer this replica's to put again
            elif section == "tokens" or name == "trust_bundle" or section == "claims":
                continue  # tokens: the registry reads them all again; the others at start only
            else:
                return None  # ``pending`` (a large change being written out) or unknown: read it all
        for key, revision in seen.items():
            if revision:
                self._seen[key] = revision
                self._gone.pop(key, None)
            else:
                self._seen.pop(key, None)
                self._gone[key] = gone[key]
        self._holding -= let_go
        if held is not None:
            self._held = held
        if latest:
            # Events come in revision order: none older than ``latest`` is still to be told.
            self._gone = {k: r for k, r in self._gone.items() if r > latest}
        return out

    def forget(self) -> None:
        """What this replica holds is not what it last read or wrote (taking changes failed):
        every write conflicts, and so reads everything again, until the next ``load``."""
        self._call(self._forget())

    async def _forget(self) -> None:
        self._held = -1
        self._seen = {}

    async def _head(self) -> int:
        found = await self._retrying(lambda c: c.get(self._key("version")))
        return int(found.header.revision) + 1 if found is not None else 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.close()

        with contextlib.suppress(Exception):
            self._call(shut())
        self._loop.stop()


async def _refresh(client: Any, *, lease: int) -> Any:
    return await client.refresh_lease(lease)


def _code_of(exc: BaseException) -> str | None:
    """The gRPC status name behind an aetcd error (aetcd maps only some codes to classes)."""
    cause = exc.__cause__
    code = getattr(cause, "code", None)
    if callable(code):
        with contextlib.suppress(Exception):
            return str(code().name)
    return None


def _check_size(puts: list[tuple[bytes, bytes]]) -> None:
    """Refuse (422, nothing written) what etcd would refuse as too large for one request."""
    size = sum(len(k) + len(v) for k, v in puts)
    if size > _INTENT_BYTES:
        raise ConfigError(
            f"a change of {len(puts)} entries ({size} bytes) is larger than one etcd request may "
            f"be ({_INTENT_BYTES} bytes): apply it in smaller parts"
        )


def _pieces(
    puts: list[tuple[bytes, bytes]], deletes: list[bytes]
) -> list[tuple[list[tuple[bytes, bytes]], list[bytes]]]:
    """``puts`` and ``deletes`` cut into transactions of at most ``_TXN_OPS`` operations."""
    pieces: list[tuple[list[tuple[bytes, bytes]], list[bytes]]] = []
    pieces += [(puts[i : i + _TXN_OPS], []) for i in range(0, len(puts), _TXN_OPS)]
    pieces += [([], deletes[i : i + _TXN_OPS]) for i in range(0, len(deletes), _TXN_OPS)]
    return pieces


def _revision_of(responses: list[Any]) -> int | None:
    """The revision of a transaction, from the header of any put or delete in it. (Up to
    commit bcc9a33 it came from reading a key back, and a transaction whose key was absent,
    such as the version's before the first version, had none: its events then came back as
    another replica's, and each made this replica read the whole store again.)"""
    for response in responses:
        which = response.WhichOneof("response") if hasattr(response, "WhichOneof") else None
        if which == "response_delete_range" and not response.response_delete_range.deleted:
            continue  # deleted nothing: its header has the store's revision, maybe another's write
        if which in ("response_put", "response_delete_range"):
            revision = int(getattr(response, which).header.revision)
            if revision:
                return revision
    return None


def _workload_json(item: StoredWorkload) -> bytes:
    return json.dumps(
        {
            "registration": item.registration,
            "acked_version": item.acked_version,
            "nack_version": item.nack_version,
            "nack_reason": item.nack_reason,
            "first_seen": item.first_seen,
            "last_seen": item.last_seen,
        },
        sort_keys=True,
    ).encode()
