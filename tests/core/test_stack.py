"""The filter stack: composition order, addressing by role, short-circuits, yielded actions."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib.core.stack import Filter, Flow, Next, Stack

Log = list[str]


def tag(name: str) -> Filter[Log, str]:
    """A filter that records entering and leaving, around the rest of the stack."""

    def run(log: Log, next: Next[Log, str]) -> Flow[str]:
        log.append(f"{name}>")
        reply = yield from next(log)
        log.append(f"<{name}")
        return f"{name}({reply})"

    return run


def terminal(log: Log) -> Flow[str]:
    log.append("terminal")
    return "done"
    yield  # a generator function, like every Next


def run(stack: Stack[Log, str]) -> tuple[str, Log, list[Any]]:
    """Drive the composed stack; answer every yielded action with its own repr."""
    log: Log = []
    flow = stack.compose(terminal)(log)
    actions: list[Any] = []
    value: Any = None
    while True:
        try:
            action = flow.send(value)
        except StopIteration as done:
            return done.value, log, actions
        actions.append(action)
        value = f"answer to {action}"


def abc() -> Stack[Log, str]:
    return Stack([("a", tag("a")), ("b", tag("b")), ("c", tag("c"))])


def test_compose_runs_outermost_first() -> None:
    reply, log, actions = run(abc())
    assert reply == "a(b(c(done)))"
    assert log == ["a>", "b>", "c>", "terminal", "<c", "<b", "<a"]
    assert actions == []


def test_empty_stack_is_the_terminal() -> None:
    reply, log, _ = run(Stack())
    assert (reply, log) == ("done", ["terminal"])


def test_roles_in_order() -> None:
    assert abc().roles == ["a", "b", "c"]
    assert Stack[Log, str]().roles == []


def test_push_adds_innermost() -> None:
    stack = abc().push("d", tag("d"))
    assert stack.roles == ["a", "b", "c", "d"]
    assert run(stack)[0] == "a(b(c(d(done))))"


def test_insert_before() -> None:
    stack = abc().insert_before("b", "x", tag("x"))
    assert stack.roles == ["a", "x", "b", "c"]
    assert run(stack)[0] == "a(x(b(c(done))))"
    assert abc().insert_before("a", "first", tag("first")).roles == ["first", "a", "b", "c"]


def test_insert_after() -> None:
    stack = abc().insert_after("b", "x", tag("x"))
    assert stack.roles == ["a", "b", "x", "c"]
    assert run(stack)[0] == "a(b(x(c(done))))"
    assert abc().insert_after("c", "last", tag("last")).roles == ["a", "b", "c", "last"]


def test_replace_keeps_the_role_and_position() -> None:
    stack = abc().replace("b", tag("B"))
    assert stack.roles == ["a", "b", "c"]
    assert run(stack)[0] == "a(B(c(done)))"


def test_remove() -> None:
    stack = abc().remove("b")
    assert stack.roles == ["a", "c"]
    assert run(stack)[0] == "a(c(done))"


def test_edits_return_new_stacks_and_leave_the_original() -> None:
    original = abc()
    original.insert_before("a", "x", tag("x"))
    original.insert_after("a", "y", tag("y"))
    original.replace("a", tag("z"))
    original.remove("c")
    original.push("d", tag("d"))
    assert original.roles == ["a", "b", "c"]
    assert run(original)[0] == "a(b(c(done)))"


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.insert_before("nope", "x", tag("x")),
        lambda s: s.insert_after("nope", "x", tag("x")),
        lambda s: s.replace("nope", tag("x")),
        lambda s: s.remove("nope"),
    ],
)
def test_unknown_role_names_the_roles(edit: Any) -> None:
    with pytest.raises(KeyError) as caught:
        edit(abc())
    assert caught.value.args[0] == "no filter with role 'nope'; roles: a, b, c"


def test_filter_can_short_circuit() -> None:
    def refuse(log: Log, next: Next[Log, str]) -> Flow[str]:
        log.append("refuse")
        return "refused"
        yield

    stack = abc().insert_after("a", "guard", refuse)
    reply, log, _ = run(stack)
    assert reply == "a(refused)"
    assert log == ["a>", "refuse", "<a"]  # b, c and the terminal never ran


def test_filter_can_call_next_more_than_once() -> None:
    def twice(log: Log, next: Next[Log, str]) -> Flow[str]:
        first = yield from next(log)
        second = yield from next(log)
        return f"{first}+{second}"

    reply, log, _ = run(Stack([("twice", twice), ("c", tag("c"))]))
    assert reply == "c(done)+c(done)"
    assert log.count("terminal") == 2


def test_actions_pass_through_and_answers_come_back() -> None:
    def asks(log: Log, next: Next[Log, str]) -> Flow[str]:
        answer = yield "sleep 1"
        log.append(answer)
        return (yield from next(log))

    def inner_asks(log: Log) -> Flow[str]:
        answer = yield "send"
        return f"got {answer}"

    flow = Stack([("a", tag("a")), ("asks", asks)]).compose(inner_asks)([])
    assert flow.send(None) == "sleep 1"
    assert flow.send("slept") == "send"
    with pytest.raises(StopIteration) as done:
        flow.send("200")
    assert done.value.value == "a(got 200)"


def test_compose_binds_once_and_serves_many_requests() -> None:
    runner = abc().compose(terminal)
    logs: list[Log] = [[], []]
    for log in logs:
        with pytest.raises(StopIteration) as done:
            next(runner(log))
        assert done.value.value == "a(b(c(done)))"
    assert logs[0] == logs[1] == ["a>", "b>", "c>", "terminal", "<c", "<b", "<a"]
