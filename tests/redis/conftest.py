"""Fixtures for the Redis tests: a live Redis, a private key prefix per test, a fake clock.

The tests run against a real Redis (``TUI_DISPATCH_REDIS_URL``, default
``redis://127.0.0.1:6379/0``). When none answers they are skipped with the reason, unless
``TUI_DISPATCH_REQUIRE_REDIS=1`` (CI sets it): then every one of them fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from engine import FakeClock
from engine.brokers.redis import RedisQueue
from tests.waiting import wait_until

REDIS_URL = os.environ.get("TUI_DISPATCH_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("TUI_DISPATCH_REQUIRE_REDIS") == "1"
WAIT_S = 10.0  # the bound on every wait in these tests


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.redis)


_checked: list[str | None] = []


def _redis_problem() -> str | None:
    if not _checked:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.ping()
            _checked.append(None)
        except redis.exceptions.RedisError as exc:
            _checked.append(f"Redis at {REDIS_URL} does not answer: {exc}")
        finally:
            client.close()
    return _checked[0]


@pytest.fixture
def redis_url() -> str:
    """The URL of a Redis that answers (or skip / fail, see the module docstring)."""
    problem = _redis_problem()
    if problem is not None:
        if REQUIRE:
            pytest.fail(f"TUI_DISPATCH_REQUIRE_REDIS=1 but {problem}")
        pytest.skip(f"{problem} (set TUI_DISPATCH_REDIS_URL, or start redis-server)")
    return REDIS_URL


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix:``; returns how many."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
        return len(keys)
    finally:
        client.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"tdtest-{uuid.uuid4().hex[:12]}"
    yield name
    delete_prefix(redis_url, name)


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
