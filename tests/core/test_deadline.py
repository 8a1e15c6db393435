"""Deadline propagation: nesting never extends a deadline; the header's parse and format."""

from __future__ import annotations

import contextvars

import pytest

from meshlib.core.deadline import (
    DEADLINE_HEADER,
    current_deadline,
    deadline,
    format_timeout_ms,
    parse_timeout_ms,
)


def test_no_deadline_by_default() -> None:
    assert current_deadline() is None


def test_deadline_is_now_plus_seconds_and_is_restored() -> None:
    with deadline(5.0, now=100.0) as value:
        assert value == 105.0
        assert current_deadline() == 105.0
    assert current_deadline() is None


def test_inner_deadline_cannot_extend_the_outer() -> None:
    with deadline(5.0, now=100.0):
        with deadline(60.0, now=101.0) as inner:
            assert inner == 105.0
            assert current_deadline() == 105.0
        assert current_deadline() == 105.0


def test_inner_deadline_can_shorten_the_outer() -> None:
    with deadline(5.0, now=100.0):
        with deadline(1.5, now=102.0) as inner:
            assert inner == 103.5
            assert current_deadline() == 103.5
            with deadline(10.0, now=102.5) as innermost:
                assert innermost == 103.5  # bounded by the nearest enclosing deadline
        assert current_deadline() == 105.0
    assert current_deadline() is None


def test_none_keeps_the_current_deadline() -> None:
    with deadline(None, now=100.0) as value:
        assert value is None
        assert current_deadline() is None
    with deadline(2.0, now=100.0), deadline(None, now=500.0) as value:
        assert value == 102.0
        assert current_deadline() == 102.0


def test_negative_seconds_mean_already_due() -> None:
    with deadline(-3.0, now=100.0) as value:
        assert value == 100.0


def test_deadline_is_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError), deadline(1.0, now=10.0):
        raise RuntimeError("boom")
    assert current_deadline() is None


def test_deadline_follows_a_copied_context() -> None:
    with deadline(1.0, now=10.0):
        context = contextvars.copy_context()
    assert current_deadline() is None
    assert context.run(current_deadline) == 11.0


def test_header_name() -> None:
    assert DEADLINE_HEADER == "x-envoy-expected-rq-timeout-ms"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1500", 1.5),
        ("0", 0.0),
        (" 250 ", 0.25),
        ("007", 0.007),
        ("999999999999", 999999999.999),  # 12 digits: the longest accepted
    ],
)
def test_parse_timeout_ms(value: str, expected: float) -> None:
    assert parse_timeout_ms(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "abc",
        "10ms",
        "1 000",
        "1000000000000",  # 13 digits
        "0x10",
        "²",  # a latin-1 header byte (0xB2) that str.isdigit() accepts and int() rejects
        "1²",
        "١٢٣",  # Arabic-Indic digits: int() reads them, a header never carries them
    ],
)
def test_parse_timeout_ms_rejects_bad_values(value: str | None) -> None:
    assert parse_timeout_ms(value) is None


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(1.5, "1500"), (0.25, "250"), (0.0009, "0"), (0.0, "0"), (-2.0, "0"), (12.3456, "12345")],
)
def test_format_timeout_ms(seconds: float, expected: str) -> None:
    assert format_timeout_ms(seconds) == expected


def test_format_then_parse_round_trips_whole_milliseconds() -> None:
    for millis in (1, 80, 1500, 30_000):
        assert parse_timeout_ms(format_timeout_ms(millis / 1000)) == pytest.approx(millis / 1000)
