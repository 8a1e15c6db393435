"""Load balancers: which endpoint gets the next request (Envoy's, as Istio configures them).

The data plane calls ``pick(healthy, hash_key)`` once per attempt with the endpoints that
may take it (outlier-ejected and already-tried ones removed); ``pick`` returns one of them,
or None only when there are none. Balancers hold no clock and do no I/O; randomness comes
from an injected ``random.Random`` so tests are reproducible. ``build_balancer`` maps a
DestinationRule ``loadBalancer`` to a balancer and ``hash_key_for`` computes the key a
``consistentHash`` policy hashes on.

Costs per pick, 10 endpoints, CPython 3.11, timeit (best of 5 x 100k): round robin
0.12 µs (0.6 µs when handed a new tuple; 2.0 µs when weights differ), least request
0.7 µs, random 0.14 µs, ring hash 0.7 µs, Maglev 0.6 µs (both about 2 µs when an
endpoint is missing from ``healthy``, 0.4 µs without a hash key).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import Protocol

from ..policy.destination_rule import ConsistentHashLB, LoadBalancerSettings
from .hashring import DEFAULT_MINIMUM_RING_SIZE, DEFAULT_TABLE_SIZE, Maglev, RingHash
from .snapshot import Endpoint

__all__ = [
    "Balancer",
    "LeastRequest",
    "Maglev",
    "RandomBalancer",
    "RingHash",
    "RoundRobin",
    "build_balancer",
    "hash_key_for",
]

_weight = attrgetter("weight")


class Balancer(Protocol):
    def pick(self, healthy: Sequence[Endpoint], hash_key: bytes | None = None) -> Endpoint | None:
        """One endpoint of ``healthy``; None only when ``healthy`` is empty."""
        ...


class RoundRobin:
    """Each endpoint in turn, from a random starting point so that many clients do not all
    start on the same endpoint. Unequal weights: smooth weighted round robin (nginx), which
    gives each endpoint its weight's share in every window of sum(weights) picks."""

    __slots__ = ("_current", "_next", "_rng", "_seen")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._next = itertools.count(rng.getrandbits(32)).__next__  # atomic under the GIL
        self._current: dict[tuple[str, int], float] = {}  # smooth WRR state per address:port
        # The last healthy tuple and whether its weights are all equal, in one attribute so
        # threads swap it whole. The data plane passes the same tuple while nothing is
        # ejected, so the check is an identity test (20 ns instead of 0.4 µs for 10).
        self._seen: tuple[Sequence[Endpoint], bool] = ((), True)

    def pick(self, healthy: Sequence[Endpoint], hash_key: bytes | None = None) -> Endpoint | None:
        count = len(healthy)
        if count <= 1:
            return healthy[0] if count else None
        uniform, remember = _uniform(self._seen, healthy)
        if remember:  # an immutable tuple: safe to remember
            self._seen = (healthy, uniform)
        if uniform:
            return healthy[self._next() % count]
        return self._weighted(healthy)

    def _weighted(self, healthy: Sequence[Endpoint]) -> Endpoint:
        return _smooth(self._current, healthy, _share, self._rng)


def _uniform(seen: tuple[Sequence[Endpoint], bool], healthy: Sequence[Endpoint]) -> tuple[bool, bool]:
    """(are all weights equal, may the answer be remembered): the data plane passes the same
    tuple while nothing is ejected, so the check is usually an identity test."""
    if seen[0] is healthy:
        return seen[1], False
    return len(set(map(_weight, healthy))) == 1, type(healthy) is tuple


def _share(endpoint: Endpoint) -> int:
    return endpoint.weight if endpoint.weight > 0 else 1  # Envoy's weights are at least 1


class LeastRequest:
    """Envoy's least request. Equal weights: with ``choice_count`` = 2, the less busy of two
    distinct random endpoints (power of two choices); larger counts sample that many distinct
    endpoints. Unequal weights: Envoy's weighted schedule, each endpoint's weight scaled by
    weight / (active requests + 1) (``active_request_bias`` 1.0, which Istio does not
    change), picked by smooth weighted round robin over those scaled weights (Envoy: an EDF
    schedule; both give every endpoint its scaled share)."""

    __slots__ = ("_active", "_choices", "_current", "_random", "_rng", "_seen")

    def __init__(self, active: Callable[[Endpoint], int], rng: random.Random, choice_count: int = 2) -> None:
        if choice_count < 2:
            raise ValueError(f"choice_count must be at least 2, got {choice_count}")
        self._active = active
        self._rng = rng
        self._random = rng.random
        self._choices = choice_count
        self._seen: tuple[Sequence[Endpoint], bool] = ((), True)
        self._current: dict[tuple[str, int], float] = {}

    def pick(self, healthy: Sequence[Endpoint], hash_key: bytes | None = None) -> Endpoint | None:
        count = len(healthy)
        if count <= 1:
            return healthy[0] if count else None
        uniform, remember = _uniform(self._seen, healthy)
        if remember:
            self._seen = (healthy, uniform)
        if not uniform:
            active = self._active
            return _smooth(self._current, healthy, lambda e: _share(e) / (active(e) + 1), self._rng)
        if self._choices == 2 or count == 2:
            first = int(self._random() * count)
            second = int(self._random() * (count - 1))
            if second >= first:
                second += 1
            a, b = healthy[first], healthy[second]
            return b if self._active(b) < self._active(a) else a
        sampled = self._rng.sample(healthy, min(self._choices, count))
        return min(sampled, key=self._active)


class RandomBalancer:
    """A random endpoint, each with its weight's share (equal weights: uniform). Envoy's
    RANDOM draws uniformly; meshlib honours the endpoint weights Istio documents as
    proportional for every load balancer."""

    __slots__ = ("_cumulative", "_random", "_seen")

    def __init__(self, rng: random.Random) -> None:
        self._random = rng.random
        self._seen: tuple[Sequence[Endpoint], bool] = ((), True)
        self._cumulative: tuple[Sequence[Endpoint], list[int]] = ((), [])

    def pick(self, healthy: Sequence[Endpoint], hash_key: bytes | None = None) -> Endpoint | None:
        if not healthy:
            return None
        uniform, remember = _uniform(self._seen, healthy)
        if remember:
            self._seen = (healthy, uniform)
        if uniform:
            return healthy[int(self._random() * len(healthy))]
        made = self._cumulative
        if made[0] is healthy:
            cumulative = made[1]
        else:
            cumulative = list(itertools.accumulate(map(_share, healthy)))
            if type(healthy) is tuple:
                self._cumulative = (healthy, cumulative)
        point = self._random() * cumulative[-1]
        return healthy[min(bisect.bisect_right(cumulative, point), len(healthy) - 1)]


def _smooth(
    current: dict[tuple[str, int], float],
    healthy: Sequence[Endpoint],
    weight_of: Callable[[Endpoint], float],
    rng: random.Random,
) -> Endpoint:
    """Smooth weighted round robin (nginx): every endpoint gains its weight, the highest is
    picked and pays back the total; each gets its weight's share of every sum(weights) picks."""
    if len(current) > 2 * len(healthy) + 16:  # forget endpoints that went away
        keep = {e.key for e in healthy}
        for key in [k for k in current if k not in keep]:
            del current[key]
    total = 0.0
    best: Endpoint = healthy[0]
    best_value = float("-inf")
    for endpoint in healthy:
        weight = weight_of(endpoint)
        total += weight
        key = endpoint.key
        value = current.get(key)
        if value is None:  # a newcomer starts at a random point of its first round
            value = rng.random() * weight
        value += weight
        current[key] = value
        if value > best_value:
            best, best_value = endpoint, value
    current[best.key] = best_value - total
    return best


def build_balancer(
    settings: LoadBalancerSettings | None,
    endpoints: Sequence[Endpoint],
    active: Callable[[Endpoint], int],
    rng: random.Random,
) -> Balancer:
    """The balancer a DestinationRule's ``loadBalancer`` asks for, over ``endpoints``.

    Istio's mapping: no setting or UNSPECIFIED is LEAST_REQUEST (Istio's default, not
    Envoy's round robin); LEAST_CONN is the deprecated name of LEAST_REQUEST (PASSTHROUGH is
    refused at validation); ``consistentHash`` is a ring hash unless ``maglev`` is set. Ring
    and table are built here, so build once per endpoint set, not per request.
    """
    if settings is None:
        return LeastRequest(active, rng)
    chosen = settings.consistent_hash
    if chosen is not None:
        if chosen.maglev is not None:
            return Maglev(endpoints, chosen.maglev.table_size or DEFAULT_TABLE_SIZE, rng=rng)
        if chosen.ring_hash is not None:
            ring = chosen.ring_hash.minimum_ring_size
        else:
            ring = chosen.minimum_ring_size  # the deprecated top-level field
        return RingHash(endpoints, ring or DEFAULT_MINIMUM_RING_SIZE, rng=rng)
    match settings.simple:
        case "ROUND_ROBIN":
            return RoundRobin(rng)
        case "RANDOM":
            return RandomBalancer(rng)
        case "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" | None:
            return LeastRequest(active, rng)
        case "PASSTHROUGH":  # refused at validation; a stored copy from before picks at random
            return RandomBalancer(rng)


def hash_key_for(
    settings: ConsistentHashLB,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str],
    source_ip: str,
) -> bytes | None:
    """The bytes a ``consistentHash`` policy hashes on for one request, or None when the
    request lacks them (the balancer then picks at random, as Envoy does).

    Header names match case-insensitively; cookie and query parameter names exactly. A
    header or query parameter that is present but empty still hashes (Envoy), an empty
    cookie does not. Envoy makes up a cookie when ``httpCookie.ttl`` is set and the request
    has none; the client stack does that (client_stack._sticky_cookie) before calling here.
    """
    if settings.http_header_name is not None:
        value = _header(headers, settings.http_header_name)
    elif settings.http_cookie is not None:
        value = cookies.get(settings.http_cookie.name) or None
    elif settings.use_source_ip:
        value = source_ip or None
    elif settings.http_query_parameter_name is not None:
        value = query.get(settings.http_query_parameter_name)
    else:
        value = None
    return None if value is None else value.encode("utf-8", "surrogatepass")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    value = headers.get(lowered)  # ASGI and HTTP/2 header names are lower-case
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None
