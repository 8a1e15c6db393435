"""Delegate routes merged into their root route, as Istio merges them."""

from __future__ import annotations

import textwrap

import pytest

from meshlib.core.delegation import merge_delegate_route
from meshlib.errors import ConfigError
from meshlib.policy import load_text
from meshlib.policy.virtual_service import HTTPRoute


def route(yaml_text: str) -> HTTPRoute:
    import yaml

    return HTTPRoute.model_validate(yaml.safe_load(textwrap.dedent(yaml_text)))


ROOT = route("""\
    name: api
    match:
    - {uri: {prefix: /api}, port: 9080, sourceLabels: {app: web}}
    - {uri: {exact: /health}}
    timeout: 3s
    retries: {attempts: 4}
    delegate: {name: child}
""")


@pytest.mark.parametrize(
    ("child_match", "fits"),
    [
        ("{uri: {prefix: /api/v2}}", ["/api/v2"]),  # inside the prefix
        ("{uri: {exact: /api/x}}", ["/api/x"]),  # an exact path inside the prefix
        ("{uri: {exact: /health}}", ["/health"]),  # the same exact path (not in /api)
        ("{uri: {prefix: /other}}", None),  # outside every root block: dropped
        ("{uri: {prefix: /ap}}", None),  # wider than the root's prefix
        ("{uri: {regex: /api/.*}}", None),  # a regex never fits a prefix
        ("{uri: {prefix: /api}, port: 8080}", None),  # another port
        ("{uri: {prefix: /api}, sourceLabels: {app: batch}}", None),  # other labels
        ("{uri: {prefix: /api}, ignoreUriCase: true}", None),  # case folding differs
    ],
)
def test_a_delegate_match_must_fit_inside_a_root_match(child_match: str, fits: list[str] | None) -> None:
    merged = merge_delegate_route(
        ROOT, route(f"match: [{child_match}]\nroute: [{{destination: {{host: x}}}}]")
    )
    if fits is None:
        assert merged is None
        return
    assert merged is not None
    uris = [m.uri.exact or m.uri.prefix for m in merged.match if m.uri is not None]
    assert uris == fits


def test_the_merged_block_keeps_the_root_conditions_the_delegate_leaves_out() -> None:
    merged = merge_delegate_route(
        ROOT,
        route(
            "match: [{uri: {prefix: /api/v2}, headers: {x-user: {exact: a}}}]\n"
            "route: [{destination: {host: x}}]"
        ),
    )
    assert merged is not None
    [block] = merged.match
    assert (block.port, block.source_labels) == (9080, {"app": "web"})
    assert block.headers["x-user"].exact == "a"


def test_a_delegate_route_without_match_takes_every_root_block_and_the_root_settings() -> None:
    merged = merge_delegate_route(ROOT, route("name: v2\nroute: [{destination: {host: x}}]"))
    assert merged is not None
    assert [m.uri.prefix or m.uri.exact for m in merged.match if m.uri] == ["/api", "/health"]
    assert (merged.name, merged.timeout, merged.retries and merged.retries.attempts) == ("api-v2", 3.0, 4)
    assert merged.delegate is None


def test_settings_of_the_delegate_route_win_over_the_root() -> None:
    merged = merge_delegate_route(
        ROOT, route("timeout: 1s\nretries: {attempts: 0}\nroute: [{destination: {host: x}}]")
    )
    assert merged is not None
    assert (merged.timeout, merged.retries and merged.retries.attempts) == (1.0, 0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "gateways: [mesh]\n  http: [{route: [{destination: {host: x}}]}]",
            "takes its gateways from its root",
        ),
        ("http: [{delegate: {name: grandchild}}]", "cannot delegate again"),
        ("tcp: [{route: [{destination: {host: x}}]}]", "has http routes only"),
        ("exportTo: ['*']", "required unless this is a delegate VirtualService"),
    ],
)
def test_delegate_virtual_services_follow_istios_rules(spec: str, message: str) -> None:
    head = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: child}\n"
    text = f"{head}spec:\n  {spec}\n"
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert any(message in issue.message for issue in info.value.issues), info.value
