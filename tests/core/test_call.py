"""RawHeaders: the same answers whether a lookup scans the raw list or reads the built dict."""

from __future__ import annotations

from meshlib.core.call import Call, RawHeaders

RAW = [
    (b"Host", b"reviews"),
    (b"End-User", b"jason"),
    (b"X-Tag", b"a"),
    (b"accept", b"*/*"),
    (b"x-tag", b"b"),
    (b"X-Latin", "café".encode("latin-1")),
]
NAMES = ["host", "end-user", "x-tag", "accept", "x-latin", "missing", "ünicode-☃"]
EXPECTED = {
    "host": "reviews",
    "end-user": "jason",
    "x-tag": "a,b",  # repeated headers join with commas, in order (RFC 9110 5.3)
    "accept": "*/*",
    "x-latin": "café",
    "missing": None,
    "ünicode-☃": None,  # no header on the wire can carry this name
}


def test_every_lookup_agrees_with_the_expected_value_on_both_paths() -> None:
    for name in NAMES:  # a fresh view per name: its first lookup scans the raw list
        assert RawHeaders(RAW)(name) == EXPECTED[name], name
    headers = RawHeaders(RAW)
    # The first three lookups scan, the rest use the dict: ask each name twice, in two orders.
    for name in [*NAMES, *reversed(NAMES)]:
        assert headers(name) == EXPECTED[name], name
    assert headers._map is not None


def test_a_scan_lookup_and_a_dict_lookup_see_the_same_joined_value() -> None:
    scanned = RawHeaders(RAW)
    assert scanned("x-tag") == "a,b"
    built = RawHeaders(RAW)
    built("host")
    built("accept")
    built("end-user")
    assert built._map is None, "three lookups (route, traceparent, content-length): still scanning"
    assert built("x-tag") == "a,b"
    assert built._map is not None, "the fourth lookup builds the dict once"


def test_no_headers() -> None:
    headers = RawHeaders([])
    assert [headers(n) for n in ("a", "b", "c", "d")] == [None] * 4


def test_query_params_are_parsed_on_first_use_and_first_value_wins() -> None:
    call = Call("GET", "http", "reviews", 80, "/", "a=1&b=&a=2", RawHeaders([]))
    assert call._query_params is None
    assert call.query_params == {"a": "1", "b": ""}
    assert call.has_query_param("b")
    assert not call.has_query_param("c")
