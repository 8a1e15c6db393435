"""The stack drivers without a network: every exit closes the flow, unknown actions are
refused, each request is counted once (a streamed answer when it ends)."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

from meshlib import Mesh
from meshlib.core.call import Call
from meshlib.core.exchange import Exchange, Mirror, Outcome, Reply, Send, Sleep
from meshlib.core.routing_table import Target
from meshlib.drivers import InboundRequest, drive_client, drive_client_async, outbound

TARGET = Target("reviews", None, None, 100)


def exchange(mesh: Mesh) -> Exchange:
    call = Call("GET", "http", "reviews", 80, "/", "", lambda name: None)
    return outbound(mesh, call, mesh.http_table, "reviews", deadline=None, replayable=True)


class Recorder:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.seen: list[str] = []

    def send(self, ex: Exchange, send: Send) -> Outcome:
        self.seen.append("send")
        return self.outcome

    def mirror(self, ex: Exchange, copy: Mirror) -> None:
        self.seen.append("mirror")

    async def sleep(self, seconds: float) -> None:
        self.seen.append(f"sleep {seconds}")


class Flow:
    """A stand-in stack: yields the given actions, then replies; notes whether it was closed."""

    def __init__(self, *actions: Any) -> None:
        self.actions = actions
        self.closed = False

    def __call__(self) -> Generator[Any, Any, Reply]:
        try:
            outcome = None
            for action in self.actions:
                got = yield action
                if isinstance(action, Send):
                    outcome = got
            return Reply(outcome=outcome)
        finally:
            self.closed = True


def test_each_action_is_performed_and_the_request_counted_once() -> None:
    mesh = Mesh("frontend")
    io = Recorder(Outcome(status=200))
    stack = Flow(Mirror(None, TARGET, 5.0), Sleep(0.0), Send(None, TARGET, None))
    reply = drive_client(stack(), exchange(mesh), io, mesh.metrics)
    assert io.seen == ["mirror", "send"]
    assert reply.outcome is io.outcome
    assert mesh.metrics.requests_total("reviews", 200) == 1


def test_an_unknown_action_is_an_error_and_the_flow_is_closed() -> None:
    mesh = Mesh("frontend")
    stack = Flow("launch the rockets")
    with pytest.raises(TypeError, match="no driver performs"):
        drive_client(stack(), exchange(mesh), Recorder(Outcome(status=200)), mesh.metrics)
    assert stack.closed
    assert mesh.metrics.requests_total("reviews", 0) == 1, "an error escaping the stack is counted"


def test_the_async_driver_awaits_the_same_actions() -> None:
    mesh = Mesh("frontend")

    class AsyncRecorder(Recorder):
        async def send(self, ex: Exchange, send: Send) -> Outcome:  # type: ignore[override]
            self.seen.append("send")
            return self.outcome

    io = AsyncRecorder(Outcome(status=503))
    stack = Flow(Sleep(0.25), Send(None, TARGET, None))
    reply = asyncio.run(drive_client_async(stack(), exchange(mesh), io, mesh.metrics))
    assert io.seen == ["sleep 0.25", "send"]
    assert reply.outcome is io.outcome
    assert mesh.metrics.requests_total("reviews", 503) == 1


def test_a_streamed_answer_is_counted_when_it_ends() -> None:
    mesh = Mesh("frontend")
    released: list[str] = []
    streaming = Outcome(status=200, streaming=True, release=lambda: released.append("slot"))
    drive_client(Flow(Send(None, TARGET, None))(), exchange(mesh), Recorder(streaming), mesh.metrics)
    assert mesh.metrics.requests_total("reviews") == 0
    streaming.end()
    streaming.end()  # a second close does nothing more
    assert released == ["slot"]
    assert mesh.metrics.requests_total("reviews", 200) == 1


def test_an_inbound_request_is_counted_once_however_it_ends() -> None:
    mesh = Mesh("reviews")
    mesh.start()
    try:
        inbound = InboundRequest(mesh, Call("GET", "http", "", None, "/x", "", lambda name: None))
        assert inbound.admit() is None
        assert inbound.end(201).status == 201
        assert inbound.end(500).status == 201, "the first end is the answer"
        assert mesh.metrics.requests_total("reviews.default.svc.cluster.local", direction="inbound") == 1
        expired = InboundRequest(
            mesh, Call("GET", "http", "", None, "/x", "", lambda name: None), timeout=0.0
        )
        answer = expired.admit()
        assert answer is not None
        assert (answer.status, answer.grpc_status, expired.ex.flags) == (504, "DEADLINE_EXCEEDED", ["UT"])
    finally:
        mesh.close()


def test_the_stack_runs_at_admit_with_what_the_adapter_set_and_a_failing_filter_counts_a_500() -> None:
    mesh = Mesh("reviews")
    mesh.start()
    fqdn = "reviews.default.svc.cluster.local"

    def broken(ex: Any, next: Any) -> Any:  # a plain filter (no generator frame) that fails
        raise ValueError("broken filter")

    try:
        late = InboundRequest(mesh, Call("GET", "http", "", None, "/x", "", lambda name: None))
        late.ex.timeout = 0.0  # set after construction, before admit: the deadline filter sees it
        answer = late.admit()
        assert answer is not None
        assert answer.status == 504
        mesh.server_stack = mesh.server_stack.insert_before("handle", "broken", broken)
        failing = InboundRequest(mesh, Call("GET", "http", "", None, "/x", "", lambda name: None))
        with pytest.raises(ValueError, match="broken filter"):
            failing.admit()
        assert failing.answer is not None
        assert failing.answer.status == 500
        assert mesh.metrics.requests_total(fqdn, 500, direction="inbound") == 1
        never = InboundRequest(mesh, Call("GET", "http", "", None, "/x", "", lambda name: None))
        with pytest.raises(RuntimeError, match="before admit"):
            never.end(200)
        assert mesh.metrics.requests_total(fqdn, 500, direction="inbound") == 2
    finally:
        mesh.close()
