"""A real DNS server for tests: dnslib's DNSServer on 127.0.0.1 (UDP, a free port), serving
a zone the test edits while it runs (A, AAAA, SRV, SOA for negative answers)."""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SOA, SRV, A
from dnslib.server import DNSLogger, DNSServer

ZONE = "dns.test"
NEGATIVE_TTL = 1  # the SOA minimum: how long "no such name" may be kept


@dataclass
class Zone:
    """``records[(name, "A")] = [(rdata, ttl), ...]``; names without any record are NXDOMAIN.

    ``servfail``: every answer is SERVFAIL (a broken server); ``additional``: SRV answers carry
    their targets' A/AAAA records; ``queries`` counts the questions asked, per (name, type)."""

    records: dict[tuple[str, str], list[tuple[Any, int]]] = field(default_factory=dict)
    servfail: bool = False
    additional: bool = True
    queries: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, kind: str, *values: tuple[Any, int]) -> None:
        """Replace ``name``'s records of ``kind`` (none given: remove them)."""
        with self.lock:
            if values:
                self.records[(name, kind)] = list(values)
            else:
                self.records.pop((name, kind), None)

    def a(self, name: str, *addresses: str, ttl: int = 1) -> None:
        self.set(name, "A", *((A(address), ttl) for address in addresses))

    def aaaa(self, name: str, *addresses: str, ttl: int = 1) -> None:
        # As 16 bytes: dnslib's own parser does not read ::ffff:127.0.0.1.
        packed = (tuple(ipaddress.IPv6Address(address).packed) for address in addresses)
        self.set(name, "AAAA", *((AAAA(data), ttl) for data in packed))

    def srv(self, name: str, *targets: tuple[int, int, int, str], ttl: int = 1) -> None:
        """``targets``: (priority, weight, port, target name)."""
        self.set(name, "SRV", *((SRV(p, w, port, target + "."), ttl) for p, w, port, target in targets))

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        with self.lock:
            self.queries[(name, kind)] += 1
            if self.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            answers = list(self.records.get((name, kind), ()))
            exists = any(owner == name for owner, _ in self.records)
            extra = []
            if kind == "SRV" and self.additional:
                for rdata, _ in answers:
                    target = str(rdata.target).rstrip(".").lower()
                    for t in ("A", "AAAA"):
                        extra += [(target, t, r) for r in self.records.get((target, t), ())]
        for rdata, ttl in answers:
            reply.add_answer(RR(request.q.qname, QTYPE.reverse[kind], rdata=rdata, ttl=ttl))
        for target, t, (rdata, ttl) in extra:
            reply.add_ar(RR(target + ".", QTYPE.reverse[t], rdata=rdata, ttl=ttl))
        if not answers:
            if not exists:
                reply.header.rcode = RCODE.NXDOMAIN
            soa = SOA(f"ns.{ZONE}.", f"admin.{ZONE}.", (1, 60, 60, 600, NEGATIVE_TTL))
            reply.add_auth(RR(ZONE + ".", QTYPE.SOA, rdata=soa, ttl=NEGATIVE_TTL))
        return reply


@dataclass
class RunningDns:
    zone: Zone
    port: int
    server: DNSServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop answering (the socket closes: queries are refused, as by a server that died)."""
        self.server.stop()
        self.server.server.server_close()


@contextmanager
def dns_server(zone: Zone | None = None) -> Iterator[RunningDns]:
    """A DNS server on 127.0.0.1:<free port> (UDP) answering from ``zone``."""
    zone = zone or Zone()
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _: None))
    server.start_thread()
    running = RunningDns(zone, server.server.server_address[1], server)
    try:
        yield running
    finally:
        if server.thread.is_alive():
            running.stop()
        server.thread.join(10)
