"""Names as they enter meshlib, checked once at the door: service and namespace names
(DNS-1123 labels), hosts (DNS names, wildcards, IP literals), endpoint addresses, labels —
and any text from outside made safe to print on a terminal.

Pure and dependency-free: the policy models, the registry, the CA, the settings and the
command line all check names with these, so that one spelling means one thing everywhere
(``Reviews``, `` reviews``, ``reviews.`` and ``reviews:1`` are not names of ``reviews``:
they are refused, never normalised into it).
"""

from __future__ import annotations

import ipaddress
import re
import socket

__all__ = [
    "check_address",
    "check_dns_label",
    "check_host",
    "check_label_key",
    "check_label_value",
    "is_srv_name",
    "printable",
]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")  # Istio lets hosts be any case
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# RFC 2782 / RFC 6335: ``_service._proto.name``; the service label may hold letters, digits, '-'.
_SRV_PREFIX = re.compile(r"_[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?\._[A-Za-z0-9]+\.")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_dns_label(value: str, what: str = "name") -> str:
    """A Kubernetes-style name: lower-case letters, digits and '-', at most 63 characters."""
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: use lower-case letters, digits and '-' (at most 63, "
            "starting and ending with a letter or digit)"
        )
    return value


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    literal = value.removeprefix("[").removesuffix("]")
    # An IPv6 address has a ':', an IPv4 one only digits and dots: anything else (every host
    # name) is no IP, known without the two parse attempts and exceptions of ip_address.
    if ":" not in literal and not literal.replace(".", "").isdigit():
        return None
    try:
        return ipaddress.ip_address(literal)
    except ValueError:
        return None


def _dns_name(value: str) -> bool:
    """RFC 1123 labels separated by dots (a trailing dot allowed), at most 253 characters,
    and not an all-numeric last label (which would read as an IP address)."""
    name = value.removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if labels[-1].isdigit():
        return False
    return all(len(label) <= 63 and _HOST_LABEL.fullmatch(label) for label in labels)


def check_host(value: str, what: str = "host", *, wildcard: bool = True, ip: bool = True) -> str:
    """A host as Istio's resources write it: a DNS name (``reviews``, ``reviews.prod.svc``,
    ``api.example.com``), with ``wildcard`` also ``*`` or ``*.example.com`` (and ``*foo.com``,
    a wildcard first label, as Istio allows), with ``ip`` also an IP literal."""
    if wildcard and value == "*":
        return value
    if ip and _ip(value) is not None:
        return value
    name = value
    if wildcard and name.startswith("*"):
        first, dot, rest = name.partition(".")
        head = first[1:].removeprefix("-")
        if (head and not _HOST_LABEL.fullmatch(head)) or (dot and not _dns_name(rest)):
            name = "\x00"  # refused below
        else:
            return value
    if not _dns_name(name):
        allowed = "a DNS name (letters, digits and '-' in dot-separated labels)"
        if wildcard:
            allowed += ", optionally with a leading '*.'"
        if ip:
            allowed += ", or an IP address"
        raise ValueError(f"invalid {what} {value!r}: use {allowed}")
    return value


def is_srv_name(value: str) -> bool:
    """``_service._proto.name`` (RFC 2782): a name looked up as SRV records, not A/AAAA."""
    prefix = _SRV_PREFIX.match(value)
    return prefix is not None and _dns_name(value[prefix.end() :])


def check_address(value: str, what: str = "address", *, srv: bool = False) -> str:
    """Where an endpoint can be reached: an IP address or a DNS name, never a wildcard, the
    unspecified address (0.0.0.0, ::), a multicast or a broadcast address. With ``srv``
    also an SRV name, ``_service._tcp.name`` (whose records give the targets and ports)."""
    address = _ip(value)
    if srv and address is None and value.startswith("_"):
        if not is_srv_name(value):
            raise ValueError(
                f"invalid {what} {value!r}: an SRV name is _service._proto.name (RFC 2782), "
                "e.g. _http._tcp.example.com"
            )
        if value.split(".")[1].lower() != "_tcp":
            raise ValueError(f"invalid {what} {value!r}: mesh endpoints are reached over TCP: use _tcp")
        return value
    if address is None:
        if value.startswith("unix://"):
            raise ValueError(f"invalid {what} {value!r}: Unix domain socket endpoints are not supported")
        if _numeric(value):
            raise ValueError(
                f"invalid {what} {value!r}: a number the resolver reads as an IPv4 address; "
                "write the address as four dotted decimals"
            )
        return check_host(value, what, wildcard=False, ip=False)
    mapped = getattr(address, "ipv4_mapped", None)
    for ip in (address, mapped) if mapped is not None else (address,):
        if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
            raise ValueError(f"invalid {what} {value!r}: not an address a client can connect to")
    return value


def _numeric(value: str) -> bool:
    """``0x7f000001``, ``2130706433``, ``127.1``: names inet_aton takes for IPv4 addresses."""
    try:
        socket.inet_aton(value)
    except OSError:
        return False
    return True


def check_label_key(value: str) -> str:
    """A Kubernetes label key: an optional DNS subdomain prefix and '/', then a name of letters,
    digits, '-', '_' and '.' (at most 63)."""
    prefix, slash, name = value.rpartition("/")
    if (slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))) or not (
        len(name) <= 63 and _LABEL_NAME.fullmatch(name)
    ):
        raise ValueError(
            f"invalid label key {value!r}: an optional DNS prefix and '/', then letters, digits, "
            "'-', '_' and '.' (at most 63)"
        )
    return value


def check_label_value(value: str) -> str:
    """A Kubernetes label value: empty, or letters, digits, '-', '_' and '.' (at most 63)."""
    if value and not (len(value) <= 63 and _LABEL_NAME.fullmatch(value)):
        raise ValueError(f"invalid label value {value!r}: letters, digits, '-', '_' and '.' (at most 63)")
    return value


_LOCALITY_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def check_locality(value: str) -> str:
    """``region[/zone[/subzone]]``, each part a label value; "" means unknown."""
    if value and (value.count("/") > 2 or not all(_LOCALITY_PART.fullmatch(p) for p in value.split("/"))):
        raise ValueError(
            f"invalid locality {value!r}: region, region/zone or region/zone/subzone, each part "
            "letters, digits, '-', '_' and '.'"
        )
    return value


# C0 and C1 controls, DEL, and the Unicode bidirectional overrides and isolates (which can
# make a terminal show text in another order than it is: "Trojan Source").
_UNPRINTABLE = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    **{
        c: f"\\u{c:04x}"
        for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x2028, 0x2029)
    },
}


def printable(text: str) -> str:
    """``text`` with every control character escaped (``\\x1b``, ``\\u202e``), for terminals:
    names, reasons and messages that came from the network are shown, never obeyed."""
    return text.translate(_UNPRINTABLE)
