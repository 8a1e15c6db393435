"""W3C Trace Context Level 2 (``traceparent``, ``tracestate``) and W3C Baggage headers: strict
parsing and formatting for the per-request hot path.

Stricter than OpenTelemetry's stock propagator: a comma-joined (duplicated) ``traceparent`` is
refused, a ``tracestate`` with any invalid member or more than 32 members is discarded whole,
``baggage`` is checked against its ABNF (percent-encoding included) and limits.

Spec texts followed: Trace Context Level 2 (https://www.w3.org/TR/trace-context-2/, the
``level-2`` branch of w3c/trace-context, CRD of 2024-03-28) and its test suite
(``test/test.py``); W3C Baggage (https://www.w3.org/TR/baggage/).

Cost: a valid version-00 ``traceparent`` is one precompiled ``fullmatch``, three ``int()``
and the result; anything else (surrounding whitespace, other versions, invalid values) takes
the slower path. Nothing here logs or raises on bad input: it returns ``None``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TraceParent",
    "format_tracestate",
    "new_traceparent",
    "new_traceparent_header",
    "parse_baggage",
    "parse_traceparent",
    "parse_tracestate",
]

_SAMPLED = 0x01
_RANDOM = 0x02
# What a version-00 sender may set: "The behavior of other flags ... is reserved for future use.
# Vendors MUST set those to zero."
_KNOWN_FLAGS = _SAMPLED | _RANDOM
_SAMPLED_RANDOM = f"{_SAMPLED | _RANDOM:02x}"
_UNSAMPLED_RANDOM = f"{_RANDOM:02x}"
_MAX_PARENT_ID = (1 << 64) - 1

# OWS as RFC 9110 section 5.6.3 defines it: SP / HTAB.
_OWS = " \t"

# --- traceparent -----------------------------------------------------------------------------
# HEXDIGLC only: "[0-9a-f]" spelled out, never \d (which would take other Unicode digits).
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# The first 55 characters of any version (matched at the start, so longer values get here too).
_TRACEPARENT_ANY = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_LEN = 55

# --- tracestate ------------------------------------------------------------------------------
# Level 2 grammar:
#   key      = ( lcalpha / DIGIT ) 0*255 ( keychar )
#   keychar  = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
#   value    = 0*255(chr) nblk-chr
#   nblk-chr = %x21-2B / %x2D-3C / %x3E-7E
#   chr      = %x20 / nblk-chr
_TRACESTATE_MEMBER = re.compile(
    r"([a-z0-9][a-z0-9_\-*/@]{0,255})=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
_TRACESTATE_MAX_MEMBERS = 32
# "Vendors SHOULD propagate at least 512 characters of a combined header": we send exactly that.
_TRACESTATE_MAX_LEN = 512
# "Entries larger than 128 characters long SHOULD be removed first."
_TRACESTATE_LONG_ENTRY = 128

# --- baggage ---------------------------------------------------------------------------------
#   list-member   = key OWS "=" OWS value *( OWS ";" OWS property )
#   property      = key OWS "=" OWS value / key OWS
#   key           = token (RFC 9110 5.6.2: 1*tchar)
#   value         = *baggage-octet, where "%" only starts a percent-encoded octet (RFC 3986 2.1)
#   baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
# Possessive quantifiers (Python 3.11): tokens hold no whitespace, "=" or ";", values no whitespace
# or ";", so no piece ever needs to give back what it took, and a failing match stays linear
# instead of backtracking through runs of whitespace.
_BAGGAGE_KEY = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_BAGGAGE_VALUE = r"(?:[\x21\x23\x24\x26-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]|%[0-9A-Fa-f]{2})*+"
_BAGGAGE_MEMBER = re.compile(
    rf"[ \t]*+{_BAGGAGE_KEY}[ \t]*+=[ \t]*+{_BAGGAGE_VALUE}"
    rf"(?:[ \t]*+;[ \t]*+{_BAGGAGE_KEY}(?:[ \t]*+=[ \t]*+{_BAGGAGE_VALUE})?+)*+[ \t]*+"
)
# Baggage limits followed:
# - 180 list-members: the ABNF's own bound, ``baggage-string = list-member 0*179( OWS "," OWS
#   list-member )``; more is not a baggage-string, so the header is dropped.
# - 8192 bytes: the Limits section's size ("The resulting baggage-string is of size 8192 bytes or
#   less"), applied to the normalised result we would send. Above it the header is dropped whole,
#   which the spec allows ("a platform MAY drop list-members until both conditions are met", and
#   "MUST NOT propagate any partial list-members").
# - The Limits section's 64 members is a minimum to propagate, not a maximum: we keep up to 180.
_BAGGAGE_MAX_MEMBERS = 180
_BAGGAGE_MAX_BYTES = 8192


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A parsed ``traceparent``: ids as integers, ``flags`` the 8 bits as received."""

    trace_id: int  # 128-bit, non-zero
    parent_id: int  # 64-bit, non-zero
    flags: int  # 8 bits

    @property
    def sampled(self) -> bool:
        """The ``sampled`` flag (bit 0)."""
        return bool(self.flags & _SAMPLED)

    @property
    def random(self) -> bool:
        """Level 2's ``random-trace-id`` flag (bit 1): the right-most 7 bytes of the trace id are random."""
        return bool(self.flags & _RANDOM)

    def header(self) -> str:
        """The value to send: version 00, with only the flags a version-00 sender may set."""
        return f"00-{self.trace_id:032x}-{self.parent_id:016x}-{self.flags & _KNOWN_FLAGS:02x}"

    def child(self, parent_id: int, sampled: bool) -> TraceParent:
        """The same trace under a new parent id, ``sampled`` as decided, the random flag kept.

        Level 2: "If the flag is set in the incoming traceparent header, it MUST also be set in all
        outgoing traceparent headers which use the same trace-id" (and unset likewise). Unknown
        flag bits are not carried into the child.
        """
        if not 0 < parent_id <= _MAX_PARENT_ID:
            raise ValueError(f"parent_id must be a non-zero 64-bit integer, got {parent_id!r}")
        return TraceParent(self.trace_id, parent_id, (self.flags & _RANDOM) | (_SAMPLED if sampled else 0))


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The ``traceparent`` in ``value`` (the header as the HTTP layer gives it, several occurrences
    joined with ","), or ``None`` when it is absent or invalid.

    Version 00 must be exactly 55 characters of lowercase hex and dashes, with non-zero ids;
    version ff is invalid; a higher version is read as 00 in its first 55 characters, which must
    end the value or be followed by "-" (the fields after it are ignored). Spaces and tabs around
    the value are removed first (RFC 9110 5.5); any inside it make it invalid.
    """
    if value is None:
        return None
    match = _TRACEPARENT_00.fullmatch(value)
    if match is None:
        return _parse_traceparent_other(value)
    trace_id = int(match[1], 16)
    parent_id = int(match[2], 16)
    if trace_id == 0 or parent_id == 0:
        return None
    return TraceParent(trace_id, parent_id, int(match[3], 16))


def _parse_traceparent_other(value: str) -> TraceParent | None:
    value = value.strip(_OWS)
    # A comma means the header came more than once (RFC 9110 5.3 joins occurrences with ","):
    # traceparent is a single value, so which one to follow is unknowable.
    if len(value) < _TRACEPARENT_LEN or "," in value:
        return None
    match = _TRACEPARENT_ANY.match(value)
    if match is None:
        return None
    version = match[1]
    if version == "ff":
        return None
    if version == "00":
        if len(value) != _TRACEPARENT_LEN:
            return None
    elif len(value) > _TRACEPARENT_LEN and value[_TRACEPARENT_LEN] != "-":
        return None
    trace_id = int(match[2], 16)
    parent_id = int(match[3], 16)
    if trace_id == 0 or parent_id == 0:
        return None
    return TraceParent(trace_id, parent_id, int(match[4], 16))


def _new_ids(rng: random.Random) -> tuple[int, int]:
    """A random non-zero 128-bit trace id and 64-bit parent id from ``rng``."""
    trace_id = rng.getrandbits(128)
    while trace_id == 0:
        trace_id = rng.getrandbits(128)
    parent_id = rng.getrandbits(64)
    while parent_id == 0:
        parent_id = rng.getrandbits(64)
    return trace_id, parent_id


def new_traceparent(rng: random.Random, sampled: bool) -> TraceParent:
    """A new trace: random non-zero ids from ``rng``, the random-trace-id flag set (all 128 bits of
    the trace id are random, more than the 7 right-most bytes the flag promises)."""
    trace_id, parent_id = _new_ids(rng)
    return TraceParent(trace_id, parent_id, _RANDOM | (_SAMPLED if sampled else 0))


def new_traceparent_header(rng: random.Random, sampled: bool) -> str:
    """``new_traceparent(rng, sampled).header()`` without the object: what an outbound request
    made outside any trace sends (every unsampled one; ~4 µs saved per request in place)."""
    trace_id, parent_id = _new_ids(rng)
    return f"00-{trace_id:032x}-{parent_id:016x}-{_SAMPLED_RANDOM if sampled else _UNSAMPLED_RANDOM}"


def parse_tracestate(value: str | None) -> tuple[tuple[str, str], ...] | None:
    """The ``tracestate`` list-members in ``value`` as (key, value) pairs in received order;
    ``None`` when absent or invalid, ``()`` when valid but empty.

    Spaces and tabs around members are removed and empty members ignored. The whole header is
    discarded when a member is invalid or there are more than 32 (non-empty) members. A repeated
    key keeps its first (left-most, most recent) entry and later ones are dropped, as the spec
    allows ("vendors MAY also discard duplicate keys") and its test suite expects.

    Per the spec, call this only when ``traceparent`` parsed.
    """
    if value is None:
        return None
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    received = 0
    fullmatch = _TRACESTATE_MEMBER.fullmatch
    for part in value.split(","):
        part = part.strip(_OWS)
        if not part:
            continue
        received += 1
        if received > _TRACESTATE_MAX_MEMBERS:
            return None
        match = fullmatch(part)
        if match is None:
            return None
        key = match[1]
        if key not in seen:
            seen.add(key)
            members.append((key, match[2]))
    return tuple(members)


def format_tracestate(members: Sequence[tuple[str, str]]) -> str:
    """``members`` (valid keys and values, e.g. from :func:`parse_tracestate`) as a header value,
    truncated to 512 characters by the spec's rule: entries longer than 128 characters go first
    (from the right), then entries from the right, whole entries only."""
    entries = [f"{key}={value}" for key, value in members]
    header = ",".join(entries)
    if len(header) <= _TRACESTATE_MAX_LEN:
        return header
    count = len(entries)
    chars = len(header) - (count - 1)  # without the commas
    kept: list[str | None] = list(entries)
    for index in range(count - 1, -1, -1):
        entry = entries[index]
        if len(entry) > _TRACESTATE_LONG_ENTRY:
            kept[index] = None
            count -= 1
            chars -= len(entry)
            if chars + count - 1 <= _TRACESTATE_MAX_LEN:
                break
    remaining = [entry for entry in kept if entry is not None]
    while remaining and chars + len(remaining) - 1 > _TRACESTATE_MAX_LEN:
        chars -= len(remaining.pop())
    return ",".join(remaining)


def parse_baggage(value: str | None) -> str | None:
    """The ``baggage`` header to pass on, normalised (whitespace removed, members joined with ","),
    or ``None`` when absent, empty, invalid, or over the limits (more than 180 list-members, more
    than 8192 bytes).

    Empty members (as a sender's empty header leaves after joining) are ignored, as RFC 9110
    5.6.1.2 asks of recipients of merged list values. Values are not decoded.
    """
    if value is None:
        return None
    members: list[str] = []
    fullmatch = _BAGGAGE_MEMBER.fullmatch
    for part in value.split(","):
        if fullmatch(part) is None:
            if part.strip(_OWS):
                return None
            continue
        if len(members) == _BAGGAGE_MAX_MEMBERS:
            return None
        # Tokens and values hold no whitespace, so what is left of it is OWS.
        if " " in part or "\t" in part:
            part = part.replace(" ", "").replace("\t", "")
        members.append(part)
    if not members:
        return None
    header = ",".join(members)
    # Valid baggage is ASCII: characters are bytes.
    if len(header) > _BAGGAGE_MAX_BYTES:
        return None
    return header
