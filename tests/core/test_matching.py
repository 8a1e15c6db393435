"""HTTPMatchRequest compiled into predicates: each condition, AND inside a block, OR across blocks."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib.core.call import Call
from meshlib.core.matching import compile_match, compile_matches, string_predicate
from meshlib.policy.base import StringMatch
from meshlib.policy.virtual_service import HTTPMatchRequest


def call(
    path: str = "/",
    *,
    method: str = "GET",
    scheme: str = "http",
    port: int | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
    authority: str = "reviews:9080",
) -> Call:
    found = {name.lower(): value for name, value in (headers or {}).items()}
    return Call(method, scheme, "reviews", port, path, query, found.get, authority=authority)


def block(**fields: Any) -> HTTPMatchRequest:
    return HTTPMatchRequest.model_validate(fields)


def matches(fields: dict[str, Any], request: Call) -> bool:
    return compile_match(block(**fields))(request)


# --- uri -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "path", "expected"),
    [
        ({"exact": "/reviews"}, "/reviews", True),
        ({"exact": "/reviews"}, "/reviews/1", False),
        ({"exact": "/reviews"}, "/Reviews", False),
        ({"prefix": "/api/"}, "/api/v1", True),
        ({"prefix": "/api/"}, "/api", False),
        ({"prefix": "/api/"}, "/API/v1", False),
        ({"prefix": ""}, "/anything", True),
        ({"regex": "/reviews/[0-9]+"}, "/reviews/42", True),
        ({"regex": "/reviews/[0-9]+"}, "/reviews/42/ratings", False),  # full match, not search
        ({"regex": "[0-9]+"}, "/reviews/42", False),
        ({"regex": "/reviews/[0-9]+"}, "/REVIEWS/42", False),
    ],
)
def test_uri(uri: dict[str, str], path: str, expected: bool) -> None:
    assert matches({"uri": uri}, call(path)) is expected


def test_uri_ignores_the_query_string() -> None:
    request = call("/reviews", query="page=2")
    assert matches({"uri": {"exact": "/reviews"}}, request) is True
    assert matches({"uri": {"regex": "/reviews"}}, request) is True


@pytest.mark.parametrize(
    ("uri", "path", "expected"),
    [
        ({"exact": "/Reviews"}, "/rEVIEWS", True),
        ({"exact": "/Reviews"}, "/reviews/1", False),
        ({"prefix": "/API/"}, "/api/v1", True),
        ({"prefix": "/API/"}, "/apx/v1", False),
        # Istio: ignoreUriCase applies to exact and prefix only, never to regex.
        ({"regex": "/reviews/[0-9]+"}, "/REVIEWS/42", False),
        ({"regex": "/reviews/[0-9]+"}, "/reviews/42", True),
    ],
)
def test_ignore_uri_case(uri: dict[str, str], path: str, expected: bool) -> None:
    assert matches({"uri": uri, "ignoreUriCase": True}, call(path)) is expected


# --- headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "headers", "expected"),
    [
        ({"exact": "jason"}, {"end-user": "jason"}, True),
        ({"exact": "jason"}, {"end-user": "Jason"}, False),
        ({"exact": "jason"}, {"end-user": "jason2"}, False),
        ({"exact": "jason"}, {}, False),
        ({"prefix": "ja"}, {"end-user": "jason"}, True),
        ({"prefix": "ja"}, {"end-user": "mary"}, False),
        ({"regex": "j.*n"}, {"end-user": "jason"}, True),
        ({"regex": "j.*n"}, {"end-user": "jasonx"}, False),  # full match
        ({}, {"end-user": "anyone"}, True),  # {}: presence only
        ({}, {"end-user": ""}, True),
        ({}, {}, False),
        ({"exact": ""}, {"end-user": ""}, True),
        ({"exact": ""}, {}, False),
    ],
)
def test_headers(match: dict[str, str], headers: dict[str, str], expected: bool) -> None:
    assert matches({"headers": {"end-user": match}}, call(headers=headers)) is expected


def test_header_names_are_looked_up_lower_case() -> None:
    assert matches({"headers": {"End-User": {"exact": "jason"}}}, call(headers={"end-user": "jason"})) is True


@pytest.mark.parametrize("key", ["uri", "scheme", "method", "authority", "URI"])
def test_istio_ignores_pseudo_header_keys(key: str) -> None:
    fields = {"headers": {key: {"exact": "never-sent"}}}
    assert matches(fields, call("/x")) is True
    # Ignored keys do not disable the other conditions of the block.
    fields["headers"]["x-env"] = {"exact": "prod"}
    assert matches(fields, call("/x", headers={"x-env": "prod"})) is True
    assert matches(fields, call("/x", headers={"x-env": "dev"})) is False


@pytest.mark.parametrize(
    ("match", "headers", "expected"),
    [
        ({}, {}, True),  # {} under withoutHeaders: the header must be absent
        ({}, {"x-debug": "1"}, False),
        ({"exact": "1"}, {}, True),
        ({"exact": "1"}, {"x-debug": "0"}, True),  # present but not matching
        ({"exact": "1"}, {"x-debug": "1"}, False),
        ({"prefix": "tr"}, {"x-debug": "true"}, False),
        ({"regex": "[0-9]+"}, {"x-debug": "12a"}, True),
    ],
)
def test_without_headers(match: dict[str, str], headers: dict[str, str], expected: bool) -> None:
    assert matches({"withoutHeaders": {"x-debug": match}}, call(headers=headers)) is expected


# --- query parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "query", "expected"),
    [
        ({"exact": "true"}, "debug=true", True),
        ({"exact": "true"}, "debug=True", False),
        ({"exact": "true"}, "other=true", False),
        ({"exact": ""}, "debug", True),  # ?debug: present with an empty value
        ({"exact": ""}, "debug=", True),
        ({"exact": ""}, "debug=1", False),
        ({"exact": ""}, "", False),
        ({"prefix": "ab"}, "debug=abc", True),
        ({"prefix": "ab"}, "debug=xab", False),
        ({"regex": "[0-9]+"}, "debug=123", True),
        ({"regex": "[0-9]+"}, "debug=a123", False),  # full match, as Istio's docs spell out
        ({"regex": "[0-9]+"}, "debug=123a", False),
        ({"exact": "1"}, "debug=1&debug=2", True),  # first value wins
        ({"exact": "2"}, "debug=1&debug=2", False),
    ],
)
def test_query_params(match: dict[str, str], query: str, expected: bool) -> None:
    assert matches({"queryParams": {"debug": match}}, call(query=query)) is expected


# --- method, authority, scheme, port ----------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "request_", "expected"),
    [
        ({"method": {"exact": "POST"}}, call(method="POST"), True),
        ({"method": {"exact": "POST"}}, call(method="GET"), False),
        ({"method": {"regex": "GET|HEAD"}}, call(method="HEAD"), True),
        ({"method": {"regex": "GET|HEAD"}}, call(method="DELETE"), False),
        ({"authority": {"exact": "reviews:9080"}}, call(authority="reviews:9080"), True),
        ({"authority": {"exact": "reviews:9080"}}, call(authority="reviews"), False),
        ({"authority": {"prefix": "reviews"}}, call(authority="reviews.default"), True),
        ({"authority": {"prefix": "reviews"}}, call(authority="ratings"), False),
        ({"scheme": {"exact": "https"}}, call(scheme="https"), True),
        ({"scheme": {"exact": "https"}}, call(scheme="http"), False),
        ({"port": 9080}, call(port=9080), True),
        ({"port": 9080}, call(port=9081), False),
        ({"port": 9080}, call(port=None), False),
    ],
)
def test_request_attributes(fields: dict[str, Any], request_: Call, expected: bool) -> None:
    assert matches(fields, request_) is expected


# --- combining -------------------------------------------------------------------------


def test_conditions_in_one_block_are_anded() -> None:
    fields = {
        "uri": {"prefix": "/api"},
        "method": {"exact": "GET"},
        "headers": {"x-env": {"exact": "canary"}},
        "queryParams": {"v": {"exact": "2"}},
    }
    assert matches(fields, call("/api/x", headers={"x-env": "canary"}, query="v=2")) is True
    assert matches(fields, call("/web", headers={"x-env": "canary"}, query="v=2")) is False
    assert matches(fields, call("/api/x", method="PUT", headers={"x-env": "canary"}, query="v=2")) is False
    assert matches(fields, call("/api/x", query="v=2")) is False
    assert matches(fields, call("/api/x", headers={"x-env": "canary"}, query="v=1")) is False


def test_blocks_are_ored() -> None:
    blocks = [block(uri={"prefix": "/api"}), block(headers={"x-env": {"exact": "canary"}})]
    predicate = compile_matches(blocks, "default", {})
    assert predicate is not None
    assert predicate(call("/api/1")) is True
    assert predicate(call("/web", headers={"x-env": "canary"})) is True
    assert predicate(call("/web", headers={"x-env": "prod"})) is False


def test_no_blocks_match_everything() -> None:
    predicate = compile_matches([], "default", {})
    assert predicate is not None
    assert predicate(call("/anything", method="DELETE")) is True
    assert compile_match(block())(call("/x")) is True


# --- caller selection at compile time ---------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "namespace", "labels", "applies"),
    [
        ({"sourceLabels": {"app": "productpage"}}, "default", {"app": "productpage", "v": "1"}, True),
        ({"sourceLabels": {"app": "productpage"}}, "default", {"app": "ratings"}, False),
        ({"sourceLabels": {"app": "productpage"}}, "default", {}, False),
        ({"sourceNamespace": "prod"}, "prod", {}, True),
        ({"sourceNamespace": "prod"}, "default", {}, False),
        ({"gateways": ["mesh"]}, "default", {}, True),
        ({"gateways": ["istio-system/ingress", "mesh"]}, "default", {}, True),
        ({"gateways": ["istio-system/ingress"]}, "default", {}, False),
    ],
)
def test_source_selection(
    fields: dict[str, Any], namespace: str, labels: dict[str, str], applies: bool
) -> None:
    predicate = compile_matches([block(uri={"prefix": "/"}, **fields)], namespace, labels)
    if applies:
        assert predicate is not None
        assert predicate(call("/x")) is True
    else:
        assert predicate is None


def test_only_blocks_for_this_caller_are_kept() -> None:
    blocks = [
        block(uri={"prefix": "/a"}, sourceLabels={"app": "other"}),
        block(uri={"prefix": "/b"}),
    ]
    predicate = compile_matches(blocks, "default", {"app": "me"})
    assert predicate is not None
    assert predicate(call("/a")) is False  # its block was dropped for this caller
    assert predicate(call("/b")) is True


# --- string_predicate ------------------------------------------------------------------


def test_string_predicate_ignore_case_lowers_both_sides() -> None:
    exact = string_predicate(StringMatch(exact="AbC"), ignore_case=True)
    assert (exact("abc"), exact("ABC"), exact("abcd")) == (True, True, False)
    prefix = string_predicate(StringMatch(prefix="AB"), ignore_case=True)
    assert (prefix("abc"), prefix("xab")) == (True, False)
    assert string_predicate(StringMatch())("whatever") is True
