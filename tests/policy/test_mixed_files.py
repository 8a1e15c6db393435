"""Files written for Istio: kinds meshlib does not apply are skipped with a reason, the rest loads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from meshlib.errors import ConfigError
from meshlib.policy import load_text
from meshlib.policy.skipped import SkippedResource
from meshlib.policy.yaml_compat import _GoFlowColonLoader, compose_documents

VIRTUAL_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"""


def other(api_version: str, kind: str, name: str = "x", namespace: str | None = None) -> str:
    meta = f"{{name: {name}, namespace: {namespace}}}" if namespace else f"{{name: {name}}}"
    return f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {meta}\nspec: {{anything: [goes, here]}}\n"


# One row per kind family: (apiVersion, kind, a fragment of the reason).
FAMILIES = [
    ("apps/v1", "Deployment", "deploy it with kubectl; meshlib does not run workloads"),
    ("apps/v1", "StatefulSet", "deploy it with kubectl; meshlib does not run workloads"),
    ("batch/v1", "CronJob", "deploy it with kubectl; meshlib does not run workloads"),
    ("v1", "Pod", "deploy it with kubectl; meshlib does not run workloads"),
    ("v1", "Service", "workloads register their endpoints with the config service"),
    ("v1", "ServiceAccount", "bootstrap tokens (meshctl token create --service NAME)"),
    ("v1", "ConfigMap", "apply it with kubectl; meshlib applies only mesh policy"),
    ("v1", "Secret", "apply it with kubectl; meshlib applies only mesh policy"),
    ("rbac.authorization.k8s.io/v1", "Role", "apply it with kubectl"),
    ("cert-manager.io/v1", "Certificate", "apply it with kubectl"),
    ("networking.istio.io/v1", "Gateway", "meshlib has no ingress gateway; routes for mesh hosts apply"),
    ("networking.istio.io/v1alpha3", "Sidecar", "give its egress.hosts to the workload (MESH_EGRESS_HOSTS"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter", "no Envoy in-process"),
    ("networking.istio.io/v1", "WorkloadEntry", "workloads register themselves with the config service"),
    ("networking.istio.io/v1", "WorkloadGroup", "workloads register themselves with the config service"),
    ("networking.istio.io/v1beta1", "ProxyConfig", "no proxy to configure"),
    ("extensions.istio.io/v1alpha1", "WasmPlugin", "no Envoy in-process to load Wasm into"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute", "the Kubernetes Gateway API is not implemented"),
    ("gateway.networking.k8s.io/v1", "Gateway", "the Kubernetes Gateway API is not implemented"),
    ("networking.k8s.io/v1", "Ingress", "meshlib has no ingress gateway"),
    ("networking.k8s.io/v1", "NetworkPolicy", "meshlib's access control is AuthorizationPolicy"),
]


@pytest.mark.parametrize(
    ("api_version", "kind", "reason"), FAMILIES, ids=[f"{k}-{v}" for v, k, _ in FAMILIES]
)
def test_each_kind_family_is_skipped_with_its_reason(api_version: str, kind: str, reason: str) -> None:
    text = other(api_version, kind, namespace="istio-system") + "---\n" + VIRTUAL_SERVICE
    loaded = load_text(text, source="mixed.yaml")
    assert [str(item.resource.key) for item in loaded] == ["VirtualService default/reviews"]
    [skipped] = loaded.skipped
    assert (skipped.api_version, skipped.kind, skipped.label) == (api_version, kind, f"{kind} istio-system/x")
    assert reason in skipped.reason
    assert (skipped.source, skipped.line) == ("mixed.yaml", 1)


def test_the_report_names_file_line_resource_and_reason() -> None:
    text = (
        VIRTUAL_SERVICE
        + "---\n"
        + other("networking.istio.io/v1", "Gateway", "bookinfo-gateway", "istio-system")
    )
    [skipped] = load_text(text, source="bookinfo.yaml").skipped
    assert str(skipped) == (
        "bookinfo.yaml:10: Gateway istio-system/bookinfo-gateway: meshlib has no ingress gateway; "
        "routes for mesh hosts apply, routes bound to gateways do not"
    )


def test_namespaces_default_and_cluster_scoped_kinds_have_none() -> None:
    text = other("v1", "Namespace", "bookinfo") + "---\n" + other("apps/v1", "Deployment", "web")
    namespace, deployment = load_text(text, namespace="staging").skipped
    assert (namespace.label, namespace.namespace) == ("Namespace bookinfo", None)
    assert "metadata.namespace is enough" in namespace.reason
    assert deployment.label == "Deployment staging/web"


def test_a_file_of_other_kinds_only_loads_nothing_and_skips_all() -> None:
    loaded = load_text(other("v1", "Service", "web") + "---\n" + other("apps/v1", "Deployment", "web"))
    assert list(loaded) == []
    assert [s.kind for s in loaded.skipped] == ["Service", "Deployment"]


def test_items_of_a_kind_list_are_skipped_one_by_one() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: ConfigMap
          metadata: {name: settings}
          data: {a: b}
        - apiVersion: networking.istio.io/v1
          kind: DestinationRule
          metadata: {name: reviews}
          spec: {host: reviews}
        """
    )
    loaded = load_text(text)
    assert [item.resource.name for item in loaded] == ["reviews"]
    assert [(s.label, s.line) for s in loaded.skipped] == [("ConfigMap default/settings", 4)]


def test_strict_refuses_every_skipped_resource_at_its_kind_line() -> None:
    text = VIRTUAL_SERVICE + "---\n" + other("networking.istio.io/v1", "Gateway", "gw") + "---\n"
    text += other("apps/v1", "Deployment", "web")
    with pytest.raises(ConfigError) as info:
        load_text(text, source="mixed.yaml", strict=True)
    assert [(i.line, i.resource, i.path) for i in info.value.issues] == [
        (11, "Gateway default/gw", "kind"),
        (16, "Deployment default/web", "kind"),
    ]
    assert info.value.issues[0].message == (
        "strict mode refuses kinds meshlib does not apply (meshlib has no ingress gateway; "
        "routes for mesh hosts apply, routes bound to gateways do not)"
    )


def test_an_invalid_supported_resource_still_fails_the_whole_file() -> None:
    bad = VIRTUAL_SERVICE.replace("hosts: [reviews]", "hosts: [reviews]\n  hostz: [x]")
    text = other("apps/v1", "Deployment", "web") + "---\n" + bad + "---\n" + other("v1", "Service", "web")
    with pytest.raises(ConfigError) as info:
        load_text(text, source="mixed.yaml")
    [issue] = info.value.issues
    assert (issue.line, issue.resource, issue.path) == (11, "VirtualService default/reviews", "spec.hostz")


def test_a_supported_kind_under_a_foreign_api_version_is_an_error_not_a_skip() -> None:
    with pytest.raises(ConfigError) as info:
        load_text(VIRTUAL_SERVICE.replace("networking.istio.io/v1", "v1"))
    [issue] = info.value.issues
    assert issue.path == "apiVersion"
    assert "unsupported apiVersion 'v1' for VirtualService" in issue.message


def test_the_stub_sent_for_a_skipped_resource_carries_no_content() -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: prod}\ndata: {password: aHVudA==}\n"
    [skipped] = load_text(text).skipped
    assert skipped.stub() == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "prod"},
    }
    assert SkippedResource.from_json(skipped.to_json()) == skipped


# --- YAML that go-yaml (kubectl, Istio) reads and libyaml refuses ---------------------------------


def test_an_ipv6_address_ending_in_a_colon_reads_as_go_yaml_reads_it() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: full}
        spec:
          hosts: [example.com]
          addresses: [1.2.3.4, 2001:db8::]
          location: MESH_EXTERNAL
          resolution: NONE
          ports: [{name: http, number: 80, protocol: HTTP}]
        """
    )
    [loaded] = load_text(text)
    assert list(loaded.resource.spec.addresses) == ["1.2.3.4", "2001:db8::"]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy"


@pytest.mark.parametrize(
    "text",
    [
        "a: [http://x:80/p, 'q', {k: v}]\nb: {x:y, c: d}\n",
        "a: &anchor [1, 2]\nb: *anchor\nc: |\n  text: [a:]\n",
        "- {a: 1, b: [c, d]}\n- [x: 1]\n- k: v:]\n- ? complex\n  : key\n",
        *(path.read_text() for path in sorted(EXAMPLES.glob("*.yaml"))),
    ],
)
def test_the_go_yaml_scanner_reads_what_libyaml_reads_the_same(text: str) -> None:
    """The fallback differs from PyYAML only where libyaml refuses the text."""
    expected = list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    assert list(yaml.load_all(text, Loader=_GoFlowColonLoader)) == expected
    assert [yaml.safe_load(yaml.serialize(n)) for n in compose_documents(text) if n is not None] == expected


def test_a_flow_value_starting_with_a_colon_says_to_quote_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_text(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\naddresses: [::1]\n", source="se.yaml"
        )
    [issue] = info.value.issues
    assert issue.line == 3
    assert issue.message.endswith(
        "(column 13); a value starting with ':' (an IPv6 address like ::1) "
        'must be quoted in [...] or {...}: "::1"'
    )
