"""Path normalization: the table of Istio's bypass classes, refusals, and properties
(idempotent; nothing that normalizes under a DENY prefix gets through the ASGI or WSGI
middleware, and what the application sees is the path that was matched)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meshlib
from meshlib import Mesh
from meshlib.core.paths import PathError, normalize_path, split_target
from tests.servers import asgi_through_mesh

TABLE = [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("//a///b", "/a/b"),  # merged slashes
    ("/a/./b/.", "/a/b/"),
    ("/a/../../b", "/b"),  # never above the root (CVE-2019-9901)
    ("/a/b/..", "/a/"),
    ("/%2e%2e/%2E/admin", "/admin"),  # escaped dots are dots
    ("/a%2Fb%2fc", "/a/b/c"),  # escaped slashes are separators (CVE-2021-31920)
    ("/a%5Cb%5cc", "/a/b/c"),
    ("/a\\b", "/a/b"),
    ("/x%2F..%2Fadmin", "/admin"),
    ("/%61%64min", "/admin"),  # unreserved escapes decoded
    ("/a%7e%2D%5f%2e", "/a~-_."),
    ("/a%3fb%23c%25", "/a%3Fb%23c%25"),  # reserved escapes kept, upper case
    ("/x/%252F", "/x/%252F"),  # no double decoding
    ("/caf\u00c3\u00a9", "/caf%C3%A9"),  # raw bytes escaped
    ("/.well-known/x", "/.well-known/x"),
    ("/a/...", "/a/..."),
    ("*", "*"),
]


@pytest.mark.parametrize(("raw", "expected"), TABLE)
def test_normalization_table(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected
    assert normalize_path(expected) == expected


@pytest.mark.parametrize(
    "raw", ["/a%00b", "/a\x00", "/a%4", "/a%zz", "/a%1F", "/a%7f", "/a\x1b[31m", "a/b", ""]
)
def test_refused(raw: str) -> None:
    with pytest.raises(PathError):
        normalize_path(raw)


def test_split_target_drops_the_fragment_and_keeps_the_query() -> None:
    assert split_target("/admin?x=1#frag") == ("/admin", "x=1")
    assert split_target("/admin#?x") == ("/admin", "")  # CVE-2021-39156: the fragment is not path


_PIECES = st.sampled_from(
    [
        "admin",
        "a",
        "..",
        ".",
        "",
        "%2e",
        "%2E%2e",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "%61dmin",
        "%61",
        "adm",
        "in",
        "%41",
        "x",
        "%25",
        "%252f",
        "~",
        "%7E",
        "//",
        "%3F",
        "%20",
    ]
)
PATHS = st.lists(_PIECES, min_size=0, max_size=8).map(lambda parts: "/" + "/".join(parts)) | st.lists(
    _PIECES, min_size=1, max_size=10
).map(lambda parts: "/" + "".join(parts))


@given(PATHS)
@settings(max_examples=500, deadline=None)
def test_normalization_is_idempotent(raw: str) -> None:
    try:
        once = normalize_path(raw)
    except PathError:
        return
    assert normalize_path(once) == once


DENY_ADMIN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
"""


@pytest.fixture(scope="module")
def deny_mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config: Path = tmp_path_factory.mktemp("paths") / "policy.yaml"
    config.write_text(DENY_ADMIN)
    with Mesh("reviews", config=config) as mesh:
        yield mesh


def _under_admin(app_path: str) -> bool:
    return app_path == "/admin" or app_path.startswith("/admin/")


@given(PATHS)
@settings(max_examples=300, deadline=None)
def test_no_path_under_the_deny_prefix_reaches_an_asgi_app(deny_mesh: Mesh, raw: str) -> None:
    status, scope = asgi_through_mesh(deny_mesh, raw.encode("latin-1"))
    seen = [scope["path"]] if scope else []
    try:
        normalized = normalize_path(raw)
    except PathError:
        assert status == 400
        assert not seen
        return
    if _under_admin(normalized):
        assert (status, seen) == (403, []), raw
    else:
        assert status == 200
        assert scope["raw_path"] == normalized.encode()
        assert not _under_admin(seen[0]), f"{raw!r}: the app routes {seen[0]!r}"


@given(PATHS)
@settings(max_examples=300, deadline=None)
def test_no_path_under_the_deny_prefix_reaches_a_wsgi_app(deny_mesh: Mesh, raw: str) -> None:
    seen: list[str] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    statuses: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/ignored",
        "REQUEST_URI": raw,
        "QUERY_STRING": "",
        "SERVER_NAME": "reviews",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    meshlib.wsgi.MeshMiddleware(app, deny_mesh)(environ, lambda status, headers, *_: statuses.append(status))
    code = int(statuses[0].split()[0])
    try:
        normalized = normalize_path(raw)
    except PathError:
        assert statuses[0] == "400 Bad Request"  # the standard phrase, never "400 Unknown"
        assert not seen
        return
    if _under_admin(normalized):
        assert (statuses[0], seen) == ("403 Forbidden", []), raw
    else:
        assert code == 200
        assert not _under_admin(seen[0]), f"{raw!r}: the app routes {seen[0]!r}"
