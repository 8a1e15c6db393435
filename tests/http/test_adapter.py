"""The HTTP adapter without a network: error types, path rewrites and per-attempt timeouts."""

from __future__ import annotations

import httpx
import pytest

from meshlib import Mesh
from meshlib.core.attempt import rewrite_path, shadow_authority
from meshlib.core.exchange import Send
from meshlib.core.routing_table import Target
from meshlib.http.adapter import HttpAdapter, _exhausted
from meshlib.http.errors import _HTTPX_ERRORS, RetriesExhaustedError
from meshlib.policy.virtual_service import HTTPRewrite

HTTPX_TYPES = sorted({httpx_type for _, httpx_type in _HTTPX_ERRORS}, key=lambda t: t.__name__)


# --- RetriesExhaustedError that is also the last attempt's error ---------------------------------


@pytest.mark.parametrize("base", HTTPX_TYPES, ids=lambda t: t.__name__)
def test_exhausted_error_is_also_the_last_attempts_type(base: type[httpx.TransportError]) -> None:
    request = httpx.Request("GET", "http://reviews/")
    found = _exhausted(base)
    assert issubclass(found, RetriesExhaustedError)
    assert issubclass(found, base)
    assert _exhausted(base) is found  # made once per type
    error = found("reviews: 3 attempt(s) failed", request=request)
    assert error.request is request
    assert error.flag == "URX"


@pytest.mark.parametrize("base", [ValueError, RetriesExhaustedError, httpx.DecodingError])
def test_exhausted_error_for_other_types_is_plain(base: type[BaseException]) -> None:
    assert _exhausted(base) is RetriesExhaustedError


# --- path rewrites --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "prefixes", "expected"),
    [
        ("/API/Items?x=1", (("/api/", True),), "/v2/Items?x=1"),
        ("/api/Items", (("/api/", True),), "/v2/Items"),
        ("/Api/a%2Fb", (("/api/", True),), "/v2/a%2Fb"),
        ("/API/Items", (("/api/", False),), "/v2/"),  # case-sensitive: the prefix did not match
        ("/old/x", (("/api/", True), ("/old/", False)), "/v2/x"),
    ],
)
def test_prefix_rewrite_keeps_the_rest_of_the_path(
    raw: str, prefixes: tuple[tuple[str, bool], ...], expected: str
) -> None:
    path, _, query = raw.partition("?")
    assert rewrite_path(path, query, HTTPRewrite(uri="/v2/"), prefixes) == expected


def test_regex_rewrite_uses_numbered_groups_and_keeps_the_query() -> None:
    rewrite = HTTPRewrite.model_validate(
        {"uriRegexRewrite": {"match": "^/service/([^/]+)(/.*)$", "rewrite": "\\2/instance/\\1"}}
    )
    assert rewrite_path("/service/foo/v1/api", "q=1", rewrite) == "/v1/api/instance/foo?q=1"


def test_regex_rewrite_backslash_zero_is_the_whole_match() -> None:
    rewrite = HTTPRewrite.model_validate({"uriRegexRewrite": {"match": "^/v1/.*$", "rewrite": "/all\\0"}})
    assert rewrite_path("/v1/x", "", rewrite) == "/all/v1/x"


def test_an_authority_only_rewrite_keeps_the_path() -> None:
    assert rewrite_path("/v1/x", "a=b", HTTPRewrite(authority="reviews.internal")) is None


# --- the request an attempt sends -----------------------------------------------------------------


@pytest.fixture
def adapter() -> HttpAdapter:
    return HttpAdapter(Mesh("frontend"))  # never started: the plane of an empty snapshot


def attempt_timeouts(
    adapter: HttpAdapter, own: httpx.Timeout, limit: float | None
) -> dict[str, float | None]:
    request = httpx.Request("GET", "http://reviews/", extensions={"timeout": own.as_dict()})
    ex = adapter.exchange(request, adapter.table(), "reviews")
    upstream = adapter.upstream(request, ex, Send(None, Target("reviews", None, None, 100), limit))
    timeouts: dict[str, float | None] = upstream.extensions["timeout"]
    return timeouts


def test_attempt_takes_the_tighter_timeout_per_phase(adapter: HttpAdapter) -> None:
    own = httpx.Timeout(5.0, connect=0.1, read=None, pool=1.0)
    assert attempt_timeouts(adapter, own, 2.0) == {"connect": 0.1, "read": 2.0, "write": 2.0, "pool": 1.0}


def test_attempt_without_a_mesh_limit_keeps_the_callers_timeouts(adapter: HttpAdapter) -> None:
    own = httpx.Timeout(0.3)
    assert attempt_timeouts(adapter, own, None) == own.as_dict()


def test_attempt_with_a_loose_caller_takes_the_mesh_limit(adapter: HttpAdapter) -> None:
    assert attempt_timeouts(adapter, httpx.Timeout(60.0), 0.5) == {
        "connect": 0.5,
        "read": 0.5,
        "write": 0.5,
        "pool": 0.5,
    }


@pytest.mark.parametrize(
    ("authority", "shadow"),
    [
        ("reviews", "reviews-shadow"),
        ("reviews:9080", "reviews-shadow:9080"),
        ("[fd00::1]:80", "[fd00::1]-shadow:80"),
    ],
)
def test_mirror_copy_marks_the_host_and_keeps_the_port(authority: str, shadow: str) -> None:
    assert shadow_authority(authority) == shadow


def test_httpcore_finds_sniffio_installed() -> None:
    """httpcore imports sniffio on every async lock and event; when it is missing, each of
    those failed imports searches sys.path (41 µs measured, ~160 µs per AsyncClient request).
    meshlib depends on it so that the import is a dictionary lookup."""
    import asyncio
    import sys

    from httpcore._synchronization import current_async_library

    async def library() -> str:
        return current_async_library()

    assert asyncio.run(library()) == "asyncio"
    assert "sniffio" in sys.modules
