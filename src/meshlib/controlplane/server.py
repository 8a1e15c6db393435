"""Running the config service: in the foreground (``meshctl serve``) or in a thread."""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette

from .._files import atomic_write
from .._net import bind
from ..ca.authority import SERVER_TTL, CertificateAuthority
from ..ca.svid import pem_certificate, pem_key
from ..ca.tokens import TokenRegistry
from ..core.hosts import CLUSTER_DOMAIN
from ..errors import MeshError
from ..protocol import DEFAULT_PORT, MAX_WATCH_WAIT
from .app import VersionNotifier, create_app
from .auth import ensure_admin_token
from .ca_routes import ca_routes
from .service_tls import ServiceCertificate
from .state import ConfigState
from .store import SQLiteStore, Store

if TYPE_CHECKING:
    from .consul_source import ConsulSettings
    from .etcd_store import EtcdAuth, EtcdStore, EtcdTls

__all__ = ["INSECURE_WARNING", "ConfigServer", "build_app", "serve_forever"]

log = logging.getLogger("meshlib.controlplane")
DB_FILE = "meshlib.db"


class _Server(uvicorn.Server):
    """uvicorn, releasing held watch requests first so that shutdown does not wait on them,
    and renewing the service's TLS certificate when it is due."""

    def __init__(
        self, config: uvicorn.Config, notifier: VersionNotifier, certificate: ServiceCertificate | None
    ) -> None:
        super().__init__(config)
        self._notifier = notifier
        self._certificate = certificate

    async def on_tick(self, counter: int) -> bool:
        if self._certificate is not None and counter % 10 == 0:  # once a second: a clock read
            self._certificate.renew_if_due(self.config.ssl)
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._notifier.close()
        await super().shutdown(sockets)


def build_app(
    data_dir: Path,
    *,
    trust_domain: str = CLUSTER_DOMAIN,
    workload_ttl: float = 90.0,
    reap_interval: float = 5.0,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    ca_bundle: Path | None = None,
    open_registry: bool = False,
    store_url: str | None = None,
    etcd_tls: EtcdTls | None = None,
    etcd_auth: EtcdAuth | None = None,
    etcd_lease_ttl: int | None = None,
    ca_key_passphrase: bytes | None = None,
    tls_names: Sequence[str] | None = None,
    tls_ttl: dt.timedelta = SERVER_TTL,
    consul: ConsulSettings | None = None,
) -> tuple[Starlette, ConfigState, Path, bool]:
    """The app over the embedded store in ``data_dir``, or over etcd (``store_url``
    ``etcd://host:port[,...]``, shared by replicas; over TLS with ``etcd_tls``, as an etcd user
    with ``etcd_auth``): (app, state, token path, token created).
    With ``tls_names`` the service gets a certificate of its CA for those names (written to
    ``<data-dir>/tls``, with the bundle clients verify it by: ``tls/ca-bundle.pem``), valid for
    ``tls_ttl`` and renewed at half of it while the service runs (service_tls.py); the paths
    are in ``app.state.tls``. With ``consul`` ServiceEntries may take their endpoints
    from that Consul agent (consul_source.py)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    token, token_path, created = ensure_admin_token(data_dir)
    store: Store
    if store_url is None:
        if etcd_tls is not None or etcd_auth is not None or etcd_lease_ttl is not None:
            raise MeshError(
                "--etcd-cacert, --etcd-cert, --etcd-key, --etcd-user and --etcd-lease-ttl need --store etcd://..."
            )
        if ca_key_passphrase is not None:
            raise MeshError(
                "--ca-key-passphrase-file encrypts the CA key kept in etcd: it needs --store etcd://... "
                "(the embedded store keeps the key in <data-dir>/ca/ca-key.pem, 0600)"
            )
        store = SQLiteStore(data_dir / DB_FILE)
    else:
        from .etcd_store import LEASE_TTL, EtcdStore, parse_etcd_url

        if etcd_lease_ttl is not None and etcd_lease_ttl < 2:
            raise MeshError(
                f"--etcd-lease-ttl must be at least 2 seconds (etcd's shortest lease), not {etcd_lease_ttl}"
            )
        lease_ttl = LEASE_TTL if etcd_lease_ttl is None else etcd_lease_ttl
        # A workload failing over to this replica is taken over (its live key put under this
        # replica's lease) at the next flush: well before the dead replica's lease runs out.
        reap_interval = min(reap_interval, lease_ttl / 3)
        store = shared = EtcdStore(
            parse_etcd_url(store_url), tls=etcd_tls, auth=etcd_auth, lease_ttl=lease_ttl
        )
    try:
        ca = CertificateAuthority.load_or_create(
            data_dir, trust_domain, ca_cert=ca_cert, ca_key=ca_key, ca_bundle=ca_bundle
        )
        if store_url is not None and ca_cert is None:
            # Every replica signs with the CA the first one to start settled in etcd.
            ca = _shared_ca(shared, ca, data_dir, trust_domain, ca_key_passphrase)
        if store_url is not None:
            held = shared.claim("admin_token", token.encode()).decode()
            if held != token:  # another replica's: the same token works on every replica
                atomic_write(token_path, held + "\n")
                token, created = held, False
    except BaseException:
        store.close()
        raise
    state = ConfigState(
        store,
        trust_domain=trust_domain,
        workload_ttl=workload_ttl,
        trust_bundle=tuple(ca.trust_bundle()),
        discovery_sources=frozenset({"consul"}) if consul is not None else frozenset(),
    )
    tokens = TokenRegistry(store)
    routes = ca_routes(ca, tokens, token)
    app = create_app(
        state,
        token,
        reap_interval=reap_interval,
        extra_routes=routes,
        tokens=tokens,
        open_registry=open_registry,
        consul=consul,
    )
    app.state.ca_key_id = ca.key_id
    app.state.tls_certificate = (
        ServiceCertificate(ca, data_dir, tls_names, tls_ttl) if tls_names is not None else None
    )
    app.state.tls = app.state.tls_certificate.paths if tls_names is not None else None
    return app, state, token_path, created


def tls_names_for(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The names a TLS certificate of the service covers: where it listens (for a wildcard
    address, this machine's loopback names), plus ``extra`` (``--tls-name``)."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - names for a wildcard address, not a bind
        names = ["localhost", "127.0.0.1", "::1"]
    elif host in ("127.0.0.1", "localhost"):
        names = ["localhost", "127.0.0.1"]
    else:
        names = [host]
    return list(dict.fromkeys([*names, *extra]))


def _uvicorn_config(app: Starlette, graceful: int) -> uvicorn.Config:
    tls = app.state.tls
    return uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=graceful,
        backlog=4096,
        # Every workload comes back on its connection with its next watch; uvicorn's 5 s
        # would close those of a workload busy compiling a big snapshot, or one paused, and
        # its next watch would race the close. As long-poll services do (nginx: 75 s).
        timeout_keep_alive=int(MAX_WATCH_WAIT) + 15,
        # Callers are known by their tokens, never by X-Forwarded-* headers (uvicorn trusts
        # them from 127.0.0.1 by default); off, which also saves the middleware per request.
        proxy_headers=False,
        ssl_certfile=str(tls[0]) if tls is not None else None,
        ssl_keyfile=str(tls[1]) if tls is not None else None,
    )


def _shared_ca(
    store: EtcdStore,
    local: CertificateAuthority,
    data_dir: Path,
    trust_domain: str,
    passphrase: bytes | None,
) -> CertificateAuthority:
    """The CA stored in etcd (this replica's own when it is the first); written to the data
    dir too, so a restart without etcd at hand still knows its roots. With ``passphrase`` its
    key is stored encrypted, and every replica needs the same passphrase to open it."""
    from .etcd_store import DEFAULT_PREFIX

    material = local.material
    offer = json.dumps(
        {"cert": pem_certificate(material.certificate), "key": pem_key(material.key, passphrase)}
    )
    held = json.loads(store.claim("ca", offer.encode()))
    stored = str(held["key"])
    if "ENCRYPTED PRIVATE KEY" not in stored:
        log.warning(
            "the CA's private key is kept in etcd unencrypted (%sclaims/ca): whoever can read it can "
            "sign mesh identities; give every replica --ca-key-passphrase-file%s",
            DEFAULT_PREFIX,
            " (it was stored by a replica without one: delete that key with etcdctl and restart the "
            "replicas to store it encrypted)"
            if passphrase is not None
            else "",
        )
        key = stored
    elif passphrase is None:
        raise MeshError(
            "the CA key kept in etcd is encrypted: give this replica --ca-key-passphrase-file, "
            "the passphrase file the other replicas were started with"
        )
    else:
        try:
            opened = serialization.load_pem_private_key(stored.encode(), password=passphrase)
        except ValueError:
            raise MeshError(
                "--ca-key-passphrase-file does not open the CA key kept in etcd: every replica "
                "needs the same passphrase"
            ) from None
        if not isinstance(opened, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise MeshError("the CA key kept in etcd is neither ECDSA nor RSA")
        key = pem_key(opened)
    if held["cert"] == pem_certificate(material.certificate):
        return local
    folder = data_dir / "ca"
    atomic_write(folder / "ca-key.pem", key)  # mkstemp: 0600
    atomic_write(folder / "ca.pem", held["cert"])
    atomic_write(folder / "roots.pem", held["cert"])
    return CertificateAuthority.load_or_create(data_dir, trust_domain)


INSECURE_WARNING = (
    "WARNING: INSECURE: --insecure-open-registry: callers without credentials read policy and "
    "register, watch and withdraw workloads of every identity that has no bootstrap token; "
    "anyone who reaches this port can announce endpoints for those services"
)


# The config service holds one long poll per watching workload, each a few dozen live objects,
# and makes garbage at every answer. With CPython's default thresholds (a young collection every
# 700 new objects, an older one every 10 of those) the collector walked those live objects so
# often that it took 8.0 of the service's 15.8 s of CPU in a 5,000-workload fan-out: 55%. Fewer,
# larger young collections leave each round's garbage to refcounting, as it mostly is, and hold
# at most this many unreached objects (a few MiB). Only the dedicated process (``meshctl serve``)
# sets them: an embedded ConfigServer shares its process with the application.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """The collector's thresholds for a process that is the config service (GC_THRESHOLDS)."""
    gc.set_threshold(*GC_THRESHOLDS)


def serve_forever(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    trust_domain: str = CLUSTER_DOMAIN,
    workload_ttl: float = 90.0,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    ca_bundle: Path | None = None,
    open_registry: bool = False,
    store_url: str | None = None,
    etcd_tls: EtcdTls | None = None,
    etcd_auth: EtcdAuth | None = None,
    etcd_lease_ttl: int | None = None,
    ca_key_passphrase: bytes | None = None,
    tls: bool = False,
    tls_names: Sequence[str] = (),
    consul: ConsulSettings | None = None,
) -> None:
    """``meshctl serve``: run until SIGINT/SIGTERM, then release watches and exit cleanly."""
    app, state, token_path, created = build_app(
        data_dir,
        trust_domain=trust_domain,
        workload_ttl=workload_ttl,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_bundle=ca_bundle,
        open_registry=open_registry,
        store_url=store_url,
        etcd_tls=etcd_tls,
        etcd_auth=etcd_auth,
        etcd_lease_ttl=etcd_lease_ttl,
        ca_key_passphrase=ca_key_passphrase,
        tls_names=tls_names_for(host, tls_names) if tls else None,
        consul=consul,
    )
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    state.reserve(host, bound)
    if open_registry:
        print(INSECURE_WARNING, flush=True)
        log.warning(INSECURE_WARNING)
    verb = "created" if created else "in"
    scheme = "https" if tls else "http"
    print(f"meshlib config service on {scheme}://{host}:{bound} (version {state.version})", flush=True)
    if app.state.tls is not None:
        print(f"TLS: workloads and meshctl verify it with {app.state.tls[2]}", flush=True)
    where = f"state in {store_url}, local files in {data_dir}" if store_url else f"data in {data_dir}"
    print(f"{where}; admin token {verb} {token_path}", flush=True)
    print(f"CA key id {app.state.ca_key_id}; trust bundle of {len(state.trust_bundle)} root(s)", flush=True)
    if consul is not None:  # never the token
        acl = "with an ACL token" if consul.token else "without an ACL token"
        print(f"discovery: Consul at {consul.url} ({acl})", flush=True)
    config = _uvicorn_config(app, 5)
    tune_gc()
    try:
        _Server(config, app.state.notifier, app.state.tls_certificate).run(sockets=[sock])
    finally:
        state.store.close()


class ConfigServer:
    """The config service on a background thread, for tests, the demo and embedding.

    >>> with ConfigServer(tmp_path) as server:
    ...     server.url, server.admin_token
    """

    def __init__(
        self,
        data_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        trust_domain: str = CLUSTER_DOMAIN,
        workload_ttl: float = 90.0,
        reap_interval: float = 5.0,
        ca_cert: Path | None = None,
        ca_key: Path | None = None,
        ca_bundle: Path | None = None,
        insecure_open_registry: bool = False,
        store_url: str | None = None,
        etcd_tls: EtcdTls | None = None,
        etcd_auth: EtcdAuth | None = None,
        ca_key_passphrase: bytes | None = None,
        tls: bool = False,
        tls_ttl: dt.timedelta = SERVER_TTL,
        consul: ConsulSettings | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.tls_ttl = tls_ttl
        self.consul = consul
        self.store_url = store_url
        self.etcd_tls = etcd_tls
        self.etcd_auth = etcd_auth
        self._ca_key_passphrase = ca_key_passphrase
        self.tls = tls
        self.ca_bundle_path: Path | None = None  # with tls: what clients verify the service by
        self.open_registry = insecure_open_registry
        self._ca = (ca_cert, ca_key, ca_bundle)
        self.host = host
        self.port = port
        self.trust_domain = trust_domain
        self.workload_ttl = workload_ttl
        self.reap_interval = reap_interval
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.state: ConfigState | None = None
        self.token_path: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def admin_token(self) -> str:
        assert self.token_path is not None, "start the server first"
        return self.token_path.read_text(encoding="utf-8").strip()

    def start(self, timeout: float = 10.0) -> ConfigServer:
        app, self.state, self.token_path, _ = build_app(
            self.data_dir,
            trust_domain=self.trust_domain,
            workload_ttl=self.workload_ttl,
            reap_interval=self.reap_interval,
            open_registry=self.open_registry,
            store_url=self.store_url,
            etcd_tls=self.etcd_tls,
            etcd_auth=self.etcd_auth,
            ca_key_passphrase=self._ca_key_passphrase,
            tls_names=tls_names_for(self.host) if self.tls else None,
            tls_ttl=self.tls_ttl,
            consul=self.consul,
            ca_cert=self._ca[0],
            ca_key=self._ca[1],
            ca_bundle=self._ca[2],
        )
        if app.state.tls is not None:
            self.ca_bundle_path = app.state.tls[2]
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.state.reserve(self.host, self.port)
        if self.open_registry:
            log.warning(INSECURE_WARNING)
        config = _uvicorn_config(app, 2)
        self._server = server = _Server(config, app.state.notifier, app.state.tls_certificate)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="meshlib-config-service", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"config service did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.state is not None:
            self.state.store.close()
        self._server = self._thread = None

    def __enter__(self) -> ConfigServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
