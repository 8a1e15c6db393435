"""Locality load balancing: priorities, Envoy's priority load, distribute, failoverPriority."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from meshlib.core.locality import Locality, lb_priority, locality_matches, plan_localities
from meshlib.core.snapshot import Endpoint
from meshlib.policy.destination_rule import LocalityLoadBalancerSetting

CALLER = Locality.parse("us-east/zone-a/rack-1")


def ep(address: str, locality: str, **labels: str) -> Endpoint:
    return Endpoint("svc", address, 80, labels=labels, locality=locality)


SAME = ep("10.0.0.1", "us-east/zone-a/rack-1")
ZONE = ep("10.0.0.2", "us-east/zone-a/rack-2")
REGION = ep("10.0.0.3", "us-east/zone-b/rack-1")
WEST = ep("10.0.0.4", "us-west/zone-a/rack-1")
EU = ep("10.0.0.5", "eu-west/zone-a/rack-1")
ALL = [EU, WEST, REGION, ZONE, SAME]


def setting(**fields: Any) -> LocalityLoadBalancerSetting:
    return LocalityLoadBalancerSetting.model_validate(fields)


def test_parse_and_priority() -> None:
    assert Locality.parse("us-east") == Locality("us-east", "", "")
    assert str(Locality.parse("us-east/zone-a")) == "us-east/zone-a"
    assert not Locality.parse("")
    assert [lb_priority(CALLER, Locality.parse(e.locality)) for e in (SAME, ZONE, REGION, WEST)] == [
        0,
        1,
        2,
        3,
    ]


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ("us-east/*", True),
        ("us-east/zone-a/*", True),
        ("us-east/zone-b/*", False),
        ("*", True),
        ("us-west", False),
    ],
)
def test_locality_patterns(pattern: str, matches: bool) -> None:
    assert locality_matches(CALLER, pattern) is matches


def test_failover_needs_outlier_detection_and_a_caller_locality() -> None:
    assert plan_localities(ALL, CALLER, {}, None, outlier_detection=False) is None
    assert plan_localities(ALL, Locality(), {}, None, outlier_detection=True) is None
    assert plan_localities(ALL, CALLER, {}, setting(enabled=False), outlier_detection=True) is None


def test_default_failover_orders_subzone_zone_region_elsewhere() -> None:
    plan = plan_localities(ALL, CALLER, {}, None, outlier_detection=True)
    assert plan is not None
    assert plan.levels == ((SAME,), (ZONE,), (REGION,), (EU, WEST))


def test_failover_entry_puts_its_region_before_the_others() -> None:
    plan = plan_localities(ALL, CALLER, {}, setting(failover=[{"from": "us-east", "to": "us-west"}]), True)
    assert plan is not None
    assert plan.levels[-2:] == ((WEST,), (EU,))


def test_failover_priority_labels_alone_order_by_labels() -> None:
    a = ep("10.0.1.1", "eu-west/z/r", tier="gold", rack="1")
    b = ep("10.0.1.2", "us-east/zone-a/rack-1", tier="gold", rack="2")
    c = ep("10.0.1.3", "us-east/zone-a/rack-1", tier="silver")
    plan = plan_localities(
        [a, b, c], CALLER, {"tier": "gold", "rack": "1"}, setting(failoverPriority=["tier", "rack"]), True
    )
    assert plan is not None
    assert plan.levels == ((a,), (b,), (c,))


def test_traffic_stays_local_while_healthy_and_spills_by_envoys_priority_load() -> None:
    local = [ep(f"10.0.2.{i}", "us-east/zone-a/rack-1") for i in range(10)]
    remote = [ep(f"10.0.3.{i}", "us-west/zone-a/rack-1") for i in range(10)]
    plan = plan_localities(local + remote, CALLER, {}, None, True)
    assert plan is not None
    rng = random.Random(1)

    def share_local(healthy_local: int, n: int = 4000) -> float:
        healthy = local[:healthy_local] + remote
        picks = Counter(plan.choose(healthy, rng)[0].locality for _ in range(n))
        return picks["us-east/zone-a/rack-1"] / n

    assert share_local(10) == 1.0
    assert share_local(8) == 1.0  # 8/10 * 1.4 = 112% >= 100%: no spill
    # 5/10 * 1.4 = 70%: 70% local, 30% spills over; sd of the share at n=4000 is 0.7 points.
    assert abs(share_local(5) - 0.70) < 0.04
    assert share_local(0) == 0.0


def test_a_retry_with_retry_remote_localities_leaves_the_tried_priority() -> None:
    plan = plan_localities([SAME, ZONE, WEST], CALLER, {}, None, True)
    assert plan is not None
    rng = random.Random(2)
    assert {plan.choose([SAME, ZONE, WEST], rng, avoid={0})[0] for _ in range(50)} == {ZONE}
    assert plan.choose([SAME], rng, avoid={0}) == [SAME], "nothing else healthy: retry where it can"


def test_distribute_splits_by_locality_weight_and_drops_unlisted_localities() -> None:
    zone_a = [ep(f"10.0.4.{i}", "us-east/zone-a/rack-1") for i in range(3)]
    zone_b = [ep("10.0.5.1", "us-east/zone-b/rack-1")]
    plan = plan_localities(
        [*zone_a, *zone_b, EU],
        CALLER,
        {},
        setting(
            distribute=[{"from": "us-east/zone-a/*", "to": {"us-east/zone-a/*": 80, "us-east/zone-b/*": 20}}]
        ),
        outlier_detection=False,
    )
    assert plan is not None
    rng = random.Random(3)
    picks = Counter(plan.choose([*zone_a, *zone_b, EU], rng)[0].locality for _ in range(4000))
    assert "eu-west/zone-a/rack-1" not in picks
    # sd of the zone-b share at n=4000 is 0.63 points
    assert abs(picks["us-east/zone-b/rack-1"] / 4000 - 0.20) < 0.04
