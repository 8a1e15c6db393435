"""Retry policy: retryOn parsing, which failures are retried, resend safety and back-off."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from meshlib.core.retry_policy import DEFAULT_RETRY, Failure, RetryPolicy, compile_retry_policy
from meshlib.policy.virtual_service import HTTPRetry

CONNECT, REFUSED, RESET, TIMEOUT = Failure.CONNECT, Failure.REFUSED, Failure.RESET, Failure.TIMEOUT


def policy(retry_on: str | None = None, **fields: Any) -> RetryPolicy:
    data: dict[str, Any] = {"attempts": 3, **fields}
    if retry_on is not None:
        data["retryOn"] = retry_on
    return compile_retry_policy(HTTPRetry.model_validate(data))


def flags(found: RetryPolicy) -> dict[str, object]:
    """The condition fields only, to compare a whole parse at once."""
    return {
        "on_5xx": found.on_5xx,
        "on_gateway_error": found.on_gateway_error,
        "on_reset": found.on_reset,
        "on_connect_failure": found.on_connect_failure,
        "on_refused_stream": found.on_refused_stream,
        "statuses": found.statuses,
        "grpc_codes": found.grpc_codes,
    }


NOTHING: dict[str, object] = {
    "on_5xx": False,
    "on_gateway_error": False,
    "on_reset": False,
    "on_connect_failure": False,
    "on_refused_stream": False,
    "statuses": frozenset(),
    "grpc_codes": frozenset(),
}


# --- parsing retryOn --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_on", "expected"),
    [
        ("5xx", {"on_5xx": True}),
        ("gateway-error", {"on_gateway_error": True}),
        ("reset", {"on_reset": True}),
        ("connect-failure", {"on_connect_failure": True}),
        ("refused-stream", {"on_refused_stream": True}),
        ("retriable-4xx", {"statuses": frozenset({409})}),
        ("503", {"statuses": frozenset({503})}),
        ("502,504", {"statuses": frozenset({502, 504})}),
        ("retriable-status-codes,429", {"statuses": frozenset({429})}),
        ("retriable-4xx,503", {"statuses": frozenset({409, 503})}),
        ("cancelled", {"grpc_codes": frozenset({"CANCELLED"})}),
        ("deadline-exceeded", {"grpc_codes": frozenset({"DEADLINE_EXCEEDED"})}),
        ("internal", {"grpc_codes": frozenset({"INTERNAL"})}),
        ("resource-exhausted", {"grpc_codes": frozenset({"RESOURCE_EXHAUSTED"})}),
        ("unavailable", {"grpc_codes": frozenset({"UNAVAILABLE"})}),
        (
            " 5xx , connect-failure,,unavailable ",
            {"on_5xx": True, "on_connect_failure": True, "grpc_codes": frozenset({"UNAVAILABLE"})},
        ),
        (
            "gateway-error,reset,refused-stream,deadline-exceeded,425",
            {
                "on_gateway_error": True,
                "on_reset": True,
                "on_refused_stream": True,
                "statuses": frozenset({425}),
                "grpc_codes": frozenset({"DEADLINE_EXCEEDED"}),
            },
        ),
        # Conditions Envoy knows that meshlib has nothing to act on: nothing is retried.
        ("envoy-ratelimited", {}),
        ("retriable-headers", {}),
    ],
)
def test_retry_on_parsing(retry_on: str, expected: dict[str, object]) -> None:
    assert flags(policy(retry_on)) == {**NOTHING, **expected}


def test_retriable_status_codes_without_codes_retries_no_status() -> None:
    # Istio (parseRetryOn): the codes are exactly the numbers written in retryOn; with
    # "retriable-status-codes" and no number, Envoy gets an empty retriable_status_codes
    # list and retries no status. Only a route without retryOn gets the default 503.
    assert policy("retriable-status-codes").statuses == frozenset()
    assert policy("connect-failure,retriable-status-codes").statuses == frozenset()


def test_retries_without_retry_on_get_the_default_conditions() -> None:
    found = policy(None, perTryTimeout="2s")
    assert flags(found) == flags(DEFAULT_RETRY)
    assert flags(found) == {
        **NOTHING,
        "on_connect_failure": True,
        "on_refused_stream": True,
        "statuses": frozenset({503}),
        "grpc_codes": frozenset({"UNAVAILABLE", "CANCELLED"}),
    }
    assert found.attempts == 3
    assert found.per_try_timeout == 2.0


def test_attempts_timeout_and_backoff_are_taken() -> None:
    found = policy("5xx", attempts=5, perTryTimeout="250ms", backoff="100ms")
    assert (found.attempts, found.per_try_timeout, found.backoff_base) == (5, 0.25, 0.1)
    assert found.backoff_max == pytest.approx(1.0)
    zero = policy("5xx", attempts=0)
    assert zero.attempts == 0


def test_no_retries_block_is_istio_default() -> None:
    assert compile_retry_policy(None) is DEFAULT_RETRY
    assert DEFAULT_RETRY.attempts == 2
    assert DEFAULT_RETRY.per_try_timeout is None
    assert DEFAULT_RETRY.backoff_base == 0.025
    assert DEFAULT_RETRY.backoff_max == pytest.approx(0.25)
    annotated = compile_retry_policy(None, non_idempotent=True)
    assert annotated.non_idempotent is True
    assert dataclasses.replace(annotated, non_idempotent=False) == DEFAULT_RETRY


# --- what is retriable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_on", "retried", "not_retried"),
    [
        ("5xx", [500, 501, 502, 503, 504, 599], [200, 404, 409, 429, 499, 600]),
        ("gateway-error", [502, 503, 504], [500, 501, 505, 409, 200]),
        ("retriable-4xx", [409], [400, 404, 429, 500, 503]),
        ("429,503", [429, 503], [500, 502, 504, 409]),
        ("connect-failure,reset,refused-stream", [], [500, 502, 503, 504, 409]),
    ],
)
def test_retriable_status(retry_on: str, retried: list[int], not_retried: list[int]) -> None:
    found = policy(retry_on)
    assert [s for s in retried if found.retriable_status(s)] == retried
    assert [s for s in not_retried if found.retriable_status(s)] == []


def test_default_policy_retries_only_503() -> None:
    assert [s for s in range(400, 600) if DEFAULT_RETRY.retriable_status(s)] == [503]


def test_retriable_grpc() -> None:
    found = policy("unavailable,resource-exhausted")
    assert found.retriable_grpc("UNAVAILABLE") is True
    assert found.retriable_grpc("RESOURCE_EXHAUSTED") is True
    assert found.retriable_grpc("INTERNAL") is False
    assert found.retriable_grpc("OK") is False
    assert DEFAULT_RETRY.retriable_grpc("CANCELLED") is True
    assert DEFAULT_RETRY.retriable_grpc("DEADLINE_EXCEEDED") is False


# Envoy (source/common/router/retry_state_impl.cc, wouldRetryFromReset): 5xx,
# gateway-error and reset retry every reset reason, connect failures and refused
# streams included; connect-failure and refused-stream retry only their own reason;
# reset-before-request retries only when nothing was sent upstream. A per-try timeout
# is retried under 5xx, gateway-error and reset (router.cc onPerTryTimeout).
FAILURE_TABLE = [
    ("5xx", CONNECT, True),
    ("5xx", REFUSED, True),
    ("5xx", RESET, True),
    ("5xx", TIMEOUT, True),
    ("gateway-error", CONNECT, True),
    ("gateway-error", REFUSED, True),
    ("gateway-error", RESET, True),
    ("gateway-error", TIMEOUT, True),
    ("reset", CONNECT, True),
    ("reset", REFUSED, True),
    ("reset", RESET, True),
    ("reset", TIMEOUT, True),
    ("connect-failure", CONNECT, True),
    ("connect-failure", REFUSED, False),
    ("connect-failure", RESET, False),
    ("connect-failure", TIMEOUT, False),
    ("refused-stream", CONNECT, False),
    ("refused-stream", REFUSED, True),
    ("refused-stream", RESET, False),
    ("refused-stream", TIMEOUT, False),
    ("reset-before-request", CONNECT, True),
    ("reset-before-request", REFUSED, True),
    ("reset-before-request", RESET, False),  # the request may have been sent
    ("reset-before-request", TIMEOUT, False),  # it was sent
    ("503", CONNECT, False),
    ("503", REFUSED, False),
    ("503", RESET, False),
    ("503", TIMEOUT, False),
    ("retriable-4xx", CONNECT, False),
    ("unavailable", CONNECT, False),
    ("unavailable", RESET, False),
]


@pytest.mark.parametrize(
    ("retry_on", "failure", "expected"),
    FAILURE_TABLE,
    ids=[f"{c}-{f.name}" for c, f, _ in FAILURE_TABLE],
)
def test_retriable_failure(retry_on: str, failure: Failure, expected: bool) -> None:
    assert policy(retry_on).retriable_failure(failure) is expected


def test_default_policy_failures() -> None:
    got = {f: DEFAULT_RETRY.retriable_failure(f) for f in Failure}
    assert got == {CONNECT: True, REFUSED: True, RESET: False, TIMEOUT: False}


# --- resend safety ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
@pytest.mark.parametrize("failure", [None, RESET, TIMEOUT, CONNECT, REFUSED])
def test_idempotent_methods_may_always_be_resent(method: str, failure: Failure | None) -> None:
    assert DEFAULT_RETRY.may_resend(method, failure, idempotency_key=False) is True


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(
    ("failure", "expected"),
    [(None, False), (RESET, False), (TIMEOUT, False), (CONNECT, True), (REFUSED, True)],
)
def test_non_idempotent_methods_only_when_never_delivered(
    method: str, failure: Failure | None, expected: bool
) -> None:
    assert DEFAULT_RETRY.may_resend(method, failure, idempotency_key=False) is expected


@pytest.mark.parametrize("failure", [None, RESET, TIMEOUT])
def test_idempotency_key_or_annotation_allows_resending_post(failure: Failure | None) -> None:
    assert DEFAULT_RETRY.may_resend("POST", failure, idempotency_key=True) is True
    annotated = compile_retry_policy(None, non_idempotent=True)
    assert annotated.may_resend("PATCH", failure, idempotency_key=False) is True


# --- back-off -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry", "upper"),
    [(1, 0.025), (2, 0.075), (3, 0.175), (4, 0.25), (5, 0.25), (40, 0.25)],
)
def test_backoff_is_fully_jittered_and_capped(retry: int, upper: float) -> None:
    base = DEFAULT_RETRY.backoff_base
    assert upper == pytest.approx(min(10 * base, (2 ** min(retry, 16) - 1) * base))
    rng = random.Random(retry)
    samples = [DEFAULT_RETRY.backoff(retry, rng) for _ in range(4_000)]
    assert min(samples) >= 0.0
    assert max(samples) <= upper
    assert max(samples) > 0.95 * upper  # the whole range is used, not a narrower one
    assert min(samples) < 0.05 * upper
    assert sum(samples) / len(samples) == pytest.approx(upper / 2, rel=0.05)


def test_custom_backoff_base() -> None:
    found = policy("5xx", backoff="200ms")
    rng = random.Random(11)
    first = [found.backoff(1, rng) for _ in range(2_000)]
    late = [found.backoff(8, rng) for _ in range(2_000)]
    assert max(first) <= 0.2
    assert max(first) > 0.19
    assert max(late) <= 2.0  # capped at 10 × base
    assert max(late) > 1.9


def test_backoff_is_reproducible_with_a_seed() -> None:
    first = [DEFAULT_RETRY.backoff(3, random.Random(99)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert first[0] == pytest.approx(random.Random(99).random() * 0.175)
