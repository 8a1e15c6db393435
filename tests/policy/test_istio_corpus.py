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

# Positive files meshlib refuses: file -> a fragment of the first error.
KNOWN_REFUSED = {
    # Written in proto doc comments for a field Istio no longer has (localityLbSetting replaced it).
    "istio-api__networking__v1alpha3__destination_rule.proto.ex17.yaml": "unknown field 'zoneAwareLbSetting'",
    "istio-api__networking__v1alpha3__destination_rule.proto.ex18.yaml": "unknown field 'zoneAwareLbSetting'",
    # Refused on purpose: no Unix domain socket endpoints in-process.
    "istio-api__networking__v1alpha3__service_entry.proto.ex10.yaml": "Unix domain socket endpoints",
    "tests__testdata__config__se-example.yaml": "Unix domain socket endpoints",
    # Doc examples with namespaces Kubernetes would refuse too (upper case).
    "istio-api__networking__v1alpha3__virtual_service.proto.ex09.yaml": "invalid namespace 'nsA'",
    "istio-api__networking__v1alpha3__virtual_service.proto.ex10.yaml": "invalid namespace 'nsB'",
    # The proto's field name (snake_case) where the CRD has prefixRewrite.
    "istio-api__networking__v1alpha3__virtual_service.proto.ex19.yaml": "unknown field 'prefix_rewrite'",
    # Refused on purpose: no OpenID discovery of an issuer's keys.
    "istio-api__security__v1beta1__request_authentication.proto.ex03.yaml": "does not discover keys",
    "pkg__test__datasets__validation__dataset__security-v1-RequestAuthentication.yaml": (
        "does not discover keys"
    ),
    "pkg__test__datasets__validation__dataset__security-v1beta1-RequestAuthentication.yaml": (
        "does not discover keys"
    ),
    # Refused on purpose: Envoy filter metadata has no meaning in-process.
    "pilot__pkg__security__authz__builder__testdata__http__allow-full-rule-in.yaml": "experimental Envoy",
    "pkg__config__validation__testdata__crds__authz-valid.doc1.yaml": "experimental Envoy",
    # Istio fields the models do not have yet.
    "pkg__config__validation__testdata__crds__destinationrule-valid.doc4.yaml": (
        "unknown field 'http2KeepAlive'"
    ),
    "pkg__config__validation__testdata__crds__reqauth-valid.doc1.yaml": "unknown field 'presence'",
    # Old test data for a field Istio removed.
    "tests__testdata__config__rule-websocket-route.yaml": "unknown field 'websocketUpgrade'",
}

# Negative documents meshlib accepts although Istio rejects them: file -> what Istio says.
KNOWN_ACCEPTED_NEGATIVES = {
    "pkg__config__validation__testdata__crds__peerauth-invalid.doc4.yaml": (
        "spec.portLevelMtls in body should have at least 1 properties"
    ),
    "pkg__config__validation__testdata__crds__reqauth-invalid.doc4.yaml": (
        "cross namespace referencing is not currently supported"
    ),
    "pkg__config__validation__testdata__crds__serviceentry-invalid.doc3.yaml": (
        "wildcard is not supported in selector"
    ),
    "pkg__config__validation__testdata__crds__serviceentry-invalid.doc6.yaml": (
        "CIDR addresses are allowed only for NONE/STATIC resolution types"
    ),
}


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
    assert skipping >= 22, "the corpus's files that mix in Gateways and Kubernetes objects load"


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
