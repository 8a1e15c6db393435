"""The background DNS refresher: answers kept fresh off the request path, failures survived."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from meshlib.dns_refresh import DNS_REFRESH_RATE, DnsRefresher, system_lookup


def test_the_default_refresh_is_envoys_dns_refresh_rate() -> None:
    assert DNS_REFRESH_RATE == 5.0


async def test_the_system_lookup_resolves_localhost_and_refuses_a_name_that_does_not_exist() -> None:
    assert "127.0.0.1" in await system_lookup("localhost")
    with pytest.raises(LookupError):
        await system_lookup("no-such-name.invalid")


async def test_answers_follow_changes_survive_failures_and_drop_unwanted_names() -> None:
    answers: dict[str, object] = {"a.test": ("192.0.2.1",), "b.test": ("192.0.2.2",)}
    published: list[Mapping[str, tuple[str, ...]]] = []

    async def lookup(name: str) -> tuple[str, ...]:
        found = answers[name]
        if isinstance(found, Exception):
            raise found
        assert isinstance(found, tuple)
        return found

    refresher = DnsRefresher(published.append, lookup, refresh=0.01, failure_base=0.01, failure_max=0.01)
    loop = asyncio.get_running_loop()

    async def settle(condition: object) -> None:
        for _ in range(300):
            if callable(condition) and condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the refresher did not get there")

    refresher.want({"a.test", "b.test"}, loop)
    await settle(lambda: dict(refresher.current[1]) == {"a.test": ("192.0.2.1",), "b.test": ("192.0.2.2",)})
    generation = refresher.current[0]
    answers["a.test"] = OSError("timed out")  # a failed lookup keeps the last answer
    await asyncio.sleep(0.1)
    assert refresher.current[1]["a.test"] == ("192.0.2.1",)
    assert refresher.current[0] == generation
    answers["a.test"] = LookupError("NXDOMAIN")  # a name that no longer exists: no addresses
    await settle(lambda: refresher.current[1]["a.test"] == ())
    answers["b.test"] = ("192.0.2.3", "192.0.2.4")
    await settle(lambda: refresher.current[1]["b.test"] == ("192.0.2.3", "192.0.2.4"))
    refresher.want({"b.test"}, loop)
    await settle(lambda: "a.test" not in refresher.current[1])
    assert published[-1] is refresher.current[1]
    for task in list(refresher._tasks.values()):
        task.cancel()
