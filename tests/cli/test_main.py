"""meshctl against a real config service, run in-process (main(argv)) and as `python -m meshlib`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from meshlib.cli.main import main
from meshlib.controlplane.server import ConfigServer
from meshlib.registry import AnnouncedEndpoint
from tests.conftest import destination_rule, virtual_service

CANARY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_prints_created_then_unchanged_then_configured(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    canary = write(tmp_path, "canary.yaml", CANARY)
    assert ctl("apply", "-f", canary)[1].splitlines() == [
        "virtualservice.networking.istio.io/reviews created",
        "destinationrule.networking.istio.io/reviews created",
    ]
    assert ctl("apply", "-f", canary)[1].splitlines() == [
        "virtualservice.networking.istio.io/reviews unchanged",
        "destinationrule.networking.istio.io/reviews unchanged",
    ]
    changed = write(
        tmp_path, "fifty.yaml", CANARY.replace("weight: 80", "weight: 50").replace("weight: 20", "weight: 50")
    )
    assert (
        ctl("apply", "-f", changed)[1].splitlines()[0]
        == "virtualservice.networking.istio.io/reviews configured"
    )
    assert ctl("apply", "--dry-run", "-f", canary)[1].splitlines()[0].endswith("configured (dry run)")


def test_apply_of_invalid_file_names_file_line_and_stores_nothing(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = write(tmp_path, "canary.yaml", CANARY.replace("weight: 20", "weight: -20"))
    code, out, err = ctl("apply", "-f", bad)
    assert code == 1
    assert out == ""
    assert err.strip() == (
        f"error: {bad}:12: VirtualService default/reviews: spec.http[0].route[1].weight: "
        "must be >= 0; got -20"
    )
    assert ctl("get", "vs")[2] == "No resources found in namespace default.\n"


def test_apply_from_stdin_and_a_folder(ctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "dr.yaml").write_text(yaml.safe_dump(destination_rule("ratings")))
    (folder / "notes.txt").write_text("not policy")
    assert ctl("apply", "-f", str(folder))[1] == "destinationrule.networking.istio.io/ratings created\n"
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(yaml.safe_dump(virtual_service())))
    assert ctl("apply", "-f", "-")[1] == "virtualservice.networking.istio.io/reviews created\n"


def test_get_table_yaml_json_and_by_name(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctl("apply", "-f", write(tmp_path, "canary.yaml", CANARY))
    code, out, _ = ctl("get", "virtualservices")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "HOSTS", "GATEWAYS", "AGE"]
    assert row.split()[:3] == ["reviews", "reviews", "mesh"]
    dumped = yaml.safe_load(ctl("get", "vs", "reviews", "-o", "yaml")[1])
    assert dumped["spec"]["http"][0]["route"][0]["weight"] == 80
    assert dumped["metadata"]["resourceVersion"] == "1"
    listed = json.loads(ctl("get", "dr", "-o", "json")[1])
    assert [i["metadata"]["name"] for i in listed["items"]] == ["reviews"]
    assert "NAMESPACE" in ctl("get", "all", "-A")[1]
    code, _, err = ctl("get", "gateways")
    assert code == 1
    assert "unknown kind 'gateways'" in err


def test_get_has_a_table_for_every_kind(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from meshlib.policy.resources import KINDS

    limit = {
        "apiVersion": "policy.meshlib.io/v1",
        "kind": "RateLimit",
        "metadata": {"name": "quotes"},
        "spec": {
            "selector": {"matchLabels": {"app": "frontend"}},
            "limits": [{"tokenBucket": {"maxTokens": 5, "tokensPerFill": 5, "fillInterval": "1s"}}],
        },
    }
    telemetry = {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "logs"},
        "spec": {"accessLogging": [{"providers": [{"name": "envoy"}]}]},
    }
    code, _, err = ctl("apply", "-f", write(tmp_path, "more.yaml", yaml.safe_dump_all([limit, telemetry])))
    assert code == 0, err
    code, out, _ = ctl("get", "rl")
    assert code == 0
    assert out.splitlines()[1].split()[:3] == ["quotes", "app=frontend", "1"]
    code, out, _ = ctl("get", "telemetry")
    assert out.splitlines()[1].split()[:3] == ["logs", "(namespace)", "accessLogging"]
    code, out, err = ctl("get", "all")
    assert code == 0, err
    assert "quotes" in out
    assert "logs" in out
    for info in KINDS.values():  # every kind the service stores has a table
        assert ctl("get", info.short[0])[0] == 0


def test_reapplying_get_output_is_unchanged(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctl("apply", "-f", write(tmp_path, "canary.yaml", CANARY))
    exported = write(tmp_path, "export.yaml", ctl("get", "vs", "reviews", "-o", "yaml")[1])
    assert ctl("apply", "-f", exported)[1] == "virtualservice.networking.istio.io/reviews unchanged\n"


def test_delete_by_name_and_by_file(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    canary = write(tmp_path, "canary.yaml", CANARY)
    ctl("apply", "-f", canary)
    assert ctl("delete", "vs", "reviews")[1] == 'virtualservice.networking.istio.io "reviews" deleted\n'
    code, _, err = ctl("delete", "vs", "reviews")
    assert code == 1
    assert "not found" in err
    assert ctl("delete", "vs", "reviews", "--ignore-not-found")[0] == 0
    assert ctl("delete", "-f", canary, "--ignore-not-found")[1] == (
        'destinationrule.networking.istio.io "reviews" deleted\n'
    )


def test_writes_with_a_wrong_token_are_refused(
    server: ConfigServer, tmp_path: Path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MESHCTL_TOKEN", "wrong")
    assert main(["--server", server.url, "apply", "-f", write(tmp_path, "c.yaml", CANARY)]) == 1
    assert "refused the request: wrong admin token" in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--server", "http://127.0.0.1:9", "get", "vs"]) == 1
    assert "cannot reach the config service at http://127.0.0.1:9" in capsys.readouterr().err


def test_validate_is_offline_and_exits_non_zero_on_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    good = write(tmp_path, "good.yaml", CANARY)
    assert main(["--server", "http://127.0.0.1:9", "validate", "-f", good]) == 0
    assert capsys.readouterr().out.endswith("2 resource(s) valid\n")
    bad = write(
        tmp_path, "bad.yaml", CANARY.replace("  hosts: [reviews]", "  hosts: [reviews]\n  hostz: [x]")
    )
    assert main(["validate", "-f", bad]) == 1
    assert (
        f"{bad}:7: VirtualService default/reviews: spec.hostz: unknown field 'hostz'"
        in capsys.readouterr().err
    )


ANALYZE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v3}
  - match: [{uri: {prefix: /api}}]
    route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-legacy}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/legacy/sa/batch]}}]
"""


def test_analyze_files_offline(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["analyze", "-f", write(tmp_path, "mesh.yaml", ANALYZE)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "Error [MESH0101] (VirtualService default/reviews) spec.http[0].route[0].destination:"
    )
    assert "subset 'v3'" in lines[0]
    assert any(
        line.startswith("Warning [MESH0104] (VirtualService default/reviews) spec.http[1]:") for line in lines
    )
    assert any(
        line.startswith("Warning [MESH0105] (AuthorizationPolicy default/deny-legacy)")
        and "PERMISSIVE" in line
        for line in lines
    )


def test_analyze_points_out_relative_weights_that_do_not_add_up_to_100(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    relative = CANARY.replace("weight: 80", "weight: 3").replace("weight: 20", "weight: 1")
    assert main(["analyze", "-f", write(tmp_path, "mesh.yaml", relative)]) == 0
    assert (
        "Info [MESH0109] (VirtualService default/reviews) spec.http[0].route: weights add up to 4, "
        "not 100; they are relative, so the split is 75%, 25%"
    ) in capsys.readouterr().out.splitlines()
    assert main(["analyze", "-f", write(tmp_path, "mesh.yaml", CANARY)]) == 0
    assert "MESH0109" not in capsys.readouterr().out


def test_analyze_on_the_server_uses_the_registry(ctl, server: ConfigServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctl("apply", "-f", write(tmp_path, "canary.yaml", CANARY))
    code, out, _ = ctl("analyze")
    assert code == 0
    assert "Warning [MESH0103]" in out
    assert "no workloads" in out
    from meshlib import Mesh

    with Mesh(
        "reviews", labels={"version": "v1"}, control_plane=server.url, data_dir=tmp_path / "wl"
    ) as mesh:
        mesh.announce([AnnouncedEndpoint(address="127.0.0.1", port=9080)])
        code, out, _ = ctl("analyze")
        assert "MESH0103" not in out
        assert "Warning [MESH0108] (DestinationRule default/reviews) spec.subsets[1]:" in out


def test_status_shows_identity_endpoints_and_sync(ctl, server: ConfigServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from meshlib import Mesh

    ctl("apply", "-f", write(tmp_path, "canary.yaml", CANARY))
    with Mesh("reviews", control_plane=server.url, data_dir=tmp_path / "wl") as mesh:
        mesh.announce([AnnouncedEndpoint(address="127.0.0.1", port=9080)])
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "SYNCED" not in ctl("status")[1]:
            time.sleep(0.05)
        out = ctl("status")[1]
        header, row = out.splitlines()[:2]
        assert header.split()[:5] == ["SERVICE", "NAMESPACE", "WORKLOAD", "IDENTITY", "ENDPOINTS"]
        assert row.split()[:5] == [
            "reviews",
            "default",
            mesh.workload_id,
            "spiffe://cluster.local/ns/default/sa/reviews",
            "127.0.0.1:9080",
        ]
        assert "SYNCED v2" in row
        assert json.loads(ctl("status", "-o", "json")[1])["items"][0]["ackedVersion"] == 2
        summary = ctl("status", "--summary")[1]
        assert (
            "version 2: 1 workloads, 1 synced, 0 stale, 0 not acked, 0 NACK, 1 connected, 0 lost" in summary
        )
        counts = json.loads(ctl("status", "--summary", "-o", "json")[1])
        assert (counts["version"], counts["synced"], counts["workloads"]) == (2, 1, 1)


def test_status_shows_certificate_expiry_and_issuer(ctl, server: ConfigServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography import x509

    from meshlib import Mesh
    from meshlib.ca.svid import key_id
    from meshlib.controlplane.client import ControlPlaneClient

    with ControlPlaneClient(server.url, server.admin_token) as admin:
        token = admin.create_token("reviews")["token"]
    assert server.state is not None
    root = x509.load_pem_x509_certificate(server.state.trust_bundle[0].encode())
    with Mesh("reviews", control_plane=server.url, token=token, data_dir=tmp_path / "wl"):
        out = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and key_id(root) not in out:
            out = ctl("status")[1]
            time.sleep(0.05)
        header, row = out.splitlines()[:2]
        assert "CERT EXPIRES" in header
        assert "CERT ISSUER" in header
        assert "in 23h" in row or "in 1d" in row, row
        assert key_id(root) in row


def test_python_dash_m_meshlib_is_meshctl() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshlib", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("serve", "apply", "get", "delete", "validate", "analyze", "status", "demo"):
        assert command in result.stdout


def test_token_create_list_revoke_and_the_ca_refuses_a_revoked_token(
    ctl, server: ConfigServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import os
    import stat

    import httpx

    out_file = tmp_path / "orders.token"
    code, out, _ = ctl("token", "create", "--service", "orders", "-n", "shop", "-o", str(out_file))
    assert code == 0
    assert "spiffe://cluster.local/ns/shop/sa/orders" in out
    secret = out_file.read_text().strip()
    assert secret not in out, "a token written to a file is not printed"
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    code, listed, _ = ctl("token", "list")
    assert code == 0
    assert "orders" in listed
    assert "shop" in listed
    assert secret not in listed, "list never shows a secret"
    token_id = out.split()[1]
    code, out, _ = ctl("token", "revoke", token_id)
    assert code == 0
    assert "revoked" in out
    refused = httpx.post(
        f"{server.url}/v1/certificates", json={"csr": "x"}, headers={"authorization": f"Bearer {secret}"}
    )
    assert refused.status_code == 401, "a revoked token gets no certificate"
    code, live, _ = ctl("token", "create", "--service", "orders", "-n", "shop")
    checked = httpx.post(
        f"{server.url}/v1/certificates",
        json={"csr": "x"},
        headers={"authorization": f"Bearer {live.strip()}"},
    )
    assert checked.status_code not in (200, 401), "a live token passes and the bad CSR is what fails"
    code, _, err = ctl("token", "revoke")
    assert code != 0
    assert "needs the token ID" in err


def test_serve_refuses_an_empty_passphrase_file_and_one_without_etcd(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    args = ["serve", "--data-dir", str(tmp_path / "cp"), "--port", "0", "--ca-key-passphrase-file"]
    assert main([*args, str(empty)]) == 1
    assert f"--ca-key-passphrase-file {empty}: the file is empty" in capsys.readouterr().err
    secret = tmp_path / "secret"
    secret.write_text("s3cret-passphrase\n")
    assert main([*args, str(secret)]) == 1
    err = capsys.readouterr().err
    assert "--ca-key-passphrase-file encrypts the CA key kept in etcd: it needs --store etcd://" in err
    assert "s3cret-passphrase" not in err
    assert not (tmp_path / "cp" / "meshlib.db").exists(), "nothing was set up"
