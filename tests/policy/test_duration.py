"""Istio durations: Go's time.ParseDuration syntax in YAML, float seconds in Python."""

from __future__ import annotations

import pytest

from meshlib.policy import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("10us", 1e-5),
        ("10µs", 1e-5),
        ("500ns", 5e-7),
        ("2h", 7200.0),
        ("1m30s", 90.0),
        ("1h0m0.5s", 3600.5),
        (".5s", 0.5),
        (" 3s ", 3.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "invalid duration ''"),
        ("   ", "invalid duration"),
        ("5", "expected a number with a unit"),
        ("5x", "invalid duration '5x'"),
        ("s", "invalid duration 's'"),
        ("1.5", "expected a number with a unit"),
        ("1s5", "invalid duration '1s5'"),
        ("-1s", "must not be negative"),
        (True, "invalid duration True"),
        (5, "invalid duration 5"),
        (1.5, "invalid duration 1.5"),
        (None, "invalid duration None"),
    ],
)
def test_parse_rejects(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (1.0, "1s"),
        (1.5, "1500ms"),
        (0.25, "250ms"),
        (60.0, "1m"),
        (90.0, "90s"),
        (5400.0, "90m"),
        (7200.0, "2h"),
        (1e-5, "10us"),
        (5e-7, "500ns"),
        (0.001, "1ms"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["1.5s", "250ms", "1m", "1h30m", "10us", "7s", "1m30s", "3ns"])
def test_format_parses_back_to_the_same_value(text: str) -> None:
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12, abs=0)
