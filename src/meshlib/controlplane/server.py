"""Running the config service: in the foreground (``meshctl serve``) or in a thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from .._net import bind
from ..ca.authority import CertificateAuthority
from ..ca.tokens import TokenRegistry
from ..core.hosts import CLUSTER_DOMAIN
from ..protocol import DEFAULT_PORT
from .app import VersionNotifier, create_app
from .auth import ensure_admin_token
from .ca_routes import ca_routes
from .state import ConfigState
from .store import SQLiteStore

__all__ = ["INSECURE_WARNING", "ConfigServer", "build_app", "serve_forever"]

log = logging.getLogger("meshlib.controlplane")
DB_FILE = "meshlib.db"


class _Server(uvicorn.Server):
    """uvicorn, releasing held watch requests first so that shutdown does not wait on them."""

    def __init__(self, config: uvicorn.Config, notifier: VersionNotifier) -> None:
        super().__init__(config)
        self._notifier = notifier

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
) -> tuple[Starlette, ConfigState, Path, bool]:
    """The app over the embedded store in ``data_dir``: (app, state, token path, token created)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    token, token_path, created = ensure_admin_token(data_dir)
    store = SQLiteStore(data_dir / DB_FILE)
    ca = CertificateAuthority.load_or_create(
        data_dir, trust_domain, ca_cert=ca_cert, ca_key=ca_key, ca_bundle=ca_bundle
    )
    state = ConfigState(
        store, trust_domain=trust_domain, workload_ttl=workload_ttl, trust_bundle=tuple(ca.trust_bundle())
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
    )
    app.state.ca_key_id = ca.key_id
    return app, state, token_path, created


INSECURE_WARNING = (
    "WARNING: INSECURE: --insecure-open-registry: callers without credentials read policy and "
    "register, watch and withdraw workloads of every identity that has no bootstrap token; "
    "anyone who reaches this port can announce endpoints for those services"
)


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
    )
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    state.reserve(host, bound)
    if open_registry:
        print(INSECURE_WARNING, flush=True)
        log.warning(INSECURE_WARNING)
    verb = "created" if created else "in"
    print(f"meshlib config service on http://{host}:{bound} (version {state.version})", flush=True)
    print(f"data in {data_dir}; admin token {verb} {token_path}", flush=True)
    print(f"CA key id {app.state.ca_key_id}; trust bundle of {len(state.trust_bundle)} root(s)", flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5, backlog=4096)
    try:
        _Server(config, app.state.notifier).run(sockets=[sock])
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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.open_registry = insecure_open_registry
        self._ca = {"ca_cert": ca_cert, "ca_key": ca_key, "ca_bundle": ca_bundle}
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
        return f"http://{self.host}:{self.port}"

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
            **self._ca,
        )
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.state.reserve(self.host, self.port)
        if self.open_registry:
            log.warning(INSECURE_WARNING)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, backlog=4096)
        self._server = server = _Server(config, app.state.notifier)
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
