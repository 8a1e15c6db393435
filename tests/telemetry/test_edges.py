"""The workload's side of the service graph: per-edge deltas between delivered reports."""

from __future__ import annotations

from collections.abc import Callable

from meshlib.core.metrics import BUCKETS_MS, IstioLabels, RequestMetrics, quantile
from meshlib.protocol import EdgeReport
from meshlib.telemetry.edges import EdgeTracker
from meshlib.telemetry.labels import UNKNOWN


def _labels(reporter: str, source: str, principal: str, version: str = "v1") -> IstioLabels:
    return IstioLabels(
        reporter, source, "shop", principal, source, "v1", source, "v1",
        "reviews-v1", "shop", "spiffe://cluster.local/ns/shop/sa/reviews", "reviews", version,
        "reviews.shop.svc.cluster.local", "reviews", "shop", "reviews", version, "http", "mutual_tls",
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


SERVICE = "reviews.shop.svc.cluster.local"


def _report(tracker: EdgeTracker) -> tuple[EdgeReport, Callable[[], None]]:
    made = tracker.report()
    assert made is not None
    return made


def test_quantile_interpolates_like_histogram_quantile() -> None:
    empty = [0] * (len(BUCKETS_MS) + 1)
    assert quantile(empty, 0.5) is None
    one_bucket = list(empty)
    one_bucket[1] = 10  # ten requests between 0.5 and 1 ms
    assert quantile(one_bucket, 0.5) == 0.75
    assert quantile(one_bucket, 1.0) == 1.0
    spread = list(empty)
    spread[0], spread[2] = 50, 50  # half under 0.5 ms, half in (1, 5]
    assert quantile(spread, 0.5) == 0.5
    assert quantile(spread, 0.99) == 1.0 + 4.0 * 49 / 50
    top = list(empty)
    top[-1] = 3  # above every bound: the highest bound, as Prometheus answers
    assert quantile(top, 0.5) == float(BUCKETS_MS[-1])


def test_reports_carry_deltas_and_a_failed_send_folds_into_the_next() -> None:
    metrics, clock = RequestMetrics(), Clock()
    tracker = EdgeTracker(metrics, clock)
    assert tracker.report() is None  # nothing sent yet: nothing to say
    labels = _labels("source", "frontend", "spiffe://cluster.local/ns/shop/sa/frontend")
    for _ in range(3):
        metrics.record("outbound", SERVICE, 200, "-", 2.0, labels)
    metrics.record("outbound", SERVICE, 503, "UF", 0.2, labels)
    clock.now += 5
    report, _commit = _report(tracker)  # not committed: the send failed
    (edge,) = report.edges
    assert (edge.reporter, edge.source, edge.destination, edge.requests, edge.errors) == (
        "source", "frontend", SERVICE, 4, 1,
    )  # fmt: skip
    assert report.window == 5
    metrics.record("outbound", SERVICE, 200, "-", 2.0, labels)
    clock.now += 5
    report, commit = _report(tracker)
    assert (report.window, report.edges[0].requests, report.edges[0].errors) == (10, 5, 1)
    assert sum(report.edges[0].buckets) == 5
    commit()
    metrics.record("outbound", SERVICE, 200, "-", 2.0, labels)
    clock.now += 2
    report, commit = _report(tracker)
    assert (report.window, report.edges[0].requests, report.edges[0].errors) == (2, 1, 0)
    commit()
    clock.now += 5
    report, commit = _report(tracker)  # idle: one empty report, so the board sees it go quiet
    assert report.edges == []
    commit()
    assert tracker.report() is None  # then silence until traffic returns


def test_inbound_edges_only_for_callers_outside_the_mesh() -> None:
    metrics = RequestMetrics()
    tracker = EdgeTracker(metrics, Clock())
    mesh_caller = _labels("destination", "frontend", "spiffe://cluster.local/ns/shop/sa/frontend")
    outsider = _labels("destination", UNKNOWN, UNKNOWN)
    metrics.record("inbound", SERVICE, 200, "-", 1.0, mesh_caller)  # the caller reports it
    metrics.record("inbound", SERVICE, 200, "-", 1.0, outsider)
    metrics.record("inbound", SERVICE, 200, "-", 1.0, outsider)
    metrics.record("inbound", SERVICE, 200, "-", 1.0, None)  # no labels: not an edge
    (edge,) = _report(tracker)[0].edges
    assert (edge.reporter, edge.source, edge.requests) == ("destination", UNKNOWN, 2)
