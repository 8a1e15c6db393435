"""The shared Istio corpus (../shared/istio-corpus, beside the repository; see its SOURCES.md).

Every positive file loads: its policy kinds parse and its other kinds (Gateway, Deployment,
...) are reported skipped, except the files pinned in KNOWN_REFUSED. Every document under
negative/ (Istio's own tests expect Istio to reject it) is refused, except those pinned in
KNOWN_ACCEPTED_NEGATIVES. Both lists must match exactly: a new entry is a regression, and a
fixed one fails until it is struck from its list, so the lists only ever shrink.

A fresh clone (CI: .ci/run runs scripts/test in the clone alone) has no ../shared; there
these tests are skipped and say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlib.errors import ConfigError
from meshlib.policy import KINDS, load_paths
from meshlib.policy.yaml_compat import compose_documents

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT.parent / "shared" / "istio-corpus"

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"no Istio corpus at {CORPUS} (it lives beside the repository, not in it)"
)

# Positive files meshlib refuses: file -> a fragment of the first error. Each is refused on
# purpose, with a message saying what to write instead (docs/istio-fields.md).
_NO_L4 = "routes are not supported for the mesh"  # tcp/tls routes: no TCP/TLS proxy in-process
_NO_TCP_PORT = "is not supported: meshlib's clients carry HTTP and gRPC"  # ServiceEntry TCP ports
_NO_DISCOVERY = "does not discover keys"  # no OpenID discovery of an issuer's keys
_NO_ENVOY_METADATA = "experimental Envoy"  # Envoy filter metadata has no meaning in-process
_EGRESS = "istio.io__docs__tasks__traffic-management__egress__"
_CRDS = "pkg__config__validation__testdata__crds__"
KNOWN_REFUSED = {
    # Kubernetes secrets cannot be read: give PEM file paths.
    "istio-api__networking__v1alpha3__destination_rule.proto.ex04.yaml": "names a Kubernetes secret",
    "istio-api__networking__v1alpha3__destination_rule.proto.ex08.yaml": "tcpKeepalive is not supported",
    # Written in proto doc comments for a field Istio no longer has (localityLbSetting replaced it).
    "istio-api__networking__v1alpha3__destination_rule.proto.ex17.yaml": "unknown field 'zoneAwareLbSetting'",
    "istio-api__networking__v1alpha3__destination_rule.proto.ex18.yaml": "unknown field 'zoneAwareLbSetting'",
    "istio-api__networking__v1alpha3__service_entry.proto.ex02.yaml": "protocol MONGO is not supported",
    "istio-api__networking__v1alpha3__service_entry.proto.ex05.yaml": _NO_L4,
    "istio-api__networking__v1alpha3__service_entry.proto.ex10.yaml": "Unix domain socket endpoints",
    # Doc examples with namespaces Kubernetes would refuse too (upper case).
    "istio-api__networking__v1alpha3__virtual_service.proto.ex09.yaml": "invalid namespace 'nsA'",
    "istio-api__networking__v1alpha3__virtual_service.proto.ex10.yaml": "invalid namespace 'nsB'",
    "istio-api__networking__v1alpha3__virtual_service.proto.ex13.yaml": _NO_L4,
    # CORS belongs where a browser's request enters (an ingress gateway): none in-process.
    "istio-api__networking__v1alpha3__virtual_service.proto.ex25.yaml": "corsPolicy is not supported",
    "tests__testdata__config__rule-default-route-cors-policy.yaml": "corsPolicy is not supported",
    "istio-api__security__v1beta1__request_authentication.proto.ex03.yaml": _NO_DISCOVERY,
    "pkg__test__datasets__validation__dataset__security-v1-RequestAuthentication.yaml": _NO_DISCOVERY,
    "pkg__test__datasets__validation__dataset__security-v1beta1-RequestAuthentication.yaml": _NO_DISCOVERY,
    _EGRESS + "egress-gateway__snip_egress_gateway_for_https_traffic_3.yaml": _NO_L4,
    _EGRESS + "egress-tls-origination__snip_apply_simple.yaml": _NO_L4,
    _EGRESS
    + "wildcard-egress-hosts__snip_configure_egress_gateway_traffic_to_a_wildcard_host_1.yaml": _NO_L4,
    "pilot__pkg__security__authz__builder__testdata__http__allow-full-rule-in.yaml": _NO_ENVOY_METADATA,
    _CRDS + "authz-valid.doc1.yaml": _NO_ENVOY_METADATA,
    _CRDS + "destinationrule-valid.doc4.yaml": "http2KeepAlive is not supported",
    _CRDS + "reqauth-valid.doc1.yaml": "presence is not supported",
    # ServiceEntry subjectAltNames: mesh mTLS peers prove one SPIFFE ID; other names go in the
    # DestinationRule's tls.subjectAltNames.
    _CRDS + "serviceentry-valid.doc1.yaml": "is not a SPIFFE ID",
    _CRDS + "serviceentry-valid.doc3.yaml": "workloadSelector has no effect",
    "samples__external__github.yaml": _NO_TCP_PORT,
    "samples__multicluster__expose-istiod-https.yaml": "UPGRADE is not supported by meshlib",
    # sni with ISTIO_MUTUAL: grpcio cannot send one name and verify another.
    "tests__integration__telemetry__testdata__istio-mtls-dest-rule.yaml": (
        "applies to modes SIMPLE and MUTUAL only"
    ),
    "tests__testdata__config__byon.yaml": _NO_TCP_PORT,
    "tests__testdata__config__destination-rule-passthrough.yaml": "PASSTHROUGH is not supported",
    "tests__testdata__config__none.yaml": _NO_TCP_PORT,
    # Old test data for a field Istio removed.
    "tests__testdata__config__rule-websocket-route.yaml": "unknown field 'websocketUpgrade'",
    "tests__testdata__config__se-example-gw.yaml": _NO_TCP_PORT,
    "tests__testdata__config__se-example.yaml": _NO_TCP_PORT,
}

# Negative documents meshlib accepts although Istio rejects them: file -> what Istio says.
KNOWN_ACCEPTED_NEGATIVES: dict[str, str] = {}


def _documents(path: Path) -> int:
    """Documents in the file, not counting empty ones (a trailing ``---``)."""
    nodes = compose_documents(path.read_text(encoding="utf-8"))
    return sum(node is not None and node.tag != "tag:yaml.org,2002:null" for node in nodes)


def _istio_error(path: Path) -> str:
    """The ``# _err:`` line Istio's test data gives the document (the last: earlier ones may
    belong to documents commented out), if any."""
    found = [line.lstrip("# ") for line in path.read_text(encoding="utf-8").splitlines()]
    errors = [line[len("_err:") :].strip() for line in found if line.startswith("_err:")]
    return errors[-1] if errors else "(no _err line)"


def test_every_positive_file_loads_with_its_other_kinds_skipped() -> None:
    refused: dict[str, str] = {}
    skipping = 0
    for path in sorted(CORPUS.glob("*.yaml")):
        try:
            loaded = load_paths([path])
        except ConfigError as exc:
            refused[path.name] = str(exc.issues[0])
            continue
        assert len(loaded) + len(loaded.skipped) == _documents(path), path.name
        assert all(s.kind not in KINDS and s.reason for s in loaded.skipped), path.name
        skipping += bool(loaded.skipped)
    new = sorted(set(refused) - set(KNOWN_REFUSED))
    fixed = sorted(set(KNOWN_REFUSED) - set(refused))
    assert not new, "newly refused: " + "; ".join(f"{name}: {refused[name]}" for name in new)
    assert not fixed, f"now loads, strike from KNOWN_REFUSED: {fixed}"
    wrong = {name: refused[name] for name, fragment in KNOWN_REFUSED.items() if fragment not in refused[name]}
    assert not wrong, f"refused for another reason than the one pinned: {wrong}"
    # 22 files mix in other kinds; 5 of them are refused for a supported resource (KNOWN_REFUSED)
    assert skipping >= 17, "the corpus's files that mix in Gateways and Kubernetes objects load"


def test_negative_documents_are_refused_but_the_known_few() -> None:
    accepted = []
    for path in sorted((CORPUS / "negative").glob("*.yaml")):
        try:
            load_paths([path])
        except ConfigError:
            continue
        accepted.append(path)
    names = {path.name for path in accepted}
    new = [f"{p.name} (Istio: {_istio_error(p)})" for p in accepted if p.name not in KNOWN_ACCEPTED_NEGATIVES]
    fixed = sorted(set(KNOWN_ACCEPTED_NEGATIVES) - names)
    assert not new, f"accepted although Istio rejects them: {new}"
    assert not fixed, f"now refused, strike from KNOWN_ACCEPTED_NEGATIVES: {fixed}"
