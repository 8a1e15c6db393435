"""One filter stack for client and server, HTTP and gRPC, sync and async.

A filter is a generator function ``filter(exchange, next)``: it may look at and change
the exchange, yield *actions* for the adapter to perform (send this attempt, sleep,
mirror), and delegate to the rest of the stack with ``yield from next(exchange)``.
Because the stack only yields actions and never does I/O itself, one stack serves the
sync and the async adapters alike (the way httpx drives one auth flow from both). A
filter with nothing to do for a request may be a plain function that returns
``next(exchange)`` itself: the flow is then one generator frame shorter. Such a filter's
code runs when the filter outside it calls it (for the outermost, when the stack is
called), so it must not raise.

The stack is addressed by role, as Finagle's ``Stack`` is: insert before or after a
role, replace or remove one, then ``compose`` once per configuration, not per request.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Filter", "Flow", "Next", "Stack"]

E = TypeVar("E")
R = TypeVar("R")
Flow = Generator[Any, Any, R]
Next = Callable[[E], Flow[R]]
Filter = Callable[[E, Next[E, R]], Flow[R]]


@dataclass(frozen=True)
class _Entry(Generic[E, R]):
    role: str
    filter: Filter[E, R]


class Stack(Generic[E, R]):
    """An ordered list of (role, filter), outermost first."""

    def __init__(self, entries: list[tuple[str, Filter[E, R]]] | None = None) -> None:
        self._entries: list[_Entry[E, R]] = [_Entry(role, f) for role, f in entries or []]

    @property
    def roles(self) -> list[str]:
        return [e.role for e in self._entries]

    def _index(self, role: str) -> int:
        for i, entry in enumerate(self._entries):
            if entry.role == role:
                return i
        raise KeyError(f"no filter with role {role!r}; roles: {', '.join(self.roles)}")

    def push(self, role: str, flt: Filter[E, R]) -> Stack[E, R]:
        """Add innermost."""
        return Stack([*((e.role, e.filter) for e in self._entries), (role, flt)])

    def insert_before(self, role: str, new_role: str, flt: Filter[E, R]) -> Stack[E, R]:
        i = self._index(role)
        items = [(e.role, e.filter) for e in self._entries]
        items.insert(i, (new_role, flt))
        return Stack(items)

    def insert_after(self, role: str, new_role: str, flt: Filter[E, R]) -> Stack[E, R]:
        i = self._index(role)
        items = [(e.role, e.filter) for e in self._entries]
        items.insert(i + 1, (new_role, flt))
        return Stack(items)

    def replace(self, role: str, flt: Filter[E, R]) -> Stack[E, R]:
        i = self._index(role)
        items = [(e.role, e.filter) for e in self._entries]
        items[i] = (role, flt)
        return Stack(items)

    def remove(self, role: str) -> Stack[E, R]:
        i = self._index(role)
        return Stack([(e.role, e.filter) for j, e in enumerate(self._entries) if j != i])

    def compose(self, terminal: Next[E, R]) -> Next[E, R]:
        """The whole stack as one ``Next``: call it per request, drive the generator it returns."""
        current = terminal
        for entry in reversed(self._entries):
            current = _bind(entry.filter, current)
        return current


def _bind(flt: Filter[E, R], inner: Next[E, R]) -> Next[E, R]:
    def run(exchange: E) -> Flow[R]:
        return flt(exchange, inner)

    return run
