"""Secrets never leak. The API and meshctl are driven through token creation, workload
registration, certificate issuance, refusals (bad, forged, revoked and misused tokens, bad
CSRs, a private key sent as a CSR) and every read command, with the config service
(``meshctl serve --tls``), the workloads and meshctl logging at DEBUG. Then no API response
but the one creating it, no log line, no command output and no file but the one meant to hold
it contains a private key (a ``PRIVATE KEY`` block, its base64 or its bytes) or a token; the
files that do hold one are 0600 in 0700 folders."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshlib import Mesh
from tests.reliability._controlplane import REVIEWS, STRICT, ConfigProcess, WorkloadProcess, meshctl
from tests.servers import wait_for

SECRET_DATA = "secret-value-that-must-stay-on-this-side"  # a Kubernetes Secret's data in an applied file
READS = ("healthz", "resources", "snapshot", "workloads", "edges", "discovery", "tokens", "trust-bundle")
COMMANDS = (
    ("status",),
    ("status", "-o", "json"),
    ("status", "-o", "yaml"),
    ("token", "list"),
    ("get", "all", "-A", "-o", "yaml"),
    ("analyze",),
    ("top", "--once"),
    ("top", "-o", "json", "--once"),
    ("get", "all", "-A"),
    ("get", "all", "-A", "-o", "json"),
    ("get", "pa", "default", "-n", "istio-system", "-o", "yaml"),
    ("--version",),
)
SHOWN = "token shown by meshctl"
NO_ENCRYPTION = serialization.NoEncryption()


@dataclass
class Needles:
    """What must not show: name -> the bytes that would give it away."""

    found: dict[str, list[bytes]] = field(default_factory=dict)

    def token(self, name: str, value: str) -> None:
        parts = [value.encode()]
        if value.startswith("mtk_"):  # mtk_<id>.<secret>: the id may be shown, the secret never
            parts.append(value.partition(".")[2].encode())
        self.found[name] = parts

    def key(self, name: str, pem: bytes) -> None:
        """A private key: each base64 line of its PEM, its DER, its private scalar (bytes and hex)."""
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
        self.found[name] = [*lines, der, base64.b64encode(der), scalar, scalar.hex().encode()]

    def in_(self, data: bytes, allowed: frozenset[str] = frozenset()) -> list[str]:
        """The names of the secrets ``data`` gives away, but for ``allowed``."""
        leaks = [n for n, parts in self.found.items() if n not in allowed and any(p in data for p in parts)]
        if b"PRIVATE KEY" in data and "PRIVATE KEY" not in allowed:
            leaks.append("a PEM PRIVATE KEY block")
        return leaks


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)


def csr_for(key: ec.EllipticCurvePrivateKey) -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class Recorded:
    """The config service's API as a client sees it, every answer kept; meshctl runs too."""

    def __init__(self, service: ConfigProcess, needles: Needles) -> None:
        self.service, self.needles = service, needles
        self.responses: list[tuple[str, bytes, frozenset[str]]] = []  # (what, body, the token it made)
        self.runs: list[tuple[str, subprocess.CompletedProcess[str]]] = []
        self.http = httpx.Client(
            base_url=service.url, verify=service.verify, timeout=10.0, event_hooks={"response": [self._keep]}
        )

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        request = response.request
        made: frozenset[str] = frozenset()
        if (request.method, request.url.path) == ("POST", "/v1/tokens") and response.is_success:
            body = response.json()
            name = f"bootstrap token {body['id']}"
            self.needles.token(name, body["token"])
            made = frozenset({name})  # the one response that may show it
        self.responses.append(
            (f"{request.method} {request.url.path} -> {response.status_code}", response.content, made)
        )

    def token(self, service: str) -> str:
        made = self.http.post(
            "/v1/tokens", json={"service": service}, headers=bearer(self.service.admin_token)
        )
        assert made.status_code == 200, made.text
        return str(made.json()["token"])

    def ctl(self, *argv: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """meshctl against the service, with the admin token unless told another."""
        given = self.service.admin_token if token is None else token
        run = meshctl(*argv, server=self.service.url, token=given or None, ca_file=self.service.ca_file)
        self.runs.append((" ".join(argv), run))
        return run

    def leaks(self) -> list[str]:
        found = []
        for what, body, made in self.responses:
            found += [f"API {what}: {name}" for name in self.needles.in_(body, made)]
        for argv, run in self.runs:
            shown = frozenset({SHOWN}) if argv == "token create --service orders" else frozenset()
            found += [
                f"meshctl {argv} stdout: {name}" for name in self.needles.in_(run.stdout.encode(), shown)
            ]
            found += [f"meshctl {argv} stderr: {name}" for name in self.needles.in_(run.stderr.encode())]
        return found


def workload(name: str, service: ConfigProcess, token: str, data_dir: Path, **options: Any) -> Mesh:
    return Mesh(
        name,
        control_plane=service.url,
        control_plane_ca=service.ca_file,
        token=token,
        data_dir=data_dir,
        **options,
    )


def refuse_certificates(api: Recorded, needles: Needles, tokens: dict[str, str], key_pem: str) -> None:
    """Certificate requests with no, bad, forged, revoked and misused tokens, and bad CSRs."""
    fresh = ec.generate_private_key(ec.SECP256R1())
    needles.key("a key whose CSR was signed", pem_key(fresh))
    issued = api.http.post(
        "/v1/certificates", json={"csr": csr_for(fresh)}, headers=bearer(tokens["reviews"])
    )
    assert issued.status_code == 200, issued.text
    assert issued.json()["identity"] == "spiffe://cluster.local/ns/default/sa/reviews"
    forged = f"mtk_{secrets.token_hex(6)}.{secrets.token_urlsafe(32)}"
    needles.token("forged token", forged)
    csr = {"csr": csr_for(fresh)}
    refusals: dict[str, tuple[dict[str, str], dict[str, str], int]] = {
        "no token": ({}, csr, 401),
        "not a token": (bearer("not-a-token"), csr, 401),
        "forged": (bearer(forged), csr, 401),
        "admin token as a bootstrap token": (bearer(api.service.admin_token), csr, 401),
        "revoked": (bearer(tokens["ratings"]), csr, 401),
        "garbage CSR": (bearer(tokens["reviews"]), {"csr": "garbage"}, 400),
        "a private key as the CSR": (bearer(tokens["reviews"]), {"csr": key_pem}, 400),
        "a key in an unknown field": (bearer(tokens["reviews"]), {**csr, "key": key_pem}, 400),
    }
    for name, (headers, body, status) in refusals.items():
        answer = api.http.post("/v1/certificates", json=body, headers=headers)
        assert answer.status_code == status, (name, answer.text)
    # A bootstrap token where the admin token is needed; a workload speaking for another identity.
    as_reviews = bearer(tokens["reviews"])
    assert api.http.post("/v1/apply", json={"resources": []}, headers=as_reviews).status_code == 401
    assert api.http.post("/v1/tokens", json={"service": "x"}, headers=as_reviews).status_code == 401
    items = api.http.get("/v1/workloads", headers=bearer(api.service.admin_token)).json()["items"]
    (frontend,) = [w["registration"] for w in items if w["registration"]["service"] == "frontend"]
    assert (
        api.http.put(f"/v1/workloads/{frontend['id']}", json=frontend, headers=as_reviews).status_code == 403
    )
    assert api.ctl("status", token=forged).returncode == 1


def test_no_response_log_output_or_file_gives_away_a_key_or_a_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger of this process (the frontend workload, httpx)
    service = ConfigProcess(tmp_path / "cp", "--tls", uvicorn_debug=True).start()
    needles = Needles()
    needles.token("admin token", service.admin_token)
    needles.found["a Kubernetes Secret's data"] = [SECRET_DATA.encode()]
    api = Recorded(service, needles)
    tokens = {name: api.token(name) for name in ("reviews", "frontend", "ratings")}
    reviews = WorkloadProcess(
        "reviews", service.url, tokens["reviews"], tmp_path / "reviews", ca_file=service.ca_file
    )
    token_file = tmp_path / "inventory.token"
    policy = tmp_path / "policy.yaml"
    try:
        # meshctl: a token shown once (stdout), one written 0600; policy applied, a Secret left out.
        shown = api.ctl("token", "create", "--service", "orders")
        assert shown.returncode == 0, shown.stderr
        needles.token(SHOWN, shown.stdout.strip())
        written = api.ctl("token", "create", "--service", "inventory", "-o", str(token_file))
        assert written.returncode == 0, written.stderr
        needles.token("token written by meshctl", token_file.read_text().strip())
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db"},
            "data": {"pw": SECRET_DATA},
        }
        policy.write_text(json.dumps(STRICT) + "\n---\n" + json.dumps(secret) + "\n")
        applied = api.ctl("apply", "-f", str(policy))
        assert applied.returncode == 0, applied.stderr
        assert "skipped" in applied.stdout

        # Workloads get certificates, register, watch and talk over STRICT mTLS.
        reviews.start()
        with workload("frontend", service, tokens["frontend"], tmp_path / "frontend") as mesh:
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS)), 30), reviews.log
            with mesh.http_client(timeout=10.0) as client:
                assert [client.get("http://reviews/").status_code for _ in range(20)] == [200] * 20
            listed = api.http.get("/v1/tokens", headers=bearer(service.admin_token)).json()["items"]
            (ratings_id,) = [t["id"] for t in listed if t["service"] == "ratings"]
            assert api.ctl("token", "revoke", ratings_id).returncode == 0
            refuse_certificates(api, needles, tokens, (tmp_path / "frontend" / "key.pem").read_text())

            # Workloads whose tokens are refused: a revoked one, and another identity's.
            for name, token in (("ratings", tokens["ratings"]), ("details", tokens["reviews"])):
                with workload(name, service, token, tmp_path / name, startup_timeout=3.0) as refused:
                    assert refused.workload_identity is not None
                    assert not refused.workload_identity.valid(), f"{name} got a certificate"

            # Every read, by the admin, by a workload and by nobody; every read command.
            for headers in (bearer(service.admin_token), bearer(tokens["reviews"]), {}):
                for read in READS:
                    api.http.get(f"/v1/{read}", headers=headers)
            for argv in COMMANDS:
                assert api.ctl(*argv).returncode == 0, api.runs[-1][1].stderr
            assert api.ctl("apply", "-f", str(policy), token=tokens["reviews"]).returncode == 1
            assert api.ctl("--token-file", str(tmp_path / "cp" / "admin.token"), "status").returncode == 0
            assert api.ctl("validate", "-f", str(policy), token="").returncode == 0
            assert api.ctl("analyze", "-f", str(policy), token="").returncode == 0
    finally:
        reviews.stop()
        service.stop()
        api.http.close()

    holders = {
        tmp_path / "cp" / "admin.token": "admin token",
        tmp_path / "cp" / "ca" / "ca-key.pem": "the CA key",
        tmp_path / "cp" / "tls" / "server-key.pem": "the config service's TLS key",
        token_file: "token written by meshctl",
    }
    for name in ("reviews", "frontend", "ratings", "details"):  # refused workloads made their key too
        holders[tmp_path / name / "key.pem"] = f"{name}'s key"
    for path, name in holders.items():
        if path.suffix == ".pem":
            needles.key(name, path.read_bytes())
    own = {**holders, policy: "a Kubernetes Secret's data"}  # the operator's own file holds it
    lines = [caplog.handler.format(record) for record in caplog.records]
    scanned = Scan(tmp_path, api, lines, own)
    assert scanned.leaks() == []
    for path in holders:
        assert mode(path) == 0o600, f"{path} is {oct(mode(path))}"
        if path != token_file:  # where the operator asked for it
            assert mode(path.parent) == 0o700, f"{path.parent} is {oct(mode(path.parent))}"

    # The check can fail: each holder, scanned as any other file, gives its secret away, and a
    # key's base64 DER in a log line and a token's secret in a stray file are both found.
    for path, name in holders.items():
        assert name in needles.in_(path.read_bytes()), f"the scanner misses {name} in {path}"
    key = serialization.load_pem_private_key((tmp_path / "frontend" / "key.pem").read_bytes(), None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)
    lines.append(f"DEBUG planted: {base64.b64encode(der).decode()}")
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "notes.txt").write_text(f"...{tokens['reviews'].partition('.')[2]}\n")
    (reviews_token,) = [n for n, parts in needles.found.items() if tokens["reviews"].encode() in parts]
    assert Scan(tmp_path, api, lines, own).leaks() == [
        "log of this process: frontend's key",
        f"file planted/notes.txt: {reviews_token}",
    ]
    print(
        f"{len(needles.found)} secrets looked for in {len(api.responses)} API responses, {len(api.runs)} "
        f"meshctl runs, {scanned.logged} log lines, {len(scanned.files)} files: none outside its own file; "
        "a planted key and token were found"
    )


class Scan:
    """Where the secrets of ``api.needles`` show: API answers, meshctl output, this process's
    log ``lines``, every file under ``root`` (the logs of the service and of reviews, the SQLite
    store, last-known-good copies...) but for the secret of its ``own`` file."""

    def __init__(self, root: Path, api: Recorded, lines: list[str], own: dict[Path, str]) -> None:
        self.root, self.api, self.lines, self.own = root, api, lines, own
        self.files = sorted(p for p in root.rglob("*") if p.is_file())
        logs = sum(p.read_text(errors="replace").count("\n") for p in self.files if p.suffix == ".log")
        self.logged = len(lines) + logs

    def leaks(self) -> list[str]:
        needles = self.api.needles
        found = [f"log of this process: {name}" for name in needles.in_("\n".join(self.lines).encode())]
        for path in self.files:
            allowed = frozenset({self.own[path], "PRIVATE KEY"}) if path in self.own else frozenset()
            where = f"file {path.relative_to(self.root)}"
            found += [f"{where}: {name}" for name in needles.in_(path.read_bytes(), allowed)]
        return found + self.api.leaks()
