"""Fuzzing the request-path normalizer (``meshlib.core.paths``): any text either normalizes to a
canonical path or is refused with PathError, and the escaped-slash rules agree with Envoy's
``DECODE_AND_MERGE_SLASHES`` (Istio's mesh option: ``path_with_escaped_slashes_action:
UNESCAPE_AND_FORWARD``, ``normalize_path``, ``merge_slashes``)."""

from __future__ import annotations

import contextlib
import re
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshlib.core.paths import PathError, normalize_path

# Pieces that matter to a normalizer: separators raw and escaped in both cases, dot segments raw
# and escaped, escapes of unreserved, reserved and control characters, broken escapes, raw
# latin-1 and non-latin-1 characters.
_PIECES = st.sampled_from(
    [
        "/", "\\", "%2F", "%2f", "%5C", "%5c", ".", "..", "%2e", "%2E", ".%2e", "%2e%2e",
        "a", "B", "z9", "~", "-", "_", "%41", "%7e", "%3f", "%3F", "%25", "%252F", "%20",
        "%00", "%1f", "%7F", "%", "%4", "%zz", "?", "#", ";", "=", "\x00", "\t", "é", "\u2215",
        "\uff0f", "\x85",
    ]
)  # fmt: skip
PATHS = st.lists(_PIECES, max_size=40).map(lambda parts: "/" + "".join(parts))
ANY_TEXT = st.text(max_size=300) | st.text(st.characters(codec="latin-1"), max_size=300)

_SEPARATOR_LEFT = re.compile(r"\\|%2f|%5c", re.IGNORECASE)


def _check_canonical(raw: str, out: str) -> None:
    assert out.startswith("/"), (raw, out)
    assert "//" not in out, (raw, out)
    assert not _SEPARATOR_LEFT.search(out), (raw, out)
    segments = out.split("/")
    assert "." not in segments, (raw, out)
    assert ".." not in segments, (raw, out)
    assert not any(ch < " " or ch == "\x7f" for ch in out), (raw, out)
    # Every escape left is well formed, upper-case and not of an unreserved character.
    for match in re.finditer(r"%(..?)", out):
        pair = match[1]
        assert re.fullmatch(r"[0-9A-F]{2}", pair), (raw, out)
        assert not re.fullmatch(r"[A-Za-z0-9._~-]", chr(int(pair, 16))), (raw, out)
    assert normalize_path(out) == out, (raw, out)  # idempotent


@given(PATHS)
@example("/%2e%2e%2f%2e%2e%2fetc/passwd")
@example("/a/..%5c..%5C..%2Fb")
@example("/%252e%252e/")
def test_generated_paths_normalize_canonically_or_are_refused(raw: str) -> None:
    try:
        out = normalize_path(raw)
    except PathError as error:
        reason = str(error)
    else:
        _check_canonical(raw, out)
        return
    assert reason, raw  # a refusal says why (the 400's body)


@given(ANY_TEXT)
def test_any_text_only_ever_raises_path_error(raw: str) -> None:
    try:
        out = normalize_path(raw)
    except PathError:
        return
    if out != "*":
        _check_canonical(raw, out)


# --- Envoy's rules for escaped slashes -----------------------------------------------------------
# Envoy (source/common/http/conn_manager_utility.cc, maybeNormalizePath) with Istio's
# DECODE_AND_MERGE_SLASHES: first %2F and %5C (either case) are unescaped into "/" and "\";
# then the path is canonicalized as Chromium's URL library does (backslash is "/", %2E is a dot,
# dot segments resolved, never above the root); then runs of slashes are merged.


def _envoy_normalize(path: str) -> str:
    path = re.sub("%2f", "/", path, flags=re.IGNORECASE)
    path = re.sub("%5c", "\\\\", path, flags=re.IGNORECASE)
    path = path.replace("\\", "/")
    path = re.sub("%2e", ".", path, flags=re.IGNORECASE)
    out: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return re.sub("/+", "/", "/" + "/".join(out))


_SEGMENTS = st.sampled_from(["a", "bc", "d1", ".", "..", "%2e", "%2E%2e", ".%2E", "~x"])
_ONE_SEPARATOR = st.sampled_from(["/", "\\", "%2F", "%2f", "%5C", "%5c"])


@st.composite
def _escaped_slash_paths(draw: st.DrawFn) -> str:
    """Segments joined by one separator each (raw or escaped), some runs of them at the end."""
    parts = [draw(_ONE_SEPARATOR)]
    for segment in draw(st.lists(_SEGMENTS, max_size=12)):
        parts += [segment, draw(_ONE_SEPARATOR)]
    parts += draw(st.lists(_ONE_SEPARATOR, max_size=3))
    return "".join(parts)


@given(_escaped_slash_paths())
@example("/a%2F..%2Fb")
@example("/a%5C%2e%2e%5Cb")
@example("%2F..%2F..%2Fetc")
def test_escaped_slashes_agree_with_envoy(raw: str) -> None:
    assert normalize_path(raw) == _envoy_normalize(raw), raw


@pytest.mark.xfail(
    strict=True,
    reason="known divergence: meshlib merges slashes before resolving '..' (the empty segment "
    "is not one '..' can remove), Envoy resolves first and merges after",
)
def test_empty_segment_before_dot_dot_agrees_with_envoy() -> None:
    assert normalize_path("/a//../b") == _envoy_normalize("/a//../b") == "/a/b"


@pytest.mark.parametrize(
    "raw",
    [
        "/" + "%2e%2e%2f" * 1140,  # 10 KiB of escaped climbing
        "/" + "a/" * 5000,
        "/" + "%" * 10_000,
        "/" + "\\." * 5000,
        "/" + "%41" * 3400,
    ],
    ids=["climb", "segments", "percent", "backslash-dot", "escapes"],
)
def test_ten_kib_paths_take_linear_time(raw: str) -> None:
    """A 10 KiB path normalizes (or is refused) in well under 50 ms: measured ~1-3 ms; anything
    quadratic in the length would take seconds."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        with contextlib.suppress(PathError):
            normalize_path(raw)
        best = min(best, time.perf_counter() - started)
    assert best < 0.05, f"{best * 1000:.1f} ms"
