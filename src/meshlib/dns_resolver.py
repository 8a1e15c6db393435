"""DNS lookups with TTLs on dnspython (``pip install 'meshlib[dns]'``), for the DNS refresher.

- A and AAAA: both asked at once, every address kept (Envoy's lookup family ALL), with the
  smallest TTL of the answer (CNAMEs included).
- SRV, for names ``_service._tcp.name`` (RFC 2782): the lowest priority whose targets
  resolve, every address of every target an endpoint on the record's port with the record's
  weight; target addresses come from the answer's additional section when the server sent
  them, else from A/AAAA lookups of the targets. The TTL is the smallest of all of those.
- NXDOMAIN or no records: ``NoRecords`` (no endpoints), kept for the negative TTL of the
  zone's SOA (RFC 2308) when the server sent one.
- a timeout, SERVFAIL or REFUSED from every server: ``OSError`` (the last answer stays).

``MESH_DNS_SERVERS`` set: every name is asked of those servers (names are absolute: no
search list). Unset: A/AAAA go to the system resolver, as the application's own connections
do (/etc/hosts, nsswitch, search domains; no TTL), and SRV to dnspython configured from
/etc/resolv.conf (with its search list and ndots). dnspython is imported only when needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .core.dns import DnsAnswer, NoRecords, SrvRecord, SrvTarget, srv_targets
from .dns_refresh import system_lookup
from .names import is_srv_name
from .policy.srv_endpoints import DNS_EXTRA

if TYPE_CHECKING:
    import dns.message

__all__ = ["DNS_EXTRA", "DefaultLookup", "DnsResolver"]

_LIFETIME = 3.0  # seconds a lookup may take over every server and retry before it fails


class DnsResolver:
    """A/AAAA and SRV lookups with TTLs, towards ``servers`` ((ip, port) pairs) or, without
    any, the servers and search list of /etc/resolv.conf. Raises ``ImportError`` (with how
    to install it) when dnspython is missing."""

    def __init__(self, servers: Sequence[tuple[str, int]] = ()) -> None:
        try:
            import dns.asyncresolver
            import dns.nameserver
            import dns.resolver
        except ImportError:
            raise ImportError(DNS_EXTRA) from None
        try:
            resolver = dns.asyncresolver.Resolver(configure=not servers)
        except dns.resolver.NoResolverConfiguration as exc:
            raise OSError(f"no DNS servers in /etc/resolv.conf ({exc}); set MESH_DNS_SERVERS") from None
        if servers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
        resolver.lifetime = _LIFETIME
        resolver.cache = None  # answers are kept by the refresher, for their TTL
        self._resolver = resolver
        self._search = not servers  # resolv.conf's search list and ndots, as the system applies them

    async def __call__(self, name: str) -> DnsAnswer:
        if is_srv_name(name):
            return await self._srv(name)
        addresses, ttl = await self._addresses(name, self._search)
        return DnsAnswer(addresses, ttl)

    async def _addresses(self, name: str, search: bool) -> tuple[tuple[str, ...], float]:
        """Every A and AAAA address (A first, each family sorted so a server's rotation of
        its records is not a change), and the smallest TTL."""
        found = await asyncio.gather(
            self._query(name, "A", search), self._query(name, "AAAA", search), return_exceptions=True
        )
        for result in found:
            if isinstance(result, BaseException) and not isinstance(result, NoRecords):
                raise result  # a family failed: keep the whole last answer rather than half of it
        answers = [r for r in found if not isinstance(r, BaseException)]
        ttls = [r.ttl for r in found if isinstance(r, NoRecords) and r.ttl is not None]
        if not answers:
            misses = [r for r in found if isinstance(r, NoRecords)]
            raise NoRecords(str(misses[0]), min(ttls, default=None))
        addresses = [sorted(str(rdata.address) for rdata in answer) for answer in answers]
        ttl = min([*ttls, *(answer.chaining_result.minimum_ttl for answer in answers)])
        return tuple(a for family in addresses for a in family), float(ttl)

    async def _srv(self, name: str) -> DnsAnswer:
        answer = await self._query(name, "SRV", self._search)
        ttl = float(answer.chaining_result.minimum_ttl)
        records = [SrvRecord(r.priority, r.weight, r.port, _text(r.target)) for r in answer]
        additional = _additional_addresses(answer.response)
        for level in srv_targets(records):
            # Targets the server left out of the additional section are looked up, concurrently.
            missing = sorted({r.target for r in level if r.target not in additional})
            looked_up = await asyncio.gather(
                *(self._addresses(t + ".", False) for t in missing), return_exceptions=True
            )
            addresses = dict(additional)
            for target, result in zip(missing, looked_up, strict=True):
                if isinstance(result, NoRecords):
                    continue  # a target that does not resolve has no endpoints
                if isinstance(result, BaseException):
                    raise result
                addresses[target] = result
            found: set[SrvTarget] = set()
            for record in level:
                if record.target in addresses:
                    known, target_ttl = addresses[record.target]
                    found.update(SrvTarget(a, record.port, record.weight) for a in known)
                    ttl = min(ttl, target_ttl)
            if found:
                return DnsAnswer(tuple(sorted(found)), ttl)
        raise NoRecords(f"{name}: no SRV target resolves to an address", ttl)

    async def _query(self, name: str, rdtype: str, search: bool) -> Any:
        """One question's answer (dnspython's Answer), or NoRecords / OSError."""
        import dns.exception
        import dns.resolver

        try:
            answer = await self._resolver.resolve(name, rdtype, search=search, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values())  # type: ignore[no-untyped-call]
            raise NoRecords(
                f"{name}: no such name (NXDOMAIN)", _negative_ttl(responses[0]) if responses else None
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise OSError(f"{name} {rdtype}: no server answered ({exc})") from None
        except dns.exception.Timeout:
            raise OSError(f"{name} {rdtype}: timed out after {_LIFETIME:g} s") from None
        except dns.exception.DNSException as exc:
            raise OSError(f"{name} {rdtype}: {exc}") from None
        if answer.rrset is None:
            raise NoRecords(f"{name}: no {rdtype} records", _negative_ttl(answer.response))
        return answer


class DefaultLookup:
    """``MESH_DNS_SERVERS`` unset: A/AAAA by the system resolver, SRV by dnspython on
    /etc/resolv.conf (made at the first SRV name)."""

    def __init__(self) -> None:
        self._srv: DnsResolver | None = None

    async def __call__(self, name: str) -> DnsAnswer | tuple[str, ...]:
        if not is_srv_name(name):
            return await system_lookup(name)
        if self._srv is None:
            try:
                self._srv = DnsResolver()
            except ImportError as exc:
                raise NoRecords(f"{name}: SRV lookups need dnspython ({exc})") from None
        return await self._srv(name)


def _text(name: Any) -> str:
    """A name as written in answers: lower case, without the final dot ("." for the root)."""
    text = str(name.to_text(omit_final_dot=True)).lower()
    return text if text not in ("", "@") else "."


def _additional_addresses(response: dns.message.Message) -> dict[str, tuple[tuple[str, ...], float]]:
    """The A/AAAA records a server sent along with an SRV answer, by owner name."""
    out: dict[str, tuple[tuple[str, ...], float]] = {}
    for rrset in response.additional:
        if rrset.rdtype not in (1, 28):  # A, AAAA
            continue
        name = _text(rrset.name)
        known, ttl = out.get(name, ((), float(rrset.ttl)))
        found = tuple(sorted(str(r.address) for r in rrset))
        out[name] = (known + found if rrset.rdtype == 28 else found + known, min(ttl, float(rrset.ttl)))
    return out


def _negative_ttl(response: dns.message.Message) -> float | None:
    """How long a "no such name / no records" answer may be kept: the SOA's negative TTL
    (RFC 2308), or None when the server sent no SOA (then the refresh rate applies)."""
    if not any(rrset.rdtype == 6 for rrset in response.authority):  # SOA
        return None
    try:
        chaining = response.resolve_chaining()  # type: ignore[attr-defined]
    except Exception:
        return None
    return float(chaining.minimum_ttl)
