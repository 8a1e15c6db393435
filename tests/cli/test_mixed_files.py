"""meshctl validate and apply on files written for Istio: other kinds are skipped and listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshlib.controlplane.server import ConfigServer

MIXED = """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reviews
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: istio-system
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews-v1
spec:
  replicas: 1
  template:
    spec:
      containers: [{name: reviews, image: docker.io/istio/examples-bookinfo-reviews-v1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
spec:
  egress:
  - hosts: ["./*"]
"""

SKIPPED_LINES = [
    "skipped: {f}:1: ServiceAccount default/reviews: meshlib identities come from bootstrap tokens "
    "(meshctl token create --service NAME), not from service accounts",
    "skipped: {f}:6: Gateway istio-system/bookinfo-gateway: meshlib has no ingress gateway; "
    "routes for mesh hosts apply, routes bound to gateways do not",
    "skipped: {f}:27: Deployment default/reviews-v1: deploy it with kubectl; meshlib does not run workloads",
    "skipped: {f}:46: Sidecar default/default: not applied as a resource: give its egress.hosts to the "
    "workload (MESH_EGRESS_HOSTS or Mesh(egress_hosts=...)), which then receives only their endpoints",
]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def meshctl(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it (no server needed: validate is offline)."""
    return subprocess.run(
        [sys.executable, "-m", "meshlib", "--server", "http://127.0.0.1:9", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_lists_the_skipped_resources_and_validates_the_rest(tmp_path: Path) -> None:
    mixed = write(tmp_path, "bookinfo.yaml", MIXED)
    result = meshctl("validate", "-f", mixed)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        f"{mixed}:17: VirtualService default/reviews valid",
        f"{mixed}:37: DestinationRule default/reviews valid",
        *(line.format(f=mixed) for line in SKIPPED_LINES),
        "2 resource(s) valid, 4 skipped (kinds meshlib does not apply; --strict refuses them)",
    ]


def test_validate_json_output_carries_the_skipped_list(tmp_path: Path) -> None:
    mixed = write(tmp_path, "bookinfo.yaml", MIXED)
    result = meshctl("validate", "-o", "json", "-f", mixed)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(r["kind"], r["name"], r["line"]) for r in data["resources"]] == [
        ("VirtualService", "reviews", 17),
        ("DestinationRule", "reviews", 37),
    ]
    gateway = data["skipped"][1]
    assert gateway == {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "namespace": "istio-system",
        "name": "bookinfo-gateway",
        "reason": (
            "meshlib has no ingress gateway; routes for mesh hosts apply, routes bound to gateways do not"
        ),
        "source": mixed,
        "line": 6,
    }


def test_validate_strict_refuses_every_skipped_resource(tmp_path: Path) -> None:
    mixed = write(tmp_path, "bookinfo.yaml", MIXED)
    result = meshctl("validate", "--strict", "-f", mixed)
    assert (result.returncode, result.stdout) == (1, "")
    errors = result.stderr.splitlines()
    assert [line.split(": kind: ")[0] for line in errors] == [
        f"error: {mixed}:2: ServiceAccount default/reviews",
        f"error: {mixed}:7: Gateway istio-system/bookinfo-gateway",
        f"error: {mixed}:28: Deployment default/reviews-v1",
        f"error: {mixed}:47: Sidecar default/default",
    ]
    assert errors[2].endswith(
        "strict mode refuses kinds meshlib does not apply "
        "(deploy it with kubectl; meshlib does not run workloads)"
    )


def test_validate_of_a_malformed_other_kind_is_still_an_error(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.yaml", MIXED.replace("apiVersion: apps/v1\n", ""))
    result = meshctl("validate", "-f", broken)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: {broken}:27: Deployment default/reviews-v1: apiVersion: required field is missing\n"
    )


# --- apply, against a real config service ----------------------------------------------


def test_apply_stores_the_supported_resources_and_lists_the_skipped(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mixed = write(tmp_path, "bookinfo.yaml", MIXED)
    code, out, err = ctl("apply", "-f", mixed)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "virtualservice.networking.istio.io/reviews created",
        "destinationrule.networking.istio.io/reviews created",
        *(line.format(f=mixed) for line in SKIPPED_LINES),
    ]
    listed = json.loads(ctl("get", "all", "-A", "-o", "json")[1])
    assert [(i["kind"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("VirtualService", "reviews"),
        ("DestinationRule", "reviews"),
    ]
    again = ctl("apply", "--dry-run", "-f", mixed)[1].splitlines()
    assert again[:2] == [
        "virtualservice.networking.istio.io/reviews unchanged (dry run)",
        "destinationrule.networking.istio.io/reviews unchanged (dry run)",
    ]
    assert len(again) == 6


def test_apply_json_output_is_the_service_answer_with_file_and_line(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mixed = write(tmp_path, "bookinfo.yaml", MIXED)
    code, out, _ = ctl("apply", "-o", "json", "-f", mixed)
    assert code == 0
    answer = json.loads(out)
    assert answer["version"] == 1
    assert [r["action"] for r in answer["results"]] == ["created", "created"]
    assert [(s["kind"], s["namespace"], s["source"], s["line"]) for s in answer["skipped"]] == [
        ("ServiceAccount", "default", mixed, 1),
        ("Gateway", "istio-system", mixed, 6),
        ("Deployment", "default", mixed, 27),
        ("Sidecar", "default", mixed, 46),
    ]


def test_apply_strict_refuses_and_stores_nothing(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = ctl("apply", "--strict", "-f", write(tmp_path, "bookinfo.yaml", MIXED))
    assert (code, out) == (1, "")
    assert err.count("strict mode refuses kinds meshlib does not apply") == 4
    assert json.loads(ctl("get", "all", "-A", "-o", "json")[1])["items"] == []


def test_an_invalid_supported_resource_in_a_mixed_file_refuses_all(ctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = write(tmp_path, "bookinfo.yaml", MIXED.replace("{name: v1, labels:", "{name: v1, lables:"))
    code, out, err = ctl("apply", "-f", bad)
    assert (code, out) == (1, "")
    assert err.startswith(
        f"error: {bad}:44: DestinationRule default/reviews: spec.subsets[0].lables: unknown field"
    )
    assert "skipped" not in err
    assert json.loads(ctl("get", "all", "-A", "-o", "json")[1])["items"] == []


def test_apply_of_a_file_with_only_other_kinds_stores_nothing_and_exits_0(  # type: ignore[no-untyped-def]
    ctl, server: ConfigServer, tmp_path: Path
) -> None:
    workloads = "\n---\n".join(MIXED.split("\n---\n")[i] for i in (0, 3))
    code, out, _ = ctl("apply", "-f", write(tmp_path, "workloads.yaml", workloads))
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()] == ["skipped", "skipped"]
    assert server.state is not None
    assert server.state.version == 0


@pytest.mark.parametrize("strict", [False, True])
def test_the_cli_sends_stubs_for_skipped_kinds_never_their_content(  # type: ignore[no-untyped-def]
    ctl, server: ConfigServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict: bool
) -> None:
    from meshlib.controlplane.client import ControlPlaneClient

    sent: list[list[dict[str, object]]] = []
    real = ControlPlaneClient.apply

    def spy(self: ControlPlaneClient, manifests, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(list(manifests))
        return real(self, manifests, **kwargs)

    monkeypatch.setattr(ControlPlaneClient, "apply", spy)
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: aHVudA==}\n"
    code, _, _ = ctl("apply", *(["--strict"] if strict else []), "-f", write(tmp_path, "s.yaml", secret))
    if strict:
        assert (code, sent) == (1, [])  # refused before any I/O
    else:
        assert sent == [
            [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"}}]
        ]
