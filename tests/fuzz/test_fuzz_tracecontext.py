"""Fuzzing the W3C trace-context parsers (``meshlib.telemetry.tracecontext``): valid headers
built from the grammar round-trip; any mutation of one is refused (None) or parsed to a value
that formats validly again; nothing raises; 10 KiB inputs take linear time."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshlib.telemetry.tracecontext import (
    TraceParent,
    format_tracestate,
    parse_baggage,
    parse_traceparent,
    parse_tracestate,
)

# --- the grammars, as strategies ------------------------------------------------------------------
_HEX = "0123456789abcdef"
_TRACEPARENT_OUT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-0[0-3]")

traceparents = st.builds(
    lambda trace, parent, flags: f"00-{trace:032x}-{parent:016x}-{flags:02x}",
    st.integers(1, (1 << 128) - 1),
    st.integers(1, (1 << 64) - 1),
    st.integers(0, 255),
)
_KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/@"
_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
tracestate_keys = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"),
    st.text(_KEY_CHARS, max_size=20),
)
tracestate_values = st.builds(
    lambda body, last: body + last, st.text(_VALUE_CHARS, max_size=30), st.sampled_from(_VALUE_CHARS[1:])
)
tracestates = st.lists(st.tuples(tracestate_keys, tracestate_values), max_size=32, unique_by=lambda kv: kv[0])
_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_OCTETS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\%')
baggage_tokens = st.text(_TCHAR, min_size=1, max_size=12)
baggage_values = st.lists(
    st.text(_OCTETS, min_size=1, max_size=6) | st.builds(lambda h: f"%{h:02X}", st.integers(0, 255)),
    max_size=4,
).map("".join)
_OWS = st.sampled_from(["", " ", "\t", "  "])
baggage_members = st.builds(
    lambda key, value, props, ows: f"{key}{ows}={ows}{value}" + "".join(f"{ows};{ows}{p}" for p in props),
    baggage_tokens,
    baggage_values,
    st.lists(baggage_tokens | st.builds(lambda k, v: f"{k}={v}", baggage_tokens, baggage_values), max_size=3),
    _OWS,
)
baggages = st.lists(baggage_members, min_size=1, max_size=20).map(",".join)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    """A valid header with a few characters replaced, inserted or deleted."""
    text = draw(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        change = draw(st.sampled_from(["replace", "insert", "delete"]))
        char = draw(st.characters(codec="utf-8") | st.sampled_from(list("-=,; \t%0fF\x00\r\n")))
        if change == "insert":
            text = text[:at] + char + text[at:]
        elif change == "replace" and at < len(text):
            text = text[:at] + char + text[at + 1 :]
        elif change == "delete" and at < len(text):
            text = text[:at] + text[at + 1 :]
    return text


_ANY = st.text(max_size=600) | st.text(st.characters(codec="ascii"), max_size=600)


# --- traceparent ----------------------------------------------------------------------------------
@given(traceparents, _OWS, _OWS)
def test_valid_traceparent_round_trips(header: str, before: str, after: str) -> None:
    parsed = parse_traceparent(before + header + after)
    assert parsed is not None, header
    assert parsed.header() == header[:53] + f"{int(header[53:], 16) & 0x03:02x}"
    known = TraceParent(parsed.trace_id, parsed.parent_id, parsed.flags & 3)
    assert parse_traceparent(parsed.header()) == known


def _check_traceparent(raw: str) -> None:
    parsed = parse_traceparent(raw)
    if parsed is None:
        return
    out = parsed.header()
    assert _TRACEPARENT_OUT.fullmatch(out), (raw, out)
    assert parse_traceparent(out) is not None, (raw, out)
    # What was parsed is in the input: ids are never invented.
    assert f"{parsed.trace_id:032x}-{parsed.parent_id:016x}" in raw, (raw, out)


@given(mutated(traceparents) | _ANY)
@example("00-" + "0" * 32 + "-" + "1" * 16 + "-01")
@example("ff-" + "a" * 32 + "-" + "b" * 16 + "-01")
@example("01-" + "a" * 32 + "-" + "b" * 16 + "-01-extra")
@example("00-" + "a" * 32 + "-" + "b" * 16 + "-01,00-" + "c" * 32 + "-" + "d" * 16 + "-01")
def test_mutated_traceparent_is_refused_or_reformats_validly(raw: str) -> None:
    _check_traceparent(raw)


# --- tracestate -----------------------------------------------------------------------------------
_TRACESTATE_OUT = re.compile(
    r"(?:[a-z0-9][a-z0-9_\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
    r"(?:,[a-z0-9][a-z0-9_\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])*"
)


@given(tracestates, _OWS)
def test_valid_tracestate_round_trips(members: list[tuple[str, str]], ows: str) -> None:
    header = f"{ows},{ows}".join(f"{k}={v}" for k, v in members)
    parsed = parse_tracestate(header)
    assert parsed is not None, header
    assert list(parsed) == members  # OWS around members goes, a value's own spaces stay
    formatted = format_tracestate(parsed)
    assert len(formatted) <= 512
    again = parse_tracestate(formatted)
    assert again is not None
    assert set(again) <= set(parsed)
    if len(",".join(f"{k}={v}" for k, v in members)) <= 512:
        assert list(again) == members


@given(mutated(tracestates.map(lambda m: ",".join(f"{k}={v}" for k, v in m))) | _ANY)
@example("a=1," * 33)
@example("a=1,a=2")
@example("k=" + "v" * 300)
def test_mutated_tracestate_is_refused_or_reformats_validly(raw: str) -> None:
    parsed = parse_tracestate(raw)
    if parsed is None:
        return
    assert len(parsed) <= 32
    assert len({k for k, _ in parsed}) == len(parsed)
    formatted = format_tracestate(parsed)
    assert len(formatted) <= 512
    if formatted:
        assert _TRACESTATE_OUT.fullmatch(formatted), (raw, formatted)
    again = parse_tracestate(formatted)
    assert again is not None, (raw, formatted)
    assert set(again) <= set(parsed), (raw, formatted)


# --- baggage --------------------------------------------------------------------------------------
_BAGGAGE_OUT = re.compile(
    r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+=(?:[\x21\x23\x24\x26-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]|%[0-9A-Fa-f]{2})*"
    r"(?:;[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:=(?:[\x21\x23\x24\x26-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]|%[0-9A-Fa-f]{2})*)?)*"
)


def _check_baggage(raw: str) -> str | None:
    out = parse_baggage(raw)
    if out is None:
        return None
    assert len(out) <= 8192, raw
    members = out.split(",")
    assert len(members) <= 180, raw
    for member in members:
        assert _BAGGAGE_OUT.fullmatch(member), (raw, member)
    assert parse_baggage(out) == out, raw  # normalised output is a fixed point
    return out


@given(baggages)
def test_valid_baggage_round_trips(header: str) -> None:
    out = _check_baggage(header)
    assert out == header.replace(" ", "").replace("\t", ""), header


@given(mutated(baggages) | _ANY)
@example("k=%zz")
@example("k=v;;p")
@example(",".join(["k=v"] * 181))
@example("k=" + "v" * 8200)
@example("k=v," + " " * 5000 + "x")
def test_mutated_baggage_is_refused_or_reformats_validly(raw: str) -> None:
    _check_baggage(raw)


# --- bounded time -----------------------------------------------------------------------------------
_BIG = 10 * 1024
_HUGE_INPUTS = {
    "traceparent-dashes": (parse_traceparent, "00-" + "-" * _BIG),
    "traceparent-hex": (parse_traceparent, "0" * _BIG),
    "tracestate-members": (parse_tracestate, ",".join(["a=b"] * (_BIG // 4))),
    "tracestate-one-key": (parse_tracestate, "a" * _BIG + "=b"),
    "tracestate-spaces": (parse_tracestate, "a=" + " " * _BIG),
    "baggage-whitespace": (parse_baggage, "k" + " \t" * (_BIG // 2) + "x"),
    "baggage-properties": (parse_baggage, "k=v" + ";p" * (_BIG // 2) + ";"),
    "baggage-escapes": (parse_baggage, "k=" + "%4" * (_BIG // 2)),
    "baggage-ows-semicolons": (parse_baggage, "k=v" + " ; " * (_BIG // 3) + "="),
}


@pytest.mark.parametrize("name", sorted(_HUGE_INPUTS))
def test_ten_kib_headers_take_linear_time(name: str) -> None:
    """Each parser answers a 10 KiB adversarial header in well under 50 ms (measured well under
    1 ms); a backtracking regex would take seconds or never end."""
    parse, raw = _HUGE_INPUTS[name]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        parse(raw)
        best = min(best, time.perf_counter() - started)
    assert best < 0.05, f"{name}: {best * 1000:.1f} ms"
