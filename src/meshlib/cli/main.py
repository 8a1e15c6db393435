"""meshctl: serve, apply, get, delete, validate, analyze, status, top, demo.

Talks to the config service at ``--server`` (``$MESHCTL_SERVER``, default
http://127.0.0.1:15010). Writes use the admin token from ``--token-file``,
``$MESHCTL_TOKEN`` or the default server data dir's ``admin.token``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .._files import read_secret_file, write_secret
from .._version import __version__
from ..control_plane_tls import control_plane_verify
from ..controlplane.client import ControlPlaneClient
from ..core.analyze import analyze
from ..core.hosts import CLUSTER_DOMAIN
from ..errors import ConfigError, MeshError
from ..paths import default_server_dir
from ..policy.loader import load_paths
from ..policy.resources import KINDS, KindInfo, Resource, ResourceKey, find_kind
from ..policy.skipped import SkippedResource
from ..policy.validate import parse_resource
from ..protocol import DEFAULT_PORT
from ..registry import WorkloadRegistration
from .output import age, dump, printable, table
from .top import add_arguments as top_arguments
from .top import cmd_top as _top

__all__ = ["main"]

Command = Callable[[argparse.Namespace], int]


def _token(args: argparse.Namespace) -> str | None:
    if os.environ.get("MESHCTL_TOKEN"):
        return os.environ["MESHCTL_TOKEN"].strip()
    path = Path(args.token_file) if args.token_file else default_server_dir() / "admin.token"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        if args.token_file:
            raise MeshError(f"cannot read token file {path}") from None
        return None


def _client(args: argparse.Namespace) -> ControlPlaneClient:
    ca_file = Path(args.ca_file) if args.ca_file else None
    return ControlPlaneClient(args.server, _token(args), verify=control_plane_verify(ca_file, "--ca-file"))


def _kind(name: str) -> KindInfo:
    info = find_kind(name)
    if info is None:
        known = ", ".join(f"{i.kind} ({'/'.join(i.short)})" for i in KINDS.values())
        raise MeshError(f"unknown kind {name!r}; known: {known}")
    return info


# --- commands --------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from ..controlplane.server import serve_forever

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    consul = None
    if args.consul:
        from ..controlplane.consul_source import ConsulSettings

        consul = ConsulSettings.from_options(args.consul, path(args.consul_token_file))
    elif args.consul_token_file:
        raise MeshError("--consul-token-file needs --consul URL")
    etcd_tls = None
    if args.etcd_cacert:
        from ..controlplane.etcd_store import EtcdTls

        etcd_tls = EtcdTls(Path(args.etcd_cacert), path(args.etcd_cert), path(args.etcd_key))
    elif args.etcd_cert or args.etcd_key:
        raise MeshError("--etcd-cert and --etcd-key need --etcd-cacert (TLS towards etcd)")
    etcd_auth = None
    if args.etcd_user:
        from ..controlplane.etcd_store import EtcdAuth

        etcd_auth = EtcdAuth.from_options(args.etcd_user, path(args.etcd_password_file))
    elif args.etcd_password_file:
        raise MeshError("--etcd-password-file needs --etcd-user NAME")
    serve_forever(
        Path(args.data_dir),
        args.host,
        args.port,
        trust_domain=args.trust_domain,
        workload_ttl=args.workload_ttl,
        ca_cert=path(args.ca_cert),
        ca_key=path(args.ca_key),
        ca_bundle=path(args.ca_bundle),
        open_registry=args.insecure_open_registry,
        store_url=args.store,
        etcd_tls=etcd_tls,
        etcd_auth=etcd_auth,
        etcd_lease_ttl=args.etcd_lease_ttl,
        ca_key_passphrase=(
            read_secret_file(Path(args.ca_key_passphrase_file), "--ca-key-passphrase-file").encode()
            if args.ca_key_passphrase_file
            else None
        ),
        tls=args.tls,
        tls_names=args.tls_name,
        consul=consul,
    )
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    # file:line errors before any I/O; kinds meshlib does not apply go as stubs that name them
    # (never their content: a Secret stays here), so the service's answer lists them too.
    loaded = load_paths(args.filename, namespace=args.namespace, strict=args.strict)
    manifests = [item.resource.manifest() for item in loaded] + [s.stub() for s in loaded.skipped]
    with _client(args) as client:
        result = client.apply(manifests, namespace=args.namespace, dry_run=args.dry_run, strict=args.strict)
    skipped = _located(result.get("skipped", []), loaded.skipped)
    if args.output != "text":
        print(dump({**result, "skipped": [s.to_json() for s in skipped]}, args.output))
        return 0
    suffix = " (dry run)" if args.dry_run else ""
    for item in result["results"]:
        info = KINDS[item["kind"]]
        ns = "" if item["namespace"] == args.namespace else f" -n {item['namespace']}"
        print(printable(f"{info.resource_type}/{item['name']}{ns} {item['action']}{suffix}"))
    for entry in skipped:
        print(printable(f"skipped: {entry}"))
    return 0


def _located(answered: list[dict[str, Any]], local: Sequence[SkippedResource]) -> list[SkippedResource]:
    """The service's skipped list with the file and line each entry was read from (the
    service answers in the order the stubs were sent)."""
    out = []
    for index, data in enumerate(answered):
        entry = SkippedResource.from_json(data)
        if index < len(local) and local[index].stub() == entry.stub():
            entry = dataclasses.replace(entry, source=local[index].source, line=local[index].line)
        out.append(entry)
    return out


def _columns(info: KindInfo, res: Resource) -> list[str]:
    spec: Any = res.spec
    if info.kind == "VirtualService":
        return [",".join(spec.hosts), ",".join(spec.gateways) or "mesh"]
    if info.kind == "DestinationRule":
        return [spec.host, ",".join(s.name for s in spec.subsets) or "-"]
    if info.kind == "ServiceEntry":
        return [",".join(spec.hosts), spec.location or "-", spec.resolution or "NONE"]
    if info.kind == "PeerAuthentication":
        return [spec.mtls.mode if spec.mtls else "UNSET"]
    if info.kind == "AuthorizationPolicy":
        return [spec.action]
    if info.kind == "RequestAuthentication":
        return [",".join(r.issuer for r in spec.jwt_rules) or "-"]
    selector = getattr(spec, "selector", None)
    selected = ",".join(f"{k}={v}" for k, v in sorted(selector.match_labels.items())) if selector else ""
    if info.kind == "RateLimit":
        return [selected or "(namespace)", str(len(spec.limits))]
    if info.kind == "Telemetry":
        configured = (("tracing", spec.tracing), ("accessLogging", spec.access_logging))
        parts = [name for name, value in configured if value]
        return [selected or "(namespace)", ",".join(parts) or "-"]
    raise MeshError(f"meshctl get has no table for {info.kind}; use -o yaml")


_HEADERS = {
    "VirtualService": ["HOSTS", "GATEWAYS"],
    "DestinationRule": ["HOST", "SUBSETS"],
    "ServiceEntry": ["HOSTS", "LOCATION", "RESOLUTION"],
    "PeerAuthentication": ["MODE"],
    "AuthorizationPolicy": ["ACTION"],
    "RequestAuthentication": ["ISSUERS"],
    "RateLimit": ["SELECTOR", "LIMITS"],
    "Telemetry": ["SELECTOR", "CONFIGURES"],
}


def cmd_get(args: argparse.Namespace) -> int:
    kinds = list(KINDS.values()) if args.kind.lower() == "all" else [_kind(args.kind)]
    namespace = None if args.all_namespaces else args.namespace
    with _client(args) as client:
        if args.name:
            info = kinds[0]
            manifests = [client.get(ResourceKey(info.kind, args.namespace, n)) for n in args.name]
        else:
            manifests = []
            for info in kinds:
                manifests.extend(client.list(info.kind, namespace)["items"])
    if args.output in ("yaml", "json"):
        single = bool(args.name) and len(manifests) == 1
        data: Any = manifests[0] if single else manifests
        if args.output == "json" and not single:
            data = {"apiVersion": "v1", "kind": "List", "items": manifests}
        print(dump(data, args.output))
        return 0
    if not manifests:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"No resources found in {where}.", file=sys.stderr)
        return 0
    for info in kinds:
        rows = []
        for manifest in manifests:
            if manifest.get("kind") != info.kind:
                continue
            res, _ = parse_resource(manifest)
            if res is None:
                continue
            meta = manifest.get("metadata", {})
            rows.append(
                [
                    *([res.namespace] if namespace is None else []),
                    res.name,
                    *_columns(info, res),
                    age(meta.get("creationTimestamp")),
                ]
            )
        if rows:
            headers = [*(["NAMESPACE"] if namespace is None else []), "NAME", *_HEADERS[info.kind], "AGE"]
            if len(kinds) > 1:
                print(f"# {info.resource_type}")
            print(table(headers, rows))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    keys: list[ResourceKey] = []
    if args.filename:
        keys = [item.resource.key for item in load_paths(args.filename, namespace=args.namespace)]
    elif args.kind and args.name:
        info = _kind(args.kind)
        keys = [ResourceKey(info.kind, args.namespace, name) for name in args.name]
    else:
        raise MeshError("say what to delete: KIND NAME [NAME...] or -f FILE")
    failed = 0
    with _client(args) as client:
        for key in keys:
            info = KINDS[key.kind]
            try:
                client.delete(key)
            except MeshError as exc:
                if getattr(exc, "status_code", None) == 404 and args.ignore_not_found:
                    continue
                print(f"error: {printable(str(exc))}", file=sys.stderr)
                failed += 1
                continue
            print(f'{info.resource_type} "{key.name}" deleted')
    return 1 if failed else 0


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_paths(args.filename, namespace=args.namespace, strict=args.strict)
    if args.output != "text":
        valid = [{**item.resource.key._asdict(), "source": item.source, "line": item.line} for item in loaded]
        print(dump({"resources": valid, "skipped": [s.to_json() for s in loaded.skipped]}, args.output))
        return 0
    for item in loaded:
        print(printable(f"{item.where}: {item.resource.key} valid"))
    for entry in loaded.skipped:
        print(printable(f"skipped: {entry}"))
    summary = f"{len(loaded)} resource(s) valid"
    if loaded.skipped:
        summary += f", {len(loaded.skipped)} skipped (kinds meshlib does not apply; --strict refuses them)"
    print(summary)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    workloads: list[WorkloadRegistration] | None = None
    if args.filename:
        resources = [item.resource for item in load_paths(args.filename, namespace=args.namespace)]
    else:
        with _client(args) as client:
            manifests = client.list()["items"]
            workloads = [
                WorkloadRegistration.model_validate(w["registration"])
                for w in client.workloads()["items"]
                if not w["lost"]
            ]
        resources = [r for r in (parse_resource(m)[0] for m in manifests) if r is not None]
    findings = analyze(resources, workloads)
    for finding in findings:
        print(printable(str(finding)))
    if not findings:
        scope = "files" if args.filename else args.server
        print(f"No problems found in {len(resources)} resource(s) ({scope}).")
    return 1 if any(f.level == "Error" for f in findings) else 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.summary:
        with _client(args) as client:
            counts = client.workload_summary()
        if args.output in ("yaml", "json"):
            print(dump(counts, args.output))
        else:
            print(
                f"version {counts['version']}: {counts['workloads']} workloads, {counts['synced']} synced, "
                f"{counts['stale']} stale, {counts['notAcked']} not acked, {counts['nacked']} NACK, "
                f"{counts['connected']} connected, {counts['lost']} lost"
            )
        return 0
    with _client(args) as client:
        data = client.workloads()
    items = data["items"]
    if args.output in ("yaml", "json"):
        print(dump(data, args.output))
        return 0
    if not items:
        print("No workloads registered.", file=sys.stderr)
        return 0
    rows = []
    for item in sorted(items, key=lambda i: (i["registration"]["namespace"], i["registration"]["service"])):
        reg = item["registration"]
        endpoints = (
            ",".join(
                f"{e['address']}:{e['port']}" + ("" if e["ready"] else "(not ready)")
                for e in reg["endpoints"]
            )
            or "-"
        )
        if item["nackVersion"] is not None:
            sync = f"NACK v{item['nackVersion']}: {item['nackReason'][:60]}"
        elif item.get("syncedVersion", item["ackedVersion"]) == data["version"]:
            sync = f"SYNCED v{data['version']}"
        elif item["ackedVersion"] is None:
            sync = "NOT ACKED"
        else:
            sync = f"STALE v{item['ackedVersion']}"
        state = "LOST" if item["lost"] else "CONNECTED" if item["connected"] else "IDLE"
        rows.append(
            [
                reg["service"],
                reg["namespace"],
                reg["id"],
                item["identity"],
                endpoints,
                sync,
                state,
                _expiry(reg.get("certificateExpires")),
                reg.get("certificateIssuer") or "-",
                age(item["lastSeen"]),
            ]
        )
    print(
        table(
            [
                "SERVICE",
                "NAMESPACE",
                "WORKLOAD",
                "IDENTITY",
                "ENDPOINTS",
                "CONFIG",
                "STATE",
                "CERT EXPIRES",
                "CERT ISSUER",
                "LAST SEEN",
            ],
            rows,
        )
    )
    print(f"\nconfig service version {data['version']}")
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    return _top(args, _client)


def cmd_token(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "create":
            if not args.service:
                raise MeshError("token create needs --service")
            made = client.create_token(args.service, args.namespace, args.ttl)
            if args.output_file:
                write_secret(Path(args.output_file), made["token"] + "\n")
                print(f"token {made['id']} for {made['identity']} written to {args.output_file} (mode 0600)")
            else:
                print(made["token"])  # shown once; only its hash is kept
            return 0
        if args.action == "list":
            rows = [
                [
                    t["id"],
                    t["namespace"],
                    t["service"],
                    age(t["created"]),
                    "revoked" if t["revoked"] else ("expired" if t["expires"] < time.time() else "valid"),
                ]
                for t in client.list_tokens()["items"]
            ]
            print(table(["ID", "NAMESPACE", "SERVICE", "AGE", "STATE"], rows) if rows else "No tokens.")
            return 0
        if not args.id:
            raise MeshError("token revoke needs the token ID (see meshctl token list)")
        revoked = client.revoke_token(args.id)
        print(f"token {revoked['id']} ({revoked['namespace']}/{revoked['service']}) revoked")
        return 0


def _expiry(value: str | None) -> str:
    """``in 23h`` / ``EXPIRED 5m ago`` / ``-`` (no mesh certificate)."""
    if not value:
        return "-"
    try:
        when = datetime.fromisoformat(value).timestamp()
    except ValueError:
        return value
    now = time.time()
    return f"in {age(now, now=when)}" if when > now else f"EXPIRED {age(when)} ago"


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        report = run_demo(keep=args.keep, quick=args.quick)
    except KeyboardInterrupt:
        print("\ninterrupted: every process the demo started is stopped", file=sys.stderr)
        return 130
    good = report.failed == 0 and all(step.within_tolerance() for step in report.steps)
    return 0 if good else 1


# --- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshctl", description="Control meshlib's config service.")
    parser.add_argument("--version", action="version", version=f"meshctl {__version__}")
    parser.add_argument(
        "--server",
        default=os.environ.get("MESHCTL_SERVER", f"http://127.0.0.1:{DEFAULT_PORT}"),
        help="config service URL (env MESHCTL_SERVER)",
    )
    parser.add_argument("--token-file", help="admin token file (env MESHCTL_TOKEN holds the token itself)")
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("MESHCTL_CA_FILE"),
        help="CA bundle of a TLS config service (its <data-dir>/tls/ca-bundle.pem; env MESHCTL_CA_FILE)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def files(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument(
            "-f",
            "--filename",
            action="append",
            required=required,
            help="YAML file, folder or - for stdin (repeatable)",
        )

    def namespace(p: argparse.ArgumentParser) -> None:
        p.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")

    def strict(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--strict",
            action="store_true",
            help="refuse everything if a resource is of a kind meshlib does not apply "
            "(Deployment, Gateway, ...); without it those are listed as skipped",
        )

    def output(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--output", choices=["text", "yaml", "json"], default="text")

    p = add("serve", cmd_serve, "run the config service (store, watch API, registry)")
    p.add_argument(
        "--data-dir", default=str(default_server_dir()), help="where state and the admin token live"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument(
        "--store",
        help="keep state in etcd, shared by every replica: etcd://host:port[,host:port...] "
        "(needs meshlib[etcd]; default: SQLite in --data-dir)",
    )
    p.add_argument(
        "--etcd-cacert",
        metavar="FILE",
        help="talk to etcd over TLS, verifying its certificate by this CA bundle (as etcdctl --cacert)",
    )
    p.add_argument("--etcd-cert", metavar="FILE", help="a client certificate for etcd (--client-cert-auth)")
    p.add_argument("--etcd-key", metavar="FILE", help="the key of --etcd-cert")
    p.add_argument(
        "--etcd-user",
        metavar="NAME",
        help="authenticate to etcd as this user (etcd auth enabled); the password is read from "
        "--etcd-password-file or $ETCDCTL_PASSWORD, never from the command line",
    )
    p.add_argument("--etcd-password-file", metavar="FILE", help="the file holding --etcd-user's password")
    p.add_argument(
        "--etcd-lease-ttl",
        type=int,
        metavar="SECONDS",
        help="the etcd lease that keeps this replica's workloads live (default 15): when the replica "
        "dies, its workloads that did not fail over are withdrawn this long after",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a certificate of the mesh CA (clients verify it with "
        "<data-dir>/tls/ca-bundle.pem: MESH_CONTROL_PLANE_CA, meshctl --ca-file)",
    )
    p.add_argument(
        "--tls-name",
        action="append",
        default=[],
        help="another host name or address the TLS certificate covers (repeatable)",
    )
    p.add_argument(
        "--consul",
        metavar="URL",
        help="let ServiceEntries annotated discovery.meshlib.io/source: consul take their endpoints "
        "from this Consul agent, e.g. http://127.0.0.1:8500 (needs meshlib[consul])",
    )
    p.add_argument(
        "--consul-token-file",
        help="the Consul ACL token, read from this file (else $CONSUL_HTTP_TOKEN_FILE or "
        "$CONSUL_HTTP_TOKEN); never printed or logged",
    )
    p.add_argument("--trust-domain", default=CLUSTER_DOMAIN)
    p.add_argument(
        "--workload-ttl",
        type=float,
        default=90.0,
        help="seconds without contact before a workload's endpoints are withdrawn",
    )
    p.add_argument("--ca-cert", help="sign with this CA certificate (e.g. an intermediate under your root)")
    p.add_argument("--ca-key", help="the key of --ca-cert")
    p.add_argument("--ca-bundle", help="roots workloads trust (default: --ca-cert itself)")
    p.add_argument(
        "--ca-key-passphrase-file",
        metavar="FILE",
        help="with --store etcd://...: keep the CA key in etcd encrypted with the passphrase in this "
        "file (the same file on every replica; never printed or logged)",
    )
    p.add_argument(
        "--insecure-open-registry",
        action="store_true",
        help="INSECURE: let callers without a bootstrap token read policy and register, watch and "
        "withdraw workloads of identities that have no token (for meshes without mTLS)",
    )

    p = add("token", cmd_token, "bootstrap tokens: each proves one workload identity to the CA")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("id", nargs="?", help="the token to revoke")
    p.add_argument("--service", help="the identity's service account (create)")
    namespace(p)
    p.add_argument("--ttl", help="how long the token is valid, e.g. 24h, 720h (default 720h)")
    p.add_argument("-o", "--output-file", help="write the token to this file (0600) instead of stdout")

    p = add("apply", cmd_apply, "validate resources and store them; prints what changed")
    files(p, True)
    namespace(p)
    p.add_argument("--dry-run", action="store_true", help="validate on the server, store nothing")
    strict(p)
    output(p)

    p = add("get", cmd_get, "list resources of a kind, or show some by name")
    p.add_argument(
        "kind",
        help="kind: VirtualService/vs, DestinationRule/dr, ServiceEntry/se, PeerAuthentication/pa, "
        "AuthorizationPolicy/ap, RequestAuthentication/ra, RateLimit/rl, Telemetry, all",
    )
    p.add_argument("name", nargs="*")
    namespace(p)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")

    p = add("delete", cmd_delete, "remove resources by kind and name, or those in files")
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="*")
    files(p, False)
    namespace(p)
    p.add_argument("--ignore-not-found", action="store_true")

    p = add("validate", cmd_validate, "check files offline; non-zero exit with file:line errors")
    files(p, True)
    namespace(p)
    strict(p)
    output(p)

    p = add("analyze", cmd_analyze, "find cross-resource problems (on the server, or in files with -f)")
    files(p, False)
    namespace(p)

    p = add("status", cmd_status, "every workload: identity, endpoints, acknowledged config, last seen")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.add_argument("--summary", action="store_true", help="only how many workloads are in each state")

    p = add("top", cmd_top, "who calls whom, live: requests per second, errors, p50/p99 per edge")
    top_arguments(p)

    p = add("demo", cmd_demo, "the order app on an embedded mesh, under real traffic (examples/order-app)")
    p.add_argument("--keep", action="store_true", help="leave the mesh running at the end, until Ctrl-C")
    p.add_argument("--quick", action="store_true", help="fewer requests per step (about half the time)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {printable(str(issue))}", file=sys.stderr)
        return 1
    except MeshError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
