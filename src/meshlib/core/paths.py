"""One normalized request path: what authorization matches and what the application sees.

Istio leaves path normalization to a mesh option and its CVEs came from the gaps between
what the proxy matched and what the application served (CVE-2019-9901 dot segments,
CVE-2021-31920 escaped slashes, CVE-2021-39156 fragments, CVE-2020-8595 exact paths with a
query). meshlib normalizes every inbound HTTP path once, the strictest way Envoy can
(``DECODE_AND_MERGE_SLASHES``), and hands the application the same path it matched:

- the fragment is dropped; the query is kept apart and never matched as part of the path;
- a backslash, ``%2F`` and ``%5C`` are path separators;
- percent-escapes of unreserved characters (RFC 3986: letters, digits, ``-._~``) are decoded,
  every other escape is kept with upper-case hex digits (``%3f`` → ``%3F``);
- runs of slashes are merged, ``.`` and ``..`` segments resolved (never above the root);
- a NUL or other control character (raw or escaped as ``%00``–``%1F``, ``%7F``) or a broken
  escape (``%4``, ``%zz``) is refused: the request gets 400 before any policy runs.

Normalizing is idempotent: a normalized path normalizes to itself.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["PathError", "normalize_path", "requote", "split_target"]

_HEX = "0123456789abcdefABCDEF"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SEPARATORS = frozenset("/\\")
_SIMPLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~:@!$&'()*+,;=/")


_KEPT_BY_QUOTE = "/!$&'()*+,;=:@~-._"  # the path characters RFC 3986 lets stand unescaped


def requote(decoded: str | bytes) -> str:
    """A path a server handed over already percent-decoded (ASGI ``path`` without
    ``raw_path``, WSGI ``PATH_INFO``), escaped back into a request target to normalize."""
    return quote(decoded, safe=_KEPT_BY_QUOTE)


class PathError(ValueError):
    """A request path that cannot be served: the reason, for a 400."""


def split_target(target: str) -> tuple[str, str]:
    """A request target's path and query (the fragment, which no client should send, dropped)."""
    target = target.partition("#")[0]
    path, _, query = target.partition("?")
    return path, query


def normalize_path(path: str) -> str:
    """The normalized form of a request path (no query, no fragment), or PathError."""
    if path == "*":
        return path  # OPTIONS * : the server itself, not a path
    if not path.startswith(("/", "\\")) and not path.lower().startswith(("%2f", "%5c")):
        raise PathError(f"the path {path[:80]!r} does not start with '/'")
    if _SIMPLE.issuperset(path) and "//" not in path and "/." not in path:
        return path  # the common case: nothing to decode, merge or resolve
    return _resolve(_decode(path))


def _decode(path: str) -> str:
    out: list[str] = []
    i, size = 0, len(path)
    while i < size:
        char = path[i]
        if char == "%":
            pair = path[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise PathError(f"broken percent-encoding at {path[i : i + 3]!r}")
            code = int(pair, 16)
            decoded = chr(code)
            if code < 0x20 or code == 0x7F:
                raise PathError(f"the path carries a control character (%{pair.upper()})")
            if decoded in _UNRESERVED:
                out.append(decoded)
            elif decoded in _SEPARATORS:
                out.append("/")
            else:
                out.append("%" + pair.upper())
            i += 3
            continue
        if char < " " or char == "\x7f":
            raise PathError(f"the path carries a control character ({char!r})")
        if char > "\x7f":  # a raw byte (the target read as latin-1): escaped, as a client should have
            out.append(f"%{ord(char):02X}" if char <= "\xff" else char)
        else:
            out.append("/" if char == "\\" else char)
        i += 1
    return "".join(out)


def _resolve(path: str) -> str:
    """Merge slashes and resolve dot segments (RFC 3986 section 5.2.4, never above the root)."""
    segments: list[str] = []
    parts = path.split("/")
    last = len(parts) - 1
    trailing = False
    for index, part in enumerate(parts):
        if part == "" or part == ".":
            trailing = index == last
            continue
        if part == "..":
            if segments:
                segments.pop()
            trailing = index == last
            continue
        segments.append(part)
        trailing = False
    if parts[-1] == "" and segments:
        trailing = True
    body = "/".join(segments)
    if not body:
        return "/"
    return "/" + body + ("/" if trailing else "")
