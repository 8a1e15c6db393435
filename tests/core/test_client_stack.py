"""The default client stack driven by hand: a fake clock, a seeded rng and scripted outcomes.

Each test builds a RoutingTable from YAML and registry entries, makes an Exchange the way
the HTTP adapter does, and runs the composed stack as the transports do: an Outcome
goes back for each Send, None for Sleep and Mirror, and the generator returns a Reply.
"""

from __future__ import annotations

import base64
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from meshlib.core import cluster_state
from meshlib.core.call import Call
from meshlib.core.client_stack import default_client_stack
from meshlib.core.cluster_state import Clusters
from meshlib.core.exchange import Exchange, Mirror, Outcome, Reply, Send, Sleep, Synthetic
from meshlib.core.retry_policy import Failure
from meshlib.core.routing_table import RoutingTable
from meshlib.core.snapshot import compile_snapshot
from meshlib.policy import load_text
from meshlib.registry import AnnouncedEndpoint, WorkloadRegistration

REVIEWS = "reviews.default.svc.cluster.local"
SHADOW = "shadow.default.svc.cluster.local"
HEADER = "apiVersion: networking.istio.io/v1\n"
OK = Outcome(status=200)
UNAVAILABLE = Outcome(status=503)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def workload(wid: str, address: str, service: str = "reviews", **labels: str) -> WorkloadRegistration:
    return WorkloadRegistration(
        id=wid, service=service, labels=labels, endpoints=[AnnouncedEndpoint(address=address, port=9080)]
    )


REVIEWS_PODS = [
    workload("reviews-v1-a", "10.0.0.1", version="v1"),
    workload("reviews-v1-b", "10.0.0.2", version="v1"),
    workload("reviews-v2-a", "10.0.0.3", version="v2"),
]
DR_SUBSETS = """kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v9, labels: {version: v9}}
"""


def vs(http: str, hosts: str = "[reviews]", metadata: str = "{name: reviews}") -> str:
    """A VirtualService document; ``http`` is the YAML list under spec.http, 2-space indented."""
    return f"kind: VirtualService\nmetadata: {metadata}\nspec:\n  hosts: {hosts}\n  http:\n{http}"


def terminal(ex: Exchange) -> Any:  # the upstream filter never calls on
    raise AssertionError("the innermost filter called past the end of the stack")
    yield


RUN = default_client_stack().compose(terminal)


def plane_of(
    version: int, *docs: str, workloads: Sequence[WorkloadRegistration] = REVIEWS_PODS
) -> RoutingTable:
    """The RoutingTable of snapshot ``version`` built from YAML documents and registry entries."""
    text = "---\n".join(HEADER + doc for doc in docs)
    resources = [item.resource for item in load_text(text)] if docs else []
    return RoutingTable.build(compile_snapshot(version, resources, workloads), "default", {"app": "me"})


class Mesh:
    """One workload's view: a plane, shared cluster state, a fake clock."""

    def __init__(
        self, *docs: str, workloads: Sequence[WorkloadRegistration] = REVIEWS_PODS, seed: int = 7
    ) -> None:
        self.clock = FakeClock()
        self.plane = plane_of(1, *docs, workloads=workloads)
        self.clusters = Clusters(self.clock, random.Random(seed))

    def exchange(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        host: str = "reviews",
        port: int | None = 9080,
        query: str = "",
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
        seed: int = 5,
        plane: RoutingTable | None = None,
        replayable: bool = True,
    ) -> Exchange:
        found = headers or {}
        plane = plane or self.plane
        fqdn = plane.resolve(host)
        assert fqdn is not None, f"{host} is not a mesh host"
        authority = host if port is None else f"{host}:{port}"
        call = Call(method, "http", host, port, path, query, found.get, authority=authority)
        return Exchange(
            call=call,
            table=plane,
            clusters=self.clusters,
            rng=random.Random(seed),
            clock=self.clock,
            fqdn=fqdn,
            source="10.1.1.1",
            started=self.clock(),
            deadline=deadline,
            replayable=replayable,
        )

    def drive(self, ex: Exchange, respond: Callable[[Send], Outcome]) -> tuple[Reply, list[Any]]:
        """Run the stack as a transport does; a Sleep moves the fake clock on."""
        flow = RUN(ex)
        actions: list[Any] = []
        value: Any = None
        while True:
            try:
                action = flow.send(value)
            except StopIteration as done:
                reply = done.value
                break
            actions.append(action)
            value = None
            if isinstance(action, Send):
                value = respond(action)
            elif isinstance(action, Sleep):
                self.clock.now += action.seconds
            else:
                assert isinstance(action, Mirror)
        assert isinstance(reply, Reply)
        return reply, actions

    def run(self, *outcomes: Outcome, **request: Any) -> tuple[Reply, list[Any], Exchange]:
        ex = self.exchange(**request)
        reply, actions = self.drive(ex, script(*outcomes))
        return reply, actions, ex


def script(*outcomes: Outcome) -> Callable[[Send], Outcome]:
    queue = list(outcomes)

    def respond(send: Send) -> Outcome:
        assert queue, f"more attempts than scripted: {send}"
        return queue.pop(0)

    return respond


def sends(actions: list[Any]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


def address(send: Send) -> str | None:
    return send.endpoint.address if send.endpoint is not None else None


# --- success and retries -------------------------------------------------------------------


def test_success_on_first_attempt() -> None:
    mesh = Mesh()
    reply, actions, ex = mesh.run(OK)
    assert kinds(actions) == ["Send"]
    send = actions[0]
    assert address(send) in {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert (send.target.host, send.target.subset, send.timeout) == (REVIEWS, None, None)
    assert reply.outcome is OK
    assert (reply.error, reply.synthetic) == (None, None)
    assert (ex.attempts, ex.flags) == (1, [])
    assert ex.route is not None
    assert ex.route.name == "default"
    assert ex.cluster is mesh.plane.cluster(send.target, 9080)  # the request's own plane's
    state = mesh.clusters.get(mesh.plane.cluster(send.target, 9080), mesh.plane.version)
    assert ex.state is state
    assert state.in_flight == 0  # the slot went back


def test_a_streaming_answer_keeps_its_slot_until_the_adapter_releases_it() -> None:
    mesh = Mesh()
    streaming = Outcome(status=200, streaming=True)
    reply, actions, _ = mesh.run(streaming)
    assert reply.outcome is streaming
    send = sends(actions)[0]
    state = mesh.clusters.get(mesh.plane.cluster(send.target, 9080), mesh.plane.version)
    assert send.endpoint is not None
    assert state.in_flight == 1, "the body is still arriving: the request still counts"
    assert state.active[send.endpoint.key] == 1, "least-request sees the open stream"
    assert streaming.release is not None
    streaming.release()
    assert state.in_flight == 0
    assert state.active[send.endpoint.key] == 0


def test_503_then_200_with_default_retries() -> None:
    mesh = Mesh()
    reply, actions, ex = mesh.run(UNAVAILABLE, OK, seed=5)
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    pause = actions[1].seconds
    assert 0 < pause <= 0.025  # retry 1: at most one back-off base
    assert pause == pytest.approx(random.Random(5).random() * 0.025)
    first, second = sends(actions)
    assert address(first) != address(second)  # the endpoint already tried is avoided
    assert reply.outcome is OK
    assert (ex.attempts, ex.flags) == (2, [])
    assert [address(s) for s in sends(actions)] == [e.address for e in ex.tried]


def test_attempts_exhausted_sets_urx() -> None:
    mesh = Mesh()
    reply, actions, ex = mesh.run(UNAVAILABLE, UNAVAILABLE, UNAVAILABLE)
    assert kinds(actions) == ["Send", "Sleep", "Send", "Sleep", "Send"]
    assert actions[1].seconds <= 0.025
    assert actions[3].seconds <= 0.075
    assert len({address(s) for s in sends(actions)}) == 3
    assert reply.outcome is not None
    assert reply.outcome.status == 503
    assert reply.error is None
    assert (ex.attempts, ex.flags) == (3, ["URX"])


def test_non_retriable_status_is_returned_at_once() -> None:
    reply, actions, ex = Mesh().run(Outcome(status=500))
    assert kinds(actions) == ["Send"]
    assert reply.outcome is not None
    assert reply.outcome.status == 500
    assert ex.flags == []


def test_route_retry_policy_is_used() -> None:
    mesh = Mesh(vs("  - retries: {attempts: 1, retryOn: 5xx}\n    route: [{destination: {host: reviews}}]\n"))
    reply, actions, ex = mesh.run(Outcome(status=500), Outcome(status=502))
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    assert reply.outcome is not None
    assert reply.outcome.status == 502
    assert (ex.attempts, ex.flags) == (2, ["URX"])


def test_grpc_status_is_retried_by_its_condition() -> None:
    mesh = Mesh()
    grpc_unavailable = Outcome(status=200, grpc_status="UNAVAILABLE")
    grpc_ok = Outcome(status=200, grpc_status="OK")
    reply, actions, _ = mesh.run(grpc_unavailable, grpc_ok)
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    assert reply.outcome is grpc_ok
    internal = Outcome(status=200, grpc_status="INTERNAL")
    reply, actions, _ = mesh.run(internal)
    assert (kinds(actions), reply.outcome) == (["Send"], internal)


def test_retry_budget_is_honoured() -> None:
    mesh = Mesh(
        vs("  - retries: {attempts: 5, retryOn: 5xx}\n    route: [{destination: {host: reviews}}]\n"),
        DR_SUBSETS + "  trafficPolicy:\n    retryBudget: {percent: 0, minRetryConcurrency: 2}\n",
    )
    first, actions, ex = mesh.run(*[UNAVAILABLE] * 3)
    assert len(sends(actions)) == 3  # the original and the budget's two retries
    assert first.outcome is not None
    assert first.outcome.status == 503
    assert ex.flags == ["URX"]
    second, actions, ex = mesh.run(UNAVAILABLE)
    assert second.outcome is UNAVAILABLE
    assert len(sends(actions)) == 1  # budget spent: no retry at all
    assert ex.flags == ["URX"]
    state = mesh.clusters.get(mesh.plane.cluster(sends(actions)[0].target, 9080), mesh.plane.version)
    assert state.budget is not None
    assert state.budget.balance() == 0
    third, actions, ex = mesh.run(OK)
    assert (len(sends(actions)), ex.flags) == (1, [])
    assert third.outcome is OK


def reviews_state(mesh: Mesh) -> tuple[Any, Any]:
    """The default route's Cluster on the mesh's plane, and its shared state."""
    found = mesh.plane.cluster(mesh.plane.default_route(REVIEWS).targets[0], 9080)
    return found, mesh.clusters.get(found, mesh.plane.version)


def test_max_retries_in_flight_refuses_a_retry() -> None:
    mesh = Mesh(DR_SUBSETS + "  trafficPolicy:\n    connectionPool: {http: {maxRetries: 1}}\n")
    found, state = reviews_state(mesh)
    assert state.admit_retry(found) is True  # another request's retry holds the only slot
    reply, actions, ex = mesh.run(UNAVAILABLE)
    assert kinds(actions) == ["Send"]
    assert ex.flags == ["URX"]
    state.release_retry()
    reply, actions, ex = mesh.run(UNAVAILABLE, OK)
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    assert reply.outcome is OK
    assert state.retries_in_flight == 0


def test_a_refused_max_retries_slot_spends_no_budget() -> None:
    mesh = Mesh(
        DR_SUBSETS + "  trafficPolicy:\n    connectionPool: {http: {maxRetries: 1}}\n"
        "    retryBudget: {percent: 0, minRetryConcurrency: 2}\n"
    )
    found, state = reviews_state(mesh)
    budget = state.budget
    assert budget is not None
    assert budget.balance() == 2
    assert state.admit_retry(found) is True  # another request's retry holds the only slot
    reply, actions, ex = mesh.run(UNAVAILABLE)
    assert kinds(actions) == ["Send"]
    assert reply.outcome is UNAVAILABLE
    assert ex.flags == ["URX"]
    assert budget.balance() == 2  # maxRetries refused first: the budget was not touched
    state.release_retry()
    reply, actions, _ = mesh.run(UNAVAILABLE, OK)
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    assert budget.balance() == 1
    assert state.retries_in_flight == 0


def test_a_refused_budget_gives_the_max_retries_slot_back() -> None:
    mesh = Mesh(
        DR_SUBSETS + "  trafficPolicy:\n    connectionPool: {http: {maxRetries: 1}}\n"
        "    retryBudget: {percent: 0, minRetryConcurrency: 1}\n"
    )
    _, state = reviews_state(mesh)
    mesh.run(UNAVAILABLE, OK)  # spends the budget's only retry
    assert state.budget is not None
    assert state.budget.balance() == 0
    reply, actions, ex = mesh.run(UNAVAILABLE)
    assert kinds(actions) == ["Send"]
    assert reply.outcome is UNAVAILABLE
    assert ex.flags == ["URX"]
    assert state.retries_in_flight == 0  # the slot taken before asking the budget went back


# --- one-shot request bodies -----------------------------------------------------------------


def test_a_streamed_body_is_not_resent_after_a_response() -> None:
    mesh = Mesh()
    reply, actions, ex = mesh.run(UNAVAILABLE, replayable=False)
    assert kinds(actions) == ["Send"]
    assert reply.outcome is UNAVAILABLE
    assert (ex.attempts, ex.flags) == (1, [])
    _, state = reviews_state(mesh)
    assert state.retries_in_flight == 0


@pytest.mark.parametrize("failure", [Failure.RESET, Failure.TIMEOUT])
def test_a_streamed_body_is_not_resent_after_it_may_have_been_read(failure: Failure) -> None:
    mesh = Mesh(vs("  - retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: reviews}}]\n"))
    broken = Outcome(failure=failure, error=OSError())
    reply, actions, ex = mesh.run(broken, replayable=False)
    assert kinds(actions) == ["Send"]
    assert reply.outcome is broken
    assert ex.attempts == 1


@pytest.mark.parametrize("failure", [Failure.CONNECT, Failure.REFUSED])
def test_a_streamed_body_never_sent_goes_again(failure: Failure) -> None:
    mesh = Mesh()
    unsent = Outcome(failure=failure, error=ConnectionRefusedError())
    reply, actions, ex = mesh.run(unsent, OK, replayable=False)
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    assert reply.outcome is OK
    assert ex.attempts == 2


# --- resend safety ---------------------------------------------------------------------


def test_post_is_not_resent_after_a_response() -> None:
    reply, actions, ex = Mesh().run(UNAVAILABLE, method="POST")
    assert kinds(actions) == ["Send"]
    assert reply.outcome is not None
    assert reply.outcome.status == 503
    assert (ex.attempts, ex.flags) == (1, [])


def test_post_is_resent_after_a_connect_failure() -> None:
    failed = Outcome(failure=Failure.CONNECT, error=ConnectionRefusedError())
    reply, actions, ex = Mesh().run(failed, OK, method="PATCH")
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    assert reply.outcome is OK
    assert (ex.attempts, ex.flags) == (2, ["UF"])


def test_post_with_idempotency_key_is_resent() -> None:
    reply, actions, _ = Mesh().run(UNAVAILABLE, OK, method="POST", headers={"idempotency-key": "k-1"})
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    assert reply.outcome is OK


def test_post_is_resent_when_the_virtual_service_says_so() -> None:
    metadata = "\n  name: reviews\n  annotations: {retry.meshlib.io/non-idempotent: 'true'}"
    mesh = Mesh(vs("  - route: [{destination: {host: reviews}}]\n", metadata=metadata))
    reply, actions, _ = mesh.run(UNAVAILABLE, OK, method="POST")
    assert kinds(actions) == ["Send", "Sleep", "Send"]
    assert reply.outcome is OK


# --- timeouts ------------------------------------------------------------------------------


def test_per_try_timeout_moves_on_to_another_endpoint() -> None:
    mesh = Mesh(
        vs(
            "  - timeout: 10s\n    retries: {attempts: 3, perTryTimeout: 1s, retryOn: 5xx}\n"
            "    route: [{destination: {host: reviews}}]\n"
        )
    )

    def slow_then_ok(send: Send) -> Outcome:
        if mesh.clock.now - ex.started < 1.5:
            mesh.clock.now += send.timeout or 0.0
            return Outcome(failure=Failure.TIMEOUT, error=TimeoutError())
        return OK

    ex = mesh.exchange()
    reply, actions = mesh.drive(ex, slow_then_ok)
    timeouts = [s.timeout for s in sends(actions)]
    assert kinds(actions) == ["Send", "Sleep", "Send", "Sleep", "Send"]
    assert timeouts[:2] == [1.0, 1.0]
    assert len({address(s) for s in sends(actions)}) == 3  # tried endpoints excluded
    assert reply.outcome is OK
    assert (ex.attempts, ex.flags) == (3, [])


def test_per_try_timeout_is_bounded_by_what_is_left() -> None:
    mesh = Mesh(
        vs(
            "  - timeout: 2s\n    retries: {attempts: 3, perTryTimeout: 1.5s, retryOn: 5xx}\n"
            "    route: [{destination: {host: reviews}}]\n"
        )
    )
    ex = mesh.exchange()

    def slow(send: Send) -> Outcome:
        mesh.clock.now += send.timeout or 0.0
        return Outcome(failure=Failure.TIMEOUT, error=TimeoutError())

    reply, actions = mesh.drive(ex, slow)
    timeouts = [s.timeout for s in sends(actions)]
    assert timeouts[0] == 1.5
    assert timeouts[1] == pytest.approx(2.0 - 1.5 - actions[1].seconds)
    assert reply.error == "UT"
    assert ex.flags == ["UT"]
    assert mesh.clock.now == pytest.approx(ex.started + 2.0)


def test_route_timeout_gives_ut() -> None:
    mesh = Mesh(
        vs(
            "  - timeout: 2s\n    retries: {attempts: 3, retryOn: 5xx}\n"
            "    route: [{destination: {host: reviews}}]\n"
        )
    )
    ex = mesh.exchange()

    def hang(send: Send) -> Outcome:
        mesh.clock.now += send.timeout or 0.0
        return Outcome(failure=Failure.TIMEOUT, error=TimeoutError())

    reply, actions = mesh.drive(ex, hang)
    assert kinds(actions) == ["Send"]  # no time left for a retry
    assert actions[0].timeout == 2.0
    assert reply.error == "UT"
    assert reply.outcome is None
    assert ex.flags == ["UT"]
    assert ex.deadline == pytest.approx(ex.started + 2.0)


BACKOFF_PAST_TIMEOUT = vs(
    "  - timeout: 500ms\n    retries: {attempts: 3, retryOn: 5xx, backoff: 1s}\n"
    "    route: [{destination: {host: reviews}}]\n"
)


def test_backoff_is_cut_short_by_the_deadline() -> None:
    assert random.Random(5).random() * 1.0 > 0.5  # the drawn back-off would overrun the timeout
    mesh = Mesh(BACKOFF_PAST_TIMEOUT)
    ex = mesh.exchange(seed=5)
    flow = RUN(ex)
    assert isinstance(flow.send(None), Send)
    pause = flow.send(UNAVAILABLE)
    assert pause == Sleep(0.5)
    flow.close()


def test_no_attempt_once_the_backoff_used_up_the_timeout() -> None:
    # Envoy's route timeout fires during the back-off: 504 with UT, no further attempt.
    mesh = Mesh(BACKOFF_PAST_TIMEOUT)
    reply, actions, ex = mesh.run(UNAVAILABLE, OK, seed=5)
    assert kinds(actions) == ["Send", "Sleep"]
    assert [s.timeout for s in sends(actions)] == [0.5]
    assert reply.error == "UT"
    assert ex.flags == ["UT"]


def test_inbound_deadline_bounds_the_route_timeout() -> None:
    mesh = Mesh(vs("  - timeout: 5s\n    route: [{destination: {host: reviews}}]\n"))
    reply, actions, ex = mesh.run(OK, deadline=mesh.clock() + 0.5)
    assert actions[0].timeout == pytest.approx(0.5)
    assert reply.outcome is OK
    assert ex.deadline == pytest.approx(ex.started + 0.5)


def test_deadline_already_passed_sends_nothing() -> None:
    mesh = Mesh()
    reply, actions, ex = mesh.run(deadline=mesh.clock() - 0.1)
    assert actions == []
    assert reply.error == "UT"
    assert (reply.outcome, reply.synthetic) == (None, None)
    assert ex.flags == ["UT"]
    assert ex.attempts == 0


# --- local answers: NR, redirect, direct response, faults -------------------------------------


def test_no_route_matches() -> None:
    mesh = Mesh(vs("  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: reviews}}]\n"))
    reply, actions, ex = mesh.run(path="/web")
    assert actions == []
    assert reply.error == "NR"
    assert reply.message == f"no route of the VirtualService for {REVIEWS} matches GET /web"
    assert ex.flags == ["NR"]
    matched, actions, _ = mesh.run(OK, path="/api/1")
    assert matched.outcome is OK


@pytest.mark.parametrize(
    ("redirect", "path", "query", "location", "code"),
    [
        ("{uri: /new, authority: other.example}", "/old", "", "http://other.example/new", 301),
        ("{authority: other.example}", "/old", "a=1", "http://other.example/old?a=1", 301),
        (
            "{uri: /new, scheme: https, port: 8443, redirectCode: 308}",
            "/old",
            "",
            "https://reviews:8443/new",
            308,
        ),
        (
            "{uri: /new, derivePort: FROM_REQUEST_PORT, redirectCode: 302}",
            "/old",
            "",
            "http://reviews:9080/new",
            302,
        ),
    ],
)
def test_redirect(redirect: str, path: str, query: str, location: str, code: int) -> None:
    mesh = Mesh(vs(f"  - redirect: {redirect}\n"))
    reply, actions, ex = mesh.run(path=path, query=query)
    assert actions == []
    assert reply.synthetic == Synthetic(code, headers=(("location", location),))
    assert ex.flags == []


@pytest.mark.parametrize(
    ("match", "path", "location"),
    [
        ("[{uri: {prefix: /foo/}}]", "/foo/bar/baz", "http://foo.example.com/bar/baz"),
        ("[{uri: {prefix: /FOO/}, ignoreUriCase: true}]", "/Foo/x", "http://foo.example.com/x"),
        ("[{uri: {exact: /foo/x}}]", "/foo/x", "http://foo.example.com/"),  # no prefix: the path
    ],
)
def test_redirect_prefix_rewrite_swaps_the_matched_prefix(match: str, path: str, location: str) -> None:
    """Newer istio/api (Envoy's prefix_rewrite), as istio/api's own example writes it."""
    mesh = Mesh(vs(f"  - match: {match}\n    redirect: {{authority: foo.example.com, prefix_rewrite: /}}\n"))
    reply, _, _ = mesh.run(path=path)
    assert reply.synthetic == Synthetic(301, headers=(("location", location),))


def test_redirect_keeps_the_query_string() -> None:
    # Envoy (Http::Utility::newUri): a path redirect without a query of its own keeps the
    # request's query string; only strip_query (Istio never sets it) removes it.
    mesh = Mesh(vs("  - redirect: {uri: /new, authority: other.example}\n"))
    reply, _, _ = mesh.run(path="/old", query="x=1&y=2")
    assert reply.synthetic is not None
    assert reply.synthetic.headers == (("location", "http://other.example/new?x=1&y=2"),)


def test_redirect_keeps_the_request_port() -> None:
    # Envoy (processRequestHost): without a host or port redirect, the Host header is kept
    # whole, port included, unless the scheme changes and the port was that scheme's default.
    mesh = Mesh(vs("  - redirect: {uri: /new}\n"))
    reply, _, _ = mesh.run(path="/old", port=9080)
    assert reply.synthetic is not None
    assert reply.synthetic.headers == (("location", "http://reviews:9080/new"),)


def test_direct_response() -> None:
    mesh = Mesh(
        vs(
            "  - match: [{uri: {exact: /teapot}}]\n"
            "    directResponse: {status: 418, body: {string: short and stout}}\n"
            "  - directResponse: {status: 204}\n"
        )
    )
    reply, actions, _ = mesh.run(path="/teapot")
    assert actions == []
    assert reply.synthetic == Synthetic(418, body=b"short and stout")
    reply, actions, _ = mesh.run(path="/other")
    assert reply.synthetic == Synthetic(204, body=b"")


def test_direct_response_bytes_are_base64_decoded() -> None:
    raw = b"\x00\xffbinary\n"
    encoded = base64.b64encode(raw).decode()
    mesh = Mesh(vs(f"  - directResponse: {{status: 200, body: {{bytes: '{encoded}'}}}}\n"))
    reply, actions, _ = mesh.run()
    assert actions == []
    assert reply.synthetic == Synthetic(200, body=raw)


@pytest.mark.parametrize(("encoded", "raw"), [("aGk", b"hi"), ("-_8=", b"\xfb\xff")])
def test_direct_response_bytes_as_protobuf_json_writes_them(encoded: str, raw: bytes) -> None:
    mesh = Mesh(vs(f"  - directResponse: {{status: 200, body: {{bytes: '{encoded}'}}}}\n"))
    reply, _, _ = mesh.run()
    assert reply.synthetic == Synthetic(200, body=raw)


HIT, MISS = 1, 0  # seeds whose first draw falls under / over one half


def test_seeds_hit_and_miss_half() -> None:
    assert random.Random(HIT).random() < 0.5 <= random.Random(MISS).random()


def fault_mesh(fault: str) -> Mesh:
    return Mesh(vs(f"  - fault: {fault}\n    route: [{{destination: {{host: reviews}}}}]\n"))


def test_fault_abort_answers_without_sending() -> None:
    mesh = fault_mesh("{abort: {httpStatus: 503, percentage: {value: 100}}}")
    reply, actions, ex = mesh.run()
    assert actions == []
    assert reply.synthetic == Synthetic(503, body=b"fault filter abort")
    assert (ex.flags, ex.attempts) == (["FI"], 0)


def test_fault_abort_grpc() -> None:
    reply, actions, ex = fault_mesh("{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}").run()
    assert actions == []
    assert reply.synthetic == Synthetic(200, body=b"fault filter abort", grpc_status="UNAVAILABLE")
    assert ex.flags == ["FI"]


@pytest.mark.parametrize(("seed", "aborted"), [(HIT, True), (MISS, False)])
def test_fault_abort_share(seed: int, aborted: bool) -> None:
    mesh = fault_mesh("{abort: {httpStatus: 500, percentage: {value: 50}}}")
    reply, actions, ex = mesh.run(OK, seed=seed)
    if aborted:
        assert (actions, ex.flags) == ([], ["FI"])
        assert reply.synthetic is not None
        assert reply.synthetic.status == 500
    else:
        assert (kinds(actions), ex.flags) == (["Send"], [])
        assert reply.outcome is OK


@pytest.mark.parametrize(("seed", "delayed"), [(HIT, True), (MISS, False)])
def test_fault_delay(seed: int, delayed: bool) -> None:
    mesh = fault_mesh("{delay: {fixedDelay: 2s, percentage: {value: 50}}}")
    reply, actions, ex = mesh.run(OK, seed=seed)
    if delayed:
        assert kinds(actions) == ["Sleep", "Send"]
        assert actions[0] == Sleep(2.0)
        assert ex.flags == ["DI"]
        assert mesh.clock.now == pytest.approx(ex.started + 2.0)
    else:
        assert kinds(actions) == ["Send"]
        assert ex.flags == []
    assert reply.outcome is OK


def test_fault_delay_then_abort() -> None:
    mesh = fault_mesh(
        "{delay: {fixedDelay: 1s, percentage: {value: 100}},"
        " abort: {httpStatus: 429, percentage: {value: 100}}}"
    )
    reply, actions, ex = mesh.run()
    assert actions == [Sleep(1.0)]
    assert reply.synthetic is not None
    assert reply.synthetic.status == 429
    assert ex.flags == ["DI", "FI"]


def test_fault_route_is_not_retried() -> None:
    mesh = fault_mesh("{delay: {fixedDelay: 1s, percentage: {value: 0}}}")
    reply, actions, ex = mesh.run(UNAVAILABLE)
    assert kinds(actions) == ["Send"]
    assert reply.outcome is UNAVAILABLE
    assert ex.flags == []


# --- mirrors ---------------------------------------------------------------------------------


def mirror_mesh(mirror: str, *extra: str) -> Mesh:
    pods = [*REVIEWS_PODS, workload("shadow-1", "10.0.5.1", service="shadow")]
    return Mesh(vs(f"{mirror}    route: [{{destination: {{host: reviews}}}}]\n"), *extra, workloads=pods)


def test_mirror_goes_out_before_the_send() -> None:
    mesh = mirror_mesh("  - mirror: {host: shadow}\n")
    reply, actions, _ = mesh.run(OK)
    assert kinds(actions) == ["Mirror", "Send"]
    assert actions[0].endpoint.address == "10.0.5.1"
    assert actions[0].target.host == SHADOW
    assert actions[0].authority == "reviews-shadow:9080"  # decided in the stack: Envoy's mark on a copy
    assert actions[0].timeout == 5.0  # a copy never holds resources longer
    assert reply.outcome is OK


def test_mirror_once_per_request_not_per_retry() -> None:
    mesh = mirror_mesh("  - mirror: {host: shadow}\n")
    _, actions, _ = mesh.run(UNAVAILABLE, OK)
    assert kinds(actions) == ["Mirror", "Send", "Sleep", "Send"]


@pytest.mark.parametrize(("seed", "mirrored"), [(HIT, True), (MISS, False)])
def test_mirror_percentage(seed: int, mirrored: bool) -> None:
    mesh = mirror_mesh("  - mirror: {host: shadow}\n    mirrorPercentage: {value: 50}\n")
    _, actions, _ = mesh.run(OK, seed=seed)
    assert kinds(actions) == (["Mirror", "Send"] if mirrored else ["Send"])


def test_mirrors_to_unknown_and_empty_hosts() -> None:
    dr_only = "kind: DestinationRule\nmetadata: {name: ghost}\nspec: {host: ghost}\n"
    mesh = mirror_mesh(
        "  - mirrors:\n    - destination: {host: shadow.example.org}\n    - destination: {host: ghost}\n"
        "    - destination: {host: shadow}\n      percentage: {value: 0}\n",
        dr_only,
    )
    _, actions, _ = mesh.run(OK)
    # Not a mesh host (Envoy: no such cluster): no copy, and never one to the caller's own
    # host. A mesh host without endpoints: skipped. 0%: never.
    assert kinds(actions) == ["Send"]


def test_a_route_to_a_host_that_is_not_a_mesh_host_is_nc() -> None:
    """Envoy: a route to a cluster that does not exist answers 503 NC; the request must not
    go to the host the caller asked for instead."""
    mesh = Mesh(vs("  - route: [{destination: {host: nowhere.invalid}}]\n"))
    reply, actions, ex = mesh.run()
    assert actions == []
    assert (reply.error, ex.flags) == ("NC", ["NC"])
    assert "nowhere.invalid is not a mesh host" in (reply.message or "")


# --- no endpoint: UH, UO ----------------------------------------------------------------------


def test_subset_without_endpoints_is_uh() -> None:
    mesh = Mesh(vs("  - route: [{destination: {host: reviews, subset: v9}}]\n"), DR_SUBSETS)
    reply, actions, ex = mesh.run()
    assert actions == []
    assert reply.error == "UH"
    assert reply.message == f"no endpoints for {REVIEWS} subset v9"
    assert (ex.flags, ex.attempts) == (["UH"], 0)


def test_subset_routes_to_its_endpoints() -> None:
    mesh = Mesh(vs("  - route: [{destination: {host: reviews, subset: v2}}]\n"), DR_SUBSETS)
    for _ in range(10):
        _, actions, _ = mesh.run(OK)
        assert [address(s) for s in sends(actions)] == ["10.0.0.3"]


def test_host_outside_the_mesh_is_sent_as_it_is() -> None:
    mesh = Mesh(vs("  - route: [{destination: {host: example.org}}]\n", hosts="[example.org]"))
    reply, actions, ex = mesh.run(OK, host="example.org", port=None)
    assert kinds(actions) == ["Send"]
    assert actions[0].endpoint is None
    assert actions[0].target.host == "example.org"
    assert reply.outcome is OK
    assert ex.tried == []


def test_pool_overflow_is_uo() -> None:
    mesh = Mesh(DR_SUBSETS + "  trafficPolicy:\n    connectionPool: {http: {http2MaxRequests: 1}}\n")
    first = mesh.exchange()
    flow = RUN(first)
    held = flow.send(None)
    assert isinstance(held, Send)  # the first request is in flight, holding the only slot
    reply, actions, ex = mesh.run()
    assert actions == []
    assert reply.error == "UO"
    assert reply.message == f"connection pool of {REVIEWS} is full"
    assert (ex.flags, ex.attempts) == (["UO"], 0)
    with pytest.raises(StopIteration) as done:
        flow.send(OK)
    assert done.value.value.outcome is OK
    again, actions, _ = mesh.run(OK)
    assert kinds(actions) == ["Send"]
    assert again.outcome is OK


def test_outlier_ejection_after_five_503s() -> None:
    pods = [workload("bad", "10.0.0.1"), workload("good", "10.0.0.2")]
    mesh = Mesh(
        vs("  - retries: {attempts: 0}\n    route: [{destination: {host: reviews}}]\n"),
        DR_SUBSETS
        + "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 5, baseEjectionTime: 30s}\n",
        workloads=pods,
    )

    def by_endpoint(send: Send) -> Outcome:
        return UNAVAILABLE if address(send) == "10.0.0.1" else OK

    hits: Counter[str | None] = Counter()
    for _ in range(200):
        _, actions = mesh.drive(mesh.exchange(), by_endpoint)
        hits[address(actions[0])] += 1
    assert hits["10.0.0.1"] == 5  # ejected by its fifth consecutive 503, never picked again
    assert hits["10.0.0.2"] == 195
    mesh.clock.now += 30.0  # the base ejection time has passed
    seen = set()
    for _ in range(50):
        _, actions = mesh.drive(mesh.exchange(), by_endpoint)
        seen.add(address(actions[0]))
    assert seen == {"10.0.0.1", "10.0.0.2"}


def test_every_endpoint_ejected_is_uh() -> None:
    mesh = Mesh(
        vs("  - retries: {attempts: 0}\n    route: [{destination: {host: reviews}}]\n"),
        DR_SUBSETS + "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 2}\n",
        workloads=[workload("only", "10.0.0.1")],
    )
    for _ in range(2):
        mesh.run(UNAVAILABLE)
    reply, actions, ex = mesh.run()
    assert actions == []
    assert reply.error == "UH"
    assert reply.message == f"no healthy endpoint for {REVIEWS}"
    assert ex.flags == ["UH"]


def test_consistent_hash_keeps_a_user_on_one_endpoint() -> None:
    mesh = Mesh(
        DR_SUBSETS + "  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n"
    )
    picks = {address(mesh.run(OK, headers={"x-user": "alice"})[1][0]) for _ in range(20)}
    assert len(picks) == 1
    users = {address(mesh.run(OK, headers={"x-user": f"user-{i}"})[1][0]) for i in range(60)}
    assert users == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


# --- routes the data plane must not lose or trip over -----------------------------------------


def test_wildcard_virtual_service_applies() -> None:
    # Istio applies a VirtualService for "*.example.com" to api.example.com; the snapshot
    # resolves the host through it (Snapshot.virtual_service), the RoutingTable must route by it.
    entry = (
        "kind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n"
        "  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n"
    )
    mesh = Mesh(vs("  - directResponse: {status: 418}\n", hosts="['*.example.com']"), entry)
    assert mesh.plane.resolve("api.example.com") == "api.example.com"
    assert mesh.plane.snapshot.virtual_service("api.example.com") is not None
    reply, actions, _ = mesh.run(OK, host="api.example.com", port=80)
    assert actions == []
    assert reply.synthetic == Synthetic(418, body=b"")


# --- snapshots changing under a request ----------------------------------------------------------

V2_PODS = [workload("reviews-new-a", "10.0.9.1"), workload("reviews-new-b", "10.0.9.2")]
OLD_ADDRESSES = {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
NEW_ADDRESSES = {"10.0.9.1", "10.0.9.2"}


def budget_rule(percent: int) -> str:
    return DR_SUBSETS + f"  trafficPolicy:\n    retryBudget: {{percent: {percent}, minRetryConcurrency: 5}}\n"


def test_a_request_keeps_its_own_planes_endpoints_across_a_snapshot_change() -> None:
    mesh = Mesh(budget_rule(50))  # snapshot 1
    old = mesh.exchange()
    flow = RUN(old)
    first = flow.send(None)
    assert isinstance(first, Send)
    assert address(first) in OLD_ADDRESSES
    # Snapshot 2 arrives while the first request is in flight; another request uses it.
    newer = plane_of(2, budget_rule(10), workloads=V2_PODS)
    reply, actions = mesh.drive(mesh.exchange(plane=newer), script(OK))
    assert reply.outcome is OK
    assert address(sends(actions)[0]) in NEW_ADDRESSES
    state = old.state
    assert state is not None
    new_cluster = newer.cluster(sends(actions)[0].target, 9080)
    assert (state.cluster, state.version) == (new_cluster, 2)
    budget = state.budget
    assert budget is not None
    assert budget.percent == 10
    # The first request goes on with its retries: only ever its own snapshot's endpoints.
    picked = [address(first)]
    for outcome in (UNAVAILABLE, UNAVAILABLE):
        pause = flow.send(outcome)
        assert isinstance(pause, Sleep)
        again = flow.send(None)
        assert isinstance(again, Send)
        picked.append(address(again))
        # Meanwhile another request on the old snapshot runs to the end.
        mesh.drive(mesh.exchange(), script(OK))
        assert (state.cluster, state.version) == (new_cluster, 2)  # never flipped back
        assert state.budget is budget
    with pytest.raises(StopIteration) as done:
        flow.send(OK)
    assert done.value.value.outcome is OK
    assert set(picked) == OLD_ADDRESSES  # three attempts, three distinct old endpoints
    assert old.cluster is mesh.plane.cluster(first.target, 9080)
    assert (state.in_flight, state.retries_in_flight) == (0, 0)
    assert budget.percent == 10


def test_an_older_plane_keeps_its_own_pool_limits() -> None:
    limited = DR_SUBSETS + "  trafficPolicy:\n    connectionPool: {http: {http2MaxRequests: 1}}\n"
    relaxed = DR_SUBSETS + "  trafficPolicy:\n    connectionPool: {http: {http2MaxRequests: 5}}\n"
    mesh = Mesh(limited)
    newer = plane_of(2, relaxed)
    held = RUN(mesh.exchange(plane=newer))
    assert isinstance(held.send(None), Send)  # one request of snapshot 2 in flight
    reply, actions, ex = mesh.run()  # snapshot 1 allows one: refused
    assert (actions, reply.error, ex.flags) == ([], "UO", ["UO"])
    reply, actions = mesh.drive(mesh.exchange(plane=newer), script(OK))  # snapshot 2 allows five
    assert reply.outcome is OK
    held.close()
    state = mesh.clusters.states()[0]
    assert state.in_flight == 0


def test_the_balancer_is_built_once_per_plane_when_requests_alternate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[object] = []
    real = cluster_state.build_balancer

    def counting(*args: Any, **kwargs: Any) -> Any:
        balancer = real(*args, **kwargs)
        built.append(balancer)
        return balancer

    monkeypatch.setattr(cluster_state, "build_balancer", counting)
    mesh = Mesh(DR_SUBSETS + "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n")
    newer = plane_of(
        2, DR_SUBSETS + "  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n", workloads=V2_PODS
    )
    seen: dict[str, set[str | None]] = {"old": set(), "new": set()}
    for _ in range(10):
        for name, plane in (("old", mesh.plane), ("new", newer)):
            reply, actions = mesh.drive(mesh.exchange(plane=plane), script(OK))
            assert reply.outcome is OK
            seen[name].add(address(sends(actions)[0]))
    assert len(built) == 2  # one per configuration, never rebuilt by the flip-flop
    state = mesh.clusters.states()[0]
    old_cluster = mesh.plane.cluster(mesh.plane.default_route(REVIEWS).targets[0], 9080)
    new_cluster = newer.cluster(newer.default_route(REVIEWS).targets[0], 9080)
    assert state.balancer(old_cluster) is built[0]
    assert state.balancer(new_cluster) is built[1]
    assert seen == {"old": OLD_ADDRESSES, "new": NEW_ADDRESSES}  # round robin over each plane's own


def test_locality_lb_enabled_alone_does_not_break_requests() -> None:
    """Every endpoint is in one locality here, so enabling locality load balancing changes
    nothing (distribute and failover are refused at validation)."""
    mesh = Mesh(
        DR_SUBSETS + "  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n"
        "      localityLbSetting: {enabled: true}\n"
    )
    reply, actions, _ = mesh.run(OK)
    assert kinds(actions) == ["Send"]
    assert reply.outcome is OK


def test_a_local_failure_is_uf_and_retried_but_never_held_against_the_endpoint() -> None:
    """No certificate to open mTLS with: the attempt never left the process, so outlier
    detection must not eject healthy endpoints for it."""
    mesh = Mesh(
        vs("  - retries: {attempts: 0}\n    route: [{destination: {host: reviews}}]\n"),
        DR_SUBSETS + "  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 2}\n",
        workloads=[workload("only", "10.0.0.1")],
    )
    local = Outcome(failure=Failure.CONNECT, local=True)
    for _ in range(5):
        reply, _, ex = mesh.run(local)
        assert reply.outcome is local
        assert ex.flags == ["UF"]
    reply, _, _ = mesh.run(OK)
    assert reply.outcome is OK, "still in rotation after five local failures"
    for _ in range(2):
        mesh.run(Outcome(failure=Failure.CONNECT))  # a real connect failure does count
    assert mesh.run()[0].error == "UH"


def test_a_header_set_by_both_the_route_and_its_destination_takes_the_routes_value() -> None:
    """Envoy writes header mutations from the most specific level (the weighted cluster:
    Istio's destination headers) to the least (the route), so the route's set wins; adds
    keep that order too."""
    from meshlib.core.attempt import apply_header_ops

    mesh = Mesh(
        vs(
            "  - headers: {request: {set: {x-who: route}, add: {x-trail: route}}}\n"
            "    route:\n"
            "    - destination: {host: reviews}\n"
            "      headers: {request: {set: {x-who: destination}, add: {x-trail: destination}}}\n"
        )
    )
    _, actions, _ = mesh.run(OK)
    [send] = sends(actions)
    edited = apply_header_ops([], send.headers)
    assert [v for k, v in edited if k == "x-who"] == ["route"]
    assert [v for k, v in edited if k == "x-trail"] == ["destination", "route"]
