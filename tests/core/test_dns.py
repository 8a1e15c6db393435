"""When DNS answers are asked for again, and what SRV records become (pure: no network)."""

from __future__ import annotations

import asyncio
import random

import pytest

from meshlib.core.dns import (
    FAILURE_BASE,
    FAILURE_MAX,
    TTL_CEILING,
    TTL_FLOOR,
    DnsAnswer,
    FailureBackoff,
    NoRecords,
    SrvRecord,
    refresh_delay,
    srv_targets,
)
from meshlib.dns_refresh import DNS_REFRESH_RATE, DnsRefresher


@pytest.mark.parametrize(
    ("ttl", "delay"),
    [
        (None, DNS_REFRESH_RATE),  # no TTL (the system resolver): Envoy's dns_refresh_rate
        (0.0, TTL_FLOOR),  # a TTL of 0 does not spin
        (0.4, TTL_FLOOR),
        (7.0, 7.0),  # respect_dns_ttl: asked again when the TTL runs out
        (86400.0, TTL_CEILING),  # a day-long TTL is still checked every 5 minutes
    ],
)
def test_an_answer_is_asked_for_again_when_its_ttl_runs_out_within_floor_and_ceiling(
    ttl: float | None, delay: float
) -> None:
    assert refresh_delay(ttl, DNS_REFRESH_RATE) == delay
    assert (TTL_FLOOR, TTL_CEILING) == (1.0, 300.0)


def test_failures_back_off_doubling_with_jitter_up_to_the_ceiling_and_reset_on_success() -> None:
    backoff = FailureBackoff(rng=random.Random(7))
    delays = [backoff.failed() for _ in range(9)]
    for attempt, delay in enumerate(delays):
        interval = min(FAILURE_BASE * 2**attempt, FAILURE_MAX)
        assert interval / 2 <= delay <= interval
    assert max(delays[-3:]) <= FAILURE_MAX
    for _ in range(2000):  # a long outage stays at the ceiling (no overflow)
        assert FAILURE_MAX / 2 <= backoff.failed() <= FAILURE_MAX
    backoff.succeeded()
    assert FAILURE_BASE / 2 <= backoff.failed() <= FAILURE_BASE


def test_srv_records_by_priority_with_weights_of_at_least_one_and_no_dot_targets() -> None:
    levels = srv_targets(
        [
            SrvRecord(10, 5, 8003, "c.example"),
            SrvRecord(0, 0, 8001, "a.example"),
            SrvRecord(0, 3, 8002, "b.example"),
            SrvRecord(0, 1, 80, "."),  # RFC 2782: "." means the service is not offered there
        ]
    )
    assert levels == [
        [SrvRecord(0, 1, 8001, "a.example"), SrvRecord(0, 3, 8002, "b.example")],
        [SrvRecord(10, 5, 8003, "c.example")],
    ]
    assert srv_targets([SrvRecord(0, 0, 0, ".")]) == []


async def test_the_refresher_sleeps_for_each_answers_ttl_and_backs_off_on_failures() -> None:
    """The refresher's waits, recorded through an injected sleep: no real time passes."""
    script: list[object] = [
        DnsAnswer(("192.0.2.1",), ttl=0.0),
        DnsAnswer(("192.0.2.1",), ttl=30.0),
        OSError("SERVFAIL"),
        OSError("timed out"),
        DnsAnswer(("192.0.2.2",), ttl=86400.0),
        ("192.0.2.3",),  # a plain tuple: addresses without a TTL
        NoRecords("NXDOMAIN", ttl=2.0),
        NoRecords("NODATA"),  # no SOA: no negative TTL
    ]
    delays: list[float] = []
    published: list[dict[str, object]] = []
    done = asyncio.Event()

    async def lookup(name: str) -> DnsAnswer | tuple[str, ...]:
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, DnsAnswer | tuple)
        return step

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if not script:
            done.set()
            await asyncio.Event().wait()  # parked until cancelled

    refresher = DnsRefresher(lambda answers: published.append(dict(answers)), lookup, sleep=sleep)
    refresher.want({"api.test"}, asyncio.get_running_loop())
    await asyncio.wait_for(done.wait(), 5)
    assert delays[:2] == [TTL_FLOOR, 30.0]
    assert FAILURE_BASE / 2 <= delays[2] <= FAILURE_BASE
    assert FAILURE_BASE <= delays[3] <= 2 * FAILURE_BASE
    assert delays[4:] == [TTL_CEILING, DNS_REFRESH_RATE, 2.0, DNS_REFRESH_RATE]
    # Failures kept the last answer: only real changes were published.
    assert [p["api.test"] for p in published] == [
        ("192.0.2.1",),
        ("192.0.2.2",),
        ("192.0.2.3",),
        (),
    ]
    for task in list(refresher._tasks.values()):
        task.cancel()
