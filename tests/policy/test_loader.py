"""The YAML loader: every problem names the file, the line, the resource and the field."""

from __future__ import annotations

import io
import json
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from meshlib.errors import ConfigError, ConfigIssue
from meshlib.policy import MAX_SOURCE_BYTES, DestinationRule, load_paths, load_text

DR_A = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: a
spec:
  host: a
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def issues_of(paths: list[Path | str]) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_paths(paths)
    return list(info.value.issues)


@dataclass(frozen=True)
class Bad:
    """One bad input and the single issue it must produce."""

    id: str
    text: str
    line: int | None
    resource: str | None
    path: str
    message: str  # a fragment of the message


BAD_INPUTS = [
    Bad(
        "unknown-field-with-suggestion",
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews, subset: v1}
              wieght: 80
        """,
        10,
        "VirtualService default/reviews",
        "spec.http[0].route[0].wieght",
        "unknown field 'wieght' (did you mean \"weight\"?)",
    ),
    Bad(
        "unknown-top-level-spec-field",
        """\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: reviews
          namespace: prod
        spec:
          host: reviews
          trafficPolicy:
            loadBalancer:
              simple: ROUND_ROBIN
            circuitBreaker: {}
        """,
        11,
        "DestinationRule prod/reviews",
        "spec.trafficPolicy.circuitBreaker",
        "unknown field 'circuitBreaker'",
    ),
    Bad(
        "bad-duration",
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews}
            timeout: 5x
        """,
        10,
        "VirtualService default/reviews",
        "spec.http[0].timeout",
        "invalid duration '5x'",
    ),
    Bad(
        "duration-without-unit",
        """\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: reviews
        spec:
          host: reviews
          trafficPolicy:
            outlierDetection:
              interval: 30
        """,
        9,
        "DestinationRule default/reviews",
        "spec.trafficPolicy.outlierDetection.interval",
        "invalid duration 30",
    ),
    Bad(
        "negative-weight",
        """\
        # reviews canary: -20 is a typo for 20
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts:
          - reviews
          http:
          - route:
            - destination: {host: reviews, subset: v1}
              weight: 80
            - destination: {host: reviews, subset: v2}
              weight: -20
        """,
        14,
        "VirtualService default/reviews",
        "spec.http[0].route[1].weight",
        "must be >= 0; got -20",
    ),
    Bad(
        "wrong-api-version",
        """\
        apiVersion: networking.istio.io/v2
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts: [reviews]
        """,
        1,
        "VirtualService default/reviews",
        "apiVersion",
        "unsupported apiVersion 'networking.istio.io/v2' for VirtualService",
    ),
    Bad(
        "security-kind-in-networking-group",
        """\
        kind: PeerAuthentication
        metadata:
          name: default
          namespace: istio-system
        apiVersion: networking.istio.io/v1
        spec:
          mtls: {mode: STRICT}
        """,
        5,
        "PeerAuthentication istio-system/default",
        "apiVersion",
        "use security.istio.io/v1, security.istio.io/v1beta1, security.istio.io/v1alpha3",
    ),
    Bad(
        "invalid-yaml",
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews: oops
        spec:
          hosts: [reviews]
        """,
        4,
        None,
        "",
        "invalid YAML: mapping values are not allowed",
    ),
    Bad(
        "unclosed-flow-sequence",
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts: [reviews
          http: []
        """,
        7,
        None,
        "",
        "invalid YAML",
    ),
    Bad("empty-file", "", None, None, "", "no resources found (the file is empty)"),
    Bad(
        "only-comments-and-separators",
        "# nothing here yet\n---\n---\n",
        None,
        None,
        "",
        "no resources found (the file is empty)",
    ),
    Bad(
        "list-instead-of-mapping",
        """\
        # a list of resources without `kind: List` around it
        - apiVersion: networking.istio.io/v1
          kind: DestinationRule
          metadata: {name: reviews}
          spec: {host: reviews}
        """,
        2,
        None,
        "",
        "a resource must be a mapping with apiVersion, kind, metadata and spec; got a list",
    ),
    Bad("scalar-document", "just some text\n", 1, None, "", "must be a mapping with apiVersion"),
    Bad(
        "unknown-kind-in-an-applied-group",
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualServce
        metadata:
          name: reviews
        spec: {}
        """,
        2,
        "VirtualServce default/reviews",
        "kind",
        "unknown kind 'VirtualServce' in networking.istio.io (did you mean \"VirtualService\"?); "
        "meshlib applies VirtualService, DestinationRule, ServiceEntry of networking.istio.io",
    ),
    Bad(
        "kind-in-the-wrong-case",
        "apiVersion: security.istio.io/v1\nkind: authorizationpolicy\nmetadata: {name: a}\n",
        2,
        "authorizationpolicy default/a",
        "kind",
        "unknown kind 'authorizationpolicy' in security.istio.io (did you mean \"AuthorizationPolicy\"?)",
    ),
    Bad(
        "other-kind-without-apiVersion",
        "kind: Gateway\nmetadata: {name: ingress}\n",
        1,
        "Gateway default/ingress",
        "apiVersion",
        "required field is missing",
    ),
    Bad(
        "other-kind-with-a-malformed-apiVersion",
        "apiVersion: apps/v1/extra\nkind: Deployment\nmetadata: {name: web}\n",
        1,
        "Deployment default/web",
        "apiVersion",
        "must be GROUP/VERSION or VERSION; got 'apps/v1/extra'",
    ),
    Bad(
        "other-kind-without-metadata",
        "apiVersion: apps/v1\nkind: Deployment\nspec: {}\n",
        1,
        "Deployment",
        "metadata",
        "required field is missing",
    ),
    Bad(
        "other-kind-without-a-name",
        "apiVersion: v1\nkind: Service\nmetadata:\n  labels: {app: web}\n",
        3,
        "Service",
        "metadata.name",
        "required field is missing",
    ),
    Bad(
        "other-kind-whose-kind-is-not-a-name",
        "apiVersion: v1\nkind: [Service]\nmetadata: {name: web}\n",
        2,
        None,
        "kind",
        "must be a kind name; got a list",
    ),
    Bad(
        "list-without-items",
        "apiVersion: v1\nkind: List\nmetadata: {}\n",
        1,
        "List",
        "items",
        "a List needs items: a list of resources",
    ),
    Bad(
        "missing-kind",
        """\
        apiVersion: networking.istio.io/v1
        metadata:
          name: reviews
        spec: {host: reviews}
        """,
        1,
        None,
        "kind",
        "required field is missing",
    ),
    Bad(
        "missing-required-field",
        """\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: reviews
        spec:
          subsets:
          - name: v1
        """,
        5,
        "DestinationRule default/reviews",
        "spec.host",
        "required field is missing",
    ),
    Bad(
        "bad-name",
        """\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: Reviews_V1
        spec: {host: reviews}
        """,
        4,
        "DestinationRule default/Reviews_V1",
        "metadata.name",
        "invalid name 'Reviews_V1'",
    ),
    Bad(
        "duplicate-yaml-key",
        """\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: reviews
        spec:
          host: reviews
          host: ratings
        """,
        7,
        None,
        "",
        "duplicate key 'host' in one mapping",
    ),
    Bad(
        "enum-value",
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata:
          name: default
        spec:
          mtls:
            mode: STRICTER
        """,
        7,
        "PeerAuthentication default/default",
        "spec.mtls.mode",
        "'STRICTER' is not one of 'UNSET', 'DISABLE', 'PERMISSIVE' or 'STRICT'",
    ),
    Bad(
        "cross-field-rule",
        """\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata:
          name: ext-authz
        spec:
          action: ALLOW
          provider:
            name: opa
        """,
        7,
        "AuthorizationPolicy default/ext-authz",
        "spec.provider",
        "provider is only allowed with action CUSTOM",
    ),
    # Map keys that YAML reads as integers (ports) must still point at their own line.
    Bad(
        "error-under-an-integer-map-key",
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata:
          name: ratings
        spec:
          selector:
            matchLabels: {app: ratings}
          portLevelMtls:
            8080:
              mode: BOGUS
        """,
        10,
        "PeerAuthentication default/ratings",
        "spec.portLevelMtls[8080].mode",
        "'BOGUS' is not one of",
    ),
    # A typo inside a map value (a header match) deserves the same hint as anywhere else.
    Bad(
        "unknown-field-inside-a-map-value",
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts: [reviews]
          http:
          - match:
            - headers:
                end-user:
                  exakt: jason
            route:
            - destination: {host: reviews}
        """,
        11,
        "VirtualService default/reviews",
        "spec.http[0].match[0].headers['end-user'].exakt",
        "unknown field 'exakt' (did you mean \"exact\"?)",
    ),
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda bad: bad.id)
def test_bad_input_names_file_line_resource_and_field(tmp_path: Path, bad: Bad) -> None:
    path = write(tmp_path, "policy.yaml", bad.text)
    [issue] = issues_of([path])
    assert issue.source == str(path)
    assert issue.line == bad.line
    assert issue.resource == bad.resource
    assert issue.path == bad.path
    assert bad.message in issue.message


def test_error_reads_as_file_line_resource_path_message() -> None:
    text = next(b for b in BAD_INPUTS if b.id == "negative-weight").text
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text), source="canary.yaml")
    assert str(info.value) == (
        "canary.yaml:14: VirtualService default/reviews: spec.http[0].route[1].weight: must be >= 0; got -20"
    )
    assert info.value.issues[0].to_json() == {
        "message": "must be >= 0; got -20",
        "source": "canary.yaml",
        "line": 14,
        "resource": "VirtualService default/reviews",
        "path": "spec.http[0].route[1].weight",
    }


def test_weights_are_relative_and_all_zero_is_refused() -> None:
    """Current Istio: a destination gets weight / sum; 80 and an unset weight (0) load, two
    zeros could route nothing and are refused at the route list."""
    text = """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - route:
        - destination: {host: reviews, subset: v1}
          weight: 80
        - destination: {host: reviews, subset: v2}
    """
    [loaded] = load_text(textwrap.dedent(text), source="canary.yaml")
    assert [d.weight for d in loaded.resource.spec.http[0].route] == [80, 0]
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text).replace("weight: 80", "weight: 0"), source="canary.yaml")
    [issue] = info.value.issues
    assert (issue.line, issue.path) == (7, "spec.http[0].route")
    assert issue.message.startswith("every destination has weight 0")


def test_one_destination_may_omit_its_weight() -> None:
    text = """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - route:
        - destination: {host: reviews, subset: v1}
    """
    [loaded] = load_text(textwrap.dedent(text))
    assert loaded.resource.spec.http[0].route[0].weight == 0


def test_several_problems_in_one_resource_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "reviews.yaml",
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: reviews
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews}
            timeout: soon
            retries:
              attempts: -1
        """,
    )
    found = {(i.line, i.path) for i in issues_of([path])}
    assert found == {(10, "spec.http[0].timeout"), (12, "spec.http[0].retries.attempts")}


def test_errors_are_collected_across_documents_and_files(tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "a.yaml",
        """\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: good}
        spec: {host: good}
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: bad-one}
        spec: {host: bad-one, subsets: [{name: v1, lables: {}}]}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: bad-two}
        spec:
          hosts: [bad-two]
          http:
          - route:
            - destination: {host: bad-two}
            timeout: 1 second
        """,
    )
    second = write(tmp_path, "b.yaml", "kind: Gateway\nmetadata: {name: gw}\n")
    issues = issues_of([first, second])
    assert [(Path(i.source).name, i.line, i.resource, i.path) for i in issues] == [
        ("a.yaml", 9, "DestinationRule default/bad-one", "spec.subsets[0].lables"),
        ("a.yaml", 19, "VirtualService default/bad-two", "spec.http[0].timeout"),
        ("b.yaml", 1, "Gateway default/gw", "apiVersion"),
    ]
    assert 'did you mean "labels"' in issues[0].message


def test_a_yaml_error_in_one_file_does_not_hide_errors_in_another(tmp_path: Path) -> None:
    broken = write(tmp_path, "a.yaml", "kind: [\n")
    wrong = write(tmp_path, "b.yaml", DR_A.replace("host: a", "host: a\n  subsets: 3"))
    issues = issues_of([broken, wrong])
    assert [Path(i.source).name for i in issues] == ["a.yaml", "b.yaml"]
    assert issues[0].message.startswith("invalid YAML")
    assert (issues[1].path, issues[1].message) == ("spec.subsets", "must be a list; got 3")


# --- duplicates ----------------------------------------------------------------------


def test_duplicate_resource_in_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dup.yaml",
        """\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata:
          name: reviews
        spec: {host: reviews}
        ---
        apiVersion: networking.istio.io/v1beta1
        kind: DestinationRule
        metadata:
          name: reviews
          namespace: default
        spec: {host: reviews.default.svc.cluster.local}
        """,
    )
    [issue] = issues_of([path])
    assert (issue.source, issue.line, issue.resource) == (str(path), 7, "DestinationRule default/reviews")
    assert issue.message == f"duplicate resource: DestinationRule default/reviews is also defined at {path}:1"


def test_duplicate_resource_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", DR_A)
    write(tmp_path, "b.yaml", "# same again\n" + DR_A)
    [issue] = issues_of([tmp_path])
    assert (Path(issue.source).name, issue.line) == ("b.yaml", 2)
    assert issue.message.endswith(f"is also defined at {tmp_path / 'a.yaml'}:1")


def test_same_name_in_other_kind_or_namespace_is_not_a_duplicate() -> None:
    text = DR_A + "---\n" + DR_A.replace("name: a", "name: a\n  namespace: prod")
    text += "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\n"
    text += "spec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n"
    keys = [str(item.resource.key) for item in load_text(text)]
    assert keys == ["DestinationRule default/a", "DestinationRule prod/a", "VirtualService default/a"]


# --- hostile input -------------------------------------------------------------------


def _billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(_billion_laughs(), "alias expansion", id="billion-laughs"),
        pytest.param("spec: &loop [*loop]\n", "", id="recursive-alias"),
        pytest.param("spec: " + "[" * 2000 + "]" * 2000 + "\n", "", id="deeply-nested"),
    ],
)
def test_hostile_yaml_fails_cleanly_and_fast(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "bomb.yaml", text)
    assert path.stat().st_size < 10_000
    started = time.monotonic()
    [issue] = issues_of([path])
    assert time.monotonic() - started < 5
    assert issue.source == str(path)
    assert issue.message
    assert fragment in issue.message


@pytest.mark.parametrize("size", [MAX_SOURCE_BYTES + 1, 10 * 1024 * 1024 + 1], ids=["just-over", "10MB"])
def test_oversized_file_fails_fast_without_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as out:
        out.truncate(size)

    def must_not_be_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized file was read or parsed")

    monkeypatch.setattr(yaml, "compose_all", must_not_be_called)
    monkeypatch.setattr(Path, "read_text", must_not_be_called)
    [issue] = issues_of([path])
    assert issue.source == str(path)
    assert issue.line is None
    assert f"file is {size / 1048576:.1f} MiB" in issue.message
    assert f"larger than the {MAX_SOURCE_BYTES // 1048576} MiB limit" in issue.message


def test_oversized_text_is_refused() -> None:
    with pytest.raises(ConfigError, match="MiB limit"):
        load_text("#" * (MAX_SOURCE_BYTES + 1), source="big.yaml")


def test_oversized_stdin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("#" * (MAX_SOURCE_BYTES + 10)))
    [issue] = issues_of(["-"])
    assert issue.source == "<stdin>"
    assert "MiB limit" in issue.message


# YAML merge keys (`<<: *anchor`) let a later key override a merged one; that is not a duplicate.
def test_merge_key_may_be_overridden() -> None:
    text = """\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      trafficPolicy:
        connectionPool:
          tcp: &pool {maxConnections: 10, connectTimeout: 1s}
      subsets:
      - name: v1
        trafficPolicy:
          connectionPool:
            tcp:
              <<: *pool
              maxConnections: 20
    """
    [loaded] = load_text(textwrap.dedent(text))
    tcp = loaded.resource.spec.subsets[0].traffic_policy.connection_pool.tcp
    assert (tcp.max_connections, tcp.connect_timeout) == (20, 1.0)


# --- sources: files, folders, kind: List, stdin --------------------------------------


def test_folder_loads_yaml_yml_json_sorted_and_nothing_else(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", DR_A.replace("name: a", "name: b"))
    write(tmp_path, "a.yml", DR_A)
    data = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule"}
    (tmp_path / "c.json").write_text(json.dumps({**data, "metadata": {"name": "c"}, "spec": {"host": "c"}}))
    write(tmp_path, "notes.txt", "not: policy\n")
    write(tmp_path, "d.yaml.bak", "kind: Broken\n")
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested", "e.yaml", DR_A.replace("name: a", "name: e"))
    loaded = load_paths([tmp_path])
    assert [(Path(i.source).name, i.resource.name) for i in loaded] == [
        ("a.yml", "a"),
        ("b.yaml", "b"),
        ("c.json", "c"),
    ]
    assert all(isinstance(i.resource, DestinationRule) for i in loaded)


def test_files_and_folders_mix_in_the_order_given(tmp_path: Path) -> None:
    folder = tmp_path / "policy"
    folder.mkdir()
    write(folder, "x.yaml", DR_A.replace("name: a", "name: x"))
    single = write(tmp_path, "single.yaml", DR_A)
    assert [i.resource.name for i in load_paths([single, folder])] == ["a", "x"]


def test_folder_without_policy_files(tmp_path: Path) -> None:
    write(tmp_path, "README.md", "# nothing\n")
    issues = issues_of([tmp_path])
    assert issues[0].source == str(tmp_path)
    assert issues[0].message == "no .yaml, .yml, .json files in folder"


def test_missing_path(tmp_path: Path) -> None:
    [issue] = issues_of([tmp_path / "nope.yaml"])
    assert (issue.source, issue.message) == (str(tmp_path / "nope.yaml"), "no such file or folder")


def test_kind_list_items_are_loaded_with_their_own_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "list.yaml",
        """\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: networking.istio.io/v1
          kind: DestinationRule
          metadata: {name: a}
          spec: {host: a}
        - apiVersion: security.istio.io/v1
          kind: PeerAuthentication
          metadata: {name: default, namespace: istio-system}
          spec: {mtls: {mode: STRICT}}
        """,
    )
    loaded = load_paths([path])
    assert [(str(i.resource.key), i.line) for i in loaded] == [
        ("DestinationRule default/a", 4),
        ("PeerAuthentication istio-system/default", 8),
    ]
    assert loaded[1].where == f"{path}:8"


def test_kind_list_item_errors_point_into_the_item(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "list.yaml",
        """\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: networking.istio.io/v1
          kind: DestinationRule
          metadata: {name: a}
          spec: {host: a}
        - apiVersion: networking.istio.io/v1
          kind: DestinationRule
          metadata: {name: b}
          spec:
            host: b
            trafficPolicy: {loadBalancer: {simple: FASTEST}}
        """,
    )
    [issue] = issues_of([path])
    assert (issue.line, issue.resource, issue.path) == (
        13,
        "DestinationRule default/b",
        "spec.trafficPolicy.loadBalancer.simple",
    )
    assert "'FASTEST' is not one of" in issue.message


def test_stdin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(DR_A + "---\n" + DR_A.replace("name: a", "name: b")))
    file = write(tmp_path, "c.yaml", DR_A.replace("name: a", "name: c"))
    loaded = load_paths(["-", file])
    assert [(i.source, i.line, i.resource.name) for i in loaded] == [
        ("<stdin>", 1, "a"),
        ("<stdin>", 8, "b"),
        (str(file), 1, "c"),
    ]


def test_stdin_errors_name_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(DR_A + "  hots: a\n"))
    [issue] = issues_of(["-"])
    assert (issue.source, issue.line, issue.path) == ("<stdin>", 7, "spec.hots")
    assert str(issue).startswith("<stdin>:7: DestinationRule default/a: spec.hots: unknown field 'hots'")


def test_namespace_for_resources_without_one(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", DR_A)
    [loaded] = load_paths([path], namespace="staging")
    assert loaded.resource.namespace == "staging"


def test_load_text_default_source() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("kind: Nope\n")
    assert str(info.value) == "<string>:1: Nope: apiVersion: required field is missing"


# --- rules Istio enforces that the models check -------------------------------------------------


def route_issues(http: str) -> list[ConfigIssue]:
    """The issues of a VirtualService whose spec.http is ``http`` (YAML, 2-space indented)."""
    text = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"
        "spec:\n  hosts: [reviews]\n  http:\n" + http
    )
    with pytest.raises(ConfigError) as info:
        load_text(text, source="vs.yaml")
    return list(info.value.issues)


def test_regex_rewrite_group_reference_beyond_the_groups_is_an_error() -> None:
    [issue] = route_issues(
        "  - rewrite: {uriRegexRewrite: {match: '^/v1/(.*)$', rewrite: '/\\2'}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    assert (issue.line, issue.resource, issue.path) == (
        7,
        "VirtualService default/reviews",
        "spec.http[0].rewrite.uriRegexRewrite.rewrite",
    )
    assert issue.message == "\\2 refers to group 2, but '^/v1/(.*)$' has 1 group(s)"


@pytest.mark.parametrize("rewrite", ["/\\1", "/x/\\1/y", "/static"])
def test_regex_rewrite_with_existing_groups_loads(rewrite: str) -> None:
    text = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"
        "spec:\n  hosts: [reviews]\n  http:\n"
        f"  - rewrite: {{uriRegexRewrite: {{match: '^/v1/(.*)$', rewrite: '{rewrite}'}}}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    [loaded] = load_text(text)
    assert loaded.resource.spec.http[0].rewrite.uri_regex_rewrite.rewrite == rewrite


def test_regex_rewrite_reports_a_bad_pattern_not_its_groups() -> None:
    [issue] = route_issues(
        "  - rewrite: {uriRegexRewrite: {match: '^/(unclosed', rewrite: '/\\1'}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    assert issue.path == "spec.http[0].rewrite.uriRegexRewrite.match"
    assert "does not compile" in issue.message


def test_regex_rewrite_with_an_unknown_escape_is_an_error() -> None:
    [issue] = route_issues(
        "  - rewrite: {uriRegexRewrite: {match: '^/v1/(.*)$', rewrite: '/\\d/\\1'}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    assert issue.path == "spec.http[0].rewrite.uriRegexRewrite.rewrite"


def test_exponential_delay_is_refused() -> None:
    [issue] = route_issues(
        "  - fault: {delay: {exponentialDelay: 1s, percentage: {value: 10}}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    assert (issue.line, issue.path, issue.message) == (
        7,
        "spec.http[0].fault.delay.exponentialDelay",
        "exponentialDelay is not supported by meshlib: Istio rejects it too; use fixedDelay",
    )


def test_exponential_delay_is_refused_even_next_to_a_fixed_delay() -> None:
    [issue] = route_issues(
        "  - fault: {delay: {fixedDelay: 1s, exponentialDelay: 1s}}\n"
        "    route: [{destination: {host: reviews}}]\n"
    )
    assert issue.path == "spec.http[0].fault.delay.exponentialDelay"
    assert "not supported" in issue.message


def test_a_delay_without_fixed_delay_is_an_error() -> None:
    [issue] = route_issues(
        "  - fault: {delay: {percentage: {value: 10}}}\n    route: [{destination: {host: reviews}}]\n"
    )
    assert (issue.path, issue.message) == ("spec.http[0].fault.delay.fixedDelay", "required field is missing")


@pytest.mark.parametrize(
    "abort",
    [
        "{http2Error: REFUSED_STREAM, percentage: {value: 10}}",
        "{httpStatus: 503, http2Error: REFUSED_STREAM}",
    ],
)
def test_http2_error_is_refused(abort: str) -> None:
    [issue] = route_issues(
        f"  - fault: {{abort: {abort}}}\n    route: [{{destination: {{host: reviews}}}}]\n"
    )
    assert (issue.path, issue.message) == (
        "spec.http[0].fault.abort.http2Error",
        "http2Error is not supported by meshlib: Istio rejects it too; use httpStatus or grpcStatus",
    )


@pytest.mark.parametrize("abort", ["{percentage: {value: 10}}", "{httpStatus: 503, grpcStatus: UNAVAILABLE}"])
def test_abort_needs_exactly_one_of_http_status_and_grpc_status(abort: str) -> None:
    [issue] = route_issues(
        f"  - fault: {{abort: {abort}}}\n    route: [{{destination: {{host: reviews}}}}]\n"
    )
    assert (issue.path, issue.message) == (
        "spec.http[0].fault.abort",
        "set exactly one of httpStatus and grpcStatus",
    )


def test_direct_response_bytes_that_are_not_base64_are_an_error() -> None:
    [issue] = route_issues("  - directResponse: {status: 200, body: {bytes: 'not base64!'}}\n")
    assert issue.path == "spec.http[0].directResponse.body.bytes"
