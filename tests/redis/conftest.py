"""Fixtures for the Redis tests: a live Redis and a private key prefix per test (from
tests/redis_support.py, which says when they skip or fail), a fake clock."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from engine import FakeClock
from engine.brokers.redis import RedisQueue
from tests.redis_support import prefix, redis_url
from tests.waiting import wait_until

__all__ = ["prefix", "redis_url"]  # fixtures, shared with the engine suite's Redis runs

WAIT_S = 10.0  # the bound on every wait in these tests


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.redis)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0, wall_start=1_700_000_000.0, max_real_wait_s=0.05)


@pytest.fixture
def queue(redis_url: str, prefix: str, clock: FakeClock) -> Iterator[RedisQueue]:
    """A queue under the test's prefix, on the fake clock."""
    q = RedisQueue(redis_url, prefix=prefix, clock=clock)
    yield q
    q.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client, to look at and tamper with keys directly."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def eventually(predicate: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "") -> Any:
    """Wait (bounded) until ``predicate()`` is truthy; return its value. Fails the test on timeout."""
    return wait_until(predicate, timeout_s, what, poll_s=0.01)


def advance_live(queue: RedisQueue, clock: FakeClock, seconds: float) -> None:
    """Advance the fake clock while the rest of the fleet stays in touch with Redis.

    A silence of the whole fleet longer than half a lease reads as a Redis outage, during
    which leases are not allowed to run down (see ``touch`` in redis_lib.lua). Tests of a
    dead worker's lease expiring must therefore show the rest of the fleet alive: this renews
    a lease nobody holds every second of fake time.
    """
    whole = int(seconds)
    for _ in range(whole):
        clock.advance(1.0)
        queue.extend([(0, "fleet-alive")], lease_s=10.0)
    if seconds > whole:
        clock.advance(seconds - whole)
        queue.extend([(0, "fleet-alive")], lease_s=10.0)
