"""The config service's side of the service graph: latest windows merged, totals kept."""

from __future__ import annotations

from meshlib.controlplane.edges import MIN_STALE_AFTER, EdgeBoard
from meshlib.core.metrics import BUCKETS_MS
from meshlib.protocol import Edge, EdgeReport

SERVICE = "reviews.shop.svc.cluster.local"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _edge(requests: int, errors: int = 0, version: str = "v1", bucket: int = 3) -> Edge:
    buckets = [0] * (len(BUCKETS_MS) + 1)
    buckets[bucket] = requests
    return Edge(
        reporter="source", source="frontend", source_namespace="shop", source_version="v1",
        destination=SERVICE, destination_workload=f"reviews-{version}", destination_version=version,
        protocol="http", requests=requests, errors=errors, buckets=buckets,
    )  # fmt: skip


def test_rows_merge_replicas_and_keep_totals_across_reports() -> None:
    clock = Clock()
    board = EdgeBoard(clock)
    board.put("frontend-a", EdgeReport(window=5.0, edges=[_edge(50, 5), _edge(10, version="v2")]))
    board.put("frontend-b", EdgeReport(window=5.0, edges=[_edge(25)]))
    clock.now += 5
    board.put("frontend-a", EdgeReport(window=5.0, edges=[_edge(20)]))
    rows = {row["destinationVersion"]: row for row in board.edges()}
    v1 = rows["v1"]
    # the latest window of each replica: a's 20 and b's 25 over 5 s each
    assert (v1["rps"], v1["requests"], v1["errors"], v1["reporters"]) == (9.0, 45, 0, 2)
    assert (v1["totalRequests"], v1["totalErrors"]) == (95, 5)
    assert v1["p50Ms"] == 7.5  # the middle of bucket 3, (5, 10] ms
    assert v1["ageSeconds"] == 0.0
    # v2 was quiet in a's latest window: no rate, no latency, totals kept
    v2 = rows["v2"]
    assert (v2["rps"], v2["requests"], v2["p50Ms"], v2["totalRequests"]) == (0.0, 0, None, 10)


def test_a_silent_workload_leaves_the_board_and_a_deregistered_one_at_once() -> None:
    clock = Clock()
    board = EdgeBoard(clock)
    board.put("frontend-a", EdgeReport(window=1.0, edges=[_edge(10, 1)]))
    board.put("frontend-b", EdgeReport(window=1.0, edges=[_edge(10)]))
    clock.now += MIN_STALE_AFTER - 1
    board.put("frontend-b", EdgeReport(window=1.0, edges=[_edge(10)]))
    clock.now += 2  # a's last report is now older than max(3 windows, the floor)
    (row,) = board.edges()
    assert (row["reporters"], row["totalRequests"], row["totalErrors"]) == (1, 20, 0)
    board.drop("frontend-b")
    assert board.edges() == []
